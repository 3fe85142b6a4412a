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
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = first_line(exc)
        raise ConversionError(f"{path}: the ONNX model is invalid: {first}") from None
    out = workdir / "source.onnx"
    _save_onnx(model, out)
    return SourceModel(ModelArtifact(onnx_path=out), "onnx", _sha256_of(path), path.name, path.stem)


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
