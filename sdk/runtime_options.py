"""How a bundle's model is run: the one definition of ONNX Runtime session settings, as data.

The converter measures a model and the agent serves it; both must run it the same way, or the
latency in the manifest is not the latency a device gets. So both turn a manifest's
``runtime_options`` into session settings here: the quiet-thread defaults, the optimisation levels
by name and the thread cap. Each package maps :class:`SessionSettings` onto its own onnxruntime
import (``converter.runtime``, ``agent.runtimes.onnx``); sdk does not import onnxruntime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sdk.manifest import RuntimeOptions

#: manifest level name -> the name of onnxruntime's ``GraphOptimizationLevel`` member.
OPTIMIZATION_LEVELS: dict[str, str] = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
#: ONNX Runtime's worker threads busy-wait for work by default, which keeps an idle server at nearly
#: a full core per thread; on a shared edge device that CPU belongs to the application. The
#: converter measures with the same setting, so the manifest's latency is the served latency.
QUIET_THREADS: dict[str, str] = {
    "session.intra_op.allow_spinning": "0",
    "session.inter_op.allow_spinning": "0",
}
#: one graph runs at a time per session; parallelism is inside ops.
INTER_OP_THREADS = 1


def thread_cap(wanted: int, cores: int | None = None) -> int:
    """The wanted thread count, capped at this host's cores (more threads than cores only adds noise)."""
    return max(1, min(wanted, cores or os.cpu_count() or 1))


@dataclass(frozen=True)
class SessionSettings:
    intra_op_threads: int
    inter_op_threads: int
    #: a member name of onnxruntime's ``GraphOptimizationLevel``.
    optimization_level: str
    #: session config entries, the quiet-thread defaults overridden by the manifest's own.
    config_entries: dict[str, str] = field(default_factory=dict)


def session_settings(options: RuntimeOptions | None, threads: int) -> SessionSettings:
    """Settings for ``threads`` intra-op threads (already capped by the caller) and these options."""
    options = options or RuntimeOptions()
    return SessionSettings(
        intra_op_threads=max(1, threads),
        inter_op_threads=INTER_OP_THREADS,
        optimization_level=OPTIMIZATION_LEVELS[options.graph_optimization_level],
        # the manifest's entries win: the converter measured with them.
        config_entries={**QUIET_THREADS, **options.session_config},
    )
