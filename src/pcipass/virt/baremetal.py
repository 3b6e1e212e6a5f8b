"""Bare-metal hosts: no hypervisor, one server on the whole machine.

:class:`BareMetalDriver` stands behind the :class:`~pcipass.virt.driver.VirtDriver` interface
where it fits: a server's "domain" is the machine itself, named as a domain would be.
``power_on`` (a spawn) gives the machine, with the devices the server got, to the server and
powers it on; ``power_off`` (a destroy) powers it off and frees it. ``start``/``destroy``/
``exists``/``is_active``/``list`` map onto those; there is no domain XML, no hot-plug, no
node-device binding and no migration (each is a :class:`~pcipass.errors.VirtError` saying so).

:class:`FakeBareMetalDriver` (``pcipass agent --driver baremetal-fake``) keeps the machine as
files, so a test in another process sees what the agent did::

    STATE/power.json      {"server": NAME | null, "on": bool, "devices": [address, ...]}
    STATE/calls.jsonl     every power call: {"op": "power_on" | "power_off", "server", ...}
    STATE/failures.json   power calls that must fail (:meth:`FakeBareMetalDriver.fail`)

Both calls are idempotent, as a resumed task needs: powering on the machine already on for
that server, or off when it is off, changes nothing (and is recorded all the same).
"""

from __future__ import annotations

import fcntl
import json
import os
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from pcipass.errors import VirtError
from pcipass.pci.address import PciAddress
from pcipass.virt.driver import VirtDriver

__all__ = ["POWER_OFF", "POWER_ON", "BareMetalDriver", "FakeBareMetalDriver"]

POWER_ON = "power_on"
POWER_OFF = "power_off"


class BareMetalDriver(VirtDriver):
    """A machine that one server has whole. Raises :class:`VirtError` on any failure."""

    @abstractmethod
    def power_on(self, name: str, devices: Sequence[PciAddress]) -> None:
        """Give the machine (with ``devices``) to server ``name`` and power it on; nothing to
        do when it is on for ``name`` already; an error while another server has it."""

    @abstractmethod
    def power_off(self, name: str) -> None:
        """Power the machine off and free it; nothing to do when ``name`` does not have it."""

    @abstractmethod
    def holder(self) -> str | None:
        """The server that has the machine now (powered on or not), if any."""

    @abstractmethod
    def powered(self) -> bool:
        """Whether the machine is on."""

    # -- the VirtDriver calls that fit ----------------------------------------------------

    def start(self, name: str) -> None:
        self.power_on(name, ())

    def destroy(self, name: str) -> None:
        self.power_off(name)

    def undefine(self, name: str) -> None:
        """Nothing is defined on a bare-metal machine: powering off frees it."""

    def exists(self, name: str) -> bool:
        return self.holder() == name

    def is_active(self, name: str) -> bool:
        if self.holder() != name:
            raise VirtError(f"server {name} does not have this bare-metal machine",
                            operation="is_active")
        return self.powered()

    def list(self) -> list[str]:
        holder = self.holder()
        return [] if holder is None else [holder]

    # -- and those that do not ------------------------------------------------------------

    def _none(self, operation: str, what: str) -> NoReturn:
        raise VirtError(f"a bare-metal host has no hypervisor: {what}", operation=operation)

    def define(self, xml: str) -> str:
        self._none("define", "there is no domain to define")

    def get_xml(self, name: str) -> str:
        self._none("get_xml", "there is no domain XML")

    def nodedev_detach(self, address: PciAddress) -> None:
        self._none("nodedev_detach", "its devices go with the machine, not to a guest")

    def nodedev_reattach(self, address: PciAddress) -> None:
        self._none("nodedev_reattach", "its devices go with the machine, not to a guest")

    def attach_device(self, name: str, xml: str, *, live: bool = True,
                      config: bool = True) -> None:
        self._none("attach_device", "devices cannot be hot-plugged")

    def detach_device(self, name: str, xml: str, *, live: bool = True,
                      config: bool = True) -> None:
        self._none("detach_device", "devices cannot be hot-plugged")

    def migrate(self, name: str, dest_uri: str, *, live: bool, xml: str | None = None) -> None:
        self._none("migrate", "a bare-metal server cannot migrate")


class FakeBareMetalDriver(BareMetalDriver):
    """A machine made of files in ``state_dir`` (see the module)."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.state_dir / "lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read(self, name: str, default: Any) -> Any:
        try:
            return json.loads((self.state_dir / name).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return default
        except (OSError, ValueError) as exc:
            raise VirtError(f"bare-metal state {name} is unreadable: {exc}",
                            operation="power") from None

    def _write(self, name: str, value: Any) -> None:
        tmp = self.state_dir / f".{name}.tmp"
        tmp.write_text(json.dumps(value), encoding="utf-8")
        os.replace(tmp, self.state_dir / name)

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = self._read("power.json", {"server": None, "on": False,
                                                          "devices": []})
        return state

    def _record(self, op: str, server: str, error: str | None = None,
                devices: Sequence[PciAddress] = ()) -> None:
        entry = {"op": op, "server": server, "devices": [str(d) for d in devices],
                 "error": error}
        with open(self.state_dir / "calls.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def _check_failure(self, op: str, server: str, devices: Sequence[PciAddress] = ()) -> None:
        failures: list[str] = self._read("failures.json", [])
        if op in failures:
            message = f"injected failure: {op} of server {server}"
            self._record(op, server, message, devices)
            raise VirtError(message, operation=op)

    def fail(self, op: str) -> None:
        """Make every later ``op`` (``power_on`` or ``power_off``) fail (tests)."""
        with self._locked():
            failures: list[str] = self._read("failures.json", [])
            self._write("failures.json", sorted({*failures, op}))

    def calls(self) -> list[dict[str, Any]]:
        """Every power call so far, oldest first."""
        try:
            text = (self.state_dir / "calls.jsonl").read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def devices(self) -> list[str]:
        """The devices the machine was powered on with (while a server has it)."""
        with self._locked():
            return list(self._state()["devices"])

    def power_on(self, name: str, devices: Sequence[PciAddress]) -> None:
        with self._locked():
            self._check_failure(POWER_ON, name, devices)
            state = self._state()
            if state["server"] not in (None, name):
                message = (f"the machine is {'on' if state['on'] else 'held'} for server "
                           f"{state['server']}")
                self._record(POWER_ON, name, message, devices)
                raise VirtError(message, operation=POWER_ON)
            given = sorted({str(d) for d in devices} | set(state["devices"]))
            self._write("power.json", {"server": name, "on": True, "devices": given})
            self._record(POWER_ON, name, None, devices)

    def power_off(self, name: str) -> None:
        with self._locked():
            self._check_failure(POWER_OFF, name)
            state = self._state()
            if state["server"] == name:
                self._write("power.json", {"server": None, "on": False, "devices": []})
            self._record(POWER_OFF, name)

    def holder(self) -> str | None:
        with self._locked():
            server: str | None = self._state()["server"]
            return server

    def powered(self) -> bool:
        with self._locked():
            return bool(self._state()["on"])
