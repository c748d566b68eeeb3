"""The API reference's list of public names, read from the packages' explicit re-exports.

The public API is what the packages re-export: ``from x import Name as Name`` in
``keras_wgsef/__init__.py`` (a re-exported submodule such as ``callbacks`` brings its own
re-exports or ``__all__``), ``keras_wgsef/budget/__init__.py``, and ``tflite_export.__all__``. The
reference page is written here, so a new public name gets its page without editing the docs.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def reexports(path: Path) -> list[str]:
    """The names a module re-exports explicitly (``from x import Name as Name``), in file order."""
    tree = ast.parse(path.read_text())
    return [
        a.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for a in node.names
        if a.asname == a.name and not a.name.startswith("_")
    ]


def public_names(module: Any) -> list[str]:
    """``module.__all__`` if it has one, else its explicit re-exports."""
    names = getattr(module, "__all__", None)
    return list(names) if names is not None else reexports(Path(inspect.getfile(module)))


def sections() -> list[tuple[str, str, list[str]]]:
    """``(title, current module, names)`` per table of the reference."""
    kw = importlib.import_module("keras_wgsef")
    top, submodules = [], []
    for name in reexports(ROOT / "keras_wgsef" / "__init__.py"):
        value = getattr(kw, name)
        (submodules if inspect.ismodule(value) else top).append(name)
    seen = {id(getattr(kw, n)) for n in top}
    out = [("``keras_wgsef``: training", "keras_wgsef", sorted(top, key=str.lower))]
    for sub in submodules:
        module = getattr(kw, sub)
        out.append((f"``keras_wgsef.{sub}``", "keras_wgsef", [f"{sub}.{n}" for n in public_names(module)]))
    budget = importlib.import_module("keras_wgsef.budget")
    rest = [n for n in reexports(ROOT / "keras_wgsef" / "budget" / "__init__.py") if id(getattr(budget, n)) not in seen]
    out.append(
        ("``keras_wgsef.budget``: hardware bounds and cost models", "keras_wgsef", [f"budget.{n}" for n in rest])
    )
    te = importlib.import_module("tflite_export")
    out.append(("``tflite_export``: shrink, convert, measure", "tflite_export", sorted(te.__all__, key=str.lower)))
    return out


INTRO = """\
API reference
=============

Generated from the docstrings. The public names are the ones the packages re-export explicitly
(``keras_wgsef/__init__.py``, ``keras_wgsef/budget/__init__.py``, ``tflite_export.__all__``); the
tables below are read from those re-exports when the site is built. Every docstring example runs as
a doctest in the test suite.
"""


def page() -> str:
    """The reference page (reST): one autosummary table per section; the stubs go to ``api/`` beside it."""
    lines: list[str] = [INTRO]
    for title, current, names in sections():
        lines += [title, "-" * len(title), "", f".. currentmodule:: {current}", "", ".. autosummary::"]
        lines += ["   :toctree: api", "   :nosignatures:", ""]
        lines += [f"   {n}" for n in names] + [""]
    return "\n".join(lines)
