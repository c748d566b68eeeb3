r"""Capturing what native code prints: TensorFlow, LiteRT and TFLite Micro write to fds 1 and 2.

:func:`capture_output` redirects the process's stdout and stderr file descriptors (not only
``sys.stdout``) into a buffer, so converter logs can be attached to an error message instead of
flooding the console, and TFLM's ``print_allocations`` can be parsed.

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
    can be attached to an error message instead of being lost.
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
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf), warnings.catch_warnings():
                warnings.simplefilter("ignore")
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
