"""Benchmark edge-agent against ONNX Runtime in-process and against servers a user might pick instead.

Run: ``.venv/bin/python bench/agent.py [--seconds 3] [--quick] [--no-bentoml]``

Prints, side by side from one run:
  * memory: bare ONNX Runtime session vs the agent idle (no model) and serving the models, plus peers;
  * time to ready: process start to ``/v2/health/ready`` answering 200 with the models loaded;
  * p50/p99 latency and throughput at concurrency 1, 4 and 16 for a small (~1 ms), a ~3 ms and a
    medium (~10 ms) model: ONNX Runtime called in-process (the limit), the agent (binary protocol),
    the agent with dynamic batching, a naive FastAPI endpoint speaking the protocol (JSON), and
    BentoML when it can be installed into the bench's own venv ``bench/.venv-peer``;
  * the issue's goals, each with the measured ratio.

``--monitoring`` measures only the agent's own goals with monitoring (issue 9): c=1 p50/p99 of
ONNX Runtime in-process and of the agent with monitoring off, on (requests carrying an id and a
group), and on with a shadow version mirrored, in alternating rounds so all see the same background
load (overhead vs in-process, cost vs off); and time to ready, over alternating restarts, beside its
floor: a bare Python that imports ONNX Runtime and builds the same sessions.

Time to ready is a restart's: the agent runs once first until it has cached its optimised sessions
(agent.session_cache), as a device has after serving once; the ``--no-session-cache`` row is the
first start after an install (or a device with the cache off).
``--against DIR`` adds the same rows for the agent of another checkout (e.g. main in a git
worktree), measured in the same rounds: before/after from one run.

The repository's own bytecode is compiled first (``compileall``), as an installed agent has it: in an
environment with PYTHONDONTWRITEBYTECODE every agent start would otherwise compile agent/ and sdk/.

Every server runs as its own process; the load comes from one asyncio client on raw keep-alive
sockets so client overhead is small and identical for every server. The machine is shared, so
numbers are noisy: compare rows of the same run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sdk import keys  # noqa: E402
from sdk.agent_client import encode_request  # noqa: E402
from tests.agent.models import mlp_onnx, onnx_bundle  # noqa: E402

PY = sys.executable
PEER_VENV = REPO / "bench" / ".venv-peer"
CONCURRENCY = (1, 4, 16)
#: name -> (width, depth): dense ReLU stacks sized for about 1, 3 and 10 ms on a small x86 core.
MODELS = {"small": (1024, 4), "mid": (1024, 8), "medium": (1024, 24)}


# ------------------------------------------------------------------------------------ load client


@dataclass
class Run:
    p50_ms: float
    p99_ms: float
    rps: float
    errors: int


def _summary(latencies: list[float], seconds: float, errors: int) -> Run:
    if not latencies:
        return Run(float("nan"), float("nan"), 0.0, errors)
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    return Run(float(p50), float(p99), len(latencies) / seconds, errors)


async def _http_worker(
    port: int, request: bytes, stop_at: float, warm_until: float, out: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (start := time.perf_counter()) < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
            }
            if "content-length" in headers:
                await reader.readexactly(int(headers["content-length"]))
            else:  # chunked
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            if status != 200:
                errors.append(status)
            elif start >= warm_until:
                out.append(time.perf_counter() - start)
    finally:
        writer.close()


def http_load(port: int, request: bytes, concurrency: int, seconds: float) -> Run:
    latencies: list[float] = []
    errors: list[int] = []

    async def main() -> None:
        warm = time.perf_counter() + 0.5
        stop = warm + seconds
        await asyncio.gather(
            *(_http_worker(port, request, stop, warm, latencies, errors) for _ in range(concurrency))
        )

    asyncio.run(main())
    return _summary(latencies, seconds, len(errors))


def raw_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def inprocess_load(model: Path, x: np.ndarray, concurrency: int, seconds: float, threads: int) -> Run:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    latencies: list[float] = []
    lock = threading.Lock()
    warm = time.perf_counter() + 0.5
    stop = warm + seconds

    def worker() -> None:
        mine = []
        while (start := time.perf_counter()) < stop:
            session.run(None, {"x": x})
            if start >= warm:
                mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return _summary(latencies, seconds, 0)


# -------------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tree_rss(pid: int) -> float:
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    ready_s: float

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start(
    name: str,
    cmd: list[str],
    port: int,
    ready_path: str,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    cwd: Path | None = None,
) -> Server:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {ready_path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if b" 200 " in s.recv(64):
                    return Server(name, proc, port, time.perf_counter() - t0)
        except OSError:
            pass
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            raise RuntimeError(f"{name} not ready after {timeout} s")
        time.sleep(0.005)


def agent_cmd(data_dir: Path, pub: Path, port: int, *extra: str) -> list[str]:
    return [
        PY,
        "-m",
        "agent.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--trust-key",
        str(pub),
        "--listen",
        f"127.0.0.1:{port}",
        *extra,
    ]


def warm_session_cache(data_dir: Path, pub: Path, model_files: list[Path], timeout: float = 120.0) -> None:
    """Run the agent once until it has cached the optimised session of every model large enough to
    be cached (agent.session_cache), as a device has after serving once: the starts timed after this
    are restarts, as in the field (the first start after an install builds from the model; the
    ``--no-session-cache`` row)."""
    from agent.session_cache import MIN_BYTES

    models = sum(f.stat().st_size >= MIN_BYTES for f in model_files)
    port = free_port()
    server = start(
        "agent (filling the session cache)", agent_cmd(data_dir, pub, port), port, "/v2/health/ready"
    )
    try:
        deadline = time.monotonic() + timeout
        while len(list((data_dir / "cache" / "onnxruntime").glob("*/entry.json"))) < models:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the agent did not cache its {models} sessions in {timeout:.0f} s")
            time.sleep(0.2)
    finally:
        server.stop()


def compile_bytecode(tree: Path) -> None:
    """Write the bytecode of ``tree``'s agent and sdk (git ignores __pycache__/), so that an agent
    start measures what an installed agent does, not the compiler."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run(
        [PY, "-m", "compileall", "-q", "agent", "sdk"],
        cwd=tree,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def tree_env(tree: Path | None) -> dict[str, str]:
    """Environment for an agent started from another checkout (``--against``)."""
    return {} if tree is None else {"PYTHONPATH": str(tree)}


FASTAPI_APP = textwrap.dedent(
    '''
    """The naive FastAPI endpoint a user might write: Open Inference Protocol JSON, pydantic bodies."""
    import os, sys
    import numpy as np, onnxruntime as ort, uvicorn
    from fastapi import FastAPI, Request

    models = {}
    for arg in sys.argv[2:]:
        name, path = arg.split("=")
        models[name] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    app = FastAPI()

    @app.get("/v2/health/ready")
    def ready():
        return {"ready": True}

    @app.post("/v2/models/{name}/infer")
    async def infer(name: str, request: Request):
        doc = await request.json()  # tritonclient sends no Content-Type, so no typed body
        t = doc["inputs"][0]
        x = np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])
        y = models[name].run(None, {t["name"]: x})[0]
        return {"model_name": name, "outputs": [{"name": "y", "datatype": "FP32", "shape": list(y.shape),
                                                  "data": y.reshape(-1).tolist()}]}

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    '''
)

#: the floor under the agent's time to ready: a bare Python process that imports ONNX Runtime and
#: builds the same sessions (the agent's settings: threads, no spinning, all optimisations and
#: weight prepacking), one thread per model as the agent's early loads do, then exits.
BARE_SESSIONS = textwrap.dedent(
    """
    import sys, threading
    import onnxruntime as ort

    def load(path):
        o = ort.SessionOptions()
        o.intra_op_num_threads = int(sys.argv[1])
        o.inter_op_num_threads = 1
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
        o.add_session_config_entry("session.inter_op.allow_spinning", "0")
        ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])

    threads = [threading.Thread(target=load, args=(p,)) for p in sys.argv[2:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    """
)


def bare_sessions_s(paths: list[Path], threads: int) -> float:
    """Seconds from spawning a bare Python to its exit after building ``paths``' sessions."""
    t0 = time.perf_counter()
    subprocess.run([PY, "-c", BARE_SESSIONS, str(threads), *map(str, paths)], check=True)
    return time.perf_counter() - t0


BENTO_SERVICE = textwrap.dedent(
    """
    import os
    import bentoml
    import numpy as np

    MODELS = dict(item.split("=") for item in os.environ["BENCH_MODELS"].split(","))

    @bentoml.service(workers=1, threads=int(os.environ.get("BENCH_THREADS", "16")))
    class Bench:
        def __init__(self) -> None:
            import onnxruntime as ort
            self.sessions = {n: ort.InferenceSession(p, providers=["CPUExecutionProvider"]) for n, p in MODELS.items()}

        @bentoml.api
        def small(self, x: np.ndarray) -> np.ndarray:
            return self.sessions["small"].run(None, {"x": x.astype(np.float32)})[0]

        @bentoml.api
        def mid(self, x: np.ndarray) -> np.ndarray:
            return self.sessions["mid"].run(None, {"x": x.astype(np.float32)})[0]

        @bentoml.api
        def medium(self, x: np.ndarray) -> np.ndarray:
            return self.sessions["medium"].run(None, {"x": x.astype(np.float32)})[0]
    """
)


def ensure_bentoml(allow_install: bool) -> Path | None:
    """bench/.venv-peer with BentoML and onnxruntime, created on first use; None when unavailable."""
    python = PEER_VENV / "bin" / "python"
    check = [str(python), "-c", "import bentoml, onnxruntime, numpy"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    if not allow_install:
        return None
    print("creating bench/.venv-peer with bentoml (first run only) ...", file=sys.stderr)
    subprocess.run([PY, "-m", "venv", str(PEER_VENV)], check=True)
    (PEER_VENV / ".gitignore").write_text("*\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "bentoml", "onnxruntime", "numpy"],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if install.returncode != 0:
        print(f"bentoml could not be installed: {install.stderr[-500:]}", file=sys.stderr)
        return None
    return python


# ------------------------------------------------------------------------------------------ main


def help_seconds() -> float:
    script = Path(PY).with_name("edge-agent")
    cmd = [str(script)] if script.exists() else [PY, "-m", "agent.cli"]
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run([*cmd, "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def example_input(model: Path) -> np.ndarray:
    """One request's input ``x`` for ``model`` (a dynamic dimension is 1)."""
    import onnxruntime as ort

    [first] = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).get_inputs()
    shape = [d if isinstance(d, int) else 1 for d in first.shape]
    return np.random.default_rng(1).standard_normal(shape).astype(np.float32)


def digits_classifier(work: Path, key: keys.Ed25519PrivateKey) -> tuple[Path, Path]:
    """A real classifier: the demo's digits CNN (2.3 MB of fp32 weights), trained here on
    scikit-learn's digits and exported from PyTorch; input ``x`` [N, 1, 32, 32], ten logits out."""
    import torch

    from scripts.demo_model import train_digits_cnn
    from tests.converter.models import export

    model, x, _ = train_digits_cnn(epochs=1)
    path = export(model, (torch.from_numpy(x[:1]),), work / "classifier.onnx", ["x"])
    return path, onnx_bundle(work / "bundles", key, path, "classifier", "1")


def build_models(work: Path, key: keys.Ed25519PrivateKey) -> dict[str, tuple[Path, Path]]:
    out = {}
    for name, (width, depth) in MODELS.items():
        model = mlp_onnx(work / f"{name}.onnx", width=width, depth=depth)
        out[name] = (model, onnx_bundle(work / "bundles", key, model, name, "1"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--quick", action="store_true", help="small and medium only, concurrency 1 and 16")
    parser.add_argument("--no-bentoml", action="store_true", help="skip BentoML (no install attempt)")
    parser.add_argument("--monitoring", action="store_true", help="only the cost of monitoring and shadow")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of --monitoring")
    parser.add_argument(
        "--against",
        type=Path,
        metavar="DIR",
        help="--monitoring: also measure the agent of this checkout (e.g. a worktree of main), same rounds",
    )
    parser.add_argument("--starts", type=int, default=5, help="--monitoring: agent restarts timed to ready")
    parser.add_argument(
        "--litert", action="store_true", help="also: a coral bundle vs the bare LiteRT interpreter"
    )
    parser.add_argument("--litert-only", action="store_true", help="only the LiteRT section")
    args = parser.parse_args()
    if args.litert or args.litert_only:
        litert_section(args.seconds)
        if args.litert_only:
            return 0
    seconds = args.seconds
    compile_bytecode(REPO)
    if args.against is not None:
        compile_bytecode(args.against.resolve())
    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    key = keys.generate_key()
    _, pub = keys.save_keypair(key, work / "signer")
    models = build_models(work, key)
    names = ["small", "medium"] if args.quick else list(MODELS)
    if args.monitoring:
        # the "real 3 MB classifier": monitoring reads its ten logits as a classifier's
        models["classifier"] = digits_classifier(work, key)
        names.append("classifier")
    levels = (1, 16) if args.quick else CONCURRENCY
    threads = min(2, os.cpu_count() or 1)

    data_dir = work / "data"
    for n in names:
        subprocess.run(
            [
                PY,
                "-m",
                "agent.cli",
                "install",
                str(models[n][1]),
                "--data-dir",
                str(data_dir),
                "--trust-key",
                str(pub),
            ],
            check=True,
            capture_output=True,
            cwd=REPO,
        )

    if args.monitoring:
        against = args.against.resolve() if args.against is not None else None
        monitoring_cost(work, key, pub, models, names, data_dir, args.rounds, seconds, against, args.starts)
        return 0

    memory: list[tuple[str, float]] = []
    ready: list[tuple[str, float]] = []
    ready.append(("edge-agent --help (median of 5)", help_seconds()))

    # --- memory: bare ONNX Runtime, agent idle, agent with models
    bare_code = textwrap.dedent(
        """
        import sys, time, numpy as np, onnxruntime as ort
        for path in sys.argv[1:]:
            s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            s.run(None, {"x": np.zeros((1, s.get_inputs()[0].shape[1]), np.float32)})
        print("ok", flush=True)
        time.sleep(60)
        """
    )
    bare = subprocess.Popen(
        [PY, "-c", bare_code, *(str(models[n][0]) for n in names)], stdout=subprocess.PIPE
    )
    assert bare.stdout is not None
    bare.stdout.readline()
    time.sleep(0.5)
    memory.append(("bare python + onnxruntime sessions, same models", tree_rss(bare.pid)))
    bare.kill()
    bare.wait()

    empty = work / "empty"
    port = free_port()
    idle = start("agent idle", agent_cmd(empty, pub, port), port, "/v2/health/ready")
    time.sleep(1.0)
    memory.append(("edge-agent, no model", tree_rss(idle.proc.pid)))
    ready.append(("edge-agent, no model", idle.ready_s))
    idle.stop()

    rows: list[tuple[str, int, str, Run]] = []
    requests: dict[str, dict[str, bytes]] = {}
    inputs: dict[str, np.ndarray] = {}
    #: name -> in-process p50 and p99, agent p50 and p99 (ms), medians of alternating rounds at c=1.
    overhead: dict[str, tuple[float, float, float, float]] = {}

    for name in names:
        width = MODELS[name][0]
        x = inputs[name] = np.random.default_rng(1).standard_normal((1, width)).astype(np.float32)
        body, hlen = encode_request({"x": x}, binary=True)
        json_body = json.dumps(
            {
                "inputs": [
                    {"name": "x", "datatype": "FP32", "shape": [1, width], "data": x.reshape(-1).tolist()}
                ]
            }
        ).encode()
        requests[name] = {
            "agent": raw_request(
                f"/v2/models/{name}/infer", body, {"Inference-Header-Content-Length": str(hlen)}
            ),
            "json": raw_request(f"/v2/models/{name}/infer", json_body, {"Content-Type": "application/json"}),
            "bento": raw_request(
                f"/{name}", json.dumps({"x": x.tolist()}).encode(), {"Content-Type": "application/json"}
            ),
        }
        for c in levels:
            rows.append(
                (
                    name,
                    c,
                    "onnxruntime in-process (limit)",
                    inprocess_load(models[name][0], x, c, seconds, threads),
                )
            )

    def measure(label: str, server: Server, kind: str, paired: bool = False) -> None:
        time.sleep(1.0)
        memory.append((f"{label}, models loaded", tree_rss(server.proc.pid)))
        ready.append((f"{label}, models loaded", server.ready_s))
        for name in names:
            for c in levels:
                rows.append((name, c, label, http_load(server.port, requests[name][kind], c, seconds)))
        if paired:
            # The c=1 overhead goal compares two numbers a few ms apart on a shared machine: measure
            # them in alternating short rounds so both see the same background load.
            for name in names:
                rounds = [
                    (
                        inprocess_load(models[name][0], inputs[name], 1, 1.0, threads),
                        http_load(server.port, requests[name][kind], 1, 1.0),
                    )
                    for _ in range(5)
                ]
                overhead[name] = (
                    float(np.median([r[0].p50_ms for r in rounds])),
                    float(np.median([r[0].p99_ms for r in rounds])),
                    float(np.median([r[1].p50_ms for r in rounds])),
                    float(np.median([r[1].p99_ms for r in rounds])),
                )
        memory.append((f"{label}, after load", tree_rss(server.proc.pid)))
        server.stop()

    warm_session_cache(data_dir, pub, [models[n][0] for n in names])
    # One start is one noisy sample on a shared host: the goal takes the median of alternating
    # restarts, with and without the session cache.
    restarts: dict[str, list[float]] = {}
    for _ in range(5):
        for label, extra in (
            ("edge-agent (binary)", ()),
            ("edge-agent --no-session-cache", ("--no-session-cache",)),
        ):
            port = free_port()
            server = start(label, agent_cmd(data_dir, pub, port, *extra), port, "/v2/health/ready")
            restarts.setdefault(label, []).append(server.ready_s)
            server.stop()
    for label, times in restarts.items():
        ready.append((f"{label}, models loaded (median of 5 restarts)", float(np.median(times))))
    port = free_port()
    measure(
        "edge-agent (binary)",
        start("agent", agent_cmd(data_dir, pub, port), port, "/v2/health/ready"),
        "agent",
        paired=True,
    )
    port = free_port()
    measure(
        "edge-agent + batching (16, 2 ms)",
        start(
            "agent-batch",
            agent_cmd(data_dir, pub, port, "--max-batch-size", "16", "--max-queue-delay-ms", "2"),
            port,
            "/v2/health/ready",
        ),
        "agent",
    )
    port = free_port()
    (work / "fastapi_app.py").write_text(FASTAPI_APP)
    measure(
        "naive FastAPI (JSON)",
        start(
            "fastapi",
            [PY, str(work / "fastapi_app.py"), str(port), *(f"{n}={models[n][0]}" for n in names)],
            port,
            "/v2/health/ready",
        ),
        "json",
    )
    bento_python = None if args.no_bentoml else ensure_bentoml(allow_install=True)
    if bento_python is not None:
        port = free_port()
        (work / "service.py").write_text(BENTO_SERVICE)
        env = {
            "BENCH_MODELS": ",".join(f"{n}={models[n][0]}" for n in MODELS),
            "BENTOML_HOME": str(work / "bento"),
        }
        try:
            server = start(
                "bentoml",
                [
                    str(bento_python),
                    "-m",
                    "bentoml",
                    "serve",
                    "service:Bench",
                    "--port",
                    str(port),
                    "--host",
                    "127.0.0.1",
                    "--working-dir",
                    str(work),
                ],
                port,
                "/readyz",
                env=env,
                timeout=180,
            )
            measure("BentoML", server, "bento")
        except RuntimeError as exc:
            print(f"BentoML did not start: {exc}", file=sys.stderr)

    report(rows, memory, ready, names, levels, overhead)
    return 0


def monitoring_cost(
    work: Path,
    key: keys.Ed25519PrivateKey,
    pub: Path,
    models: dict[str, tuple[Path, Path]],
    names: list[str],
    data_dir: Path,
    rounds: int,
    seconds: float,
    against: Path | None = None,
    starts: int = 5,
) -> None:
    """The agent's own goals with monitoring: c=1 latency of ONNX Runtime in-process and of the agent
    with monitoring off, on, and on with a shadow version (alternating rounds), and time to ready
    (alternating restarts); with ``against``, the same for that checkout's agent."""
    import shutil

    from agent.store import ModelStore

    shadow_dir = work / "data-shadow"
    shutil.copytree(data_dir, shadow_dir)
    store = ModelStore(shadow_dir, [key.public_key()])
    for name in names:  # the same model as version 2, its shadow
        store.install_shadow(onnx_bundle(work / "bundles-2", key, models[name][0], name, "2"))
    trees: list[tuple[str, Path | None]] = [("", None)]
    if against is not None:
        trees.append((f"{against.name}: ", against))
    configs: dict[str, tuple[list[str], Path | None]] = {}
    for prefix, tree in trees:
        configs[f"{prefix}monitoring off"] = (agent_cmd(data_dir, pub, free_port(), "--no-monitoring"), tree)
        configs[f"{prefix}monitoring on"] = (agent_cmd(data_dir, pub, free_port()), tree)
        configs[f"{prefix}on + shadow (10 % mirrored)"] = (agent_cmd(shadow_dir, pub, free_port()), tree)

    def port_of(cmd: list[str]) -> int:
        return int(cmd[cmd.index("--listen") + 1].rsplit(":", 1)[1])

    # Time to ready first, before the load below warms anything: the "monitoring on" agent of each
    # checkout started and stopped in turn; this checkout's also without its session cache.
    warm_session_cache(data_dir, pub, [models[n][0] for n in names])
    starters: dict[str, tuple[list[str], Path | None]] = {}
    for prefix, tree in trees:
        starters[f"{prefix}edge-agent"] = configs[f"{prefix}monitoring on"]
        if tree is None:
            cmd = agent_cmd(data_dir, pub, free_port(), "--no-session-cache")
            starters["edge-agent --no-session-cache"] = (cmd, None)
    ready: dict[str, list[float]] = {}
    threads = min(2, os.cpu_count() or 1)
    for _ in range(starts):
        ready.setdefault("bare", []).append(bare_sessions_s([models[n][0] for n in names], threads))
        for label, (cmd, tree) in starters.items():
            server = start(label, cmd, port_of(cmd), "/v2/health/ready", env=tree_env(tree), cwd=tree)
            ready.setdefault(label, []).append(server.ready_s)
            server.stop()
    servers = {}
    for label, (cmd, tree) in configs.items():
        servers[label] = start(label, cmd, port_of(cmd), "/v2/health/ready", env=tree_env(tree), cwd=tree)
    try:
        time.sleep(2.0)  # the background re-hash after start (agent.stamp) is done by now
        results: dict[tuple[str, str], list[Run]] = {}
        for name in names:
            x = example_input(models[name][0])
            body, hlen = encode_request({"x": x}, request_id="bench-0001", parameters={"group": "site-a"})
            request = raw_request(
                f"/v2/models/{name}/infer", body, {"Inference-Header-Content-Length": str(hlen)}
            )
            for _ in range(rounds):
                results.setdefault((name, "in-process"), []).append(
                    inprocess_load(models[name][0], x, 1, seconds, threads)
                )
                for label, server in servers.items():
                    results.setdefault((name, label), []).append(http_load(server.port, request, 1, seconds))
    finally:
        for server in servers.values():
            server.stop()
    print(
        f"\ntime to ready with {len(names)} models ({', '.join(names)}), median of {starts} alternating starts"
    )
    bare = ready["bare"]
    print(
        f"  {'bare: python, import onnxruntime, sessions':<40} {float(np.median(bare)):6.2f} s"
        f" (min {min(bare):.2f}) (the floor)"
    )
    for label in starters:
        times = ready[label]
        goal = (
            ""
            if "no-session-cache" in label
            else " (goal <= 0.5) " + ("OK" if np.median(times) <= 0.5 else "MISSED")
        )
        print(f"  {label:<40} {float(np.median(times)):6.2f} s (min {min(times):.2f}){goal}")
    print(f"\nc=1 latency, median of {rounds} alternating {seconds:g} s rounds")
    print(f"{'model':<8} {'server':<42} {'p50 ms':>8} {'p99 ms':>8} {'vs in-process':>14} {'vs off':>8}")
    for name in names:
        inproc = float(np.median([r.p50_ms for r in results[(name, "in-process")]]))
        p99 = float(np.median([r.p99_ms for r in results[(name, "in-process")]]))
        print(f"{name:<8} {'onnxruntime in-process (limit)':<42} {inproc:8.3f} {p99:8.3f}")
        for prefix, _tree in trees:
            off = float(np.median([r.p50_ms for r in results[(name, f"{prefix}monitoring off")]]))
            for label in servers:
                if not label.startswith(prefix) or (not prefix and ": " in label):
                    continue
                runs = results[(name, label)]
                p50 = float(np.median([r.p50_ms for r in runs]))
                p99 = float(np.median([r.p99_ms for r in runs]))
                print(f"{name:<8} {label:<42} {p50:8.3f} {p99:8.3f} {p50 - inproc:+13.3f} {p50 - off:+8.3f}")
    print(
        "  goals: c=1 p50 overhead vs in-process <= 1 ms; monitoring and shadow within 0.2 ms of off at p50"
    )


# ------------------------------------------------------------------------ LiteRT (coral), issue 11
def _coral_bundle(work: Path, key: keys.Ed25519PrivateKey) -> tuple[Path, Path, np.ndarray]:
    """A digits CNN (trained here), litert-torch float .tflite, full integer by the converter's own
    quantizer step; bundled with floats offered to clients. Returns (model.tflite, bundle, one input)."""
    import contextlib
    import io

    import litert_torch
    import torch
    from torch import nn

    from converter.calibration import Dataset
    from converter.litert_quantize import Setting, quantize
    from converter.litert_session import IoNames, LiteRtSession, tensor_specs
    from sdk.bundle import write_bundle
    from sdk.manifest import Manifest, Smoke, SourceInfo
    from sdk.tensors import EncodedTensor
    from tests.converter.exporter_graphs import digits

    x, _ = digits()
    x = np.kron(x, np.ones((1, 1, 4, 4), np.float32))  # 32x32: the convolutions do real work
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 8 * 8, 10),
    ).eval()  # fmt: skip
    float_model = work / "cnn-float.tflite"
    with contextlib.redirect_stdout(io.StringIO()):
        litert_torch.convert(model, (torch.from_numpy(x[:1]),)).export(str(float_model))
    int8 = quantize(
        float_model,
        work / "cnn-int8.tflite",
        Dataset({"image": x[:200]}, None, "digits", False),
        Setting(True),
    )
    names = IoNames(["image"], ["output"])
    session = LiteRtSession(int8, 2, names)
    sample = x[:1]
    (out,) = session.run(None, {"image": sample})
    manifest = Manifest(
        name="cnn-int8", version="1", profile="coral", runtime="litert", precision="int8",
        source=SourceInfo(format="tflite", sha256="0" * 64), model_file="model.tflite",
        inputs=tensor_specs(session.get_inputs()), outputs=tensor_specs(session.get_outputs()),
        smoke=Smoke(inputs={"image": EncodedTensor.from_numpy(sample)}, outputs={"output": EncodedTensor.from_numpy(out)}, atol=0.5),
    )  # fmt: skip
    staged = work / "model.tflite"
    staged.write_bytes(int8.read_bytes())
    (work / "bundles").mkdir(exist_ok=True)
    return staged, write_bundle(manifest, {"model.tflite": staged}, key, work / "bundles"), sample


def _bare_litert(model: Path, x: np.ndarray, seconds: float, threads: int) -> Run:
    """The limit: LiteRT in-process, quantizing the float input and dequantizing the output by hand."""
    from ai_edge_litert.interpreter import Interpreter

    from sdk.quantized_io import QuantParams

    it = Interpreter(model_path=str(model), num_threads=threads)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    qi, qo = QuantParams.of(i["dtype"], i["quantization"]), QuantParams.of(o["dtype"], o["quantization"])
    assert qi is not None and qo is not None
    latencies = []
    warm = time.perf_counter() + 0.5
    stop = warm + seconds
    while (start := time.perf_counter()) < stop:
        it.set_tensor(i["index"], qi.quantize(x))
        it.invoke()
        qo.dequantize(it.get_tensor(o["index"]))
        if start >= warm:
            latencies.append(time.perf_counter() - start)
    return _summary(latencies, seconds, 0)


def litert_section(seconds: float) -> None:
    """A coral bundle served by edge-agent (binary protocol, concurrency 1 and 4) vs bare LiteRT."""
    work = Path(tempfile.mkdtemp(prefix="edge-bench-litert-"))
    key = keys.generate_key()
    _, pub = keys.save_keypair(key, work / "signer")
    model, bundle, x = _coral_bundle(work, key)
    data_dir = work / "data"
    subprocess.run(
        [PY, "-m", "agent.cli", "install", str(bundle), "--data-dir", str(data_dir), "--trust-key", str(pub)],
        check=True, capture_output=True, cwd=REPO,
    )  # fmt: skip
    threads = min(2, os.cpu_count() or 1)
    rows = [("bare LiteRT (in-process, int8 io by hand)", 1, _bare_litert(model, x, seconds, threads))]
    port = free_port()
    server = start("edge-agent", agent_cmd(data_dir, pub, port), port, "/v2/models/cnn-int8/ready")
    try:
        body, hlen = encode_request({"image": x}, binary=True)
        request = raw_request(
            "/v2/models/cnn-int8/infer", body, {"Inference-Header-Content-Length": str(hlen)}
        )
        for level in (1, 4):
            rows.append(
                (
                    "edge-agent, binary tensors (floats in/out)",
                    level,
                    http_load(port, request, level, seconds),
                )
            )
    finally:
        server.stop()
    bare = rows[0][2].p50_ms
    print(
        f"\nLiteRT coral bundle ({model.stat().st_size / 1e3:.0f} kB, full integer), {seconds:g} s per cell"
    )
    print(f"{'server':45} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'overhead p50':>13}")
    for name, level, run in rows:
        overhead = f"{run.p50_ms - bare:+.3f} ms" if name != rows[0][0] else ""
        print(f"{name:45} {level:>4} {run.p50_ms:>8.3f} {run.p99_ms:>8.3f} {run.rps:>8.0f} {overhead:>13}")


def report(
    rows: list[tuple[str, int, str, Run]],
    memory: list[tuple[str, float]],
    ready: list[tuple[str, float]],
    names: list[str],
    levels: tuple[int, ...],
    overhead: dict[str, tuple[float, float, float, float]],
) -> None:
    print("\nmemory (RSS, MiB)")
    for label, mib in memory:
        print(f"  {label:<52} {mib:8.1f}")
    print("\ntime to ready (process start to /v2/health/ready = 200)")
    for label, s in ready:
        print(f"  {label:<52} {s:8.2f} s")
    print(
        f"\n{'model':<8} {'conc':>4}  {'server':<36} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'errors':>6}"
    )
    for name, c, label, r in rows:
        print(f"{name:<8} {c:>4}  {label:<36} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.rps:8.0f} {r.errors:>6}")

    def get(name: str, c: int, prefix: str) -> Run | None:
        return next(
            (r for n, cc, label, r in rows if n == name and cc == c and label.startswith(prefix)), None
        )

    print("\ngoals")
    for name in names:
        if name in overhead:
            limit_p50, limit_p99, agent_p50, agent_p99 = overhead[name]
            over = agent_p50 - limit_p50
            print(
                f"  {name}: c=1 p50 in-process {limit_p50:.2f} ms, agent {agent_p50:.2f} ms: {over:+.2f} ms"
                f" (goal <= 1 ms) {'OK' if over <= 1 else 'MISSED'} (median of 5 alternating 1 s rounds)"
            )
            # The goal names a 3 ms model; a model that runs in at most 3 ms in-process must meet it too.
            verdict = ("OK" if agent_p99 <= 6 else "MISSED") if limit_p50 <= 3 else "n/a, slower than 3 ms"
            print(
                f"  {name}: c=1 p99 agent {agent_p99:.2f} ms, in-process {limit_p99:.2f} ms"
                f" (goal <= 6 ms for a 3 ms model) {verdict}"
            )
        for c in levels:
            if c == 1:
                continue
            agent = get(name, c, "edge-agent (binary)")
            peers = [
                r
                for n, cc, label, r in rows
                if n == name and cc == c and label.startswith(("naive", "BentoML"))
            ]
            if agent and peers:
                best = max(p.rps for p in peers)
                ratio = agent.rps / best if best else float("inf")
                print(
                    f"  {name} c={c}: agent {agent.rps:.0f} req/s vs best peer {best:.0f}: x{ratio:.2f} "
                    f"(goal >= 1.3) {'OK' if ratio >= 1.3 else 'MISSED'}"
                )
        plain, batched = (
            get(name, max(levels), "edge-agent (binary)"),
            get(name, max(levels), "edge-agent + batching"),
        )
        if plain and batched and plain.rps:
            ratio = batched.rps / plain.rps
            print(
                f"  {name} c={max(levels)}: batching x{ratio:.2f} of unbatched (goal >= 1.5) "
                f"{'OK' if ratio >= 1.5 else 'MISSED'}"
            )
    idle = next((mib for label, mib in memory if label == "edge-agent, no model"), None)
    if idle is not None:
        print(f"  idle RSS {idle:.1f} MiB (goal <= 80) {'OK' if idle <= 80 else 'MISSED'}")
    helped = next((s for label, s in ready if label.startswith("edge-agent --help")), None)
    if helped is not None:
        print(f"  edge-agent --help in {helped:.2f} s (goal < 0.5) {'OK' if helped < 0.5 else 'MISSED'}")
    loaded = next(
        (s for label, s in ready if label.startswith("edge-agent (binary), models loaded (median")), None
    )
    if loaded is not None:
        print(f"  ready with models in {loaded:.2f} s (goal <= 0.5) {'OK' if loaded <= 0.5 else 'MISSED'}")


if __name__ == "__main__":
    sys.exit(main())
