"""The pyroute2 VF programmer against a real kernel: a veth pair in a network namespace of its
own, standing in for a PF. veth has no SR-IOV, so every VF request must come back as the
kernel's refusal, worded and naming the PF; nothing outside the namespace is touched.

Needs root (or CAP_SYS_ADMIN + CAP_NET_ADMIN) and ``ip``: skipped with the reason otherwise,
and failed instead when ``CI=true``, where this test must really run.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from pcipass.errors import VfProgrammingError
from pcipass.host.sriov import NetlinkVfProgrammer, VfAttribute, VfConfig, VfSlot
from pcipass.host.sriov.netlink import NETNS_RUN_DIR

PF = "pcipf0"
SLOT = VfSlot(PF, 0)
PORT = VfConfig(mac="fa:16:3e:12:34:56", vlan=100, qos=2, spoofchk=True, trust=True,
                link_state="enable", min_tx_rate_mbps=10, max_tx_rate_mbps=1000)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the netns test cannot run: {reason}")
    pytest.skip(f"NETWORK NAMESPACE TEST NOT RUN: {reason}")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)


def _namespaces() -> str:
    return _ip("netns", "list").stdout


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh namespace holding the veth pair PF/peer, deleted (with them) afterwards."""
    if shutil.which("ip") is None:
        _unavailable("the ip command (iproute2) is not installed")
    name = f"pcipass-test-{secrets.token_hex(4)}"
    made = _ip("netns", "add", name)
    if made.returncode != 0:
        _unavailable(f"`ip netns add` failed (needs root): {made.stderr.strip()}")
    try:
        veth = _ip("-n", name, "link", "add", PF, "type", "veth", "peer", "name", "pcipeer0")
        assert veth.returncode == 0, f"cannot create the veth pair: {veth.stderr}"
        yield name
    finally:
        _ip("netns", "del", name)
    assert name not in _namespaces(), f"namespace {name} was left behind"


def _mac_of(netns: str) -> str:
    out = _ip("-n", netns, "-o", "link", "show", PF).stdout
    return out.split("link/ether ")[1].split()[0]


@pytest.mark.parametrize(("attribute", "config", "what"), [
    (VfAttribute.MAC, PORT, "a VF's MAC address"),
    (VfAttribute.VLAN, PORT, "a VF's VLAN"),
    (VfAttribute.VLAN, VfConfig(vlan=100, qos=1, vlan_proto="802.1ad"), "a VF's VLAN"),
    (VfAttribute.SPOOFCHK, PORT, "a VF's spoof-check"),
    (VfAttribute.TRUST, PORT, "a VF's trust mode"),
    (VfAttribute.LINK_STATE, PORT, "a VF's link state"),
    (VfAttribute.RATE, PORT, "a VF's tx rate limits"),
])
def test_kernel_refusal_names_the_pf(netns: str, attribute: VfAttribute, config: VfConfig,
                                     what: str) -> None:
    mac = _mac_of(netns)
    with pytest.raises(VfProgrammingError) as caught:
        NetlinkVfProgrammer(netns=netns).write(SLOT, attribute, config)
    err = caught.value
    # What this kernel answers: veth has no ndo_set_vf_* ops, so rtnetlink says EOPNOTSUPP
    # (after its policy checks passed: a malformed attribute would be EINVAL instead).
    assert err.errno == errno.EOPNOTSUPP
    assert (err.code, err.pf, err.vf_index, err.attribute) == (
        "vf_programming_failed", PF, 0, str(attribute))
    assert err.message == (f"cannot set {attribute} of VF 0 on PF {PF}: the PF driver does "
                           f"not support setting {what} (EOPNOTSUPP)")
    assert _mac_of(netns) == mac


def test_reading_a_pf_without_vfs(netns: str) -> None:
    programmer = NetlinkVfProgrammer(netns=netns)
    for call in (lambda: programmer.read(SLOT), lambda: programmer.program(SLOT, PORT),
                 lambda: programmer.restore(SLOT, PORT)):
        with pytest.raises(VfProgrammingError) as caught:
            call()
        assert caught.value.message == (
            f"PF {PF} has no VF 0: it has no VFs (SR-IOV not supported by this device, "
            f"or sriov_numvfs is 0)")
        assert caught.value.errno == errno.ENODEV


def test_unknown_pf(netns: str) -> None:
    programmer = NetlinkVfProgrammer(netns=netns)
    for call in (lambda: programmer.read(VfSlot("nosuch0", 1)),
                 lambda: programmer.write(VfSlot("nosuch0", 1), VfAttribute.MAC, PORT)):
        with pytest.raises(VfProgrammingError) as caught:
            call()
        assert caught.value.message == (f"PF nosuch0 not found in network namespace {netns}: "
                                        f"no network interface by that name")
        assert caught.value.pf == "nosuch0"


def test_missing_namespace_is_not_created(netns: str) -> None:
    missing = f"{netns}-gone"
    with pytest.raises(VfProgrammingError) as caught:
        NetlinkVfProgrammer(netns=missing).read(SLOT)
    assert caught.value.message == (f"cannot reach PF {PF}: network namespace {missing!r} "
                                    f"does not exist")
    assert missing not in _namespaces()
    assert not os.path.exists(os.path.join(NETNS_RUN_DIR, missing))
