"""One cloud for the end-to-end tests: a real control plane on SQLite, the real client, and
each host's agent task runner in this process with the fake hypervisor (and, on SR-IOV hosts,
a recording VF programmer), so a test drives a server through the agents step by step.

Hosts are built from the sysfs profiles and report what discovery finds under their device
spec, with the migration URI a real agent reports. Each test module names its own hosts, GPU
flavors and networks; :func:`agent_world` adds what every boot takes (the image ``plain``,
the device-less flavor ``small``), a member of :data:`PROJECT`, a member of another project
and an agent per host.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from apiserver import api_server
from pcipass.agent.tasks import TaskRunner
from pcipass.cli.agent import disk_overlays, host_cpus, migration_uri, with_migration_uri
from pcipass.cli.client import JSON, ApiClient
from pcipass.host.profiles import suggested_aliases
from pcipass.host.sriov.fake import RecordingVfProgrammer
from pcipass.pci.inventory import Inventory, inventory_to_json
from pcipass.virt.driver import DriverKind, open_driver
from pcipass.virt.fake import FakeVirtDriver
from pcipass.virt.payload import domain_name, plugged_keys

PROJECT = "tenant"
A100 = "20f1"
# The sriov-nic-server profile's PFs and how many VFs each may have.
PFS = {"ens1f0": 8, "ens1f1": 8, "ens2f0": 8, "ens2f1": 8}
# The E810's VFs (ens1f0, 3b:00.0) on physnet1.
SRIOV_SPEC = [{"vendor_id": "8086", "product_id": "1889", "address": "0000:3b:00.0",
               "physical_network": "physnet1"}]
# ... and the ConnectX-6 port ens2f1 (af:00.1) with its VFs on physnet2.
SRIOV_TWO_NETS_SPEC = [*SRIOV_SPEC, {"devname": "ens2f1", "physical_network": "physnet2"}]

Event = tuple[str, str, str | None]



@contextmanager
def in_background(step: Callable[[], object], every: float = 0.05) -> Iterator[None]:
    """``step`` run again and again in a thread while the block runs (an agent at work)."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            step()

    worker = threading.Thread(target=run)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join()

@dataclass
class World:
    """The running cloud and the hands a test needs on it."""

    url: str
    admin_token: str
    member_token: str
    admin: ApiClient
    member: ApiClient
    other: ApiClient                     # a member of another project
    runners: dict[str, TaskRunner]
    vfs: dict[str, RecordingVfProgrammer]
    state: Path                          # the agents' state directories, one per host
    server_state: Path                   # the API server's state directory
    rounds: int = 50

    def run_tasks(self, *, skip: Collection[str] = ()) -> None:
        """Play every host's agent (but ``skip``'s) until none has anything left to do,
        checking device ownership after each round."""
        for _ in range(self.rounds):
            if not any([r.run_once() for h, r in self.runners.items() if h not in skip]):
                self.check_ownership()
                return
            self.check_ownership()
        raise AssertionError("the task runners never ran out of work")

    def agents_running(self) -> AbstractContextManager[None]:
        """Every host's agent at work in a thread, as while a CLI command waits."""
        return in_background(self.run_tasks)

    def driver(self, host: str) -> FakeVirtDriver:
        """``host``'s fake hypervisor: the state its agent's driver keeps."""
        return FakeVirtDriver(self.state / host / "virt")

    def domain(self, host: str, server: JSON) -> tuple[bool, bool]:
        """(defined, running) of the server's domain on ``host``."""
        d, name = self.driver(host), domain_name(str(server["id"]))
        return d.exists(name), d.exists(name) and d.is_active(name)

    def plugged(self, server: JSON, host: str | None = None) -> frozenset[str]:
        """What the server's domain holds on ``host`` (its own by default), from the fake
        hypervisor's live XML."""
        where = str(server["host"]) if host is None else host
        return plugged_keys(self.driver(where).get_xml(domain_name(str(server["id"]))))

    def device(self, host: str, address: str) -> JSON:
        return self.admin.device(host, address)

    def boot(self, name: str, flavor: str, *nics: dict[str, str]) -> JSON:
        """The member's new server, once the agents made it ACTIVE."""
        s = self.member.create_server(name=name, flavor=flavor, image="plain", nics=nics)
        self.run_tasks()
        s = self.member.server(s["id"])
        assert s["status"] == "ACTIVE", s["fault"]
        return s

    def delete(self, server: JSON) -> None:
        self.member.delete_server(server["id"])
        self.run_tasks()
        assert self.admin.server(server["id"])["status"] == "DELETED"

    def owned(self, server: JSON) -> dict[tuple[str, str], str]:
        """(host, address) → state of every device the server owns."""
        return {(d["host"], d["address"]): d["state"]
                for h in self.runners for d in self.admin.devices([("host", h)]).items
                if d.get("owner") == server["id"]}

    def check_ownership(self) -> None:
        """No device is owned by a server that is gone, and every live server's devices
        are the ones the API shows it (each listed once)."""
        servers = {s["id"]: s for s in self.admin.servers([("status", "DELETED")]).items}
        live = {s["id"]: s for s in self.admin.servers().items}
        seen: Counter[tuple[str, str]] = Counter()
        for h in self.runners:
            for d in self.admin.devices([("host", h)]).items:
                owner = d.get("owner")
                if owner is None:
                    assert d["state"] not in ("claimed", "allocated"), d
                    continue
                assert owner not in servers, f"{d['address']} owned by deleted {owner}"
                assert owner in live, (owner, d)
                seen[(h, d["address"])] += 1
        assert all(n == 1 for n in seen.values())

    def events(self, server: JSON, *actions: str) -> list[Event]:
        """(action, outcome, message) of the server's log, oldest first; only ``actions``
        when given."""
        return [(e["action"], e["outcome"], e["message"])
                for e in self.admin.server_events(server["id"])
                if not actions or e["action"] in actions]

    def free(self, host: str, product: str = A100) -> list[str]:
        """Addresses of ``host``'s available ``product`` devices."""
        return sorted(d["address"] for d in self.admin.devices(
            [("host", host), ("product_id", product)]).items if d["state"] == "available")


@contextmanager
def agent_world(tmp: Path, hosts: Mapping[str, Inventory], *, sriov: Collection[str] = (),
                gpu_flavors: Mapping[str, int] | None = None,
                vlans: Mapping[str, tuple[str, int]] | None = None,
                rounds: int = 50) -> Iterator[World]:
    """The cloud under ``tmp``, its catalog first: ``gpu_flavors`` (name → how many A100s,
    with the gpu-server's suggested aliases) and ``vlans`` (network name → physical network
    and VLAN id). Then every host reports its inventory and gets an agent (``sriov``'s with a
    VF programmer). On the way out the API server's log must hold no traceback."""
    image = tmp / "images" / "plain.qcow2"
    image.parent.mkdir()
    image.write_bytes(b"")
    state = tmp / "state"
    with api_server(f"sqlite:///{tmp / 'pcipass.db'}", tmp / "server") as api, \
            ApiClient(api.url, api.admin_token) as admin:
        admin.create_image(name="plain", source=str(image), properties={})
        admin.create_flavor(name="small", vcpus=2, ram_mb=2048, disk_gb=1, extra_specs={})
        if gpu_flavors:
            admin.create_aliases(suggested_aliases("gpu-server"))
        for name, count in (gpu_flavors or {}).items():
            admin.create_flavor(name=name, vcpus=2, ram_mb=2048, disk_gb=1,
                                extra_specs={"pci_passthrough:alias": f"a100:{count}"})
        for name, (physnet, vlan) in (vlans or {}).items():
            admin.create_network(name=name, physical_network=physnet, segmentation="vlan",
                                 segmentation_id=vlan)
        member_token = str(admin.create_token("member", project=PROJECT)["token"])
        other_token = str(admin.create_token("member", project="elsewhere")["token"])
        vfs = {h: RecordingVfProgrammer(PFS) for h in sriov}
        runners: dict[str, TaskRunner] = {}
        clients = []
        try:
            for host, inv in hosts.items():
                token = str(admin.create_token("agent", host=host)["token"])
                client = ApiClient(api.url, token)
                clients.append(client)
                hstate = state / host
                reported = with_migration_uri(inv, migration_uri(DriverKind.FAKE, hstate, host))
                client.put_inventory(host, None, inventory_to_json(reported))
                runners[host] = TaskRunner(
                    client=client, host=host, state_dir=hstate,
                    open_driver=partial(open_driver, DriverKind.FAKE, state_dir=hstate),
                    overlays=disk_overlays(DriverKind.FAKE, hstate),
                    host_cpus=partial(host_cpus, inv), wait=0.0, rand=lambda: 0.0,
                    programmer=vfs.get(host))
            with ApiClient(api.url, member_token) as member, \
                    ApiClient(api.url, other_token) as other:
                yield World(api.url, api.admin_token, member_token, admin, member, other,
                            runners, vfs, state, tmp / "server" / "state", rounds)
        finally:
            for r in runners.values():
                r.close()
            for c in clients:
                c.close()
        log = api.log()
        assert "Traceback" not in log, log[-6000:]
