"""Knowledge distillation: train a smaller student to imitate a teacher on the user's inputs.

The teacher is anything the converter loads (ONNX runs in ONNX Runtime, PyTorch in torch); its
outputs on the data are computed once. The student (``package.module:factory``) learns them:
softened-softmax KL divergence (plus cross-entropy with labels, when given) for classifiers,
mean squared error otherwise. A held-out tenth of the data measures how well it imitates.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter.calibration import LABELS
from converter.errors import first_line
from converter.progress import reporter
from sdk.errors import ConfigError, ConversionError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    temperature: float = 2.0
    #: weight of the label loss against the imitation loss, when labels are given.
    label_weight: float = 0.5
    seed: int = 0


@dataclass(frozen=True)
class DistillResult:
    student: Path
    #: held-out agreement with the teacher (argmax for classifiers) and cosine of outputs.
    argmax_agreement: float | None
    cosine: float
    student_parameters: int


def teacher_outputs(teacher: str, inputs: dict[str, np.ndarray], workdir: Path) -> np.ndarray:
    from converter.loading import load_source
    from converter.runtime import make_session

    source = load_source(teacher, workdir)
    if source.artifact.onnx_path is not None:
        session = make_session(source.artifact.onnx_path, 2)
        outs = [
            session.run(None, {k: v[i : i + 64] for k, v in inputs.items()})[0]
            for i in range(0, len(next(iter(inputs.values()))), 64)
        ]
        return np.concatenate(outs)
    import torch

    module = source.artifact.torch_module
    module = module.module() if isinstance(module, torch.export.ExportedProgram) else module
    with torch.no_grad():
        out = module(*[torch.from_numpy(v) for v in inputs.values()])
    return (out[0] if isinstance(out, (tuple, list)) else out).numpy()


def distill(
    teacher: str, student_spec: str, data_path: Path, out: Path, config: DistillConfig
) -> DistillResult:
    import tempfile

    import torch
    from torch import nn

    from converter.loading import load_source

    try:
        with np.load(data_path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--data {data_path}: not a readable .npz ({exc})") from None
    labels = arrays.pop(LABELS, None)
    if not arrays:
        raise ConfigError(f"--data {data_path}: holds no input arrays")
    with tempfile.TemporaryDirectory() as tmp:
        targets = teacher_outputs(teacher, arrays, Path(tmp))
        student_source = load_source(student_spec, Path(tmp))
    student = student_source.artifact.torch_module
    if not isinstance(student, nn.Module) or isinstance(student, torch.jit.ScriptModule):
        raise ConfigError("the student must be package.module:factory returning a trainable nn.Module")
    torch.manual_seed(config.seed)
    n = len(targets)
    order = np.random.default_rng(config.seed).permutation(n)
    held, train = order[: max(1, n // 10)], order[max(1, n // 10) :]
    classifier = targets.ndim == 2 and targets.shape[1] > 1
    xs = [torch.from_numpy(v) for v in arrays.values()]
    t_all = torch.from_numpy(targets.astype(np.float32))
    y_all = torch.from_numpy(labels.astype(np.int64)) if labels is not None and classifier else None
    opt = torch.optim.Adam(student.parameters(), lr=config.learning_rate)
    progress = reporter("distill epochs")
    student.train()
    for epoch in range(config.epochs):
        perm = torch.from_numpy(train[np.random.default_rng(config.seed + epoch).permutation(len(train))])
        for i in range(0, len(perm), config.batch_size):
            idx = perm[i : i + config.batch_size]
            logits = student(*[x[idx] for x in xs])
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            if classifier:
                temp = config.temperature
                loss = (
                    nn.functional.kl_div(
                        nn.functional.log_softmax(logits / temp, dim=1),
                        nn.functional.softmax(t_all[idx] / temp, dim=1),
                        reduction="batchmean",
                    )
                    * temp
                    * temp
                )
                if y_all is not None:
                    loss = (
                        1 - config.label_weight
                    ) * loss + config.label_weight * nn.functional.cross_entropy(logits, y_all[idx])
            else:
                loss = nn.functional.mse_loss(logits, t_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        progress(epoch + 1, config.epochs)
    student.eval()
    with torch.no_grad():
        pred = student(*[x[torch.from_numpy(held)] for x in xs])
        pred = (pred[0] if isinstance(pred, (tuple, list)) else pred).numpy()
    want = targets[held]
    agreement = float(np.mean(pred.argmax(1) == want.argmax(1))) if classifier else None
    p, w = pred.reshape(len(held), -1), want.reshape(len(held), -1)
    cosine = float(
        np.mean(np.sum(p * w, 1) / np.maximum(np.linalg.norm(p, axis=1) * np.linalg.norm(w, axis=1), 1e-12))
    )
    _save(student, xs, list(arrays), out)
    return DistillResult(out, agreement, cosine, sum(p.numel() for p in student.parameters()))


def _save(student: object, xs: list[object], names: list[str], out: Path) -> None:
    """The student as ONNX (dynamic batch), ready for ``edge-convert``."""
    import warnings

    import torch

    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                student,
                tuple(x[:1] for x in xs),
                str(out),
                input_names=names,
                output_names=["output"],  # type: ignore[index]
                dynamic_axes={**{n: {0: "batch"} for n in names}, "output": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
    except Exception as exc:
        raise ConversionError(f"cannot export the student to ONNX: {first_line(exc)}") from None
