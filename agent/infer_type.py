"""The one internal request and response type; transports convert to and from it at their edge."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class InferTensor:
    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    #: True/False: the client asked for binary or JSON; None: follow the request-level default.
    binary: bool | None = None


@dataclass
class InferRequest:
    model_name: str
    inputs: list[InferTensor]
    model_version: str | None = None
    id: str | None = None
    #: None: every output of the model.
    outputs: list[RequestedOutput] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[InferTensor]
    id: str | None = None
    #: work the transport runs once the response is sent (monitoring): off the caller's latency
    after: Callable[[], None] | None = None
