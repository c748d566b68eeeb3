"""The README's quickstart runs as written, and the README stays a landing page.

The first ```python block of ``README.md`` is the quickstart users copy. The slow test runs it
as written, in a fresh process in an empty folder (15 epochs on the bundled MNIST digits, then
``export`` with the TFLite Micro figures: a few minutes on 2 cores, so it runs under
``make test-slow``). The default suite checks, in a second, what would break it first: every
``kw.``/``te.`` name the block uses exists and takes the keyword arguments the block passes.
"""

import ast
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def quickstart() -> str:
    """The first ```python block of the README."""
    m = re.search(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)
    assert m, "README.md has no ```python block"
    return m.group(1)


def _aliases(tree: ast.Module) -> dict[str, str]:
    """``alias -> module`` for the block's ``import x as y`` of keras_wgsef and tflite_export."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in ("keras_wgsef", "tflite_export"):
                    out[a.asname or a.name] = a.name
    return out


def _dotted(node: ast.AST) -> list[str] | None:
    """``["kw", "callbacks", "ReachK"]`` for ``kw.callbacks.ReachK``; None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def test_the_quickstart_uses_only_names_and_keywords_the_packages_have():
    import importlib

    tree = ast.parse(quickstart())
    aliases = _aliases(tree)
    assert set(aliases.values()) == {"keras_wgsef", "tflite_export"}, aliases
    used = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        path = _dotted(node.func)
        if not path or path[0] not in aliases:
            continue
        obj = importlib.import_module(aliases[path[0]])
        for name in path[1:]:
            obj = getattr(obj, name)  # AttributeError: the README calls a name the package lost
        keywords = {k.arg: None for k in node.keywords if k.arg}
        inspect.signature(obj).bind_partial(**keywords)  # TypeError: a keyword the function lost
        used += 1
    assert used >= 5, used  # the block's calls into the two packages were found


def test_the_readme_is_a_landing_page():
    text = README.read_text()
    assert len(text) <= 15_000, len(text)
    commit = r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b"  # a commit hash: hex with letters and digits
    for pattern in (r"shared/", r"\bissue \d+", r"\bthe issue\b", r"\bthis machine\b", commit):
        assert not re.search(pattern, text), pattern


@pytest.mark.slow
def test_the_quickstart_runs_as_written(tmp_path):
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart())
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    run = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "{'conv2d': 8, 'conv2d_1': 16, 'conv2d_2': 32}" in run.stdout, run.stdout[-3000:]
    assert re.search(r"MACs / inference[\s|]+508,352", run.stdout), run.stdout[-3000:]  # the shrunk model's
    assert (tmp_path / "quickstart_model" / "model_int8.tflite").stat().st_size > 0
