"""A minimal model for every ``keras.layers`` class, and the pipeline a user runs, batched.

Builders reuse the per-class models of ``tests/test_layer_rules.py`` (:func:`around`: a producer
``a`` (8 channels) -> the layer -> a consumer ``b`` (4 channels) -> pool -> ``head``). The pipeline
(:func:`run_pipeline`): ``make_groups`` -> ``WGSEF`` + ``ReachK`` in ``model.fit`` -> exactly k
nonzero groups per scope -> ``shrink`` with equal outputs -> int8 ``to_tflite_int8`` run on LiteRT.
Many classes train in one ``fit`` (one multi-input, multi-output model of the per-class models);
a batch that fails is split in halves until the failing classes stand alone, so every class gets
its own outcome.
"""

from __future__ import annotations

import dataclasses
import os
import traceback
from collections.abc import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from test_layer_rules import PASSING, around

import keras_wgsef as kw
from keras_wgsef.graph import rules as cr

L = keras.layers

#: outcomes of the pipeline
EXPORT, SHRINK, REFUSED = "train+shrink+export", "train+shrink", "refused"


def _front(layer_fn: Callable, shape=(12, 12, 3)) -> Callable[[], keras.Model]:
    """``x -> layer -> a -> b -> pool -> head``: for layers that need the 3 colour channels of an image."""
    return lambda: around(
        lambda t: t, shape=shape, producer=lambda t: L.Conv2D(8, 3, padding="same", name="a")(layer_fn(t))
    )


def _mid(layer_fn: Callable, **kwargs) -> Callable[[], keras.Model]:
    """``x -> a -> layer -> b -> pool -> head`` (:func:`around`)."""
    return lambda: around(layer_fn, **kwargs)


def _merge(layer_cls: type, shape=(12, 12, 3), **cfg) -> Callable[[], keras.Model]:
    def build():
        keras.utils.set_random_seed(0)
        x = keras.Input(shape)
        a = L.Conv2D(8, 3, padding="same", name="a")(x)
        a2 = L.Conv2D(8, 3, padding="same", name="a2")(x)
        h = layer_cls(**cfg)([a, a2])
        h = L.Dense(4, name="b")(h)
        return keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling2D()(h)))

    return build


SEQ = {"shape": (10, 3)}
VOL = {"shape": (4, 4, 4, 2)}
VEC = {"shape": (6,), "producer": lambda t: L.Dense(8, name="a")(t)}


def _seq_producer(make: Callable) -> Callable[[], keras.Model]:
    """``x (7, 5) -> d -> layer (the producer under test) -> head``."""

    def build():
        keras.utils.set_random_seed(0)
        x = keras.Input((7, 5))
        h = make()(L.Conv1D(8, 3, padding="same", name="d")(x))
        h = L.Flatten()(h) if len(h.shape) > 2 else h
        return keras.Model(x, L.Dense(3, name="head")(L.Dense(6, name="e")(h)))

    return build


def _tokens(layer_fn: Callable) -> Callable[[], keras.Model]:
    def build():
        keras.utils.set_random_seed(0)
        x = keras.Input((5,), dtype="int32")
        h = L.Conv1D(4, 3, padding="same", name="b")(layer_fn(x))
        return keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(h)))

    return build


def _signal(layer_fn: Callable) -> Callable[[], keras.Model]:
    def build():
        keras.utils.set_random_seed(0)
        x = keras.Input((1024, 1))
        h = L.Rescaling(0.05)(L.Permute((2, 1))(layer_fn(x)))  # spectrogram magnitudes reach ~30
        h = L.Conv1D(8, 3, padding="same", name="a")(h)
        return keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(L.Conv1D(4, 1, name="b")(h))))

    return build


def _named_passing(case: str) -> Callable[[], keras.Model]:
    fn, kwargs = PASSING[case]
    return lambda: around(fn, **kwargs)


_COLOUR = {  # augmentation layers that read 3 colour channels: on the input image
    "RandomHue": lambda: L.RandomHue(0.2, value_range=(0, 1)),
    "RandomSaturation": lambda: L.RandomSaturation(0.2, value_range=(0, 1)),
    "RandomColorJitter": lambda: L.RandomColorJitter(value_range=(0, 1), brightness_factor=0.2),
    "RandomGrayscale": lambda: L.RandomGrayscale(0.5),
    "RandomColorDegeneration": lambda: L.RandomColorDegeneration(0.5, value_range=(0, 1)),
    "RandomSharpness": lambda: L.RandomSharpness(0.5, value_range=(0, 1)),
    "RandomPosterization": lambda: L.RandomPosterization((1, 8), value_range=(0, 1)),
    "RandomInvert": lambda: L.RandomInvert(value_range=(0, 1)),
    "RandomBrightness": lambda: L.RandomBrightness(0.2, value_range=(0, 1)),
    "RandomContrast": lambda: L.RandomContrast(0.3, value_range=(0, 1)),
    "RandomGaussianBlur": lambda: L.RandomGaussianBlur(0.5, value_range=(0, 1)),
    "RandomErasing": lambda: L.RandomErasing(0.5, value_range=(0, 1)),
    "RandomElasticTransform": lambda: L.RandomElasticTransform(0.5, value_range=(0, 1)),
    "RandomPerspective": lambda: L.RandomPerspective(0.5),
    "RandomZoom": lambda: L.RandomZoom(0.2),
    "RandomCrop": lambda: L.RandomCrop(12, 12),
    "RandomShear": lambda: L.RandomShear(0.2, 0.2),
    "AugMix": lambda: L.AugMix(value_range=(0, 1)),
    "CutMix": lambda: L.CutMix(),
    "MixUp": lambda: L.MixUp(),
    "RandAugment": lambda: L.RandAugment(value_range=(0, 1)),
    "Solarization": lambda: L.Solarization(0.5, value_range=(0, 1)),
    "Equalization": lambda: L.Equalization(value_range=(0, 1)),
    "AutoContrast": lambda: L.AutoContrast(value_range=(0, 1)),
    "ContrastLimitedAdaptiveHistogramEqualization": lambda: L.ContrastLimitedAdaptiveHistogramEqualization(
        value_range=(0, 1)
    ),
    "MaxNumBoundingBoxes": lambda: L.MaxNumBoundingBoxes(5),
}


def _spatial(kind: str) -> dict[str, Callable[[], keras.Model]]:
    out: dict[str, Callable[[], keras.Model]] = {}
    for d, extra in ((1, SEQ), (2, {}), (3, VOL)):
        args = {
            "MaxPool": {"pool_size": 2},
            "AveragePooling": {"pool_size": 2},
            "AdaptiveAveragePooling": {"output_size": 2},
            "AdaptiveMaxPooling": {"output_size": 2},
            "ZeroPadding": {"padding": 1},
            "Cropping": {"cropping": 1},
            "UpSampling": {"size": 2},
            "GlobalAveragePooling": {},
            "GlobalMaxPool": {},
            "SpatialDropout": {"rate": 0.3},
        }[kind]
        cls = getattr(L, f"{kind}{d}D")
        out[f"{kind}{d}D"] = _mid(lambda t, cls=cls, args=args: cls(**args)(t), **extra)
    return out


def builders() -> dict[str, Callable[[], keras.Model]]:
    """Class name -> a minimal model that calls the class (classes refused before a model exists are absent)."""
    b: dict[str, Callable[[], keras.Model]] = {}
    for kind in (
        "MaxPool",
        "AveragePooling",
        "AdaptiveAveragePooling",
        "AdaptiveMaxPooling",
        "ZeroPadding",
        "Cropping",
        "UpSampling",
        "GlobalAveragePooling",
        "GlobalMaxPool",
        "SpatialDropout",
    ):
        b.update(_spatial(kind))
    for name, make in _COLOUR.items():
        b[name] = _front(lambda t, make=make: make()(t))
    simple = {
        "Activation": lambda t: L.Activation("relu")(t),
        "ReLU": lambda t: L.ReLU()(t),
        "LeakyReLU": lambda t: L.LeakyReLU()(t),
        "ELU": lambda t: L.ELU()(t),
        "Identity": lambda t: L.Identity()(t),
        "Dropout": lambda t: L.Dropout(0.3)(t),
        "GaussianNoise": lambda t: L.GaussianNoise(0.3)(t),
        "GaussianDropout": lambda t: L.GaussianDropout(0.3)(t),
        "AlphaDropout": lambda t: L.AlphaDropout(0.3)(t),
        "ActivityRegularization": lambda t: L.ActivityRegularization(1e-3)(t),
        "BatchNormalization": lambda t: L.BatchNormalization()(t),
        "LayerNormalization": lambda t: L.LayerNormalization()(t),
        "GroupNormalization": lambda t: L.GroupNormalization(groups=-1)(t),
        "Normalization": lambda t: L.Normalization(mean=0.0, variance=2.0)(t),
        "Softmax": lambda t: L.Softmax()(t),
        "Resizing": lambda t: L.Resizing(6, 6)(t),
        "CenterCrop": lambda t: L.CenterCrop(8, 8)(t),
        "Rescaling": lambda t: L.Rescaling(0.5)(t),
        "UnitNormalization": lambda t: L.UnitNormalization()(t),
        "RMSNormalization": lambda t: L.RMSNormalization()(t),
        "PReLU": lambda t: L.PReLU()(t),
        "Permute": lambda t: L.Permute((2, 1, 3))(t),
        "Reshape": lambda t: L.Reshape((144, 8))(t),
        "RandomFlip": lambda t: L.RandomFlip()(t),
        "RandomRotation": lambda t: L.RandomRotation(0.2)(t),
        "RandomTranslation": lambda t: L.RandomTranslation(0.1, 0.1)(t),
        "Pipeline": lambda t: L.Pipeline([L.RandomFlip(), L.RandomRotation(0.1)])(t),
        "DepthwiseConv2D": lambda t: L.DepthwiseConv2D(3, padding="same")(t),
        "Conv2D": lambda t: L.Conv2D(6, 3, padding="same")(t),
        "Conv2DTranspose": lambda t: L.Conv2DTranspose(6, 3, padding="same")(t),
        "SeparableConv2D": lambda t: L.SeparableConv2D(6, 3, padding="same")(t),
        "SpectralNormalization": lambda t: L.SpectralNormalization(L.Conv2D(6, 3, padding="same"))(t),
        "TimeDistributed": lambda t: L.TimeDistributed(L.Dense(6, activation="relu"))(t),
    }
    for name, fn in simple.items():
        b[name] = _mid(fn)
    b["InputLayer"] = _mid(lambda t: t)
    b["Flatten"] = _mid(lambda t: L.Flatten()(t), shape=(6, 6, 3), head_pool=L.Identity)
    b["Dense"] = _mid(lambda t: L.Dense(6, activation="relu")(t), **VEC)
    b["RepeatVector"] = _named_passing("RepeatVector")
    b["Masking"] = _named_passing("Masking(0)")
    b["EinsumDense"] = _named_passing("EinsumDense producer")
    b["Discretization"] = _mid(lambda t: L.Discretization(bin_boundaries=[0.0, 1.0])(t), **VEC)
    b["Dot"] = lambda: _dot()
    for d, extra in ((1, SEQ), (3, VOL)):
        b[f"Conv{d}D"] = _mid(lambda t, d=d: getattr(L, f"Conv{d}D")(6, 3, padding="same")(t), **extra)
        b[f"Conv{d}DTranspose"] = _mid(
            lambda t, d=d: getattr(L, f"Conv{d}DTranspose")(6, 3, padding="same")(t), **extra
        )
    b["DepthwiseConv1D"] = _mid(lambda t: L.DepthwiseConv1D(3, padding="same")(t), **SEQ)
    b["SeparableConv1D"] = _mid(lambda t: L.SeparableConv1D(6, 3, padding="same")(t), **SEQ)
    for name in ("Add", "Subtract", "Average", "Maximum", "Minimum", "Multiply", "Concatenate"):
        b[name] = _merge(getattr(L, name))
    b["LSTM"] = _seq_producer(lambda: L.LSTM(6))
    b["GRU"] = _seq_producer(lambda: L.GRU(6))
    b["SimpleRNN"] = _seq_producer(lambda: L.SimpleRNN(6))
    b["Bidirectional"] = _seq_producer(lambda: L.Bidirectional(L.LSTM(6)))
    b["RNN"] = _seq_producer(lambda: L.RNN(L.LSTMCell(6)))
    b["ConvLSTM1D"] = _conv_lstm(1)
    b["ConvLSTM2D"] = _conv_lstm(2)
    b["ConvLSTM3D"] = _conv_lstm(3)
    b["Attention"] = _mid(lambda t: L.Attention()([t, t]), **SEQ)
    b["AdditiveAttention"] = _mid(lambda t: L.AdditiveAttention()([t, t]), **SEQ)
    b["MultiHeadAttention"] = _mid(lambda t: L.MultiHeadAttention(2, 4)(t, t), **SEQ)
    b["GroupQueryAttention"] = _mid(
        lambda t: L.GroupQueryAttention(head_dim=4, num_query_heads=2, num_key_value_heads=1)(t, t), **SEQ
    )
    b["Embedding"] = _tokens(lambda t: L.Embedding(20, 8, name="a")(t))
    b["ReversibleEmbedding"] = _tokens(lambda t: L.ReversibleEmbedding(20, 8, name="a")(t))
    b["CategoryEncoding"] = _category_encoding
    b["MelSpectrogram"] = _signal(
        lambda t: L.MelSpectrogram(fft_length=128, sequence_stride=64, num_mel_bins=16)(L.Reshape((1024,))(t))
    )
    b["STFTSpectrogram"] = _signal(lambda t: L.STFTSpectrogram(frame_length=64, frame_step=32, fft_length=64)(t))
    b["Lambda"] = _mid(lambda t: L.Lambda(lambda u: u * 2.0)(t))
    b["IntegerLookup"] = _tokens(lambda t: L.Embedding(20, 8, name="a")(L.IntegerLookup(vocabulary=[1, 2, 3])(t)))
    b["Hashing"] = _tokens(lambda t: L.Embedding(20, 8, name="a")(L.Hashing(num_bins=20)(t)))
    return b


def _dot() -> keras.Model:
    keras.utils.set_random_seed(0)
    x = keras.Input((5,))
    a, a2 = L.Dense(8, name="a")(x), L.Dense(8, name="a2")(x)
    h = L.Concatenate()([L.Dot(axes=-1, normalize=True)([a, a2]), L.Dense(4, name="b")(x)])
    return keras.Model(x, L.Dense(2, name="head")(h))


def _conv_lstm(rank: int) -> Callable[[], keras.Model]:
    def build():
        keras.utils.set_random_seed(0)
        x = keras.Input((3, *([4] * rank), 2))
        h = getattr(L, f"ConvLSTM{rank}D")(6, 3, padding="same", name="rnn")(x)
        return keras.Model(x, L.Dense(3, name="head")(L.Dense(5, name="e")(L.Flatten()(h))))

    return build


def _category_encoding() -> keras.Model:
    keras.utils.set_random_seed(0)
    x = keras.Input((3,), dtype="int32")
    h = L.Dense(8, name="a")(L.CategoryEncoding(num_tokens=10, output_mode="multi_hot")(x))
    return keras.Model(x, L.Dense(3, name="head")(L.Dense(4, name="b")(h)))


#: classes refused before any model is built: an instance for ``rule_for`` (None: the registry entry)
NO_MODEL: dict[str, Callable[[], object] | None] = {
    "Layer": lambda: L.Layer(),
    "Wrapper": lambda: L.Wrapper(L.Dense(2)),
    "LSTMCell": lambda: L.LSTMCell(4),
    "GRUCell": lambda: L.GRUCell(4),
    "SimpleRNNCell": lambda: L.SimpleRNNCell(4),
    "StackedRNNCells": lambda: L.StackedRNNCells([L.LSTMCell(4)]),
    "StringLookup": lambda: L.StringLookup(vocabulary=["a", "b"]),
    "TextVectorization": lambda: L.TextVectorization(),
    "HashedCrossing": lambda: L.HashedCrossing(num_bins=4),
    "TFSMLayer": None,
    "TorchModuleWrapper": None,
    "JaxLayer": None,
    "FlaxLayer": None,
}


@dataclasses.dataclass
class Outcome:
    """What the pipeline did with one class: the stage reached and what each check measured."""

    name: str
    stage: str = ""  # REFUSED, SHRINK (trained, exactly k, shrunk equal), EXPORT (and ran on LiteRT)
    error: str = ""
    nonzero: dict = dataclasses.field(default_factory=dict)
    k: dict = dataclasses.field(default_factory=dict)
    same: bool = False
    smaller: bool = False
    agreement: object = None
    model: object = None  # the shrunk model


def sample(model: keras.Model, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for t in model.inputs:
        shape = (n, *[int(s) for s in t.shape[1:]])
        if "int" in str(t.dtype):
            out.append(rng.integers(1, 4, shape).astype("int32"))
        else:
            out.append(rng.uniform(0, 1, shape).astype("float32"))
    return out


def refusal(name: str) -> str:
    """The error the pipeline gives for a refused class ('' when it is not refused)."""
    if name in NO_MODEL:
        make = NO_MODEL[name]
        if make is None:
            entry = cr._REGISTRY[getattr(L, name)]
            return f"{name}: {entry.reason}" if isinstance(entry, cr.Refuse) else ""
        try:
            cr.rule_for(make(), f"block/{name.lower()}")
        except cr.UnsupportedLayerError as e:
            return str(e)
        return ""
    try:
        kw.make_groups(builders()[name]())
    except cr.UnsupportedLayerError as e:
        return str(e)
    return ""


def run_pipeline(names: list[str], *, epochs: int = 3, n: int = 32) -> dict[str, Outcome]:
    """Trains the classes' models together (one ``fit``), then checks and shrinks each; failures split the batch."""
    from tflite_export.shrink import output_difference, shrink

    make = builders()
    subs = {}
    for name in names:
        m = make[name]()
        # named after the class (its scopes' prefix); a Sequential, since flatten_model misreads the node
        # indices of a Functional model nested in a Functional model (reported)
        subs[name] = keras.Sequential([keras.Input(m.inputs[0].shape[1:], dtype=m.inputs[0].dtype), m], name=name)
    inputs = [keras.Input(t.shape[1:], dtype=t.dtype) for m in subs.values() for t in m.inputs]
    outputs = [m(t) for m, t in zip(subs.values(), inputs)]
    model = keras.Model(inputs, outputs)
    try:
        x = [a for m in subs.values() for a in sample(m, n, seed=0)]
        rng = np.random.default_rng(1)
        y = [rng.normal(size=(n, *[int(s) for s in o.shape[1:]])).astype("float32") for o in outputs]
        opt = kw.WGSEF(keras.optimizers.SGD(0.05), k=0.5, groups=kw.make_groups(model))
        model.compile(optimizer=opt, loss=["mse"] * len(outputs))
        reach = kw.callbacks.ReachK(start_epoch=0, project_epoch=epochs - 1, verbose=0)
        model.fit(x, y, epochs=epochs, batch_size=n // 2, verbose=0, callbacks=[reach])
        nonzero, k = kw.nonzero_groups(model), {s.name: s.k for s in opt.scopes}
        test = [a for m in subs.values() for a in sample(m, 4, seed=5)]
        small = shrink(model, test)
    except Exception as e:
        if len(names) == 1:
            where = traceback.extract_tb(e.__traceback__)[-1]
            return {names[0]: Outcome(names[0], error=f"{type(e).__name__}: {e} (at {where.filename}:{where.lineno})")}
        half = len(names) // 2
        return {**run_pipeline(names[:half], epochs=epochs, n=n), **run_pipeline(names[half:], epochs=epochs, n=n)}
    out = {}
    for name, m in subs.items():
        mine = {s: v for s, v in k.items() if s.startswith(f"{name}/")}
        o = Outcome(name, nonzero={s: nonzero[s] for s in mine}, k=mine)
        new = small.get_layer(name)
        xs = sample(m, 4, seed=7)
        o.same = output_difference(m, new, xs[0] if len(xs) == 1 else xs)[2]
        o.smaller = new.count_params() < m.count_params()
        o.stage = SHRINK if o.same and o.nonzero == o.k and mine else ""
        o.error = "" if o.stage else f"nonzero {o.nonzero} k {mine} same {o.same}"
        o.model = new
        out[name] = o
    return out


def export(model: keras.Model) -> object:
    """The shrunk model as int8 on LiteRT: its :class:`tflite_export.litert.Agreement` with the float model."""
    from tflite_export.convert import to_tflite_int8
    from tflite_export.litert import check_agreement

    x = sample(model, 64, seed=3)[0]
    tfl = to_tflite_int8(model, x, check=False)
    return check_agreement(model, tfl, x)
