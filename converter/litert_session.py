"""A LiteRT interpreter behind the interface the converter measures ONNX Runtime sessions through.

:mod:`converter.measure` and :mod:`converter.reference` call ``run(None, feeds)``, ``get_inputs()``
and ``get_outputs()``; this adapter gives a ``.tflite`` model the same three, so latency, fidelity,
reference statistics and the smoke sample are computed by the same code for both runtimes.

The model is measured as the agent serves it (see ``agent/runtimes/litert.py``): float inputs are
quantized and integer outputs dequantized with the model's own parameters, and tensors are taken in
the model's order under the names the bundle gives them. A fixed batch of 1 takes larger batches
one sample at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import first_line
from sdk.datatypes import from_numpy_dtype
from sdk.errors import ConversionError
from sdk.manifest import TensorSpec
from sdk.quantized_io import QuantParams


@dataclass(frozen=True)
class TensorInfo:
    """What ``get_inputs()``/``get_outputs()`` return: like ONNX Runtime's NodeArg."""

    name: str
    shape: list[int | str]
    #: the numpy dtype the client exchanges (float32 for a quantized tensor).
    dtype: np.dtype
    #: the model's own tensor type and its affine parameters, when it is quantized.
    quant: QuantParams | None

    @property
    def type(self) -> str:
        return f"tensor({'float' if self.dtype == np.float32 else self.dtype.name})"


def interpreter(model: Path, threads: int, *, ops: bool = False) -> Any:
    """A LiteRT interpreter, tensors allocated; ``ops`` without the default XNNPACK delegate, so
    ``_get_ops_details()`` lists the model's own ops instead of one ``DELEGATE`` node."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    resolver = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES if ops else OpResolverType.AUTO
    try:
        it = Interpreter(model_path=str(model), num_threads=threads, experimental_op_resolver_type=resolver)
        it.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise ConversionError(f"LiteRT cannot load {model.name}: {first_line(exc)}") from None
    return it


@dataclass(frozen=True)
class IoNames:
    """The names a bundle gives a model's inputs and outputs, in the model's order."""

    inputs: list[str]
    outputs: list[str]


class LiteRtSession:
    """One LiteRT interpreter; ``names`` renames its inputs and outputs in order (the bundle's names)."""

    def __init__(self, model: Path, threads: int, names: IoNames | None = None) -> None:
        self.path = model
        self._it = interpreter(model, threads)
        self._in = self._it.get_input_details()
        self._out = self._it.get_output_details()
        ins = names.inputs if names else [d["name"] for d in self._in]
        outs = names.outputs if names else [d["name"] for d in self._out]
        if len(ins) != len(self._in) or len(outs) != len(self._out):
            raise ConversionError(
                f"{model.name} has {len(self._in)} inputs and {len(self._out)} outputs, not {len(ins)} and {len(outs)}"
            )
        self._inputs = [_info(n, d) for n, d in zip(ins, self._in, strict=True)]
        self._outputs = [_info(n, d) for n, d in zip(outs, self._out, strict=True)]

    def get_inputs(self) -> list[TensorInfo]:
        return self._inputs

    def get_outputs(self) -> list[TensorInfo]:
        return self._outputs

    def run(self, output_names: list[str] | None, feeds: dict[str, np.ndarray], *_: Any) -> list[np.ndarray]:
        rows = {len(v) if np.ndim(v) else 1 for v in feeds.values()}
        batch = self._in[0]["shape"][0] if len(self._in[0]["shape"]) else 1
        if len(rows) == 1 and (n := rows.pop()) > 1 and batch == 1:
            parts = [self._invoke({k: v[i : i + 1] for k, v in feeds.items()}) for i in range(n)]
            return [np.concatenate(p) for p in zip(*parts, strict=True)]
        return self._invoke(feeds)

    def _invoke(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        for i, (info, detail) in enumerate(zip(self._inputs, self._in, strict=True)):
            value = feeds[info.name]
            if info.quant is not None and value.dtype.kind == "f":
                value = info.quant.quantize(value)
            if tuple(self._it.get_input_details()[i]["shape"]) != value.shape:  # a dynamic dim changed
                self._it.resize_tensor_input(detail["index"], list(value.shape))
                self._it.allocate_tensors()
            self._it.set_tensor(detail["index"], np.ascontiguousarray(value, dtype=detail["dtype"]))
        self._it.invoke()
        outs = []
        for info, detail in zip(self._outputs, self._out, strict=True):
            value = self._it.get_tensor(detail["index"])
            outs.append(info.quant.dequantize(value) if info.quant is not None else value.copy())
        return outs


def _info(name: str, detail: dict[str, Any]) -> TensorInfo:
    quant = QuantParams.of(detail["dtype"], detail["quantization"])
    dtype = np.dtype(np.float32) if quant is not None else np.dtype(detail["dtype"])
    shape = [int(d) if d > 0 else "dynamic" for d in detail.get("shape_signature", detail["shape"])]
    return TensorInfo(name, shape, dtype, quant)


def tensor_specs(infos: list[TensorInfo]) -> list[TensorSpec]:
    """Manifest specs as the client sees them: floats for quantized tensors, -1 for dynamic dims."""
    return [
        TensorSpec(
            name=i.name,
            datatype=from_numpy_dtype(i.dtype),
            shape=[d if isinstance(d, int) else -1 for d in i.shape],
        )
        for i in infos
    ]
