"""Every ``keras.layers`` class through the pipeline a user runs, or refused with the class and the way out.

Per class a minimal model (``tests/layer_census.py``, built on ``tests/test_layer_rules.py``'s
:func:`around`): ``make_groups`` -> ``WGSEF(SGD) + ReachK`` in ``model.fit`` (3 epochs, 32 random
samples, penalty from the first step, projection at epoch 2) -> exactly k nonzero groups in each of
its scopes -> ``shrink`` with equal outputs -> ``to_tflite_int8`` run on LiteRT. All classes train
in one ``fit`` of one multi-input model (measured on a 2-core host shared with other jobs: the
batch of 127 classes trains and shrinks in ~160 s, the refusals take ~20 s, one int8 conversion
and LiteRT run ~1-9 s, ~110 s for the 122 that convert), so the int8 part runs on a representative
subset here and over every class under ``-m slow``.

:data:`TABLE` says where each class lands; the test asserts it.
"""

import inspect
import os

import keras
import pytest
from layer_census import EXPORT, REFUSED, SHRINK, builders, export, refusal, run_pipeline

L = keras.layers

_NO_INT8 = "the converter has no int8 kernel for {}: the shrunk model is exact, its export raises ConversionError"
_FOREIGN = "strings, token ids or foreign code: channels have no meaning there"

#: class -> (where it lands, why). Classes under another name in ``keras.layers`` (``MaxPooling2D`` /
#: ``MaxPool2D``, ``Convolution2D``) are one class, listed once.
TABLE: dict[str, tuple[str, str]] = {
    **dict.fromkeys(
        [
            "Activation",
            "ActivityRegularization",
            "AdaptiveAveragePooling1D",
            "AdaptiveAveragePooling2D",
            "AdaptiveMaxPooling1D",
            "AdaptiveMaxPooling2D",
            "Add",
            "AdditiveAttention",
            "AlphaDropout",
            "Attention",
            "AugMix",
            "AutoContrast",
            "Average",
            "AveragePooling1D",
            "AveragePooling2D",
            "BatchNormalization",
            "Bidirectional",
            "CenterCrop",
            "Concatenate",
            "ContrastLimitedAdaptiveHistogramEqualization",
            "Conv1D",
            "Conv1DTranspose",
            "Conv2D",
            "Conv2DTranspose",
            "Conv3D",
            "Conv3DTranspose",
            "ConvLSTM1D",
            "ConvLSTM2D",
            "ConvLSTM3D",
            "Cropping1D",
            "Cropping2D",
            "Cropping3D",
            "CutMix",
            "Dense",
            "DepthwiseConv1D",
            "DepthwiseConv2D",
            "Discretization",
            "Dot",
            "Dropout",
            "ELU",
            "EinsumDense",
            "Embedding",
            "Equalization",
            "Flatten",
            "GRU",
            "GaussianDropout",
            "GaussianNoise",
            "GlobalAveragePooling1D",
            "GlobalAveragePooling2D",
            "GlobalAveragePooling3D",
            "GlobalMaxPool1D",
            "GlobalMaxPool2D",
            "GlobalMaxPool3D",
            "GroupNormalization",
            "GroupQueryAttention",
            "Identity",
            "InputLayer",
            "LSTM",
            "LayerNormalization",
            "LeakyReLU",
            "Masking",
            "MaxNumBoundingBoxes",
            "MaxPool1D",
            "MaxPool2D",
            "Maximum",
            "MelSpectrogram",
            "Minimum",
            "MixUp",
            "MultiHeadAttention",
            "Multiply",
            "Normalization",
            "PReLU",
            "Permute",
            "Pipeline",
            "RMSNormalization",
            "RNN",
            "RandAugment",
            "RandomBrightness",
            "RandomColorDegeneration",
            "RandomColorJitter",
            "RandomContrast",
            "RandomCrop",
            "RandomElasticTransform",
            "RandomErasing",
            "RandomFlip",
            "RandomGaussianBlur",
            "RandomGrayscale",
            "RandomHue",
            "RandomInvert",
            "RandomPerspective",
            "RandomPosterization",
            "RandomRotation",
            "RandomSaturation",
            "RandomSharpness",
            "RandomShear",
            "RandomTranslation",
            "RandomZoom",
            "ReLU",
            "RepeatVector",
            "Rescaling",
            "Reshape",
            "Resizing",
            "ReversibleEmbedding",
            "STFTSpectrogram",
            "SeparableConv1D",
            "SeparableConv2D",
            "SimpleRNN",
            "Softmax",
            "Solarization",
            "SpatialDropout1D",
            "SpatialDropout2D",
            "SpatialDropout3D",
            "SpectralNormalization",
            "Subtract",
            "TimeDistributed",
            "UnitNormalization",
            "UpSampling1D",
            "UpSampling2D",
            "UpSampling3D",
            "ZeroPadding1D",
            "ZeroPadding2D",
            "ZeroPadding3D",
        ],
        (EXPORT, ""),
    ),
    "AdaptiveAveragePooling3D": (SHRINK, _NO_INT8.format("AVERAGE_POOL_3D")),
    "AdaptiveMaxPooling3D": (SHRINK, _NO_INT8.format("MAX_POOL_3D")),
    "AveragePooling3D": (SHRINK, _NO_INT8.format("AVERAGE_POOL_3D")),
    "MaxPool3D": (SHRINK, _NO_INT8.format("MAX_POOL_3D")),
    "CategoryEncoding": (SHRINK, _NO_INT8.format("DenseBincount (a TensorFlow op, no TFLite builtin)")),
    **dict.fromkeys(
        ["FlaxLayer", "HashedCrossing", "Hashing", "IntegerLookup", "JaxLayer", "StringLookup"], (REFUSED, _FOREIGN)
    ),
    **dict.fromkeys(["TFSMLayer", "TextVectorization", "TorchModuleWrapper"], (REFUSED, _FOREIGN)),
    **dict.fromkeys(
        ["GRUCell", "LSTMCell", "SimpleRNNCell", "StackedRNNCells"], (REFUSED, "an RNN cell runs inside an RNN layer")
    ),
    "Lambda": (REFUSED, "arbitrary code"),
    "Layer": (REFUSED, "a custom layer without a rule"),
    "Wrapper": (REFUSED, "a custom wrapper without a rule"),
}

#: the int8 part in the default suite: a producer of each kind, a carrier, a merge, a recurrent layer,
#: attention, an inference identity, and a class the converter cannot take
EXPORT_SUBSET = (
    "Conv2D",
    "DepthwiseConv2D",
    "BatchNormalization",
    "Add",
    "LSTM",
    "MultiHeadAttention",
    "RandomFlip",
    "Embedding",
    "AveragePooling3D",
)


def test_the_table_names_every_keras_layer_class_once():
    classes = {obj for obj in vars(L).values() if inspect.isclass(obj) and issubclass(obj, L.Layer)}
    listed = [getattr(L, n) for n in TABLE]
    assert len(set(listed)) == len(listed)  # no class under two names
    assert set(listed) == classes, sorted(c.__name__ for c in classes - set(listed))
    assert {n for n, (where, _) in TABLE.items() if where != REFUSED} <= set(builders())


#: what the JAX and torch runs of ``make test`` train (they set ``WGSEF_CASE_FRACTION`` below 1): the
#: classes whose variables live in cells, wrappers or sublayers, and one or two of every other kind;
#: ``make test-slow`` trains every class on every backend
BACKEND_SUBSET = (
    *("LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "Bidirectional", "TimeDistributed", "SpectralNormalization"),
    *("MultiHeadAttention", "GroupQueryAttention", "Attention", "EinsumDense", "Embedding", "Dense"),
    *("Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "BatchNormalization"),
    *("LayerNormalization", "PReLU", "Add", "Concatenate", "GlobalAveragePooling2D", "RandomFlip"),
)


def _trained_names() -> list[str]:
    names = sorted(n for n, (where, _) in TABLE.items() if where != REFUSED)
    if float(os.environ.get("WGSEF_CASE_FRACTION", "1")) < 1:
        names = [n for n in names if n in BACKEND_SUBSET]
    return names


@pytest.fixture(scope="module")
def trained():
    """The classes that are not refused, trained together, checked and shrunk (``layer_census.run_pipeline``)."""
    return run_pipeline(_trained_names())


def test_the_backend_subset_is_in_the_table():
    assert set(BACKEND_SUBSET) <= {n for n, (where, _) in TABLE.items() if where != REFUSED}


@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_layer_class_trains_to_k_and_shrinks_or_is_refused_by_name(name, trained):
    where, why = TABLE[name]
    if where == REFUSED:
        message = refusal(name)
        assert name in message, message  # the class is named
        assert "register_channel_rule" in message or "channels have no meaning" in message, message
        return
    if name not in trained:
        pytest.skip("the JAX and torch runs of make test train BACKEND_SUBSET; make test-slow trains every class")
    outcome = trained[name]
    assert outcome.stage == SHRINK, outcome.error  # a rule whose groups the optimizer cannot train fails here
    assert outcome.nonzero == outcome.k and outcome.k, (outcome.nonzero, outcome.k)  # exactly k per scope
    assert outcome.same and outcome.smaller


def _export_cases():
    for name, (where, _why) in sorted(TABLE.items()):
        if where == REFUSED:
            continue
        marks = () if name in EXPORT_SUBSET else (pytest.mark.slow,)
        yield pytest.param(name, where, id=name, marks=(pytest.mark.tensorflow_only, *marks))


@pytest.mark.parametrize("name, where", list(_export_cases()))
def test_the_shrunk_model_of_every_layer_class_runs_int8_on_litert_or_the_converter_says_why(name, where, trained):
    from tflite_export.convert import ConversionError

    model = trained[name].model
    assert model is not None, trained[name].error
    if where == SHRINK:
        with pytest.raises(ConversionError, match="has no int8 TFLite kernel"):
            export(model)
        return
    agreement = export(model)
    assert agreement.argmax_agreement >= 0.9, str(agreement)
