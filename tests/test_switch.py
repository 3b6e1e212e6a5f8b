"""The switch plug-in point: drivers found through the installed entry points."""

from __future__ import annotations

import json
import logging
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from pcipass.errors import InvalidConfig
from pcipass.net import switch
from pcipass.net.switch import (
    ENTRY_POINT_GROUP,
    LogSwitchDriver,
    NoopSwitchDriver,
    SwitchCall,
    SwitchDriver,
    load_switch_driver,
    switch_driver_names,
)

MAC = "fa:16:3e:12:34:56"


def test_bundled_drivers_are_registered_entry_points() -> None:
    # Fails when the package was installed without its entry points (`pip install -e .`).
    assert {"noop", "log"} <= set(switch_driver_names())
    assert isinstance(load_switch_driver(), NoopSwitchDriver)
    assert isinstance(load_switch_driver("noop"), SwitchDriver)


def test_log_driver_records_calls(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "switch.jsonl"
    driver = load_switch_driver("log", {"path": str(path)})
    assert isinstance(driver, LogSwitchDriver)
    with caplog.at_level(logging.INFO, logger="pcipass.net.switch"):
        driver.bind("compute-1", "ens1f0", 100, MAC)
        driver.unbind("compute-1", "ens1f0", None, MAC)
    assert driver.calls == [SwitchCall("bind", "compute-1", "ens1f0", 100, MAC),
                            SwitchCall("unbind", "compute-1", "ens1f0", None, MAC)]
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"op": "bind", "host": "compute-1", "pf": "ens1f0", "vlan": 100, "mac": MAC},
        {"op": "unbind", "host": "compute-1", "pf": "ens1f0", "vlan": None, "mac": MAC},
    ]
    assert [r.getMessage() for r in caplog.records] == [
        f"switch bind: host compute-1 PF ens1f0 VLAN 100 MAC {MAC}",
        f"switch unbind: host compute-1 PF ens1f0 VLAN untagged MAC {MAC}",
    ]


def test_log_driver_without_a_file_keeps_calls_in_memory() -> None:
    driver = LogSwitchDriver()
    driver.bind("h", "p", 1, MAC)
    assert driver.calls == [SwitchCall("bind", "h", "p", 1, MAC)]


def test_noop_driver_does_nothing() -> None:
    driver = NoopSwitchDriver()
    driver.bind("h", "p", 1, MAC)
    driver.unbind("h", "p", 1, MAC)
    assert vars(driver) == {}


def test_unknown_driver_is_refused_by_name() -> None:
    with pytest.raises(InvalidConfig) as caught:
        load_switch_driver("cisco-nexus")
    assert caught.value.field == "switch_driver"
    assert "unknown switch driver 'cisco-nexus'" in caught.value.message
    assert "log, noop" in caught.value.message


def test_bad_options_are_refused() -> None:
    with pytest.raises(InvalidConfig) as caught:
        load_switch_driver("noop", {"speed": 10})
    assert caught.value.field == "switch_driver_options"
    assert "'noop' refused its options ['speed']" in caught.value.message


def _entry_points(*eps: EntryPoint) -> object:
    def fake(*, group: str) -> list[EntryPoint]:
        assert group == ENTRY_POINT_GROUP
        return list(eps)
    return fake


@pytest.mark.parametrize(("eps", "words"), [
    ([EntryPoint("bad", "pcipass.no_such_module:Driver", ENTRY_POINT_GROUP)],
     "cannot be loaded: No module named 'pcipass.no_such_module'"),
    ([EntryPoint("bad", "builtins:object", ENTRY_POINT_GROUP)], "has no bind/unbind"),
    ([EntryPoint("bad", "pcipass.net.switch:NoopSwitchDriver", ENTRY_POINT_GROUP),
      EntryPoint("bad", "pcipass.net.switch:LogSwitchDriver", ENTRY_POINT_GROUP)],
     "defined more than once"),
])
def test_broken_drivers_are_refused(monkeypatch: pytest.MonkeyPatch, eps: list[EntryPoint],
                                    words: str) -> None:
    monkeypatch.setattr(switch, "entry_points", _entry_points(*eps))
    with pytest.raises(InvalidConfig) as caught:
        load_switch_driver("bad")
    assert "switch driver 'bad'" in caught.value.message
    assert words in caught.value.message
