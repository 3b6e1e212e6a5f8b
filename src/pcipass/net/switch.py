"""The switch plug-in point: tell a PF's upstream switch about a VF's VLAN and MAC.

A VF's VLAN is enforced by its PF, but the switch port above the PF must carry that VLAN too.
Nothing in pcipass knows the switch, so a :class:`SwitchDriver` found by name among the
``pcipass.switch_drivers`` entry points is called when a port is bound to a VF and when it is
unbound. Two are bundled: ``noop`` (the default, for switch ports trunked by the operator) and
``log`` (records the calls: to a logger, in memory, and optionally as JSON lines in a file).

A driver is any callable entry point (usually a class) that takes keyword options and returns
an object with ``bind`` and ``unbind``; it raises a :mod:`pcipass.errors` error on failure.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from pcipass.errors import InvalidConfig

ENTRY_POINT_GROUP = "pcipass.switch_drivers"
DEFAULT_SWITCH_DRIVER = "noop"

log = logging.getLogger(__name__)


@runtime_checkable
class SwitchDriver(Protocol):
    """Told on bind and unbind; ``vlan`` None is an untagged (flat) network."""

    def bind(self, host: str, pf: str, vlan: int | None, mac: str) -> None: ...

    def unbind(self, host: str, pf: str, vlan: int | None, mac: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SwitchCall:
    """One call a :class:`LogSwitchDriver` saw."""

    op: Literal["bind", "unbind"]
    host: str
    pf: str
    vlan: int | None
    mac: str


class NoopSwitchDriver:
    """The default: the switch already carries every VLAN the PFs use."""

    def bind(self, host: str, pf: str, vlan: int | None, mac: str) -> None:
        return None

    def unbind(self, host: str, pf: str, vlan: int | None, mac: str) -> None:
        return None


class LogSwitchDriver:
    """Records every call: the ``pcipass.net.switch`` logger, ``calls``, and ``path`` if given.

    The JSON-lines file is appended to, one object per call, so a test or an operator's
    script can replay what the switch would have been asked.
    """

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.calls: list[SwitchCall] = []
        self._lock = threading.Lock()

    def bind(self, host: str, pf: str, vlan: int | None, mac: str) -> None:
        self._record(SwitchCall("bind", host, pf, vlan, mac))

    def unbind(self, host: str, pf: str, vlan: int | None, mac: str) -> None:
        self._record(SwitchCall("unbind", host, pf, vlan, mac))

    def _record(self, call: SwitchCall) -> None:
        log.info("switch %s: host %s PF %s VLAN %s MAC %s", call.op, call.host, call.pf,
                 call.vlan if call.vlan is not None else "untagged", call.mac)
        with self._lock:
            self.calls.append(call)
            if self.path is not None:
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(asdict(call), sort_keys=True) + "\n")


def switch_driver_names() -> list[str]:
    """The names installed under ``pcipass.switch_drivers``, sorted."""
    return sorted({ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def load_switch_driver(name: str = DEFAULT_SWITCH_DRIVER,
                       options: Mapping[str, object] | None = None) -> SwitchDriver:
    """Find ``name`` among the entry points and build it with ``options`` as keywords.

    An unknown name, a driver that does not import, refuses its options or builds something
    without ``bind``/``unbind`` is :class:`~pcipass.errors.InvalidConfig` naming it.
    """
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        known = ", ".join(switch_driver_names()) or "none installed"
        raise InvalidConfig(f"unknown switch driver {name!r} (known: {known})",
                            field="switch_driver")
    targets = {ep.value for ep in found}
    if len(targets) > 1:
        raise InvalidConfig(f"switch driver {name!r} is defined more than once "
                            f"({', '.join(sorted(targets))})", field="switch_driver")
    try:
        factory = found[0].load()
    except Exception as exc:  # an entry point may fail to import for any reason
        raise InvalidConfig(f"switch driver {name!r} ({found[0].value}) cannot be loaded: "
                            f"{exc}", field="switch_driver") from exc
    try:
        driver = factory(**dict(options or {}))
    except TypeError as exc:
        raise InvalidConfig(f"switch driver {name!r} refused its options "
                            f"{sorted(options or {})}: {exc}",
                            field="switch_driver_options") from exc
    if not isinstance(driver, SwitchDriver):
        raise InvalidConfig(f"switch driver {name!r} ({found[0].value}) has no bind/unbind",
                            field="switch_driver")
    return driver
