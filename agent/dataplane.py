"""The data plane: live, ready, metadata and infer. It speaks :mod:`agent.infer_type`, never HTTP."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from agent.infer_type import InferRequest, InferResponse, InferTensor
from agent.metrics import AgentMetrics
from agent.repository import LoadedModel, ModelRepository
from agent.runtimes.base import RuntimeClosedError
from sdk import __version__
from sdk.datatypes import from_numpy_dtype
from sdk.errors import EdgeError, InvalidInputError, OverloadedError

log = logging.getLogger(__name__)

SERVER_NAME = "edgefleet-agent"
EXTENSIONS = ["binary_tensor_data"]
_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "litert": "tensorflow_lite"}


def _shape_fits(shape: list[int], spec: list[int]) -> bool:
    return len(shape) == len(spec) and all(s == -1 or s == d for d, s in zip(shape, spec, strict=True))


def _failure_reason(exc: EdgeError) -> str:
    if isinstance(exc, OverloadedError):
        return "overloaded"
    if isinstance(exc, InvalidInputError):
        return "invalid_input"
    return "runtime"


class DataPlane:
    def __init__(self, repository: ModelRepository, metrics: AgentMetrics) -> None:
        self.repository = repository
        self.metrics = metrics

    # ---------------------------------------------------------------------------------- health

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.repository.ready()

    def model_ready(self, name: str, version: str | None = None) -> bool:
        self.repository.get(name, version)
        return True

    # -------------------------------------------------------------------------------- metadata

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        model = self.repository.get(name, version)
        m = model.manifest
        return {
            "name": name,
            "versions": [model.version],
            "platform": _PLATFORMS.get(m.runtime, m.runtime),
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in m.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape} for t in m.outputs],
            "parameters": {"profile": m.profile, "precision": m.precision, "backend": model.runtime.backend},
        }

    # ----------------------------------------------------------------------------------- infer

    async def infer(self, request: InferRequest, *, retried: bool = False) -> InferResponse:
        model = self.repository.get(request.model_name, request.model_version)
        metrics = model.metrics
        metrics.requests.inc()
        started = time.perf_counter()
        try:
            group = model.monitor.group_of(request.parameters) if model.monitor is not None else None
            inputs = self._check_inputs(model, request)
            names = self._check_outputs(model, request)
            result = await model.scheduler.submit(inputs, names)
        except RuntimeClosedError:
            if retried:
                raise
            # Swapped out between resolving the version and running it (a retired version's
            # session is dropped once its drain finds it idle): run on the version serving now.
            return await self.infer(request, retried=True)
        except EdgeError as exc:
            metrics.failed(_failure_reason(exc))
            model.stats.record(time.perf_counter() - started, ok=False)
            raise
        elapsed = time.perf_counter() - started
        metrics.latency.observe(elapsed)
        metrics.queue.observe(result.queue_s)
        if result.leader:
            metrics.batch.observe(result.batch_size)
        model.stats.record(elapsed, ok=True)
        outputs = [
            InferTensor(name=n, datatype=from_numpy_dtype(v.dtype), shape=list(v.shape), data=v)
            for n, v in result.outputs.items()
        ]
        response = InferResponse(
            model_name=model.name, model_version=model.version, outputs=outputs, id=request.id
        )
        if model.monitor is not None:
            response.after = lambda: self._observe(model, request.id, group, inputs, result.outputs)
        return response

    def _observe(
        self,
        model: LoadedModel,
        request_id: str | None,
        group: str | None,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
    ) -> None:
        """Monitoring of one answered request, run by the transport after the response is sent:
        O(outputs) here; a mirrored request only enters the shadow's bounded queue."""
        assert model.monitor is not None and model.window is not None
        try:
            prediction, entry = model.monitor.observe(model.window, request_id, group, outputs)
            shadow = self.repository.shadow(model.name)
            if prediction is not None and shadow is not None and shadow.active_version == model.version:
                shadow.offer(inputs, prediction, entry)
        except Exception:  # monitoring must never cost a request
            log.exception("monitoring %s %s failed", model.name, model.version)

    # -------------------------------------------------------------------------------- feedback

    def feedback(self, name: str, doc: Any) -> dict[str, int]:
        """Ground truth for earlier requests of ``name``: ``{"feedback": [{"id", "label"}, ...]}``."""
        monitor = self.repository.monitor(name)
        items = doc.get("feedback") if isinstance(doc, dict) else None
        if not isinstance(items, list):
            raise InvalidInputError(
                'feedback must be {"feedback": [{"id": "<request id>", "label": ...}, ...]}'
            )
        limit = monitor.settings.max_feedback
        if len(items) > limit:
            raise InvalidInputError(
                f"{len(items)} feedback items in one call; this agent takes at most {limit}"
            )
        result, joined = monitor.feedback(items)
        shadow = self.repository.shadow(name)
        if shadow is not None:
            for entry, labels in joined:
                shadow.label(entry, labels)
        for outcome, count in result.as_dict().items():
            if count:
                self.metrics.feedback.labels(name, outcome).inc(count)
        return result.as_dict()

    @staticmethod
    def _check_inputs(model: LoadedModel, request: InferRequest) -> dict[str, np.ndarray]:
        inputs: dict[str, np.ndarray] = {}
        for tensor in request.inputs:
            spec = model.inputs.get(tensor.name)
            if spec is None:
                raise InvalidInputError(
                    f"model {model.name} has no input {tensor.name!r}; its inputs are {', '.join(model.inputs)}"
                )
            if tensor.name in inputs:
                raise InvalidInputError(f"input {tensor.name!r} is given twice")
            if tensor.datatype != spec.datatype:
                raise InvalidInputError(
                    f"input {tensor.name!r} has datatype {tensor.datatype}, model {model.name} expects {spec.datatype}"
                )
            if not _shape_fits(tensor.shape, spec.shape):
                raise InvalidInputError(
                    f"input {tensor.name!r} has shape {tensor.shape}, model {model.name} expects {spec.shape}"
                    " (-1: any size)"
                )
            inputs[tensor.name] = tensor.data
        missing = [n for n in model.inputs if n not in inputs]
        if missing:
            raise InvalidInputError(f"model {model.name} needs input(s) {', '.join(missing)}")
        return inputs

    @staticmethod
    def _check_outputs(model: LoadedModel, request: InferRequest) -> list[str] | None:
        if not request.outputs:
            return None
        names = [o.name for o in request.outputs]
        unknown = [n for n in names if n not in model.outputs]
        if unknown:
            raise InvalidInputError(
                f"model {model.name} has no output {unknown[0]!r}; its outputs are {', '.join(model.outputs)}"
            )
        return names
