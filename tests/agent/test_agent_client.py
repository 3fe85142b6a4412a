"""sdk.agent_client against a real agent: binary and JSON tensors, BYTES, errors mapped to sdk.errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from agent.service import AgentService
from agent.store import ModelStore
from sdk import keys
from sdk.agent_client import AgentClient
from sdk.errors import InvalidInputError, ModelNotFoundError
from tests.agent.models import strings_bundle


@pytest.mark.parametrize("binary", [True, False])
def test_client_round_trip(
    store: ModelStore,
    make_affine: Callable[..., Path],
    tmp_path: Path,
    key: keys.Ed25519PrivateKey,
    start_agent: Callable[..., AgentService],
    binary: bool,
) -> None:
    store.install(make_affine("1"))
    store.install(strings_bundle(tmp_path / "src", key))
    agent = start_agent()
    with AgentClient(agent.url) as client:
        assert client.live() and client.ready() and client.model_ready("affine")
        assert client.model_metadata("affine")["versions"] == ["1"]
        x = np.arange(8, dtype=np.float32).reshape(2, 4)
        result = client.infer("affine", {"x": x}, binary=binary, request_id="a")
        assert (result.model_version, result.id) == ("1", "a")
        np.testing.assert_array_equal(result.outputs["y"], x * 2 + 1)
        assert result.outputs["z"].dtype == np.int64
        only_z = client.infer("affine", {"x": x}, outputs=["z"], binary=binary)
        assert list(only_z.outputs) == ["z"]
        text = np.array([b"a", b"bc"], dtype=object)
        assert client.infer("strings", {"text": text}, binary=binary).outputs["echo"].tolist() == [
            b"a",
            b"bc",
        ]
        with pytest.raises(ModelNotFoundError):
            client.infer("ghost", {"x": x}, binary=binary)
        with pytest.raises(InvalidInputError, match="expects FP32"):
            client.infer("affine", {"x": x.astype(np.float64)}, binary=binary)
