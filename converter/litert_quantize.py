"""Full-integer int8 quantization of a float ``.tflite`` with ai-edge-quantizer, calibrated on the user's data.

Candidates, in the order the profile prefers them, each judged by the same bar as ONNX candidates
(:func:`converter.candidates.shortfall`) against the float model:

1. full integer, weights per tensor or per channel as the profile says (int8 inputs and outputs);
2. full integer with the other weight granularity (per channel usually keeps more accuracy);
3. op types left in float, one more at a time, the op type whose float copy helps fidelity most
   first: no longer full integer (an Edge TPU runs only the part before the first float op), but
   the report names exactly which op types could not be quantized without breaking fidelity.

The first candidate that meets the bar is chosen; if none does, conversion fails with the best
candidate's shortfall.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from converter.calibration import Dataset
from converter.candidates import Candidate, Judge, Verdict
from converter.errors import tool_failure
from converter.litert_session import IoNames, LiteRtSession, interpreter
from converter.measure import Fidelity
from sdk.errors import ConversionError
from sdk.profiles import QuantizationSpec

log = logging.getLogger(__name__)

#: calibration samples run through the float model (min/max ranges settle well before this).
CALIBRATION_SAMPLES = 500
#: at most this many op types are tried in float before giving up on the bar.
MAX_FLOAT_OP_TYPES = 3


@dataclass(frozen=True)
class Setting:
    per_channel: bool
    float_ops: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        base = f"int8-full-{'per-channel' if self.per_channel else 'per-tensor'}"
        return base + (f"+float[{','.join(self.float_ops)}]" if self.float_ops else "")


def quantize(float_model: Path, out: Path, calibration: Dataset, setting: Setting) -> Path:
    """Write ``float_model`` quantized per ``setting`` (int8 weights and activations) to ``out``."""
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    granularity = (
        qtyping.QuantGranularity.CHANNELWISE if setting.per_channel else qtyping.QuantGranularity.TENSORWISE
    )
    float_model = with_signature(float_model, out.with_name(f"{float_model.stem}-signed.tflite"))
    it = interpreter(float_model, 1)
    signatures = it.get_signature_list()
    if len(signatures) != 1:
        raise ConversionError(f"{float_model.name} has {len(signatures)} signatures; one is supported")
    key, signature = next(iter(signatures.items()))
    # the signature's inputs are in the model's input order, as the data's names are (LiteRtSession)
    names = [d["name"] for d in it.get_input_details()]
    by_tensor = {it.get_signature_runner(key).get_input_details()[n]["name"]: n for n in signature["inputs"]}
    data = calibration.take(CALIBRATION_SAMPLES)
    order = list(data.inputs)
    samples = [
        {by_tensor[t]: batch[order[i]] for i, t in enumerate(names)} for batch in data.batches(_batch(it))
    ]
    q = quantizer.Quantizer(str(float_model))
    q.add_static_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 8, 8, granularity)
    for op in setting.float_ops:
        q.update_quantization_recipe(
            ".*", qtyping.TFLOperationName(op), algorithm_key=AlgorithmName.NO_QUANTIZE
        )
    try:
        # the quantizer prints progress bars and a size report; the converter reports on its own.
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            ranges = q.calibrate({key: samples}, num_threads=1)
            result = q.quantize(ranges, enable_progress_report=False)
    except Exception as exc:  # the quantizer raises ValueError/RuntimeError/KeyError by op
        raise tool_failure(f"ai-edge-quantizer ({setting.name})", exc) from None
    out.write_bytes(bytes(result.quantized_model))
    return out


def with_signature(model: Path, out: Path) -> Path:
    """``model`` itself, or a copy with one signature over its graph inputs and outputs.

    ai-edge-quantizer calibrates through a signature; older converters (TensorFlow 1, hand-built
    flatbuffers) wrote none. The copy names the signature's tensors by their tensor names.
    """
    import flatbuffers
    import numpy as np
    from ai_edge_litert import schema_py_generated as tfl

    if interpreter(model, 1).get_signature_list():
        return model
    if out.exists():
        return out
    raw = model.read_bytes()
    m = tfl.ModelT.InitFromPackedBuf(raw, 0)
    for buffer in m.buffers or []:
        if buffer.offset and buffer.offset > 1:  # data stored after the flatbuffer: inline it for Pack
            buffer.data = np.frombuffer(raw, np.uint8, count=buffer.size, offset=buffer.offset).copy()
            buffer.offset = buffer.size = 0
    graph = m.subgraphs[0]

    def tensor_map(index: int) -> tfl.TensorMapT:
        t = tfl.TensorMapT()
        t.name, t.tensorIndex = graph.tensors[index].name, index
        return t

    signature = tfl.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = b"serving_default", 0
    signature.inputs = [tensor_map(i) for i in graph.inputs]
    signature.outputs = [tensor_map(i) for i in graph.outputs]
    m.signatureDefs = [signature]
    builder = flatbuffers.Builder(len(raw) + 1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    out.write_bytes(bytes(builder.Output()))
    return out


def _batch(it: object) -> int:
    shape = it.get_input_details()[0]["shape"]  # type: ignore[attr-defined]
    return int(shape[0]) if len(shape) and shape[0] > 0 else 1


class LiteRtJudge(Judge):
    """Fidelity and accuracy of LiteRT candidates against the float model, at the profile's bar:
    :class:`Judge`'s rules, with each model run by the LiteRT interpreter."""

    def __init__(
        self, base: Path, data: Dataset, bar: QuantizationSpec, max_drop: float, threads: int, names: IoNames
    ) -> None:
        self.names = names  # before the base session is made
        super().__init__(base, data, bar, max_drop, threads)

    def session(self, path: Path, config: dict[str, str] | None = None) -> LiteRtSession:
        return LiteRtSession(path, self.threads, self.names)


def op_types(model: Path) -> list[str]:
    """The model's op types in first-use order (the interpreter's names, e.g. ``CONV_2D``)."""
    it = interpreter(model, 1, ops=True)
    seen: dict[str, None] = {}
    for op in it._get_ops_details():  # the only listing LiteRT's Python API has
        seen.setdefault(op["op_name"], None)
    return list(seen)


def search(
    float_model: Path,
    workdir: Path,
    calibration: Dataset,
    judge: LiteRtJudge,
    per_channel: bool,
    seconds_left: Callable[[], float] = lambda: float("inf"),
) -> tuple[Candidate, list[Candidate]]:
    """The first candidate that meets the bar (see the module doc), and every candidate tried; the
    float-op back-off stops when ``seconds_left()`` (the --budget) runs out."""
    tried: list[Candidate] = []

    def attempt(setting: Setting) -> Candidate:
        path = workdir / f"{setting.name.replace('[', '-').replace(']', '').replace(',', '-')}.tflite"
        precision = "int8" if not setting.float_ops else "int8-mixed"
        cand = Candidate(setting.name, path, precision, _describe(setting), excluded=setting.float_ops)
        try:
            quantize(float_model, path, calibration, setting)
        except ConversionError as exc:
            cand.decide(Verdict.FAILED, str(exc))
            tried.append(cand)
            return cand
        judge.check(cand)
        tried.append(cand)
        return cand

    for granularity in (per_channel, not per_channel):
        cand = attempt(Setting(granularity))
        if cand.verdict is Verdict.MEETS_BAR:
            return cand, tried
    best_granularity = max(tried, key=lambda c: c.score()).name.endswith("per-channel")
    floats: tuple[str, ...] = ()
    candidates_ops = [op for op in op_types(float_model) if _quantizable(op)]
    for _ in range(min(MAX_FLOAT_OP_TYPES, len(candidates_ops))):
        trial = [
            attempt(Setting(best_granularity, (*floats, op))) for op in candidates_ops if op not in floats
        ]
        ok = [c for c in trial if c.verdict is Verdict.MEETS_BAR]
        if ok:
            return ok[0], tried
        best = max(trial, key=lambda c: c.score())
        floats = best.excluded
    best = max(tried, key=lambda c: c.score())
    if "accuracy dropped" in best.reason:
        hint = "--max-accuracy-drop relaxes the accuracy bar"
    elif best.fidelity is not None and best.fidelity.argmax_agreement is None:
        hint = "a classifier is judged by argmax agreement when --eval data has labels"
    else:
        hint = (
            f"more representative --calibration data (ranges came from {min(len(calibration), CALIBRATION_SAMPLES)}"
            " samples), or a profile file of your own with a lower quantization bar"
        )
    raise ConversionError(
        f"no int8 model meets the bar, full integer or with up to {MAX_FLOAT_OP_TYPES} op types in float:"
        f" the best, {best.name}, has {best.reason or best.verdict.value} ({hint})"
    )


def _quantizable(op: str) -> bool:
    from ai_edge_quantizer import qtyping

    return op in qtyping.TFLOperationName._value2member_map_


def _describe(setting: Setting) -> str:
    how = "per-channel" if setting.per_channel else "per-tensor"
    text = f"ai-edge-quantizer static int8 weights ({how}) and int8 activations, int8 inputs and outputs"
    if setting.float_ops:
        text += f"; {', '.join(setting.float_ops)} left in float (not full integer)"
    return text


def fidelity_line(fid: Fidelity) -> str:
    if fid.argmax_agreement is not None:
        return f"argmax agreement {fid.argmax_agreement:.4f}"
    return f"cosine {fid.cosine:.5f}"
