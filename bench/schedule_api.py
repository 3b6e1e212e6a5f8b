"""Boots through the real API: ``POST /v1/servers`` until the server has its host and devices.

    .venv/bin/python bench/schedule_api.py [--hosts 1000] [--boots 1000] [--workers 1]
                                           [--clients 1] [--db URL] [--json]

Starts ``python -m pcipass.server`` (``--workers`` uvicorn workers) on a fresh SQLite file, or
on ``--db`` (its tables are migrated and the benchmark's hosts, aliases and flavors left there:
use a scratch database). Hosts are reported through ``PUT /v1/hosts/{host}/inventory`` with
the reports the demo's profiles give when discovered (gpu-server, sriov-nic-server,
storage-server, vmd-host); the reports are untimed. Then ``--clients`` threads boot a seeded
stream of mixed flavors (1 GPU, 4 GPUs over two NUMA nodes, 1 VF on physnet1, 2 NVMe, no PCI,
and some that fit nowhere) until ``--boots`` answers came back.

A boot's latency runs from sending the POST to holding a server with its host and claimed
devices (or its ERROR fault): in this issue the reply already carries them; a reply that does
not yet is polled with GET until it does. ``decisions_per_s`` is boots over the stream's wall
time. ``--json`` prints one object with ``p50_ms``, ``p99_ms`` and ``decisions_per_s`` (and
the run's parameters and outcome counts).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from pcipass.host.discovery import discover
from pcipass.host.profiles import (
    A100,
    CX6_VF,
    E810_VF,
    INTEL,
    MELLANOX,
    NVIDIA,
    PM9A3,
    SAMSUNG,
    build_host,
    suggested_device_spec,
)
from pcipass.pci.devspec import DeviceSpecSet, parse_device_spec
from pcipass.pci.inventory import Inventory, inventory_to_json

# profile -> share of the fleet
FLEET_MIX = {"gpu-server": 0.4, "sriov-nic-server": 0.3, "storage-server": 0.2, "vmd-host": 0.1}

ALIASES: list[dict[str, Any]] = [
    {"name": "bench-a100", "vendor_id": NVIDIA, "product_id": A100, "device_type": "type-PCI",
     "numa_policy": "preferred"},
    {"name": "bench-vf", "vendor_id": INTEL, "product_id": E810_VF, "device_type": "type-VF",
     "match": {"physical_network": "physnet1"}},
    {"name": "bench-vf", "vendor_id": MELLANOX, "product_id": CX6_VF, "device_type": "type-VF",
     "match": {"physical_network": "physnet1"}},
    {"name": "bench-nvme", "vendor_id": SAMSUNG, "product_id": PM9A3},
]

# flavor -> (extra specs, share of the stream)
FLAVORS: dict[str, tuple[dict[str, str], float]] = {
    "bench-gpu1": ({"pci_passthrough:alias": "bench-a100:1"}, 0.35),
    "bench-gpu4": ({"pci_passthrough:alias": "bench-a100:4", "hw:numa_nodes": "2"}, 0.10),
    "bench-vf1": ({"pci_passthrough:alias": "bench-vf:1"}, 0.25),
    "bench-nvme2": ({"pci_passthrough:alias": "bench-nvme:2"}, 0.10),
    "bench-plain": ({}, 0.15),
    "bench-never": ({"pci_passthrough:alias": "bench-a100:8"}, 0.05),  # no host has 8
}


@dataclass(slots=True)
class Run:
    url: str
    token: str
    latencies_s: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


# --- the server -------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def server(db_url: str, workdir: Path, workers: int) -> Iterator[tuple[str, str]]:
    """A control plane in a child process: (url, admin token); stopped on the way out."""
    token = secrets.token_urlsafe(32)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCIPASS_")}
    env.update({"PCIPASS_STATE_DIR": str(workdir / "state"), "PCIPASS_ADMIN_TOKEN": token})
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pcipass.server", "--db", db_url, "--listen",
             f"127.0.0.1:{port}", "--workers", str(workers)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited: {log_path.read_text()[-3000:]}")
            with suppress(httpx.TransportError):
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not come up: {log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url, token
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


# --- the fleet and the catalog ----------------------------------------------------------

def profile_reports(workdir: Path) -> dict[str, Inventory]:
    """One discovered inventory per profile, as its agent would report it."""
    out = {}
    for profile in FLEET_MIX:
        root = workdir / "hosts" / profile
        build_host(root, profile)
        specs = DeviceSpecSet(tuple(
            s for i, e in enumerate(suggested_device_spec(profile))
            for s in parse_device_spec(e, position=i)))
        found = discover(root)
        out[profile] = Inventory(host=found.host, devices=specs.apply(found.devices))
    return out


def fleet_plan(hosts: int) -> list[str]:
    """The profile of each host, in FLEET_MIX's shares."""
    plan: list[str] = []
    for profile, share in FLEET_MIX.items():
        plan += [profile] * round(hosts * share)
    plan = (plan + ["gpu-server"] * hosts)[:hosts]
    return plan


def report_fleet(http: httpx.Client, hosts: int, reports: dict[str, Inventory],
                 prefix: str) -> int:
    """PUT every host's report, eight at a time; the number of devices reported."""
    bodies = {p: {"generation": None, **inventory_to_json(inv)} for p, inv in reports.items()}

    def put(item: tuple[int, str]) -> int:
        i, profile = item
        reply = http.put(f"/v1/hosts/{prefix}-{i:05d}/inventory", json=bodies[profile])
        if reply.status_code != 200:
            raise SystemExit(f"report {i} refused: {reply.status_code} {reply.text}")
        return len(reports[profile].devices)

    with ThreadPoolExecutor(8) as pool:
        return sum(pool.map(put, enumerate(fleet_plan(hosts))))


def make_catalog(http: httpx.Client) -> None:
    for reply in (http.post("/v1/aliases", json=ALIASES),
                  *(http.post("/v1/flavors", json={"name": name, "vcpus": 4, "ram_mb": 8192,
                                                   "disk_gb": 20, "extra_specs": specs})
                    for name, (specs, _) in FLAVORS.items()),
                  http.post("/v1/images", json={"name": "bench-image",
                                                "source": "/images/bench.qcow2"})):
        if reply.status_code not in (201, 409):  # 409: left by an earlier run on --db
            raise SystemExit(f"catalog refused: {reply.status_code} {reply.text}")


def stream(boots: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = list(FLAVORS)
    return rng.choices(names, weights=[FLAVORS[n][1] for n in names], k=boots)


# --- booting -----------------------------------------------------------------------------

def _settled(server: dict[str, Any]) -> bool:
    """Placed (a host, and devices when it asked for some) or refused (a fault)."""
    if server["status"] == "ERROR":
        return True
    return server["host"] is not None


def boot_all(run: Run, flavors: Sequence[str], offset: int) -> None:
    """One client: boot each flavor in turn, timing each until the server is settled."""
    with httpx.Client(base_url=run.url, timeout=120,
                      headers={"Authorization": f"Bearer {run.token}"}) as http:
        for n, flavor in enumerate(flavors):
            start = time.perf_counter()
            reply = http.post("/v1/servers", json={"name": f"bench-{offset + n}",
                                                   "flavor": flavor, "image": "bench-image",
                                                   "project": "bench"})
            if reply.status_code != 202:
                raise SystemExit(f"boot refused: {reply.status_code} {reply.text}")
            server = reply.json()
            while not _settled(server):
                server = http.get(f"/v1/servers/{server['id']}").json()
            took = time.perf_counter() - start
            outcome = server["status"] if not server["not_granted"] else "not_granted"
            if server["fault"] and server["fault"]["message"].startswith("No host could be"):
                outcome = "ERROR(lost races)"  # every host it tried was taken meanwhile
            with run.lock:
                run.latencies_s.append(took)
                run.outcomes[f"{flavor}:{outcome}"] += 1


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--boots", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--clients", type=int, default=1, help="concurrent booting clients")
    parser.add_argument("--db", help="a scratch database URL (default: a fresh SQLite file)")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pcipass-bench-api-") as tmp:
        workdir = Path(tmp)
        db_url = args.db or f"sqlite:///{workdir / 'bench.db'}"
        reports = profile_reports(workdir)
        with server(db_url, workdir, args.workers) as (url, token):
            with httpx.Client(base_url=url, timeout=120,
                              headers={"Authorization": f"Bearer {token}"}) as http:
                t0 = time.perf_counter()
                devices = report_fleet(http, args.hosts, reports, f"b{secrets.token_hex(2)}")
                report_s = time.perf_counter() - t0
                make_catalog(http)
            run = Run(url, token)
            flavors = stream(args.boots, args.seed)
            share = [flavors[i::args.clients] for i in range(args.clients)]
            threads = [threading.Thread(target=boot_all, args=(run, part, i * args.boots))
                       for i, part in enumerate(share)]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - start

    ms = [s * 1000 for s in run.latencies_s]
    result = {
        "p50_ms": round(percentile(ms, 0.50), 2),
        "p99_ms": round(percentile(ms, 0.99), 2),
        "decisions_per_s": round(len(ms) / wall, 1) if wall else 0.0,
        "boots": len(ms),
        "hosts": args.hosts,
        "devices": devices,
        "workers": args.workers,
        "clients": args.clients,
        "db": db_url.split(":", 1)[0],
        "mean_ms": round(statistics.fmean(ms), 2) if ms else None,
        "max_ms": round(max(ms), 2) if ms else None,
        "report_s": round(report_s, 1),
        "outcomes": dict(sorted(run.outcomes.items())),
    }
    if len(ms) != args.boots:
        print(f"only {len(ms)} of {args.boots} boots answered", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{args.hosts} hosts ({devices} devices, reported in {report_s:.1f} s), "
          f"{len(ms)} boots through the API on {result['db']}, {args.workers} worker(s), "
          f"{args.clients} client(s)")
    print(f"  per boot: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, "
          f"max {result['max_ms']} ms; {result['decisions_per_s']} boots/s")
    for key, n in sorted(run.outcomes.items()):
        print(f"  {key}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
