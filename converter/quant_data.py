"""Feeds calibration samples to onnxruntime's quantization tool."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType

from converter import budget
from converter.calibration import Dataset
from converter.progress import reporter
from sdk.errors import ConfigError

log = logging.getLogger(__name__)

#: profile names -> onnxruntime enums, in one place.
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
QUANT_TYPES = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
#: Entropy and Percentile keep histograms of every tensor; a few hundred samples are plenty.
MAX_CALIBRATION_SAMPLES = 256
#: share of the time budget one calibration may take (a search calibrates twice), and the fewest
#: samples it uses however tight the budget.
CALIBRATION_SHARE = 0.06
MIN_CALIBRATION_SAMPLES = 16


class DatasetReader(CalibrationDataReader):
    """One sample per call, as onnxruntime's calibrators expect; as many as the time budget affords."""

    def __init__(self, data: Dataset) -> None:
        n = budget.samples_within(
            CALIBRATION_SHARE, min(len(data), MAX_CALIBRATION_SAMPLES), MIN_CALIBRATION_SAMPLES
        )
        if n < min(len(data), MAX_CALIBRATION_SAMPLES):
            log.info("calibration: %d of %d samples fit the time budget", n, len(data))
        self._data = data.take(n)
        self._iter: Iterator[dict[str, np.ndarray]] = self._data.batches(1)
        self._done = 0
        self._progress = reporter("calibration samples")

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._iter, None)
        if item is not None:
            self._done += 1
            self._progress(self._done, len(self._data))
        return item

    def rewind(self) -> None:
        self._iter = self._data.batches(1)
        self._done = 0


def calibration_method(name: str) -> CalibrationMethod:
    try:
        return CALIBRATION_METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown calibration method {name!r}; use one of {', '.join(CALIBRATION_METHODS)}"
        ) from None
