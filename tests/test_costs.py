"""MAC and parameter counts checked against hand-computed values."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
from anchor_model import anchor_cnn

from keras_wgsef.graph.costs import count_macs, count_params, layer_macs

L = keras.layers


def test_anchor_cnn_matches_design_notes():
    m = anchor_cnn()
    macs, params = count_macs(m), count_params(m)
    assert params["total"] == 24_394 == m.count_params()
    assert macs["total"] == 1_919_872
    assert macs["conv2d"] == 28 * 28 * 9 * 16
    assert macs["conv2d_1"] == 14 * 14 * 9 * 16 * 32
    assert macs["conv2d_2"] == 7 * 7 * 9 * 32 * 64
    assert macs["dense"] == 640
    assert macs["batch_normalization"] == 0 and macs["max_pooling2d"] == 0
    assert params["batch_normalization_2"] == 4 * 64


def test_depthwise_separable_transpose_and_strides():
    x = keras.Input((10, 10, 4))
    h = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(x)  # 5x5 out
    h = L.SeparableConv2D(6, 3, depth_multiplier=2, name="sep")(h)  # 3x3 out
    h = L.Conv2DTranspose(5, 2, strides=2, name="tr")(h)  # 3x3 in -> 6x6
    h = L.Conv1D(3, 2, name="c1")(L.Reshape((36, 5), name="rs")(h))  # 35 out positions
    y = L.Dense(2, name="d")(h)  # dense on (35, 3)
    m = keras.Model(x, y)
    macs = count_macs(m)
    assert macs["dw"] == 25 * 9 * 4
    assert macs["sep"] == 9 * (9 * 4 * 2 + 8 * 6)
    assert macs["tr"] == 9 * (2 * 2 * 5 * 6)
    assert macs["c1"] == 35 * 2 * 5 * 3
    assert macs["d"] == 35 * 3 * 2
    assert macs["total"] == sum(v for k, v in macs.items() if k != "total")
    assert count_params(m)["total"] == m.count_params()


def test_shared_layer_counts_macs_per_call_and_params_once():
    a, b = keras.Input((4,)), keras.Input((4,))
    d = L.Dense(3, name="shared")
    m = keras.Model([a, b], L.Add()([d(a), d(b)]))
    assert count_macs(m)["shared"] == 2 * 12
    assert count_params(m)["shared"] == 15 == count_params(m)["total"]


def test_nested_model_is_flattened():
    inner = keras.Sequential([keras.Input((8, 8, 2)), L.Conv2D(4, 3, padding="same", name="ic")], name="inner")
    x = keras.Input((8, 8, 2))
    m = keras.Model(x, L.GlobalAveragePooling2D()(inner(x)))
    assert count_macs(m)["inner/ic"] == 64 * 9 * 2 * 4
    assert count_params(m)["total"] == 9 * 2 * 4 + 4 == m.count_params()


def test_mobilenet_params_match_keras():
    m = keras.applications.MobileNet(input_shape=(32, 32, 3), alpha=0.25, weights=None, classes=10)
    assert count_params(m)["total"] == m.count_params()
    # first layer: 3x3 stride 2 conv (valid after padding) to 8 channels on a 16x16 output
    assert count_macs(m)["conv1"] == 16 * 16 * 9 * 3 * 8


def test_subclassed_model_is_refused():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    m = Sub()
    m(keras.ops.zeros((1, 3)))
    with pytest.raises(TypeError, match="subclassed"):
        count_macs(m)


# --- every layer that multiplies: hand counts ------------------------------------------------


def _macs(outputs, *inputs):
    return count_macs(keras.Model(list(inputs) if len(inputs) > 1 else inputs[0], outputs))


def test_recurrent_layers_count_each_gate_matmul_per_step():
    x = keras.Input((10, 6))  # 10 steps of 6 features, 8 units
    macs = _macs(
        [
            L.LSTM(8, name="lstm")(x),
            L.LSTM(8, return_sequences=True, go_backwards=True, name="lstm_seq")(x),
            L.GRU(8, name="gru")(x),
            L.GRU(8, reset_after=False, name="gru_before")(x),
            L.SimpleRNN(8, name="rnn")(x),
            L.Bidirectional(L.LSTM(8), name="bi")(x),
            L.Bidirectional(L.GRU(8), backward_layer=L.GRU(5, go_backwards=True), name="bi_uneven")(x),
            L.RNN(L.StackedRNNCells([L.LSTMCell(4), L.GRUCell(3)]), name="stacked")(x),
        ],
        x,
    )
    assert macs["lstm"] == macs["lstm_seq"] == 10 * 4 * 8 * (6 + 8)
    assert macs["gru"] == macs["gru_before"] == 10 * 3 * 8 * (6 + 8)
    assert macs["rnn"] == 10 * 8 * (6 + 8)
    assert macs["bi"] == 2 * macs["lstm"]
    assert macs["bi_uneven"] == macs["gru"] + 10 * 3 * 5 * (6 + 5)
    assert macs["stacked"] == 10 * (4 * 4 * (6 + 4) + 3 * 3 * (4 + 3))


def test_conv_lstm_counts_input_and_recurrent_convolutions_over_the_output_map():
    x = keras.Input((5, 8, 8, 3))  # 5 steps of 8x8x3 maps, 4 filters
    macs = _macs(
        [
            L.ConvLSTM2D(4, 3, padding="same", name="same")(x),
            L.ConvLSTM2D(4, 3, strides=2, return_sequences=True, name="strided")(x),  # 6x6 valid -> 3x3
        ],
        x,
    )
    assert macs["same"] == 5 * 64 * 9 * 4 * 4 * (3 + 4)
    assert macs["strided"] == 5 * 9 * 9 * 4 * 4 * (3 + 4)
    y = keras.Input((3, 6, 2))
    assert _macs(L.ConvLSTM1D(5, 2, name="c1")(y), y)["c1"] == 3 * 5 * 2 * 4 * 5 * (2 + 5)


def test_time_distributed_einsum_and_channels_first_convolution():
    x = keras.Input((4, 6, 6, 3))
    macs = _macs(
        [
            L.TimeDistributed(L.Conv2D(5, 3), name="td_conv")(x),  # 4 steps of a 4x4 output
            L.TimeDistributed(L.Dense(7), name="td_dense")(x),
            L.EinsumDense("...c,cd->...d", output_shape=7, name="ellipsis")(x),
            L.EinsumDense("abcde,ef->abcdf", output_shape=(4, 6, 6, 7), name="letters")(x),
            L.EinsumDense("abcde,bef->af", output_shape=2, name="contract_steps")(x),
        ],
        x,
    )
    assert macs["td_conv"] == 4 * 16 * 9 * 3 * 5
    assert macs["td_dense"] == macs["ellipsis"] == macs["letters"] == 4 * 36 * 3 * 7
    assert macs["contract_steps"] == 4 * 6 * 6 * 3 * 2
    y = keras.Input((3, 8, 8))  # channels first: 3 channels of 8x8, a 6x6 output
    assert _macs(L.Conv2D(5, 3, data_format="channels_first", name="first")(y), y)["first"] == 36 * 9 * 3 * 5


def test_attention_layers_count_projections_scores_and_values():
    q, v = keras.Input((10, 6)), keras.Input((7, 5))  # cross attention: T_q 10, T_v 7
    macs = _macs(
        [
            L.MultiHeadAttention(2, 4, name="self")(q, q),
            L.MultiHeadAttention(2, 4, value_dim=3, output_shape=9, name="cross")(q, v),
            L.GroupQueryAttention(4, 4, 2, name="gqa")(q, q),
            L.Attention(name="dot")([q, q]),
            L.Attention(score_mode="concat", name="concat")([q, q]),
            L.AdditiveAttention(name="additive")([q, q]),
            L.AdditiveAttention(use_scale=False, name="additive_plain")([q, q]),
            L.Dot(axes=2, name="qq")([q, q]),
            L.Dot(axes=(1, 1), name="steps")([q, q]),
        ],
        q,
        v,
    )
    h, dk = 2, 4
    assert macs["self"] == 3 * 10 * 6 * h * dk + 2 * h * 10 * 10 * dk + 10 * h * dk * 6
    # Q 10x6 -> 2x4, K and V from 7x5 (V to 2x3), Q K^T 2x10x7x4, A V 2x10x7x3, output 2x3 -> 9
    assert macs["cross"] == 10 * 6 * 8 + 7 * 5 * 8 + 7 * 5 * 6 + 2 * 70 * 4 + 2 * 70 * 3 + 10 * 6 * 9
    # 4 query heads, 2 key/value heads (repeated to 4) of 4 dims
    assert macs["gqa"] == 10 * 6 * 16 + 2 * 10 * 6 * 8 + 2 * 4 * 10 * 10 * 4 + 10 * 16 * 6
    assert macs["dot"] == 2 * 10 * 10 * 6
    assert macs["concat"] == macs["additive_plain"] == 10 * 10 * 6  # scores: a plain sum over d
    assert macs["additive"] == 2 * 10 * 10 * 6
    assert macs["qq"] == 10 * 10 * 6 and macs["steps"] == 6 * 6 * 10


def test_lookups_normalizations_and_wrappers():
    ids = keras.Input((10,), dtype="int32")
    h = L.LayerNormalization(name="ln")(L.BatchNormalization(name="bn")(L.Embedding(20, 8, name="emb")(ids)))
    macs = _macs(L.SpectralNormalization(L.Dense(3), name="sn")(h), ids)
    assert macs["emb"] == macs["bn"] == macs["ln"] == 0
    assert macs["sn"] == 10 * 8 * 3
    rev = L.ReversibleEmbedding(20, 8)
    rev.build((None, 10))
    assert layer_macs(rev, [(None, 10)], [(None, 10, 8)]) == 0  # the lookup
    assert layer_macs(rev, [(None, 10, 8)], [(None, 10, 20)]) == 10 * 8 * 20  # reverse: onto the 20 tokens


def test_spectrograms_count_their_filter_products():
    x = keras.Input((400, 2))
    stft = L.STFTSpectrogram(mode="log", frame_length=64, frame_step=32, fft_length=64, name="stft")
    y = stft(x)
    assert y.shape[1] == (400 - 64) // 32 + 1 == 11  # frames
    assert _macs(y, x)["stft"] == 2 * 2 * 11 * 64 * 33  # real and imaginary kernels of 33 bins, 2 channels
    s = keras.Input((400,))
    mel = L.MelSpectrogram(fft_length=64, sequence_stride=32, num_mel_bins=10, name="mel")
    m = mel(s)
    assert m.shape[-1] == 13  # frames
    assert _macs(m, s)["mel"] == 13 * 33 * 10  # 13 frames of 33 bins onto 10 mel bins


def test_every_keras_layer_class_is_counted_or_does_no_product():
    import inspect

    from keras_wgsef.graph import costs

    # element-wise, lookups, reshapes, merges, preprocessing (per-position pooling and the like: below)
    no_products = {
        "Activation",
        "ActivityRegularization",
        "Add",
        "AlphaDropout",
        "AugMix",
        "AutoContrast",
        "Average",
        "CategoryEncoding",
        "CenterCrop",
        "Concatenate",
        "ContrastLimitedAdaptiveHistogramEqualization",
        "CutMix",
        "Discretization",
        "Dropout",
        "ELU",
        "Equalization",
        "Flatten",
        "GaussianDropout",
        "GaussianNoise",
        "HashedCrossing",
        "Hashing",
        "Identity",
        "InputLayer",
        "IntegerLookup",
        "LeakyReLU",
        "Masking",
        "MaxNumBoundingBoxes",
        "Maximum",
        "Minimum",
        "MixUp",
        "Multiply",
        "Permute",
        "Pipeline",
        "RandAugment",
        "ReLU",
        "RepeatVector",
        "Rescaling",
        "Reshape",
        "Resizing",
        "Softmax",
        "Solarization",
        "StringLookup",
        "Subtract",
        "TextVectorization",
        "UnitNormalization",
    }
    unknowable = {"FlaxLayer", "JaxLayer", "Lambda", "Layer", "TFSMLayer", "TorchModuleWrapper", "Wrapper"}
    cells = {"LSTMCell", "GRUCell", "SimpleRNNCell", "StackedRNNCells"}  # counted inside an RNN
    classes: dict[type, str] = {}
    for name, obj in vars(L).items():
        if inspect.isclass(obj) and issubclass(obj, L.Layer):
            classes.setdefault(obj, name)
    uncounted = {n for c, n in classes.items() if costs._lookup(costs._table(), c) is None}
    assert {n for c, n in classes.items() if costs._lookup(costs._cell_table(), c)} == cells
    per_position = ("Pooling", "Pool", "Padding", "Cropping", "UpSampling", "SpatialDropout", "Random")
    rest = {n for n in uncounted - no_products - unknowable - cells if not any(p in n for p in per_position)}
    assert not rest, f"keras.layers classes with no MAC decision: {sorted(rest)}"
    assert not (no_products | unknowable) - uncounted


def test_a_custom_layer_with_weights_warns_and_unknown_steps_raise():
    class Scale(L.Layer):
        def build(self, shape):
            self.w = self.add_weight(shape=(shape[-1], shape[-1]))

        def call(self, x):
            return x @ self.w

    x = keras.Input((4,))
    with pytest.warns(UserWarning, match=r"layer 'mine' \(Scale\) are unknown.*counts 0"):
        assert _macs(Scale(name="mine")(x), x)["mine"] == 0
    s = keras.Input((None, 3))
    with pytest.raises(ValueError, match=r"'lstm' \(LSTM\).*unknown dimension.*static shapes"):
        _macs(L.LSTM(2, name="lstm")(s), s)


def test_mac_group_weights_follow_recurrent_and_attention_macs():
    from keras_wgsef import make_groups
    from keras_wgsef.graph.model_graph import model_weights

    def weights_and_sizes(m):
        scopes = make_groups(m, weights="macs")
        shapes = {p: tuple(w.shape) for p, w in model_weights(m).items()}
        return {s.name: (s.weights, s.sizes(shapes)) for s in scopes}

    keras.utils.set_random_seed(0)
    x = keras.Input((10, 6))
    c = L.Conv1D(8, 3, padding="same", activation="relu", name="c")(x)
    m = keras.Model(x, L.Dense(3, name="head")(L.LSTM(12, name="rnn")(c)))
    assert count_macs(m)["rnn"] == 10 * 4 * 12 * (8 + 12)
    got = weights_and_sizes(m)
    # cost: producer MACs per output channel + consumer MACs per input channel, mean 1 over all groups
    cost = {"c": 10 * 3 * 6 + 10 * 4 * 12 * 20 / 8, "rnn": 10 * 4 * 20 + 3}
    mean = (8 * cost["c"] + 12 * cost["rnn"]) / 20
    for name in ("c", "rnn"):
        np.testing.assert_allclose(got[name][0], got[name][1] * cost[name] / mean)
    assert got["rnn"][1][0] == 4 * (8 + 12) + 4  # a unit: its 4 gate columns of both kernels and the bias

    a = L.MultiHeadAttention(2, 4, name="mha")(c, c)
    m = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(L.Add()([c, a]))))
    mha = count_macs(m)["mha"]
    assert mha == 3 * 10 * 8 * 8 + 2 * (2 * 10 * 10 * 4) + 10 * 8 * 8
    got = weights_and_sizes(m)
    # the residual ties c's channels to the attention output's; a head removes its share of every product
    cost = {"c+mha": 10 * 3 * 6 + 2 * mha / 8 + 3, "mha:heads": mha / 2}
    mean = (8 * cost["c+mha"] + 2 * cost["mha:heads"]) / 10
    for name in cost:
        np.testing.assert_allclose(got[name][0], got[name][1] * cost[name] / mean)


# --- against the converted int8 flatbuffer ---------------------------------------------------


def _converted(mixer, shape=(10, 6)):
    from tflite_export import to_tflite_int8
    from tflite_export.flatbuffer import summarize

    keras.utils.set_random_seed(0)
    x = keras.Input(shape)
    m = keras.Model(x, mixer(x))
    data = np.random.default_rng(0).standard_normal((32, *shape)).astype("float32")
    ops = [(op.name, op.macs) for op in summarize(to_tflite_int8(m, data, check=False)).ops if op.macs]
    return count_macs(m)["total"], ops


# (mixer, MACs the converter folds away: a zero first state, a sum of element-wise products)
_SAME_AS_CONVERTED = {
    "EinsumDense": (lambda x: L.EinsumDense("abc,cd->abd", output_shape=(10, 7))(x), 0),
    "TimeDistributed(Dense)": (lambda x: L.TimeDistributed(L.Dense(5))(x), 0),
    "Conv1DTranspose": (lambda x: L.Conv1DTranspose(4, 3, strides=2)(x), 0),
    "SeparableConv1D": (lambda x: L.SeparableConv1D(4, 3, depth_multiplier=2)(x), 0),
    "DepthwiseConv1D": (lambda x: L.DepthwiseConv1D(3)(x), 0),
    "Dot": (lambda x: L.Dot(axes=2)([x, x]), 0),
    "Attention": (lambda x: L.Attention()([x, x]), 0),
    "AdditiveAttention": (lambda x: L.AdditiveAttention()([x, x]), 10 * 10 * 6),  # MUL + SUM: not counted
    "LSTM": (lambda x: L.LSTM(8)(x), 4 * 8 * 8),  # step 1's recurrent matmul reads a zero state
}
_SLOW_CONVERTED = {
    "GRU": (lambda x: L.GRU(8)(x), 3 * 8 * 8),
    "GRU reset_after=False": (lambda x: L.GRU(8, reset_after=False)(x), 3 * 8 * 8),
    "SimpleRNN": (lambda x: L.SimpleRNN(8, return_sequences=True)(x), 8 * 8),
    "Bidirectional(GRU)": (lambda x: L.Bidirectional(L.GRU(8))(x), 2 * 3 * 8 * 8),
}


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name", list(_SAME_AS_CONVERTED))
def test_macs_match_the_converted_flatbuffer(name):
    mixer, folded = _SAME_AS_CONVERTED[name]
    keras_macs, ops = _converted(mixer)
    assert keras_macs > 0 and sum(m for _, m in ops) == keras_macs - folded, ops
    if name == "LSTM":  # per operator: each step's input matmul, then 9 recurrent ones
        assert sorted(m for _, m in ops) == [4 * 8 * 6] * 10 + [4 * 8 * 8] * 9


@pytest.mark.slow
@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name", list(_SLOW_CONVERTED))
def test_recurrent_macs_match_the_converted_flatbuffer(name):
    mixer, folded = _SLOW_CONVERTED[name]
    keras_macs, ops = _converted(mixer)
    assert sum(m for _, m in ops) == keras_macs - folded, ops


@pytest.mark.tensorflow_only
def test_attention_projections_and_products_match_the_converted_flatbuffer():
    _, ops = _converted(lambda x: L.MultiHeadAttention(2, 4)(x, x))
    assert sorted(ops) == sorted([("FULLY_CONNECTED", 10 * 6 * 8)] * 4 + [("BATCH_MATMUL", 2 * 10 * 10 * 4)] * 2)
    keras_macs, ops = _converted(lambda x: L.GroupQueryAttention(4, 4, 2)(x, x))
    # the projections compare; the repeated key/value heads reach BATCH_MATMUL with run-time shapes
    projections = 10 * 6 * 16 + 2 * 10 * 6 * 8 + 10 * 16 * 6
    assert sum(m for n, m in ops if n == "FULLY_CONNECTED") == projections
    assert keras_macs == projections + 2 * 4 * 10 * 10 * 4


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_conv_lstm_macs_match_the_converted_flatbuffer():
    keras_macs, ops = _converted(lambda x: L.ConvLSTM1D(4, 3, padding="same")(x), shape=(4, 8, 3))
    per_gate_in, per_gate_rec = 8 * 3 * 3 * 4, 8 * 3 * 4 * 4
    assert keras_macs == 4 * 4 * (per_gate_in + per_gate_rec)
    # step 1 reads a zero state: no recurrent convolutions, and the forget gate's input one (f * 0) goes
    assert sorted(m for _, m in ops) == [per_gate_in] * 15 + [per_gate_rec] * 12
