"""The demo's model: a small CNN trained in seconds on scikit-learn's digits (no downloads).

Writes ``digits.pt`` (TorchScript), ``calibration.npz`` and ``eval.npz`` (input ``image`` and
``labels``) into a folder, for ``edge-convert``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("demo")


def build_digits_model(out: Path, *, epochs: int = 40, seed: int = 0) -> dict[str, Path]:
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    torch.manual_seed(seed)
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]  # N,1,8,8 in [0, 1]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)

    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _epoch in range(epochs):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    log.info("trained the digits CNN: test accuracy %.3f", acc)

    out.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.trace(model, torch.from_numpy(x_test[:1]))
    model_path = out / "digits.pt"
    scripted.save(str(model_path))
    cal = out / "calibration.npz"
    np.savez(cal, image=x_train[:256])
    ev = out / "eval.npz"
    np.savez(ev, image=x_test, labels=y_test)
    return {"model": model_path, "calibration": cal, "eval": ev}
