"""Settings: TOML plus PCIPASS_* environment, the environment winning, mistakes named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pcipass.config import (
    DEFAULT_LISTEN,
    Settings,
    load_settings,
    settings_to_env,
    split_listen,
)
from pcipass.errors import InvalidConfig

TOKEN = "x" * 32

FULL = f"""
state_dir = "/srv/pcipass"

[server]
db = "postgresql+psycopg://ctl@db/pcipass"
listen = "0.0.0.0:9000"
admin_token = "{TOKEN}"
workers = 4

[pci]
device_spec = ['{{"vendor_id": "10de"}}', {{ vendor_id = "8086", product_id = "154d" }}]
alias = ['{{"name": "gpu", "vendor_id": "10de", "product_id": "20b5"}}']

[agent]
server = "http://ctl:9000"
token = "agent-secret"
host_name = "compute-1"
interval = 15
sysfs_root = "/tmp/fake-sys"
sriov = "fake"
switch_driver = "log"
normal_network = "tenant-nat"

[network]
mac_prefix = "02:AB:cd"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pcipass.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_env(tmp_path: Path) -> None:
    s = load_settings(None, {"PCIPASS_STATE_DIR": str(tmp_path)})
    assert s.state_dir == tmp_path
    assert s.server.db == f"sqlite:///{tmp_path}/pcipass.db"
    assert s.server.listen == DEFAULT_LISTEN
    assert (s.server.host, s.server.port) == ("127.0.0.1", 8774)
    assert s.server.admin_token is None
    assert s.server.workers == 1
    assert s.pci.device_spec == ()
    assert s.agent.state_dir == tmp_path
    assert s.agent.interval == 60.0
    assert s.agent.sysfs_root == Path("/")
    assert (s.agent.sriov, s.agent.switch_driver, s.agent.normal_network) == (
        "netlink", "noop", "default")
    assert s.network.mac_prefix == "fa:16:3e"
    assert s.source is None


def test_state_dir_defaults_under_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    s = load_settings(None, {})
    assert s.state_dir == tmp_path / ".local/state/pcipass"


def test_full_file(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, FULL), {})
    assert s.state_dir == Path("/srv/pcipass")
    assert s.server.db == "postgresql+psycopg://ctl@db/pcipass"
    assert (s.server.host, s.server.port) == ("0.0.0.0", 9000)
    assert s.server.admin_token == TOKEN
    assert s.server.workers == 4
    # JSON strings stay verbatim; an inline table becomes one JSON string.
    assert s.pci.device_spec[0] == '{"vendor_id": "10de"}'
    assert json.loads(s.pci.device_spec[1]) == {"vendor_id": "8086", "product_id": "154d"}
    assert len(s.pci.alias) == 1
    assert s.agent.server == "http://ctl:9000"
    assert s.agent.host_name == "compute-1"
    assert s.agent.interval == 15.0
    assert s.agent.state_dir == Path("/srv/pcipass")
    assert s.agent.sysfs_root == Path("/tmp/fake-sys")
    assert (s.agent.sriov, s.agent.switch_driver, s.agent.normal_network) == (
        "fake", "log", "tenant-nat")
    assert s.network.mac_prefix == "02:ab:cd"     # lower-cased once, here
    assert s.source == tmp_path / "pcipass.toml"


def test_environment_wins_over_file(tmp_path: Path) -> None:
    env = {
        "PCIPASS_DB": "sqlite:////tmp/other.db",
        "PCIPASS_LISTEN": "[::1]:8800",
        "PCIPASS_WORKERS": "2",
        "PCIPASS_PCI_DEVICE_SPEC": '{"vendor_id": "15b3"}',
        "PCIPASS_AGENT_INTERVAL": "2.5",
        "PCIPASS_AGENT_TOKEN": "",  # an empty variable clears the file's value
        "PCIPASS_AGENT_SRIOV": "netlink",
        "PCIPASS_AGENT_SWITCH_DRIVER": "acme-tor",
        "PCIPASS_AGENT_NORMAL_NETWORK": "provider",
        "PCIPASS_NETWORK_MAC_PREFIX": "fa:16:3e:7f",
    }
    s = load_settings(write(tmp_path, FULL), env)
    assert s.server.db == "sqlite:////tmp/other.db"
    assert (s.server.host, s.server.port) == ("::1", 8800)
    assert s.server.workers == 2
    assert s.pci.device_spec == ('{"vendor_id": "15b3"}',)
    assert s.agent.interval == 2.5
    assert s.agent.token is None
    assert (s.agent.sriov, s.agent.switch_driver, s.agent.normal_network) == (
        "netlink", "acme-tor", "provider")
    assert s.network.mac_prefix == "fa:16:3e:7f"
    # keys the environment does not set still come from the file
    assert s.server.admin_token == TOKEN
    assert s.agent.host_name == "compute-1"


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nworkers = 3\n')
    assert load_settings(None, {"PCIPASS_CONFIG": str(path)}).server.workers == 3


def test_device_spec_list_from_environment() -> None:
    env = {"PCIPASS_PCI_DEVICE_SPEC": '[{"vendor_id": "10de"}, "{\\"address\\": \\"*:3b:*\\"}"]'}
    s = load_settings(None, env)
    assert [json.loads(x) for x in s.pci.device_spec] == [
        {"vendor_id": "10de"}, {"address": "*:3b:*"},
    ]


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        ("[sever]\ndb = 'x'\n", "sever", "unknown section"),
        ("[server]\ndbb = 'x'\n", "server.dbb", "unknown key server.dbb"),
        ("[server]\nworkers = '4'\n", "server.workers", "must be an integer"),
        ("[server]\nworkers = true\n", "server.workers", "must be an integer"),
        ("[server]\nworkers = 0\n", "server.workers", "at least 1"),
        ("[server]\nlisten = 'localhost'\n", "server.listen", "HOST:PORT"),
        ("[server]\nlisten = 'h:70000'\n", "server.listen", "HOST:PORT"),
        ("[server]\nlisten = '::1:80'\n", "server.listen", "brackets"),
        ("[server]\ndb = ''\n", "server.db", "must not be empty"),
        ("[server]\nadmin_token = 'short'\n", "server.admin_token", "at least 16"),
        ("[server]\ndb = 5\n", "server.db", "must be a string"),
        ("server = 3\n", "server", "must be a table"),
        ("[pci]\ndevice_spec = 5\n", "pci.device_spec", "list of JSON strings"),
        ("[pci]\ndevice_spec = [5]\n", "pci.device_spec[0]", "JSON string or a table"),
        ("[agent]\ninterval = 0\n", "agent.interval", "more than 0"),
        ("[agent]\ninterval = 'soon'\n", "agent.interval", "number of seconds"),
        ("[agent]\nhost = 'x'\n", "agent.host", "unknown key"),
        ("[agent]\nsriov = 'pyroute'\n", "agent.sriov", "one of netlink, fake"),
        ("[agent]\nswitch_driver = ''\n", "agent.switch_driver", "must not be empty"),
        ("[agent]\nnormal_network = 'a/b'\n", "agent.normal_network", "not a name"),
        ("[network]\nmac_prefix = 'fb:16:3e'\n", "network.mac_prefix", "multicast"),
        ("[network]\nmac_prefix = 'fa:16:3e:00:00:01'\n", "network.mac_prefix",
         "1 to 5 octets"),
        ("[network]\nmac_prefix = 'fa:16:zz'\n", "network.mac_prefix", "1 to 5 octets"),
        ("[network]\nmac_prefix = 3\n", "network.mac_prefix", "must be a string"),
        ("[network]\nprefix = 'fa'\n", "network.prefix", "unknown key"),
        ("[server\n", "config", "not valid TOML"),
    ],
)
def test_file_mistakes_are_named(tmp_path: Path, text: str, field: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InvalidConfig) as exc:
        load_settings(path, {})
    assert exc.value.field == field
    assert words in exc.value.message
    assert exc.value.code == "invalid_config"


@pytest.mark.parametrize(
    ("env", "field", "words"),
    [
        ({"PCIPASS_WORKERS": "many"}, "server.workers", "PCIPASS_WORKERS"),
        ({"PCIPASS_LISTEN": "nope"}, "server.listen", "PCIPASS_LISTEN"),
        ({"PCIPASS_PCI_DEVICE_SPEC": "{vendor"}, "pci.device_spec", "not JSON"),
        ({"PCIPASS_PCI_ALIAS": "7"}, "pci.alias", "list of JSON strings"),
        ({"PCIPASS_AGENT_INTERVAL": "-1"}, "agent.interval", "more than 0"),
        ({"PCIPASS_AGENT_SRIOV": "sysfs"}, "agent.sriov", "PCIPASS_AGENT_SRIOV"),
        ({"PCIPASS_NETWORK_MAC_PREFIX": "01:00:5e"}, "network.mac_prefix", "multicast"),
        ({"PCIPASS_ADMIN_TOKEN": "has space in it, long enough"}, "server.admin_token",
         "without spaces"),
    ],
)
def test_environment_mistakes_are_named(env: dict[str, str], field: str, words: str) -> None:
    with pytest.raises(InvalidConfig) as exc:
        load_settings(None, env)
    assert exc.value.field == field
    assert words in exc.value.message


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InvalidConfig, match="does not exist") as exc:
        load_settings(tmp_path / "nope.toml", {})
    assert exc.value.field == "config"


def test_unrelated_environment_is_ignored() -> None:
    s = load_settings(None, {"PCIPASS_TEST_PG": "postgresql://x", "PCIPASS_STATE_DIR": "/s"})
    assert s.server.db == "sqlite:////s/pcipass.db"


def test_settings_round_trip_through_environment(tmp_path: Path) -> None:
    """How ``serve`` hands settings to worker processes: nothing may be lost."""
    original = load_settings(write(tmp_path, FULL), {})
    rebuilt = load_settings(None, settings_to_env(original))
    assert rebuilt == Settings(
        state_dir=original.state_dir, server=original.server, pci=original.pci,
        agent=original.agent, source=None, network=original.network,
    )
    assert rebuilt.network.mac_prefix == "02:ab:cd"
    assert rebuilt.agent.sriov == "fake"


def test_secrets_stay_out_of_repr(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, FULL), {})
    assert TOKEN not in repr(s)
    assert "agent-secret" not in repr(s)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8774", ("127.0.0.1", 8774)), (":80", ("0.0.0.0", 80)),
     ("[::]:8774", ("::", 8774)), ("ctl.example.org:1", ("ctl.example.org", 1))],
)
def test_split_listen(text: str, expected: tuple[str, int]) -> None:
    assert split_listen(text) == expected


@pytest.mark.parametrize(
    ("argv", "env", "words"),
    [
        (["--listen", "nowhere"], {}, "server.listen"),
        (["--workers", "0"], {}, "at least 1"),
        ([], {"PCIPASS_ADMIN_TOKEN": "short"}, "at least 16"),
        (["--config", "/nonexistent/pcipass.toml"], {}, "does not exist"),
    ],
)
def test_server_entry_refuses_bad_settings(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str],
                                           argv: list[str], env: dict[str, str],
                                           words: str) -> None:
    """``python -m pcipass.server`` says what is wrong and exits 2 before serving anything."""
    from pcipass import server

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert server.main(argv) == 2
    assert words in capsys.readouterr().err
