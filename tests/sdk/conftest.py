"""Builders for valid and deliberately broken bundles."""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sdk import keys
from sdk.manifest import FileEntry, Manifest, Signer, Smoke, SourceInfo, TensorSpec
from sdk.tensors import EncodedTensor


def make_manifest(**overrides) -> Manifest:
    fields = dict(
        name="net",
        version="1.0.0",
        profile="x86-server",
        runtime="onnxruntime",
        precision="int8",
        source=SourceInfo(format="onnx", sha256="ab" * 32, filename="net.onnx"),
        inputs=[TensorSpec(name="x", datatype="FP32", shape=[-1, 4])],
        outputs=[TensorSpec(name="y", datatype="FP32", shape=[-1, 2])],
        smoke=Smoke(
            inputs={"x": EncodedTensor.from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))},
            outputs={"y": EncodedTensor.from_numpy(np.array([[0.5, 0.5]], dtype=np.float32))},
        ),
    )
    fields.update(overrides)
    return Manifest(**fields)


@dataclass
class RawMember:
    """One tar member, as an attacker may write it."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    size: int | None = None  # header size, when it should lie


def signed_manifest_bytes(
    key: keys.Ed25519PrivateKey, files: dict[str, bytes], **overrides
) -> tuple[bytes, bytes]:
    import hashlib

    manifest = make_manifest(**overrides).model_copy(
        update={
            "files": {
                n: FileEntry(sha256=hashlib.sha256(d).hexdigest(), size=len(d)) for n, d in files.items()
            },
            "signer": Signer(key_id=keys.key_id(key), public_key=keys.public_key_to_b64(key.public_key())),
        }
    )
    raw = manifest.to_json()
    return raw, keys.sign(key, raw)


def write_raw_bundle(path: Path, members: list[RawMember]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.type
            info.linkname = m.linkname
            info.size = len(m.data) if m.size is None else m.size
            if m.type in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                info.devmajor, info.devminor = 1, 3
            if m.type == tarfile.REGTYPE:
                tar.addfile(info, io.BytesIO(m.data.ljust(info.size, b"\0")))
            else:
                info.size = 0
                tar.addfile(info)
    path.write_bytes(gzip.compress(buf.getvalue()))
    return path


@pytest.fixture
def key() -> keys.Ed25519PrivateKey:
    return keys.generate_key()


@pytest.fixture
def model_bytes() -> bytes:
    return bytes(range(256)) * 64


@pytest.fixture
def good_bundle(tmp_path: Path, key, model_bytes) -> Path:
    from sdk.bundle import write_bundle

    src = tmp_path / "src"
    src.mkdir()
    (src / "model.onnx").write_bytes(model_bytes)
    (src / "labels.txt").write_bytes(b"cat\ndog\n")
    return write_bundle(
        make_manifest(),
        {"model.onnx": src / "model.onnx", "labels.txt": src / "labels.txt"},
        key,
        tmp_path / "out",
    )


@pytest.fixture
def raw_bundle(tmp_path: Path, key) -> Callable[..., Path]:
    """Build a bundle member by member: ``raw_bundle(files, extra_members=..., order=...)``."""

    def build(
        files: dict[str, bytes],
        *,
        members: list[RawMember] | None = None,
        name: str = "evil.efb",
        sign_with: keys.Ed25519PrivateKey | None = None,
        pin: dict[str, bytes] | None = None,
    ) -> Path:
        raw, sig = signed_manifest_bytes(sign_with or key, files if pin is None else pin)
        head = [RawMember("manifest.json", raw), RawMember("manifest.sig", sig)]
        body = members if members is not None else [RawMember(n, d) for n, d in files.items()]
        return write_raw_bundle(tmp_path / name, head + body)

    return build
