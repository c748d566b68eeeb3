"""int8 export of the new layers: recurrent layers (unrolled), attention, and a clear error naming the op.

Each model is shrunk first (so the thinner recurrent layer is what converts), converted to int8,
run on LiteRT against the float model, and allocated under TensorFlow Lite Micro.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from tflite_export import check_agreement, shrink, tflm_min_arena, to_tflite_int8
from tflite_export.convert import CalibrationError, ConversionError
from tflite_export.flatbuffer import summarize
from tflite_export.rewrite import unroll_recurrent

pytestmark = pytest.mark.tensorflow_only
L = keras.layers


def sequence_model(mixer):
    keras.utils.set_random_seed(0)
    x = keras.Input((10, 6))
    h = L.Conv1D(8, 3, padding="same", activation="relu", name="c")(x)
    return keras.Model(x, L.Dense(3, name="head")(mixer(h)))


def data(n=64):
    return np.random.default_rng(0).standard_normal((n, 10, 6)).astype("float32")


@pytest.mark.parametrize(
    "mixer",
    [
        lambda h: L.LSTM(8, name="rnn")(h),
        lambda h: L.GRU(8, name="rnn")(h),
        lambda h: L.SimpleRNN(8, name="rnn")(h),
        lambda h: L.Bidirectional(L.LSTM(8), merge_mode="sum", name="rnn")(h),
    ],
    ids=["LSTM", "GRU", "SimpleRNN", "Bidirectional LSTM"],
)
def test_recurrent_models_convert_unrolled_run_on_litert_and_tflm(mixer):
    model = sequence_model(mixer)
    rnn = model.get_layer("rnn")
    weights = rnn.get_weights()
    gates = weights[0].shape[1] // 8
    for w in weights:  # zero units 2 and 5 in every gate block (of both directions)
        cols = np.arange(w.shape[-1]) % 8
        w[..., np.isin(cols, [2, 5])] = 0
    rnn.set_weights(weights)
    small = shrink(model, data(8))
    inner = small.get_layer("rnn")
    assert getattr(inner, "forward_layer", inner).units == 6
    unrolled, lines = unroll_recurrent(small)
    assert lines == [f"rnn: {type(rnn).__name__} unrolled over 10 steps"]
    tfl = to_tflite_int8(small, data())
    ops = summarize(tfl).op_names
    assert "FULLY_CONNECTED" in ops and not any("WHILE" in o or "TENSOR_LIST" in o for o in ops), ops
    agreement = check_agreement(small, tfl, data())
    assert agreement.max_diff_steps <= 8 * gates and agreement.argmax_agreement >= 0.9, agreement
    arena, _ = tflm_min_arena(tfl)
    assert 0 < arena < 200_000


def test_attention_and_layer_norm_convert_with_batch_one_and_run_on_tflm():
    def mixer(h):
        a = L.MultiHeadAttention(2, 4, name="mha")(h, h)
        return L.GlobalAveragePooling1D()(L.LayerNormalization(name="ln")(L.Add()([h, a])))

    model = sequence_model(mixer)
    mha = model.get_layer("mha")
    weights = dict(zip([w.path for w in mha.weights], mha.get_weights()))
    weights["mha/value/kernel"][:, 1] = 0  # head 1 silent: removed before the export
    weights["mha/value/bias"][1] = 0
    mha.set_weights(list(weights.values()))
    model = shrink(model, data(8))
    assert model.get_layer("mha").num_heads == 1
    tfl = to_tflite_int8(model, data())
    summary = summarize(tfl)
    assert not {"FILL", "REDUCE_PROD"} & set(summary.op_names) and "BATCH_MATMUL" in summary.op_names
    assert check_agreement(model, tfl, data()).argmax_agreement >= 0.9
    arena, _ = tflm_min_arena(tfl)
    assert arena > 0


def test_an_op_without_an_int8_kernel_is_named_with_its_layer():
    model = sequence_model(lambda h: L.Flatten()(L.Lambda(keras.ops.erf, name="odd")(h)))
    with pytest.raises(ConversionError, match=r"operator Erf \(from layer 'odd', Lambda\) has no int8 TFLite kernel"):
        to_tflite_int8(model, data(), check=False)


def test_an_embedding_model_takes_token_ids_and_runs_on_litert_and_tflm():
    keras.utils.set_random_seed(0)
    x = keras.Input((10,), dtype="int32")
    h = L.Embedding(20, 8, name="emb")(x)
    model = keras.Model(x, L.Dense(3, name="head")(L.GlobalAveragePooling1D()(L.Conv1D(6, 3, name="c")(h))))
    emb = model.get_layer("emb")
    table = emb.get_weights()[0]
    table[:, [1, 6]] = 0  # two embedding dimensions at zero: removed
    emb.set_weights([table])
    tokens = np.random.default_rng(0).integers(0, 20, (64, 10)).astype("int32")
    small = shrink(model, tokens[:8])
    assert small.get_layer("emb").output_dim == 6
    tfl = to_tflite_int8(small, tokens)
    assert "GATHER" in summarize(tfl).op_names
    assert check_agreement(small, tfl, tokens).argmax_agreement >= 0.9
    assert tflm_min_arena(tfl)[0] > 0
    with pytest.raises(CalibrationError, match="takes integer inputs"):
        to_tflite_int8(small, tokens.astype("float32"))


def test_unrolling_and_batch_one_keep_each_calls_mask_and_training_arguments():
    """The recurrent rewrites keep the layer classes, so a real mask and ``training=`` reach the same layers."""
    from tflite_export.rewrite import with_batch_one

    keras.utils.set_random_seed(0)
    inp, mask = keras.Input((6, 3)), keras.Input((6,), dtype="bool")
    h = L.LSTM(4, return_sequences=True, name="lstm")(inp, mask=mask, training=False)
    model = keras.Model([inp, mask], L.Dense(2, name="head")(L.GRU(4, name="gru")(h, training=False)))
    x = np.random.default_rng(0).standard_normal((16, 6, 3)).astype("float32")
    steps = np.ones((16, 6), bool)
    steps[:8, 3:] = False  # half the samples end early: a mask that changes the outputs
    assert not np.allclose(model([x, steps]), model([x, np.ones_like(steps)]), atol=1e-3)
    unrolled, lines = unroll_recurrent(model, [x, steps])
    assert lines == ["lstm: LSTM unrolled over 6 steps", "gru: GRU unrolled over 6 steps"]
    np.testing.assert_allclose(unrolled([x, steps]), model([x, steps]), atol=1e-5)
    one = with_batch_one(unrolled)
    assert one.inputs[0].shape[0] == 1 and one.inputs[1].shape[0] == 1
    np.testing.assert_allclose(one([x[:1], steps[:1]]), model([x[:1], steps[:1]]), atol=1e-5)
