"""Racing boots through the real API: one server with four uvicorn workers, eight client
processes, more demand than devices, on SQLite and on PostgreSQL.

Afterwards every device has at most one owner, every placed server holds exactly what its
flavor asked for (and the devices say so too), and every refused server says why.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from apicloud import JSON, isolated, listed, make_alias, make_flavor, make_image, member, put_host
from apiserver import ApiServer, api_server, gpu, nic
from pcipass.pci.address import PciAddress
from pcipass.pci.device import PciDevice

CLIENTS = 8
BOOTS_PER_CLIENT = 6
WORKERS = 4
# flavor -> (alias, count); cycled through by every client
FLAVORS = {"c1": ("cgpu", 1), "c2": ("cgpu", 2), "v1": ("cvf", 1)}
CYCLE = ("c2", "c1", "v1", "c2", "v1", "c1")


def gpu_pair(bus: int) -> list[PciDevice]:
    """Two GPUs behind one switch without ACS: one IOMMU group, handed out together."""
    a, b = PciAddress(0, bus, 0, 0), PciAddress(0, bus, 1, 0)
    return [replace(gpu(str(addr)), iommu_group=bus, iommu_group_members=(a, b))
            for addr in (a, b)]


def fleet() -> dict[str, list[PciDevice]]:
    """16 GPUs (four of them in two units of two) and 12 VFs over five hosts."""
    hosts = {f"race-{i}": [gpu("0000:3b:00.0"), gpu("0000:5e:00.0"),
                           gpu("0000:86:00.0", numa=1), *isolated(nic("0000:af:00.0", 3))]
             for i in range(4)}
    hosts["race-pairs"] = [*gpu_pair(0x3b), *gpu_pair(0x5e)]
    return hosts


def client(url: str, token: str, index: int, start_at: float, out: Any) -> None:
    """One client process: wait for the common start, then boot as fast as answers come."""
    results: list[tuple[int, Any]] = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                      timeout=120.0) as http:
        time.sleep(max(0.0, start_at - time.time()))
        for n in range(BOOTS_PER_CLIENT):
            flavor = CYCLE[(index + n) % len(CYCLE)]
            reply = http.post("/v1/servers", json={"name": f"race-{index}-{n}",
                                                   "flavor": flavor, "image": "race-image"})
            try:
                body = reply.json()
            except ValueError:
                body = reply.text
            results.append((reply.status_code, body))
    out.put((index, results))


@pytest.fixture
def busy_api(db_url: str, tmp_path: Path) -> Iterator[ApiServer]:
    with api_server(db_url, tmp_path, workers=WORKERS) as server:
        yield server
        log = server.log()
        assert "Traceback" not in log, log[-6000:]


def test_racing_boots_never_share_a_device(busy_api: ApiServer) -> None:
    api = busy_api
    assert "Started parent process" in api.log()  # uvicorn really runs several workers
    hosts = fleet()
    with api.client() as http:
        make_alias(http, "cgpu", product_id="20b5")
        make_alias(http, "cvf", vendor_id="8086", product_id="154c", device_type="type-VF",
                   match={"physical_network": "physnet1"})
        for name, (alias, count) in FLAVORS.items():
            make_flavor(http, name, pci=f"{alias}:{count}")
        make_image(http, "race-image")
        for host, fleet_devices in hosts.items():
            put_host(http, host, fleet_devices)
    tokens = [member(api, f"race-proj-{i % 4}") for i in range(CLIENTS)]

    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start_at = time.time() + 3.0  # every process spawned and connected before it
    procs = [ctx.Process(target=client, args=(api.url, tokens[i], i, start_at, out))
             for i in range(CLIENTS)]
    for p in procs:
        p.start()
    replies = dict(out.get(timeout=240) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    for i in range(CLIENTS):
        for status, body in replies[i]:
            assert status == 202, f"client {i}: {status} {body}"  # placed or ERROR, no 5xx
    answered = [body for i in range(CLIENTS) for _, body in replies[i]]
    assert len(answered) == CLIENTS * BOOTS_PER_CLIENT

    with api.client() as http:
        servers = {s["id"]: s for s in listed(http, "/v1/servers", "servers", limit=1000)}
        devices = {(host, addr): d for host in hosts
                   for addr, d in _devices(http, host).items()}
    assert {s["id"] for s in answered} <= set(servers)

    owners: Counter[tuple[str, str]] = Counter()
    placed = [s for s in servers.values() if s["status"] in ("BUILDING", "ACTIVE")]
    refused = [s for s in servers.values() if s["status"] == "ERROR"]
    assert len(placed) + len(refused) == len(answered)
    assert placed and refused  # more demand than devices: some of each

    for s in placed:
        assert s["flavor"] in FLAVORS, s
        alias, count = FLAVORS[s["flavor"]]
        asked = Counter(d["alias"] for d in s["devices"] if d["alias"] is not None)
        assert asked == Counter({alias: count}), s
        assert s["fault"] is None and s["host"] in hosts
        for d in s["devices"]:
            key = (s["host"], d["address"])
            owners[key] += 1
            assert (devices[key]["state"], devices[key]["owner"]) == ("claimed", s["id"]), key
    assert max(owners.values()) == 1, [k for k, n in owners.items() if n > 1]
    # ...and no device claims an owner that does not hold it
    held = {k for k, d in devices.items() if d["owner"] is not None}
    assert held == set(owners)
    assert all(d["state"] == "available" for k, d in devices.items()
               if k not in held and d["assignable"])

    no_fit = []
    for s in refused:
        assert s["host"] is None and s["devices"] == []
        message = s["fault"]["message"]
        alias, count = FLAVORS[s["flavor"]]
        assert f"{count} x {alias}" in message, message
        if message.startswith("No host can satisfy"):
            no_fit.append(s)
        else:  # lost the race for the last devices on every host it tried, and says so
            assert message.startswith("No host could be claimed"), message
            assert "other boots took the devices first" in message, message

    # a boot refused for want of devices was right, and stays right (nothing is freed):
    # nothing it could use is left
    free_gpus = Counter(host for (host, _), d in devices.items()
                        if d["vendor_id"] == "10de" and d["state"] == "available")
    free_vfs = sum(1 for d in devices.values()
                   if d["dev_type"] == "type-VF" and d["state"] == "available")
    refused_flavors = {s["flavor"] for s in no_fit}
    if "v1" in refused_flavors:
        assert free_vfs == 0
    if "c1" in refused_flavors:  # what GPUs are left come in units of two
        assert all(len(d["iommu_group_members"]) == 2 for d in devices.values()
                   if d["vendor_id"] == "10de" and d["state"] == "available")
    if "c2" in refused_flavors:  # no host has two left
        assert all(n < 2 for n in free_gpus.values()), free_gpus


def _devices(http: httpx.Client, host: str) -> dict[str, JSON]:
    reply = http.get("/v1/devices", params={"host": host, "limit": 1000})
    assert reply.status_code == 200, reply.text
    return {d["address"]: d for d in reply.json()["devices"]}

