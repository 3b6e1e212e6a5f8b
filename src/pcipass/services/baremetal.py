"""Bare-metal servers: a whole machine per server.

A flavor with ``pcipass:baremetal = "true"`` boots on a bare-metal host (one whose agent
reports ``kind: baremetal``) that runs no server, and takes every free assignable device there
(the flavor's requests get theirs under their alias, the rest come with the machine) and all
of its vCPUs and RAM. The search is the boot's (:class:`pcipass.services.boot.Placer` with
``baremetal``): the store narrows to free machines whose devices cover the requests, smallest
first under ``pack``; :func:`pcipass.sched.fit.fit_machine` judges them; the claim re-checks
under the host's lock that the machine is still free. Other boots never land on bare-metal
hosts.

A bare-metal server has no hypervisor under it, so it cannot be resized, migrated (cold or
live) or hot-plugged: :func:`refuse_baremetal` is the one 409 (code ``baremetal_server``)
those flows raise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pcipass.errors import Conflict, InvalidInput
from pcipass.pci.device import HostKind
from pcipass.pci.request import BAREMETAL_SPEC, baremetal_requested
from pcipass.records import FlavorRecord, ServerRecord
from pcipass.sched.fit import NoFit, NoFitCode, shortage_verdict
from pcipass.sched.snapshot import BootRequest
from pcipass.store import Store
from pcipass.store.candidates import MachineCounts
from pcipass.store.claims import down_verdict, kind_verdict, occupied_verdict, reserved_verdict

__all__ = ["BAREMETAL_SERVER", "check_nics", "is_baremetal", "machine_verdicts",
           "on_baremetal", "refuse_baremetal"]

BAREMETAL_SERVER = "baremetal_server"   # the error code of every refusal here


def is_baremetal(flavor: FlavorRecord) -> bool:
    """Whether the flavor asks for a whole bare-metal machine."""
    return baremetal_requested(flavor.extra_specs)


def check_nics(flavor: FlavorRecord, nics: Sequence[Mapping[str, object]]) -> None:
    """A bare-metal boot takes NICs with the machine: an SR-IOV port needs a hypervisor to
    program its VF and plug it into a guest, so a bare-metal boot with ``nics`` is refused."""
    if nics:
        raise InvalidInput(
            f"flavor {flavor.name} is a bare-metal flavor ({BAREMETAL_SPEC}): the machine's "
            "NICs come with it, and ports need a hypervisor; boot it without nics",
            field="nics")


def on_baremetal(store: Store, server: ServerRecord) -> bool:
    """Whether the server runs on a bare-metal host (it has the whole machine)."""
    if server.host is None:
        return False
    return store.get_host(server.host).info.kind is HostKind.BAREMETAL


def refuse_baremetal(store: Store, server: ServerRecord, action: str) -> None:
    """Raise the 409 ``baremetal_server`` when ``server`` has a whole bare-metal machine:
    ``action`` ("resize", "migrate", "live-migrate", "attach devices", ...) needs a
    hypervisor, which a bare-metal host does not have."""
    if on_baremetal(store, server):
        raise Conflict(
            f"{action} refused for server {server.name}: it has bare-metal host {server.host} "
            "whole, with no hypervisor under it (a bare-metal server cannot be resized, "
            "migrated or have devices hot-plugged)", field="server", code=BAREMETAL_SERVER)


def machine_verdicts(req: BootRequest, counts: MachineCounts) -> list[tuple[int, NoFit]]:
    """A bare-metal boot's SQL counts as ``fit_machine``'s verdicts would read, with how many
    hosts each (for :func:`pcipass.services.boot.sentence`)."""
    out: list[tuple[int, NoFit]] = [
        (counts.hypervisors, kind_verdict("", True)),
        (counts.reserved, reserved_verdict("")),
        (counts.down, down_verdict("")),
        (counts.occupied, occupied_verdict("")),
        (counts.vcpus, NoFit("", NoFitCode.VCPUS, "lacks vCPUs", "lack vCPUs")),
        (counts.ram, NoFit("", NoFitCode.RAM, "lacks RAM", "lack RAM")),
    ]
    out += [(n, shortage_verdict("", r)) for r, n in zip(req.hard, counts.lack, strict=True)]
    return [(n, v) for n, v in out if n]
