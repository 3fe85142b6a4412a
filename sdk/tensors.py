"""Tensors inside JSON documents (the manifest's smoke sample): datatype, shape and base64 data."""

from __future__ import annotations

import base64

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sdk.datatypes import DATATYPES, array_from_wire, array_to_wire, from_numpy_dtype


class EncodedTensor(BaseModel):
    """A tensor stored in JSON: binary-extension bytes, base64-encoded."""

    model_config = ConfigDict(extra="forbid")

    datatype: str
    shape: list[int] = Field(default_factory=list)
    data_b64: str

    @field_validator("datatype")
    @classmethod
    def _known_datatype(cls, v: str) -> str:
        if v not in DATATYPES:
            raise ValueError(f"unknown datatype {v!r}")
        return v

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
