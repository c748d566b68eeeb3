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

__all__ = ["capture_output"]


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
