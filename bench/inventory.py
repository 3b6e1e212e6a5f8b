"""Inventory benchmarks on a large SR-IOV host (4 PFs x 256 VFs by default).

    .venv/bin/python bench/inventory.py [--pfs 4] [--vfs 256] [--runs 7] [--json]

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
from pathlib import Path

from pcipass.host.discovery import discover
from pcipass.host.pciids import PciIds
from pcipass.host.profiles import build_sriov_scale
from pcipass.host.sysfs_tree import SysfsTree
from pcipass.pci.address import PciAddress
from pcipass.pci.inventory import Inventory


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


SECTIONS: list[Callable[[BenchHost], list[Measurement]]] = [bench_discovery]


# --- running and printing --------------------------------------------------------------

def default_workdir() -> Path | None:
    """tmpfs when there is one: building ~10k files on a disk costs seconds per run, and
    discovery reads from the page cache either way."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def run(*, pfs: int, vfs_per_pf: int, runs: int,
        sections: Sequence[Callable[[BenchHost], list[Measurement]]] = SECTIONS,
        workdir: Path | None = None) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="pcipass-bench-", dir=workdir) as tmp:
        start = time.perf_counter()
        host = build_bench_host(Path(tmp), pfs=pfs, vfs_per_pf=vfs_per_pf, runs=runs)
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
    args = parser.parse_args(argv)
    report = run(pfs=args.pfs, vfs_per_pf=args.vfs, runs=args.runs, workdir=args.dir)
    if args.json:
        json.dump(report, sys.stdout)
        print()
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
