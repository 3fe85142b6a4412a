"""An ONNX model as a float ``.tflite``: the graph interpreted as a torch module
(:mod:`converter.onnx_torch`), traced by litert-torch like any PyTorch model, then checked against
ONNX Runtime on the user's data before anything is quantized.

There is no ONNX to LiteRT converter without TensorFlow here; interpreting the graph's ops with
torch keeps every node as the ONNX node it was, so the float ``.tflite`` computes what the ONNX
model does. What cannot be interpreted or traced is refused in one line that says what to pass.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from converter.errors import first_line
from converter.litert_export import export_tflite
from converter.litert_session import IoNames, LiteRtSession
from sdk.errors import ConfigError, ConversionError

log = logging.getLogger(__name__)

INSTEAD = "pass the PyTorch model (package.module:factory or a torch.export .pt2) or a .tflite file"
#: the float ``.tflite`` must reproduce ONNX Runtime's outputs this closely (relative to their scale)
#: before quantization is judged against it: a wrong interpretation must not become the reference.
TOLERANCE = 1e-3


def onnx_to_tflite(
    onnx_path: Path, examples: dict[str, np.ndarray], out: Path, threads: int
) -> tuple[IoNames, float]:
    """Write the float ``.tflite`` of the ONNX model at ``onnx_path`` (traced at batch 1 on
    ``examples``); return its bundle names (the data's input names in the graph's order, the
    graph's output names) and its largest output error against ONNX Runtime on ``examples``,
    relative to the output's range."""
    import onnx

    from converter.onnx_torch import UnsupportedOps, to_torch

    model = onnx.load(str(onnx_path), load_external_data=True)
    try:
        module = to_torch(model, trainable=False)
    except UnsupportedOps as exc:
        raise ConversionError(f"ONNX to LiteRT: no torch interpretation for op(s) {exc}: {INSTEAD}") from None
    ordered = _by_graph_order(module.input_names, examples)
    ordered = {
        data: a.astype(_element_type(model, name), copy=False)
        for (data, a), name in zip(ordered.items(), module.input_names, strict=True)
    }
    try:
        export_tflite(module, ordered, out)
    except ConversionError as exc:  # torch.export or the lowering: name the cause, then the way out
        raise ConversionError(f"ONNX to LiteRT: {exc}; {INSTEAD}") from None
    names = IoNames(list(ordered), list(module.output_names))
    return names, _check_against_onnx(onnx_path, module.input_names, out, names, ordered, threads)


def _element_type(model: object, name: str) -> np.dtype:
    """The numpy type the graph declares for input ``name`` (data often comes as float64)."""
    from onnx import helper

    declared = next(i for i in model.graph.input if i.name == name)  # type: ignore[attr-defined]
    return np.dtype(helper.tensor_dtype_to_np_dtype(declared.type.tensor_type.elem_type))


def _by_graph_order(graph_inputs: list[str], examples: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The example arrays in the graph's input order, under the data's names. A one-input graph
    takes the data's one array whatever its name, as the LiteRT path does for ``.tflite`` models."""
    if all(name in examples for name in graph_inputs):
        return {name: examples[name] for name in graph_inputs}
    if len(graph_inputs) == 1 and len(examples) == 1:
        return dict(examples)
    raise ConfigError(
        f"the ONNX model's inputs {graph_inputs} are not all among the data's arrays {sorted(examples)}"
    )


def _check_against_onnx(
    onnx_path: Path,
    graph_inputs: list[str],
    tflite: Path,
    names: IoNames,
    examples: dict[str, np.ndarray],
    threads: int,
) -> float:
    """Refuse a float ``.tflite`` whose outputs differ from ONNX Runtime's on ``examples``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    reference = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    ours = LiteRtSession(tflite, threads, names)
    feeds = {name: examples[data] for name, data in zip(graph_inputs, names.inputs, strict=True)}
    try:
        expected = reference.run(None, feeds)
        got = ours.run(None, {data: examples[data] for data in names.inputs})
    except Exception as exc:  # ONNX Runtime and LiteRT raise their own types
        raise ConversionError(
            f"ONNX to LiteRT: the float .tflite could not be checked against ONNX Runtime"
            f" ({type(exc).__name__}: {first_line(exc)}): {INSTEAD}"
        ) from None
    worst = 0.0
    for name, want, have in zip(names.outputs, expected, got, strict=True):
        scale = max(1e-6, float(np.abs(want).max()))
        error = float(np.abs(np.asarray(have, np.float64) - want).max()) / scale
        if not error <= TOLERANCE:
            raise ConversionError(
                f"ONNX to LiteRT: output {name!r} of the float .tflite differs from ONNX Runtime by"
                f" {error:.2g} of its range (more than {TOLERANCE}): {INSTEAD}"
            )
        worst = max(worst, error)
    return worst
