"""Fleet bench: simulated devices against Mosquitto, one ``edge-fleet serve`` process, and amqtt.

    .venv/bin/python bench/fleet.py [--devices 1000] [--rate 2500] [--seconds 10] [--db URL]

Measures, in one run, side by side:
  1. Mosquitto alone: telemetry messages/s it passes from the devices to one subscriber;
  2. one fleet process: telemetry messages/s ingested into its database, and the CPU it used;
  3. a rollout to every device: seconds from the API call until the fleet reports it done;
  4. the embedded amqtt broker (``edge-fleet up``): delivered/offered at rising rates.

Devices are light MQTT 3.1.1 clients on raw non-blocking sockets driven by one epoll loop
(``selectors``), not paho: paho's own loops use select(), which breaks at fd 1024, and a paho
client per device would cost more CPU than the fleet being measured.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import resource
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdk.topics import topic  # noqa: E402
from tests.support.bundles import make_bundle  # noqa: E402
from tests.support.fleet_proc import BIN, admin_token, serve_args, wait_http  # noqa: E402
from tests.support.mosquitto import free_port, run_mosquitto  # noqa: E402

# ------------------------------------------------------------------------------ MQTT packets


def _varlen(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def connect_packet(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    flags = 0x02
    payload = _str(client_id)
    if will:
        flags |= 0x04 | (1 << 3) | 0x20  # will, QoS 1, retained
        payload += _str(will[0]) + _str(will[1])
    if username is not None:
        flags |= 0x80
        payload += _str(username)
    if password is not None:
        flags |= 0x40
        payload += _str(password)
    body = _str("MQTT") + bytes([4, flags]) + struct.pack("!H", 60) + payload
    return b"\x10" + _varlen(len(body)) + body


def subscribe_packet(pid: int, name: str, qos: int = 1) -> bytes:
    body = struct.pack("!H", pid) + _str(name) + bytes([qos])
    return b"\x82" + _varlen(len(body)) + body


def publish_packet(name: str, payload: bytes, pid: int, qos: int = 1, retain: bool = False) -> bytes:
    body = _str(name) + (struct.pack("!H", pid) if qos else b"") + payload
    return bytes([0x30 | (qos << 1) | int(retain)]) + _varlen(len(body)) + body


# ------------------------------------------------------------------------------ the swarm


@dataclass
class Device:
    device_id: str
    sock: socket.socket
    inbuf: bytearray = field(default_factory=bytearray)
    outbuf: bytearray = field(default_factory=bytearray)
    pid: int = 0
    connected: bool = False
    seq: int = 0

    def next_pid(self) -> int:
        self.pid = self.pid % 65535 + 1
        return self.pid


class Swarm:
    """Many device connections on one epoll loop; they answer desired with reported.

    A device whose API token is in ``tokens`` first downloads the bundles its desired state names
    (on a small thread pool), as an agent does: the fleet believes "active" only after that.
    """

    def __init__(self, host: str, port: int, tokens: dict[str, str] | None = None) -> None:
        self.host, self.port = host, port
        self.tokens = dict(tokens or {})
        self._pool = ThreadPoolExecutor(max_workers=8) if self.tokens else None
        self._fetched: queue.SimpleQueue[tuple[Device, bytes, int]] = queue.SimpleQueue()
        self.sel = selectors.DefaultSelector()
        self.devices: list[Device] = []
        self.received: dict[str, int] = {}
        self.counted_topic: str | None = None
        self.counted = 0

    def connect(
        self, ids: list[str], creds: dict[str, str] | None = None, subscribe: str = "desired"
    ) -> None:
        # In steps, as a fleet of devices would come up: a broker may shed a burst of CONNECTs.
        for i in range(0, len(ids), 100):
            self._connect(ids[i : i + 100], creds, subscribe)

    def _connect(self, ids: list[str], creds: dict[str, str] | None, subscribe: str) -> None:
        for device_id in ids:
            s = socket.create_connection((self.host, self.port))
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            d = Device(device_id, s)
            password = creds.get(device_id) if creds else None
            d.outbuf += connect_packet(
                f"bench-{device_id}",
                device_id if creds else None,
                password,
                will=(topic("status", device_id), b'{"schema":1,"state":"offline"}'),
            )
            if subscribe == "desired":
                d.outbuf += subscribe_packet(d.next_pid(), topic("desired", device_id))
            d.outbuf += publish_packet(
                topic("status", device_id), b'{"schema":1,"state":"online"}', d.next_pid(), retain=True
            )
            self.devices.append(d)
            self.sel.register(s, selectors.EVENT_READ, d)
            self._flush(d)
        self.pump_until(lambda: all(d.connected for d in self.devices), 60)

    def add_counter(self, filter_: str) -> None:
        """One extra subscriber that only counts what the broker delivers on ``filter_``."""
        s = socket.create_connection((self.host, self.port))
        s.setblocking(False)
        d = Device("counter", s)
        d.outbuf += connect_packet(f"bench-counter-{os.getpid()}") + subscribe_packet(1, filter_)
        self.counted_topic = filter_
        self.sel.register(s, selectors.EVENT_READ, d)
        self._counter = d
        self._flush(d)

    def _flush(self, d: Device) -> None:
        """Send what is pending; watch for writability only while something is left (epoll
        would otherwise wake the loop for every idle socket)."""
        if d.outbuf:
            try:
                n = d.sock.send(d.outbuf)
                del d.outbuf[:n]
            except (BlockingIOError, InterruptedError):
                pass
        want = selectors.EVENT_READ | (selectors.EVENT_WRITE if d.outbuf else 0)
        if self.sel.get_key(d.sock).events != want:
            self.sel.modify(d.sock, want, d)

    def _read(self, d: Device) -> None:
        try:
            chunk = d.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        if not chunk:
            raise ConnectionError(f"broker closed {d.device_id}")
        d.inbuf += chunk
        buf = d.inbuf
        while len(buf) >= 2:
            mult, length, i = 1, 0, 1
            while True:
                if i >= len(buf):
                    return
                byte = buf[i]
                length += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
            if len(buf) < i + length:
                return
            kind, body = buf[0], bytes(buf[i : i + length])
            del buf[: i + length]
            self._packet(d, kind, body)

    def _packet(self, d: Device, kind: int, body: bytes) -> None:
        ptype = kind >> 4
        if ptype == 2:
            if body[1] != 0:
                raise ConnectionError(f"{d.device_id} refused by the broker (code {body[1]})")
            d.connected = True
        elif ptype == 3:
            qos = (kind >> 1) & 3
            tlen = struct.unpack("!H", body[:2])[0]
            name = body[2 : 2 + tlen].decode()
            off = 2 + tlen
            if qos:
                d.outbuf += b"\x40\x02" + body[off : off + 2]
                off += 2
            if d is getattr(self, "_counter", None):
                self.counted += 1
                return
            payload = body[off:]
            if name.endswith("/desired") and payload:
                desired = json.loads(payload)
                models = [
                    {"name": m["name"], "version": m["version"], "state": "active"} for m in desired["models"]
                ]
                report = json.dumps(
                    {"schema": 1, "revision": desired["revision"], "models": models, "agent_version": "bench"}
                ).encode()
                if self._pool is not None and d.device_id in self.tokens:
                    urls = [m["bundle_url"] for m in desired["models"]]
                    self._pool.submit(self._fetch, d, urls, report, desired["revision"])
                    return
                self._report(d, report, desired["revision"])

    def _fetch(self, d: Device, urls: list[str], report: bytes, revision: int) -> None:
        headers = {"Authorization": f"Bearer {self.tokens[d.device_id]}"}
        for url in urls:
            with httpx.stream("GET", url, headers=headers, timeout=60) as r:
                r.raise_for_status()
                for _chunk in r.iter_bytes():
                    pass
        self._fetched.put((d, report, revision))

    def _report(self, d: Device, report: bytes, revision: int) -> None:
        d.outbuf += publish_packet(topic("reported", d.device_id), report, d.next_pid(), retain=True)
        self.received[d.device_id] = revision

    def pump(self, timeout: float = 0.0) -> None:
        while not self._fetched.empty():  # downloads done on the pool: report on this thread
            d, report, revision = self._fetched.get()
            self._report(d, report, revision)
            self._flush(d)
        for key, events in self.sel.select(timeout):
            d: Device = key.data
            if events & selectors.EVENT_READ:
                self._read(d)
            if d.outbuf or events & selectors.EVENT_WRITE:
                self._flush(d)

    def pump_until(self, pred, timeout: float) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise TimeoutError("the swarm did not get there in time")
            self.pump(0.01)

    def telemetry(self, rate: float, seconds: float) -> int:
        """Send telemetry at ``rate`` messages/s in total, round robin over the devices."""
        template = (
            '{"schema":1,"seq":%d,"time":%.3f,"interval_s":10,"cpu_percent":12.5,"memory_percent":40.1,'
            '"models":[{"name":"net","version":"1","requests":120,"errors":1,"latency_ms_p50":3.1,'
            '"latency_ms_p95":7.9}]}'
        )
        start = time.monotonic()
        sent = 0
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate) - sent
            for _ in range(max(due, 0)):
                d = self.devices[sent % len(self.devices)]
                d.seq += 1
                payload = (template % (d.seq, time.time())).encode()
                d.outbuf += publish_packet(topic("telemetry", d.device_id), payload, d.next_pid())
                self._flush(d)
                sent += 1
            self.pump(0.002)
        self.pump_until(lambda: all(not d.outbuf for d in self.devices), 30)
        return sent

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self.sel.close()


# ----------------------------------------------------------------------------- measurements


def counter(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    total = t.user + t.system
    for child in proc.children(recursive=True):
        ct = child.cpu_times()
        total += ct.user + ct.system
    return total


def register(api: httpx.Client, ids: list[str], tokens: dict[str, str] | None = None) -> dict[str, str]:
    """Register ``ids``; their broker passwords, and their API tokens into ``tokens`` if given."""
    creds = {}
    for d in ids:
        r = api.post("/api/v1/devices", json={"device_id": d, "profile": "x86-server"})
        r.raise_for_status()
        creds[d] = r.json()["mqtt_password"]
        if tokens is not None:
            tokens[d] = r.json()["token"]
    return creds


def measure_ingest(
    url: str, proc: psutil.Process, swarm: Swarm, rate: float, seconds: float
) -> dict[str, float]:
    before = counter(url, "edgefleet_telemetry_samples_stored_total")
    cpu0, t0 = cpu_seconds(proc), time.monotonic()
    sent = swarm.telemetry(rate, seconds)
    deadline = time.monotonic() + 60
    while (
        counter(url, "edgefleet_telemetry_samples_stored_total") - before < sent
        and time.monotonic() < deadline
    ):
        swarm.pump(0.05)
    stored = counter(url, "edgefleet_telemetry_samples_stored_total") - before
    wall = time.monotonic() - t0
    return {
        "sent": sent,
        "stored": stored,
        "wall_s": wall,
        "rate": stored / wall,
        "cpu_percent": 100 * (cpu_seconds(proc) - cpu0) / wall,
    }


def bench_mosquitto_alone(host: str, port: int, n: int, rate: float, seconds: float) -> dict[str, float]:
    swarm = Swarm(host, port)
    swarm.connect([f"raw-{i}" for i in range(n)], subscribe="none")
    swarm.add_counter(topic("telemetry"))
    swarm.pump(0.5)
    t0 = time.monotonic()
    sent = swarm.telemetry(rate, seconds)
    deadline = time.monotonic() + 30
    while swarm.counted < sent and time.monotonic() < deadline:
        swarm.pump(0.05)
    wall = time.monotonic() - t0
    swarm.close()
    return {"sent": sent, "delivered": swarm.counted, "rate": swarm.counted / wall}


def bench_fleet(
    args: argparse.Namespace, broker_url: str, host: str, port: int, work: Path
) -> dict[str, object]:
    from sdk import keys

    key = keys.generate_key()
    keys.save_keypair(key, work / "keys" / "signing")
    db = args.db or f"sqlite:///{work / 'fleet.db'}"
    token = admin_token(db)
    http_port = free_port()
    url = f"http://127.0.0.1:{http_port}"
    proc = subprocess.Popen(
        [str(BIN), *serve_args(work, db, broker_url, "--listen", f"127.0.0.1:{http_port}")],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "fleet.log", "wb"),  # noqa: SIM115
    )
    try:
        wait_http(url, proc, work / "fleet.log", timeout=60)
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        ids = [f"dev-{i:05d}" for i in range(args.devices)]
        tokens: dict[str, str] = {}
        register(api, ids, tokens)
        swarm = Swarm(host, port, tokens)
        swarm.connect(ids)
        ps = psutil.Process(proc.pid)
        ingest = measure_ingest(url, ps, swarm, args.rate, args.seconds)

        bundle = make_bundle(work / "bundles", key, version="1.0.0")
        with open(bundle, "rb") as f:
            b = api.post("/api/v1/bundles", files={"file": (bundle.name, f)}).json()
        t0 = time.monotonic()
        r = api.post(
            "/api/v1/rollouts", json={"bundle_id": b["id"], "strategy": {"max_in_flight": args.devices}}
        )
        r.raise_for_status()
        rid = r.json()["id"]
        state = "running"
        while state == "running" and time.monotonic() - t0 < 120:
            swarm.pump(0.05)
            state = api.get(f"/api/v1/rollouts/{rid}").json()["state"]
        rollout_s = time.monotonic() - t0
        swarm.close()
        return {
            "ingest": ingest,
            "rollout_s": rollout_s,
            "rollout_state": state,
            "desired_received": len(swarm.received),
        }
    finally:
        proc.terminate()
        proc.wait(10)


def bench_amqtt(work: Path, n: int, rates: list[float], seconds: float) -> list[dict[str, float]]:
    http_port, mqtt_port = free_port(), free_port()
    url = f"http://127.0.0.1:{http_port}"
    proc = subprocess.Popen(
        [
            str(BIN),
            "up",
            "--listen",
            f"127.0.0.1:{http_port}",
            "--mqtt-listen",
            f"127.0.0.1:{mqtt_port}",
            "--data-dir",
            str(work / "up"),
        ],
        stdout=subprocess.PIPE,
        stderr=open(work / "up.log", "wb"),  # noqa: SIM115 - the child keeps it
        text=True,
    )
    rows = []
    try:
        wait_http(url, proc, work / "up.log", timeout=60)
        assert proc.stdout is not None
        token = ""
        while not token.startswith("ef_"):
            token = proc.stdout.readline().strip()
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        ids = [f"amq-{i:05d}" for i in range(n)]
        creds = register(api, ids)
        swarm = Swarm("127.0.0.1", mqtt_port)
        swarm.connect(ids, creds)
        ps = psutil.Process(proc.pid)
        for rate in rates:
            res = measure_ingest(url, ps, swarm, rate, seconds)
            rows.append({"offered": rate, **res})
        swarm.close()
    finally:
        proc.terminate()
        proc.wait(10)
    return rows


def row(label: str, value: str) -> None:
    print(f"{label:<60} {value:>16}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--rate", type=float, default=2500.0, help="telemetry messages/s offered in total")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--db", help="fleet database URL (default: SQLite in a temporary folder)")
    p.add_argument("--amqtt-devices", type=int, default=500)
    p.add_argument("--amqtt-rates", default="250,500,1000")
    p.add_argument("--skip-amqtt", action="store_true")
    args = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    print(
        f"\nedge-fleet bench: {args.devices} devices, {args.rate:g} telemetry msg/s offered for {args.seconds:g} s,"
        f" {os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f}), db {'PostgreSQL' if args.db else 'SQLite'}\n"
    )
    row("measurement", "value")
    print("-" * 77)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        work = Path(tmp)
        with run_mosquitto(work / "mosquitto", extra_config="max_connections -1\n") as broker:
            alone = bench_mosquitto_alone(broker.host, broker.port, args.devices, args.rate, args.seconds)
            row("Mosquitto alone: telemetry msgs/s passed to 1 subscriber", f"{alone['rate']:.0f}")
            row("  delivered / sent", f"{alone['delivered']:.0f}/{alone['sent']:.0f}")
            fleet = bench_fleet(args, broker.url, broker.host, broker.port, work)
        ingest = fleet["ingest"]
        assert isinstance(ingest, dict)
        row("one fleet process: telemetry msgs/s ingested (incl. DB)", f"{ingest['rate']:.0f}")
        row("  stored / sent", f"{ingest['stored']:.0f}/{ingest['sent']:.0f}")
        row("  fleet process CPU while ingesting (% of one core)", f"{ingest['cpu_percent']:.0f}")
        row("  fleet ingest / Mosquitto alone", f"{ingest['rate'] / max(alone['rate'], 1):.2f}")
        row(
            f"rollout to {args.devices} devices: s until done ({fleet['rollout_state']})",
            f"{fleet['rollout_s']:.2f}",
        )
        if not args.skip_amqtt:
            rates = [float(r) for r in args.amqtt_rates.split(",")]
            try:
                for r in bench_amqtt(work, args.amqtt_devices, rates, min(args.seconds, 10)):
                    row(
                        f"amqtt (edge-fleet up), {args.amqtt_devices} devices, {r['offered']:g} msg/s offered",
                        f"{r['rate']:.0f} msg/s",
                    )
                    row(
                        "  stored / sent, CPU of the up process",
                        f"{r['stored']:.0f}/{r['sent']:.0f}, {r['cpu_percent']:.0f}%",
                    )
            except (ConnectionError, TimeoutError) as exc:
                row(f"amqtt (edge-fleet up), {args.amqtt_devices} devices", f"FAILED: {exc}")
                log = work / "up.log"
                if log.exists():
                    sys.stderr.write(log.read_text(errors="replace")[-2000:])


if __name__ == "__main__":
    main()
