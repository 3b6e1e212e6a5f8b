"""``pcipass demo``: a simulated fleet against a real control plane, end to end.

Everything runs for real except the hardware: the control plane is ``python -m pcipass.server``
on SQLite in a temporary directory, each host is a sysfs tree written from a bundled profile
(:mod:`pcipass.host.profiles`) with that profile's device spec, and each host's agent is the
real agent code, in a thread, talking HTTP with its own agent token.

The scenario is a list of named steps over one :class:`DemoRun`; later features add steps
(boot a server, free it, ...) without touching the ones before.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from pcipass import errors
from pcipass.agent.loop import Agent, stop_on_signals
from pcipass.agent.state import state_path
from pcipass.cli import render
from pcipass.cli.client import ApiClient, device_record, host_record, pool_record
from pcipass.cli.common import console as make_console
from pcipass.cli.discover import discover_inventory
from pcipass.cli.specs import SpecText, load_specs
from pcipass.host.pciids import PciIds
from pcipass.host.profiles import PROFILES, build_host, suggested_device_spec
from pcipass.pci.device import DevType
from pcipass.pci.devspec import DeviceSpecSet
from pcipass.records import DeviceRecord

SERVER_START_TIMEOUT_S = 60.0
BRIDGE_CLASS = "0604"
LIVE_INTERVAL_S = 30.0  # agents' report interval while the demo keeps serving


@dataclass
class SimHost:
    name: str
    profile: str
    root: Path
    specs: DeviceSpecSet
    spec_entries: list[dict[str, str]]
    token: str | None = None
    agent: Agent | None = None


@dataclass
class DemoRun:
    """Everything the steps share."""

    workdir: Path
    console: Console
    hosts_per_profile: int = 1
    once: bool = True
    url: str = ""
    admin_token: str = ""
    server: subprocess.Popen[bytes] | None = None
    server_log: Path | None = None
    hosts: list[SimHost] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    pci_ids: PciIds = field(default_factory=PciIds.load)

    def admin(self) -> ApiClient:
        return ApiClient(self.url, self.admin_token)


Step = Callable[[DemoRun], None]


# --- the control plane ---------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_control_plane(run: DemoRun) -> None:
    """``python -m pcipass.server`` on SQLite in the work dir, with a fresh admin token."""
    run.admin_token = secrets.token_urlsafe(32)
    port = _free_port()
    run.url = f"http://127.0.0.1:{port}"
    db = f"sqlite:///{run.workdir / 'pcipass.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCIPASS_")}
    env.update(PCIPASS_ADMIN_TOKEN=run.admin_token, PCIPASS_STATE_DIR=str(run.workdir / "state"))
    run.server_log = run.workdir / "server.log"
    with run.server_log.open("wb") as out:
        run.server = subprocess.Popen(
            [sys.executable, "-m", "pcipass.server", "--db", db,
             "--listen", f"127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # Ctrl-C reaches us; we stop the server ourselves
        )
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    with ApiClient(run.url, None, timeout=1.0) as probe:
        while True:
            if run.server.poll() is not None:
                raise errors.InfrastructureError(
                    f"the control plane exited with {run.server.returncode}:\n"
                    f"{_tail(run.server_log)}")
            try:
                probe.health()
                break
            except errors.ServerUnreachable:
                if time.monotonic() > deadline:
                    raise errors.InfrastructureError(
                        f"the control plane did not answer within {SERVER_START_TIMEOUT_S:.0f}s"
                        f":\n{_tail(run.server_log)}") from None
                time.sleep(0.05)
    run.console.print(f"control plane up at [bold]{run.url}[/] (SQLite {db.removeprefix('sqlite:///')})")


def stop_control_plane(run: DemoRun) -> None:
    proc = run.server
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- steps ---------------------------------------------------------------------------------

def build_hosts(run: DemoRun) -> None:
    """A sysfs tree per simulated host, and the device spec its operator would write."""
    table = Table(title="Simulated hosts", title_justify="left")
    for name in ("host", "profile", "PCI functions", "device_spec"):
        table.add_column(name, overflow="fold")
    for profile in PROFILES.values():
        entries = suggested_device_spec(profile.name)
        texts = [SpecText(f"{profile.name} device_spec[{i}]", json.dumps(e))
                 for i, e in enumerate(entries)]
        specs = load_specs(texts)
        for index in range(run.hosts_per_profile):
            name = f"{profile.name}-{index + 1}"
            root = run.workdir / "hosts" / name
            tree = build_host(root, profile.name, index=index)
            run.hosts.append(SimHost(name, profile.name, root, specs, entries))
            table.add_row(name, f"{profile.name}: {profile.description}",
                          str(len(tree.addresses)), "\n".join(json.dumps(e) for e in entries))
    run.console.print(table)


def issue_agent_tokens(run: DemoRun) -> None:
    """One agent token per host: an agent may write only its own host's inventory."""
    with run.admin() as admin:
        for host in run.hosts:
            host.token = str(admin.create_token("agent", host=host.name)["token"])
    run.console.print(f"issued {len(run.hosts)} agent tokens")


def _make_agent(run: DemoRun, host: SimHost) -> Agent:
    client = ApiClient(run.url, host.token)
    return Agent(
        client=client, host=host.name,
        discover=lambda: discover_inventory(host.root, host.specs, pci_ids=run.pci_ids,
                                            hostname=host.name),
        state_file=state_path(run.workdir / "agents", host.name),
        interval=LIVE_INTERVAL_S, poll=2.0, stop=run.stop,
    )


def run_agents(run: DemoRun) -> None:
    """Every host's agent discovers and reports once, four at a time, as a fleet would."""
    started = time.monotonic()
    for host in run.hosts:
        host.agent = _make_agent(run, host)

    def report(host: SimHost) -> bool:
        assert host.agent is not None
        return host.agent.run_once()

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(report, run.hosts))
    failed = [h.name for h, ok in zip(run.hosts, results, strict=True) if not ok]
    if failed:
        raise errors.InfrastructureError(f"agents of {', '.join(failed)} could not report "
                                         f"(see the messages above)")
    run.console.print(f"{len(run.hosts)} agents reported in "
                      f"{time.monotonic() - started:.2f}s")


def show_fleet(run: DemoRun) -> None:
    """What the control plane now knows: hosts, and pools with their free/total counts."""
    with run.admin() as admin:
        hosts = [host_record(h) for h in admin.hosts().items]
        pools = [pool_record(p) for p in admin.pools().items]
    run.console.print(render.hosts_table(hosts, title="Hosts (GET /v1/hosts)"))
    run.console.print(render.pools_table(pools, title="Pools (GET /v1/pools)",
                                         name_of=run.pci_ids.name))


def show_facts(run: DemoRun) -> None:
    """A few things discovery found that an operator must know before passing devices."""
    with run.admin() as admin:
        records = [device_record(d) for d in admin.devices().items]
    for line in notable_facts(records, run.pci_ids.name):
        run.console.print(f"- {line}", highlight=False)


def notable_facts(records: Sequence[DeviceRecord],
                  name_of: Callable[[str, str], str | None]) -> list[str]:
    """Plain sentences about the fleet: display GPUs sharing an IOMMU group with their audio
    function, VMD-hidden devices without an IOMMU group, VFs per physical network."""
    facts: list[str] = []
    groups: dict[tuple[str, int], list[DeviceRecord]] = defaultdict(list)
    for r in records:
        if r.device.iommu_group is not None:
            groups[(r.host, r.device.iommu_group)].append(r)
    for (host, group), members in sorted(groups.items()):
        gpus = [m for m in members if m.device.class_code.startswith("03")]
        audio = [m for m in members if m.device.class_code.startswith("0403")]
        if gpus and audio:
            gpu = gpus[0].device
            facts.append(
                f"{host}: IOMMU group {group} holds GPU {gpu.address} "
                f"({name_of(gpu.vendor_id, gpu.product_id) or gpu.product_id}) and its audio "
                f"function {', '.join(str(a.device.address) for a in audio)}: VFIO assigns "
                "them together, as one unit")
    hidden: dict[str, list[DeviceRecord]] = defaultdict(list)
    for r in records:
        d = r.device
        if d.address.domain > 0xFFFF and d.iommu_group is None \
                and not d.class_code.startswith(BRIDGE_CLASS):
            hidden[r.host].append(r)
    for host, members in sorted(hidden.items()):
        domains = sorted({f"{m.device.address.domain:x}" for m in members})
        selected = sum(1 for m in members if m.device.assignable)
        facts.append(
            f"{host}: {', '.join(str(m.device.address) for m in members)} sit behind Intel "
            f"VMD (domain {', '.join(domains)}) with no IOMMU group; the device spec selects "
            f"{selected} of them, but VFIO cannot isolate them")
    vfs: Counter[tuple[str, str]] = Counter()
    free: Counter[tuple[str, str]] = Counter()
    for r in records:
        net = r.device.tags.get("physical_network")
        if r.device.dev_type is DevType.VF and net:
            vfs[(r.host, net)] += 1
            free[(r.host, net)] += r.state.value == "available"
    for (host, net), n in sorted(vfs.items()):
        facts.append(f"{host}: {n} VFs on {net} ({free[(host, net)]} available)")
    if not facts:
        facts.append("nothing unusual")
    return facts


SCENARIO: tuple[tuple[str, Step], ...] = (
    ("Start the control plane", start_control_plane),
    ("Build simulated hosts", build_hosts),
    ("Issue agent tokens", issue_agent_tokens),
    ("Run each host's agent", run_agents),
    ("What the fleet offers", show_fleet),
    ("What to know about it", show_facts),
)


# --- running it ----------------------------------------------------------------------------

def keep_serving(run: DemoRun) -> None:
    """Agents keep reporting in the background until Ctrl-C; say how to look around."""
    with stop_on_signals(run.stop):
        threads = []
        for host in run.hosts:
            assert host.agent is not None
            t = threading.Thread(target=host.agent.run, name=f"agent-{host.name}", daemon=True)
            t.start()
            threads.append(t)
        c = run.console
        c.print(Rule("The fleet keeps running", align="left"))
        c.print(f"control plane: [bold]{run.url}[/]   admin token: [bold]{run.admin_token}[/]")
        c.print("try, in another terminal:")
        c.print(f"  export PCIPASS_URL={run.url} PCIPASS_TOKEN={run.admin_token}")
        c.print("  pcipass device list --host gpu-server-1\n  pcipass pool list")
        c.print(f"hosts' sysfs trees are under {run.workdir / 'hosts'}; agents re-discover "
                f"every 2s and report every {LIVE_INTERVAL_S:.0f}s. Ctrl-C stops everything.")
        run.stop.wait()
    c.print("stopping the agents and the control plane")
    for t in threads:
        t.join(timeout=15)


def run_demo(*, once: bool, hosts_per_profile: int = 1,
             steps: Sequence[tuple[str, Step]] = SCENARIO,
             console: Console | None = None) -> int:
    """Run the scenario; 0 when every step succeeded."""
    out = console or make_console()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pcipass-demo-") as tmp:
        run = DemoRun(workdir=Path(tmp), console=out, hosts_per_profile=hosts_per_profile,
                      once=once)
        try:
            for number, (title, step) in enumerate(steps, start=1):
                out.print(Rule(f"{number}. {title}", align="left"))
                step(run)
            out.print(f"\ndemo finished in {time.monotonic() - started:.1f}s")
            if not once:
                keep_serving(run)
        except errors.PcipassError as exc:
            out.print(f"[bold red]demo failed:[/] {exc.message}", highlight=False)
            return 1
        except KeyboardInterrupt:
            return 130
        finally:
            run.stop.set()
            for host in run.hosts:
                if host.agent is not None:
                    host.agent.client.close()
            stop_control_plane(run)
    return 0
