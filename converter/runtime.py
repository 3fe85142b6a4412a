"""ONNX Runtime sessions and model signatures, built the same way everywhere in the converter.

The converter must measure a model exactly as the agent will run it, so sessions are made only
here: thread count, graph optimization level and session config entries are explicit arguments
and end up verbatim in the manifest's ``runtime_options``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from converter.errors import first_line
from converter.model import InputSpec
from sdk.datatypes import from_ort_type
from sdk.errors import ConversionError
from sdk.manifest import TensorSpec

_OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_ORT_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


def host_threads(profile_threads: int) -> int:
    """The profile's thread count, capped at this host's cores (more threads than cores only adds noise)."""
    return max(1, min(profile_threads, os.cpu_count() or 1))


def make_session(
    path: Path,
    threads: int,
    session_config: dict[str, str] | None = None,
    optimization_level: str = "all",
) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = _OPT_LEVELS[optimization_level]
    opts.log_severity_level = 3
    for key, value in (session_config or {}).items():
        opts.add_session_config_entry(key, value)
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises Fail/InvalidGraph/NotImplemented, all RuntimeError-like
        raise ConversionError(f"ONNX Runtime cannot load {path.name}: {first_line(exc)}") from None


def input_specs(session: ort.InferenceSession) -> list[InputSpec]:
    return [
        InputSpec(i.name, _ORT_TO_NUMPY.get(i.type, "float32"), tuple(_dim(d) for d in i.shape))
        for i in session.get_inputs()
    ]


def _dim(d: object) -> int | str | None:
    return d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else None)


def tensor_specs(session: ort.InferenceSession, which: str) -> list[TensorSpec]:
    """Manifest tensor specs of a session's ``inputs`` or ``outputs``, -1 for dynamic dims."""
    nodes = session.get_inputs() if which == "inputs" else session.get_outputs()
    return [
        TensorSpec(
            name=n.name,
            datatype=from_ort_type(n.type),
            shape=[d if isinstance(d, int) and d > 0 else -1 for d in n.shape],
        )
        for n in nodes
    ]


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return session.run(None, feeds)
    except Exception as exc:
        raise ConversionError(f"the model failed to run on the given inputs: {first_line(exc)}") from None
