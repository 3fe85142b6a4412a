"""Train a small Keras CNN on the given NHWC data and export it with tf2onnx, as its users do.

Runs in the tf2onnx venv (tests/support/exporters.py): ``python keras_digits.py DATA.npz OUT.onnx OPSET``.
DATA.npz holds ``x`` (N, H, W, C) float32 and ``y`` (N,) int labels; the first 1400 train the model.
The model goes through a SavedModel and ``python -m tf2onnx.convert --saved-model``, the common path.
"""

import subprocess
import sys
import tempfile

import numpy as np
import tensorflow as tf

TRAIN = 1400


def main(data: str, out: str, opset: str) -> None:
    arrays = np.load(data)
    x, y = arrays["x"], arrays["y"]
    tf.random.set_seed(0)
    layers = tf.keras.layers
    inp = tf.keras.Input(x.shape[1:], name="pixels")
    h = layers.Conv2D(16, 3, padding="same")(inp)
    h = layers.BatchNormalization()(h)
    h = layers.Activation("hard_swish")(h)
    h = layers.MaxPooling2D()(h)
    h = layers.Conv2D(32, 3, padding="same")(h)
    h = layers.BatchNormalization()(h)
    h = layers.ReLU(max_value=6.0)(h)
    h = layers.MaxPooling2D()(h)
    h = layers.Flatten()(h)
    h = layers.Dense(64, activation="relu")(h)
    model = tf.keras.Model(inp, layers.Dense(10)(h))
    model.compile(
        "adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    model.fit(x[:TRAIN], y[:TRAIN], epochs=12, batch_size=32, verbose=0)
    print("keras accuracy on the rest:", model.evaluate(x[TRAIN:], y[TRAIN:], verbose=0)[1])
    with tempfile.TemporaryDirectory() as saved:
        model.export(saved)
        cmd = [
            sys.executable,
            "-m",
            "tf2onnx.convert",
            "--saved-model",
            saved,
            "--opset",
            opset,
            "--output",
            out,
        ]
        subprocess.run(cmd, check=True)
    np.save(out + ".expected.npy", model.predict(x, verbose=0))


if __name__ == "__main__":
    main(*sys.argv[1:4])
