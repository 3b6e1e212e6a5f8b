"""`pcipass network|port` and `server create --nic`, against a real server.

One sriov-nic-server host as discovery finds it with its operator's device spec: VFs of
ens1f0 and ens2f0 on physnet1 (ens2f0's trusted), of ens1f1 and ens2f1 on physnet2.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from apicloud import confirm_all_destroys
from apiserver import ApiServer, api_server
from cliserver import cli, env_for, failed, member_token, ok_json, ok_text, report_host
from pcipass.cli.networks import parse_nic

Env = dict[str, str | None]
TENANT = "tenant-net"


@dataclass(frozen=True)
class Cloud:
    server: ApiServer
    admin: Env
    member: Env


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    work = tmp_path_factory.mktemp("cli-networks")
    with api_server(f"sqlite:///{work / 'pcipass.db'}", work) as srv:
        report_host(srv, "nic-1", work / "nic-1", "sriov-nic-server")
        admin = env_for(srv)
        for args in (
            ["network", "create", "prod", "--physnet", "physnet1", "--vlan", "100"],
            ["network", "create", "storage", "--physnet", "physnet2", "--flat"],
            ["flavor", "create", "small", "--vcpus", "2", "--ram", "2048"],
            ["image", "create", "plain", "--source", "/images/plain.qcow2"],
        ):
            ok_json(cli(*args, "--json", env=admin))
        yield Cloud(srv, admin, env_for(srv, member_token(srv, TENANT)))
        log = srv.log()
        assert "Traceback" not in log, log[-6000:]


def cells(text: str) -> str:
    """A table's text with the column rules taken out: ``key value`` reads as such."""
    return " ".join(text.replace("│", " ").split())


def confirm(cloud: Cloud) -> None:
    with cloud.server.client() as http:
        confirm_all_destroys(http)


# --- networks ------------------------------------------------------------------------------

def test_network_create_show_list_delete(cloud: Cloud) -> None:
    made = ok_json(cli("network", "create", "lab", "--physnet", "physnet2", "--vlan", "42",
                       "--project", TENANT, "--json", env=cloud.admin))
    assert (made["name"], made["physical_network"], made["segmentation"],
            made["segmentation_id"], made["project"]) == ("lab", "physnet2", "vlan", 42, TENANT)
    shown = cells(ok_text(cli("network", "show", "lab", env=cloud.admin)))
    assert "Network lab" in shown and "vlan 42" in shown and f"project {TENANT}" in shown
    assert ok_json(cli("network", "show", made["id"], "--json", env=cloud.member)) == made
    table = cells(ok_text(cli("network", "list", env=cloud.member)))
    assert "prod" in table and "vlan 100" in table and "shared" in table and "lab" in table
    listed = ok_json(cli("network", "list", "--json", env=cloud.member))
    assert {"prod", "storage", "lab"} <= {n["name"] for n in listed["networks"]}
    assert ok_json(cli("network", "delete", "lab", "--json", env=cloud.admin)) == {
        "deleted": "network", "name": "lab"}
    assert "not found" in failed(cli("network", "show", "lab", env=cloud.admin))


@pytest.mark.parametrize("args", [
    ["--vlan", "10", "--flat"],
    [],
    ["--vlan", "5000"],
    ["--vlan", "0"],
])
def test_network_create_usage_errors(cloud: Cloud, args: list[str]) -> None:
    message = failed(cli("network", "create", "bad", "--physnet", "physnet1", *args,
                         env=cloud.admin), 2)
    assert "vlan" in message.lower()


def test_members_may_not_create_networks(cloud: Cloud) -> None:
    message = failed(cli("network", "create", "mine", "--physnet", "physnet1", "--flat",
                         env=cloud.member))
    assert "admin" in message and "[forbidden]" in message
    assert "[forbidden]" in failed(cli("network", "delete", "prod", env=cloud.member))


# --- ports ---------------------------------------------------------------------------------

def test_port_create_show_list_delete(cloud: Cloud) -> None:
    port = ok_json(cli("port", "create", "--network", "prod", "--name", "web",
                       "--vnic-type", "direct", "--mac", "FA:16:3E:AA:BB:CC",
                       "--no-spoofchk", "--max-tx-rate", "1000", "--min-tx-rate", "10",
                       "--numa-policy", "preferred", "--json", env=cloud.member))
    assert (port["name"], port["network"], port["vnic_type"], port["mac"], port["spoofchk"],
            port["trusted"], port["max_tx_rate_mbps"], port["min_tx_rate_mbps"],
            port["numa_affinity_policy"], port["project"], port["status"]) == (
        "web", "prod", "direct", "fa:16:3e:aa:bb:cc", False, False, 1000, 10, "preferred",
        TENANT, "DOWN")
    shown = cells(ok_text(cli("port", "show", "web", env=cloud.member)))
    assert "Port web" in shown and "fa:16:3e:aa:bb:cc" in shown and "spoof check off" in shown
    assert "10-1000 Mbit/s" in shown
    table = cells(ok_text(cli("port", "list", "--network", "prod", env=cloud.member)))
    assert "web" in table and "prod (physnet1)" in table and "DOWN" in table
    listed = ok_json(cli("port", "list", "--network", "prod", "--json", env=cloud.member))
    assert [p["id"] for p in listed["ports"]] == [port["id"]]
    assert "[mac_in_use]" in failed(cli("port", "create", "--network", "prod", "--mac",
                                        "fa:16:3e:aa:bb:cc", env=cloud.member))
    assert ok_json(cli("port", "delete", "web", "--json", env=cloud.member)) == {
        "deleted": "port", "name": "web"}
    assert ok_json(cli("port", "list", "--json", env=cloud.member))["ports"] == []


@pytest.mark.parametrize(("args", "words"), [
    (["--mac", "01:00:5e:00:00:01"], "multicast"),
    (["--mac", "not-a-mac"], "MAC"),
    (["--vnic-type", "vdpa"], "vdpa"),
    (["--max-tx-rate", "-1"], "greater than or equal to"),
])
def test_port_create_usage_errors(cloud: Cloud, args: list[str], words: str) -> None:
    assert words in failed(cli("port", "create", "--network", "prod", *args,
                               env=cloud.member), 2)


def test_only_admins_make_trusted_ports(cloud: Cloud) -> None:
    message = failed(cli("port", "create", "--network", "prod", "--trusted",
                         env=cloud.member))
    assert "(field: trusted)" in message and "[forbidden]" in message
    port = ok_json(cli("port", "create", "--network", "prod", "--trusted", "--project",
                       TENANT, "--json", env=cloud.admin))
    assert port["trusted"] is True and port["project"] == TENANT
    ok_json(cli("port", "delete", port["id"], "--json", env=cloud.member))


# --- booting with NICs ---------------------------------------------------------------------

def test_server_create_with_nics_and_show_the_bindings(cloud: Cloud) -> None:
    ok_json(cli("port", "create", "--network", "storage", "--name", "data",
                "--vnic-type", "macvtap", "--json", env=cloud.member))
    server = ok_json(cli("server", "create", "vm-nics", "--flavor", "small", "--image",
                         "plain", "--nic", "net-id=prod,vnic-type=direct",
                         "--nic", "port-id=data", "--json", env=cloud.member))
    assert server["status"] == "BUILDING", server["fault"]
    by_network = {p["network"]: p for p in server["ports"]}
    assert set(by_network) == {"prod", "storage"}
    prod, data = by_network["prod"]["binding"], by_network["storage"]["binding"]
    assert prod["host"] == data["host"] == "nic-1"
    assert prod["pf_netdev"] in ("ens1f0", "ens2f0")
    assert data["pf_netdev"] in ("ens1f1", "ens2f1")
    assert isinstance(prod["vf_index"], int) and isinstance(data["vf_netdev"], str)

    shown = cells(ok_text(cli("server", "show", "vm-nics", env=cloud.member)))
    assert "Ports" in shown
    for port in server["ports"]:
        b = port["binding"]
        for text in (port["mac"], b["address"], b["pf_netdev"], port["vnic_type"]):
            assert text in shown, (text, shown)
    listed = cells(ok_text(cli("port", "list", "--server", "vm-nics", env=cloud.member)))
    assert "data" in listed and "BUILD" in listed and prod["address"] in listed

    assert "[port_in_use]" in failed(cli("port", "delete", "data", env=cloud.member))
    assert "[network_in_use]" in failed(cli("network", "delete", "prod", env=cloud.admin))
    ok_json(cli("server", "delete", "vm-nics", "--json", env=cloud.member))
    confirm(cloud)
    left = ok_json(cli("port", "list", "--json", env=cloud.member))["ports"]
    assert [(p["name"], p["server_id"], p["binding"]) for p in left] == [("data", None, None)]
    ok_json(cli("port", "delete", "data", "--json", env=cloud.member))


def test_explain_with_nics(cloud: Cloud) -> None:
    # the device spec tags physnet2's PFs (by devname), none of physnet1's
    refused = ok_json(cli("explain", "--flavor", "small", "--nic",
                          "net-id=prod,vnic-type=direct-physical", "--json", env=cloud.admin))
    assert refused["fits"] is False and "physnet1" in refused["message"], refused
    for nic in ("net-id=storage,vnic-type=direct-physical", "net-id=prod,vnic-type=direct"):
        ok = ok_json(cli("explain", "--flavor", "small", "--nic", nic, "--json",
                         env=cloud.admin))
        assert ok["fits"] is True, ok
    table = cells(ok_text(cli("explain", "--flavor", "small", "--nic",
                              "net-id=prod,vnic-type=direct-physical", env=cloud.admin)))
    assert "does not fit" in table and "nic-1" in table


@pytest.mark.parametrize("text", [
    "net-id=prod,port-id=p", "vnic-type=direct", "net-id=", "net=prod",
    "net-id=prod,vnic-type=vdpa", "port-id=p,vnic-type=direct", "net-id=a,net-id=b",
])
def test_bad_nic_options_are_usage_errors(cloud: Cloud, text: str) -> None:
    assert "--nic" in failed(cli("server", "create", "vm-bad", "--flavor", "small",
                                 "--image", "plain", "--nic", text, env=cloud.member), 2)


def test_parse_nic() -> None:
    assert parse_nic("net-id=prod") == {"net_id": "prod"}
    assert parse_nic(" net-id = prod , vnic-type=macvtap") == {"net_id": "prod",
                                                                "vnic_type": "macvtap"}
    assert parse_nic("port-id=3f2a") == {"port_id": "3f2a"}
