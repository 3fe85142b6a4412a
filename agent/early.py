"""Speculative model loading: start building ONNX Runtime sessions before the agent's imports.

``edge-agent serve`` spends its first ~200 ms importing numpy, pydantic (and building the manifest
schema) and cryptography before :mod:`agent.preload` can even read a manifest, and then ~300 ms
building sessions, which run without the GIL. This module, standard library only until it imports
onnxruntime itself, starts those session builds first, from two things on disk:

* ``<data-dir>/preload.json``: the exact session parameters (model path, providers, threads,
  options) of each model the last start loaded, written by :class:`agent.preload.Preloader`;
* each active version's stamp (:mod:`agent.stampfacts`): the model is built early only when the
  manifest and signature are the ones its last full verification saw and every pinned file still
  has the size, mtime, ctime and inode recorded then. A file written since (ctime) is never loaded
  early; it goes the normal way (full verification, then load).

Nothing here decides what is served. An early session is only a candidate: the preloader adopts it
after :meth:`agent.store.ModelStore.verify_active` accepted that version by its stamp (signer
trusted, manifest valid) and only if the parameters the verified manifest asks for equal the ones
it was built with; everything else is closed unused. The hint file can therefore only make start-up
slower or faster, never change what runs. The files are re-checked against the stamp after each
build, so the bytes the session read are the stamped ones.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.stampfacts import files_match, read_stamp

if TYPE_CHECKING:
    import onnxruntime as ort

    from agent.session_cache import CachedModel, SessionCache

log = logging.getLogger(__name__)

HINTS_NAME = "preload.json"
_HINTS_FORMAT = 1


@dataclass(frozen=True)
class SessionParams:
    """Everything an ONNX Runtime session of a model is built from (one ``InferenceSession`` call)."""

    model_path: str
    providers: tuple[str, ...]
    intra_op_threads: int
    inter_op_threads: int
    #: a member name of ``ort.GraphOptimizationLevel``.
    optimization_level: str
    config_entries: tuple[tuple[str, str], ...]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Any) -> SessionParams:
        """Raises ValueError (or KeyError/TypeError) on anything but what :meth:`to_json` wrote."""
        if not isinstance(doc, dict):
            raise ValueError("not an object")
        params = cls(
            model_path=str(doc["model_path"]),
            providers=tuple(str(p) for p in doc["providers"]),
            intra_op_threads=int(doc["intra_op_threads"]),
            inter_op_threads=int(doc["inter_op_threads"]),
            optimization_level=str(doc["optimization_level"]),
            config_entries=tuple((str(k), str(v)) for k, v in doc["config_entries"]),
        )
        if not params.providers:
            raise ValueError("no providers")
        return params


class SessionBuildError(Exception):
    """onnxruntime could not build the session with any of the providers."""


def create_session(
    params: SessionParams,
    *,
    source: Path | None = None,
    save_to: Path | None = None,
    extra_config: Mapping[str, str] | None = None,
) -> ort.InferenceSession:
    """The one place a serving session is built, early or not, so that equal parameters mean an
    equal session. A provider can be built in and still fail at start (no GPU, no driver): it is
    dropped and the next one tried, the same way early or not.

    ``source``: build from this file instead of ``params.model_path`` (a session cache entry of
    that model, :mod:`agent.session_cache`); ``save_to``: also save the optimised model there, with
    ``extra_config`` saying how."""
    import onnxruntime as ort

    providers = list(params.providers)
    while True:
        options = ort.SessionOptions()
        options.intra_op_num_threads = params.intra_op_threads
        options.inter_op_num_threads = params.inter_op_threads
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, params.optimization_level)
        for key, value in [*params.config_entries, *(extra_config or {}).items()]:
            options.add_session_config_entry(key, value)
        if save_to is not None:
            options.optimized_model_filepath = str(save_to)
            # onnxruntime warns that the saved model is hardware specific: that is the point.
            options.log_severity_level = 3
        try:
            return ort.InferenceSession(
                str(source or params.model_path), sess_options=options, providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            if len(providers) <= 1:
                raise SessionBuildError(str(exc)) from None
            log.warning(
                "execution provider %s failed to start (%s); falling back to %s",
                providers[0],
                str(exc).splitlines()[0],
                providers[1],
            )
            providers = providers[1:]


def read_hints(data_dir: Path) -> list[SessionParams]:
    try:
        doc = json.loads((data_dir / HINTS_NAME).read_bytes())
        if not isinstance(doc, dict) or doc.get("format") != _HINTS_FORMAT:
            return []
        return [SessionParams.from_json(s) for s in doc["sessions"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def hints_doc(params: Collection[SessionParams]) -> bytes:
    sessions = sorted((p.to_json() for p in params), key=lambda d: d["model_path"])
    return json.dumps({"format": _HINTS_FORMAT, "sessions": sessions}, sort_keys=True).encode("utf-8")


def stamped_model_sha256(model_path: Path) -> str | None:
    """The light stamp check of the model's folder: manifest and signature as stamped, every pinned
    file unchanged, and ``model_path`` its ONNX model. The model's sha256 as the signed manifest
    pins it when all that holds, else None. (Signer trust and the manifest schema are checked
    later, by the store.)"""
    directory = model_path.parent
    stamped = read_stamp(directory)
    if stamped is None:
        return None
    try:
        manifest = json.loads(stamped.manifest_bytes)
        sizes = {str(n): int(e["size"]) for n, e in manifest["files"].items()}
        model_file = manifest["model_file"]
        runtime = manifest["runtime"]
        sha256 = str(manifest["files"][model_file]["sha256"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if (
        runtime == "onnxruntime"
        and model_path.name == model_file
        and files_match(directory, stamped.stamp, sizes)
    ):
        return sha256
    return None


def _active_dirs(data_dir: Path) -> set[Path]:
    """The active version folders, as ``ModelStore.active_versions`` finds them."""
    out: set[Path] = set()
    models = data_dir / "models"
    try:
        entries = sorted(models.iterdir())
    except OSError:
        return out
    for d in entries:
        try:
            version = json.loads((d / "active.json").read_bytes())["version"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(version, str) and version and "/" not in version and version not in (".", ".."):
            out.add(d / "versions" / version)
    return out


class EarlyLoads:
    """Sessions being built in a background thread; :meth:`take` hands one over, :meth:`close` drops the rest."""

    def __init__(self, jobs: list[SessionParams], cache: SessionCache | None = None) -> None:
        self._jobs = jobs
        self._cache = cache
        #: set once the job's build ended (built or failed).
        self._done = {p: threading.Event() for p in jobs}
        self._built: dict[SessionParams, tuple[ort.InferenceSession, CachedModel | None]] = {}
        self._allowed: set[Path] | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="model-early-load", daemon=True)

    @property
    def jobs(self) -> list[SessionParams]:
        return list(self._jobs)

    def start(self) -> EarlyLoads:
        self._thread.start()
        return self

    def allow(self, directories: Collection[Path]) -> None:
        """Only sessions of these version folders (those the store accepted by their stamp after
        checking signer and manifest) may be taken; call before :meth:`take`."""
        with self._lock:
            self._allowed = {Path(d) for d in directories}

    def take(self, params: SessionParams) -> tuple[ort.InferenceSession, CachedModel | None] | None:
        """The session built with exactly ``params`` (and the session cache entry it was built
        from, if any), once built, if its folder was allowed; else None."""
        done = self._done.get(params)
        if done is None:
            return None
        done.wait()
        with self._lock:
            if self._allowed is None or Path(params.model_path).parent not in self._allowed:
                return None
            return self._built.pop(params, None)

    def close(self) -> None:
        """Drop the sessions nobody took (their memory goes with them)."""
        self._thread.join()
        with self._lock:
            if self._built:
                log.debug("dropping %d early-loaded session(s) not adopted", len(self._built))
            self._built.clear()

    def _run(self) -> None:
        for params in self._jobs:
            try:
                self._build(params)
            finally:
                self._done[params].set()

    def _build(self, params: SessionParams) -> None:
        model_path = Path(params.model_path)
        sha256 = stamped_model_sha256(model_path)
        if sha256 is None:
            return
        cache = self._cache
        cached = cache.find(params, sha256) if cache is not None else None
        try:
            session = create_session(params, source=cached.path if cached else None)
        except SessionBuildError as exc:
            log.debug("early load of %s failed (it loads the normal way): %s", params.model_path, exc)
            return
        # A write during the build would leave the session with bytes nobody verified.
        if stamped_model_sha256(model_path) != sha256:
            return
        if cache is not None and cached is not None and cache.find(params, sha256) != cached:
            return
        with self._lock:
            self._built[params] = (session, cached)


def start_early(data_dir: Path, cache: SessionCache | None = None) -> EarlyLoads | None:
    """Start building the sessions of the active versions that are unchanged since their last full
    verification and were loaded by the last start, from ``cache``'s entries where it has them;
    None when there are none (nothing imported)."""
    active = _active_dirs(Path(data_dir))
    jobs = [
        p
        for p in read_hints(Path(data_dir))
        if Path(p.model_path).parent in active and stamped_model_sha256(Path(p.model_path)) is not None
    ]
    if not jobs:
        return None
    # Imported here, in the caller's thread (an import holds the GIL anyway): see agent.preload.
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        log.debug("no early load: %s", exc)
        return None

    return EarlyLoads(jobs, cache).start()
