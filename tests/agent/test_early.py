"""Speculative early loading (agent.early): used only for versions the store then accepts unchanged."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agent.early import HINTS_NAME, EarlyLoads, SessionBuildError, create_session, read_hints, start_early
from agent.service import AgentService
from agent.store import ModelStore
from sdk import keys

Start = Callable[..., AgentService]


def _first_start(data_dir: Path, start_agent: Start) -> None:
    """Start and stop the agent once: it records the sessions it built for the next start."""
    start_agent().stop()
    assert read_hints(data_dir), f"no {HINTS_NAME} after a start"


def _built(early: EarlyLoads) -> dict[object, object]:
    """The sessions the early loader holds once it is done (before anyone took them)."""
    for done in early._done.values():
        done.wait()
    return dict(early._built)


def test_an_unchanged_version_is_served_by_the_session_loaded_early(
    data_dir: Path, store: ModelStore, make_affine: Callable[..., Path], start_agent: Start
) -> None:
    store.install(make_affine("1"))
    _first_start(data_dir, start_agent)
    early = start_early(data_dir)
    assert early is not None
    [(params, (session, _cached))] = _built(early).items()
    agent = start_agent(early=early)
    runtime = agent.repository.get("affine").runtime
    assert runtime.session is session  # type: ignore[attr-defined]
    assert runtime.params == params  # type: ignore[attr-defined]
    reply = httpx.post(
        agent.url + "/v2/models/affine/infer",
        json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
    )
    assert reply.status_code == 200, reply.text


def test_a_version_changed_after_verification_is_not_loaded_early_and_is_verified_in_full(
    data_dir: Path, store: ModelStore, make_affine: Callable[..., Path], start_agent: Start
) -> None:
    store.install(make_affine("1"))
    store.install(make_affine("2", scale=3.0))
    _first_start(data_dir, start_agent)
    model = store.version_dir("affine", "2") / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    assert start_early(data_dir) is None  # the stamp no longer matches: nothing loads early
    agent = start_agent()
    # As without early loading: the full check at start-up refuses 2 and falls back to 1.
    assert httpx.get(agent.url + "/v2/models/affine").json()["versions"] == ["1"]
    assert "failed verification" in agent.store.status()["models"]["affine"]["last_error"]  # type: ignore[index]


def test_a_session_loaded_early_serves_nothing_when_the_store_refuses_its_version(
    tmp_path: Path, data_dir: Path, store: ModelStore, make_affine: Callable[..., Path], start_agent: Start
) -> None:
    store.install(make_affine("1"))
    _first_start(data_dir, start_agent)
    # The files are unchanged, so the early check (no signer check) builds the session; but this
    # agent trusts another key only, so verification refuses the version.
    early = start_early(data_dir)
    assert early is not None and _built(early)
    other = keys.generate_key()
    _, other_pub = keys.save_keypair(other, tmp_path / "other" / "signer")
    agent = start_agent(early=early, trust_keys=[other_pub])
    assert httpx.get(agent.url + "/v2/models/affine").status_code == 404
    assert not early._built  # dropped, not kept around


def test_a_session_built_with_other_parameters_is_not_used(
    data_dir: Path, store: ModelStore, make_affine: Callable[..., Path], start_agent: Start
) -> None:
    store.install(make_affine("1"))
    _first_start(data_dir, start_agent)
    early = start_early(data_dir)
    assert early is not None
    [params] = early.jobs
    early.allow([Path(params.model_path).parent])
    assert early.take(dataclasses.replace(params, intra_op_threads=params.intra_op_threads + 1)) is None
    assert early.take(params) is not None


def test_a_hint_for_a_file_the_manifest_does_not_pin_is_ignored(
    data_dir: Path, store: ModelStore, make_affine: Callable[..., Path], start_agent: Start
) -> None:
    store.install(make_affine("1"))
    _first_start(data_dir, start_agent)
    [params] = read_hints(data_dir)
    folder = Path(params.model_path).parent
    (folder / "other.onnx").write_bytes(Path(params.model_path).read_bytes())
    forged = dataclasses.replace(params, model_path=str(folder / "other.onnx"))
    (data_dir / HINTS_NAME).write_text(json.dumps({"format": 1, "sessions": [forged.to_json()]}))
    assert start_early(data_dir) is None


def test_a_file_onnxruntime_cannot_load_is_a_session_build_error(
    data_dir: Path, store: ModelStore, make_affine: Callable[..., Path], start_agent: Start
) -> None:
    store.install(make_affine("1"))
    _first_start(data_dir, start_agent)
    [params] = read_hints(data_dir)
    not_a_model = data_dir / "manifest-copy.onnx"
    not_a_model.write_bytes(b"not an onnx model")
    with pytest.raises(SessionBuildError):
        create_session(dataclasses.replace(params, model_path=str(not_a_model)))


def test_after_an_update_the_next_start_loads_the_new_version_early(
    data_dir: Path, store: ModelStore, make_affine: Callable[..., Path], start_agent: Start
) -> None:
    """The hints follow every swap, not only start-up: the first start after an update (a reboot
    after an over-the-air install, say) builds the new version's session early."""
    store.install(make_affine("1"))
    agent = start_agent()
    assert [Path(p.model_path).parent.name for p in read_hints(data_dir)] == ["1"]
    agent.store.install(make_affine("2", scale=3.0))  # the running agent swaps to 2
    assert [Path(p.model_path).parent.name for p in read_hints(data_dir)] == ["2"]
    agent.stop()
    early = start_early(data_dir)
    assert early is not None
    [params] = _built(early)
    assert Path(params.model_path).parent.name == "2"  # type: ignore[attr-defined]
    agent = start_agent(early=early)
    runtime = agent.repository.get("affine").runtime
    assert runtime.params == params  # type: ignore[attr-defined]
