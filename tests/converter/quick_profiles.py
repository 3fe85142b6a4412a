"""A quick CPU int8 profile for tests that convert many models: static int8 QDQ without the search.

It is x86-server with the ``int8`` search pass replaced by the single ``int8-static`` pass: the
loading, opset, cleanup, quantization and validation code is the same, but no candidates are
raced, so one conversion of a small model takes seconds. Tests of the shipped profiles' full
search live beside it and are marked ``slow`` where they repeat.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from sdk.profiles import available_profiles


def cpu_int8_static(folder: Path) -> Path:
    data = yaml.safe_load(available_profiles()["x86-server"].read_text(encoding="utf-8"))
    data["name"] = "cpu-int8-static"
    data["description"] = "x86-server with one static int8 QDQ pass instead of the measured search (tests)"
    data["quantization"]["scheme"] = "int8-static"
    data["passes"] = ["export", "cleanup", "int8-static", "validate"]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cpu-int8-static.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path
