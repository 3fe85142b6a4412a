"""The converter's passes, found by name: one module per pass, imported only when used.

Profiles name passes in ``passes:`` (``hardware-profiles/*.yaml``); :func:`resolve` turns a name
into the module's ``Config`` and ``run``. Each pass module defines ``Config`` (a frozen dataclass),
``configure(ctx) -> Config`` (from the profile and the user's options) and
``run(model, ctx, config) -> ModelArtifact``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from converter.context import PassContext
from converter.model import ModelArtifact
from sdk.errors import ProfileError

#: pass name -> module under converter.passes
PASSES: dict[str, str] = {
    "export": "export",
    "cleanup": "cleanup",
    "prune": "prune",
    "int8": "int8_selective",
    "int8-dynamic": "int8_dynamic",
    "int8-static": "int8_static",
    "int8-weight-only": "weight_only",
    "fp16": "fp16",
    "qnn": "qnn",
    "tflite": "tflite",
    "validate": "validate",
}


@dataclass(frozen=True)
class Pass:
    name: str
    configure: Callable[[PassContext], Any]
    run: Callable[[ModelArtifact, PassContext, Any], ModelArtifact]


def resolve(name: str) -> Pass:
    if name not in PASSES:
        raise ProfileError(f"unknown pass {name!r} in the profile; known passes: {', '.join(sorted(PASSES))}")
    module = importlib.import_module(f"converter.passes.{PASSES[name]}")
    return Pass(name, module.configure, module.run)
