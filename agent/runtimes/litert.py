"""LiteRT (``ai-edge-litert``, successor of ``tflite-runtime``) for ``.tflite`` bundles; optional extra.

A LiteRT interpreter is not thread-safe, so calls are serialised with a lock; the agent's
per-model concurrency limit and batching keep the queue in front of it short.

A full-integer model (Coral) takes and returns int8/uint8 tensors; where the manifest offers the
client a float tensor, the runtime quantizes the input and dequantizes the output with the model's
own parameters, so clients send and receive floats. A tensor the manifest declares as an integer
type is passed through as it is.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtimes.base import ModelRuntime, RuntimeLoadError
from sdk.manifest import Manifest, TensorSpec
from sdk.quantized_io import QuantParams

log = logging.getLogger(__name__)


def _by_manifest_name(details: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    by_name = {d["name"]: d for d in details}
    if set(names) <= set(by_name):
        return {n: by_name[n] for n in names}
    if len(details) != len(names):
        raise RuntimeLoadError(f"the model has {len(details)} tensors where the manifest names {len(names)}")
    return dict(zip(names, details, strict=True))


def _client_floats(specs: list[TensorSpec], details: dict[str, dict[str, Any]]) -> dict[str, QuantParams]:
    """The tensors the client sees as floats while the model holds them as quantized integers."""
    by_name = {t.name: t for t in specs}
    out = {}
    for name, detail in details.items():
        params = QuantParams.of(detail["dtype"], detail["quantization"])
        if params is not None and by_name[name].datatype in ("FP32", "FP16", "FP64"):
            out[name] = params
    return out


class LiteRtRuntime(ModelRuntime):
    backend = "litert-cpu"

    def __init__(self, model_path: Path, manifest: Manifest, *, threads: int | None = None) -> None:
        super().__init__(model_path, manifest)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise RuntimeLoadError(
                f"{manifest.name} {manifest.version} is a LiteRT model; install the agent's tflite extra "
                "(pip install 'edgefleet[agent,litert]')"
            ) from None
        try:
            self._interpreter = Interpreter(model_path=str(model_path), num_threads=threads or os.cpu_count())
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise RuntimeLoadError(f"LiteRT cannot load {model_path.name}: {exc}") from None
        # Converters rename tensors (``serving_default_x:0``); fall back to the manifest's order.
        self._inputs = _by_manifest_name(
            self._interpreter.get_input_details(), [t.name for t in manifest.inputs]
        )
        self._outputs = _by_manifest_name(
            self._interpreter.get_output_details(), [t.name for t in manifest.outputs]
        )
        self._shapes = {n: tuple(int(v) for v in d["shape"]) for n, d in self._inputs.items()}
        # batch 1 fixed in the model while the manifest offers any batch (-1): run sample by sample
        offered = {t.name: t.shape for t in manifest.inputs}
        self._batch_one = all(
            len(d["shape_signature"]) and d["shape_signature"][0] == 1 and offered[n][:1] == [-1]
            for n, d in self._inputs.items()
        )
        self._quantize = _client_floats(manifest.inputs, self._inputs)
        self._dequantize = _client_floats(manifest.outputs, self._outputs)
        self._lock = threading.Lock()

    def run(
        self, inputs: Mapping[str, np.ndarray], output_names: list[str] | None = None
    ) -> dict[str, np.ndarray]:
        from sdk.errors import InferenceError

        names = output_names or list(self._outputs)
        rows = {v.shape[0] for v in inputs.values() if v.ndim}
        with self._lock:
            try:
                if self._batch_one and len(rows) == 1 and (n := rows.pop()) > 1:
                    # a static batch-1 model offered to clients with any batch: sample by sample
                    parts = [
                        self._invoke({k: v[i : i + 1] for k, v in inputs.items()}, names) for i in range(n)
                    ]
                    return {k: np.concatenate([p[k] for p in parts]) for k in names}
                return self._invoke(inputs, names)
            except (ValueError, RuntimeError, KeyError) as exc:
                raise InferenceError(f"LiteRT failed: {exc}") from None

    def _invoke(self, inputs: Mapping[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        for name, value in inputs.items():
            detail = self._inputs[name]
            if self._shapes[name] != value.shape:  # a dynamic dim changed since the last call
                self._interpreter.resize_tensor_input(detail["index"], list(value.shape))
                self._interpreter.allocate_tensors()
                self._shapes[name] = value.shape
            params = self._quantize.get(name)
            if params is not None:
                value = params.quantize(value)
            self._interpreter.set_tensor(detail["index"], value.astype(detail["dtype"], copy=False))
        self._interpreter.invoke()
        return {n: self._output(n) for n in names}

    def _output(self, name: str) -> np.ndarray:
        value = self._interpreter.get_tensor(self._outputs[name]["index"])
        params = self._dequantize.get(name)
        return params.dequantize(value) if params is not None else value.copy()
