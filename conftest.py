"""Objects the docstring examples use (``pytest --doctest-modules``): a small trained CNN on 8x8 digits.

``model`` (Keras), ``x``/``y`` (scikit-learn's digits, float32 NHWC in [0, 1], int labels), ``tfl``
(the model as int8 ``.tflite`` bytes) and ``tmp`` (a fresh folder). They are built once, and
only when a doctest runs.
"""

import pytest

#: scripts the tests run in fresh processes (they train when imported): not for collection
collect_ignore_glob = ["tests/*_check.py"]


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.tensorflow_only`` tests (tf.GradientTape, tf.distribute, the converter) skip on other backends."""
    import keras

    if keras.backend.backend() == "tensorflow":
        return
    skip = pytest.mark.skip(reason=f"TensorFlow only; KERAS_BACKEND={keras.backend.backend()}")
    for item in items:
        if "tensorflow_only" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def _doctest_objects(tmp_path_factory):
    import keras

    from keras_wgsef.datasets import load_digits8x8
    from tflite_export import to_tflite_int8

    (x, y), _ = load_digits8x8()
    keras.utils.set_random_seed(0)
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(8, 3, padding="same", name="conv1"),
            L.BatchNormalization(name="bn1"),
            L.ReLU(name="relu1"),
            L.MaxPooling2D(name="pool"),
            L.Conv2D(16, 3, padding="same", name="conv2"),
            L.ReLU(name="relu2"),
            L.GlobalAveragePooling2D(name="gap"),
            L.Dense(10, name="head"),
        ],
        name="digits_cnn",
    )
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    return {"model": model, "x": x, "y": y, "tfl": to_tflite_int8(model, x[:100])}


@pytest.fixture(autouse=True)
def _doctest_globals(request, doctest_namespace, tmp_path):
    if type(request.node).__name__ != "DoctestItem":
        return
    text = request.node.dtest.docstring or ""
    if any(name in text for name in ("model", "tfl", "x[")):
        doctest_namespace.update(request.getfixturevalue("_doctest_objects"))
    doctest_namespace["tmp"] = tmp_path
