"""The `pcipass` command line: discover on generated trees, client commands on a server."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from apiserver import ApiServer, api_server
from pcipass import errors
from pcipass.cli.client import ApiClient, error_from_response
from pcipass.cli.main import app
from pcipass.host.profiles import build_host
from pcipass.pci.inventory import inventory_to_json, parse_inventory

A100 = '{"vendor_id": "10de", "product_id": "20f1"}'
A6000 = '{"vendor_id": "10de", "product_id": "2230", "label": "display"}'
# Keep the developer's shell settings out of every command run here.
CLEAN_ENV: dict[str, str | None] = {
    k: None for k in ("PCIPASS_URL", "PCIPASS_TOKEN", "PCIPASS_CONFIG", "PCIPASS_STATE_DIR",
                      "PCIPASS_PCI_DEVICE_SPEC", "PCIPASS_AGENT_SYSFS_ROOT")
}


def cli(*args: str | Path, env: Mapping[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], env={**CLEAN_ENV, **(env or {})})


@pytest.fixture(scope="module")
def gpu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gpu-server")
    build_host(root, "gpu-server")
    return root


def discovered(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def by_address(data: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {d["address"]: d for d in data["devices"]}


# --- discover ------------------------------------------------------------------------------

def test_discover_json_is_exactly_a_parsable_inventory(gpu_root: Path) -> None:
    data = discovered(cli("discover", "--sysfs-root", gpu_root, "--device-spec", A100,
                          "--json"))
    inv = parse_inventory(data)
    assert inventory_to_json(inv) == data  # nothing more, nothing less than the report
    assignable = sorted(str(d.address) for d in inv.devices if d.assignable)
    assert assignable == ["0000:17:00.0", "0000:31:00.0", "0000:98:00.0", "0000:b1:00.0"]
    assert inv.host.cpus == 128 and len(inv.host.numa_nodes) == 2


def test_discover_takes_several_specs_and_their_tags(gpu_root: Path) -> None:
    devs = by_address(discovered(cli("discover", "--sysfs-root", gpu_root, "--json",
                                     "--device-spec", A100, "--device-spec", A6000)))
    assert devs["0000:4b:00.0"]["assignable"] is True
    assert devs["0000:4b:00.0"]["tags"] == {"label": "display"}
    assert devs["0000:17:00.0"]["tags"] == {}
    assert devs["0000:4b:00.1"]["assignable"] is False  # the audio function: not in a spec


def test_discover_reads_specs_from_at_file(gpu_root: Path, tmp_path: Path) -> None:
    spec_file = tmp_path / "specs.txt"
    spec_file.write_text(f"# GPUs for tenants\n\n{A100}\n[{A6000}]\n")
    devs = by_address(discovered(cli("discover", "--sysfs-root", gpu_root, "--json",
                                     "--device-spec", f"@{spec_file}")))
    assert devs["0000:17:00.0"]["assignable"] and devs["0000:4b:00.0"]["assignable"]
    assert devs["0000:4b:00.0"]["tags"] == {"label": "display"}


def test_discover_adds_the_configured_specs(gpu_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "pcipass.toml"
    config.write_text(f"[pci]\ndevice_spec = ['{A6000}']\n")
    devs = by_address(discovered(cli("discover", "--sysfs-root", gpu_root, "--json",
                                     "--config", config, "--device-spec", A100)))
    assert devs["0000:4b:00.0"]["assignable"] and devs["0000:17:00.0"]["assignable"]


def test_discover_table_shows_devices_and_verdicts(gpu_root: Path) -> None:
    result = cli("discover", "--sysfs-root", gpu_root, "--device-spec", A100)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "0000:17:00.0" in out and "10de:20f1" in out and "0000:4b:00.1" in out
    assert "4 assignable" in out
    assert not out.lstrip().startswith("{")


def test_discover_explains_a_remote_managed_spec(tmp_path: Path) -> None:
    """The SR-IOV profile's ConnectX-6 has a serial number in its VPD, the E810 on 5e has none
    once its VPD is blanked: the remote-managed spec takes the first card's VFs only, and says
    why it leaves the other's PF and (would-be) VFs."""
    root = tmp_path / "sriov"
    build_host(root, "sriov-nic-server")
    (root / "sys/bus/pci/devices/0000:3b:00.0/vpd").write_bytes(b"\xff" * 64)
    specs = ['{"address": "0000:af:00.0", "remote_managed": "true"}',
             '{"vendor_id": "8086", "product_id": "1889", "address": "0000:3b:00.0", '
             '"remote_managed": "true"}']
    devs = by_address(discovered(cli("discover", "--sysfs-root", root, "--json",
                                     *(a for spec in specs for a in ("--device-spec", spec)))))
    cx6_vfs = [d for d in devs.values() if d["parent_addr"] == "0000:af:00.0"]
    assert len(cx6_vfs) == 8 and all(d["assignable"] for d in cx6_vfs)
    assert {d["card_serial_number"] for d in cx6_vfs} == {"MT2245X00000"}
    assert not devs["0000:af:00.0"]["assignable"]
    assert "which a PF cannot be" in devs["0000:af:00.0"]["warnings"][0]
    e810_vfs = [d for d in devs.values() if d["parent_addr"] == "0000:3b:00.0"]
    assert e810_vfs and not any(d["assignable"] for d in e810_vfs)
    assert all(d["card_serial_number"] is None for d in e810_vfs)
    assert all("device_spec[1] is remote_managed but its PF's VPD has no card serial number"
               in d["warnings"][0] for d in e810_vfs)
    table = cli("discover", "--sysfs-root", root, "--device-spec", specs[1])
    assert table.exit_code == 0, table.output
    assert "0000:3b:01.0: device_spec[0] is remote_managed" in " ".join(table.stdout.split())


@pytest.mark.parametrize(("spec", "expected"), [
    ('{"vendor_id": "10dex"}', ["--device-spec #2", "vendor_id", "10dex"]),
    ('{"vendor_id": "10de"', ["--device-spec #2", "not valid JSON"]),
    ('"just a string"', ["--device-spec #2", "object"]),
])
def test_invalid_spec_is_refused_before_discovery(gpu_root: Path, spec: str,
                                                  expected: list[str]) -> None:
    result = cli("discover", "--sysfs-root", gpu_root, "--json", "--device-spec", A100,
                 "--device-spec", spec)
    assert result.exit_code == 2
    assert result.stdout == ""  # no discovery output at all
    message = " ".join(result.stderr.split())
    for text in expected:
        assert text in message
    assert "Traceback" not in result.output


def test_invalid_spec_in_a_file_names_file_and_line(gpu_root: Path, tmp_path: Path) -> None:
    spec_file = tmp_path / "specs.txt"
    spec_file.write_text(f"{A100}\n# fine so far\n{{\"product_id\": 12}}\n")
    result = cli("discover", "--sysfs-root", gpu_root, "--device-spec", f"@{spec_file}")
    assert result.exit_code == 2 and result.stdout == ""
    message = " ".join(result.stderr.split())
    assert f"@{spec_file} line 3" in message and "product_id" in message


def test_missing_spec_file_is_a_usage_error(gpu_root: Path, tmp_path: Path) -> None:
    result = cli("discover", "--sysfs-root", gpu_root, "--device-spec", f"@{tmp_path}/nope")
    assert result.exit_code == 2 and "cannot read" in result.stderr


def test_invalid_config_is_a_usage_error(gpu_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[pci]\ndevice_specs = []\n")
    result = cli("discover", "--sysfs-root", gpu_root, "--config", config)
    assert result.exit_code == 2 and "device_specs" in result.stderr


def test_discover_without_sysfs_fails_with_a_message(tmp_path: Path) -> None:
    result = cli("discover", "--sysfs-root", tmp_path / "empty")
    assert result.exit_code == 1
    assert "error:" in result.stderr and "Traceback" not in result.output


# --- the client's error mapping -------------------------------------------------------------

def _replying(status: int, body: Any) -> ApiClient:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body)
    return ApiClient("http://test", "t", transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(("status", "code", "cls"), [
    (409, "generation_conflict", errors.GenerationConflict),
    (422, "invalid_inventory", errors.InvalidInventory),
    (401, "unauthenticated", errors.AuthError),
    (403, "forbidden", errors.Forbidden),
    (404, "not_found", errors.NotFound),
    (404, "some_future_code", errors.NotFound),  # unknown code: the status decides
    (503, "infrastructure", errors.InfrastructureError),
])
def test_error_bodies_become_the_error_tree(status: int, code: str,
                                            cls: type[errors.PcipassError]) -> None:
    with _replying(status, {"code": code, "message": "nope", "field": "f"}) as client, \
            pytest.raises(cls) as info:
        client.host("h1")
    assert (info.value.code, info.value.message, info.value.field) == (code, "nope", "f")


def test_every_error_class_is_rebuilt_from_its_code() -> None:
    todo: list[type[errors.PcipassError]] = [errors.PcipassError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        rebuilt = error_from_response(cls.status, cls("m", field="x").to_dict(), "fallback")
        assert type(rebuilt) is cls


def test_a_body_that_is_not_ours_still_gives_a_message() -> None:
    with _replying(502, ["not", "an", "error"]) as client, \
            pytest.raises(errors.InfrastructureError) as info:
        client.health()
    assert "HTTP 502" in info.value.message


def test_unreachable_server_is_its_own_error(tmp_path: Path) -> None:
    with ApiClient("http://127.0.0.1:9", "t", timeout=2) as client, \
            pytest.raises(errors.ServerUnreachable):
        client.health()


def test_pages_follow_next_markers() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        marker = request.url.params.get("marker")
        seen.append(marker)
        page = {None: ([1, 2], "m1"), "m1": ([3], "m2"), "m2": ([4], None)}[marker]
        return httpx.Response(200, json={"hosts": [{"n": n} for n in page[0]],
                                         "next": page[1]})

    with ApiClient("http://test", "t", transport=httpx.MockTransport(handler)) as client:
        everything = client.hosts(limit=2)
        assert [h["n"] for h in everything.items] == [1, 2, 3, 4] and everything.next is None
        assert seen == [None, "m1", "m2"]
        first = client.hosts(limit=2, all_pages=False)
        assert ([h["n"] for h in first.items], first.next) == ([1, 2], "m1")
        rest = client.hosts(limit=2, marker=first.next)
        assert [h["n"] for h in rest.items] == [3, 4]


# --- client commands against a real server --------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    work = tmp_path_factory.mktemp("cli-server")
    with api_server(f"sqlite:///{work / 'pcipass.db'}", work) as srv:
        yield srv
        log = srv.log()
        assert "Traceback" not in log, log[-6000:]  # every error answered, none crashed


@pytest.fixture(scope="module")
def fleet(server: ApiServer, gpu_root: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two hosts reported through the admin token: gpu-1 (6 assignable) and sriov-1."""
    sriov_root = tmp_path_factory.mktemp("sriov")
    build_host(sriov_root, "sriov-nic-server")
    for name, root, specs in (
        ("gpu-1", gpu_root, [A100, A6000]),
        ("sriov-1", sriov_root,
         ['{"devname": "ens1f1", "physical_network": "physnet2"}']),
    ):
        args: list[str | Path] = ["discover", "--sysfs-root", root, "--json"]
        for s in specs:
            args += ["--device-spec", s]
        report = discovered(cli(*args))
        with server.client() as http:
            reply = http.put(f"/v1/hosts/{name}/inventory", json={"generation": None, **report})
            assert reply.status_code == 200, reply.text
    return server.url


def admin_env(server: ApiServer) -> dict[str, str | None]:
    return {"PCIPASS_URL": server.url, "PCIPASS_TOKEN": server.admin_token}


def test_host_list_and_show(server: ApiServer, fleet: str) -> None:
    env = admin_env(server)
    data = discovered(cli("host", "list", "--json", env=env))
    assert sorted(h["name"] for h in data["hosts"]) == ["gpu-1", "sriov-1"]
    table = cli("host", "list", env=env)
    assert table.exit_code == 0 and "gpu-1" in table.stdout and "sriov-1" in table.stdout
    shown = discovered(cli("host", "show", "gpu-1", "--json", env=env))
    assert shown["name"] == "gpu-1" and shown["generation"] >= 1
    assert shown["devices"]["total"] == len(by_address(discovered(
        cli("device", "list", "--host", "gpu-1", "--json", env=env))))
    table = cli("host", "show", "gpu-1", env=env)
    assert table.exit_code == 0 and "NUMA nodes" in table.stdout


def test_device_list_filters_and_pages(server: ApiServer, fleet: str) -> None:
    env = admin_env(server)
    everything = discovered(cli("device", "list", "--json", env=env))["devices"]
    paged = discovered(cli("device", "list", "--json", "--limit", "3", env=env))["devices"]
    assert [d["address"] for d in paged] == [d["address"] for d in everything]
    one_page = discovered(cli("device", "list", "--json", "--limit", "3", "--no-all",
                              env=env))
    assert len(one_page["devices"]) == 3 and one_page["next"]
    after = discovered(cli("device", "list", "--json", "--marker", one_page["next"],
                           env=env))["devices"]
    assert [d["address"] for d in one_page["devices"] + after] == \
        [d["address"] for d in everything]
    more = cli("device", "list", "--limit", "3", "--no-all", env=env)
    assert more.exit_code == 0 and f"--marker {one_page['next']}" in more.stderr
    a100s = discovered(cli("device", "list", "--json", "--vendor-id", "10de",
                           "--product-id", "20f1", env=env))["devices"]
    assert len(a100s) == 4 and {d["host"] for d in a100s} == {"gpu-1"}
    vfs = discovered(cli("device", "list", "--json", "--dev-type", "type-VF",
                         "--tag", "physical_network=physnet2", env=env))["devices"]
    assert vfs and all(d["parent_addr"] == "0000:3b:00.1" for d in vfs)
    table = cli("device", "list", "--host", "gpu-1", env=env)
    assert table.exit_code == 0 and "0000:17:00.0" in table.stdout


def test_device_show_reserve_unreserve(server: ApiServer, fleet: str) -> None:
    env = admin_env(server)
    dev = discovered(cli("device", "show", "gpu-1", "0000:17:00.0", "--json", env=env))
    assert dev["state"] == "available" and dev["host"] == "gpu-1"
    reserved = discovered(cli("device", "reserve", "gpu-1", "0000:17:00.0", "--json",
                              env=env))
    assert reserved["reserved"] is True and reserved["state"] == "reserved"
    listed = discovered(cli("device", "list", "--state", "reserved", "--json", env=env))
    assert [d["address"] for d in listed["devices"]] == ["0000:17:00.0"]
    back = cli("device", "unreserve", "gpu-1", "0000:17:00.0", env=env)
    assert back.exit_code == 0 and "available" in back.stdout
    # A VF shows its card's serial number (from its PF's VPD); a GPU has none.
    vf_view = cli("device", "show", "sriov-1", "0000:3b:11.0", env=env)
    assert vf_view.exit_code == 0, vf_view.output
    assert "card serial" in vf_view.stdout and "B4969100001" in vf_view.stdout
    assert dev["card_serial_number"] is None


def test_pool_list(server: ApiServer, fleet: str) -> None:
    env = admin_env(server)
    pools = discovered(cli("pool", "list", "--json", "--host", "gpu-1", env=env))["pools"]
    a100 = [p for p in pools if p["product_id"] == "20f1"]
    assert sum(p["total"] for p in a100) == 4
    table = cli("pool", "list", env=env)
    assert table.exit_code == 0 and "sriov-1" in table.stdout and "gpu-1" in table.stdout


def test_token_create_prints_the_secret_once(server: ApiServer, fleet: str) -> None:
    env = admin_env(server)
    made = discovered(cli("token", "create", "--role", "agent", "--host", "gpu-1", "--json",
                          env=env))
    assert made["role"] == "agent" and made["host"] == "gpu-1" and made["token"]
    # the new token works, and only for its own host
    as_agent = {"PCIPASS_URL": server.url, "PCIPASS_TOKEN": made["token"]}
    assert discovered(cli("host", "show", "gpu-1", "--json", env=as_agent))["name"] == "gpu-1"
    denied = cli("host", "show", "sriov-1", env=as_agent)
    assert denied.exit_code == 1 and "[forbidden]" in " ".join(denied.stderr.split())
    table = cli("token", "create", "--role", "member", "--project", "p1", env=env)
    assert table.exit_code == 0 and "not shown again" in table.stdout


def test_api_errors_are_clean_messages(server: ApiServer, fleet: str) -> None:
    env = admin_env(server)
    missing = cli("device", "show", "gpu-1", "0000:ee:00.0", env=env)
    assert missing.exit_code == 1 and missing.stdout == ""
    assert "error:" in missing.stderr and "[not_found]" in missing.stderr
    assert "Traceback" not in missing.output
    bad_token = cli("host", "list", env={**env, "PCIPASS_TOKEN": "not-a-token"})
    assert bad_token.exit_code == 1 and "[unauthenticated]" in bad_token.stderr
    no_agent_host = cli("token", "create", "--role", "agent", env=env)
    assert no_agent_host.exit_code == 1 and "host" in no_agent_host.stderr


def test_bad_usage_exits_2(server: ApiServer) -> None:
    env = admin_env(server)
    assert cli("device", "show", "gpu-1", "not-an-address", env=env).exit_code == 2
    assert cli("device", "list", "--tag", "novalue", env=env).exit_code == 2
    assert cli("device", "list", "--state", "sleeping", env=env).exit_code == 2
    assert cli("token", "create", "--role", "root", env=env).exit_code == 2


def test_unreachable_server_is_a_clean_error() -> None:
    result = cli("host", "list", env={"PCIPASS_URL": "http://127.0.0.1:9",
                                      "PCIPASS_TOKEN": "x"})
    assert result.exit_code == 1 and "cannot reach" in result.stderr
