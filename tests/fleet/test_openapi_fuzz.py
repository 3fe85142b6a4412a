"""Bad input at scale over HTTP: schemathesis drives every operation of the fleet's OpenAPI document.

Generated requests, valid and invalid, go to a real uvicorn on loopback with an admin token. Each
answer must be no 5xx, a status the document lists, and a body that matches the documented schema.
Bounded in examples so the whole module stays near a minute on a small machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from fleet import auth
from fleet.app import create_app
from fleet.settings import FleetSettings
from sdk import keys
from tests.fleet.conftest import Published
from tests.fleet.live_server import fleet_in_thread

# The document is built from the routes alone: create_app touches no database until it starts.
SCHEMA = schemathesis.openapi.from_dict(create_app(FleetSettings(db_url="sqlite://")).openapi())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance]
#: examples per operation and mode: ~18 operations x 20 requests
EXAMPLES = {GenerationMode.POSITIVE: 12, GenerationMode.NEGATIVE: 8}


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    tmp: Path = tmp_path_factory.mktemp("fleet")
    keys.save_keypair(keys.generate_key(), tmp / "keys" / "signing")
    with fleet_in_thread(tmp, Published(), trust_keys=[tmp / "keys" / "signing.pub"]) as (app, url):
        with app.state.fleet.db.session() as s:
            token = auth.create_token(s, "admin")
        yield url, {"Authorization": f"Bearer {token}"}


def test_the_document_covers_the_api() -> None:
    labels = {op.label for op in OPERATIONS}
    assert {"POST /api/v1/bundles", "POST /api/v1/devices", "POST /api/v1/rollouts"} <= labels


@pytest.mark.parametrize("mode", list(EXAMPLES), ids=lambda m: m.value)
@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
def test_every_operation_answers_within_its_schema(
    operation: schemathesis.APIOperation, mode: GenerationMode, live: tuple[str, dict[str, str]]
) -> None:
    url, headers = live

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def call(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=url, headers=headers, checks=CHECKS, timeout=30)

    call()
