"""The reconciler's shadow steps against the real store: a desired shadow is downloaded, verified and
installed beside the active version without serving; a broken one fails and changes nothing; a
plain desired version promotes it; a revision that no longer lists it ends the shadow."""

from __future__ import annotations

import pytest

from agent.store import ModelStore
from sdk import messages
from tests.agent.sync.support import desired_model, running
from tests.support.bundles import make_bundle

pytestmark = pytest.mark.mqtt


def test_shadow_install_failure_promotion_and_end(world) -> None:
    store = ModelStore(world.tmp / "agent-data", [world.key.public_key()])
    bundles = {
        "1.0": make_bundle(world.bundles, world.key, name="net", version="1.0", scale=1.0),
        "2.0": make_bundle(world.bundles, world.key, name="net", version="2.0", scale=2.0),
        "2.1": make_bundle(world.bundles, world.key, name="net", version="2.1", scale=2.0, broken=True),
        "3.0": make_bundle(world.bundles, world.key, name="net", version="3.0", scale=3.0),
    }

    def apply(revision: int, active: str, shadow: str | None = None) -> list[dict]:
        models = [desired_model(bundles[active], "net", active)]
        if shadow is not None:
            models.append(desired_model(bundles[shadow], "net", shadow).model_copy(update={"shadow": True}))
        world.probe.publish_desired(
            "dev-1", world.signed(messages.DesiredState(revision=revision, models=models))
        )
        return world.probe.wait_for("reported", "dev-1", lambda r: r["revision"] == revision, timeout=30)[
            "models"
        ]

    with running(world.service(store, data_dir=world.tmp / "agent-data", pin_fleet_key=True)):
        apply(1, "1.0")
        reported = apply(2, "1.0", shadow="2.0")
        shadow = next(m for m in reported if m.get("shadow"))
        assert shadow == {
            **shadow,
            "name": "net",
            "version": "2.0",
            "state": "active",
            "active_version": "1.0",
        }
        assert store.active_versions() == {"net": "1.0"} and store.shadow_versions() == {"net": "2.0"}

        # a shadow whose smoke test fails: reported failed, the active version and old shadow untouched
        reported = apply(3, "1.0", shadow="2.1")
        failed = next(m for m in reported if m.get("shadow"))
        assert failed["state"] == "failed" and "smoke" in failed["error"].lower()
        assert store.active_versions() == {"net": "1.0"} and store.shadow_versions() == {"net": "2.0"}

        apply(4, "1.0", shadow="2.0")  # installed already: verified again, no download
        assert store.shadow_versions() == {"net": "2.0"}
        reported = apply(5, "2.0")  # promotion: a plain desired version, activated from the store
        assert reported[0]["state"] == "active" and store.active_versions() == {"net": "2.0"}
        assert store.shadow_versions() == {}

        apply(6, "2.0", shadow="3.0")
        assert store.shadow_versions() == {"net": "3.0"}
        apply(7, "2.0")  # the shadow phase ended without promotion: cleared and pruned
        assert store.shadow_versions() == {} and "3.0" not in store.installed_versions("net")
        assert store.active_versions() == {"net": "2.0"}

    downloads = [e.json() for e in world.probe.on("events", "dev-1") if e.json()["kind"] == "download"]
    assert [d["version"] for d in downloads] == ["1.0", "2.0", "2.1", "3.0"]
