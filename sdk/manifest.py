"""The bundle manifest (``manifest.json``): what a bundle holds and what the converter measured.

The manifest is signed byte for byte, so readers keep the exact bytes they verified and parse
them with :meth:`Manifest.from_json`; :meth:`Manifest.to_json` is canonical (sorted keys) so a
writer's bytes are reproducible.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from sdk.errors import ManifestError, validation_summary
from sdk.tensors import DatatypeName, EncodedTensor

SCHEMA_VERSION = 1
MODEL_FILES = ("model.onnx", "model.tflite")
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
Runtime = Literal["onnxruntime", "litert"]


def check_name(value: str, what: str = "name") -> str:
    """Names and versions become file names: letters, digits, ``._+-``, no leading dot or dash."""
    if not _NAME_RE.match(value) or value in (".", ".."):
        raise ValueError(
            f"{what} {value!r} must be 1-128 letters, digits or ._+- and start with a letter or digit"
        )
    return value


def bundle_filename(name: str, version: str, profile: str) -> str:
    return f"{name}-{version}-{profile}.efb"


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class TensorSpec(_Model):
    name: str
    datatype: DatatypeName
    #: -1 marks a dynamic dimension.
    shape: list[int]


class SourceInfo(_Model):
    #: onnx, tflite, torchscript, torch-export, torch-module
    format: str
    sha256: str
    filename: str | None = None


class FileEntry(_Model):
    sha256: str
    size: int = Field(ge=0)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _SHA256_RE.match(v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v


class SizeMetric(_Model):
    source: int
    converted: int


class LatencyMetric(_Model):
    source: float
    converted: float
    statistic: str = "median"
    #: latency is measured on the converting host, not on the device.
    host_measured: bool = True
    host: str | None = None
    threads: int | None = None


class FidelityMetric(_Model):
    argmax_agreement: float | None = None
    cosine: float | None = None
    max_abs_error: float | None = None
    samples: int | None = None


class AccuracyMetric(_Model):
    metric: str
    source: float
    converted: float


class Metrics(_Model):
    size_bytes: SizeMetric | None = None
    latency_ms: LatencyMetric | None = None
    fidelity: FidelityMetric | None = None
    accuracy: AccuracyMetric | None = None


class TensorStats(_Model):
    """Summary of one tensor over the calibration data, for drift checks on the device.

    ``hist_edges`` has one more entry than ``hist_fractions``; fractions sum to 1.
    """

    mean: float
    std: float
    min: float
    max: float
    hist_edges: list[float] = Field(default_factory=list)
    hist_fractions: list[float] = Field(default_factory=list)


class PredictionReference(_Model):
    """What a classifier predicted on the reference data, for prediction drift and confidence-based
    accuracy estimates on the device (issue 9).

    ``calibration_edges`` bins the largest class probability (softmax of the scores); per bin
    ``calibration_accuracy`` is the accuracy measured on the labelled evaluation data, a reliability
    table (one more edge than accuracies). Absent without labels: the device then estimates from
    raw confidence.
    """

    #: the output holding class scores (logits or probabilities), shape [batch, classes]
    output: str
    class_fractions: list[float]
    calibration_edges: list[float] | None = None
    calibration_accuracy: list[float] | None = None
    calibration_samples: int | None = None


class Reference(_Model):
    samples: int
    inputs: dict[str, TensorStats] = Field(default_factory=dict)
    outputs: dict[str, TensorStats] = Field(default_factory=dict)
    predictions: PredictionReference | None = None


class Smoke(_Model):
    """One small input and the output the converted model gave for it on the converting host."""

    inputs: dict[str, EncodedTensor]
    outputs: dict[str, EncodedTensor]
    rtol: float = 1e-3
    atol: float = 1e-3


class RuntimeOptions(_Model):
    #: ONNX Runtime session config entries, e.g. ``{"session.disable_quant_qdq": "1"}``.
    session_config: dict[str, str] = Field(default_factory=dict)
    graph_optimization_level: Literal["disable", "basic", "extended", "all"] = "all"


class Decision(_Model):
    """One choice the converter made, with the measurement behind it."""

    step: str
    choice: str
    reason: str
    measured: dict[str, Any] = Field(default_factory=dict)


class LiteRtInfo(_Model):
    """What a LiteRT (``.tflite``) bundle's model is made of, for NPUs that run only integer ops."""

    #: every op computes in int8/uint8 (int32 biases): what an Edge TPU needs.
    fully_integer: bool
    #: op type -> {"count", "reason"}: ops the Edge TPU compiler would leave on the CPU.
    edgetpu_unsupported_ops: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: whether ``edgetpu_compiler`` compiled the model (it is not installable on every host).
    edgetpu_compiled: bool = False


class Signer(_Model):
    key_id: str
    #: raw Ed25519 public key, base64; trust is decided by the reader's trusted keys, not by this.
    public_key: str


class Manifest(_Model):
    schema_version: int = Field(SCHEMA_VERSION, alias="schema")
    name: str
    version: str
    profile: str
    runtime: Runtime
    precision: str
    created: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    source: SourceInfo
    #: which entry of ``files`` is the model.
    model_file: str = "model.onnx"
    files: dict[str, FileEntry] = Field(default_factory=dict)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metrics: Metrics = Field(default_factory=Metrics)
    reference: Reference | None = None
    smoke: Smoke | None = None
    runtime_options: RuntimeOptions = Field(default_factory=RuntimeOptions)
    decisions: list[Decision] = Field(default_factory=list)
    #: LiteRT bundles only: integer-ness and Edge TPU op coverage.
    litert: LiteRtInfo | None = None
    signer: Signer | None = None

    @field_validator("name", "version", "profile")
    @classmethod
    def _file_name_part(cls, v: str, info: ValidationInfo) -> str:
        # all three become part of the bundle's file name
        return check_name(v, info.field_name or "name")

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"manifest schema {v} is not supported (this edgefleet reads {SCHEMA_VERSION})")
        return v

    @field_validator("model_file")
    @classmethod
    def _model_file(cls, v: str) -> str:
        if v not in MODEL_FILES:
            raise ValueError(f"model_file must be one of {MODEL_FILES}")
        return v

    @property
    def filename(self) -> str:
        return bundle_filename(self.name, self.version, self.profile)

    def to_json(self) -> bytes:
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return (json.dumps(data, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes | str) -> Manifest:
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ManifestError(f"manifest.json is invalid: {validation_summary(exc)}") from None
        except ValueError as exc:
            raise ManifestError(f"manifest.json is not valid JSON: {exc}") from None
