"""Tensors inside JSON documents (the manifest's smoke sample): datatype, shape and base64 data."""

from __future__ import annotations

import base64
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from sdk.datatypes import DATATYPES, array_from_wire, array_to_wire, from_numpy_dtype


def _known_datatype(v: str) -> str:
    if v not in DATATYPES:
        raise ValueError(f"unknown datatype {v!r}")
    return v


#: An Open Inference Protocol datatype name (``FP32``, ``INT8``, ...), checked when a model is validated.
DatatypeName = Annotated[str, AfterValidator(_known_datatype)]


class EncodedTensor(BaseModel):
    """A tensor stored in JSON: binary-extension bytes, base64-encoded."""

    model_config = ConfigDict(extra="forbid")

    datatype: DatatypeName
    shape: list[int] = Field(default_factory=list)
    data_b64: str

    @classmethod
    def from_numpy(cls, array: np.ndarray) -> EncodedTensor:
        array = np.asarray(array)
        datatype = from_numpy_dtype(array.dtype)
        return cls(
            datatype=datatype,
            shape=list(array.shape),
            data_b64=base64.b64encode(array_to_wire(array, datatype)).decode("ascii"),
        )

    def to_numpy(self) -> np.ndarray:
        return array_from_wire(base64.b64decode(self.data_b64), self.datatype, self.shape)
