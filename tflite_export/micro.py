"""TFLite Micro on the host: minimal arena, inference, and the instruction count of one Invoke().

* :func:`tflm_min_arena`: the smallest tensor arena with which the interpreter can be built
  (binary search in a child process: the TFLM Python runtime can segfault on some too-small
  arenas, so a crash counts as "does not fit"), and the allocator's own reported total;
* :func:`run_tflm`: int8 inference with the reference kernels, as on a microcontroller;
* :func:`count_instructions`: instructions of exactly one ``MicroInterpreter::Invoke()`` under
  valgrind callgrind, deterministic run after run: the figure to compare models by.

Arena sizes are measured on a 64-bit host; a 32-bit microcontroller build needs a little less
for the interpreter's own structures, so they are safe upper bounds (add the usual margin).

TFLite Micro is the ``micro`` extra (Linux x86_64 wheels only): without it this module imports, and
every function that runs TFLM raises an ImportError that names the extra (:func:`micro_missing`);
:func:`tflite_export.measure` then reports the TFLM figures as None with a note.

Example:
    >>> arena, reported = tflm_min_arena(tfl)
    >>> tflm_arena_fits(tfl, arena), tflm_arena_fits(tfl, arena - 16)
    (True, False)
    >>> count_instructions(tfl, np.zeros((1, 8, 8, 1), np.int8), arena_size=arena) > 0  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keras_wgsef._install import VALGRIND_HINT, install_hint
from tflite_export.console import capture_output
from tflite_export.flatbuffer import read_tflite
from tflite_export.quantization import quantize

__all__ = [
    "ArenaProbe",
    "UnsupportedOpError",
    "count_instructions",
    "count_instructions_many",
    "micro_missing",
    "require_micro",
    "run_tflm",
    "tflm_arena_fits",
    "tflm_interpreter",
    "tflm_min_arena",
    "working_arena",
]

_MISSING_OP = re.compile(r"Didn't find op for builtin opcode '([A-Za-z0-9_]+)'")
_ARENA_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_INVOKE_SYMBOL = "tflite::micro::MicroInterpreter::Invoke()"


def micro_missing(figure: str = "TFLite Micro figures not measured") -> str | None:
    """None when TFLite Micro imports, else ``figure`` (what is not measured) with why and the install line.

    Example:
        >>> micro_missing("the TFLM arena not measured") is None   # tflite-micro is installed here
        True
    """
    try:
        import tflite_micro  # noqa: F401
    except ImportError:
        return (
            f"{figure}: TFLite Micro (tflite-micro) is not installed; it is the `micro` extra "
            f"(Linux x86_64 wheels only), {install_hint('micro')}"
        )
    return None


def require_micro(figure: str = "this needs TFLite Micro") -> None:
    """Raises an ImportError naming the ``micro`` extra when TFLite Micro is not installed."""
    why = micro_missing(figure)
    if why is not None:
        raise ImportError(why)


class UnsupportedOpError(RuntimeError):
    """The model uses an operator that TFLite Micro has no kernel for."""

    def __init__(self, op: str) -> None:
        self.op = op
        super().__init__(
            f"operator {op} is not supported by TFLite Micro; replace the layer that produces it "
            "with one TFLM supports (see tensorflow/tflite-micro micro_mutable_op_resolver.h) "
            "or register a custom kernel in your firmware"
        )


_PROBE_CHILD = textwrap.dedent(
    """
    import os, sys, tempfile
    from tflite_micro import runtime as tflm
    model = open(sys.argv[1], "rb").read()
    for line in sys.stdin:
        size = int(line)
        with tempfile.TemporaryFile() as sink:
            saved = os.dup(2)
            os.dup2(sink.fileno(), 2)
            try:
                tflm.Interpreter.from_bytes(model, arena_size=size)
                answer = "1"
            except RuntimeError:
                answer = "0"
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
        marker = "Didn't find op for builtin opcode '"
        if answer == "0" and marker in text:
            answer = "U " + text.split(marker, 1)[1].split("'", 1)[0]
        print(answer, flush=True)
    """
)


class ArenaProbe:
    """Asks a child process whether TFLM can build the model with a given arena size.

    The TFLite Micro Python runtime can crash (segfault) on the failure path of some
    too-small arenas, so every trial allocation runs in a child process; a crash counts as
    "does not fit" and the child is restarted.
    """

    def __init__(self, tflite: bytes) -> None:
        require_micro("the TFLite Micro arena search needs it")
        self._tmp = tempfile.TemporaryDirectory(prefix="wgsef-arena-")
        self._model = os.path.join(self._tmp.name, "model.tflite")
        with open(self._model, "wb") as f:
            f.write(tflite)
        self._proc: subprocess.Popen | None = None
        self.crashes = 0

    def _start(self) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", _PROBE_CHILD, self._model], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
        )  # fmt: skip

    def fits(self, size: int) -> bool:
        """True when the model builds in ``size`` bytes; raises UnsupportedOpError."""
        for _ in range(3):
            if self._proc is None or self._proc.poll() is not None:
                self._proc = self._start()
            stdin, stdout = self._proc.stdin, self._proc.stdout
            assert stdin is not None and stdout is not None  # both are pipes (see _start)
            try:
                stdin.write(f"{int(size)}\n")
                stdin.flush()
                answer = stdout.readline().strip()
            except (BrokenPipeError, OSError):
                answer = ""
            if answer.startswith("U "):
                raise UnsupportedOpError(answer[2:])
            if answer in ("0", "1"):
                return answer == "1"
            if self._proc.wait() < 0:  # killed by a signal on the failure path: too small
                self.crashes += 1
                return False
        raise RuntimeError("the TFLite Micro probe process failed to start; check that tflite-micro imports")

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None and self._proc.stdin is not None:
            self._proc.stdin.close()
            self._proc.wait(timeout=30)
        self._tmp.cleanup()

    def __enter__(self) -> ArenaProbe:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


def tflm_arena_fits(tflite: bytes, arena_size: int) -> bool:
    """Whether TFLite Micro can build and allocate the model in ``arena_size`` bytes.

    Runs in a child process (see :class:`ArenaProbe`).

    Raises:
        UnsupportedOpError: an operator has no TFLM kernel.
    """
    with ArenaProbe(read_tflite(tflite)) as probe:
        return probe.fits(arena_size)


def tflm_interpreter(tflite: bytes, arena_size: int) -> Any:
    """A TFLM interpreter in this process; only for arena sizes known to fit (see :class:`ArenaProbe`)."""
    require_micro("a TFLite Micro interpreter needs it")
    from tflite_micro import runtime as tflm

    with capture_output() as captured:
        try:
            return tflm.Interpreter.from_bytes(tflite, arena_size=int(arena_size))
        except RuntimeError as exc:
            failure = exc
    missing = _MISSING_OP.search(captured.getvalue())
    if missing:
        raise UnsupportedOpError(missing.group(1)) from None
    raise RuntimeError(f"TFLite Micro could not build the model with a {arena_size}-byte arena: {failure}")


def working_arena(probe: ArenaProbe, tflite: bytes) -> int:
    """An arena size that fits (not the smallest): 10x the model, at least 64 KiB, grown until it fits."""
    hi = max(64 * 1024, 10 * len(tflite))
    while not probe.fits(hi):
        hi *= 4
        if hi > 1 << 31:
            raise RuntimeError("TFLite Micro could not allocate the model even with a 2 GiB arena")
    return hi


def tflm_min_arena(tflite: bytes) -> tuple[int, int | None]:
    """Smallest ``arena_size`` with which TFLite Micro builds (and allocates) the model.

    Trial allocations run in a child process, because the TFLM Python runtime may crash on
    some too-small arenas.

    Returns:
        ``(searched, reported)``: the smallest working size found by binary search, and
        the total the recording allocator reports (None if it printed nothing).

    Raises:
        UnsupportedOpError: an operator has no TFLM kernel.
        RuntimeError: the model does not fit even in a very large arena.

    Example:
        >>> searched, reported = tflm_min_arena(tfl)
        >>> tflm_arena_fits(tfl, searched), tflm_arena_fits(tfl, searched - 1)
        (True, False)
    """
    tflite = read_tflite(tflite)
    with ArenaProbe(tflite) as probe:
        hi = working_arena(probe, tflite)
        interp = tflm_interpreter(tflite, hi)
        with capture_output() as captured:
            interp.print_allocations()
        del interp
        match = _ARENA_TOTAL.search(captured.getvalue())
        reported = int(match.group(1)) if match else None
        if reported is not None and reported < hi and probe.fits(reported):
            hi = reported
        lo = 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if probe.fits(mid):
                hi = mid
            else:
                lo = mid
    return hi, reported


def run_tflm(tflite: bytes, x: np.ndarray, *, arena_size: int | None = None) -> np.ndarray:
    """Run samples one by one on TFLite Micro; returns the raw outputs ``(N, ...)``.

    Args:
        tflite: model bytes (batch 1).
        x: inputs ``(N, ...)``, real values (quantized here) or already the input dtype.
        arena_size: tensor arena bytes that fit (default: a size checked in a child process).

    Raises:
        UnsupportedOpError: an operator has no TFLM kernel.
    """
    tflite = read_tflite(tflite)
    if arena_size is None:
        with ArenaProbe(tflite) as probe:
            arena_size = working_arena(probe, tflite)
    interp = tflm_interpreter(tflite, arena_size)
    details = interp.get_input_details(0)
    shape = tuple(int(d) for d in details["shape"])
    outs = []
    for i in range(len(x)):
        interp.set_input(quantize(np.asarray(x[i]).reshape(shape), details), 0)
        interp.invoke()
        outs.append(np.array(interp.get_output(0)).reshape(-1))
    return np.stack(outs) if outs else np.zeros((0,))


_CALLGRIND_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from tflite_micro import runtime as tflm
    for model_path, x_path, arena in json.load(open(sys.argv[1])):
        interp = tflm.Interpreter.from_bytes(open(model_path, "rb").read(), arena_size=arena)
        interp.set_input(np.load(x_path), 0)
        interp.invoke()
    print("INVOKED", flush=True)
    """
)


def count_instructions_many(
    items: Sequence[tuple[bytes, np.ndarray, int | None]],
    *,
    valgrind: str = "valgrind",
    timeout: float = 600.0,
) -> list[int]:
    """Instructions of one TFLite Micro inference for each model, in one valgrind run.

    Collection is on only inside ``MicroInterpreter::Invoke()`` (model loading, Python and
    allocation are excluded) and callgrind dumps a profile after each invoke, so one
    process (valgrind's start-up costs ~8 s) counts several models. The counts are the
    same run after run.

    Args:
        items: ``(tflite_bytes, x_quantized, arena_size)`` per model; ``x_quantized`` is
            one input in the input tensor's dtype and shape; ``arena_size`` None means
            10 x the model size.
        valgrind: the valgrind executable.
        timeout: seconds before giving up.

    Raises:
        ImportError: tflite-micro (the ``micro`` extra) is not installed.
        FileNotFoundError: valgrind is not installed.
        RuntimeError: the run failed or counted nothing.

    Example:
        >>> count_instructions_many([(dense, xq, None), (thin, xq, None)])   # doctest: +SKIP
        [25229027, 9514857]
    """
    require_micro("the TFLite Micro instruction count needs it")
    exe = shutil.which(valgrind)
    if exe is None:
        raise FileNotFoundError(f"{valgrind} not found: {VALGRIND_HINT} to count instructions")
    with tempfile.TemporaryDirectory(prefix="wgsef-callgrind-") as tmp:
        jobs = []
        for i, (tflite, xq, arena) in enumerate(items):
            data = read_tflite(tflite)
            model_path, x_path = os.path.join(tmp, f"m{i}.tflite"), os.path.join(tmp, f"x{i}.npy")
            with open(model_path, "wb") as f:
                f.write(data)
            np.save(x_path, np.asarray(xq))
            jobs.append([model_path, x_path, int(arena or max(64 * 1024, 10 * len(data)))])
        child, job_file, out = (os.path.join(tmp, n) for n in ("child.py", "jobs.json", "cg.out"))
        with open(child, "w") as f:
            f.write(_CALLGRIND_CHILD)
        with open(job_file, "w") as f:
            json.dump(jobs, f)
        cmd = [
            exe, "--tool=callgrind", "--collect-atstart=no", f"--toggle-collect={_INVOKE_SYMBOL}",
            f"--dump-after={_INVOKE_SYMBOL}", f"--callgrind-out-file={out}",
            sys.executable, child, job_file,
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or "INVOKED" not in proc.stdout:
            tail = " ".join((proc.stderr or "").split())[-300:]
            raise RuntimeError(f"callgrind run failed (exit {proc.returncode}): {tail}")
        counts = []
        for i in range(1, len(jobs) + 1):
            path = f"{out}.{i}"
            text = Path(path).read_text() if os.path.exists(path) else ""
            match = re.search(r"^(?:summary|totals):\s*(\d+)", text, re.MULTILINE)
            counts.append(int(match.group(1)) if match else 0)
    if len(counts) != len(jobs) or min(counts, default=0) == 0:
        raise RuntimeError(
            f"callgrind counted no instructions: the symbol {_INVOKE_SYMBOL} was not found in this tflite_micro build"
        )
    return counts


def count_instructions(
    tflite: bytes,
    x_quantized: np.ndarray,
    *,
    arena_size: int | None = None,
    valgrind: str = "valgrind",
    timeout: float = 600.0,
) -> int:
    """Instructions executed by one TFLite Micro inference (valgrind callgrind).

    See :func:`count_instructions_many`.

    Example:
        >>> count_instructions(tfl, np.zeros((1, 28, 28, 1), np.int8))   # doctest: +SKIP
        25229027
    """
    return count_instructions_many([(tflite, x_quantized, arena_size)], valgrind=valgrind, timeout=timeout)[0]
