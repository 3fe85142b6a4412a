"""The sync service driving the agent's real ModelStore (real verification, ONNX Runtime smoke tests)."""

from __future__ import annotations

import pytest

from agent.store import ModelStore
from sdk import messages
from tests.agent.sync.support import desired_model, running
from tests.support.bundles import make_bundle

pytestmark = pytest.mark.mqtt


def test_rollout_failure_and_rollback_through_the_real_store(world) -> None:
    store = ModelStore(world.tmp / "agent-data", [world.key.public_key()])
    versions = {
        "1.0": make_bundle(world.bundles, world.key, name="net", version="1.0", scale=1.0),
        "2.0": make_bundle(world.bundles, world.key, name="net", version="2.0", scale=2.0, broken=True),
        "3.0": make_bundle(world.bundles, world.key, name="net", version="3.0", scale=3.0),
    }

    def apply(revision: int, version: str, *, rollback: bool = False) -> dict:
        model = desired_model(versions[version], "net", version).model_copy(
            update={"allow_downgrade": rollback}
        )
        desired = world.signed(messages.DesiredState(revision=revision, models=[model]))
        world.probe.publish_desired("dev-1", desired)
        return world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == revision, timeout=30)

    with running(world.service(store, data_dir=world.tmp / "agent-data", pin_fleet_key=True)):
        first = apply(1, "1.0")
        assert first["models"][0]["state"] == "active" and store.active_versions() == {"net": "1.0"}

        broken = apply(2, "2.0")  # its smoke output is wrong: the real store refuses it
        (model,) = broken["models"]
        assert model["state"] == "failed" and model["active_version"] == "1.0"
        assert "smoke" in model["error"].lower()
        assert store.active_versions() == {"net": "1.0"}

        third = apply(3, "3.0")
        assert third["models"][0]["state"] == "active" and store.active_versions() == {"net": "3.0"}

        # 1.0 is the previous version: a rollback, no download, authorized by the signed state
        back = apply(4, "1.0", rollback=True)
        assert back["models"][0]["active_version"] == "1.0" and store.active_versions() == {"net": "1.0"}

    kinds = [e.json()["kind"] for e in world.probe.on("events", "dev-1")]
    assert kinds.count("failure") == 1 and kinds[-1] == "rollback"
