"""The session cache: ONNX Runtime's optimised copy of each served model, weights prepacked, per device.

Building a session parses the model file, copies every weight out of it, optimises the graph and
then *prepacks* the weights of matrix products into the layout this CPU's kernels read. For the
bench's 96 MB model that is 0.18 s of a 2-core x86 host (0.12 s of it parsing and copying), and
several times that on a Raspberry Pi; it is most of the agent's time to ready. ONNX Runtime can
save the optimised graph with its weights, prepacked ones included, as external data; a session
built from that file maps the weights instead of copying and packing them (0.06-0.08 s for the same
model, with identical outputs; the weights then live in the page cache, shared and reclaimable,
instead of the heap).

The saved file is tied to this CPU and this onnxruntime (the packed layout depends on both), so it
is made here, by the agent, never shipped: after a version has been verified and is serving, at
the lowest CPU priority (:meth:`SessionCache.build`). Its key covers everything the file depends
on: the model's sha256 (signed in the manifest), the onnxruntime version, this CPU's identity and
every session parameter. A build that fails, or whose session does not give the same outputs as the
original on the manifest's smoke inputs, is recorded and not tried again for that key.

Trust is the verification stamp's (:mod:`agent.stamp`): the entry records each file's sha256 and
its size, mtime, ctime and inode when written. A session is built from an entry only while those
facts match (a write, truncation or rename over changes ctime), and the agent re-hashes the entries
it serves from in the background after start-up; a damaged entry is deleted and its model rebuilt
from the verified original. Entries are written in a temporary folder and renamed into place, so a
crash leaves a whole entry or none.

Bounded: only CPU-only sessions of models of at least ``min_bytes`` are cached; a build counts on
four times the model's size (an entry holds the weights as read and as packed: twice an fp32
model, four times an fp16 one whose weights the CPU serves as fp32), needs that much memory
available, and leaves at least ``_DISK_MARGIN`` of the disk free after it; entries of versions no
longer served are deleted (:meth:`SessionCache.prune`).

Standard library only until a build: :mod:`agent.early` looks entries up before numpy is imported.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.stampfacts import file_facts
from sdk.fsio import fsync_dir, write_atomic
from sdk.host import available_bytes

if TYPE_CHECKING:
    import numpy as np

    from agent.early import SessionParams

log = logging.getLogger(__name__)

CACHE_DIR = Path("cache") / "onnxruntime"
ENTRY_NAME = "entry.json"
MODEL_NAME = "model.onnx"
DATA_NAME = "model.data"
_FORMAT = 1
_CPU = "CPUExecutionProvider"
#: models smaller than this build in a few milliseconds: caching them saves nothing worth a file.
MIN_BYTES = 4 * 1024 * 1024
#: disk and memory a build takes, times the model file: the saved file holds the weights twice (as
#: read and as packed), and an fp16 model served on a CPU holds them as fp32 too (measured: 4x)
_BUILD_FACTOR = 4
#: a build leaves at least this much of the disk free (and 5 % of it), for updates and telemetry.
_DISK_MARGIN = 256 * 1024 * 1024
#: initializers under this many bytes stay inside the saved model: ONNX shape inference must read
#: small constants (an Unsqueeze's axes, a Reshape's shape) inline, and with all of them external a
#: real BERT (all-MiniLM-L6-v2) could not be loaded back. 1024 is ONNX Runtime's own default.
_INLINE_BELOW = "1024"
#: a build holds a second session of the model while it saves and checks it.
_MEMORY_MARGIN = 64 * 1024 * 1024


@functools.lru_cache(maxsize=1)
def cpu_identity() -> str:
    """What the prepacked layout depends on: the machine, and the CPU's model and features."""
    wanted = (
        "vendor_id",
        "model name",
        "flags",
        "cpu family",
        "model",
        "features",
        "cpu implementer",
        "cpu architecture",
        "cpu variant",
        "cpu part",
        "isa",
        "uarch",
    )
    lines: list[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block: the cores of one device are alike
                key = line.partition(":")[0].strip().lower()
                if key in wanted:
                    lines.append(line.strip())
    except OSError:
        pass
    return hashlib.sha256("\n".join([platform.machine(), *lines]).encode()).hexdigest()


def cache_key(params: SessionParams, model_sha256: str) -> str:
    import onnxruntime as ort

    doc = {
        "format": _FORMAT,
        "onnxruntime": ort.__version__,
        "cpu": cpu_identity(),
        "model_sha256": model_sha256,
        "providers": list(params.providers),
        "intra_op_threads": params.intra_op_threads,
        "inter_op_threads": params.inter_op_threads,
        "optimization_level": params.optimization_level,
        "config_entries": sorted(params.config_entries),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class CachedModel:
    """An entry a session may be built from: its key and the saved model's path."""

    key: str
    path: Path


class SessionCache:
    """The cache under ``<data-dir>/cache/onnxruntime``: one folder per key."""

    def __init__(self, data_dir: Path, *, min_bytes: int = MIN_BYTES) -> None:
        self.root = Path(data_dir) / CACHE_DIR
        self.min_bytes = min_bytes

    # ------------------------------------------------------------------------------- lookups

    def cacheable(self, params: SessionParams) -> bool:
        """CPU-only sessions of models worth caching (a GPU provider keeps its own engine caches)."""
        if params.providers != (_CPU,):
            return False
        facts = file_facts(Path(params.model_path))
        return facts is not None and facts[0] >= self.min_bytes

    def find(self, params: SessionParams, model_sha256: str) -> CachedModel | None:
        """The entry for this session and model, if it is whole and unchanged since it was written
        (the light check: each file's size, mtime, ctime and inode)."""
        if not self.cacheable(params):
            return None
        key = cache_key(params, model_sha256)
        entry = self._read_entry(key)
        if entry is None:
            return None
        for name in (MODEL_NAME, DATA_NAME):
            facts = file_facts(self.root / key / name)
            if facts is None or facts != entry["files"][name]["facts"]:
                log.info("session cache entry %s changed on disk; not used", key)
                return None
        return CachedModel(key, self.root / key / MODEL_NAME)

    def verify(self, cached: CachedModel) -> bool:
        """The full check: every file's bytes hash to what was recorded when it was written."""
        entry = self._read_entry(cached.key)
        if entry is None:
            return False
        try:
            return all(
                _sha256(self.root / cached.key / n) == entry["files"][n]["sha256"]
                for n in (MODEL_NAME, DATA_NAME)
            )
        except OSError:
            return False

    def discard(self, key: str) -> None:
        shutil.rmtree(self.root / key, ignore_errors=True)

    # -------------------------------------------------------------------------------- writes

    def build(
        self,
        params: SessionParams,
        model_sha256: str,
        probe: Mapping[str, np.ndarray] | None,
        unchanged: Callable[[], bool],
    ) -> CachedModel | None:
        """Save the optimised, prepacked model of ``params`` (a verified model whose files are still
        the verified ones while ``unchanged()``), check that a session built from it answers
        ``probe`` as the original does, and add it; None when it is not cached (logged why)."""
        if not self.cacheable(params):
            return None
        key = cache_key(params, model_sha256)
        if (self.root / key / ENTRY_NAME).exists() or self.failed(key):
            return self.find(params, model_sha256)
        self.root.mkdir(parents=True, exist_ok=True)
        model_bytes = Path(params.model_path).stat().st_size
        why = self._no_room(model_bytes)
        if why is not None:
            log.info("not caching the session of %s: %s", params.model_path, why)
            return None
        tmp = self.root / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        started = time.perf_counter()
        try:
            failure = self._save_and_check(params, tmp, probe)
            if failure is None and not unchanged():
                log.info(
                    "not caching the session of %s: the model changed on disk while it was saved",
                    params.model_path,
                )
                return None  # not the model's fault: try again next time
            if failure is not None and self._disk_filled(model_bytes):
                # Not the model's fault either (something else filled the disk meanwhile, or ORT
                # wrote more than estimated): tried again at the next start, not marked failed.
                log.warning(
                    "not caching the session of %s now: the disk filled up while it was saved (%s)",
                    params.model_path,
                    failure,
                )
                return None
            if failure is not None:
                self._record_failure(key, params, failure)
                return None
            files = {
                n: {"sha256": _sha256(tmp / n), "facts": file_facts(tmp / n)} for n in (MODEL_NAME, DATA_NAME)
            }
            doc = {"format": _FORMAT, "key": key, "model_sha256": model_sha256, "files": files}
            for n in (MODEL_NAME, DATA_NAME):
                with (tmp / n).open("rb") as f:
                    os.fsync(f.fileno())
            # Last inside the folder, and the folder renamed into place: an entry is whole or absent.
            write_atomic(tmp / ENTRY_NAME, json.dumps(doc, sort_keys=True).encode())
            os.replace(tmp, self.root / key)
            fsync_dir(self.root)
        except OSError as exc:
            log.warning("cannot write the session cache entry of %s: %s", params.model_path, exc)
            return None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info(
            "cached the optimised session of %s (%.1f MB, %.2f s)",
            params.model_path,
            sum(e["facts"][0] for e in files.values()) / 1e6,
            time.perf_counter() - started,
        )
        return self.find(params, model_sha256)

    def prune(self, keep: Collection[str]) -> None:
        """Delete every entry, failure record and left-over temporary folder not in ``keep``."""
        try:
            children = list(self.root.iterdir())
        except OSError:
            return
        for child in children:
            key = child.name.removesuffix(".failed")
            if key in keep and not child.name.startswith(".tmp-"):
                continue
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------- helpers

    def _read_entry(self, key: str) -> dict[str, Any] | None:
        try:
            entry = json.loads((self.root / key / ENTRY_NAME).read_bytes())
            if entry["format"] != _FORMAT or entry["key"] != key:
                return None
            for name in (MODEL_NAME, DATA_NAME):
                if not isinstance(entry["files"][name]["sha256"], str):
                    return None
            return dict(entry)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def failed(self, key: str) -> bool:
        """Whether building this entry failed before (it is not tried again for the key)."""
        return (self.root / f"{key}.failed").is_file()

    def _record_failure(self, key: str, params: SessionParams, reason: str) -> None:
        log.warning("the session of %s cannot be cached (not tried again): %s", params.model_path, reason)
        with contextlib.suppress(OSError):
            (self.root / f"{key}.failed").write_text(json.dumps({"reason": reason}))

    def _no_room(self, model_bytes: int) -> str | None:
        need = _BUILD_FACTOR * model_bytes
        try:
            usage = shutil.disk_usage(self.root)
        except OSError as exc:
            return f"cannot read the free disk space: {exc}"
        margin = max(_DISK_MARGIN, usage.total // 20)
        if usage.free - need < margin:
            return (
                f"it needs {need / 1e6:.0f} MB and would leave {max(usage.free - need, 0) / 1e6:.0f} MB free"
                f" (the agent keeps {margin / 1e6:.0f} MB)"
            )
        available = available_bytes()
        if available is not None and available < need + _MEMORY_MARGIN:
            return f"building it needs ~{(need + _MEMORY_MARGIN) / 1e6:.0f} MB of memory, {available / 1e6:.0f} MB is available"
        return None

    def _disk_filled(self, model_bytes: int) -> bool:
        """Whether the disk, with what a failed save left in it, has less room than a build needs."""
        try:
            return shutil.disk_usage(self.root).free < _BUILD_FACTOR * model_bytes
        except OSError:
            return True

    def _save_and_check(
        self, params: SessionParams, tmp: Path, probe: Mapping[str, np.ndarray] | None
    ) -> str | None:
        """Save the model into ``tmp``; the reason it cannot be cached, or None."""
        import numpy as np

        from agent.early import SessionBuildError, create_session

        saving = {
            "session.optimized_model_external_initializers_file_name": DATA_NAME,
            "session.optimized_model_external_initializers_min_size_in_bytes": _INLINE_BELOW,
            "session.save_external_prepacked_constant_initializers": "1",
        }
        try:
            original = create_session(params, save_to=tmp / MODEL_NAME, extra_config=saving)
            cached = create_session(params, source=tmp / MODEL_NAME)
        except SessionBuildError as exc:
            return f"onnxruntime cannot save or load it: {str(exc).splitlines()[0]}"
        if not (tmp / DATA_NAME).is_file():
            return "onnxruntime saved no weights file"
        signature = (
            [(i.name, i.type, i.shape) for i in original.get_inputs()],
            [(o.name, o.type) for o in original.get_outputs()],
        )
        if signature != (
            [(i.name, i.type, i.shape) for i in cached.get_inputs()],
            [(o.name, o.type) for o in cached.get_outputs()],
        ):
            return "the saved model's inputs or outputs differ from the original's"
        if probe:
            try:
                want = original.run(None, dict(probe))
                got = cached.run(None, dict(probe))
            except Exception as exc:  # onnxruntime raises its own untyped errors
                return f"running the smoke inputs failed: {str(exc).splitlines()[0]}"
            for a, b in zip(want, got, strict=True):
                a, b = np.asarray(a), np.asarray(b)
                if a.shape != b.shape or not (
                    np.array_equal(a, b)
                    or (a.dtype.kind in "fc" and np.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))
                ):
                    return "a session built from it does not give the original's outputs"
        return None
