"""The versions of the tools behind a report: recorded in ``report.json`` and printed by ``--version``.

Read from the installed distributions' metadata, without importing them (``wgsef-export --version``
answers at once, without loading TensorFlow).

Example:
    >>> v = tool_versions()
    >>> list(v) == list(TOOLS) and v["keras-wgsef"] is not None
    True
"""

from __future__ import annotations

__all__ = ["TOOLS", "tool_versions"]

#: the distributions whose versions a report records and ``wgsef-export --version`` prints
TOOLS = ("keras-wgsef", "keras", "tensorflow", "ai-edge-litert", "tflite-micro")


def tool_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`TOOLS` (None when missing)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in TOOLS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
