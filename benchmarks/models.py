"""The benchmark's architectures: the anchor CNN, a ResNet-8-style and a DS-CNN-style model, in 2-D and 1-D.

The 2-D models take 28x28x1 inputs (the bundled MNIST digits), end in a 10-way Dense head (logits) and
are parameterised by the widths of their channel *scopes* (the groups that
``keras_wgsef.make_groups`` finds: channels tied by a residual ``Add`` form one scope), so a thin
"same widths from scratch" copy is ``builder(widths)``.

* :func:`anchor` -- the anchor task's model (as in
  ``examples/anchor_cnn.py``): Conv(16)-BN-ReLU-Pool, Conv(32)-BN-ReLU-Pool, Conv(64)-BN-ReLU,
  GAP, Dense(10); 24,394 parameters, 1,919,872 MACs.
* :func:`resnet8` -- the MLPerf Tiny ResNet-8 layout (stem conv, three residual stacks of two 3x3
  convs at 16/32/64 channels, 1x1 projection shortcuts on the strided stacks, GAP, Dense), with a
  stride-2 stem so that a 28x28 input costs about as much as the anchor (the MLPerf model runs on
  32x32 CIFAR without it). Scopes: (stem + stack-1 output, stack-1 inner, stack-2 inner,
  stack-2 output, stack-3 inner, stack-3 output).
* :func:`dscnn` -- the MLPerf Tiny DS-CNN layout (a strided stem conv, then four depthwise-separable
  blocks DW3x3-BN-ReLU-PW1x1-BN-ReLU, GAP, Dense) with widths 32/64 sized for 28x28 inputs.
  Scopes: the stem and the four pointwise convs (each depthwise conv carries its input's channels).

The 1-D models (``anchor1d``, ``resnet8_1d``, ``dscnn1d``) are the same layouts on (40, 1) signals
(MNIST-1D, ``keras_wgsef.datasets.load_mnist1d``): Conv1D / DepthwiseConv1D + pointwise Conv1D,
BatchNorm, ReLU, MaxPooling1D, GlobalAveragePooling1D, Dense head, same scopes as their 2-D
counterparts; sized so that the dense models reach 97-98 % on MNIST-1D's 1,000 test signals
(SGD momentum 0.9, lr 0.1, cosine, batch 64, 40 epochs), where the published CNN reaches 94 %.

* :func:`anchor1d` -- Conv(32)-Pool, Conv(64)-Pool, Conv(64)-Pool, Conv(128), kernel 3, GAP, Dense.
* :func:`resnet8_1d` -- a stride-1 kernel-5 stem, then the three residual stacks of :func:`resnet8`
  at 32/64/128 channels (lengths 40, 20, 10).
* :func:`dscnn1d` -- a kernel-5 stem conv, then four DW5-BN-ReLU-PW1-BN-ReLU blocks at 64 channels,
  the second strided (lengths 40, 20).

``gamma_l1`` adds an L1 penalty on every BatchNorm gamma (Network Slimming). ``K`` is the Keras
module the layers come from: Keras 3 here, ``tf_keras`` in the TF-MOT baseline's own process
(``tfmot_baseline.py``), so every method trains exactly the same architecture.
"""

from __future__ import annotations

import keras

ANCHOR_WIDTHS = (16, 32, 64)
RESNET8_WIDTHS = (16, 16, 32, 32, 64, 64)
DSCNN_WIDTHS = (32, 64, 64, 64, 64)


def _bn(name: str, gamma_l1: float, K=keras):
    reg = K.regularizers.L1(gamma_l1) if gamma_l1 > 0 else None
    return K.layers.BatchNormalization(name=name, gamma_regularizer=reg)


def anchor(widths=ANCHOR_WIDTHS, gamma_l1: float = 0.0, K=keras):
    inp = K.Input((28, 28, 1))
    h = inp
    for i, w in enumerate(widths):
        h = K.layers.Conv2D(int(w), 3, padding="same", name=f"conv{i + 1}")(h)
        h = _bn(f"bn{i + 1}", gamma_l1, K)(h)
        h = K.layers.ReLU(name=f"relu{i + 1}")(h)
        if i < len(widths) - 1:
            h = K.layers.MaxPooling2D(name=f"pool{i + 1}")(h)
    h = K.layers.GlobalAveragePooling2D(name="gap")(h)
    out = K.layers.Dense(10, name="head")(h)
    return K.Model(inp, out, name="anchor_cnn")


def resnet8(widths=RESNET8_WIDTHS, gamma_l1: float = 0.0, K=keras):
    s1, i1, i2, s2, i3, s3 = (int(w) for w in widths)
    inp = K.Input((28, 28, 1))
    h = K.layers.Conv2D(s1, 3, strides=2, padding="same", name="stem")(inp)
    h = _bn("stem_bn", gamma_l1, K)(h)
    h = K.layers.ReLU(name="stem_relu")(h)
    # stack 1: identity shortcut (its output channels are the stem's: one scope)
    y = K.layers.Conv2D(i1, 3, padding="same", name="s1_conv1")(h)
    y = _bn("s1_bn1", gamma_l1, K)(y)
    y = K.layers.ReLU(name="s1_relu1")(y)
    y = K.layers.Conv2D(s1, 3, padding="same", name="s1_conv2")(y)
    y = _bn("s1_bn2", gamma_l1, K)(y)
    h = K.layers.ReLU(name="s1_out")(K.layers.Add(name="s1_add")([h, y]))
    # stacks 2 and 3: strided, 1x1 projection shortcut
    for n, (inner, outw) in ((2, (i2, s2)), (3, (i3, s3))):
        y = K.layers.Conv2D(inner, 3, strides=2, padding="same", name=f"s{n}_conv1")(h)
        y = _bn(f"s{n}_bn1", gamma_l1, K)(y)
        y = K.layers.ReLU(name=f"s{n}_relu1")(y)
        y = K.layers.Conv2D(outw, 3, padding="same", name=f"s{n}_conv2")(y)
        y = _bn(f"s{n}_bn2", gamma_l1, K)(y)
        sc = K.layers.Conv2D(outw, 1, strides=2, padding="same", name=f"s{n}_short")(h)
        sc = _bn(f"s{n}_short_bn", gamma_l1, K)(sc)
        h = K.layers.ReLU(name=f"s{n}_out")(K.layers.Add(name=f"s{n}_add")([sc, y]))
    h = K.layers.GlobalAveragePooling2D(name="gap")(h)
    out = K.layers.Dense(10, name="head")(h)
    return K.Model(inp, out, name="resnet8")


def dscnn(widths=DSCNN_WIDTHS, gamma_l1: float = 0.0, K=keras):
    inp = K.Input((28, 28, 1))
    h = K.layers.Conv2D(int(widths[0]), 3, strides=2, padding="same", name="stem")(inp)
    h = _bn("stem_bn", gamma_l1, K)(h)
    h = K.layers.ReLU(name="stem_relu")(h)
    for b, w in enumerate(widths[1:], start=1):
        stride = 2 if b == 2 else 1
        h = K.layers.DepthwiseConv2D(3, strides=stride, padding="same", name=f"dw{b}")(h)
        h = _bn(f"dw{b}_bn", gamma_l1, K)(h)
        h = K.layers.ReLU(name=f"dw{b}_relu")(h)
        h = K.layers.Conv2D(int(w), 1, name=f"pw{b}")(h)
        h = _bn(f"pw{b}_bn", gamma_l1, K)(h)
        h = K.layers.ReLU(name=f"pw{b}_relu")(h)
    h = K.layers.GlobalAveragePooling2D(name="gap")(h)
    out = K.layers.Dense(10, name="head")(h)
    return K.Model(inp, out, name="dscnn")


ANCHOR1D_WIDTHS = (32, 64, 64, 128)
RESNET8_1D_WIDTHS = (32, 32, 64, 64, 128, 128)
DSCNN1D_WIDTHS = (64, 64, 64, 64, 64)
SIGNAL = (40, 1)  # MNIST-1D


def anchor1d(widths=ANCHOR1D_WIDTHS, gamma_l1: float = 0.0, K=keras):
    inp = K.Input(SIGNAL)
    h = inp
    for i, w in enumerate(widths):
        h = K.layers.Conv1D(int(w), 3, padding="same", name=f"conv{i + 1}")(h)
        h = _bn(f"bn{i + 1}", gamma_l1, K)(h)
        h = K.layers.ReLU(name=f"relu{i + 1}")(h)
        if i < len(widths) - 1:
            h = K.layers.MaxPooling1D(name=f"pool{i + 1}")(h)
    h = K.layers.GlobalAveragePooling1D(name="gap")(h)
    out = K.layers.Dense(10, name="head")(h)
    return K.Model(inp, out, name="anchor1d")


def resnet8_1d(widths=RESNET8_1D_WIDTHS, gamma_l1: float = 0.0, K=keras):
    s1, i1, i2, s2, i3, s3 = (int(w) for w in widths)
    inp = K.Input(SIGNAL)
    h = K.layers.Conv1D(s1, 5, padding="same", name="stem")(inp)
    h = _bn("stem_bn", gamma_l1, K)(h)
    h = K.layers.ReLU(name="stem_relu")(h)
    y = K.layers.Conv1D(i1, 3, padding="same", name="s1_conv1")(h)
    y = _bn("s1_bn1", gamma_l1, K)(y)
    y = K.layers.ReLU(name="s1_relu1")(y)
    y = K.layers.Conv1D(s1, 3, padding="same", name="s1_conv2")(y)
    y = _bn("s1_bn2", gamma_l1, K)(y)
    h = K.layers.ReLU(name="s1_out")(K.layers.Add(name="s1_add")([h, y]))
    for n, (inner, outw) in ((2, (i2, s2)), (3, (i3, s3))):
        y = K.layers.Conv1D(inner, 3, strides=2, padding="same", name=f"s{n}_conv1")(h)
        y = _bn(f"s{n}_bn1", gamma_l1, K)(y)
        y = K.layers.ReLU(name=f"s{n}_relu1")(y)
        y = K.layers.Conv1D(outw, 3, padding="same", name=f"s{n}_conv2")(y)
        y = _bn(f"s{n}_bn2", gamma_l1, K)(y)
        sc = K.layers.Conv1D(outw, 1, strides=2, padding="same", name=f"s{n}_short")(h)
        sc = _bn(f"s{n}_short_bn", gamma_l1, K)(sc)
        h = K.layers.ReLU(name=f"s{n}_out")(K.layers.Add(name=f"s{n}_add")([sc, y]))
    h = K.layers.GlobalAveragePooling1D(name="gap")(h)
    out = K.layers.Dense(10, name="head")(h)
    return K.Model(inp, out, name="resnet8_1d")


def dscnn1d(widths=DSCNN1D_WIDTHS, gamma_l1: float = 0.0, K=keras):
    inp = K.Input(SIGNAL)
    h = K.layers.Conv1D(int(widths[0]), 5, padding="same", name="stem")(inp)
    h = _bn("stem_bn", gamma_l1, K)(h)
    h = K.layers.ReLU(name="stem_relu")(h)
    for b, w in enumerate(widths[1:], start=1):
        stride = 2 if b == 2 else 1
        h = K.layers.DepthwiseConv1D(5, strides=stride, padding="same", name=f"dw{b}")(h)
        h = _bn(f"dw{b}_bn", gamma_l1, K)(h)
        h = K.layers.ReLU(name=f"dw{b}_relu")(h)
        h = K.layers.Conv1D(int(w), 1, name=f"pw{b}")(h)
        h = _bn(f"pw{b}_bn", gamma_l1, K)(h)
        h = K.layers.ReLU(name=f"pw{b}_relu")(h)
    h = K.layers.GlobalAveragePooling1D(name="gap")(h)
    out = K.layers.Dense(10, name="head")(h)
    return K.Model(inp, out, name="dscnn1d")


BUILDERS = {"anchor": (anchor, ANCHOR_WIDTHS), "resnet8": (resnet8, RESNET8_WIDTHS), "dscnn": (dscnn, DSCNN_WIDTHS)}
BUILDERS_1D = {
    "anchor1d": (anchor1d, ANCHOR1D_WIDTHS),
    "resnet8_1d": (resnet8_1d, RESNET8_1D_WIDTHS),
    "dscnn1d": (dscnn1d, DSCNN1D_WIDTHS),
}


def scaled(widths, keep: float) -> tuple[int, ...]:
    """Per-scope widths at a kept fraction, rounded like ``keras_wgsef``'s float k."""
    return tuple(max(1, min(w - 1, round(keep * w))) for w in widths)
