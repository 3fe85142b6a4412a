"""Bundles: round trip, and every way a bundle can be wrong is refused with its own error."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from sdk import keys
from sdk.bundle import extract_bundle, verify_bundle, verify_directory, write_bundle
from sdk.errors import (
    BundleError,
    BundleLayoutError,
    BundleTooLargeError,
    IntegrityError,
    ManifestError,
    SignatureError,
    UnsafeMemberError,
    UntrustedSignerError,
)
from tests.sdk.conftest import RawMember, make_manifest, write_raw_bundle


def test_round_trip_names_file_and_verifies(good_bundle: Path, key, model_bytes: bytes, tmp_path: Path):
    assert good_bundle.name == "net-1.0.0-x86-server.efb"
    result = verify_bundle(good_bundle, [key.public_key()])
    assert result.trusted is True
    assert result.signer == keys.key_id(key)
    assert result.manifest.files["model.onnx"].sha256 == hashlib.sha256(model_bytes).hexdigest()

    out = extract_bundle(good_bundle, tmp_path / "unpacked", [key.public_key()])
    assert (out.directory / "model.onnx").read_bytes() == model_bytes
    assert sorted(p.name for p in out.directory.iterdir()) == [
        "labels.txt",
        "manifest.json",
        "manifest.sig",
        "model.onnx",
    ]
    again = verify_directory(out.directory, [key.public_key()])
    assert again.manifest_bytes == result.manifest_bytes
    smoke = again.manifest.smoke
    assert smoke is not None and smoke.inputs["x"].to_numpy().shape == (1, 4)


def test_members_are_manifest_signature_then_files(good_bundle: Path):
    with tarfile.open(good_bundle, "r:gz") as tar:
        assert tar.getnames() == ["manifest.json", "manifest.sig", "labels.txt", "model.onnx"]


def test_writing_is_reproducible_for_the_same_manifest(tmp_path: Path, key, model_bytes: bytes):
    (tmp_path / "m").write_bytes(model_bytes)
    manifest = make_manifest(created="2026-01-01T00:00:00+00:00")
    a = write_bundle(manifest, {"model.onnx": tmp_path / "m"}, key, tmp_path / "a")
    b = write_bundle(manifest, {"model.onnx": tmp_path / "m"}, key, tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()


def test_without_trusted_keys_signature_is_still_checked(good_bundle: Path):
    result = verify_bundle(good_bundle)
    assert result.trusted is None


def test_untrusted_key(good_bundle: Path):
    other = keys.generate_key()
    with pytest.raises(UntrustedSignerError, match="not among the trusted keys"):
        verify_bundle(good_bundle, [other.public_key()])
    with pytest.raises(UntrustedSignerError):
        verify_bundle(good_bundle, [])


def test_bad_signature(raw_bundle, model_bytes, key):
    files = {"model.onnx": model_bytes}
    path = raw_bundle(files)
    # Re-pack with the manifest changed after signing.
    with tarfile.open(path, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    raw = members[0][1].replace(b'"precision": "int8"', b'"precision": "fp32"')
    assert raw != members[0][1]
    tampered = write_raw_bundle(
        path.with_name("tampered.efb"),
        [RawMember("manifest.json", raw), RawMember("manifest.sig", members[1][1])]
        + [RawMember(m.name, d) for m, d in members[2:]],
    )
    with pytest.raises(SignatureError, match="does not verify"):
        verify_bundle(tampered, [key.public_key()])


def test_signature_by_another_key_than_the_manifest_names(tmp_path, model_bytes, key):
    from tests.sdk.conftest import signed_manifest_bytes

    raw, _ = signed_manifest_bytes(key, {"model.onnx": model_bytes})
    forged = keys.sign(keys.generate_key(), raw)
    path = write_raw_bundle(
        tmp_path / "f.efb",
        [
            RawMember("manifest.json", raw),
            RawMember("manifest.sig", forged),
            RawMember("model.onnx", model_bytes),
        ],
    )
    with pytest.raises(SignatureError):
        verify_bundle(path)


def test_changed_byte_in_a_file(raw_bundle, model_bytes, key):
    changed = bytearray(model_bytes)
    changed[100] ^= 0x01
    path = raw_bundle({"model.onnx": model_bytes}, members=[RawMember("model.onnx", bytes(changed))])
    with pytest.raises(IntegrityError, match="model.onnx does not match"):
        verify_bundle(path, [key.public_key()])


def test_missing_member(raw_bundle, model_bytes):
    path = raw_bundle(
        {"model.onnx": model_bytes, "labels.txt": b"a"}, members=[RawMember("model.onnx", model_bytes)]
    )
    with pytest.raises(BundleLayoutError, match="lacks labels.txt"):
        verify_bundle(path)


def test_missing_signature(tmp_path, key, model_bytes):
    from tests.sdk.conftest import signed_manifest_bytes

    raw, _ = signed_manifest_bytes(key, {"model.onnx": model_bytes})
    path = write_raw_bundle(
        tmp_path / "nosig.efb", [RawMember("manifest.json", raw), RawMember("model.onnx", model_bytes)]
    )
    with pytest.raises(BundleLayoutError, match="expected manifest.sig"):
        verify_bundle(path)


def test_extra_member(raw_bundle, model_bytes):
    path = raw_bundle(
        {"model.onnx": model_bytes},
        members=[RawMember("model.onnx", model_bytes), RawMember("payload.sh", b"rm -rf /")],
    )
    with pytest.raises(BundleLayoutError, match="'payload.sh' is not in the manifest"):
        verify_bundle(path)


def test_duplicate_member(raw_bundle, model_bytes):
    path = raw_bundle(
        {"model.onnx": model_bytes},
        members=[RawMember("model.onnx", model_bytes), RawMember("model.onnx", model_bytes)],
    )
    with pytest.raises(BundleLayoutError, match="appears twice"):
        verify_bundle(path)


@pytest.mark.parametrize(
    "member, match",
    [
        (RawMember("/etc/passwd", b"x"), "absolute path"),
        (RawMember("../escape.txt", b"x"), r"climbs out"),
        (RawMember("sub/../../escape.txt", b"x"), r"climbs out"),
        (RawMember("model.onnx", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "is a link"),
        (RawMember("model.onnx", type=tarfile.LNKTYPE, linkname="manifest.json"), "is a link"),
        (RawMember("model.onnx", type=tarfile.CHRTYPE), "device"),
        (RawMember("model.onnx", type=tarfile.BLKTYPE), "device"),
        (RawMember("model.onnx", type=tarfile.FIFOTYPE), "device or FIFO"),
        (RawMember("model.onnx", type=tarfile.DIRTYPE), "not a regular file"),
        (RawMember("sub/model.onnx", b"x"), "not a plain file name"),
    ],
)
def test_unsafe_members_are_refused(raw_bundle, model_bytes, tmp_path, member, match):
    path = raw_bundle({"model.onnx": model_bytes}, members=[member])
    with pytest.raises(UnsafeMemberError, match=match):
        verify_bundle(path)
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeMemberError):
        extract_bundle(path, dest)
    assert not dest.exists()
    assert not (tmp_path / "escape.txt").exists()


def test_unsafe_manifest_member(tmp_path):
    path = write_raw_bundle(
        tmp_path / "x.efb", [RawMember("manifest.json", type=tarfile.SYMTYPE, linkname="/etc/passwd")]
    )
    with pytest.raises(UnsafeMemberError):
        verify_bundle(path)


def test_member_larger_than_manifest_says(raw_bundle, model_bytes):
    path = raw_bundle({"model.onnx": model_bytes}, members=[RawMember("model.onnx", model_bytes + b"more")])
    with pytest.raises(BundleLayoutError, match="the manifest says"):
        verify_bundle(path)


def test_decompression_bomb_is_stopped_early(tmp_path, key):
    # The manifest is honest about a small file, but the archive carries a huge run of zeros after it
    # in a member the manifest never mentions: the cap must trip long before 200 MiB are inflated.
    from tests.sdk.conftest import signed_manifest_bytes

    raw, sig = signed_manifest_bytes(key, {"model.onnx": b"m"})
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in (("manifest.json", raw), ("manifest.sig", sig), ("model.onnx", b"m")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        # Junk after the archive's end: a gzip stream that inflates to 200 MiB.
        zeros = b"\0" * (1 << 20)
        for _ in range(200):
            gz.write(zeros)
    path = tmp_path / "bomb.efb"
    path.write_bytes(buf.getvalue())
    assert path.stat().st_size < 1_000_000
    with pytest.raises(BundleTooLargeError, match="more than its manifest allows"):
        verify_bundle(path)


def test_manifest_claiming_more_than_the_cap(raw_bundle, model_bytes):
    path = raw_bundle({"model.onnx": model_bytes})
    with pytest.raises(BundleTooLargeError):
        verify_bundle(path, max_unpacked=1000)


def test_oversized_manifest_member(tmp_path):
    path = write_raw_bundle(
        tmp_path / "big.efb", [RawMember("manifest.json", b"{" + b" " * (9 * 1024 * 1024))]
    )
    with pytest.raises(BundleLayoutError, match="more than the"):
        verify_bundle(path)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "not a bundle"),
        (b"PK\x03\x04 a zip file", "not a bundle"),
        (b"\x7fELF", "not a bundle"),
        # mtime=0: the bytes (and so the test's id) must not depend on the second it was collected
        # in, or pytest-xdist's workers disagree on what the test is called
        (
            gzip.compress(b"just text, not a tar archive" * 40, mtime=0),
            "not a bundle|truncated or corrupt|empty",
        ),
    ],
    ids=["empty", "zip", "elf", "gzip-not-tar"],
)
def test_not_a_bundle(tmp_path, content, match):
    path = tmp_path / "x.efb"
    path.write_bytes(content)
    with pytest.raises(BundleError, match=match):
        verify_bundle(path)


def test_a_plain_tar_without_manifest(tmp_path):
    path = write_raw_bundle(tmp_path / "x.efb", [RawMember("model.onnx", b"123")])
    with pytest.raises(BundleLayoutError, match="expected manifest.json"):
        verify_bundle(path)


def test_invalid_manifest_json(tmp_path, key):
    raw = b'{"schema": 1, "name": "../../etc"}'
    path = write_raw_bundle(
        tmp_path / "x.efb", [RawMember("manifest.json", raw), RawMember("manifest.sig", keys.sign(key, raw))]
    )
    with pytest.raises(ManifestError, match="manifest.json is invalid"):
        verify_bundle(path)


def test_truncated_bundle_is_refused(good_bundle: Path, tmp_path: Path):
    data = good_bundle.read_bytes()
    for cut in (10, len(data) // 3, len(data) // 2, len(data) - 9, len(data) - 1):
        p = tmp_path / f"cut{cut}.efb"
        p.write_bytes(data[:cut])
        with pytest.raises(BundleError):
            verify_bundle(p)


def test_extract_refuses_existing_destination_and_cleans_up(
    good_bundle, raw_bundle, model_bytes, tmp_path, key
):
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(BundleError, match="already exists"):
        extract_bundle(good_bundle, dest)
    bad = raw_bundle({"model.onnx": model_bytes}, members=[RawMember("model.onnx", model_bytes[:-1] + b"!")])
    with pytest.raises(IntegrityError):
        extract_bundle(bad, tmp_path / "other")
    assert not (tmp_path / "other").exists()


def test_extract_never_writes_through_a_planted_link(good_bundle, tmp_path, key):
    # Even if the destination folder is raced into existence with a symlink inside, O_EXCL|O_NOFOLLOW
    # refuses to follow it.
    victim = tmp_path / "victim"
    victim.write_text("keep")
    dest = tmp_path / "dest"
    orig_mkdir = Path.mkdir

    def racing_mkdir(self, *a, **kw):
        orig_mkdir(self, *a, **kw)
        if self == dest:
            os.symlink(victim, dest / "model.onnx")

    import unittest.mock

    with (
        unittest.mock.patch.object(Path, "mkdir", racing_mkdir),
        pytest.raises(BundleError, match="cannot unpack model.onnx"),
    ):
        extract_bundle(good_bundle, dest)
    assert victim.read_text() == "keep"


def test_verify_directory_catches_damage_on_disk(good_bundle, tmp_path, key):
    out = extract_bundle(good_bundle, tmp_path / "u", [key.public_key()]).directory
    model = out / "model.onnx"
    data = bytearray(model.read_bytes())
    data[0] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        verify_directory(out)
    model.unlink()
    with pytest.raises(BundleLayoutError, match="lacks model.onnx"):
        verify_directory(out)


def test_write_refuses_unsafe_names_and_missing_model(tmp_path, key):
    (tmp_path / "m").write_bytes(b"x")
    with pytest.raises(UnsafeMemberError):
        write_bundle(make_manifest(), {"model.onnx": tmp_path / "m", "../x": tmp_path / "m"}, key, tmp_path)
    with pytest.raises(BundleError, match="model file"):
        write_bundle(make_manifest(), {"other.bin": tmp_path / "m"}, key, tmp_path)
    with pytest.raises(BundleError, match="reserved"):
        write_bundle(
            make_manifest(), {"model.onnx": tmp_path / "m", "manifest.json": tmp_path / "m"}, key, tmp_path
        )


def test_written_bundle_and_no_temp_files_left(good_bundle):
    assert [p.name for p in good_bundle.parent.iterdir()] == [good_bundle.name]
    assert stat.S_IMODE(good_bundle.stat().st_mode) & 0o022 == 0
