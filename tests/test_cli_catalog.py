"""`pcipass alias|flavor|image`: against a real server, JSON checked, errors clean."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from apiserver import ApiServer, api_server
from cliserver import cli, env_for, failed, member_token, ok_json, ok_text, report_host
from pcipass.cli.catalog import alias_body, pci_spec


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    work = tmp_path_factory.mktemp("cli-catalog")
    with api_server(f"sqlite:///{work / 'pcipass.db'}", work) as srv:
        report_host(srv, "gpu-1", work / "gpu-1", "gpu-server")
        yield srv
        log = srv.log()
        assert "Traceback" not in log, log[-6000:]


@pytest.fixture(scope="module")
def admin(server: ApiServer) -> dict[str, str | None]:
    return env_for(server)


@pytest.fixture(scope="module")
def a100(admin: dict[str, str | None]) -> str:
    ok_json(cli("alias", "create", "a100", "--vendor-id", "10de", "--product-id", "20f1",
                "--device-type", "type-PCI", "--numa-policy", "preferred", "--json", env=admin))
    return "a100"


# --- aliases -------------------------------------------------------------------------------

def test_alias_create_from_options(admin: dict[str, str | None], a100: str) -> None:
    shown = ok_json(cli("alias", "show", a100, "--json", env=admin))
    assert shown["name"] == "a100" and shown["numa_policy"] == "preferred"
    assert shown["device_type"] == "type-PCI"
    assert shown["entries"] == [{"name": "a100", "vendor_id": "10de", "product_id": "20f1",
                                 "device_type": "type-PCI", "numa_policy": "preferred"}]


def test_alias_match_options_become_a_match_object(admin: dict[str, str | None]) -> None:
    made = ok_json(cli("alias", "create", "vf-net", "--device-type", "type-VF",
                       "--match", "physical_network=physnet1", "--match", "driver=iavf",
                       "--match", "driver=vfio-pci", "--match", "trusted=true", "--json",
                       env=admin))
    [alias] = made["aliases"]
    assert alias["name"] == "vf-net" and alias["device_type"] == "type-VF"
    assert alias["entries"][0]["match"] == {
        "driver": ["iavf", "vfio-pci"], "physical_network": "physnet1", "trusted": True}
    table = ok_text(cli("alias", "list", env=admin))
    assert "vf-net" in table and "physical_network=physnet1" in table
    assert "driver=iavf|vfio-pci" in table


def test_alias_json_body_is_sent_verbatim(admin: dict[str, str | None]) -> None:
    body = [{"name": "nvme", "vendor_id": "144d", "product_id": "a80a"},
            {"name": "nvme", "vendor_id": "8086", "product_id": "0a54"}]
    made = ok_json(cli("alias", "create", "--json-body", json.dumps(body), "--json",
                       env=admin))
    [alias] = made["aliases"]
    assert [(e["vendor_id"], e["product_id"]) for e in alias["entries"]] == \
        [("144d", "a80a"), ("8086", "0a54")]
    # one more alternative joins the name
    extra = {"name": "nvme", "vendor_id": "1c5c", "product_id": "174a"}
    again = ok_json(cli("alias", "create", "--json-body", json.dumps(extra), "--json",
                        env=admin))
    assert len(again["aliases"][0]["entries"]) == 3
    listed = ok_json(cli("alias", "list", "--json", env=admin))
    assert "nvme" in {a["name"] for a in listed["aliases"]}


def test_alias_show_table(admin: dict[str, str | None], a100: str) -> None:
    out = ok_text(cli("alias", "show", a100, env=admin))
    assert "10de:20f1" in out and "preferred" in out and "type-PCI" in out


@pytest.mark.parametrize(("args", "expected"), [
    (["gpu", "--vendor-id", "10dex"], ["vendor_id", "10dex", "'gpu'"]),
    (["gpu"], ["constrains nothing", "'gpu'"]),
    (["gpu", "--vendor-id", "10de", "--match", "novalue"], ["--match", "key=value"]),
    (["gpu", "--vendor-id", "10de", "--match", "address=0000:01:00.0"], ["address"]),
    ([], ["NAME", "--json-body"]),
    (["--json-body", "{nope"], ["not valid JSON"]),
    (["gpu", "--json-body", '{"name": "gpu", "vendor_id": "10de"}'], ["whole alias"]),
    (["--json-body", '{"name": "gpu", "vendor": "10de"}'], ["unknown key", "'vendor'"]),
    (["gpu", "--vendor-id", "10de", "--device-type", "type-XX"], ["type-XX"]),
])
def test_alias_bad_usage_exits_2(admin: dict[str, str | None], args: list[str],
                                 expected: list[str]) -> None:
    message = failed(cli("alias", "create", *args, env=admin), 2)
    for text in expected:
        assert text in message


def test_alias_refused_by_the_server_exits_1(admin: dict[str, str | None], a100: str) -> None:
    # valid alone, but disagrees with the stored a100 entry on numa_policy
    message = failed(cli("alias", "create", "a100", "--vendor-id", "10de", "--product-id",
                         "20b5", "--device-type", "type-PCI", "--numa-policy", "required",
                         env=admin))
    assert "a100" in message and "numa_policy" in message and "[invalid_alias]" in message
    assert "[not_found]" in failed(cli("alias", "show", "nope", env=admin))


def test_alias_delete(admin: dict[str, str | None], server: ApiServer) -> None:
    ok_json(cli("alias", "create", "gone", "--vendor-id", "10de", "--product-id", "2230",
                "--json", env=admin))
    assert ok_json(cli("alias", "delete", "gone", "--json", env=admin)) == \
        {"deleted": "alias", "name": "gone"}
    assert "[not_found]" in failed(cli("alias", "show", "gone", env=admin))
    member = env_for(server, member_token(server, "p-alias"))
    assert "[forbidden]" in failed(cli("alias", "create", "mine", "--vendor-id", "10de",
                                       env=member))
    assert "a100" in {a["name"] for a in ok_json(cli("alias", "list", "--json",
                                                     env=member))["aliases"]}


# --- flavors -------------------------------------------------------------------------------

def test_pci_options_join_into_novas_syntax() -> None:
    assert pci_spec(["a100:2", " fpga:1"], "--pci", "pci_passthrough:alias") == \
        "a100:2, fpga:1"
    assert pci_spec([], "--pci", "pci_passthrough:alias") is None
    assert alias_body("x", vendor_id="10de", product_id=None, device_type=None,
                      numa_policy=None, match=["a=1", "a=2", "b=3"]) == \
        {"name": "x", "vendor_id": "10de", "match": {"a": ["1", "2"], "b": "3"}}


def test_flavor_create_with_pci_and_properties(admin: dict[str, str | None], a100: str) -> None:
    ok_json(cli("alias", "create", "a6000", "--vendor-id", "10de", "--product-id", "2230",
                "--json", env=admin))
    made = ok_json(cli("flavor", "create", "gpu.mixed", "--vcpus", "8", "--ram", "16384",
                       "--disk", "40", "--pci", "a100:2", "--pci", "a6000:1",
                       "--pci-preferred", "a6000:1", "--property", "hw:numa_nodes=2",
                       "--property", "hw:pci_numa_affinity_policy=required", "--json",
                       env=admin))
    assert (made["name"], made["vcpus"], made["ram_mb"], made["disk_gb"]) == \
        ("gpu.mixed", 8, 16384, 40)
    assert made["extra_specs"] == {
        "pci_passthrough:alias": "a100:2, a6000:1",
        "pci_passthrough:alias_preferred": "a6000:1",
        "hw:numa_nodes": "2", "hw:pci_numa_affinity_policy": "required"}
    assert made["is_public"] is True and made["projects"] == []
    by_name = ok_json(cli("flavor", "show", "gpu.mixed", "--json", env=admin))
    by_id = ok_json(cli("flavor", "show", made["id"], "--json", env=admin))
    assert by_name == by_id == made
    table = ok_text(cli("flavor", "show", "gpu.mixed", env=admin))
    assert "a100:2, a6000:1" in table and "public" in table


def test_private_flavor_and_access(admin: dict[str, str | None], server: ApiServer,
                                   a100: str) -> None:
    made = ok_json(cli("flavor", "create", "gpu.private", "--vcpus", "4", "--ram", "8192",
                       "--pci", "a100:1", "--private", "--project", "p-one", "--json",
                       env=admin))
    assert made["is_public"] is False and made["projects"] == ["p-one"]
    one = env_for(server, member_token(server, "p-one"))
    two = env_for(server, member_token(server, "p-two"))
    assert "gpu.private" in {f["name"] for f in ok_json(cli("flavor", "list", "--json",
                                                            env=one))["flavors"]}
    assert "gpu.private" not in {f["name"] for f in ok_json(cli("flavor", "list", "--json",
                                                                env=two))["flavors"]}
    assert "[not_found]" in failed(cli("flavor", "show", "gpu.private", env=two))
    shared = ok_json(cli("flavor", "access", made["id"], "--add", "p-two", "--remove",
                         "p-one", "--json", env=admin))
    assert shared["projects"] == ["p-two"]
    assert ok_json(cli("flavor", "show", "gpu.private", "--json", env=two))["id"] == made["id"]
    assert "[not_found]" in failed(cli("flavor", "show", "gpu.private", env=one))
    assert "private: p-two" in ok_text(cli("flavor", "list", env=admin))


@pytest.mark.parametrize(("args", "expected"), [
    (["--pci", "a100"], ["--pci", "alias:count"]),
    (["--pci", "a100:0"], ["--pci", "at least 1"]),
    (["--pci-preferred", "a100:x"], ["--pci-preferred"]),
    (["--project", "p1"], ["--private"]),
    (["--property", "novalue"], ["--property", "key=value"]),
    (["--property", "a=1", "--property", "a=2"], ["twice"]),
    (["--pci", "a100:1", "--property", "pci_passthrough:alias=a100:2"], ["--pci"]),
    (["--vcpus", "0"], ["vcpus"]),
])
def test_flavor_bad_usage_exits_2(admin: dict[str, str | None], args: list[str],
                                  expected: list[str]) -> None:
    base = ["flavor", "create", "f-bad", "--ram", "1024"]
    if "--vcpus" not in args:
        base += ["--vcpus", "1"]
    result = cli(*base, *args, env=admin)
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    for text in expected:
        assert text in message


def test_flavor_refused_by_the_server_exits_1(admin: dict[str, str | None], a100: str) -> None:
    message = failed(cli("flavor", "create", "f-h100", "--vcpus", "1", "--ram", "1024",
                         "--pci", "h100:1", env=admin))
    assert "h100" in message and "[unknown_alias]" in message
    message = failed(cli("flavor", "create", "f-odd", "--vcpus", "3", "--ram", "1024",
                         "--pci", "a100:1", "--property", "hw:numa_nodes=2", env=admin))
    assert "hw:numa_nodes" in message or "NUMA" in message
    ok_json(cli("flavor", "create", "f-dup", "--vcpus", "1", "--ram", "1024", "--json",
                env=admin))
    assert "f-dup" in failed(cli("flavor", "create", "f-dup", "--vcpus", "1", "--ram", "1024",
                                 env=admin))


def test_flavor_delete_and_alias_in_use(admin: dict[str, str | None], a100: str) -> None:
    made = ok_json(cli("flavor", "create", "f-del", "--vcpus", "1", "--ram", "1024",
                       "--pci", "a100:1", "--json", env=admin))
    message = failed(cli("alias", "delete", "a100", env=admin))
    assert "[conflict]" in message and "a100" in message
    assert ok_json(cli("flavor", "delete", made["id"], "--json", env=admin))["deleted"] == \
        "flavor"
    assert "[not_found]" in failed(cli("flavor", "show", "f-del", env=admin))
    ok_json(cli("flavor", "create", "f-del2", "--vcpus", "1", "--ram", "1024", "--json",
                env=admin))
    assert "deleted flavor f-del2" in ok_text(cli("flavor", "delete", "f-del2", env=admin))


# --- images --------------------------------------------------------------------------------

def test_image_create_show_list_delete(admin: dict[str, str | None], server: ApiServer) -> None:
    made = ok_json(cli("image", "create", "cuda", "--source", "/images/cuda.qcow2",
                       "--property", "hw_pci_supported_aliases=a100,a6000", "--json",
                       env=admin))
    assert made["source"] == "/images/cuda.qcow2" and made["project"] is None
    assert made["properties"] == {"hw_pci_supported_aliases": "a100,a6000"}
    assert ok_json(cli("image", "show", made["id"], "--json", env=admin)) == \
        ok_json(cli("image", "show", "cuda", "--json", env=admin)) == made
    member = env_for(server, member_token(server, "p-img"))
    mine = ok_json(cli("image", "create", "mine", "--source", "/images/mine.qcow2", "--json",
                       env=member))
    assert mine["project"] == "p-img"
    names = {i["name"] for i in ok_json(cli("image", "list", "--json", env=member))["images"]}
    assert {"cuda", "mine"} <= names
    other = env_for(server, member_token(server, "p-other"))
    assert "[not_found]" in failed(cli("image", "show", "mine", env=other))
    table = ok_text(cli("image", "list", env=admin))
    assert "cuda" in table and "project p-img" in table
    ok_json(cli("image", "delete", "mine", "--json", env=member))
    assert "[not_found]" in failed(cli("image", "show", mine["id"], env=admin))


def test_image_bad_usage_and_refusals(admin: dict[str, str | None]) -> None:
    assert cli("image", "create", "x", env=admin).exit_code == 2  # no --source
    assert "--property" in failed(cli("image", "create", "x", "--source", "/x",
                                      "--property", "oops", env=admin), 2)
    message = failed(cli("image", "create", "x", "--source", "/x", "--property",
                         "hw_pci_numa_affinity_policy=sometimes", env=admin))
    assert "hw_pci_numa_affinity_policy" in message


def test_unreachable_and_unauthenticated(server: ApiServer) -> None:
    assert "cannot reach" in failed(cli("flavor", "list", env={
        "PCIPASS_URL": "http://127.0.0.1:9", "PCIPASS_TOKEN": "x"}))
    assert "[unauthenticated]" in failed(cli("alias", "list",
                                             env=env_for(server, "not-a-token")))


def test_tables_without_json(admin: dict[str, str | None], a100: str) -> None:
    made = ok_text(cli("flavor", "create", "f-table", "--vcpus", "2", "--ram", "2048",
                       "--pci", "a100:1", env=admin))
    assert "Flavor f-table" in made and not made.startswith("{")
    out = ok_text(cli("flavor", "list", env=admin))
    assert "f-table" in out and "a100:1" in out
    out = ok_text(cli("alias", "list", env=admin))
    assert "a100" in out and "10de:20f1" in out
