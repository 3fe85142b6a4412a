"""Hardware profiles: what a device class runs and how the converter should target it.

Profiles are YAML files, one per device class, found by name in the profile folders (see
:func:`profile_dirs`) or given by path. Each is validated by :class:`HardwareProfile`; an error
names the file and the field.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sdk.errors import ProfileError, validation_summary
from sdk.manifest import check_name

PROFILES_ENV = "EDGEFLEET_PROFILES_DIR"

Accelerator = Literal["gpu", "cpu", "npu"]
Runtime = Literal["onnxruntime", "litert"]
Precision = Literal["fp32", "fp16", "int8", "uint8"]
#: fp16: fp16 weights and activations, fp32 I/O. int8-selective: per node by measurement (int8
#: arithmetic where it pays, int8-stored weights elsewhere). int8-full: every op integer (NPUs).
#: qdq-qnn: QDQ with uint8 activations and int8 weights for Qualcomm QNN.
Scheme = Literal["none", "fp16", "int8-dynamic", "int8-static", "int8-selective", "int8-full", "qdq-qnn"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuantizationSpec(_Strict):
    scheme: Scheme
    weight_type: Literal["int8", "uint8"] = "int8"
    activation_type: Literal["int8", "uint8", "fp16", "fp32"] = "int8"
    per_channel: bool = True
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    #: the profile cannot run without calibration data (full-integer NPUs).
    calibration_required: bool = False
    #: inputs and outputs stay fp32 so callers need not change.
    keep_io_fp32: bool = True
    #: the smallest acceptable fidelity of converted vs source outputs.
    min_argmax_agreement: float = Field(0.99, ge=0, le=1)
    min_cosine: float = Field(0.999, ge=-1, le=1)


class PruningSpec(_Strict):
    method: Literal["none", "unstructured", "structured", "semi-structured-2:4"] = "none"
    #: share of weights (unstructured) or channels (structured) removed by default.
    amount: float = Field(0.0, ge=0.0, lt=1.0)


class OpsetRange(_Strict):
    min: int = Field(ge=7)
    max: int = Field(ge=7)

    @model_validator(mode="after")
    def _ordered(self) -> OpsetRange:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class HardwareProfile(_Strict):
    name: str
    description: str = ""
    accelerator: Accelerator
    runtime: Runtime
    #: ONNX Runtime execution providers in order of preference (ignored by LiteRT).
    execution_providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    precision: Precision
    quantization: QuantizationSpec
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    #: the converter's passes, in order; each name resolves in the converter's pass registry.
    passes: list[str]
    #: other runtimes the converter may ship instead of ``runtime`` when one measures faster at the
    #: same fidelity bar (``litert``: LiteRT with XNNPACK, for PyTorch sources on CPU profiles).
    alternative_runtimes: list[Runtime] = Field(default_factory=list)
    opset: OpsetRange
    threads: int = Field(ge=1, le=256)
    max_model_mb: float = Field(gt=0)
    memory_mb: int = Field(gt=0)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "profile name")

    @field_validator("passes")
    @classmethod
    def _passes(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("a profile names at least one pass")
        return v


def profile_dirs() -> list[Path]:
    """Folders searched for ``<name>.yaml``, first match wins.

    ``$EDGEFLEET_PROFILES_DIR`` (``os.pathsep``-separated), then ``hardware-profiles/`` of a source
    checkout, then the copy installed under ``<prefix>/share/edgefleet/hardware-profiles``.
    """
    dirs = [Path(p) for p in os.environ.get(PROFILES_ENV, "").split(os.pathsep) if p]
    dirs.append(Path(__file__).resolve().parent.parent / "hardware-profiles")
    dirs.append(Path(sys.prefix) / "share" / "edgefleet" / "hardware-profiles")
    return [d for d in dirs if d.is_dir()]


#: parsed profiles by (path, size, mtime, ctime, inode): the agent loads the same profile for every
#: model it starts (~2.4 ms of YAML parsing and validation each, holding the GIL during start-up).
_parsed: dict[tuple[str, int, int, int, int], HardwareProfile] = {}


def load_profile_file(path: str | Path) -> HardwareProfile:
    """The profile in ``path``; a file unchanged since it was last read is not parsed again (each
    caller gets its own copy, so one that modifies it changes nobody else's)."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    cached = _parsed.get(key)
    if cached is None:
        if len(_parsed) >= 64:  # edited over and over by a long-lived process: start again
            _parsed.clear()
        cached = _parsed[key] = _parse_profile_file(path)
    return cached.model_copy(deep=True)


def _parse_profile_file(path: Path) -> HardwareProfile:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile is a YAML mapping, not {type(data).__name__}")
    try:
        return HardwareProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"{path}: invalid profile: {validation_summary(exc)}") from None


def available_profiles() -> dict[str, Path]:
    """Known profile names and their files (the first folder that has a name wins)."""
    found: dict[str, Path] = {}
    for d in profile_dirs():
        for f in sorted(d.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """A profile by name (``jetson``) or by path to a YAML file."""
    text = str(name_or_path)
    candidate = Path(text)
    if candidate.suffix in (".yaml", ".yml") or os.sep in text or candidate.is_file():
        if not candidate.is_file():
            raise ProfileError(f"profile file {candidate} does not exist")
        return load_profile_file(candidate)
    known = available_profiles()
    if text not in known:
        raise ProfileError(
            f"unknown profile {text!r}; known profiles: {', '.join(sorted(known)) or 'none found'}"
            " (or pass a path to a profile YAML file)"
        )
    profile = load_profile_file(known[text])
    if profile.name != text:
        raise ProfileError(f"{known[text]}: name {profile.name!r} does not match the file name {text!r}")
    return profile


def load_all_profiles() -> list[HardwareProfile]:
    return [load_profile(name) for name in sorted(available_profiles())]
