"""Knowledge distillation: train a smaller student to imitate a teacher on the user's inputs.

The teacher is anything the converter loads (ONNX runs in ONNX Runtime, PyTorch in torch); the
student (``package.module:factory``) learns its outputs with the loop ``--speedup`` uses
(:mod:`converter.kd`: augmentation, losses, seeded). How well it imitates is measured on data it
never trained on: ``--eval DATA.npz`` when given, else a held-out quarter of the data; the result
names its sample count, says when that is too few to mean much, and says when it is below the bar
(argmax agreement for classifiers, cosine otherwise), with accuracy of teacher and student when
the evaluation data has labels.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from converter import kd
from converter.calibration import LABELS
from converter.errors import first_line
from converter.progress import reporter
from sdk.errors import ConfigError, ConversionError

log = logging.getLogger(__name__)

#: without --eval, this share of the data is held out to measure the student.
HELD_OUT_SHARE = 0.25
#: fewer evaluation samples than this make a fidelity number that says little: the result warns.
FEW_SAMPLES = 200


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 1e-3
    temperature: float = 2.0
    #: weight of the label loss against the imitation loss, when labels are given.
    label_weight: float = 0.5
    seed: int = 0
    #: the bar the result is judged against (the shipped profiles' defaults).
    min_argmax_agreement: float = 0.99
    min_cosine: float = 0.999
    #: augment the inputs (noise, mixup, flips and shifts of images; see converter.kd.augment). Off by
    #: default here: it helps a pruned model that starts close to its teacher (--speedup), while a
    #: fresh student on the digits learnt less with it (0.12 vs 0.28 agreement after 15 epochs).
    augment: bool = False


@dataclass(frozen=True)
class DistillResult:
    student: Path
    #: agreement with the teacher on the evaluation samples (argmax for classifiers) and cosine.
    argmax_agreement: float | None
    cosine: float
    student_parameters: int
    #: how many samples the numbers above were measured on, and where they came from.
    eval_samples: int
    eval_origin: str
    meets_bar: bool
    #: top-1 accuracy against the evaluation labels, when there are labels.
    student_accuracy: float | None = None
    teacher_accuracy: float | None = None
    #: a warning line for the user (too few samples, below the bar), or "".
    warning: str = ""


def _read(path: Path, flag: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{flag} {path}: not a readable .npz ({exc})") from None
    labels = arrays.pop(LABELS, None)
    if not arrays:
        raise ConfigError(f"{flag} {path}: holds no input arrays")
    return arrays, labels


def make_teacher(teacher: str, workdir: Path) -> kd.Teacher:
    """The teacher as a function of a numpy batch: ONNX in ONNX Runtime, PyTorch in torch."""
    from converter.loading import load_source
    from converter.runtime import make_session

    source = load_source(teacher, workdir)
    if source.artifact.onnx_path is not None:
        session = make_session(source.artifact.onnx_path, 2)
        return lambda feeds: session.run(None, feeds)
    import torch

    module = source.artifact.torch_module
    module = module.module() if isinstance(module, torch.export.ExportedProgram) else module

    def outputs(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(v) for v in feeds.values()])
        return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]

    return outputs


def _in_batches(fn: kd.Teacher, inputs: dict[str, np.ndarray], size: int = 64) -> list[np.ndarray]:
    n = len(next(iter(inputs.values())))
    parts = [fn({k: v[i : i + size] for k, v in inputs.items()}) for i in range(0, n, size)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


def distill(
    teacher: str,
    student_spec: str,
    data_path: Path,
    out: Path,
    config: DistillConfig,
    eval_path: Path | None = None,
) -> DistillResult:
    import torch
    from torch import nn

    from converter.loading import load_source

    arrays, labels = _read(data_path, "--data")
    held: tuple[dict[str, np.ndarray], np.ndarray | None]
    if eval_path is not None:
        held = _read(eval_path, "--eval")
        if set(held[0]) != set(arrays):
            raise ConfigError(f"--eval {eval_path}: holds {sorted(held[0])}, --data holds {sorted(arrays)}")
        origin = f"{eval_path.name} ({len(next(iter(held[0].values())))} samples)"
    else:
        n = len(next(iter(arrays.values())))
        order = np.random.default_rng(config.seed).permutation(n)
        cut = max(1, round(n * HELD_OUT_SHARE))
        held_idx, train_idx = np.sort(order[:cut]), np.sort(order[cut:])
        held = ({k: v[held_idx] for k, v in arrays.items()}, None if labels is None else labels[held_idx])
        arrays = {k: v[train_idx] for k, v in arrays.items()}
        labels = None if labels is None else labels[train_idx]
        origin = f"{data_path.name}, {cut} of {n} samples held out from training"
    with tempfile.TemporaryDirectory() as tmp:
        teach = make_teacher(teacher, Path(tmp))
        student_source = load_source(student_spec, Path(tmp))
    student = student_source.artifact.torch_module
    if not isinstance(student, nn.Module) or isinstance(student, torch.jit.ScriptModule):
        raise ConfigError("the student must be package.module:factory returning a trainable nn.Module")
    want = _in_batches(teach, held[0])
    classifier = want[0].ndim == 2 and want[0].shape[1] > 1
    progress = reporter("distill epochs")
    kd.train(
        student,
        arrays,
        labels,
        teach,
        classifier,
        kd.TrainConfig(
            epochs=config.epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            temperature=config.temperature,
            label_weight=config.label_weight,
            seed=config.seed,
            augment=config.augment,
        ),
        epoch_done=lambda e, n, _loss: progress(e, n),
    )
    student.cpu().eval()

    def student_fn(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with torch.no_grad():
            return [o.numpy() for o in kd.outputs_of(student, [torch.from_numpy(v) for v in feeds.values()])]

    got = _in_batches(student_fn, held[0])
    result = _judge(want[0], got[0], classifier, held[1], config)
    _save(student, [torch.from_numpy(v) for v in arrays.values()], list(arrays), out)
    samples = len(want[0])
    warnings = []
    if samples < FEW_SAMPLES:
        warnings.append(
            f"only {samples} evaluation samples: pass --eval DATA.npz with more for a number that means much"
        )
    if not result["meets_bar"]:
        warnings.append("below the bar: " + result["shortfall"])
    for line in warnings:
        log.warning("%s", line)
    return DistillResult(
        student=out,
        argmax_agreement=result["agreement"],
        cosine=result["cosine"],
        student_parameters=sum(p.numel() for p in student.parameters()),
        eval_samples=samples,
        eval_origin=origin,
        meets_bar=result["meets_bar"],
        student_accuracy=result["student_accuracy"],
        teacher_accuracy=result["teacher_accuracy"],
        warning="; ".join(warnings),
    )


def _judge(
    want: np.ndarray, got: np.ndarray, classifier: bool, labels: np.ndarray | None, config: DistillConfig
) -> dict[str, object]:
    from converter.measure import fidelity

    fid = fidelity([want], [got], classifier)
    agreement = fid.argmax_agreement
    if agreement is not None:
        meets, shortfall = (
            agreement >= config.min_argmax_agreement,
            (f"argmax agreement {agreement:.4f} < {config.min_argmax_agreement}"),
        )
    else:
        meets, shortfall = fid.cosine >= config.min_cosine, f"cosine {fid.cosine:.5f} < {config.min_cosine}"
    student_acc = teacher_acc = None
    if labels is not None and classifier:
        student_acc = float(np.mean(got.argmax(1) == labels.reshape(-1)))
        teacher_acc = float(np.mean(want.argmax(1) == labels.reshape(-1)))
    return {
        "agreement": agreement,
        "cosine": fid.cosine,
        "meets_bar": meets,
        "shortfall": shortfall,
        "student_accuracy": student_acc,
        "teacher_accuracy": teacher_acc,
    }


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
