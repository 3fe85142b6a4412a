"""The digits CNN: a small Conv-BN-ReLU network trained in seconds on scikit-learn's digits (no downloads).

The demo converts and serves it; the converter's tests and ``bench/convert.py`` use the same model
(through ``tests/converter/models.py``) as their real, trained CNN. It lives here, not under tests/,
because the demo must not depend on the test tree.

:func:`build_digits_model` writes ``digits.pt`` (TorchScript), ``calibration.npz`` and ``eval.npz``
(input ``image``, and ``labels``) into a folder, for ``edge-convert``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger("demo")

#: the first TRAIN_COUNT digits train the model; the rest are held out.
TRAIN_COUNT = 1400


def digits_data() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, upsampled to 32x32 so the convolutions do real work."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return np.kron(x, np.ones((1, 1, 4, 4), dtype=np.float32)), d.target.astype(np.int64)


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU blocks and a small classifier head; input N x 1 x 32 x 32, ten logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 8 * 8, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_digits_cnn(epochs: int = 3, seed: int = 0) -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """The trained model (in eval mode) and all the digits; only ``x[:TRAIN_COUNT]`` trained it."""
    torch.manual_seed(seed)
    x, y = digits_data()
    return fit(DigitsCNN(), x[:TRAIN_COUNT], y[:TRAIN_COUNT], epochs), x, y


def fit(model: nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, lr: float = 1e-3) -> nn.Module:
    """``model`` trained on (x, y) with Adam and cross-entropy in batches of 64; returned in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def build_digits_model(out: Path, *, epochs: int = 5, seed: int = 0) -> dict[str, Path]:
    model, x, y = train_digits_cnn(epochs, seed)
    x_test, y_test = x[TRAIN_COUNT:], y[TRAIN_COUNT:]
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    log.info("trained the digits CNN: held-out accuracy %.3f", acc)

    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "digits.pt"
    torch.jit.trace(model, torch.from_numpy(x_test[:1])).save(str(model_path))
    cal = out / "calibration.npz"
    np.savez(cal, image=x[:256])
    ev = out / "eval.npz"
    np.savez(ev, image=x_test, labels=y_test)
    return {"model": model_path, "calibration": cal, "eval": ev}
