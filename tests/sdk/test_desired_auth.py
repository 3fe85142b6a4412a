"""Signed desired states (sdk.desired_auth): what a device with a pinned fleet key accepts."""

from __future__ import annotations

import json

import pytest

from sdk import keys, messages
from sdk.desired_auth import DesiredStateRefused, canonical_bytes, sign_desired, verify_desired

NOW = 1_800_000_000.0


def state(revision: int = 3, *, allow_downgrade: bool = False) -> messages.DesiredState:
    model = messages.DesiredModel(
        name="net", version="2.0", bundle_url="/api/v1/bundles/b1/download", sha256="ab" * 32, size=10,
        allow_downgrade=allow_downgrade,
    )  # fmt: skip
    return messages.DesiredState(revision=revision, models=[model], issued_at=NOW)


@pytest.fixture
def fleet_key() -> keys.Ed25519PrivateKey:
    return keys.generate_key()


def signed_payload(key: keys.Ed25519PrivateKey, **kwargs: object) -> bytes:
    return sign_desired(key, state(), device_id="dev-1", now=NOW, **kwargs).to_bytes()  # type: ignore[arg-type]


def test_a_signed_state_verifies_for_its_device(fleet_key) -> None:  # type: ignore[no-untyped-def]
    got = verify_desired(signed_payload(fleet_key), fleet_key.public_key(), device_id="dev-1", now=NOW + 60)
    assert got.revision == 3 and got.device_id == "dev-1" and got.expires == NOW + 7 * 24 * 3600


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: d.update(revision=2**31 - 1), "does not verify"),  # arbitrary software / fast-forward
        (lambda d: d["models"][0].update(bundle_url="http://evil.example/old.efb"), "does not verify"),
        (lambda d: d["models"][0].update(allow_downgrade=True), "does not verify"),
        (lambda d: d.update(expires=d["expires"] + 10**9), "does not verify"),  # extend the freeze
        (lambda d: d.update(extra_field="x"), "does not verify"),  # unknown fields are signed too
        (lambda d: d.pop("signature"), "not signed"),
        (lambda d: d.update(signature="!!"), "not base64"),
        (lambda d: d.update(signature="AAAA"), "does not verify"),
        (lambda d: d.update(key_id="0" * 16), "not by the pinned fleet key"),
    ],
)
def test_a_changed_or_unsigned_state_is_refused(fleet_key, change, why) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(signed_payload(fleet_key))
    change(data)
    with pytest.raises(DesiredStateRefused, match=why):
        verify_desired(json.dumps(data), fleet_key.public_key(), device_id="dev-1", now=NOW)


def test_another_key_is_refused(fleet_key) -> None:  # type: ignore[no-untyped-def]
    other = keys.generate_key()
    with pytest.raises(DesiredStateRefused, match="not by the pinned fleet key"):
        verify_desired(signed_payload(other), fleet_key.public_key(), device_id="dev-1", now=NOW)


def test_mix_and_match_a_state_signed_for_another_device_is_refused(fleet_key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DesiredStateRefused, match="for device dev-1, not dev-2"):
        verify_desired(signed_payload(fleet_key), fleet_key.public_key(), device_id="dev-2", now=NOW)


def test_indefinite_freeze_an_expired_state_is_refused(fleet_key) -> None:  # type: ignore[no-untyped-def]
    payload = signed_payload(fleet_key, validity_s=3600)
    verify_desired(payload, fleet_key.public_key(), device_id="dev-1", now=NOW + 3599)
    with pytest.raises(DesiredStateRefused, match="expired"):
        verify_desired(payload, fleet_key.public_key(), device_id="dev-1", now=NOW + 3601)


def test_without_a_pinned_key_nothing_can_authorize_a_downgrade() -> None:
    unsigned = state(allow_downgrade=True).to_bytes()
    got = verify_desired(unsigned, None, device_id="dev-1", now=NOW)
    assert [m.allow_downgrade for m in got.models] == [False]


def test_with_a_pinned_key_a_signed_downgrade_mark_is_kept(fleet_key) -> None:  # type: ignore[no-untyped-def]
    payload = sign_desired(fleet_key, state(allow_downgrade=True), device_id="dev-1", now=NOW).to_bytes()
    got = verify_desired(payload, fleet_key.public_key(), device_id="dev-1", now=NOW)
    assert [m.allow_downgrade for m in got.models] == [True]


def test_canonical_bytes_ignore_key_order_and_spacing() -> None:
    a = canonical_bytes(json.loads('{"b": 1, "a": [1.5, {"y": 2, "x": "é"}], "signature": "s"}'))
    b = canonical_bytes(json.loads('{ "a" : [1.5, {"x": "é", "y": 2}], "b": 1 }'))
    assert a == b == '{"a":[1.5,{"x":"é","y":2}],"b":1}'.encode()
    with pytest.raises(DesiredStateRefused):
        canonical_bytes({"a": float("nan")})
