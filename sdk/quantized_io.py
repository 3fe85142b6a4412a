"""Affine int8/uint8 quantization of a model's inputs and outputs (``real = scale * (q - zero_point)``).

A full-integer LiteRT model (Coral) takes and returns int8 or uint8 tensors. Clients send and receive
floats: the agent quantizes inputs and dequantizes outputs with the model's own parameters, and the
converter measures the model the same way, so what it records is what a client sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QuantParams:
    """The affine parameters of one integer tensor."""

    scale: float
    zero_point: int
    dtype: np.dtype

    @classmethod
    def of(cls, dtype: np.dtype | type, quantization: tuple[float, int]) -> QuantParams | None:
        """From a LiteRT tensor detail's ``dtype`` and ``quantization`` pair; None when not quantized."""
        scale, zero_point = quantization
        dt = np.dtype(dtype)
        if dt.kind not in "iu" or dt.itemsize != 1 or not scale > 0:
            return None
        return cls(float(scale), int(zero_point), dt)

    def quantize(self, real: np.ndarray) -> np.ndarray:
        info = np.iinfo(self.dtype)
        q = np.round(np.asarray(real, dtype=np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(q, info.min, info.max).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return ((q.astype(np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)).astype(
            np.float32
        )
