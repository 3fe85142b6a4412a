"""ONNX Runtime sessions and model signatures, built the same way everywhere in the converter.

The converter must measure a model exactly as the agent will run it, so sessions are made only
here, from the same :mod:`sdk.runtime_options` settings the agent uses (quiet threads included):
thread count, graph optimization level and session config entries are explicit arguments and
end up verbatim in the manifest's ``runtime_options``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import onnxruntime as ort

from converter.errors import first_line
from converter.model import InputSpec
from sdk.datatypes import from_ort_type
from sdk.errors import ConversionError
from sdk.manifest import RuntimeOptions, TensorSpec
from sdk.runtime_options import session_settings, thread_cap

OptimizationLevel = Literal["disable", "basic", "extended", "all"]
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
    """The profile's thread count, capped at this host's cores (the agent's rule too)."""
    return thread_cap(profile_threads)


def session_options(threads: int, options: RuntimeOptions) -> ort.SessionOptions:
    """The manifest's runtime options as ONNX Runtime session options, as the agent builds them."""
    settings = session_settings(options, threads)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = settings.intra_op_threads
    opts.inter_op_num_threads = settings.inter_op_threads
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, settings.optimization_level)
    opts.log_severity_level = 3
    for key, value in settings.config_entries.items():
        opts.add_session_config_entry(key, value)
    return opts


def make_session(
    path: Path,
    threads: int,
    session_config: dict[str, str] | None = None,
    optimization_level: OptimizationLevel = "all",
) -> ort.InferenceSession:
    opts = session_options(
        threads,
        RuntimeOptions(
            session_config=dict(session_config or {}), graph_optimization_level=optimization_level
        ),
    )
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
