"""Scheduling benchmark: a fleet built from the demo's profiles, then a stream of boots.

    .venv/bin/python bench/schedule.py --hosts N --boots M [--db URL] [--workers K] [--json]

The fleet mixes the demo's host profiles (``pcipass.host.profiles``), each discovered once
from its simulated sysfs and loaded for every host in bulk (``Store.load_hosts``):

    gpu-server 25%   4 x A100 + 2 x RTX A6000 (with their HDMI audio), 2 NUMA nodes
    gpu8-server 10%  gpu-server with 4 more A100s: 8 A100, 4 per NUMA node (the hosts an
                     8-GPU boot can land on; built from gpu-server's inventory)
    sriov-nic 25%    E810 and ConnectX-6 PFs, 8 VFs each on the enabled ports
    sriov-scale 25%  2 E810 PFs x 128 VFs (``build_sriov_scale``), physnet1
    storage 10%, vmd 5%

about 91 devices per host (915,000 at 10,000 hosts).

then ``--boots`` boots from ``--workers`` processes, each through ``pcipass.services.Cloud``
against the one database, in this mix: 1 GPU (30%), 8 A100s over a NUMA node pair
(``hw:numa_nodes=2``, 5%), 1 VF on physnet1 (35%), no PCI (25%), 16 A100s, which no host has
(5%). Latency is per decision (filter, weigh and claim together: one ``create_server``).
``--db`` must name an empty database (default: a fresh SQLite file).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pcipass.config import load_settings
from pcipass.host.discovery import discover
from pcipass.host.profiles import build_host, build_sriov_scale, suggested_device_spec
from pcipass.host.sysfs_tree import SysfsTree
from pcipass.pci.address import PciAddress
from pcipass.pci.devspec import DeviceSpecSet, parse_device_spec
from pcipass.pci.inventory import Inventory
from pcipass.records import Principal, Role, ServerStatus
from pcipass.services import Cloud
from pcipass.store import Store

ADMIN = Principal("bench", Role.ADMIN)
A100 = ("10de", "20f1")
SCALE_SPEC = [{"vendor_id": "8086", "product_id": "1889", "physical_network": "physnet1"}]

# (host type, share of the fleet)
FLEET = (("gpu-server", 25), ("gpu8-server", 10), ("sriov-nic-server", 25),
         ("sriov-scale", 25), ("storage-server", 10), ("vmd-host", 5))
# (flavor, share of the boots)
BOOTS = (("gpu1", 30), ("gpu8-numa", 5), ("vf1", 25), ("nic-direct", 10), ("plain", 25),
         ("a100x16", 5))
# Boots that bring their devices as SR-IOV ports rather than flavor aliases: the flavor the
# boot uses and its NICs (a port made per boot on a VLAN network of physnet1).
NIC_BOOTS = {"nic-direct": ("plain", ({"net_id": "bench-net", "vnic_type": "direct"},))}
ALIASES = [
    {"name": "gpu", "vendor_id": "10de", "product_id": "20f1", "device_type": "type-PCI"},
    {"name": "gpu", "vendor_id": "10de", "product_id": "2230", "device_type": "type-PCI"},
    {"name": "a100", "vendor_id": "10de", "product_id": "20f1", "device_type": "type-PCI",
     "numa_policy": "preferred"},
    {"name": "vf-physnet1", "device_type": "type-VF",
     "match": {"physical_network": "physnet1"}, "vendor_id": "8086"},
]
FLAVORS = {
    "gpu1": (8, 32768, {"pci_passthrough:alias": "gpu:1"}),
    "gpu8-numa": (16, 65536, {"pci_passthrough:alias": "a100:8", "hw:numa_nodes": "2"}),
    "vf1": (2, 4096, {"pci_passthrough:alias": "vf-physnet1:1"}),
    "plain": (4, 8192, {}),
    "a100x16": (16, 65536, {"pci_passthrough:alias": "a100:16"}),
}


def _with_spec(root: Path, spec: Sequence[dict[str, str]]) -> Inventory:
    specs = DeviceSpecSet(tuple(s for i, e in enumerate(spec)
                                for s in parse_device_spec(e, position=i)))
    found = discover(root)
    return Inventory(host=found.host, devices=specs.apply(found.devices))


def _gpu8(base: Inventory) -> Inventory:
    """gpu-server plus a copy of each A100 (own address and IOMMU group): 8 A100s in all,
    4 on each NUMA node."""
    a100s = [d for d in base.devices if (d.vendor_id, d.product_id) == A100]
    group = max(d.iommu_group or 0 for d in base.devices) + 1
    extra = []
    for i, template in enumerate(a100s):
        address = PciAddress(0, 0xD0 + i, 0, 0)
        extra.append(replace(template, address=address, iommu_group=group + i,
                             iommu_group_members=(address,)))
    return replace(base, devices=(*base.devices, *extra))


def build_inventories(work: Path) -> dict[str, Inventory]:
    """Each host type discovered once."""
    out: dict[str, Inventory] = {}
    for name in ("gpu-server", "sriov-nic-server", "storage-server", "vmd-host"):
        root = work / name
        build_host(root, name)
        out[name] = _with_spec(root, suggested_device_spec(name))
    out["gpu8-server"] = _gpu8(out["gpu-server"])
    root = work / "sriov-scale"
    build_sriov_scale(SysfsTree(root), pfs=2, vfs_per_pf=128)
    out["sriov-scale"] = _with_spec(root, SCALE_SPEC)
    return out


def fleet_of(n: int, inventories: dict[str, Inventory]) -> list[tuple[str, Inventory]]:
    kinds = [k for k, share in FLEET for _ in range(share)]
    return [(f"host-{i:05d}", inventories[kinds[i % len(kinds)]]) for i in range(n)]


def boots_of(m: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names = [f for f, _w in BOOTS]
    weights = [w for _f, w in BOOTS]
    return rng.choices(names, weights=weights, k=m)


def setup(url: str, hosts: int, work: Path) -> dict[str, Any]:
    store = Store.open(url)
    try:
        if store.list_hosts(limit=1).items:
            raise SystemExit(f"{url} already has hosts: give an empty database")
        inventories = build_inventories(work)
        started = time.perf_counter()
        devices = store.load_hosts(fleet_of(hosts, inventories), now=datetime.now(UTC))
        load_s = time.perf_counter() - started
        cloud = Cloud(store, load_settings(None, {}))
        cloud.create_aliases(ADMIN, ALIASES)
        for name, (vcpus, ram, specs) in FLAVORS.items():
            cloud.create_flavor(ADMIN, name=name, vcpus=vcpus, ram_mb=ram, disk_gb=20,
                                extra_specs=specs)
        cloud.create_image(ADMIN, name="bench", source="/var/lib/images/bench.qcow2",
                           properties={})
        cloud.create_network(ADMIN, name="bench-net", physical_network="physnet1",
                             segmentation="vlan", segmentation_id=100)
        return {"devices": devices, "load_s": load_s}
    finally:
        store.close()


def worker(url: str, flavors: Sequence[str], barrier: Any, results: Any) -> None:
    store = Store.open(url, migrate=False)
    cloud = Cloud(store, load_settings(None, {}))
    out: list[tuple[str, str, float]] = []
    try:
        barrier.wait(timeout=600)
        for i, flavor in enumerate(flavors):
            started = time.perf_counter()
            real, nics = NIC_BOOTS.get(flavor, (flavor, ()))
            server = cloud.create_server(ADMIN, name=f"b{i}", flavor=real, image="bench",
                                         nics=nics)
            out.append((flavor, server.status.value, time.perf_counter() - started))
    finally:
        store.close()
        results.put(out)


def run(url: str, boots: int, workers: int, seed: int) -> dict[str, Any]:
    plan = boots_of(boots, seed)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(url, plan[w::workers], barrier, results))
             for w in range(workers)]
    for p in procs:
        p.start()
    barrier.wait(timeout=600)
    started = time.perf_counter()
    done: list[tuple[str, str, float]] = []
    for _ in procs:
        done += results.get(timeout=3600)
    wall = time.perf_counter() - started
    for p in procs:
        p.join(timeout=60)
    latencies = sorted(t for _f, _s, t in done)
    per_flavor = {}
    for name, _share in BOOTS:
        mine = sorted(t for f, _s, t in done if f == name)
        if mine:
            per_flavor[name] = {"p50_ms": _ms(statistics.median(mine)),
                                "p99_ms": _ms(_p99(mine)), "n": len(mine)}
    placed = Counter(f for f, s, _t in done if s == ServerStatus.BUILDING.value)
    refused = Counter(f for f, s, _t in done if s != ServerStatus.BUILDING.value)
    return {
        "p50_ms": _ms(statistics.median(latencies)),
        "p99_ms": _ms(_p99(latencies)),
        "max_ms": _ms(latencies[-1]),
        "decisions_per_s": round(len(done) / wall, 1),
        "placed": dict(sorted(placed.items())),
        "refused": dict(sorted(refused.items())),
        "by_flavor": per_flavor,
    }


def _p99(ordered: Sequence[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--boots", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--db", help="an empty database (default: a fresh SQLite file)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pcipass-bench-") as tmp:
        work = Path(tmp)
        url = args.db or f"sqlite:///{work / 'bench.db'}"
        report: dict[str, Any] = {"hosts": args.hosts, "boots": args.boots,
                                  "workers": args.workers,
                                  "db": url.split("://")[0].split("+")[0]}
        report |= setup(url, args.hosts, work)
        report |= run(url, args.boots, args.workers, args.seed)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key:>16}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
