"""Inventory benchmarks on a large SR-IOV host (4 PFs x 256 VFs by default).

    .venv/bin/python bench/inventory.py [--pfs 4] [--vfs 256] [--runs 7] [--json]
                                        [--db postgresql+psycopg://user@host/scratch_db]

Inventory sync runs on a fresh SQLite file, and also on ``--db`` when given (its tables are
migrated and the benchmark's hosts, named ``bench-<pid>-<n>``, are left there: use a scratch
database).

Each section is a function ``(BenchHost) -> list[Measurement]`` listed in ``SECTIONS``; the
discovery section runs first and leaves its inventory on the host for later sections (the
inventory-sync timings: first report, unchanged re-report, one VF added). ``add_one_vf``
changes the host by exactly one VF for the last of those.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pcipass.host.discovery import discover
from pcipass.host.pciids import PciIds
from pcipass.host.profiles import build_sriov_scale
from pcipass.host.sysfs_tree import SysfsTree
from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType
from pcipass.pci.devspec import DeviceSpecSet, parse_device_spec
from pcipass.pci.inventory import Inventory
from pcipass.store import Store


@dataclass(frozen=True, slots=True)
class Measurement:
    name: str
    runs: int
    median_s: float
    min_s: float
    max_s: float
    note: str = ""


@dataclass(slots=True)
class BenchHost:
    """The simulated host every section works on."""

    root: Path
    tree: SysfsTree
    pfs: int
    vfs_per_pf: int
    runs: int
    inventory: Inventory | None = None  # the latest discovery, for the sections after it
    extra: dict[str, object] = field(default_factory=dict)  # what sections pass along

    @property
    def first_pf(self) -> PciAddress:
        return next(a for a in self.tree.addresses if self.tree.device(a).sriov is not None)


def measure(name: str, fn: Callable[[], object], runs: int, *, note: str = "",
            setup: Callable[[], object] | None = None) -> Measurement:
    """Time ``fn`` ``runs`` times (``setup`` before each, untimed); median, min and max."""
    times = []
    for _ in range(runs):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return Measurement(name, runs, statistics.median(times), min(times), max(times), note)


def build_bench_host(root: Path, *, pfs: int, vfs_per_pf: int, runs: int) -> BenchHost:
    tree = SysfsTree(root)
    # One VF of headroom per PF, so that a section can add exactly one VF.
    build_sriov_scale(tree, pfs=pfs, vfs_per_pf=vfs_per_pf, total_vfs=vfs_per_pf + 1)
    return BenchHost(root=root, tree=tree, pfs=pfs, vfs_per_pf=vfs_per_pf, runs=runs)


def add_one_vf(host: BenchHost) -> PciAddress:
    """Enable one more VF on the first PF (the kernel goes through 0; addresses and IOMMU
    group numbers of the existing VFs come back unchanged)."""
    pf = host.first_pf
    before = set(host.tree.vfs(pf))
    after = host.tree.enable_vfs(pf, len(before) + 1)
    (added,) = set(after) - before
    return added


# --- sections --------------------------------------------------------------------------

def bench_discovery(host: BenchHost) -> list[Measurement]:
    devices = len(host.tree.addresses)
    result = [measure("discover", lambda: discover(host.root), host.runs,
                      note=f"{devices} functions")]
    ids = PciIds.load()
    ids.name("8086", "1592")  # parse the database outside the timing
    result.append(measure("discover + pci.ids names",
                          lambda: discover(host.root, pci_ids=ids), host.runs,
                          note="pci.ids loaded" if ids.available else "no pci.ids on host"))
    host.inventory = discover(host.root)
    return result


def with_spec(inventory: Inventory) -> Inventory:
    """The inventory as an agent sends it: VFs selected by a device spec, on physnet1."""
    vf = next(d for d in inventory.devices if d.dev_type is DevType.VF)
    specs = DeviceSpecSet(parse_device_spec(
        {"vendor_id": vf.vendor_id, "product_id": vf.product_id,
         "physical_network": "physnet1"}))
    return Inventory(inventory.host, specs.apply(inventory.devices))


def bench_sync_on(host: BenchHost, url: str, label: str) -> list[Measurement]:
    """First report of a new host, an unchanged re-report, and a report with one more VF."""
    assert host.inventory is not None
    base = with_spec(host.inventory)
    plus_one: Inventory = host.extra["plus_one_vf"]  # type: ignore[assignment]
    now = datetime.now(UTC)
    store = Store.open(url)
    try:
        names = iter(f"bench-{os.getpid()}-{i}" for i in range(1_000_000))
        result = [measure(f"sync first report ({label})",
                          lambda: store.report_inventory(next(names), None, base, now=now),
                          host.runs, note=f"{len(base.devices)} devices")]
        name = f"bench-{os.getpid()}-sync"
        gen = store.report_inventory(name, None, base, now=now).generation

        def unchanged() -> None:
            assert not store.report_inventory(name, gen, base, now=now).changed

        result.append(measure(f"sync unchanged ({label})", unchanged, host.runs))
        state = {"gen": gen}

        def back_to_base() -> None:
            state["gen"] = store.report_inventory(name, state["gen"], base, now=now).generation

        def one_more() -> None:
            res = store.report_inventory(name, state["gen"], plus_one, now=now)
            assert res.added == 1 and res.gone == 0, res  # and the PF: num_vfs + 1
            state["gen"] = res.generation

        result.append(measure(f"sync one VF added ({label})", one_more, host.runs,
                              setup=back_to_base))
        return result
    finally:
        store.close()


def bench_sync(host: BenchHost) -> list[Measurement]:
    """Inventory sync through the store, on SQLite and on ``--db`` if given."""
    assert host.inventory is not None
    pf = host.first_pf
    vfs = len(host.tree.vfs(pf))
    add_one_vf(host)
    host.extra["plus_one_vf"] = with_spec(discover(host.root))
    host.tree.enable_vfs(pf, vfs)  # leave the host as the sections before found it
    with tempfile.TemporaryDirectory(prefix="pcipass-bench-db-") as tmp:
        result = bench_sync_on(host, f"sqlite:///{Path(tmp) / 'bench.db'}", "sqlite")
    db = host.extra.get("db")
    if isinstance(db, str):
        result += bench_sync_on(host, db, db.split(":", 1)[0].split("+", 1)[0])
    return result


SECTIONS: list[Callable[[BenchHost], list[Measurement]]] = [bench_discovery, bench_sync]


# --- running and printing --------------------------------------------------------------

def default_workdir() -> Path | None:
    """tmpfs when there is one: building ~10k files on a disk costs seconds per run, and
    discovery reads from the page cache either way."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def run(*, pfs: int, vfs_per_pf: int, runs: int,
        sections: Sequence[Callable[[BenchHost], list[Measurement]]] = SECTIONS,
        workdir: Path | None = None, db: str | None = None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="pcipass-bench-", dir=workdir) as tmp:
        start = time.perf_counter()
        host = build_bench_host(Path(tmp), pfs=pfs, vfs_per_pf=vfs_per_pf, runs=runs)
        if db is not None:
            host.extra["db"] = db
        build_s = time.perf_counter() - start
        results = [Measurement("build sysfs tree", 1, build_s, build_s, build_s)]
        for section in sections:
            results.extend(section(host))
        return {
            "host": {"pfs": pfs, "vfs_per_pf": vfs_per_pf,
                     "devices": len(host.tree.addresses)},
            "runs": runs,
            "workdir": str(Path(tmp).parent),
            "results": [asdict(m) for m in results],
        }


def print_table(report: dict[str, object]) -> None:
    host = report["host"]
    assert isinstance(host, dict)
    print(f"host: {host['pfs']} PFs x {host['vfs_per_pf']} VFs, {host['devices']} PCI functions"
          f" (tree in {report['workdir']})")
    rows = report["results"]
    assert isinstance(rows, list)
    print(f"{'benchmark':<34} {'runs':>4} {'median ms':>10} {'min ms':>9} {'max ms':>9}  note")
    for r in rows:
        print(f"{r['name']:<34} {r['runs']:>4} {r['median_s'] * 1000:>10.1f} "
              f"{r['min_s'] * 1000:>9.1f} {r['max_s'] * 1000:>9.1f}  {r['note']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pfs", type=int, default=4)
    parser.add_argument("--vfs", type=int, default=256, help="VFs per PF")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=default_workdir(),
                        help="where to build the tree (default: /dev/shm if writable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--db", help="also time inventory sync on this database URL "
                        "(a scratch database: benchmark hosts are left in it)")
    args = parser.parse_args(argv)
    report = run(pfs=args.pfs, vfs_per_pf=args.vfs, runs=args.runs, workdir=args.dir,
                 db=args.db)
    if args.json:
        json.dump(report, sys.stdout)
        print()
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
