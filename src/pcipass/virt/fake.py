"""A hypervisor made of files, for the demo, the scale tests and failure-path tests.

It keeps libvirt's rules that matter to pcipass: names and UUIDs are unique, a running domain
cannot start again, a PCI function serves one running domain at a time, an unmanaged hostdev
must be detached first, a device in use cannot be re-attached, an undefined running domain
lives on until destroyed. Everything sits in one state directory, so a restarted agent (or a
test in another process) sees the same hypervisor::

    STATE/domains/NAME.xml      persistent definitions
    STATE/running/NAME.xml      live domains (the XML they were started with, plus hot-plugs)
    STATE/detached/ADDRESS      functions detached for unmanaged use
    STATE/migratable/ADDRESS    functions whose host driver can migrate them (VFIO migration)
    STATE/failures.json         failures injected by tests (see :meth:`inject_failure`)
    STATE/calls.jsonl           every state-changing call and its outcome

Each operation holds an exclusive lock on ``STATE/lock``, so processes may share a directory.

Hot-plug keeps libvirt's rules too: an attached hostdev or VF must be free (and detached, when
unmanaged) like one in a booting domain; a device is matched by its source PCI address (a
``<hostdev>``) or its MAC (an ``<interface>``); ``live`` needs a running domain, ``config`` a
persistent one.

A migration's destination is another fake, named by its state directory:
``fake:///path/to/state`` (see :attr:`FakeVirtDriver.uri`), so two agents' fakes in one test
can hand a domain over. Both directories are locked (in path order) for the move. A running
domain that still holds a passed-through function is refused, as QEMU refuses, unless the
function is marked migratable on the source; the destination must have the functions of the
XML it receives free (and detached, when unmanaged). The source records ``migrate``, the
destination ``incoming_migration``; a failure injected into either refuses the move before
anything changes.
"""

from __future__ import annotations

import builtins
import copy
import fcntl
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote, urlsplit

from lxml import etree

from pcipass.errors import InvalidInput, VirtError
from pcipass.pci.address import PciAddress
from pcipass.virt.driver import Operation, VirtDriver, check_affect
from pcipass.virt.xml import GuestHostdev, parse_xml, read_hostdevs

__all__ = ["Call", "Failure", "FakeVirtDriver"]

T = TypeVar("T")

_RECORDED = frozenset({Operation.DEFINE, Operation.START, Operation.DESTROY, Operation.UNDEFINE,
                       Operation.NODEDEV_DETACH, Operation.NODEDEV_REATTACH,
                       Operation.ATTACH_DEVICE, Operation.DETACH_DEVICE, Operation.MIGRATE,
                       Operation.INCOMING_MIGRATION})
SCHEME = "fake"


@dataclass(frozen=True, slots=True)
class Call:
    """One recorded call: what, on which domain name or PCI address, and the error if any."""

    operation: Operation
    target: str
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """An injected failure: ``operation`` on ``target`` (any when None) fails with ``message``,
    the next ``times`` times (every time when None)."""

    operation: Operation
    message: str
    target: str | None = None
    times: int | None = 1


def _write(path: Path, text: str) -> None:
    """Write whole or not at all: a killed agent leaves the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _file_name(name: str) -> str:
    return quote(name, safe="") + ".xml"


def _domain_name(file: Path) -> str:
    return unquote(file.name.removesuffix(".xml"))


def device_key(el: etree._Element) -> str | None:
    """What names a pluggable device: a hostdev's source PCI address, an interface's MAC."""
    if el.tag == "hostdev" and el.get("type") == "pci":
        found = read_hostdevs(_wrap(el))
        return f"PCI device {found[0].host}" if found else None
    if el.tag == "interface":
        mac = el.find("mac")
        address = mac.get("address") if mac is not None else None
        return f"interface with MAC {address.lower()}" if address else None
    return None


def _wrap(el: etree._Element) -> etree._Element:
    """A device fragment inside a bare domain, so the domain readers can read it."""
    root = etree.Element("domain")
    etree.SubElement(root, "devices").append(copy.deepcopy(el))
    return root


def _functions(el: etree._Element) -> tuple[GuestHostdev, ...]:
    """The host PCI functions a device fragment passes through (none for macvtap)."""
    return read_hostdevs(_wrap(el), interfaces=True)


def _devices(root: etree._Element) -> etree._Element:
    devices = root.find("devices")
    return devices if devices is not None else etree.SubElement(root, "devices")


def state_dir_of(uri: str) -> Path:
    """The state directory a ``fake:///path`` URI names."""
    parts = urlsplit(uri)
    path = unquote(parts.path)
    if parts.scheme != SCHEME or parts.netloc or not path.startswith("/") \
            or parts.query or parts.fragment:
        raise InvalidInput(f"{uri!r} is not a fake hypervisor URI (fake:///path/to/state)",
                           field="dest_uri")
    return Path(path)


class FakeVirtDriver(VirtDriver):
    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self._domains = self.state_dir / "domains"
        self._running = self.state_dir / "running"
        self._detached = self.state_dir / "detached"
        self._migratable = self.state_dir / "migratable"
        for d in (self._domains, self._running, self._detached, self._migratable):
            d.mkdir(parents=True, exist_ok=True)
        self._failures = self.state_dir / "failures.json"
        self._calls = self.state_dir / "calls.jsonl"
        self._lock = self.state_dir / "lock"

    # -- test controls ----------------------------------------------------------------------

    def inject_failure(self, operation: Operation | str, message: str = "injected failure", *,
                       target: str | None = None, times: int | None = 1) -> None:
        """Make an operation fail (before it changes anything) with ``message``."""
        failure = Failure(Operation(operation), message, target, times)
        with self._locked():
            self._save_failures([*self._load_failures(), failure])

    def clear_failures(self) -> None:
        with self._locked():
            self._save_failures([])

    @property
    def calls(self) -> builtins.list[Call]:
        if not self._calls.exists():
            return []
        out = []
        for line in self._calls.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            out.append(Call(Operation(rec["operation"]), rec["target"], rec["error"]))
        return out

    @property
    def detached(self) -> set[PciAddress]:
        return {PciAddress.parse(p.name) for p in self._detached.iterdir()}

    def mark_migratable(self, address: PciAddress) -> None:
        """Say that ``address``'s host driver can migrate it (a VFIO variant driver), so a
        running domain holding it may still migrate."""
        with self._locked():
            (self._migratable / str(address)).touch()

    @property
    def migratable(self) -> set[PciAddress]:
        return {PciAddress.parse(p.name) for p in self._migratable.iterdir()}

    @property
    def uri(self) -> str:
        """The URI another fake's :meth:`migrate` names this one by."""
        return f"{SCHEME}://{quote(str(self.state_dir.resolve()))}"

    # -- the driver -------------------------------------------------------------------------

    def define(self, xml: str) -> str:
        try:
            root: etree._Element | None = parse_xml(xml)
            problem = "expected a <domain> with a <name>"
        except InvalidInput as exc:
            root, problem = None, exc.message
        name = root.findtext("name") if root is not None else None
        target = name or "?"

        def run() -> str:
            if root is None or root.tag != "domain" or not name:
                raise self._error(Operation.DEFINE, target, f"XML error: {problem}")
            uuid_text = root.findtext("uuid")
            if uuid_text is None:
                uuid_text = str(uuid.uuid4())
                etree.SubElement(root, "uuid").text = uuid_text
            for other, other_root in self._all_defs():
                other_uuid = other_root.findtext("uuid")
                if other == name and other_uuid != uuid_text:
                    raise self._error(Operation.DEFINE, name, f"operation failed: domain "
                                      f"'{name}' already exists with uuid {other_uuid}")
                if other != name and other_uuid == uuid_text:
                    raise self._error(Operation.DEFINE, name, f"operation failed: domain "
                                      f"'{other}' already exists with uuid {uuid_text}")
            _write(self._domains / _file_name(name), etree.tostring(root, encoding="unicode"))
            return name

        return self._run(Operation.DEFINE, target, run)

    def start(self, name: str) -> None:
        def run() -> None:
            if self._live(name) is not None:
                raise self._error(Operation.START, name, "Requested operation is not valid: "
                                  "domain is already running")
            text = self._config(name)
            if text is None:
                raise self._not_found(Operation.START, name)
            in_use = self._in_use()
            detached = self.detached
            for hd in read_hostdevs(text, interfaces=True):
                if hd.host in in_use:
                    raise self._error(Operation.START, name, f"Requested operation is not "
                                      f"valid: PCI device {hd.host} is in use by driver QEMU, "
                                      f"domain {in_use[hd.host]}")
                if not hd.managed and hd.host not in detached:
                    raise self._error(Operation.START, name, f"PCI device {hd.host} is not "
                                      "detached for an unmanaged hostdev (nodedev detach first)")
            _write(self._running / _file_name(name), text)

        self._run(Operation.START, name, run)

    def destroy(self, name: str) -> None:
        def run() -> None:
            if self._live(name) is None:
                if self._config(name) is None:
                    raise self._not_found(Operation.DESTROY, name)
                return
            (self._running / _file_name(name)).unlink()

        self._run(Operation.DESTROY, name, run)

    def undefine(self, name: str) -> None:
        def run() -> None:
            path = self._domains / _file_name(name)
            if not path.exists():
                if self._live(name) is not None:
                    raise self._error(Operation.UNDEFINE, name, "Requested operation is not "
                                      "valid: cannot undefine transient domain")
                raise self._not_found(Operation.UNDEFINE, name)
            path.unlink()

        self._run(Operation.UNDEFINE, name, run)

    def exists(self, name: str) -> bool:
        return self._run(Operation.EXISTS, name, lambda: (
            self._config(name) is not None or self._live(name) is not None))

    def is_active(self, name: str) -> bool:
        def run() -> bool:
            if self._live(name) is not None:
                return True
            if self._config(name) is None:
                raise self._not_found(Operation.IS_ACTIVE, name)
            return False

        return self._run(Operation.IS_ACTIVE, name, run)

    def list(self) -> list[str]:
        return self._run(Operation.LIST, "domains", lambda: sorted(
            {_domain_name(p) for d in (self._domains, self._running) for p in d.glob("*.xml")}))

    def get_xml(self, name: str) -> str:
        def run() -> str:
            text = self._live(name) or self._config(name)
            if text is None:
                raise self._not_found(Operation.GET_XML, name)
            return text

        return self._run(Operation.GET_XML, name, run)

    def nodedev_detach(self, address: PciAddress) -> None:
        self._run(Operation.NODEDEV_DETACH, str(address),
                  lambda: (self._detached / str(address)).touch())

    def nodedev_reattach(self, address: PciAddress) -> None:
        def run() -> None:
            owner = self._in_use().get(address)
            if owner is not None:
                raise self._error(Operation.NODEDEV_REATTACH, str(address), f"Requested "
                                  f"operation is not valid: PCI device {address} is in use by "
                                  f"driver QEMU, domain {owner}")
            (self._detached / str(address)).unlink(missing_ok=True)

        self._run(Operation.NODEDEV_REATTACH, str(address), run)

    def attach_device(self, name: str, xml: str, *, live: bool = True,
                      config: bool = True) -> None:
        check_affect(live, config)
        op = Operation.ATTACH_DEVICE

        def run() -> None:
            dev, key = self._fragment(op, name, xml)
            targets = self._targets(op, name, live=live, config=config)
            for where, _path, root in targets:
                if any(device_key(d) == key for d in _devices(root)):
                    raise self._error(op, name, f"operation failed: {key} is already in the "
                                      f"{where} domain")
            if live:
                in_use, detached = self._in_use(), self.detached
                for hd in _functions(dev):
                    self._check_free(op, name, hd, in_use, detached)
            for _where, path, root in targets:
                _devices(root).append(copy.deepcopy(dev))
                _write(path, etree.tostring(root, encoding="unicode"))

        self._run(op, name, run)

    def detach_device(self, name: str, xml: str, *, live: bool = True,
                      config: bool = True) -> None:
        check_affect(live, config)
        op = Operation.DETACH_DEVICE

        def run() -> None:
            _dev, key = self._fragment(op, name, xml)
            found = []
            for where, path, root in self._targets(op, name, live=live, config=config):
                match = [d for d in _devices(root) if device_key(d) == key]
                if not match:
                    raise self._error(op, name, f"device not found: no {key} in the {where} "
                                      "domain")
                found.append((path, root, match[0]))
            for path, root, el in found:
                _devices(root).remove(el)
                _write(path, etree.tostring(root, encoding="unicode"))

        self._run(op, name, run)

    def migrate(self, name: str, dest_uri: str, *, live: bool, xml: str | None = None) -> None:
        op = Operation.MIGRATE
        try:
            dest_dir = state_dir_of(dest_uri)
            if not dest_dir.is_dir():
                raise InvalidInput(f"unable to connect to {dest_uri}: no fake hypervisor "
                                   "state there", field="dest_uri")
            dest = FakeVirtDriver(dest_dir)
        except InvalidInput as exc:
            err = self._error(op, name, exc.message)
            with self._locked():
                self._record(op, name, err.message)
            raise err from None
        contacted = False
        first, second = sorted((self, dest), key=lambda d: str(d.state_dir.resolve()))
        with ExitStack() as stack:
            stack.enter_context(first._locked())
            if second.state_dir.resolve() != first.state_dir.resolve():
                stack.enter_context(second._locked())
            try:
                self._take_failure(op, name)
                moving, running = self._outgoing(name, dest, live=live, xml=xml)
                contacted = True
                dest._take_failure(Operation.INCOMING_MIGRATION, name)
                dest._incoming(name, moving, running=running)
                _write(dest._domains / _file_name(name), moving)
                if running:
                    _write(dest._running / _file_name(name), moving)
                (self._running / _file_name(name)).unlink(missing_ok=True)
                (self._domains / _file_name(name)).unlink(missing_ok=True)
            except VirtError as exc:
                self._record(op, name, exc.message)
                if contacted:
                    dest._record(Operation.INCOMING_MIGRATION, name, exc.message)
                raise
            self._record(op, name, None)
            dest._record(Operation.INCOMING_MIGRATION, name, None)

    # -- inside -----------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock.open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _run(self, op: Operation, target: str, fn: Callable[[], T]) -> T:
        with self._locked():
            try:
                self._take_failure(op, target)
                result = fn()
            except VirtError as exc:
                self._record(op, target, exc.message)
                raise
            self._record(op, target, None)
            return result

    def _record(self, op: Operation, target: str, error: str | None) -> None:
        if op in _RECORDED:
            with self._calls.open("a", encoding="utf-8") as f:
                f.write(json.dumps({"operation": str(op), "target": target, "error": error})
                        + "\n")

    def _load_failures(self) -> builtins.list[Failure]:
        if not self._failures.exists():
            return []
        return [Failure(Operation(f["operation"]), f["message"], f["target"], f["times"])
                for f in json.loads(self._failures.read_text(encoding="utf-8"))]

    def _save_failures(self, failures: builtins.list[Failure]) -> None:
        _write(self._failures, json.dumps([
            {"operation": str(f.operation), "message": f.message, "target": f.target,
             "times": f.times} for f in failures]))

    def _take_failure(self, op: Operation, target: str) -> None:
        failures = self._load_failures()
        for i, f in enumerate(failures):
            if f.operation is op and f.target in (None, target):
                if f.times is not None:
                    rest = f.times - 1
                    failures[i:i + 1] = [] if rest <= 0 else [
                        Failure(f.operation, f.message, f.target, rest)]
                    self._save_failures(failures)
                raise self._error(op, target, f.message)

    @staticmethod
    def _error(op: Operation, target: str, message: str) -> VirtError:
        what = f"PCI device {target}" if op in (Operation.NODEDEV_DETACH,
                                               Operation.NODEDEV_REATTACH) else f"domain {target!r}"
        return VirtError(f"{op} {what}: {message}", operation=str(op))

    def _not_found(self, op: Operation, name: str) -> VirtError:
        return self._error(op, name, f"Domain not found: no domain with matching name '{name}'")

    def _fragment(self, op: Operation, name: str, xml: str) -> tuple[etree._Element, str]:
        """A device fragment and its key, or libvirt's complaint about it."""
        try:
            dev = parse_xml(xml)
        except InvalidInput as exc:
            raise self._error(op, name, f"XML error: {exc.message}") from None
        key = device_key(dev)
        if key is None:
            raise self._error(op, name, "unsupported configuration: expected a PCI <hostdev> "
                              f"or an <interface> with a MAC, not <{etree.QName(dev).localname}>")
        return dev, key

    def _targets(self, op: Operation, name: str, *, live: bool,
                 config: bool) -> builtins.list[tuple[str, Path, etree._Element]]:
        """The XML a device change applies to: ("running"|"persistent", file, parsed)."""
        live_text, config_text = self._live(name), self._config(name)
        if live_text is None and config_text is None:
            raise self._not_found(op, name)
        out = []
        if live:
            if live_text is None:
                raise self._error(op, name, "Requested operation is not valid: domain is not "
                                  "running")
            out.append(("running", self._running / _file_name(name), parse_xml(live_text)))
        if config:
            if config_text is None:
                raise self._error(op, name, "Requested operation is not valid: cannot modify "
                                  "the persistent configuration of a transient domain")
            out.append(("persistent", self._domains / _file_name(name),
                        parse_xml(config_text)))
        return out

    def _check_free(self, op: Operation, name: str, hd: GuestHostdev,
                    in_use: dict[PciAddress, str], detached: set[PciAddress]) -> None:
        if hd.host in in_use:
            raise self._error(op, name, f"Requested operation is not valid: PCI device "
                              f"{hd.host} is in use by driver QEMU, domain {in_use[hd.host]}")
        if not hd.managed and hd.host not in detached:
            raise self._error(op, name, f"PCI device {hd.host} is not detached for an "
                              "unmanaged hostdev (nodedev detach first)")

    def _outgoing(self, name: str, dest: FakeVirtDriver, *, live: bool,
                  xml: str | None) -> tuple[str, bool]:
        """The source's checks: what XML moves, and whether the guest is running."""
        op = Operation.MIGRATE
        if dest.state_dir.resolve() == self.state_dir.resolve():
            raise self._error(op, name, "internal error: Attempt to migrate guest to the same "
                              "host")
        live_text, config_text = self._live(name), self._config(name)
        current = live_text or config_text
        if current is None:
            raise self._not_found(op, name)
        if live and live_text is None:
            raise self._error(op, name, "Requested operation is not valid: domain is not "
                              "running (a live migration needs a running guest)")
        if live_text is not None:
            movable = self.migratable
            for hd in read_hostdevs(live_text, interfaces=True):
                if hd.host not in movable:
                    raise self._error(op, name, "Requested operation is not valid: cannot "
                                      f"migrate a domain with PCI device {hd.host} passed "
                                      "through (unplug it first)")
        if xml is None:
            return current, live_text is not None
        try:
            new, old = parse_xml(xml), parse_xml(current)
        except InvalidInput as exc:
            raise self._error(op, name, f"XML error: {exc.message}") from None
        for field in ("name", "uuid"):
            if new.findtext(field) != old.findtext(field):
                raise self._error(op, name, f"unsupported configuration: target domain "
                                  f"{field} {new.findtext(field)!r} does not match source "
                                  f"{old.findtext(field)!r}")
        return xml, live_text is not None

    def _incoming(self, name: str, xml: str, *, running: bool) -> None:
        """The destination's checks, as this (destination) hypervisor."""
        op = Operation.INCOMING_MIGRATION
        if self._config(name) is not None or self._live(name) is not None:
            raise self._error(op, name, f"operation failed: domain '{name}' already exists "
                              "on the destination")
        uuid_text = parse_xml(xml).findtext("uuid")
        for other, other_root in self._all_defs():
            if uuid_text is not None and other_root.findtext("uuid") == uuid_text:
                raise self._error(op, name, f"operation failed: domain '{other}' already "
                                  f"exists with uuid {uuid_text}")
        if running:
            in_use, detached = self._in_use(), self.detached
            for hd in read_hostdevs(xml, interfaces=True):
                self._check_free(op, name, hd, in_use, detached)

    def _config(self, name: str) -> str | None:
        path = self._domains / _file_name(name)
        return path.read_text(encoding="utf-8") if path.exists() else None

    def _live(self, name: str) -> str | None:
        path = self._running / _file_name(name)
        return path.read_text(encoding="utf-8") if path.exists() else None

    def _all_defs(self) -> Iterator[tuple[str, etree._Element]]:
        for path in self._domains.glob("*.xml"):
            yield _domain_name(path), parse_xml(path.read_text(encoding="utf-8"))

    def _in_use(self) -> dict[PciAddress, str]:
        """PCI functions held by running domains (hostdevs and hostdev interfaces)."""
        out: dict[PciAddress, str] = {}
        for path in self._running.glob("*.xml"):
            for hd in read_hostdevs(path.read_text(encoding="utf-8"), interfaces=True):
                out[hd.host] = _domain_name(path)
        return out
