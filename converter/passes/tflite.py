"""LiteRT (TFLite) conversion for full-integer NPUs such as Coral: the profile's settings for it.

A profile whose runtime is ``litert`` lists this pass; :mod:`converter.litert_pipeline` runs the
LiteRT steps (litert-torch export, ai-edge-quantizer full-integer search, Edge TPU op audit) instead
of the ONNX passes, since none of those apply to a ``.tflite`` model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from converter.context import PassContext
from converter.model import ModelArtifact
from sdk.errors import ConversionError, ProfileError
from sdk.profiles import HardwareProfile


@dataclass(frozen=True)
class Config:
    #: weights quantized per output channel (else per tensor).
    per_channel: bool


def configure_profile(profile: HardwareProfile) -> Config:
    q = profile.quantization
    if q.scheme != "int8-full" or q.activation_type != "int8" or q.weight_type != "int8":
        raise ProfileError(
            f"profile {profile.name}: LiteRT conversion makes full-integer int8 (scheme int8-full, int8"
            f" weights and activations); the profile asks {q.scheme} with {q.weight_type} weights and"
            f" {q.activation_type} activations"
        )
    return Config(per_channel=q.per_channel)


def configure(ctx: PassContext) -> Config:
    return configure_profile(ctx.profile)


def run(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    refuse(ctx.profile)


def refuse(profile: HardwareProfile) -> NoReturn:
    """Only the LiteRT pipeline runs this pass; an onnxruntime profile that lists it is refused."""
    raise ConversionError(
        f"profile {profile.name} lists the tflite pass but its runtime is {profile.runtime}; only"
        " litert profiles make TFLite models"
    )
