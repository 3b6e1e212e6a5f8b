"""``pcipass agent``: wire options, configuration, discovery and a virt driver into the agent's
two loops (inventory reports and tasks)."""

from __future__ import annotations

import logging
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

import typer

from pcipass.agent.loop import Agent, run_agent, stop_on_signals
from pcipass.agent.policy import poll_period
from pcipass.agent.ports import SriovKind, make_programmer
from pcipass.agent.state import state_path
from pcipass.agent.tasks import DEFAULT_WAIT_S, TaskRunner
from pcipass.cli.client import ApiClient
from pcipass.cli.common import EXIT_ERROR, EXIT_USAGE, fail, reported
from pcipass.cli.discover import ConfigOpt, DeviceSpecOpt, SysfsRootOpt, discover_inventory
from pcipass.cli.specs import load_specs, spec_texts
from pcipass.config import load_settings
from pcipass.errors import InvalidConfig
from pcipass.host.pciids import PciIds
from pcipass.net.switch import load_switch_driver
from pcipass.pci.device import HostKind
from pcipass.pci.inventory import Inventory, valid_host_name
from pcipass.virt.domain import VirtType
from pcipass.virt.driver import DEFAULT_URI, DriverKind, open_driver
from pcipass.virt.overlay import DiskOverlays, QemuImgOverlays, RecordingOverlays

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def host_cpus(inv: Inventory) -> dict[int, tuple[int, ...]]:
    """Each NUMA node's CPUs, as discovery found them: where guest cells are pinned."""
    return {n.id: n.cpus for n in inv.host.numa_nodes}


def migration_uri(driver: DriverKind, state_dir: Path, host: str,
                  given: str | None = None) -> str:
    """Where other hosts' hypervisors reach this one for a live migration: ``given``
    (``--migration-uri``), else the fake's ``fake:///STATE/virt``, else libvirt's
    ``qemu+tcp://HOST/system``."""
    if given:
        return given
    if driver is DriverKind.FAKE:
        return f"fake://{quote(str((state_dir / 'virt').resolve()))}"
    return f"qemu+tcp://{host}/system"


def with_migration_uri(inv: Inventory, uri: str | None) -> Inventory:
    """The inventory with ``uri`` in its host info (what the control plane migrates to)."""
    return replace(inv, host=replace(inv.host, migration_uri=uri))


def host_kind(given: HostKind | None, configured: str, driver: DriverKind) -> HostKind:
    """What the host reports itself as (``--kind``, else ``[agent] kind``), checked against
    the driver: a bare-metal host runs a bare-metal driver and a hypervisor does not.
    :class:`~pcipass.errors.InvalidConfig` when they disagree."""
    kind = given if given is not None else HostKind(configured)
    if (kind is HostKind.BAREMETAL) != driver.baremetal:
        raise InvalidConfig(
            f"a {kind.value} host cannot run the {driver.value} driver: bare-metal hosts run "
            "--driver baremetal-fake, hypervisors libvirt or fake", field="agent.kind")
    return kind


def with_kind(inv: Inventory, kind: HostKind) -> Inventory:
    """The inventory with ``kind`` in its host info (which boots the control plane sends)."""
    return replace(inv, host=replace(inv.host, kind=kind))


def disk_overlays(driver: DriverKind, state_dir: Path) -> DiskOverlays:
    """qemu-img for a real hypervisor; recorded empty files beside the fake one's state."""
    if driver is DriverKind.FAKE or driver.baremetal:
        return RecordingOverlays(state_dir / "virt" / "disks.jsonl")
    return QemuImgOverlays()


def virt_type(driver: DriverKind, kvm: Path = Path("/dev/kvm")) -> VirtType:
    """KVM where the host has it; plain QEMU emulation (slow, but it boots) where not."""
    return VirtType.KVM if driver is not DriverKind.LIBVIRT or kvm.exists() else VirtType.QEMU


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr, force=True)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise


def agent_command(
    server: Annotated[str | None, typer.Option(
        "--server", help="Control plane URL (\\[agent] server).", show_default=False)] = None,
    token: Annotated[str | None, typer.Option(
        "--token", help="This host's agent token (\\[agent] token).", show_default=False)] = None,
    host_name: Annotated[str | None, typer.Option(
        "--host-name", help="Name to report as (default: the machine's hostname).",
        show_default=False)] = None,
    sysfs_root: SysfsRootOpt = None,
    device_spec: DeviceSpecOpt = None,
    interval: Annotated[float | None, typer.Option(
        "--interval", min=0.1, help="Seconds between reports when nothing changes "
        "(default 60).", show_default=False)] = None,
    poll: Annotated[float | None, typer.Option(
        "--poll", min=0.05, help="Seconds between re-discoveries "
        "(default: the interval, at most 5).", show_default=False)] = None,
    state_dir: Annotated[Path | None, typer.Option(
        "--state-dir", help="Where the last generation, task journals and boot disks are kept "
        "(PCIPASS_STATE_DIR, default ~/.local/state/pcipass).", show_default=False)] = None,
    once: Annotated[bool, typer.Option(
        "--once", help="Report once and exit (1 when the report was not accepted); "
        "runs no tasks.")] = False,
    driver: Annotated[DriverKind, typer.Option(
        "--driver", help="How guests are run: libvirt, or fake (domains kept as files in "
        "the state dir, for demos and tests), or baremetal-fake (a bare-metal machine's "
        "power kept as files, with --kind baremetal).")] = DriverKind.LIBVIRT,
    kind_opt: Annotated[HostKind | None, typer.Option(
        "--kind", help="What this host is: hypervisor, or baremetal (no hypervisor: one "
        "server takes the whole machine) (\\[agent] kind, default hypervisor).",
        show_default=False)] = None,
    libvirt_uri: Annotated[str, typer.Option(
        "--libvirt-uri", help="libvirt connection for --driver libvirt.")] = DEFAULT_URI,
    migration_uri_opt: Annotated[str | None, typer.Option(
        "--migration-uri", help="The libvirt URI other hosts migrate guests to this one by "
        "(default qemu+tcp://HOST/system; the fake driver's is fake:///STATE_DIR/virt).",
        show_default=False)] = None,
    task_wait: Annotated[float, typer.Option(
        "--task-wait", min=0.0, max=30.0, help="Seconds one task poll waits at the server "
        "for work (a long poll).")] = DEFAULT_WAIT_S,
    sriov: Annotated[SriovKind | None, typer.Option(
        "--sriov", help="How the VFs of SR-IOV ports are programmed: netlink (the host's "
        "kernel), or fake (in memory, VF tables from this host's discovered PFs) "
        "(\\[agent] sriov, default netlink).", show_default=False)] = None,
    switch_driver: Annotated[str | None, typer.Option(
        "--switch-driver", help="The switch plug-in told about SR-IOV ports (a "
        "pcipass.switch_drivers entry point: noop, log, ...) (\\[agent] switch_driver, "
        "default noop).", show_default=False)] = None,
    config: ConfigOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Report this host's PCI inventory to the control plane, keep it current, and run the
    guests the control plane places here (spawn and destroy tasks)."""
    with reported(EXIT_USAGE):
        settings = load_settings(config)
        specs = load_specs(spec_texts(device_spec or [], settings.pci.device_spec))
    a = settings.agent
    url = server or a.server
    secret = token or a.token
    name = host_name or a.host_name or socket.gethostname()
    if not url:
        fail("no server: give --server or [agent] server", EXIT_USAGE)
    if not secret:
        fail("no token: give --token or [agent] token", EXIT_USAGE)
    if not valid_host_name(name):
        fail(f"host name {name!r} is not valid (letters, digits, '.', '_', '-')", EXIT_USAGE)
    root = sysfs_root if sysfs_root is not None else a.sysfs_root
    every = interval if interval is not None else a.interval
    directory = state_dir if state_dir is not None else a.state_dir
    with reported(EXIT_USAGE):
        kind = host_kind(kind_opt, a.kind, driver)

    setup_logging(logging.DEBUG if verbose else logging.INFO)
    pci_ids = PciIds.load()
    with ApiClient(url, secret) as client:
        agent = Agent(
            client=client, host=name,
            discover=lambda: with_kind(with_migration_uri(
                discover_inventory(root, specs, pci_ids=pci_ids, hostname=name),
                migration_uri(driver, directory, name, migration_uri_opt)), kind),
            state_file=state_path(directory, name),
            interval=every, poll=poll if poll is not None else poll_period(every),
        )
        if once:
            with reported():
                ok = agent.run_once()
            if not ok:
                raise typer.Exit(EXIT_ERROR)
            return
        logging.getLogger("pcipass.agent").info(
            "agent for %s reporting to %s every %.0fs (re-discovery every %.1fs), "
            "running tasks with the %s driver", name, url, agent.interval, agent.poll,
            driver.value if driver is not DriverKind.LIBVIRT
            else f"libvirt driver at {libvirt_uri}")
        with reported(EXIT_USAGE):
            switch = load_switch_driver(switch_driver or a.switch_driver)
            programmer = make_programmer(sriov or a.sriov, agent.discover)
        with ApiClient(url, secret) as task_client:
            tasks = TaskRunner(
                client=task_client, host=name, state_dir=directory,
                open_driver=lambda: open_driver(driver, uri=libvirt_uri, state_dir=directory),
                overlays=disk_overlays(driver, directory),
                host_cpus=lambda: host_cpus(agent.discover()),
                wait=task_wait, virt_type=virt_type(driver), stop=agent.stop,
                programmer=programmer, switch=switch, normal_network=a.normal_network,
            )
            with stop_on_signals(agent.stop):
                run_agent(agent, tasks)
