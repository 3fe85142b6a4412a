"""Load the user's model, whatever its form, into a :class:`~converter.model.ModelArtifact`.

MODEL may be an ``.onnx`` file (external data files beside it are read), a TorchScript file, a
``torch.export`` ``.pt2`` file, ``package.module:factory`` returning an ``nn.Module``, or a
``.tflite`` file (which only a LiteRT profile could use). Every failure becomes a one-line
:class:`~sdk.errors.ConversionError` naming the file and what is wrong with it.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.errors import first_line
from converter.model import ModelArtifact
from sdk.errors import ConfigError, ConversionError

log = logging.getLogger(__name__)

_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: a protobuf ModelProto has an ir_version varint (field 1) near its start; tflite has "TFL3" at 4.
_TFLITE_MAGIC = b"TFL3"


@dataclass(frozen=True)
class SourceModel:
    """What was loaded and where it came from (for the manifest's ``source``)."""

    artifact: ModelArtifact
    format: str
    sha256: str
    filename: str | None
    #: default bundle name: the file stem, or the factory name.
    stem: str
    #: example inputs a ``torch.export`` program carries, if any.
    example_inputs: tuple[Any, ...] | None = None


def safe_name(stem: str) -> str:
    """A default bundle name from a file stem or factory name (letters, digits, ``._+-``)."""
    cleaned = "".join(c if c.isalnum() or c in "._+-" else "-" for c in stem).lstrip(".-_+")
    return cleaned or "model"


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def load_source(spec: str, workdir: Path) -> SourceModel:
    """Load MODEL (a path or ``package.module:factory``)."""
    path = Path(spec)
    if not path.exists() and _FACTORY_RE.match(spec):
        return _load_factory(spec)
    if not path.is_file():
        raise ConfigError(f"model {spec} does not exist (give a file or package.module:factory)")
    head = path.read_bytes()[:8]
    if len(head) == 0:
        raise ConversionError(f"{path}: the file is empty, not a model")
    if head[4:8] == _TFLITE_MAGIC or path.suffix == ".tflite":
        return SourceModel(ModelArtifact(), "tflite", _sha256_of(path), path.name, path.stem)
    if zipfile.is_zipfile(path):
        return _load_torch_archive(path)
    return _load_onnx(path, workdir)


def _load_onnx(path: Path, workdir: Path) -> SourceModel:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as exc:  # protobuf raises DecodeError, or a RuntimeWarning-like error
        raise ConversionError(
            f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc}); is the file truncated?"
        ) from None
    if len(model.graph.node) == 0 or not model.opset_import:
        raise ConversionError(f"{path}: not an ONNX model (no graph nodes or opset); is the file truncated?")
    out = workdir / "source.onnx"
    _save_onnx(model, out)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        _accept_if_runtime_loads(model, path, out, first_line(exc))
    return SourceModel(ModelArtifact(onnx_path=out), "onnx", _sha256_of(path), path.name, path.stem)


def _accept_if_runtime_loads(model: Any, path: Path, saved: Path, complaint: str) -> None:
    """The ONNX checker is stricter than ONNX Runtime, which is what runs the model on devices.

    Published models often break a rule the runtime does not need, most often graph inputs or
    outputs without a declared type or shape (older exporters). Those are filled in from what ONNX
    Runtime infers, so the later passes (opset conversion, quantization) get a valid graph; what
    still fails the checker but loads in the runtime is accepted with a warning. A model the
    runtime cannot load either is refused with the checker's reason.
    """
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(str(saved), options, providers=["CPUExecutionProvider"])
    except Exception:  # ORT raises Fail/InvalidGraph/NotImplemented
        raise ConversionError(f"{path}: the ONNX model is invalid: {complaint}") from None
    ranks = _probe_output_ranks(session)
    filled = _fill_io_types(model.graph.input, session.get_inputs(), {}) + _fill_io_types(
        model.graph.output, session.get_outputs(), ranks
    )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        log.warning(
            "%s: the ONNX checker objects (%s), but ONNX Runtime loads the model; going on",
            path,
            first_line(exc),
        )
    else:
        log.warning(
            "%s: %s had no declared type or shape; filled in from ONNX Runtime", path, ", ".join(filled)
        )
    if filled:
        _save_onnx(model, saved)


def _probe_output_ranks(session: Any) -> dict[str, int]:
    """Output ranks from one run on zeros (dynamic dims 1): ONNX Runtime reports an unknown rank as []."""
    import numpy as np

    from converter.runtime import input_specs

    feeds = {
        s.name: np.zeros([d if isinstance(d, int) else 1 for d in s.shape], dtype=s.dtype)
        for s in input_specs(session)
    }
    options = _quiet_run()
    try:
        outputs = session.run(None, feeds, options)
    except Exception:  # the model needs other sizes or values: ranks stay unknown
        return {}
    return {o.name: np.asarray(v).ndim for o, v in zip(session.get_outputs(), outputs)}


def _quiet_run() -> Any:
    import onnxruntime as ort

    options = ort.RunOptions()
    options.log_severity_level = 4
    return options


def _fill_io_types(values: Any, ort_args: list[Any], ranks: dict[str, int]) -> list[str]:
    """Give graph inputs/outputs that lack a tensor type or shape the ones ONNX Runtime inferred.

    A dim ONNX Runtime does not know stays unknown; a shape is declared only when its rank is known.
    """
    from onnx import TensorProto

    inferred = {a.name: a for a in ort_args}
    filled = []
    for value in values:
        tensor = value.type.tensor_type
        arg = inferred.get(value.name)
        if arg is None or (tensor.elem_type and tensor.HasField("shape")):
            continue
        if not arg.type.startswith("tensor("):
            continue  # sequences and maps: nothing simple to declare
        tensor.elem_type = TensorProto.DataType.Value(arg.type[len("tensor(") : -1].upper())
        dims: list[Any] | None = list(arg.shape) if arg.shape else None
        if dims is None and value.name in ranks:
            dims = [None] * ranks[value.name]
        if dims is not None:
            tensor.shape.Clear()
            for d in dims:
                dim = tensor.shape.dim.add()
                if isinstance(d, int) and d > 0:
                    dim.dim_value = d
                elif isinstance(d, str):
                    dim.dim_param = d
        filled.append(value.name)
    return filled


def _save_onnx(model: Any, out: Path) -> None:
    """Save as one file: bundles carry a single ``model.onnx`` (external data is folded in)."""
    import onnx

    if model.ByteSize() > 2**31 - 1 - (1 << 20):
        raise ConversionError("models over 2 GB (external data after conversion) are not supported yet")
    onnx.save_model(model, str(out), save_as_external_data=False)


def _load_torch_archive(path: Path) -> SourceModel:
    import torch

    digest = _sha256_of(path)
    names = zipfile.ZipFile(path).namelist()
    is_export = any(n.endswith(("serialized_exported_program.json", "models/model.json")) for n in names) or (
        path.suffix == ".pt2"
    )
    if is_export:
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise ConversionError(f"{path}: not a loadable torch.export program: {exc}") from None
        examples = getattr(program, "example_inputs", None)
        args = tuple(examples[0]) if examples else None
        return SourceModel(
            ModelArtifact(torch_module=program), "torch-export", digest, path.name, path.stem, args
        )
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise ConversionError(
            f"{path}: not a TorchScript file ({type(exc).__name__}); save with torch.jit.save or"
            " torch.export.save, or pass package.module:factory"
        ) from None
    module.eval()
    return SourceModel(ModelArtifact(torch_module=module), "torchscript", digest, path.name, path.stem)


def _load_factory(spec: str) -> SourceModel:
    import torch

    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:  # like `python -m`: the user's own package in the current folder
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot import {spec}: {exc}") from None
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ConversionError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    model.eval()
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return SourceModel(ModelArtifact(torch_module=model), "torch-module", digest.hexdigest(), None, attr)
