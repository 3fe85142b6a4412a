"""Train a small PaddlePaddle CNN on the given NCHW data and export it with Paddle2ONNX, as its users do.

Runs in the paddle2onnx venv (tests/support/exporters.py): ``python paddle_digits.py DATA.npz OUT.onnx OPSET``.
DATA.npz holds ``x`` (N, 1, H, W) float32 and ``y`` (N,) int labels; the first 1400 train the model.
The model is saved as a Paddle inference model (``paddle.jit.save``) and converted with the
``paddle2onnx`` command line, the path PaddleOCR/PaddleDetection users take.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import paddle
from paddle import nn

TRAIN = 1400


class SqueezeExcite(nn.Layer):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.reduce = nn.Conv2D(channels, channels // 4, 1)
        self.expand = nn.Conv2D(channels // 4, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x):
        return x * self.gate(self.expand(nn.functional.relu(self.reduce(self.pool(x)))))


class Net(nn.Layer):
    """MobileNetV3-like pieces: Conv-BN-HardSwish, Conv-BN-ReLU6, squeeze-excite, Linear head."""

    def __init__(self, side: int) -> None:
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2D(1, 16, 3, padding=1), nn.BatchNorm2D(16), nn.Hardswish()
        self.conv2, self.bn2, self.act2 = (
            nn.Conv2D(16, 32, 3, padding=1, stride=2),
            nn.BatchNorm2D(32),
            nn.ReLU6(),
        )
        self.se = SqueezeExcite(32)
        self.pool = nn.MaxPool2D(2)
        self.fc1 = nn.Linear(32 * (side // 4) ** 2, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, image):
        h = self.act1(self.bn1(self.conv1(image)))
        h = self.pool(self.se(self.act2(self.bn2(self.conv2(h)))))
        h = paddle.reshape(h, [paddle.shape(h)[0], -1])
        return self.fc2(nn.functional.hardswish(self.fc1(h)))


def main(data: str, out: str, opset: str) -> None:
    arrays = np.load(data)
    x, y = arrays["x"].astype("float32"), arrays["y"].astype("int64")
    paddle.seed(0)
    model = Net(x.shape[-1])
    opt = paddle.optimizer.Adam(1e-3, parameters=model.parameters())
    xt, yt = paddle.to_tensor(x[:TRAIN]), paddle.to_tensor(y[:TRAIN])
    for epoch in range(4):
        perm = np.random.default_rng(epoch).permutation(TRAIN)
        for i in range(0, TRAIN, 64):
            idx = paddle.to_tensor(perm[i : i + 64])
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            opt.clear_grad()
    model.eval()
    expected = model(paddle.to_tensor(x)).numpy()
    print("paddle accuracy on the rest:", float((expected[TRAIN:].argmax(1) == y[TRAIN:]).mean()))
    spec = [paddle.static.InputSpec([None, *x.shape[1:]], "float32", "image")]
    with tempfile.TemporaryDirectory() as saved:
        paddle.jit.save(model, str(Path(saved) / "inference"), input_spec=spec)
        model_file = next(p.name for p in Path(saved).iterdir() if p.suffix in (".json", ".pdmodel"))
        cmd = [
            str(Path(sys.executable).with_name("paddle2onnx")),  # the venv's console script
            "--model_dir", saved,
            "--model_filename", model_file,
            "--params_filename", "inference.pdiparams",
            "--save_file", out,
            "--opset_version", opset,
        ]  # fmt: skip
        subprocess.run(cmd, check=True)
    np.save(out + ".expected.npy", expected)


if __name__ == "__main__":
    main(*sys.argv[1:4])
