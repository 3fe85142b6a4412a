"""Hardware profiles: every shipped file loads; errors name the file and the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sdk.errors import ProfileError
from sdk.profiles import HardwareProfile, available_profiles, load_profile, load_profile_file, profile_dirs

REPO = Path(__file__).resolve().parents[2]
SHIPPED = sorted((REPO / "hardware-profiles").glob("*.yaml"))
DESIGN_PROFILES = {"jetson", "raspberry-pi", "coral", "qualcomm-npu", "x86-server"}


def test_the_five_design_profiles_ship():
    assert {p.stem for p in SHIPPED} >= DESIGN_PROFILES


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_profile_loads_by_name_and_path(path: Path):
    by_path = load_profile_file(path)
    assert isinstance(by_path, HardwareProfile)
    assert by_path.name == path.stem
    assert load_profile(path.stem) == by_path
    assert by_path.opset.min <= by_path.opset.max
    assert by_path.max_model_mb > 0 and by_path.memory_mb > 0 and by_path.threads >= 1


def test_design_table_is_respected():
    p = {name: load_profile(name) for name in DESIGN_PROFILES}
    assert p["jetson"].accelerator == "gpu" and p["jetson"].precision == "fp16"
    assert p["jetson"].execution_providers[:2] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert p["jetson"].execution_providers[-1] == "CPUExecutionProvider"
    assert p["coral"].runtime == "litert" and p["coral"].quantization.calibration_required
    assert p["qualcomm-npu"].quantization.activation_type == "uint8"
    assert p["qualcomm-npu"].quantization.weight_type == "int8"
    assert p["qualcomm-npu"].execution_providers[0] == "QNNExecutionProvider"
    assert p["raspberry-pi"].threads == 4 and p["raspberry-pi"].accelerator == "cpu"
    for name in ("raspberry-pi", "x86-server"):
        assert p[name].quantization.scheme == "int8-selective"


def _write(tmp_path: Path, data: dict, name: str = "custom.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_user_profile_by_path(tmp_path: Path):
    data = yaml.safe_load(SHIPPED[0].read_text())
    data["name"] = "my-board"
    data["threads"] = 2
    prof = load_profile(str(_write(tmp_path, data)))
    assert prof.name == "my-board" and prof.threads == 2


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda d: d.update(threads="many"), "threads"),
        (lambda d: d["quantization"].update(scheme="int3"), "quantization.scheme"),
        (lambda d: d.pop("runtime"), "runtime"),
        (lambda d: d.update(max_model_mb=-1), "max_model_mb"),
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d.update(opset={"min": 21, "max": 11}), "opset"),
        (lambda d: d.update(passes=[]), "passes"),
    ],
)
def test_broken_profile_names_file_and_field(tmp_path: Path, change, field: str):
    data = yaml.safe_load((REPO / "hardware-profiles" / "x86-server.yaml").read_text())
    change(data)
    path = _write(tmp_path, data, "broken.yaml")
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    message = str(info.value)
    assert str(path) in message
    assert field in message


def test_many_problems_are_one_line_naming_the_first_few_and_counting_the_rest(tmp_path: Path):
    data = yaml.safe_load((REPO / "hardware-profiles" / "x86-server.yaml").read_text())
    data.update(threads="many", max_model_mb=-1, memory_mb=0, colour="blue", size="xl")
    with pytest.raises(ProfileError) as info:
        load_profile(str(_write(tmp_path, data, "broken.yaml")))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'broken.yaml'}: invalid profile: threads: ")
    assert message.endswith("(and 2 more problems)")


def test_not_yaml_or_not_a_mapping(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ProfileError, match="not valid YAML"):
        load_profile(str(bad))
    bad.write_text("- a\n- b\n")
    with pytest.raises(ProfileError, match="mapping"):
        load_profile(str(bad))


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ProfileError) as info:
        load_profile("jetsno")
    for name in DESIGN_PROFILES:
        assert name in str(info.value)


def test_missing_profile_file():
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile("/nonexistent/board.yaml")


def test_profiles_dir_env_overrides(tmp_path: Path, monkeypatch):
    data = yaml.safe_load((REPO / "hardware-profiles" / "jetson.yaml").read_text())
    data["threads"] = 3
    _write(tmp_path, data, "jetson.yaml")
    monkeypatch.setenv("EDGEFLEET_PROFILES_DIR", str(tmp_path))
    assert profile_dirs()[0] == tmp_path
    assert load_profile("jetson").threads == 3
    assert "x86-server" in available_profiles()


def test_name_must_match_file_name(tmp_path: Path, monkeypatch):
    data = yaml.safe_load((REPO / "hardware-profiles" / "jetson.yaml").read_text())
    _write(tmp_path, data, "orin.yaml")
    monkeypatch.setenv("EDGEFLEET_PROFILES_DIR", str(tmp_path))
    with pytest.raises(ProfileError, match="does not match the file name"):
        load_profile("orin")


def test_a_profile_file_is_read_again_once_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "x86-server.yaml"
    path.write_text(available_profiles()["x86-server"].read_text(encoding="utf-8"), encoding="utf-8")
    first = load_profile_file(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["threads"] = first.threads + 1
    # A different size too: two writes within one clock tick can share their mtime and ctime.
    edited = yaml.safe_dump(data)
    path.write_text(
        edited + "#" * (len(path.read_text(encoding="utf-8")) + 1 - len(edited)) + "\n", encoding="utf-8"
    )
    assert load_profile_file(path).threads == first.threads + 1


def test_each_caller_gets_its_own_copy_of_a_cached_profile(tmp_path: Path) -> None:
    path = available_profiles()["x86-server"]
    mine = load_profile_file(path)
    threads = mine.threads
    mine.threads = threads + 5
    assert load_profile_file(path).threads == threads
