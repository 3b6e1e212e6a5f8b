"""Networking beyond the host's own VFs: the switch plug-in point (``switch``)."""

from pcipass.net.switch import (
    DEFAULT_SWITCH_DRIVER,
    ENTRY_POINT_GROUP,
    LogSwitchDriver,
    NoopSwitchDriver,
    SwitchCall,
    SwitchDriver,
    load_switch_driver,
    switch_driver_names,
)

__all__ = [
    "DEFAULT_SWITCH_DRIVER",
    "ENTRY_POINT_GROUP",
    "LogSwitchDriver",
    "NoopSwitchDriver",
    "SwitchCall",
    "SwitchDriver",
    "load_switch_driver",
    "switch_driver_names",
]
