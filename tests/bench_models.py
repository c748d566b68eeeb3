"""The benchmark architectures (benchmarks/models.py) for the tests, imported from the one definition."""

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "bench_models_impl", pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "models.py"
)
assert _spec is not None and _spec.loader is not None
_models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_models)

anchor = _models.anchor
resnet8 = _models.resnet8
dscnn = _models.dscnn
BUILDERS = _models.BUILDERS
scaled = _models.scaled
anchor1d = _models.anchor1d
resnet8_1d = _models.resnet8_1d
dscnn1d = _models.dscnn1d
BUILDERS_1D = _models.BUILDERS_1D
