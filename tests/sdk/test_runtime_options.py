"""Session settings as data: the quiet-thread defaults, the manifest's overrides, the thread cap."""

from __future__ import annotations

from sdk.manifest import RuntimeOptions
from sdk.runtime_options import OPTIMIZATION_LEVELS, session_settings, thread_cap


def test_settings_are_the_quiet_defaults_overridden_by_the_manifest() -> None:
    s = session_settings(RuntimeOptions(session_config={"session.intra_op.allow_spinning": "1"}), 3)
    assert s.config_entries["session.intra_op.allow_spinning"] == "1"
    assert s.config_entries["session.inter_op.allow_spinning"] == "0"
    assert (s.intra_op_threads, s.inter_op_threads, s.optimization_level) == (3, 1, "ORT_ENABLE_ALL")
    assert thread_cap(64, cores=4) == 4 and thread_cap(2, cores=4) == 2 and thread_cap(0, cores=4) == 1


def test_every_manifest_optimisation_level_has_a_name() -> None:
    levels = RuntimeOptions.model_fields["graph_optimization_level"].annotation.__args__  # type: ignore[union-attr]
    assert set(levels) == set(OPTIMIZATION_LEVELS)


def test_sdk_does_not_import_onnxruntime() -> None:
    import subprocess
    import sys

    code = "import sys, sdk.runtime_options; print('onnxruntime' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )
