"""``--storage s3://bucket/prefix`` against a real S3 HTTP server on loopback (moto's, with IAM auth on).

Round trip through the storage interface, a bundle larger than the multipart threshold through
the API (uploaded in parts, downloaded in pieces with Range), presigned redirects, the start-up
errors as one line, and ``edge-fleet serve`` as a process with a device downloading its bundle.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from agent.sync.download import BundleDownloader
from fleet import auth
from fleet.app import create_app
from fleet.settings import FleetSettings
from fleet.storage import open_storage
from fleet.storage.base import CHUNK
from sdk import keys
from sdk.bundle import write_bundle
from sdk.errors import ConfigError, NotFoundError
from sdk.manifest import Manifest, Smoke, SourceInfo, TensorSpec
from sdk.tensors import EncodedTensor
from tests.fleet.conftest import Published
from tests.support.bundles import make_bundle
from tests.support.fleet_proc import BIN, admin_token, run_fleet, serve_args
from tests.support.mosquitto import free_port
from tests.support.s3 import S3Server, run_s3
from tests.support.waiting import wait_until

_OTHER_AWS = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with run_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_env(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """This process's AWS environment points at the test server (as a pod's env would at MinIO)."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return s3


def big_bundle(out_dir: Path, key: keys.Ed25519PrivateKey, mib: int) -> Path:
    """A signed bundle of about ``mib`` MiB: y = x, plus random (incompressible) unused weights."""
    from onnx import TensorProto, helper, numpy_helper, save

    out_dir.mkdir(parents=True, exist_ok=True)
    weights = np.random.default_rng(0).random(mib * 262144, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [numpy_helper.from_array(weights, "unused_weights")],
    )
    model_path = out_dir / "model.onnx"
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model_path)
    x = EncodedTensor.from_numpy(np.ones((1, 4), dtype=np.float32))
    manifest = Manifest(
        name="big",
        version="1.0.0",
        profile="x86-server",
        runtime="onnxruntime",
        precision="fp32",
        source=SourceInfo(format="onnx", sha256=hashlib.sha256(model_path.read_bytes()).hexdigest()),
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 4])],
        smoke=Smoke(inputs={"x": x}, outputs={"y": x}),
    )
    return write_bundle(manifest, {"model.onnx": model_path}, key, out_dir)


def upload(client: TestClient | httpx.Client, path: Path, headers: dict[str, str]) -> dict:
    with open(path, "rb") as f:
        r = client.post("/api/v1/bundles", files={"file": (path.name, f)}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def test_storage_round_trip_keeps_to_its_prefix(s3_env: S3Server, tmp_path: Path) -> None:
    bucket = s3_env.new_bucket()
    s3_env.client().put_object(Bucket=bucket, Key="someone-else/x.efb", Body=b"not ours")
    storage = open_storage(f"s3://{bucket}/fleet/bundles/", staging_dir=tmp_path / "stage")
    data = os.urandom(3 * CHUNK + 123)
    staged = storage.staging_path("up.efb")
    staged.write_bytes(data)
    storage.put("k1-tiny.efb", staged)
    assert not staged.exists()
    assert storage.keys() == ["k1-tiny.efb"]
    stored = s3_env.client().head_object(Bucket=bucket, Key="fleet/bundles/k1-tiny.efb")
    assert stored["ContentLength"] == len(data)
    pieces = list(storage.open("k1-tiny.efb"))
    assert b"".join(pieces) == data and max(map(len, pieces)) <= CHUNK and len(pieces) >= 4
    assert b"".join(storage.open("k1-tiny.efb", 10, 19)) == data[10:20]
    assert b"".join(storage.open("k1-tiny.efb", CHUNK)) == data[CHUNK:]
    storage.delete("k1-tiny.efb")
    storage.delete("k1-tiny.efb")  # already gone: not an error
    assert storage.keys() == []
    with pytest.raises(NotFoundError, match="missing"):
        storage.open("k1-tiny.efb")
    with pytest.raises(NotFoundError, match="bad storage key"):
        storage.open("../someone-else/x.efb")


@pytest.fixture
def s3_fleet(s3_env: S3Server, tmp_path: Path, signing_key: keys.Ed25519PrivateKey) -> Iterator[tuple]:
    bucket = s3_env.new_bucket()
    settings = FleetSettings(
        db_url=f"sqlite:///{tmp_path / 'fleet.db'}",
        storage=f"s3://{bucket}/edgefleet",
        storage_multipart_mb=5,  # S3's smallest part: a 12 MiB bundle goes up in three
        staging_dir=tmp_path / "stage",
        trust_keys=[tmp_path / "keys" / "signing.pub"],
        controller_interval_s=0,
    )
    app = create_app(settings, publisher=Published())
    with TestClient(app) as client:
        ctx = app.state.fleet
        with ctx.db.session() as s:
            admin = {"Authorization": f"Bearer {auth.create_token(s, 'admin')}"}
        yield client, ctx, admin, bucket


def test_big_bundle_goes_up_in_parts_and_comes_down_in_ranges(
    s3_fleet: tuple, s3_env: S3Server, tmp_path: Path, signing_key: keys.Ed25519PrivateKey
) -> None:
    client, ctx, admin, bucket = s3_fleet
    path = big_bundle(tmp_path / "src", signing_key, mib=12)
    size = path.stat().st_size
    assert size > 10 * 1024 * 1024
    b = upload(client, path, admin)
    assert b["size"] == size and b["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    head = s3_env.client().head_object(Bucket=bucket, Key=f"edgefleet/{ctx.storage.keys()[0]}")
    assert head["ETag"].endswith('-3"'), head["ETag"]  # a multipart upload of three parts
    assert not list((tmp_path / "stage").iterdir())

    token = client.post(
        "/api/v1/devices", json={"device_id": "cam-1", "profile": "x86-server"}, headers=admin
    ).json()["token"]
    # a device token downloads only what its desired state names: a rollout gives it the bundle
    assert client.post("/api/v1/rollouts", json={"bundle_id": b["id"]}, headers=admin).status_code == 201
    ctx.controller.tick()
    device = {"Authorization": f"Bearer {token}"}
    url = f"/api/v1/bundles/{b['id']}/download"
    full = client.get(url, headers=device)
    assert full.status_code == 200 and full.headers["content-length"] == str(size)
    assert hashlib.sha256(full.content).hexdigest() == b["sha256"]
    cut = size // 3
    part = client.get(url, headers={**device, "Range": f"bytes={cut}-"})
    assert part.status_code == 206 and part.headers["content-range"] == f"bytes {cut}-{size - 1}/{size}"
    assert full.content[:cut] + part.content == full.content
    assert client.get(url, headers={**device, "Range": f"bytes={size}-"}).status_code == 416
    # an If-Range for another file: the whole file, not a range of this one
    other = client.get(url, headers={**device, "Range": "bytes=10-", "If-Range": '"0000"'})
    assert other.status_code == 200 and len(other.content) == size


def test_presigned_downloads_redirect_without_the_fleet_token(
    s3_fleet: tuple, s3_env: S3Server, tmp_path: Path, signing_key: keys.Ed25519PrivateKey
) -> None:
    client, ctx, admin, _ = s3_fleet
    b = upload(client, make_bundle(tmp_path / "src", signing_key), admin)
    ctx.storage.presign_s = 60
    r = client.get(f"/api/v1/bundles/{b['id']}/download", headers=admin, follow_redirects=False)
    assert r.status_code == 307
    assert (
        r.headers["location"].startswith(f"{s3_env.endpoint}/")
        and "X-Amz-Signature=" in r.headers["location"]
    )
    with s3_env.without_auth():
        direct = httpx.get(r.headers["location"], timeout=10)  # no Authorization: the URL is the grant
    assert direct.status_code == 200 and hashlib.sha256(direct.content).hexdigest() == b["sha256"]


@pytest.mark.parametrize(
    ("url", "env", "message"),
    [
        ("s3://no-such-bucket/p", {}, "the S3 bucket no-such-bucket does not exist at http://127.0.0.1:"),
        (
            "s3://{bucket}/p",
            {"AWS_SECRET_ACCESS_KEY": "wrong"},
            "refused the credentials (SignatureDoesNotMatch)",
        ),
        (
            "s3://{bucket}/p",
            {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWN"},
            "refused the credentials (InvalidAccessKeyId)",
        ),
        (
            "s3://{bucket}/p",
            {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""},
            "no S3 credentials for s3://",
        ),
        ("s3://{bucket}/p", {"AWS_ENDPOINT_URL": "http://127.0.0.1:{port}"}, "cannot reach the S3 endpoint"),
        ("s3://Bad_Bucket/p", {}, "is not an S3 bucket name"),
    ],
)
def test_bad_s3_settings_fail_at_start_with_one_line(
    s3_env: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, env: dict, message: str
) -> None:
    bucket = s3_env.new_bucket()
    for name, value in env.items():
        if value:
            monkeypatch.setenv(name, value.format(port=free_port()))
        else:
            monkeypatch.delenv(name)
    with pytest.raises(ConfigError) as caught:
        open_storage(url.format(bucket=bucket), staging_dir=tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_serve_names_a_missing_bucket_before_it_starts(s3_env: S3Server, tmp_path: Path) -> None:
    r = subprocess.run(
        [str(BIN), "serve", "--db", f"sqlite:///{tmp_path / 'f.db'}", "--storage", "s3://gone-bucket/edge"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **s3_env.env()},
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"edge-fleet: error: the S3 bucket gone-bucket does not exist at {s3_env.endpoint}; create it first"
    ]


@pytest.mark.parametrize("presign", [False, True], ids=["through-fleet", "presigned"])
def test_serve_on_s3_device_downloads_its_bundle(
    s3: S3Server, tmp_path: Path, signing_key: keys.Ed25519PrivateKey, presign: bool
) -> None:
    bucket = s3.new_bucket()
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    token = admin_token(db)
    args = serve_args(tmp_path, db, "", "--storage", f"s3://{bucket}/prod/bundles")
    env = s3.env(**({"EDGEFLEET_STORAGE_PRESIGN_S": "300"} if presign else {}))
    with run_fleet(tmp_path / "fleet", args, env=env) as fleet, contextlib.ExitStack() as stack:
        api = httpx.Client(base_url=fleet.url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        b = upload(api, make_bundle(tmp_path / "src", signing_key), {})
        creds = api.post("/api/v1/devices", json={"device_id": "edge-1", "profile": "x86-server"}).json()
        assert api.post("/api/v1/rollouts", json={"bundle_id": b["id"]}).status_code == 201
        wait_until(
            lambda: api.get("/api/v1/devices/edge-1").json()["desired_models"], what="the desired state"
        )
        listed = s3.client().list_objects_v2(Bucket=bucket, Prefix="prod/bundles/")["Contents"]
        assert [o["Size"] for o in listed] == [b["size"]]
        first = api.get(f"/api/v1/bundles/{b['id']}/download", follow_redirects=False)
        assert first.status_code == (307 if presign else 200)
        if presign:
            stack.enter_context(s3.without_auth())
        # the agent's own downloader: device token to the fleet only, sha256 and size checked
        downloader = BundleDownloader(fleet.url, creds["token"])
        got = downloader.fetch(
            f"/api/v1/bundles/{b['id']}/download",
            tmp_path / "device" / "b.efb",
            size=b["size"],
            sha256=b["sha256"],
        )
        downloader.close()
        assert got.size == b["size"] and got.path.read_bytes() == (tmp_path / "device" / "b.efb").read_bytes()
        api.close()
