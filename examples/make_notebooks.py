"""Generates the example notebooks from the example scripts, so the two never drift apart.

Each script is written in jupytext's "percent" format: ``# %%`` starts a code cell,
``# %% [markdown]`` a Markdown cell, ``# %% tags=["parameters"]`` the parameter cell (nbclient /
papermill inject values after it), and ``# %% script-only`` a cell that only the script runs (its
command-line flags; jupytext reads the word as the cell's title). jupytext parses the cells; this
module only arranges the notebook: the module docstring before the first cell (the script's help)
and the script-only cells are left out, the first Markdown cell (the title and what the example
shows) gets :data:`RUN_IT`, how to run it on Colab, and :data:`INSTALL_CELL` follows it. Outputs
stored in a notebook are kept while their cell's source is unchanged (:func:`keep_outputs`).

    python examples/make_notebooks.py           # (re)write examples/*.ipynb
    python examples/make_notebooks.py --check   # exit 1 if a notebook differs from its script
"""

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
SCRIPTS = ("resnet8.py", "ds_cnn.py", "custom_loop.py", "hardware_blocks.py")
_FIRST_CELL = re.compile(r"^# %%", re.M)


def _install_extras() -> str:
    """The extras of the project's one install line (``keras_wgsef/_install.py``), read without importing Keras."""
    spec = importlib.util.spec_from_file_location("_install", HERE.parent / "keras_wgsef" / "_install.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return ",".join(module.EXTRAS)


EXTRAS = _install_extras()
#: appended to the first Markdown cell of every notebook
RUN_IT = f"""\
**Run it.** On Colab: upload this notebook (*File > Upload notebook*), then upload a clone of the
keras-wgsef repository as the folder `keras-wgsef`, or the wheel `make dist` builds
(`keras_wgsef-*.whl`), to the notebook's files; the next cell installs it with the
`[{EXTRAS}]` extras. A CPU runtime is enough. Locally: `make install` in a clone, then run the
notebook on the project's `.venv`, or run its script (`python examples/<name>.py --help`)."""
#: the first code cell of every notebook: installs keras-wgsef only where it is not importable
INSTALL_CELL = f"""\
# Colab: install keras-wgsef beside Colab's own TensorFlow (the `export` extra asks for the full
# `tensorflow` 2.19-2.21, never `tensorflow-cpu`, so pip keeps the TensorFlow that is there).
# Where keras_wgsef is importable already, this does nothing.
import glob
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("keras_wgsef") is None:
    wheels = sorted(glob.glob("keras_wgsef-*.whl"))  # a wheel built by `make dist`, uploaded here
    source = wheels[-1] if wheels else "./keras-wgsef"  # else a clone of the repository
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"{{source}}[{EXTRAS}]"], check=True)"""


def cells_of(source: str) -> list[tuple[str, str, list[str]]]:
    """``(kind, text, tags)`` per cell of a percent-format script; kind is code, markdown or script.

    The text before the first ``# %%`` (the module docstring) is not a cell.
    """
    first = _FIRST_CELL.search(source)
    if first is None:
        return []
    out = []
    for cell in jupytext.reads(source[first.start() :], fmt="py:percent").cells:
        text = cell.source.strip("\n")
        if not text:
            continue
        if cell.metadata.get("title") == "script-only":
            kind = "script"
        else:
            kind = "markdown" if cell.cell_type == "markdown" else "code"
        out.append((kind, text, list(cell.metadata.get("tags", []))))
    return out


def notebook_of(script: Path) -> nbformat.NotebookNode:
    """The notebook of one example script (script-only cells dropped)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "generated_from": f"examples/{script.name} by examples/make_notebooks.py",
    }
    cells = [c for c in cells_of(script.read_text()) if c[0] != "script"]
    if not cells or cells[0][0] != "markdown":
        raise ValueError(f"{script.name}: the first cell must be Markdown (the notebook's title and what it shows)")
    for i, (kind, text, tags) in enumerate(cells):
        if i == 0:
            cell = nbformat.v4.new_markdown_cell(f"{text}\n\n{RUN_IT}")
        else:
            cell = nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
        cell.id = f"{script.stem}-{i}"
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
        if i == 0:
            install = nbformat.v4.new_code_cell(INSTALL_CELL)
            install.id = f"{script.stem}-install"
            nb.cells.append(install)
    nbformat.validate(nb)
    return nb


def keep_outputs(nb: nbformat.NotebookNode, stored: Path) -> nbformat.NotebookNode:
    """Copies the outputs of ``stored``'s code cells into ``nb``'s cells of the same id and source.

    A notebook run and saved keeps its outputs (the docs render them) until its script changes the
    cell; a changed cell loses them.
    """
    if not stored.exists():
        return nb
    old = {c.get("id"): c for c in nbformat.read(stored, as_version=4).cells if c.cell_type == "code"}
    for cell in nb.cells:
        prev = old.get(cell.get("id"))
        if cell.cell_type == "code" and prev is not None and prev.source == cell.source:
            cell.outputs, cell.execution_count = prev.outputs, prev.execution_count
    return nb


def render(script: Path) -> str:
    """The notebook of ``script`` as the text of its ``.ipynb`` file (with the stored outputs kept)."""
    return nbformat.writes(keep_outputs(notebook_of(script), script.with_suffix(".ipynb"))) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only check that the notebooks are up to date")
    a = p.parse_args()
    stale = []
    for name in SCRIPTS:
        script = HERE / name
        target = script.with_suffix(".ipynb")
        text = render(script)
        if a.check:
            if not target.exists() or target.read_text() != text:
                stale.append(target.name)
        else:
            target.write_text(text)
            print(f"wrote {target.relative_to(HERE.parent)}")
    if stale:
        print(f"out of date (run python examples/make_notebooks.py): {', '.join(stale)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
