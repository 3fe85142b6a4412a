"""TFLite (LiteRT) conversion for full-integer NPUs such as Coral: not available yet.

The coral profile names this pass so that converting for it fails at once with a clear message
instead of producing an ONNX bundle a LiteRT device cannot run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

from converter.context import PassContext
from converter.model import ModelArtifact
from sdk.errors import ConversionError
from sdk.profiles import HardwareProfile


@dataclass(frozen=True)
class Config:
    pass


def configure(ctx: PassContext) -> Config:
    return Config()


def run(model: ModelArtifact, ctx: PassContext, config: Config) -> ModelArtifact:
    refuse(ctx.profile)


def refuse(profile: HardwareProfile) -> NoReturn:
    raise ConversionError(
        f"profile {profile.name} needs a full-integer TFLite model for LiteRT; TFLite conversion is"
        " not supported yet (tracked in its own issue). Use an onnxruntime profile such as"
        " x86-server, raspberry-pi, jetson or qualcomm-npu"
    )
