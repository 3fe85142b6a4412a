"""Every edge-fleet / edge-agent / edge-convert flag and every EDGEFLEET_* / EDGE_AGENT_* variable
that deploy files and docs name exists: flags in the command's own `--help`, variables in the code."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import yaml

from tests.deploy.conftest import DEPLOY, ROOT

BIN = Path(sys.executable).parent
#: subcommands (one or two words) of each program; edge-convert's default is the conversion itself
SUBCOMMANDS = {
    "edge-fleet": ["token create", "token list", "token revoke", "serve", "up", "token"],
    "edge-agent": ["install", "serve", "status"],
    "edge-convert": ["keygen", "profiles", "inspect", "distill"],
}
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_CALL = re.compile(r"\bedge-(fleet|agent|convert)\b((?:[ \t]+(?:\\\n\s*)?[^\s`|;&)]+)*)")
_ENV = re.compile(r"\b(EDGEFLEET_[A-Z0-9_]*[A-Z0-9]|EDGE_AGENT_[A-Z0-9_]*[A-Z0-9])\b")


@cache
def help_flags(program: str, sub: str) -> frozenset[str]:
    args = [str(BIN / program), *sub.split()] if sub else [str(BIN / program), "model.onnx"]
    done = subprocess.run([*args, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return frozenset(_FLAG.findall(done.stdout))


def split_call(program: str, words: list[str]) -> tuple[str, list[str]]:
    """(subcommand, flags) of one invocation, e.g. ("serve", ["--db", ...])."""
    for sub in SUBCOMMANDS[program]:
        n = len(sub.split())
        if [w for w in words[:n]] == sub.split():
            return sub, words[n:]
    if program == "edge-convert":
        return "", words
    return "", []  # the program alone, or prose ("edge-fleet replicas")


def flags_of(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if _FLAG.fullmatch(w.split("=", 1)[0])]


def text_calls(path: Path) -> list[tuple[str, str, list[str]]]:
    """Invocations written out in a text file (docs, comments, unit files, Dockerfiles)."""
    calls = []
    for m in _CALL.finditer(path.read_text()):
        program = f"edge-{m.group(1)}"
        words = [w for w in re.sub(r"\\\n\s*", " ", m.group(2)).split() if w]
        sub, rest = split_call(program, words)
        if sub or program == "edge-convert" or flags_of(rest):
            calls.append((program, sub, flags_of(rest)))
    return calls


def structured_calls() -> list[tuple[str, str, list[str]]]:
    """The argument lists of containers: Kubernetes args, compose commands, Dockerfile CMDs."""
    calls = []
    for path in [*DEPLOY.glob("k8s/*.yaml"), *DEPLOY.glob("compose/*.yaml")]:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            containers = doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
            lists = [(c.get("image", ""), c.get("args") or []) for c in containers]
            lists += [(s.get("image", ""), s.get("command") or []) for s in doc.get("services", {}).values()]
            for image, args in lists:
                for program in ("edge-fleet", "edge-agent"):
                    if program in image and args:
                        calls.append((program, *_sub_and_flags(program, args)))
    for dockerfile in DEPLOY.glob("container/Dockerfile.*"):
        program = f"edge-{dockerfile.suffix[1:]}"
        cmd = re.search(r"^CMD (\[.*\])$", dockerfile.read_text(), re.M)
        assert cmd, dockerfile
        calls.append((program, *_sub_and_flags(program, yaml.safe_load(cmd.group(1)))))
    return calls


def _sub_and_flags(program: str, args: list[str]) -> tuple[str, list[str]]:
    sub, rest = split_call(program, [str(a) for a in args])
    return sub, flags_of(rest)


def documents() -> list[Path]:
    files = [ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *DEPLOY.rglob("*")]
    return [f for f in files if f.is_file() and f.suffix not in (".json", ".pub", ".png")]


def test_every_flag_named_in_deploy_files_and_docs_exists() -> None:
    calls = structured_calls() + [c for path in documents() for c in text_calls(path)]
    assert len(calls) > 20
    pairs = {(program, sub) for program, sub, _ in calls}
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda p: help_flags(*p), pairs))
    unknown = sorted(
        {
            f"{program} {sub} {flag}".replace("  ", " ")
            for program, sub, flags in calls
            for flag in flags
            if flag not in help_flags(program, sub)
        }
    )
    assert unknown == []
    # it does see the container arguments and the systemd unit
    assert ("edge-fleet", "serve") in pairs and ("edge-agent", "serve") in pairs


def test_a_flag_that_does_not_exist_is_caught(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "run `edge-fleet serve --db URL --max-bundle-mb 10` and\n```\nedge-agent serve \\\n  --data-dir D --nope\n```\n"
    )
    calls = text_calls(doc)
    assert calls == [
        ("edge-fleet", "serve", ["--db", "--max-bundle-mb"]),
        ("edge-agent", "serve", ["--data-dir", "--nope"]),
    ]
    assert "--max-bundle-mb" not in help_flags("edge-fleet", "serve")


def known_variables() -> set[str]:
    from fleet.settings import FleetSettings

    known = {f"EDGEFLEET_{name.upper()}" for name in FleetSettings.model_fields}
    for package in ("sdk", "agent", "fleet", "converter"):
        for source in (ROOT / package).rglob("*.py"):
            known.update(_ENV.findall(source.read_text()))
    return known


def test_every_environment_variable_named_in_deploy_files_and_docs_is_read() -> None:
    known = known_variables()
    named = {(v, p.relative_to(ROOT).as_posix()) for p in documents() for v in _ENV.findall(p.read_text())}
    assert {v for v, _ in named} >= {"EDGEFLEET_DB_URL", "EDGEFLEET_MAX_BUNDLE_MB", "EDGE_AGENT_API_TOKEN"}
    assert sorted((v, p) for v, p in named if v not in known) == []


def test_the_agent_unit_runs_flags_the_agent_has() -> None:
    unit = re.sub(r"\\\n\s*", " ", (DEPLOY / "systemd" / "edge-agent.service").read_text())
    start = re.search(r"^ExecStart=(.*)$", unit, re.M)
    assert start
    words = shlex.split(start.group(1))
    assert words[0].endswith("/edge-agent") and words[1] == "serve"
    assert set(flags_of(words[2:])) <= help_flags("edge-agent", "serve")
    assert os.path.basename(words[0]) == "edge-agent"


#: flags of other tools that deploy files and docs use (docker, pip, useradd, systemctl, kubectl,
#: prometheus, ...): anything else that looks like a flag must belong to an edgefleet command, so a
#: flag that exists nowhere (such as a `--max-bundle-mb` in a comment) fails
OTHER_TOOLS = {
    "--config.file", "--storage.tsdb.path", "--storage.tsdb.retention.time",  # prometheus
    "--create-home", "--home-dir", "--shell", "--system", "--uid", "--user-group",  # useradd
    "--dest", "--find-links", "--no-cache-dir", "--no-deps", "--no-index", "--only-binary",
    "--python-version", "--upgrade", "--wheel-dir",  # pip
    "--from", "--interval", "--platform", "--retries", "--start-period", "--timeout",  # docker
    "--from-file",  # kubectl
    "--now",  # systemctl
}  # fmt: skip
_ADD_ARGUMENT = re.compile(r"add_argument\(\s*\"(--[a-z][a-z0-9-]*)\"")


def script_flags() -> set[str]:
    """Flags of the repository's own scripts (bench/*.py, scripts/*.py), as their argparse declares them."""
    sources = [*(ROOT / "bench").glob("*.py"), *(ROOT / "scripts").glob("*.py")]
    return {flag for path in sources for flag in _ADD_ARGUMENT.findall(path.read_text())}


_ANY_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9.-]*[a-z0-9]")


def test_every_flag_anywhere_in_deploy_files_and_docs_belongs_to_a_known_command() -> None:
    ours: set[str] = set()
    pairs = [(p, s) for p, subs in SUBCOMMANDS.items() for s in subs] + [("edge-convert", "")]
    with ThreadPoolExecutor(4) as pool:
        for flags in pool.map(lambda p: help_flags(*p), pairs):
            ours |= flags
    ours |= script_flags()
    stray = sorted(
        (flag, path.relative_to(ROOT).as_posix())
        for path in documents()
        for flag in set(_ANY_FLAG.findall(path.read_text()))
        if flag not in ours and flag not in OTHER_TOOLS
    )
    assert stray == []
