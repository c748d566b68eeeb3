"""Generates the example notebooks from the example scripts, so the two never drift apart.

Each script is written in the "percent" cell format: ``# %%`` starts a code cell,
``# %% [markdown]`` a Markdown cell (its lines without the leading ``# ``),
``# %% tags=["parameters"]`` the parameter cell (nbclient / papermill inject values after it),
and ``# %% script-only`` a cell that only the script runs (its command-line flags). The module
docstring before the first cell is the script's help and is left out of the notebook. Every
notebook starts with :data:`INSTALL_CELL`, the Colab install line (a no-op where the project is
already installed).

    python examples/make_notebooks.py           # (re)write examples/*.ipynb
    python examples/make_notebooks.py --check   # exit 1 if a notebook differs from its script
"""

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SCRIPTS = ("resnet8.py", "ds_cnn.py", "custom_loop.py", "hardware_blocks.py")
_MARK = re.compile(r"^# %%(?P<rest>.*)$")
#: the first cell of every notebook: the README's Colab install line, run only where needed
INSTALL_CELL = """\
# Colab: install keras-wgsef beside Colab's own TensorFlow. The `export` extra asks for the full
# `tensorflow` over 2.19-2.21 (never `tensorflow-cpu`), so pip keeps the TensorFlow that is there.
# First clone or upload the repository as ./keras-wgsef. Where it is installed, this does nothing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("keras_wgsef") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "./keras-wgsef[export,data,plots]"], check=True)"""


def cells_of(source: str) -> list[tuple[str, str, list[str]]]:
    """``(kind, text, tags)`` per cell of a percent-format script; kind is code, markdown or script."""
    cells: list[tuple[str, list[str], list[str]]] = []
    for line in source.splitlines():
        m = _MARK.match(line)
        if m:
            rest = m.group("rest").strip()
            kind = (
                "markdown" if rest.startswith("[markdown]") else "script" if rest.startswith("script-only") else "code"
            )
            tags = json.loads(rest.split("tags=", 1)[1]) if "tags=" in rest else []
            cells.append((kind, [], tags))
        elif cells:
            cells[-1][1].append(line)
    out = []
    for kind, lines, tags in cells:
        if kind == "markdown":
            lines = [ln[2:] if ln.startswith("# ") else ln.lstrip("#") for ln in lines]
        text = "\n".join(lines).strip("\n")
        if text:
            out.append((kind, text, tags))
    return out


def notebook_of(script: Path) -> nbformat.NotebookNode:
    """The notebook of one example script (script-only cells dropped)."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "generated_from": f"examples/{script.name} by examples/make_notebooks.py",
    }
    install = nbformat.v4.new_code_cell(INSTALL_CELL)
    install.id = f"{script.stem}-install"
    nb.cells.append(install)
    for i, (kind, text, tags) in enumerate(cells_of(script.read_text())):
        if kind == "script":
            continue
        cell = nbformat.v4.new_markdown_cell(text) if kind == "markdown" else nbformat.v4.new_code_cell(text)
        cell.id = f"{script.stem}-{i}"
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(script: Path) -> str:
    return nbformat.writes(notebook_of(script)) + "\n"


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
