"""PyTorch to a float ``.tflite`` through litert-torch (no TensorFlow).

litert-torch traces the model with ``torch.export`` at the example inputs' shapes (batch 1: the
Edge TPU runs static shapes) and lowers it to a LiteRT flatbuffer. TorchScript is first turned into
a ``torch.export`` program by PyTorch's TorchScript converter; one it cannot convert is refused with
what to pass instead.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import tool_failure
from sdk.errors import ConfigError, ConversionError

log = logging.getLogger(__name__)


def litert_available() -> None:
    """Fail in one line when the tflite extra is missing."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        import ai_edge_quantizer  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"LiteRT profiles need the converter's tflite extra ({exc.name} is missing):"
            " pip install 'edgefleet[converter,tflite]'"
        ) from None


def export_tflite(module: Any, examples: dict[str, np.ndarray], out: Path) -> Path:
    """Write ``module`` as a float ``.tflite`` traced at the first sample of each example input."""
    import torch

    try:
        import litert_torch
    except ImportError:
        raise ConfigError(
            "PyTorch to LiteRT needs litert-torch: pip install 'edgefleet[converter,tflite]'"
        ) from None
    args = tuple(torch.from_numpy(np.ascontiguousarray(a[:1])) for a in examples.values())
    if isinstance(module, torch.jit.ScriptModule):
        module = _from_torchscript(module, args)
    # a program's module is a GraphModule in inference form already (it refuses .eval())
    program = isinstance(module, torch.export.ExportedProgram)
    module = module.module() if program else module.eval()
    try:
        # litert-torch reports its progress on stdout; the converter's own progress goes to stderr.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            litert_torch.convert(module, args).export(str(out))
    except Exception as exc:  # torch.export and the MLIR lowering raise many types
        raise tool_failure("litert-torch conversion", exc) from None
    log.info("litert-torch wrote %s (%d bytes)", out.name, out.stat().st_size)
    return out


def _from_torchscript(module: Any, args: tuple[Any, ...]) -> Any:
    """A ``torch.export`` program from TorchScript (PyTorch's own converter, still private API)."""
    try:
        from torch._export.converter import TS2EPConverter

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return TS2EPConverter(module, args).convert()
    except Exception as exc:  # the converter raises many types for ops it does not know
        raise ConversionError(
            f"TorchScript could not be turned into a torch.export program for LiteRT ({type(exc).__name__}):"
            " pass the model as package.module:factory or a torch.export .pt2 file, or a .tflite"
        ) from None
