r"""Capturing what native code prints: TensorFlow, LiteRT and TFLite Micro write to fds 1 and 2.

:func:`capture_output` redirects the process's stdout and stderr file descriptors (not only
``sys.stdout``) into a buffer, so converter logs can be attached to an error message instead of
flooding the console, and TFLM's ``print_allocations`` can be parsed. Python warnings raised in the
block are not part of that noise: they are held back and issued again after the block (through the
warning filters in force, as if raised there), so a user still sees, e.g., what Keras says while
loading a model.

Example:
  >>> import os
  >>> with capture_output() as captured:
  ...     _ = os.write(1, b"from C++\n")
  >>> captured.getvalue()
  'from C++\n'
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["EXPORT_STAGES", "StageProgress", "capture_output"]


@contextlib.contextmanager
def capture_output(enabled: bool = True) -> Iterator[io.StringIO]:
    """Capture what C++ and Python write to stdout/stderr (file descriptors 1 and 2).

    The captured text is available from the yielded buffer after the block, so that it
    can be attached to an error message instead of being lost. Python warnings raised in the
    block are issued again once the output is restored (also when the block raises), with their
    original category, file and line, so the usual filters decide whether they show.

    Example:
      >>> import warnings
      >>> with warnings.catch_warnings(record=True) as seen:
      ...     warnings.simplefilter("always")
      ...     with capture_output():
      ...         warnings.warn("from Python")
      >>> [str(w.message) for w in seen]
      ['from Python']
    """
    buf = io.StringIO()
    if not enabled:
        yield buf
        return
    import sys

    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    held: list[warnings.WarningMessage] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
            with (
                contextlib.redirect_stdout(buf),
                contextlib.redirect_stderr(buf),
                warnings.catch_warnings(record=True) as log,
            ):
                held = log  # filled while the block runs: issued again below, after the output is restored
                yield buf
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            buf.write(sink.read().decode("utf-8", errors="replace"))
            modules = {getattr(m, "__file__", None): name for name, m in list(sys.modules.items())} if held else {}
            for w in held:  # the module too, so filters on it (``default::DeprecationWarning:__main__``) apply
                message = w.message if isinstance(w.message, Warning) else w.category(w.message)
                if w.filename in modules:
                    warnings.warn_explicit(
                        message, w.category, w.filename, w.lineno, modules[w.filename], source=w.source
                    )
                else:  # (an explicit module=None would drop the warning)
                    warnings.warn_explicit(message, w.category, w.filename, w.lineno, source=w.source)


#: the stages of :func:`tflite_export.export`, in order: what ``verbose`` and the command's progress show
EXPORT_STAGES = ("shrink", "convert", "LiteRT", "arena search", "TFLM accuracy", "callgrind")


class StageProgress:
    """Says which stage of a long export runs (``export(..., verbose=...)``, as Keras' ``fit`` does).

    ``verbose=0`` is silent; ``1`` shows a Keras ``Progbar`` with one step per stage (the stage
    that runs named after the bar); ``2`` writes one line per stage to ``stream`` (stderr), the
    command line's progress. Stages that an export skips advance the bar without a line.

    Example:
      >>> import io
      >>> out = io.StringIO()
      >>> progress = StageProgress(2, stream=out)
      >>> progress.start("convert"); progress.start("callgrind", "instructions under valgrind")
      >>> print(out.getvalue(), end="")
        [2/6] convert ...
        [6/6] callgrind: instructions under valgrind ...
    """

    def __init__(self, verbose: int = 0, stages: tuple[str, ...] = EXPORT_STAGES, stream: Any = None) -> None:
        if verbose not in (0, 1, 2):
            raise ValueError(f"verbose must be 0 (silent), 1 (progress bar) or 2 (one line per stage), got {verbose!r}")
        self.verbose, self.stages, self.stream = verbose, tuple(stages), stream
        self.current = ""
        self._bar: Any = None

    def start(self, stage: str, detail: str = "") -> None:
        """Marks the start of ``stage`` (one of :attr:`stages`), with an optional detail for the line."""
        if stage not in self.stages:
            raise ValueError(f"unknown stage {stage!r}; the stages are {', '.join(self.stages)}")
        self.current = stage
        step = self.stages.index(stage) + 1
        if self.verbose == 2:
            import sys

            label = f"{stage}: {detail}" if detail else stage
            print(f"  [{step}/{len(self.stages)}] {label} ...", file=self.stream or sys.stderr, flush=True)
        elif self.verbose == 1:
            self._progbar().update(step - 1)

    def finish(self) -> None:
        """Completes the bar (verbose 1)."""
        if self.verbose == 1:
            self.current = "done"
            self._progbar().update(len(self.stages), finalize=True)

    def _progbar(self) -> Any:
        if self._bar is None:
            import keras

            owner = self

            class _StageBar(keras.utils.Progbar):
                """Names the running stage after the time per step."""

                def _format_time(self, time_per_unit: float, unit_name: str) -> str:
                    return super()._format_time(time_per_unit, unit_name) + f" - {owner.current}"

            self._bar = _StageBar(len(self.stages), unit_name="stage")
        return self._bar
