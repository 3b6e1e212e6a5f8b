"""``pcipass demo``: a simulated fleet against a real control plane, end to end.

Everything runs for real except the hardware: the control plane is ``python -m pcipass.server``
on SQLite in a temporary directory, each host is a sysfs tree written from a bundled profile
(:mod:`pcipass.host.profiles`) with that profile's device spec, and each host's agent is the
real agent code, in a thread, talking HTTP with its own agent token.

The scenario is a list of named steps over one :class:`DemoRun`; later features add steps
without touching the ones before. After the fleet reports, an operator defines aliases, flavors,
images and a project's quota, and a tenant boots servers: some land on NUMA-local devices, some
are refused (over quota, an image that cannot drive the device, a private flavor), one cannot be
placed and says why. Each host's agent also runs its task loop with the fake virt driver
(domains, boot disks and task journals in the host's own state dir), so booted servers go
from BUILDING to ACTIVE, and a deleted one to DELETED, through the real agent code.
Then running servers change: a device is hot-plugged and out again, a server is
cold-migrated with its disk, another live-migrated off a host being drained, and one deleted
in the middle of a move; a second GPU and SR-IOV host join the fleet to take them.
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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

from pcipass import errors
from pcipass.agent.loop import Agent, stop_on_signals, wait_until_stopped
from pcipass.agent.ports import SriovKind, make_programmer
from pcipass.agent.state import state_path
from pcipass.agent.tasks import TaskRunner
from pcipass.cli import render
from pcipass.cli.agent import (
    disk_overlays,
    host_cpus,
    migration_uri,
    virt_type,
    with_migration_uri,
)
from pcipass.cli.client import (
    JSON,
    ApiClient,
    alias_record,
    device_record,
    event_record,
    flavor_record,
    host_record,
    image_record,
    network_record,
    pool_record,
    port_record,
    quota_record,
    server_record,
    usage_record,
)
from pcipass.cli.common import console as make_console
from pcipass.cli.discover import discover_inventory
from pcipass.cli.servers import placement_line, settled
from pcipass.cli.specs import SpecText, load_specs
from pcipass.host.pciids import PciIds
from pcipass.host.profiles import PROFILES, build_host, suggested_aliases, suggested_device_spec
from pcipass.host.sriov import RecordingVfProgrammer, VfSlot
from pcipass.net.switch import LogSwitchDriver
from pcipass.pci.device import DevType
from pcipass.pci.devspec import DeviceSpecSet
from pcipass.records import DeviceRecord, DeviceState, MoveStatus, PoolRecord, PortRecord
from pcipass.store.moves import DELETED_MID_MOVE
from pcipass.virt.driver import DriverKind, open_driver
from pcipass.virt.payload import overlay_path

SERVER_START_TIMEOUT_S = 60.0
BRIDGE_CLASS = "0604"
LIVE_INTERVAL_S = 30.0  # agents' report interval while the demo keeps serving
TASK_WAIT_S = 2.0  # task loops' long poll: short, so stopping the demo is quick
SETTLE_TIMEOUT_S = 20.0  # how long the demo waits for agents to start or destroy servers
SETTLE_POLL_S = 0.1
T = TypeVar("T")


@dataclass
class SimHost:
    name: str
    profile: str
    root: Path
    specs: DeviceSpecSet
    spec_entries: list[dict[str, str]]
    token: str | None = None
    agent: Agent | None = None
    tasks: TaskRunner | None = None
    task_thread: threading.Thread | None = None
    vfs: RecordingVfProgrammer | None = None  # the host's PFs as the fake VF programmer keeps them
    switch: LogSwitchDriver = field(default_factory=LogSwitchDriver)


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
    member_token: str = ""  # the tenant's: a member of TENANT
    servers: dict[str, JSON] = field(default_factory=dict)  # booted, by name, as last seen
    surprises: list[str] = field(default_factory=list)  # outcomes the scenario did not expect

    def admin(self) -> ApiClient:
        return ApiClient(self.url, self.admin_token)

    def member(self) -> ApiClient:
        return ApiClient(self.url, self.member_token)

    def surprise(self, text: str) -> None:
        self.surprises.append(text)
        self.console.print(f"  [bold yellow]unexpected:[/] {escape(text)}", highlight=False)


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

def _profile_specs(profile: str) -> tuple[list[dict[str, str]], DeviceSpecSet]:
    """The device spec an operator would write for ``profile``'s hosts, and its parse."""
    entries = suggested_device_spec(profile)
    texts = [SpecText(f"{profile} device_spec[{i}]", json.dumps(e))
             for i, e in enumerate(entries)]
    return entries, load_specs(texts)


def _build_host(run: DemoRun, profile: str, index: int) -> tuple[SimHost, int]:
    """Host number ``index`` of ``profile``: its sysfs tree, and how many PCI functions."""
    entries, specs = _profile_specs(profile)
    name = f"{profile}-{index + 1}"
    root = run.workdir / "hosts" / name
    tree = build_host(root, profile, index=index)
    host = SimHost(name, profile, root, specs, entries)
    run.hosts.append(host)
    return host, len(tree.addresses)


def build_hosts(run: DemoRun) -> None:
    """A sysfs tree per simulated host, and the device spec its operator would write."""
    table = Table(title="Simulated hosts", title_justify="left")
    for name in ("host", "profile", "PCI functions", "device_spec"):
        table.add_column(name, overflow="fold")
    for profile in PROFILES.values():
        for index in range(run.hosts_per_profile):
            host, functions = _build_host(run, profile.name, index)
            table.add_row(host.name, f"{profile.name}: {profile.description}", str(functions),
                          "\n".join(json.dumps(e) for e in host.spec_entries))
    run.console.print(table)


def issue_agent_tokens(run: DemoRun) -> None:
    """One agent token per host: an agent may write only its own host's inventory."""
    with run.admin() as admin:
        for host in run.hosts:
            host.token = str(admin.create_token("agent", host=host.name)["token"])
    run.console.print(f"issued {len(run.hosts)} agent tokens")


def _state_dir(run: DemoRun, host: SimHost) -> Path:
    """The host's agent state: the fake driver's domains, boot disks and task journals."""
    return run.workdir / "state" / host.name


def _make_agent(run: DemoRun, host: SimHost) -> Agent:
    """The host's reporting agent; it reports the fake driver's migration URI, as ``pcipass
    agent --driver fake`` does, so that other hosts can live-migrate guests to it."""
    client = ApiClient(run.url, host.token)
    uri = migration_uri(DriverKind.FAKE, _state_dir(run, host), host.name)
    return Agent(
        client=client, host=host.name,
        discover=lambda: with_migration_uri(
            discover_inventory(host.root, host.specs, pci_ids=run.pci_ids, hostname=host.name),
            uri),
        state_file=state_path(run.workdir / "agents", host.name),
        interval=LIVE_INTERVAL_S, poll=2.0, stop=run.stop,
    )


def _make_tasks(run: DemoRun, host: SimHost, agent: Agent) -> TaskRunner:
    """The host's task loop, as ``pcipass agent --driver fake`` builds it, in its own state
    dir (the fake driver's domains, boot disks and task journals live there)."""
    state_dir = _state_dir(run, host)
    programmer = make_programmer(SriovKind.FAKE, agent.discover)
    assert isinstance(programmer, RecordingVfProgrammer)
    host.vfs = programmer
    return TaskRunner(
        client=ApiClient(run.url, host.token), host=host.name, state_dir=state_dir,
        open_driver=lambda: open_driver(DriverKind.FAKE, state_dir=state_dir),
        overlays=disk_overlays(DriverKind.FAKE, state_dir),
        host_cpus=lambda: host_cpus(agent.discover()),
        wait=TASK_WAIT_S, virt_type=virt_type(DriverKind.FAKE), stop=run.stop,
        programmer=programmer, switch=host.switch,
    )


def _start_task_loop(run: DemoRun, host: SimHost) -> None:
    assert host.agent is not None
    host.tasks = _make_tasks(run, host, host.agent)
    host.task_thread = threading.Thread(target=host.tasks.run, name=f"tasks-{host.name}",
                                        daemon=True)
    host.task_thread.start()


def start_task_loops(run: DemoRun) -> None:
    """Each host's task loop in a thread, for the rest of the demo."""
    for host in run.hosts:
        _start_task_loop(run, host)


def stop_task_loops(run: DemoRun, grace: float = TASK_WAIT_S + 3.0) -> None:
    """Wait (a little) for the task loops to leave their long polls, then close them."""
    run.stop.set()
    deadline = time.monotonic() + grace
    for host in run.hosts:
        if host.task_thread is not None:
            host.task_thread.join(timeout=max(deadline - time.monotonic(), 0.0))
        if host.tasks is not None and isinstance(host.tasks.client, ApiClient):
            host.tasks.client.close()


def run_agents(run: DemoRun) -> None:
    """Every host's agent discovers and reports once, four at a time, as a fleet would;
    then each host's task loop starts (fake virt driver) to run what is placed there."""
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
    start_task_loops(run)
    run.console.print(f"{len(run.hosts)} task loops polling for spawn and destroy tasks "
                      f"(fake virt driver, state under {run.workdir / 'state'})")


def join_host(run: DemoRun, profile: str) -> SimHost:
    """Another host of ``profile`` joins the running fleet, as a new machine would: its
    sysfs tree, an agent token, a first report, its task loop."""
    index = sum(h.profile == profile for h in run.hosts)
    host, functions = _build_host(run, profile, index)
    with run.admin() as admin:
        host.token = str(admin.create_token("agent", host=host.name)["token"])
    host.agent = _make_agent(run, host)
    if not host.agent.run_once():
        raise errors.InfrastructureError(f"the agent of {host.name} could not report "
                                         "(see the messages above)")
    _start_task_loop(run, host)
    run.console.print(f"[bold]{host.name}[/] joins the fleet: {functions} PCI functions, its "
                      "agent reported (with its migration URI), its task loop polls",
                      highlight=False)
    return host


def _other_host(run: DemoRun, profile: str, than: str) -> SimHost:
    """A host of ``profile`` other than ``than``; one joins the fleet when there is none."""
    found = next((h for h in run.hosts if h.profile == profile and h.name != than), None)
    return found if found is not None else join_host(run, profile)


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
        run.console.print(f"- {escape(line)}", highlight=False)


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


# --- the catalog: aliases, flavors, images, a tenant and its quota ---------------------------

TENANT = "ml-team"  # the member project that boots
OTHER_PROJECT = "render-farm"  # holds a private flavor the tenant must not see
OPS_PROJECT = "ops"  # the admin boots here: no quota, to show a boot that cannot be placed
TENANT_A100_QUOTA = 3

VF_ALIAS: dict[str, object] = {  # beyond Nova: any VF tagged physnet1 by the device spec
    "name": "vf-physnet1", "device_type": "type-VF", "match": {"physical_network": "physnet1"}}
TYPO_ALIAS: dict[str, object] = {"name": "vf-typo", "device_type": "type-VF",
                                 "physical_netwrok": "physnet1"}


@dataclass(frozen=True, slots=True)
class FlavorSpec:
    name: str
    vcpus: int
    ram_mb: int
    extra_specs: dict[str, str]
    what: str
    projects: tuple[str, ...] = ()  # a private flavor's projects

    @property
    def is_public(self) -> bool:
        return not self.projects


FLAVORS: tuple[FlavorSpec, ...] = (
    FlavorSpec("gpu.small", 8, 32768, {
        "pci_passthrough:alias": "a100:1", "hw:numa_nodes": "1",
        "hw:pci_numa_affinity_policy": "required"}, "1 x A100 on the guest's NUMA node"),
    FlavorSpec("gpu.large", 16, 65536, {
        "pci_passthrough:alias": "a100:2", "hw:numa_nodes": "1",
        "hw:pci_numa_affinity_policy": "required"}, "2 x A100, both on the guest's NUMA node"),
    FlavorSpec("gpu.quad", 32, 131072, {
        "pci_passthrough:alias": "a100:4", "hw:numa_nodes": "1",
        "hw:pci_numa_affinity_policy": "required"},
        "4 x A100 on one NUMA node: no host has that many on one node"),
    FlavorSpec("nvme.1", 4, 8192, {"pci_passthrough:alias": "nvme-pm9a3:1"},
               "1 x PM9A3 NVMe drive"),
    FlavorSpec("net.vf", 2, 4096, {"pci_passthrough:alias": "vf-physnet1:1"},
               "1 VF on physnet1"),
    FlavorSpec("render.a6000", 8, 32768, {"pci_passthrough:alias": "a6000:1"},
               f"1 x RTX A6000, private to {OTHER_PROJECT}", projects=(OTHER_PROJECT,)),
)
BAD_FLAVOR = FlavorSpec("gpu.h100", 8, 32768, {"pci_passthrough:alias": "h100:1"},
                        "asks for an alias nobody defined")

CUDA_IMAGE = "ubuntu-22.04-cuda"
PLAIN_IMAGE = "debian-12"
IMAGES: tuple[tuple[str, str, dict[str, str]], ...] = (  # name, file under workdir/images
    (CUDA_IMAGE, "ubuntu-22.04-cuda.qcow2", {"hw_pci_supported_aliases": "a100,a6000"}),
    (PLAIN_IMAGE, "debian-12.qcow2", {}),
)


def _refused(what: str, exc: errors.PcipassError) -> str:
    """Markup: what was refused, the error's code and message (escaped)."""
    return f"{escape(what)} [red]refused[/] {escape(f'[{exc.code}]: {exc.message}')}"


def define_aliases(run: DemoRun) -> None:
    """The profiles' suggested Nova aliases, one that only our ``match`` can say, one typo."""
    entries: list[object] = [e for p in PROFILES for e in suggested_aliases(p)]
    c = run.console
    with run.admin() as admin:
        made = admin.create_aliases([*entries, VF_ALIAS])
        c.print(f"POST /v1/aliases with {len(entries) + 1} Nova alias entries: "
                f"{', '.join(a['name'] for a in made)}", highlight=False)
        try:
            admin.create_aliases(TYPO_ALIAS)
        except errors.InvalidInput as exc:
            c.print("- " + _refused(f"alias {TYPO_ALIAS['name']}", exc), highlight=False)
        else:
            run.surprise(f"alias {TYPO_ALIAS['name']} with an unknown key was accepted")
        listed = [alias_record(a) for a in admin.aliases().items]
    c.print(render.aliases_table(listed, title="PCI aliases (GET /v1/aliases)"))


def create_catalog(run: DemoRun) -> None:
    """Flavors that ask for devices (Nova's extra specs), and images that say what they drive."""
    c = run.console
    with run.admin() as admin:
        for f in FLAVORS:
            admin.create_flavor(name=f.name, vcpus=f.vcpus, ram_mb=f.ram_mb, disk_gb=20,
                                extra_specs=f.extra_specs, is_public=f.is_public,
                                projects=f.projects)
        try:
            admin.create_flavor(name=BAD_FLAVOR.name, vcpus=BAD_FLAVOR.vcpus,
                                ram_mb=BAD_FLAVOR.ram_mb, disk_gb=20,
                                extra_specs=BAD_FLAVOR.extra_specs)
        except errors.InvalidInput as exc:
            c.print("- " + _refused(f"flavor {BAD_FLAVOR.name}", exc), highlight=False)
        else:
            run.surprise(f"flavor {BAD_FLAVOR.name} naming an unknown alias was accepted")
        images_dir = run.workdir / "images"  # the fake driver, like libvirt, needs the source
        images_dir.mkdir(parents=True, exist_ok=True)
        for name, filename, props in IMAGES:
            source = images_dir / filename
            source.write_bytes(b"")
            admin.create_image(name=name, source=str(source), properties=props)
        flavors = [flavor_record(f) for f in admin.flavors().items]
        images = [image_record(i) for i in admin.images().items]
    c.print(render.flavors_table(flavors, title="Flavors (GET /v1/flavors)"))
    c.print(render.images_table(images, title="Images (GET /v1/images)"))


def tenant_and_quota(run: DemoRun) -> None:
    """A member token for the tenant's project, and a quota on the devices it may hold."""
    with run.admin() as admin:
        run.member_token = str(admin.create_token("member", project=TENANT)["token"])
        admin.set_quota(TENANT, "a100", TENANT_A100_QUOTA)
    with run.member() as member:
        visible = [f["name"] for f in member.flavors().items]
        quotas = [quota_record(q) for q in member.quotas().items]
    run.console.print(f"member token issued for project [bold]{TENANT}[/]; the flavors it "
                      f"sees: {', '.join(visible)}", highlight=False)
    run.console.print(render.quotas_table(quotas, title=f"{TENANT}'s quotas, as it sees them"))


# --- booting -------------------------------------------------------------------------------

PLACED = "placed"  # BUILDING (or further) on a host, devices claimed
NOT_PLACED = "ERROR"  # accepted, but no host fits: ERROR with the scheduler's explanation


@dataclass(frozen=True, slots=True)
class Boot:
    """One boot of the scenario, and what it should come to: PLACED, NOT_PLACED, or the code
    of the error the API refuses it with."""

    name: str
    flavor: str
    image: str
    why: str
    expect: str = PLACED
    as_admin: bool = False  # in OPS_PROJECT; otherwise the tenant's member token


BOOTS: tuple[Boot, ...] = (
    Boot("big-1", "gpu.quad", CUDA_IMAGE, "4 x A100 on one NUMA node (the GPU server has 4, "
         f"2 per node), as admin in project {OPS_PROJECT}", expect=NOT_PLACED, as_admin=True),
    Boot("train-1", "gpu.large", CUDA_IMAGE, "2 x A100 on one NUMA node"),
    Boot("infer-1", "gpu.small", CUDA_IMAGE, "1 x A100 local to the guest's NUMA node"),
    Boot("infer-2", "gpu.small", CUDA_IMAGE,
         f"a 4th A100 for {TENANT}, whose quota is {TENANT_A100_QUOTA}",
         expect="quota_exceeded"),
    Boot("db-1", "nvme.1", CUDA_IMAGE, f"an NVMe drive on {CUDA_IMAGE}, which only drives "
         "a100 and a6000", expect="alias_not_supported_by_image"),
    Boot("db-2", "nvme.1", PLAIN_IMAGE, "the same NVMe drive on an image that does not say"),
    Boot("edge-1", "net.vf", PLAIN_IMAGE, "a VF on physnet1"),
    Boot("render-1", "render.a6000", CUDA_IMAGE,
         f"{OTHER_PROJECT}'s private flavor: {TENANT} cannot even see it", expect="not_found"),
)


def _numa_note(obj: JSON) -> str:
    s = server_record(obj)
    nodes = {d.numa_node for d in s.devices if d.alias is not None and d.numa_node is not None}
    if not s.numa_cells or not nodes:
        return ""
    local = nodes <= set(s.numa_cells)
    where = ",".join(str(n) for n in s.numa_cells)
    return (f" [green](NUMA-local: guest on host node {where})[/]" if local
            else f" [red](devices on nodes {','.join(map(str, sorted(nodes)))}, guest on "
                 f"{where})[/]")


def boot(run: DemoRun, case: Boot) -> str:
    """Boot one server; print and return its outcome (PLACED, NOT_PLACED or an error code)."""
    c = run.console
    c.print(f"[bold]{case.name}[/] ({case.flavor} on {case.image}): {case.why}",
            highlight=False)
    client = run.admin() if case.as_admin else run.member()
    try:
        with client:
            obj = client.create_server(name=case.name, flavor=case.flavor, image=case.image,
                                       project=OPS_PROJECT if case.as_admin else None)
    except errors.PcipassError as exc:
        c.print(f"  {_refused(case.name, exc)}", highlight=False)
        outcome = exc.code
    else:
        run.servers[case.name] = obj
        outcome = NOT_PLACED if obj.get("status") == NOT_PLACED else PLACED
        colour = "red" if outcome == NOT_PLACED else "green"
        c.print(f"  [{colour}]{escape(placement_line(obj))}[/]{_numa_note(obj)}",
                highlight=False)
    if outcome != case.expect:
        run.surprise(f"{case.name}: expected {case.expect}, got {outcome}")
    return outcome


def _boot_pools(run: DemoRun, admin: ApiClient, title: str) -> None:
    """Pools of the hosts the boots draw on (GPU, storage and NIC hosts)."""
    profiles = {"gpu-server", "storage-server", "sriov-nic-server"}
    hosts = {h.name for h in run.hosts if h.profile in profiles}

    def shown(p: PoolRecord) -> bool:  # what the flavors ask for: no PFs, physnet1's VFs
        return p.host in hosts and p.dev_type is not DevType.PF and (
            p.dev_type is not DevType.VF or p.tags.get("physical_network") == "physnet1")

    pools = [p for p in (pool_record(obj) for obj in admin.pools().items) if shown(p)]
    run.console.print(render.pools_table(pools, title=title, name_of=run.pci_ids.name))


def boot_servers(run: DemoRun) -> None:
    """The tenant (and once the admin) boots; refusals are answers too."""
    with run.admin() as admin:
        _boot_pools(run, admin, "Pools before booting")
    for case in BOOTS:
        boot(run, case)


EXPLAINED: tuple[tuple[str, str], ...] = (("gpu.quad", CUDA_IMAGE), ("gpu.small", CUDA_IMAGE))


def explain_boots(run: DemoRun) -> None:
    """What the scheduler would do now, host by host, without booting (admin only)."""
    with run.admin() as admin:
        for flavor, image in EXPLAINED:
            run.console.print(escape(f'POST /v1/scheduler/explain {{"flavor": "{flavor}", '
                                     f'"image": "{image}"}}'), highlight=False)
            run.console.print(render.explain_view(admin.explain(flavor=flavor, image=image)))


def _poll(fetch: Callable[[], T], done: Callable[[T], bool],
          timeout: float = SETTLE_TIMEOUT_S) -> T:
    """Fetch until ``done`` holds of it, or ``timeout`` passes: the last value fetched
    (the agents run their tasks in their own threads, so the demo waits, bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(SETTLE_POLL_S)


def _wait_server(admin: ApiClient, server_id: str, done: Callable[[JSON], bool],
                 timeout: float = SETTLE_TIMEOUT_S) -> JSON | None:
    """Poll a server until ``done(server)`` (bounded); its last state, None once gone."""
    def fetch() -> JSON | None:
        try:
            return admin.server(server_id)
        except errors.NotFound:
            return None

    return _poll(fetch, lambda obj: obj is None or done(obj), timeout)


def _wait_status(admin: ApiClient, server_id: str, done: Callable[[str], bool],
                 timeout: float = SETTLE_TIMEOUT_S) -> JSON | None:
    """Poll a server until ``done(status)`` (bounded); its last state, None once gone."""
    return _wait_server(admin, server_id, lambda obj: done(str(obj.get("status"))), timeout)


def start_servers(run: DemoRun, names: Sequence[str] | None = None) -> None:
    """The hosts' task loops run the spawn tasks: each placed server (of ``names``, default
    all) leaves BUILDING."""
    c = run.console
    started = time.monotonic()
    with run.admin() as admin:
        for name, obj in list(run.servers.items()):
            if obj.get("host") is None or (names is not None and name not in names):
                continue  # never placed: no host has a task for it
            last = _wait_status(admin, str(obj["id"]), lambda s: s != "BUILDING")
            if last is None:
                run.surprise(f"{name} vanished while it was building")
                continue
            run.servers[name] = last
            status = str(last.get("status"))
            colour = "green" if status == "ACTIVE" else "red"
            fault = f": {last.get('fault')}" if last.get("fault") else ""
            c.print(f"  {escape(name)} on {escape(str(last.get('host')))}: "
                    f"[{colour}]{escape(status)}[/]{escape(fault)}", highlight=False)
            if status != "ACTIVE":
                run.surprise(f"{name} is {status} after its host's agent ran its spawn task")
    c.print(f"agents started the servers in {time.monotonic() - started:.2f}s")


XML_SERVER = "train-1"  # a GPU server whose domain XML the demo shows


def show_servers(run: DemoRun) -> None:
    """Servers, the pools they drew from, a GPU server's hostdevs, the tenant's quota now."""
    with run.admin() as admin:
        servers = [server_record(s) for s in admin.servers().items]
        run.console.print(render.servers_table(servers, title="Servers (GET /v1/servers)"))
        _boot_pools(run, admin, "Pools after booting")
        if XML_SERVER in run.servers:
            ref = str(run.servers[XML_SERVER]["id"])
            xml = admin.server_domain_xml(ref)
            run.console.print(escape(f"GET /v1/servers/{XML_SERVER}/domain-xml, its PCI "
                                     "devices (VFIO hostdevs):"), highlight=False)
            lines = hostdev_lines(xml)
            for line in lines:
                run.console.print(f"  {escape(line)}", highlight=False)
            if not lines:
                run.surprise(f"{XML_SERVER}'s domain XML has no hostdev")
        quotas = [quota_record(q) for q in admin.quotas(project=TENANT).items]
    run.console.print(render.quotas_table(quotas, title=f"Quotas of {TENANT}"))


def hostdev_lines(xml: str) -> list[str]:
    """The ``<hostdev>`` elements of a domain XML, line by line, as libvirt would read them."""
    out: list[str] = []
    indent: int | None = None  # the open hostdev's indentation, None outside one
    for line in xml.splitlines():
        stripped = line.strip()
        if indent is None and stripped.startswith("<hostdev"):
            indent = len(line) - len(line.lstrip())
        if indent is not None:
            out.append(line[indent:].rstrip())
            if stripped.startswith("</hostdev") or (stripped.startswith("<hostdev")
                                                    and stripped.endswith("/>")):
                indent = None
    return out


DELETED_SERVER = "infer-1"


def delete_server(run: DemoRun) -> None:
    """The tenant deletes a server: its devices are free again, its quota comes back."""
    c = run.console
    held = server_record(run.servers[DELETED_SERVER]) if DELETED_SERVER in run.servers else None
    if held is None or held.host is None:
        run.surprise(f"{DELETED_SERVER} was never placed, so there is nothing to delete")
        return
    with run.member() as member:
        gone = member.delete_server(DELETED_SERVER)
    c.print(escape(f"DELETE /v1/servers/{DELETED_SERVER}: {gone.get('status')}"),
            highlight=False)
    with run.admin() as admin:
        # The host's agent destroys the domain and confirms; only then are devices free.
        last = _wait_status(admin, held.id, lambda s: s == "DELETED")
        status = "DELETED" if last is None else str(last.get("status"))
        c.print(escape(f"host {held.host}'s agent ran the destroy task: {DELETED_SERVER} is ")
                + f"[bold]{escape(status)}[/]", highlight=False)
        if status != "DELETED":
            run.surprise(f"{DELETED_SERVER} is {status}, not DELETED, after its destroy task")
        for d in held.devices:
            rec = device_record(admin.device(held.host, str(d.address)))
            owner = f", owner {rec.owner}" if rec.owner else ""
            c.print(escape(f"- {held.host} {d.address} ({d.alias or 'group mate'}): was "
                           f"{d.state.value}, now ") + f"[bold]{rec.state.value}[/]"
                    + escape(owner), highlight=False)
            if rec.state.value != "available":
                run.surprise(f"{d.address} is {rec.state.value} after {DELETED_SERVER} left")
        _boot_pools(run, admin, "Pools after the delete")
        quotas = [quota_record(q) for q in admin.quotas(project=TENANT).items]
    c.print(render.quotas_table(quotas, title=f"Quotas of {TENANT} after the delete"))


def show_usage(run: DemoRun) -> None:
    """Metered device time per project and alias (counted from allocation to free)."""
    with run.admin() as admin:
        usage = [usage_record(u) for u in admin.usage().items]
    if usage:
        run.console.print(render.usage_table(usage, title="Usage (GET /v1/usage)"))
    else:
        run.console.print("no device time metered yet: devices count from allocation, "
                          "when a host's agent has started the server")


# --- SR-IOV networks and ports --------------------------------------------------------------

NIC_FLAVOR = "net.small"  # no flavor devices: the NICs bring theirs


@dataclass(frozen=True, slots=True)
class NicBoot:
    name: str
    nics: tuple[dict[str, str], ...]
    why: str
    expect: str = PLACED
    as_admin: bool = False


NIC_BOOTS: tuple[NicBoot, ...] = (
    NicBoot("web-1", ({"net_id": "tenant-net", "vnic_type": "direct"},
                      {"port_id": "st-port"}),
            "a VF on physnet1 (VLAN 100) as a hostdev NIC, and a macvtap port made before"),
    NicBoot("gw-1", ({"net_id": "storage-net", "vnic_type": "direct-physical"},),
            "a whole PF on physnet2", as_admin=True),
    NicBoot("lab-1", ({"net_id": "lab-net", "vnic_type": "direct"},),
            "a VF on physnet3, which no PF is cabled to", expect=NOT_PLACED),
)


def sriov_networks(run: DemoRun) -> None:
    """Networks on two physical networks, ports of each SR-IOV vnic type, their bindings."""
    c = run.console
    with run.admin() as admin:
        admin.create_flavor(name=NIC_FLAVOR, vcpus=2, ram_mb=4096, disk_gb=10, extra_specs={})
        admin.create_network(name="tenant-net", physical_network="physnet1",
                             segmentation="vlan", segmentation_id=100, project=TENANT)
        admin.create_network(name="storage-net", physical_network="physnet2",
                             segmentation="vlan", segmentation_id=200)
        admin.create_network(name="lab-net", physical_network="physnet3", segmentation="flat")
        try:
            admin.create_network(name="bad-net", physical_network="physnet1",
                                 segmentation="vlan", segmentation_id=4095)
        except errors.InvalidInput as exc:
            c.print("- " + _refused("network bad-net with VLAN 4095", exc), highlight=False)
        else:
            run.surprise("a network with VLAN 4095 was accepted")
        nets = [network_record(n) for n in admin.networks().items]
    c.print(render.networks_table(nets, title="Networks (GET /v1/networks)"))
    with run.member() as member:
        member.create_port(network="storage-net", name="st-port", vnic_type="macvtap")
        try:
            member.create_port(network="tenant-net", name="sneaky", vnic_type="direct",
                               trusted=True)
        except errors.PcipassError as exc:
            c.print("- " + _refused("a tenant's trusted port", exc), highlight=False)
        else:
            run.surprise("a tenant created a trusted port")
    for case in NIC_BOOTS:
        boot_nics(run, case)
    start_servers(run, [case.name for case in NIC_BOOTS])
    with run.admin() as admin:
        ports = [port_record(p) for p in admin.ports().items]
        c.print(render.ports_table(ports, title="Ports and their bindings (GET /v1/ports)"))
        show_vfs(run, [p for p in ports if p.binding is not None])
        if "web-1" in run.servers:
            xml = admin.server_domain_xml(str(run.servers["web-1"]["id"]))
            c.print(escape("GET /v1/servers/web-1/domain-xml, its NICs:"), highlight=False)
            for line in interface_lines(xml):
                c.print(f"  {escape(line)}", highlight=False)


def boot_nics(run: DemoRun, case: NicBoot) -> str:
    """Boot one server with NICs; print and return its outcome (PLACED or NOT_PLACED)."""
    c = run.console
    c.print(f"[bold]{case.name}[/] ({NIC_FLAVOR}, "
            + escape(", ".join(_nic_text(n) for n in case.nics)) + f"): {case.why}",
            highlight=False)
    client = run.admin() if case.as_admin else run.member()
    with client:
        obj = client.create_server(name=case.name, flavor=NIC_FLAVOR, image=PLAIN_IMAGE,
                                   project=OPS_PROJECT if case.as_admin else None,
                                   nics=case.nics)
    outcome = NOT_PLACED if obj.get("status") == NOT_PLACED else PLACED
    colour = "red" if outcome == NOT_PLACED else "green"
    c.print(f"  [{colour}]{escape(placement_line(obj))}[/]", highlight=False)
    if outcome != case.expect:
        run.surprise(f"{case.name}: expected {case.expect}, got {outcome}")
    if outcome == PLACED:
        run.servers[case.name] = obj
    return outcome


def _nic_text(nic: dict[str, str]) -> str:
    return ",".join(f"{k.replace('_', '-')}={v}" for k, v in nic.items())


def _host(run: DemoRun, name: str) -> SimHost | None:
    return next((h for h in run.hosts if h.name == name), None)


def show_vfs(run: DemoRun, ports: Sequence[PortRecord],
             switch_from: Mapping[str, int] | None = None) -> None:
    """What each bound VF's PF now enforces (the fake programmer's table), and the switch
    (each host's calls from its ``switch_from`` index on, to show only a step's)."""
    c = run.console
    for p in ports:
        b = p.binding
        assert b is not None
        host = _host(run, b.host)
        if host is None or host.vfs is None or b.pf_netdev is None:
            continue
        if b.vf_index is None:
            c.print(escape(f"- {p.name or p.id}: the whole PF {b.pf_netdev} on {b.host}"),
                    highlight=False)
            continue
        vf = host.vfs.state(VfSlot(b.pf_netdev, b.vf_index))
        c.print(escape(f"- {p.name or p.id}: {b.host} VF {b.vf_index} on {b.pf_netdev}: MAC "
                       f"{vf.mac}, VLAN {vf.vlan or 'none'}, spoof-check "
                       f"{'on' if vf.spoofchk else 'off'}, trust {'on' if vf.trust else 'off'}"),
                highlight=False)
        if vf.mac != p.mac or (vf.vlan or None) != p.segmentation_id:
            run.surprise(f"VF {b.vf_index} on {b.pf_netdev} was not programmed for {p.mac}")
    for host in run.hosts:
        for call in host.switch.calls[(switch_from or {}).get(host.name, 0):]:
            c.print(escape(f"  switch ({host.name}): {call.op} PF {call.pf} VLAN "
                           f"{call.vlan or 'untagged'} MAC {call.mac}"), highlight=False)


def interface_lines(xml: str) -> list[str]:
    """The ``<interface>`` elements of a domain XML, line by line."""
    out: list[str] = []
    inside = False
    for line in xml.splitlines():
        stripped = line.strip()
        if stripped.startswith("<interface"):
            inside = True
        if inside:
            out.append(stripped)
            if stripped.startswith("</interface"):
                inside = False
    return out


def delete_nic_server(run: DemoRun) -> None:
    """web-1 goes: its VF is restored, the port it made is deleted, st-port stays, detached."""
    c = run.console
    obj = run.servers.get("web-1")
    if obj is None or obj.get("host") is None:
        run.surprise("web-1 was never placed, so there is nothing to delete")
        return
    with run.member() as member:
        member.delete_server("web-1")
    with run.admin() as admin:
        last = _wait_status(admin, str(obj["id"]), lambda s: s == "DELETED")
        status = "DELETED" if last is None else str(last.get("status"))
        c.print(escape(f"DELETE /v1/servers/web-1: {status} once its host's agent confirmed"),
                highlight=False)
        if status != "DELETED":
            run.surprise(f"web-1 is {status}, not DELETED, after its destroy task")
        held = [p for p in server_record(obj).ports if p.binding is not None]
        left = {r.id: r for r in (port_record(o) for o in admin.ports().items)}
        for p in held:
            b = p.binding
            assert b is not None
            host = _host(run, b.host)
            after = left.get(p.id)
            fate = ("deleted with the server" if after is None
                    else f"kept, {after.status}, attached to {after.server_id or 'nothing'}")
            vf_text = ""
            if host is not None and host.vfs is not None and b.pf_netdev is not None \
                    and b.vf_index is not None:
                vf = host.vfs.state(VfSlot(b.pf_netdev, b.vf_index))
                vf_text = f"; VF {b.vf_index} on {b.pf_netdev} back to MAC {vf.mac}"
                if vf.mac == p.mac:
                    run.surprise(f"VF {b.vf_index} on {b.pf_netdev} kept web-1's MAC")
            c.print(escape(f"- port {p.name or p.id}: {fate}{vf_text}"), highlight=False)
            if p.auto_delete == (after is not None):
                run.surprise(f"port {p.name or p.id}: auto_delete={p.auto_delete} but it was "
                             f"{'kept' if after is not None else 'deleted'}")


# --- changing and moving running servers ------------------------------------------------------

CHANGED_SERVER = "train-1"  # a GPU server: a device plugged in and out, then moved twice
HOT_ALIAS = "a100"
DISK_MARKER = b"written by the guest before its move\n"
LIVE_BOOT = NicBoot("web-2", ({"net_id": "tenant-net", "vnic_type": "direct"},
                              {"port_id": "st-port"}),
                    "a VF as a hostdev NIC and st-port's macvtap again, to move live")
DRAIN_REASON = "NIC firmware update"


def _placed(run: DemoRun, name: str) -> JSON | None:
    """The server as last seen, if it was placed; a surprise when it was not."""
    obj = run.servers.get(name)
    if obj is None or obj.get("host") is None:
        run.surprise(f"{name} was never placed, so there is nothing to change")
        return None
    return obj


def _events_since(run: DemoRun, client: ApiClient, ref: str, seen: int, title: str) -> None:
    """The server's events after the first ``seen`` (``GET /v1/servers/{ref}/events``)."""
    events = [event_record(e) for e in client.server_events(ref)[seen:]]
    run.console.print(render.events_table(events, title=title))


def _device_states(run: DemoRun, admin: ApiClient, held: Sequence[tuple[str, str]],
                   what: str) -> None:
    """Each (host, address) the server held, as its host now has it: free, or a surprise."""
    for host, address in held:
        rec = device_record(admin.device(host, address))
        owner = f", owner {rec.owner}" if rec.owner else ""
        run.console.print(escape(f"- {host} {address}: ") + f"[bold]{rec.state.value}[/]"
                          + escape(owner), highlight=False)
        if rec.state.value != "available":
            run.surprise(f"{host} {address} is {rec.state.value} after {what}")


def _held(admin: ApiClient, ref: str, hosts: Sequence[str]) -> list[tuple[str, str]]:
    """(host, address) of each device the server holds on ``hosts``: mid-move it holds both
    sides, and its own device list does not say which host has which."""
    return [(r.host, str(r.device.address)) for host in hosts
            for r in (device_record(d) for d in admin.devices([("host", host)]).items)
            if r.owner == ref]


def _held_text(held: Sequence[tuple[str, str]]) -> str:
    by_host: dict[str, list[str]] = defaultdict(list)
    for host, address in held:
        by_host[host].append(address)
    return "; ".join(f"{host} {', '.join(a)}" for host, a in by_host.items()) or "nothing"


def change_servers(run: DemoRun) -> None:
    """The tenant hot-plugs an A100 into a running server from its own host (never moving
    it) and takes it out again; the device is the server's only once the host's agent has
    plugged it, and free only once the agent confirms the unplug."""
    c = run.console
    obj = _placed(run, CHANGED_SERVER)
    if obj is None:
        return
    ref, host = str(obj["id"]), str(obj["host"])
    with run.member() as member, run.admin() as admin:
        seen = len(member.server_events(ref))
        before = {d.address for d in server_record(member.server(ref)).devices}
        plugged = member.attach_device(ref, alias=HOT_ALIAS)
        c.print(escape(f'POST /v1/servers/{CHANGED_SERVER}/devices {{"alias": "{HOT_ALIAS}"}}'
                       f": {placement_line(plugged)}"), highlight=False)
        added = [d.address for d in server_record(plugged).devices if d.address not in before]
        if len(added) != 1:
            run.surprise(f"attaching one {HOT_ALIAS} to {CHANGED_SERVER} added {len(added)}")
            return
        address = str(added[0])
        last = _wait_server(admin, ref, lambda s: all(
            d.state is DeviceState.ALLOCATED for d in server_record(s).devices))
        if last is None:
            run.surprise(f"{CHANGED_SERVER} vanished while a device was plugged in")
            return
        c.print(escape(f"host {host}'s agent plugged it: {placement_line(last)}"),
                highlight=False)
        if not all(d.state is DeviceState.ALLOCATED for d in server_record(last).devices):
            run.surprise(f"{address} is not allocated to {CHANGED_SERVER} after its attach")
        try:
            member.attach_device(ref, alias=HOT_ALIAS)
        except errors.PcipassError as exc:
            c.print("- " + _refused(f"another {HOT_ALIAS}", exc), highlight=False)
            if exc.code != "quota_exceeded":
                run.surprise(f"another {HOT_ALIAS}: expected quota_exceeded, got {exc.code}")
        else:
            run.surprise(f"a {HOT_ALIAS} over {TENANT}'s quota was attached")
        member.detach_device(ref, address)
        last = _wait_server(admin, ref, lambda s: all(
            str(d.address) != address for d in server_record(s).devices))
        c.print(escape(f"DELETE /v1/servers/{CHANGED_SERVER}/devices/{address}, once its "
                       f"host's agent confirmed the unplug:"), highlight=False)
        _device_states(run, admin, [(host, address)], "its detach")
        if last is not None:
            run.servers[CHANGED_SERVER] = last
        _events_since(run, member, ref, seen,
                      f"Events of {CHANGED_SERVER} since the attach (GET /v1/servers/"
                      f"{CHANGED_SERVER}/events)")


def _move_ended(moves: Sequence[JSON]) -> bool:
    return bool(moves) and not MoveStatus(str(moves[-1].get("status"))).open


def _cold_migrate(run: DemoRun) -> None:
    """The admin cold-migrates the GPU server to another host: the A100s there are claimed
    first, the source stops it and hands its disk over through the control plane, the
    destination starts it (VERIFY_RESIZE); on confirm the source's devices are freed."""
    c = run.console
    obj = _placed(run, CHANGED_SERVER)
    source = None if obj is None else _host(run, str(obj["host"]))
    if obj is None or source is None:
        return
    dest = _other_host(run, source.profile, source.name)
    ref = str(obj["id"])
    disk = overlay_path(_state_dir(run, source), ref)
    with disk.open("ab") as f:
        f.write(DISK_MARKER)
    c.print(escape(f"wrote {DISK_MARKER.decode().strip()!r} into {CHANGED_SERVER}'s boot "
                   f"disk on {source.name} (the simulated host's overlay file "
                   f"{disk.relative_to(run.workdir)})"), highlight=False)
    with run.admin() as admin:
        held = _held(admin, ref, [source.name])
        seen = len(admin.server_events(ref))
        moving = admin.migrate_server(ref, host=dest.name)
        c.print(escape(f'POST /v1/servers/{CHANGED_SERVER}/migrate {{"host": "{dest.name}"}}'
                       f": {moving.get('status')}"), highlight=False)
        last = _wait_server(admin, ref, settled)
        if last is None:
            run.surprise(f"{CHANGED_SERVER} vanished during its migration")
            return
        c.print(escape(f"  {CHANGED_SERVER} is {last.get('status')} on {last.get('host')}, "
                       "holding both sides until a confirm or revert: "
                       f"{_held_text(_held(admin, ref, [source.name, dest.name]))}"),
                highlight=False)
        if (last.get("status"), last.get("host")) != ("VERIFY_RESIZE", dest.name):
            run.surprise(f"{CHANGED_SERVER} is {last.get('status')} on {last.get('host')}, "
                         f"not VERIFY_RESIZE on {dest.name}")
        landed = overlay_path(_state_dir(run, dest), ref)
        carried = landed.is_file() and DISK_MARKER in landed.read_bytes()
        c.print(escape(f"the marker is {'in' if carried else 'NOT in'} its boot disk on "
                       f"{dest.name} (the simulated host's overlay file "
                       f"{landed.relative_to(run.workdir)})"), highlight=False)
        if not carried:
            run.surprise(f"{CHANGED_SERVER}'s disk did not reach {dest.name}")
        admin.confirm_resize(ref)
        moves = _poll(lambda: admin.server_moves(ref), _move_ended)
        last = admin.server(ref)
        run.servers[CHANGED_SERVER] = last
        c.print(escape(f"POST /v1/servers/{CHANGED_SERVER}/resize/confirm: "
                       f"{placement_line(last)}; on {source.name}, once its agent destroyed "
                       "what it kept:"), highlight=False)
        _device_states(run, admin, held, "the confirmed migration")
        c.print(render.moves_table(moves, title=f"Moves of {CHANGED_SERVER} (GET /v1/servers/"
                                                f"{CHANGED_SERVER}/moves)"))
        if not moves or moves[-1].get("status") != MoveStatus.DONE.value:
            run.surprise(f"{CHANGED_SERVER}'s migration did not end done")
        _events_since(run, admin, ref, seen, f"Events of {CHANGED_SERVER} since the migrate")


def _live_migrate_and_drain(run: DemoRun) -> None:
    """A server with a direct and a macvtap port; its host is reserved for maintenance; the
    drain listing says what could leave live; the admin live-migrates it to another SR-IOV
    host (the direct NIC unplugged meanwhile) and takes the host back into service."""
    c = run.console
    if boot_nics(run, LIVE_BOOT) != PLACED:
        return
    start_servers(run, [LIVE_BOOT.name])
    obj = run.servers[LIVE_BOOT.name]
    source = _host(run, str(obj.get("host")))
    if source is None or obj.get("status") != "ACTIVE":
        return
    dest = _other_host(run, source.profile, source.name)
    ref = str(obj["id"])
    with run.admin() as admin:
        admin.reserve_host(source.name, True, reason=DRAIN_REASON)
        c.print(escape(f'POST /v1/hosts/{source.name}/reserve {{"reason": "{DRAIN_REASON}"}}'
                       f", then GET /v1/hosts/{source.name}/drain:"), highlight=False)
        drain = admin.host_drain(source.name)
        entries = list(drain.get("servers") or ())
        c.print(render.drain_view(drain, [server_record(e["server"]) for e in entries]))
        movable = {str(e["server"]["name"]): bool(e.get("live_migratable")) for e in entries}
        if movable.get(LIVE_BOOT.name) is not True:
            run.surprise(f"the drain listing does not say {LIVE_BOOT.name} can move live")
        seen = len(admin.server_events(ref))
        switch_from = {h.name: len(h.switch.calls) for h in run.hosts}
        moving = admin.live_migrate(ref)
        c.print(escape(f"POST /v1/servers/{LIVE_BOOT.name}/live-migrate (any host that fits):"
                       f" {moving.get('status')}"), highlight=False)
        last = _wait_server(admin, ref, settled)
        if last is None:
            run.surprise(f"{LIVE_BOOT.name} vanished during its live migration")
            return
        run.servers[LIVE_BOOT.name] = last
        c.print(f"  {escape(placement_line(last))}", highlight=False)
        if (last.get("status"), last.get("host")) != ("ACTIVE", dest.name):
            run.surprise(f"{LIVE_BOOT.name} is {last.get('status')} on {last.get('host')}, "
                         f"not ACTIVE on {dest.name}")
        ports = list(server_record(last).ports)
        c.print(render.ports_table(ports, title=f"{LIVE_BOOT.name}'s ports after the move",
                                   server=False))
        show_vfs(run, [p for p in ports if p.binding is not None], switch_from)
        if any(p.binding is None or p.binding.host != dest.name for p in ports):
            run.surprise(f"{LIVE_BOOT.name}'s ports are not all bound on {dest.name}")
        events = [event_record(e) for e in admin.server_events(ref)[seen:]]
        warned = [e for e in events if e.action == "live_migrate" and e.outcome == "started"
                  and "loses" in (e.message or "")]
        for e in warned:
            c.print(escape(f"event live_migrate started on {e.host}: {e.message}"),
                    highlight=False)
        if not warned:
            run.surprise("no event warned that the guest loses its direct NIC while it moves")
        c.print(render.events_table(events, title=f"Events of {LIVE_BOOT.name} since the "
                                                  "live-migrate"))
        admin.reserve_host(source.name, False)
        after = admin.host_drain(source.name)
        left = ", ".join(str(e["server"]["name"]) for e in after.get("servers") or ()) or "none"
        reserved = "yes" if (after.get("host") or {}).get("reserved") else "no"
        c.print(escape(f"POST /v1/hosts/{source.name}/unreserve: reserved={reserved}; servers "
                       f"still there: {left}"), highlight=False)
        if reserved != "no":
            run.surprise(f"{source.name} is still reserved after unreserve")


def _delete_mid_move(run: DemoRun) -> None:
    """The GPU server is migrated once more, and the tenant deletes it while it waits in
    VERIFY_RESIZE: each of the two hosts destroys its part and frees its devices."""
    c = run.console
    obj = _placed(run, CHANGED_SERVER)
    if obj is None:
        return
    ref, source = str(obj["id"]), str(obj["host"])
    with run.admin() as admin, run.member() as member:
        admin.migrate_server(ref)
        last = _wait_server(admin, ref, settled)
        if last is None:
            run.surprise(f"{CHANGED_SERVER} vanished during its migration")
            return
        dest = str(last.get("host"))
        held = _held(admin, ref, [source, dest])
        c.print(escape(f"POST /v1/servers/{CHANGED_SERVER}/migrate (any other host): "
                       f"{last.get('status')} on {dest}, holding {_held_text(held)}"),
                highlight=False)
        if last.get("status") != "VERIFY_RESIZE" or dest == source:
            run.surprise(f"{CHANGED_SERVER} is {last.get('status')} on {dest}, not "
                         f"VERIFY_RESIZE on another host")
        gone = member.delete_server(ref)
        last = _wait_status(admin, ref, lambda s: s == "DELETED")
        status = "DELETED" if last is None else str(last.get("status"))
        c.print(escape(f"DELETE /v1/servers/{CHANGED_SERVER} in VERIFY_RESIZE: "
                       f"{gone.get('status')}, then ") + f"[bold]{escape(status)}[/]"
                + escape(f" once both hosts ({source}, {dest}) let go:"), highlight=False)
        if status != "DELETED":
            run.surprise(f"{CHANGED_SERVER} is {status}, not DELETED, after its delete")
        run.servers.pop(CHANGED_SERVER, None)
        _device_states(run, admin, held, f"{CHANGED_SERVER} was deleted mid-move")
        moves = admin.server_moves(ref)
        c.print(render.moves_table(moves, title=f"Moves of {CHANGED_SERVER}"))
        last_move = moves[-1] if moves else {}
        if (last_move.get("status"), last_move.get("message")) != (
                MoveStatus.FAILED.value, DELETED_MID_MOVE):
            run.surprise(f"{CHANGED_SERVER}'s last move is {last_move.get('status')} "
                         f"({last_move.get('message')}), not failed: {DELETED_MID_MOVE}")


def move_servers(run: DemoRun) -> None:
    """Cold migration with the guest's disk, live migration off a host being drained, and a
    delete in the middle of a move; hosts join the fleet to take the servers."""
    _cold_migrate(run)
    _live_migrate_and_drain(run)
    _delete_mid_move(run)


SCENARIO: tuple[tuple[str, Step], ...] = (
    ("Start the control plane", start_control_plane),
    ("Build simulated hosts", build_hosts),
    ("Issue agent tokens", issue_agent_tokens),
    ("Run each host's agent", run_agents),
    ("What the fleet offers", show_fleet),
    ("What to know about it", show_facts),
    ("Define PCI aliases", define_aliases),
    ("Flavors and images", create_catalog),
    ("A tenant and its quota", tenant_and_quota),
    ("Boot servers", boot_servers),
    ("Hosts' agents start the servers", start_servers),
    ("Ask the scheduler without booting", explain_boots),
    ("Servers and pools after booting", show_servers),
    ("Delete a server", delete_server),
    ("SR-IOV networks and ports", sriov_networks),
    ("Delete a server with ports", delete_nic_server),
    ("Change running servers", change_servers),
    ("Move servers and drain a host", move_servers),
    ("Usage", show_usage),
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
        c.print("  pcipass device list --host gpu-server-1\n  pcipass pool list\n"
                "  pcipass server list\n  pcipass server show web-2\n"
                "  pcipass server moves train-1\n  pcipass host drain sriov-nic-server-1\n"
                "  pcipass explain --flavor gpu.large")
        c.print(f"hosts' sysfs trees are under {run.workdir / 'hosts'}; agents re-discover "
                f"every 2s and report every {LIVE_INTERVAL_S:.0f}s. Ctrl-C stops everything.")
        wait_until_stopped(run.stop)
    c.print("stopping the agents and the control plane")
    for t in threads:
        t.join(timeout=15)


def run_demo(*, once: bool, hosts_per_profile: int = 1,
             steps: Sequence[tuple[str, Step]] = SCENARIO,
             console: Console | None = None) -> int:
    """Run the scenario; 0 when every step ran and every outcome was the expected one."""
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
            if run.surprises:
                out.print(f"[bold yellow]{len(run.surprises)} outcome(s) differed from the "
                          f"scenario:[/] {escape('; '.join(run.surprises))}", highlight=False)
                _server_errors(run)
            if not once:
                keep_serving(run)
        except errors.PcipassError as exc:
            out.print(f"[bold red]demo failed:[/] {escape(exc.message)}", highlight=False)
            _server_errors(run)
            return 1
        except KeyboardInterrupt:
            return 130
        finally:
            run.stop.set()
            stop_task_loops(run)
            for host in run.hosts:
                if host.agent is not None:
                    host.agent.client.close()
            stop_control_plane(run)
    return 1 if run.surprises else 0


def _server_errors(run: DemoRun, most: int = 5) -> None:
    """The control plane's own error lines (its log goes with the work dir)."""
    lines = [line for line in _tail(run.server_log, 2000).splitlines()
             if line.startswith("ERROR")]
    for line in lines[-most:]:
        run.console.print(f"  control plane: {escape(line)}", highlight=False)
