"""Settings: one TOML file plus ``PCIPASS_*`` environment variables, read once at the edge.

The result is a frozen :class:`Settings` that the shell passes in; nothing in ``pcipass.pci``
or ``pcipass.sched`` imports this module. The environment wins over the file, key by key::

    state_dir = "/var/lib/pcipass"       # PCIPASS_STATE_DIR (default ~/.local/state/pcipass)

    [server]
    db = "sqlite:///..."                 # PCIPASS_DB (default: pcipass.db in the state dir)
    listen = "127.0.0.1:8774"            # PCIPASS_LISTEN
    admin_token = "..."                  # PCIPASS_ADMIN_TOKEN
    workers = 1                          # PCIPASS_WORKERS

    [pci]                                # Nova's formats, accepted verbatim
    device_spec = ['{"vendor_id": "10de"}']   # PCIPASS_PCI_DEVICE_SPEC (a JSON object or list)
    alias = ['{"name": "gpu", ...}']          # PCIPASS_PCI_ALIAS

    [scheduler]                          # PCIPASS_SCHEDULER_<KEY>
    weigher = "pack"                     # pack | spread: PCI boots onto the fullest hosts or not
    max_attempts = 5                     # lost races a boot retries before it fails
    candidates = 8                       # hosts the SQL narrowing hands the fit per decision
    resize_same_host = true              # a resize may stay on its host when it fits there
    host_down_after = 120                # seconds without a poll or report: the host is down

    [tasks]                              # PCIPASS_TASKS_<KEY>
    timeout = 300                        # seconds a spawn task may take before it fails

    [agent]                              # PCIPASS_AGENT_<KEY>
    server = "http://ctl:8774"
    token = "..."
    host_name = "compute-1"              # default: the machine's hostname, chosen by the agent
    interval = 60                        # seconds between reports
    state_dir = "..."                    # default: the global state dir
    sysfs_root = "/"
    sriov = "netlink"                    # netlink | fake: how VFs of SR-IOV ports are programmed
    switch_driver = "noop"               # a pcipass.switch_drivers entry point (noop, log, ...)
    normal_network = "default"           # the libvirt network vnic-type normal ports go on
    kind = "hypervisor"                  # hypervisor | baremetal: what this host reports as

    [network]                            # PCIPASS_NETWORK_<KEY>
    mac_prefix = "fa:16:3e"              # ports' generated MACs start with it (1-5 octets)

Server keys take the short ``PCIPASS_<KEY>`` names; the other sections
``PCIPASS_<SECTION>_<KEY>``. An unknown section or key, or a value of the wrong type, is an
:class:`~pcipass.errors.InvalidConfig` naming it (``field`` is ``section.key``): a typo must
not silently fall back to a default.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcipass.errors import InvalidConfig, InvalidInput
from pcipass.net.port import DEFAULT_MAC_PREFIX, parse_mac_prefix
from pcipass.net.switch import DEFAULT_SWITCH_DRIVER

DEFAULT_LISTEN = "127.0.0.1:8774"
DEFAULT_PORT = 8774
MIN_ADMIN_TOKEN_LEN = 16
CONFIG_ENV = "PCIPASS_CONFIG"
STATE_DIR_ENV = "PCIPASS_STATE_DIR"


@dataclass(frozen=True, slots=True)
class ServerSettings:
    db: str
    listen: str = DEFAULT_LISTEN
    admin_token: str | None = field(default=None, repr=False)
    workers: int = 1

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


@dataclass(frozen=True, slots=True)
class PciSettings:
    """Raw Nova-format JSON strings; ``pcipass.pci.devspec`` parses them where they are used."""

    device_spec: tuple[str, ...] = ()
    alias: tuple[str, ...] = ()


WEIGHERS = ("pack", "spread")


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    """How the scheduler ranks hosts and how hard it tries; ``weigher`` names a
    :class:`pcipass.sched.weigh.WeighPolicy` (kept a string: config does not import sched)."""

    weigher: str = "pack"
    max_attempts: int = 5
    candidates: int = 8
    resize_same_host: bool = True
    #: Seconds an agent may go without polling for tasks or reporting before its host takes
    #: no new servers (Nova's ``service_down_time``); agents poll every few seconds.
    host_down_after: float = 120.0


@dataclass(frozen=True, slots=True)
class TaskSettings:
    """How long a host may take over a spawn (from its queueing) before it fails."""

    timeout: float = 300.0


SRIOV_KINDS = ("netlink", "fake")   # pcipass.agent.ports.SriovKind (config imports no agent)
DEFAULT_NORMAL_NETWORK = "default"  # pcipass.virt.payload.DEFAULT_NORMAL_NETWORK
HOST_KINDS = ("hypervisor", "baremetal")   # pcipass.pci.device.HostKind


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """``sriov`` names how VFs are programmed (``netlink`` or ``fake``), ``switch_driver``
    the switch plug-in (checked when the agent loads it), ``normal_network`` the libvirt
    network that ``normal`` ports are plugged into."""

    state_dir: Path
    server: str | None = None
    token: str | None = field(default=None, repr=False)
    host_name: str | None = None
    interval: float = 60.0
    sysfs_root: Path = Path("/")
    sriov: str = "netlink"
    switch_driver: str = DEFAULT_SWITCH_DRIVER
    normal_network: str = DEFAULT_NORMAL_NETWORK
    kind: str = "hypervisor"            # what the agent reports its host as (HOST_KINDS)


@dataclass(frozen=True, slots=True)
class NetworkSettings:
    """``mac_prefix``: what generated port MACs start with (lower-case, unicast)."""

    mac_prefix: str = DEFAULT_MAC_PREFIX


@dataclass(frozen=True, slots=True)
class Settings:
    state_dir: Path
    server: ServerSettings
    pci: PciSettings
    agent: AgentSettings
    source: Path | None = None
    scheduler: SchedulerSettings = SchedulerSettings()
    tasks: TaskSettings = TaskSettings()
    network: NetworkSettings = NetworkSettings()


def default_state_dir(env: Mapping[str, str]) -> Path:
    if env.get(STATE_DIR_ENV):
        return Path(env[STATE_DIR_ENV]).expanduser()
    return Path("~/.local/state/pcipass").expanduser()


def default_db_url(state_dir: Path) -> str:
    return f"sqlite:///{state_dir / 'pcipass.db'}"


def split_listen(text: str, *, field: str = "server.listen") -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all interfaces)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidConfig(f"{field} {text!r} is not HOST:PORT (a port from 1 to 65535)",
                            field=field)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise InvalidConfig(f"{field} {text!r}: write an IPv6 address in brackets, [::1]:PORT",
                            field=field)
    return host or "0.0.0.0", int(port_text)


# --- value kinds: (TOML value or env string) -> typed value --------------------------------

Coerce = Callable[[Any, str, bool], Any]


def _type_error(key: str, want: str, value: Any) -> InvalidConfig:
    return InvalidConfig(f"{key} must be {want}, not {type(value).__name__} ({value!r})",
                         field=key)


def _optional_str(value: Any, key: str, from_env: bool) -> str | None:
    """An empty string means unset, so an environment variable can clear a file's value."""
    if not isinstance(value, str):
        raise _type_error(key, "a string", value)
    return value or None


def _str(value: Any, key: str, from_env: bool) -> str:
    text = _optional_str(value, key, from_env)
    if text is None:
        raise InvalidConfig(f"{key} must not be empty", field=key)
    return text


def _int(value: Any, key: str, from_env: bool) -> int:
    if from_env:
        try:
            value = int(value)
        except ValueError:
            raise _type_error(key, "an integer", value) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _type_error(key, "an integer", value)
    if value < 1:
        raise InvalidConfig(f"{key} must be at least 1, not {value}", field=key)
    return value


def _bool(value: Any, key: str, from_env: bool) -> bool:
    if from_env and isinstance(value, str):
        text = value.strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
    if not isinstance(value, bool):
        raise _type_error(key, "true or false", value)
    return value


def _seconds(value: Any, key: str, from_env: bool) -> float:
    if from_env:
        try:
            value = float(value)
        except ValueError:
            raise _type_error(key, "a number of seconds", value) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(key, "a number of seconds", value)
    if not value > 0:
        raise InvalidConfig(f"{key} must be more than 0 seconds, not {value}", field=key)
    return float(value)


def _weigher(value: Any, key: str, from_env: bool) -> str:
    text = _str(value, key, from_env).strip().lower()
    if text not in WEIGHERS:
        raise InvalidConfig(f"{key} must be one of {', '.join(WEIGHERS)}, not {value!r}",
                            field=key)
    return text


def _host_kind(value: Any, key: str, from_env: bool) -> str:
    text = _str(value, key, from_env).strip().lower()
    if text not in HOST_KINDS:
        raise InvalidConfig(f"{key} must be one of {', '.join(HOST_KINDS)}, not {value!r}",
                            field=key)
    return text


def _sriov(value: Any, key: str, from_env: bool) -> str:
    text = _str(value, key, from_env).strip().lower()
    if text not in SRIOV_KINDS:
        raise InvalidConfig(f"{key} must be one of {', '.join(SRIOV_KINDS)}, not {value!r}",
                            field=key)
    return text


def _name(value: Any, key: str, from_env: bool) -> str:
    """A plug-in's or libvirt object's name: one word, no slashes."""
    text = _str(value, key, from_env).strip()
    if not text or "/" in text or any(c.isspace() for c in text) or not text.isprintable():
        raise InvalidConfig(f"{key} {value!r} is not a name (no spaces or slashes)", field=key)
    return text


def _mac_prefix(value: Any, key: str, from_env: bool) -> str:
    try:
        return parse_mac_prefix(_str(value, key, from_env), field=key)
    except InvalidInput as exc:
        raise InvalidConfig(exc.message, field=key) from None


def _path(value: Any, key: str, from_env: bool) -> Path:
    return Path(_str(value, key, from_env)).expanduser()


def _listen(value: Any, key: str, from_env: bool) -> str:
    text = _str(value, key, from_env)
    split_listen(text, field=key)
    return text


def _admin_token(value: Any, key: str, from_env: bool) -> str | None:
    token = _optional_str(value, key, from_env)
    if token is not None and (len(token) < MIN_ADMIN_TOKEN_LEN or not token.isprintable()
                              or any(c.isspace() for c in token)):
        raise InvalidConfig(
            f"{key} must be at least {MIN_ADMIN_TOKEN_LEN} printable characters without spaces "
            "(use a random one: python -c 'import secrets; print(secrets.token_urlsafe(32))')",
            field=key,
        )
    return token


def _json_entry(value: Any, key: str) -> str:
    """One Nova-style entry: a JSON string kept verbatim, or an inline table dumped to one."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    raise _type_error(key, "a JSON string or a table", value)


def _json_list(value: Any, key: str, from_env: bool) -> tuple[str, ...]:
    if from_env:
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidConfig(f"{key} is not JSON: {exc}", field=key) from None
        if isinstance(value, dict):
            value = [value]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise _type_error(key, "a list of JSON strings", value)
    return tuple(_json_entry(v, f"{key}[{i}]") for i, v in enumerate(value))


# (section, key) -> (kind, environment variable)
_KEYS: dict[tuple[str, str], tuple[Coerce, str]] = {
    ("", "state_dir"): (_path, STATE_DIR_ENV),
    ("server", "db"): (_str, "PCIPASS_DB"),
    ("server", "listen"): (_listen, "PCIPASS_LISTEN"),
    ("server", "admin_token"): (_admin_token, "PCIPASS_ADMIN_TOKEN"),
    ("server", "workers"): (_int, "PCIPASS_WORKERS"),
    ("pci", "device_spec"): (_json_list, "PCIPASS_PCI_DEVICE_SPEC"),
    ("pci", "alias"): (_json_list, "PCIPASS_PCI_ALIAS"),
    ("scheduler", "weigher"): (_weigher, "PCIPASS_SCHEDULER_WEIGHER"),
    ("scheduler", "max_attempts"): (_int, "PCIPASS_SCHEDULER_MAX_ATTEMPTS"),
    ("scheduler", "candidates"): (_int, "PCIPASS_SCHEDULER_CANDIDATES"),
    ("scheduler", "resize_same_host"): (_bool, "PCIPASS_SCHEDULER_RESIZE_SAME_HOST"),
    ("scheduler", "host_down_after"): (_seconds, "PCIPASS_SCHEDULER_HOST_DOWN_AFTER"),
    ("tasks", "timeout"): (_seconds, "PCIPASS_TASKS_TIMEOUT"),
    ("agent", "server"): (_optional_str, "PCIPASS_AGENT_SERVER"),
    ("agent", "token"): (_optional_str, "PCIPASS_AGENT_TOKEN"),
    ("agent", "host_name"): (_optional_str, "PCIPASS_AGENT_HOST_NAME"),
    ("agent", "interval"): (_seconds, "PCIPASS_AGENT_INTERVAL"),
    ("agent", "state_dir"): (_path, "PCIPASS_AGENT_STATE_DIR"),
    ("agent", "sysfs_root"): (_path, "PCIPASS_AGENT_SYSFS_ROOT"),
    ("agent", "sriov"): (_sriov, "PCIPASS_AGENT_SRIOV"),
    ("agent", "switch_driver"): (_name, "PCIPASS_AGENT_SWITCH_DRIVER"),
    ("agent", "normal_network"): (_name, "PCIPASS_AGENT_NORMAL_NETWORK"),
    ("agent", "kind"): (_host_kind, "PCIPASS_AGENT_KIND"),
    ("network", "mac_prefix"): (_mac_prefix, "PCIPASS_NETWORK_MAC_PREFIX"),
}
_SECTIONS = {s for s, _ in _KEYS if s}


def env_name(section: str, key: str) -> str:
    """The environment variable that overrides ``[section] key``."""
    return _KEYS[(section, key)][1]


def _dotted(section: str, key: str) -> str:
    return f"{section}.{key}" if section else key


def _read_file(path: Path) -> dict[tuple[str, str], Any]:
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise InvalidConfig(f"configuration file {path} does not exist", field="config") from None
    except OSError as exc:
        raise InvalidConfig(f"cannot read {path}: {exc.strerror}", field="config") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfig(f"{path} is not valid TOML: {exc}", field="config") from None
    values: dict[tuple[str, str], Any] = {}
    for name, body in doc.items():
        if name in _SECTIONS:
            if not isinstance(body, dict):
                raise InvalidConfig(f"{path}: [{name}] must be a table", field=name)
            for key, value in body.items():
                if (name, key) not in _KEYS:
                    known = ", ".join(sorted(k for s, k in _KEYS if s == name))
                    raise InvalidConfig(
                        f"{path}: unknown key {name}.{key} (known in [{name}]: {known})",
                        field=f"{name}.{key}",
                    )
                values[(name, key)] = value
        elif ("", name) in _KEYS:
            values[("", name)] = body
        else:
            top = {f"[{s}]" for s in _SECTIONS} | {k for s, k in _KEYS if not s}
            known = ", ".join(sorted(top))
            raise InvalidConfig(f"{path}: unknown section or key {name!r} (known: {known})",
                                field=name)
    return values


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read ``path`` (or ``$PCIPASS_CONFIG``; no file when neither), then apply ``env``."""
    env = os.environ if env is None else env
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV]).expanduser()
    raw = _read_file(path) if path is not None else {}
    typed: dict[tuple[str, str], Any] = {}
    for (section, key), (coerce, var) in _KEYS.items():
        dotted = _dotted(section, key)
        if var in env:
            try:
                typed[(section, key)] = coerce(env[var], dotted, True)
            except InvalidConfig as exc:
                raise InvalidConfig(f"{var}: {exc.message}", field=exc.field) from None
        elif (section, key) in raw:
            where = f"{path}: " if path is not None else ""
            try:
                typed[(section, key)] = coerce(raw[(section, key)], dotted, False)
            except InvalidConfig as exc:
                raise InvalidConfig(f"{where}{exc.message}", field=exc.field) from None

    def get(section: str, key: str, default: Any) -> Any:
        return typed.get((section, key), default)

    state_dir: Path = get("", "state_dir", default_state_dir(env))
    return Settings(
        state_dir=state_dir,
        server=ServerSettings(
            db=get("server", "db", default_db_url(state_dir)),
            listen=get("server", "listen", DEFAULT_LISTEN),
            admin_token=get("server", "admin_token", None),
            workers=get("server", "workers", 1),
        ),
        pci=PciSettings(
            device_spec=get("pci", "device_spec", ()),
            alias=get("pci", "alias", ()),
        ),
        agent=AgentSettings(
            state_dir=get("agent", "state_dir", state_dir),
            server=get("agent", "server", None),
            token=get("agent", "token", None),
            host_name=get("agent", "host_name", None),
            interval=get("agent", "interval", 60.0),
            sysfs_root=get("agent", "sysfs_root", Path("/")),
            sriov=get("agent", "sriov", "netlink"),
            switch_driver=get("agent", "switch_driver", DEFAULT_SWITCH_DRIVER),
            normal_network=get("agent", "normal_network", DEFAULT_NORMAL_NETWORK),
            kind=get("agent", "kind", "hypervisor"),
        ),
        source=path,
        scheduler=SchedulerSettings(
            weigher=get("scheduler", "weigher", "pack"),
            max_attempts=get("scheduler", "max_attempts", 5),
            candidates=get("scheduler", "candidates", 8),
            resize_same_host=get("scheduler", "resize_same_host", True),
            host_down_after=get("scheduler", "host_down_after", 120.0),
        ),
        tasks=TaskSettings(timeout=get("tasks", "timeout", 300.0)),
        network=NetworkSettings(mac_prefix=get("network", "mac_prefix", DEFAULT_MAC_PREFIX)),
    )


def settings_to_env(settings: Settings) -> dict[str, str]:
    """The environment that rebuilds ``settings`` with ``load_settings(None, env)``.

    How ``serve`` hands its settings to uvicorn's worker processes, which start from an
    import string and cannot be given an object.
    """
    s, a, sc = settings.server, settings.agent, settings.scheduler
    values: dict[tuple[str, str], str | None] = {
        ("", "state_dir"): str(settings.state_dir),
        ("server", "db"): s.db,
        ("server", "listen"): s.listen,
        ("server", "admin_token"): s.admin_token,
        ("server", "workers"): str(s.workers),
        ("pci", "device_spec"): json.dumps(list(settings.pci.device_spec)),
        ("pci", "alias"): json.dumps(list(settings.pci.alias)),
        ("scheduler", "weigher"): sc.weigher,
        ("scheduler", "max_attempts"): str(sc.max_attempts),
        ("scheduler", "candidates"): str(sc.candidates),
        ("scheduler", "resize_same_host"): "true" if sc.resize_same_host else "false",
        ("scheduler", "host_down_after"): repr(sc.host_down_after),
        ("tasks", "timeout"): repr(settings.tasks.timeout),
        ("agent", "server"): a.server,
        ("agent", "token"): a.token,
        ("agent", "host_name"): a.host_name,
        ("agent", "interval"): repr(a.interval),
        ("agent", "state_dir"): str(a.state_dir),
        ("agent", "sysfs_root"): str(a.sysfs_root),
        ("agent", "sriov"): a.sriov,
        ("agent", "switch_driver"): a.switch_driver,
        ("agent", "normal_network"): a.normal_network,
        ("agent", "kind"): a.kind,
        ("network", "mac_prefix"): settings.network.mac_prefix,
    }
    return {env_name(sec, key): v or "" for (sec, key), v in values.items()}
