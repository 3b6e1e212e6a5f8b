"""A hypervisor made of files, for the demo, the scale tests and failure-path tests.

It keeps libvirt's rules that matter to pcipass: names and UUIDs are unique, a running domain
cannot start again, a PCI function serves one running domain at a time, an unmanaged hostdev
must be detached first, a device in use cannot be re-attached, an undefined running domain
lives on until destroyed. Everything sits in one state directory, so a restarted agent (or a
test in another process) sees the same hypervisor::

    STATE/domains/NAME.xml      persistent definitions
    STATE/running/NAME.xml      live domains (the XML they were started with)
    STATE/detached/ADDRESS      functions detached for unmanaged use
    STATE/failures.json         failures injected by tests (see :meth:`inject_failure`)
    STATE/calls.jsonl           every state-changing call and its outcome

Each operation holds an exclusive lock on ``STATE/lock``, so processes may share a directory.
"""

from __future__ import annotations

import builtins
import fcntl
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, unquote

from lxml import etree

from pcipass.errors import InvalidInput, VirtError
from pcipass.pci.address import PciAddress
from pcipass.virt.driver import Operation, VirtDriver
from pcipass.virt.xml import parse_xml, read_hostdevs

__all__ = ["Call", "Failure", "FakeVirtDriver"]

T = TypeVar("T")

_RECORDED = frozenset({Operation.DEFINE, Operation.START, Operation.DESTROY, Operation.UNDEFINE,
                       Operation.NODEDEV_DETACH, Operation.NODEDEV_REATTACH})


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


class FakeVirtDriver(VirtDriver):
    def __init__(self, state_dir: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self._domains = self.state_dir / "domains"
        self._running = self.state_dir / "running"
        self._detached = self.state_dir / "detached"
        for d in (self._domains, self._running, self._detached):
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
