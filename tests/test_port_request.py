"""The port vocabulary: MACs, segmentation, rates, vnic types, and a port's PCI request."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcipass.errors import InvalidInput
from pcipass.net import port as net_port
from pcipass.net.port import (
    DEFAULT_MAC_PREFIX,
    Segmentation,
    VnicType,
    check_rate,
    check_segmentation,
    parse_mac,
    parse_mac_prefix,
    parse_numa_policy,
    parse_physnet,
    parse_vnic_type,
    port_alias,
    port_of,
    port_request,
    random_mac,
)
from pcipass.pci.address import PciAddress
from pcipass.pci.alias import NumaPolicy
from pcipass.pci.device import DevType, PciDevice
from pcipass.pci.request import PciRequest
from pcipass.sched import BootRequest


def dev(dev_type: DevType, physnet: str | None = "physnet2", **tags: str) -> PciDevice:
    t = dict(tags)
    if physnet is not None:
        t["physical_network"] = physnet
    return PciDevice(address=PciAddress.parse("0000:3b:02.1"), vendor_id="8086",
                     product_id="1889", class_code="020000", dev_type=dev_type, tags=t)


def request(vnic: VnicType = VnicType.DIRECT, *, name: str | None = "web",
            physnet: str = "physnet2", trusted: bool = False,
            numa: NumaPolicy | None = None, flavor: NumaPolicy | None = None
            ) -> PciRequest | None:
    return port_request(port_id="p-1", port_name=name, vnic_type=vnic, physnet=physnet,
                        trusted=trusted, numa_policy=numa, flavor_policy=flavor)


def must(r: PciRequest | None) -> PciRequest:
    assert r is not None
    return r


# --- MACs ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "want"), [
    ("fa:16:3e", "fa:16:3e"),
    ("FA:16:3E", "fa:16:3e"),
    ("fa-16-3e", "fa:16:3e"),
    (" 02 ", "02"),
    ("02:00:00:00:01", "02:00:00:00:01"),
])
def test_mac_prefix_accepted(text: str, want: str) -> None:
    assert parse_mac_prefix(text) == want


@pytest.mark.parametrize(("text", "words"), [
    ("", "1 to 5 octets"),
    ("fa:16:3e:00:00:00", "1 to 5 octets"),
    ("fa:16:3", "1 to 5 octets"),
    ("fa:16:zz", "1 to 5 octets"),
    ("fa:16-3e", "1 to 5 octets"),
    ("01:00:5e", "multicast"),
    ("ff", "multicast"),
])
def test_mac_prefix_refused(text: str, words: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_mac_prefix(text)
    assert err.value.field == "network.mac_prefix"
    assert words in err.value.message
    assert "network.mac_prefix" in err.value.message


def test_mac_prefix_names_the_given_field() -> None:
    with pytest.raises(InvalidInput) as err:
        parse_mac_prefix("x", field="mac_prefix")
    assert err.value.field == "mac_prefix"
    with pytest.raises(InvalidInput):
        parse_mac_prefix(3, field="mac_prefix")  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "want"), [
    ("fa:16:3e:12:34:56", "fa:16:3e:12:34:56"),
    ("FA:16:3E:AB:CD:EF", "fa:16:3e:ab:cd:ef"),
    ("fa-16-3e-ab-cd-ef", "fa:16:3e:ab:cd:ef"),
    ("00:00:00:00:00:01", "00:00:00:00:00:01"),
])
def test_mac_accepted(text: str, want: str) -> None:
    assert parse_mac(text) == want


@pytest.mark.parametrize(("value", "words"), [
    ("fa:16:3e:12:34", "is not a MAC address"),
    ("fa:16:3e:12:34:56:78", "is not a MAC address"),
    ("fa:16:3e:12:34:5", "is not a MAC address"),
    ("fa163e123456", "is not a MAC address"),
    ("01:00:5e:00:00:01", "multicast"),
    ("ff:ff:ff:ff:ff:ff", "multicast"),
    ("00:00:00:00:00:00", "all-zero"),
    (None, "must be a string"),
    (42, "must be a string"),
])
def test_mac_refused(value: object, words: str) -> None:
    with pytest.raises(InvalidInput) as err:
        parse_mac(value, field="ports[0].mac")
    assert err.value.field == "ports[0].mac"
    assert err.value.message.startswith("ports[0].mac ")
    assert words in err.value.message


@given(st.integers(1, 5), st.integers(0, 2**32))
def test_random_mac_keeps_the_prefix(octets: int, seed: int) -> None:
    prefix = ":".join(["fa", "16", "3e", "00", "11"][:octets])
    mac = random_mac(prefix, random.Random(seed))
    assert parse_mac(mac) == mac
    assert mac.startswith(prefix + ":")


def test_random_mac_is_reproducible_and_varies() -> None:
    assert random_mac(DEFAULT_MAC_PREFIX, random.Random(7)) == \
        random_mac(DEFAULT_MAC_PREFIX, random.Random(7))
    rng = random.Random(1)
    assert len({random_mac(DEFAULT_MAC_PREFIX, rng) for _ in range(50)}) > 45


def test_random_mac_refuses_a_bad_prefix() -> None:
    with pytest.raises(InvalidInput):
        random_mac("01:00:5e", random.Random(0))


# --- segmentation and rates -------------------------------------------------------------------

def test_segmentation_accepted() -> None:
    assert check_segmentation("vlan", 100) == (Segmentation.VLAN, 100)
    assert check_segmentation("VLAN", 1) == (Segmentation.VLAN, 1)
    assert check_segmentation("vlan", 4094) == (Segmentation.VLAN, 4094)
    assert check_segmentation("flat", None) == (Segmentation.FLAT, None)


@pytest.mark.parametrize(("seg", "seg_id", "field", "words"), [
    ("vxlan", 100, "segmentation", "is not one of vlan, flat"),
    ("vlan", None, "segmentation_id", "needs a segmentation_id"),
    ("vlan", 0, "segmentation_id", "is not a VLAN id"),
    ("vlan", 4095, "segmentation_id", "is not a VLAN id"),
    ("vlan", True, "segmentation_id", "whole number"),
    ("vlan", "100", "segmentation_id", "whole number"),
    ("flat", 100, "segmentation_id", "takes no segmentation_id"),
])
def test_segmentation_refused(seg: str, seg_id: Any, field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_segmentation(seg, seg_id)
    assert err.value.field == field
    assert words in err.value.message


def test_rates() -> None:
    assert check_rate(None, None) == (None, None)
    assert check_rate(1000, 100) == (1000, 100)
    assert check_rate(0, 500) == (0, 500)      # max 0: no maximum, so any minimum
    assert check_rate(100, 100) == (100, 100)


@pytest.mark.parametrize(("most", "least", "field"), [
    (-1, None, "max_tx_rate_mbps"),
    (None, -5, "min_tx_rate_mbps"),
    (1.5, None, "max_tx_rate_mbps"),
    (True, None, "max_tx_rate_mbps"),
    ("10", None, "max_tx_rate_mbps"),
    (2**32, None, "max_tx_rate_mbps"),
    (100, 200, "min_tx_rate_mbps"),
])
def test_rates_refused(most: object, least: object, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_rate(most, least)
    assert err.value.field == field
    assert field in err.value.message


def test_vnic_type_and_policy_and_physnet_parsers() -> None:
    assert parse_vnic_type("Direct-Physical") is VnicType.DIRECT_PHYSICAL
    with pytest.raises(InvalidInput) as err:
        parse_vnic_type("vdpa", field="nics[1].vnic_type")
    assert err.value.field == "nics[1].vnic_type"
    assert "normal, direct, macvtap, direct-physical" in err.value.message
    assert parse_numa_policy(None) is None
    assert parse_numa_policy("") is None
    assert parse_numa_policy("required") is NumaPolicy.REQUIRED
    with pytest.raises(InvalidInput) as err:
        parse_numa_policy("strict")
    assert err.value.field == "numa_affinity_policy"
    assert parse_physnet(" physnet2 ") == "physnet2"
    for bad in ("", "phys net", "x" * 65, 3):
        with pytest.raises(InvalidInput) as err:
            parse_physnet(bad)
        assert err.value.field == "physical_network"


# --- port aliases -----------------------------------------------------------------------------

def test_port_alias_round_trip() -> None:
    assert port_alias("abc") == "port:abc"
    assert port_of("port:abc") == "abc"
    assert port_of("gpu") is None
    assert port_of(None) is None
    assert port_of("port:") is None


@given(st.text(min_size=1))
def test_port_of_inverts_port_alias(port_id: str) -> None:
    assert port_of(port_alias(port_id)) == port_id


# --- a port's request -------------------------------------------------------------------------

def test_normal_needs_no_device() -> None:
    assert request(VnicType.NORMAL) is None
    assert VnicType.NORMAL.dev_type is None


@pytest.mark.parametrize(("vnic", "dev_type", "label"), [
    (VnicType.DIRECT, DevType.VF, "VF on physnet2"),
    (VnicType.MACVTAP, DevType.VF, "VF on physnet2"),
    (VnicType.DIRECT_PHYSICAL, DevType.PF, "PF on physnet2"),
])
def test_request_per_vnic_type(vnic: VnicType, dev_type: DevType, label: str) -> None:
    r = must(request(vnic))
    assert r.alias == "port:p-1"
    assert r.port == "p-1"
    assert r.port_name == "web"
    assert r.count == 1
    assert not r.soft
    assert r.dev_type is dev_type
    assert r.label == label
    assert r.numa_policy is NumaPolicy.LEGACY
    assert r.matches(dev(dev_type))
    other = DevType.PF if dev_type is DevType.VF else DevType.VF
    assert not r.matches(dev(other))
    assert not r.matches(dev(DevType.PCI))
    assert not r.matches(dev(dev_type, physnet="physnet1"))
    assert not r.matches(dev(dev_type, physnet=None))


def test_physnet_compares_as_the_device_spec_does() -> None:
    r = must(request(physnet="PhysNet2"))
    assert r.matches(dev(DevType.VF, physnet="physnet2"))
    assert r.matches(dev(DevType.VF, physnet="PHYSNET2"))
    assert r.label == "VF on PhysNet2"


def test_trusted_port_needs_a_trusted_vf() -> None:
    r = must(request(trusted=True))
    assert r.matches(dev(DevType.VF, trusted="true"))
    assert r.matches(dev(DevType.VF, trusted="yes"))
    assert not r.matches(dev(DevType.VF))
    assert not r.matches(dev(DevType.VF, trusted="false"))
    assert not r.matches(dev(DevType.VF, physnet="physnet1", trusted="true"))
    # An untrusted port takes either.
    plain = must(request(trusted=False))
    assert plain.matches(dev(DevType.VF, trusted="true"))
    assert plain.matches(dev(DevType.VF))


def test_remote_managed_vfs_are_not_for_ports() -> None:
    assert not must(request()).matches(dev(DevType.VF, remote_managed="true"))


@pytest.mark.parametrize(("port", "flavor", "want"), [
    (None, None, NumaPolicy.LEGACY),
    (None, NumaPolicy.PREFERRED, NumaPolicy.PREFERRED),
    (NumaPolicy.REQUIRED, None, NumaPolicy.REQUIRED),
    (NumaPolicy.REQUIRED, NumaPolicy.PREFERRED, NumaPolicy.REQUIRED),
    (NumaPolicy.PREFERRED, NumaPolicy.REQUIRED, NumaPolicy.PREFERRED),
    (NumaPolicy.SOCKET, NumaPolicy.LEGACY, NumaPolicy.SOCKET),
])
def test_numa_policy_precedence(port: NumaPolicy | None, flavor: NumaPolicy | None,
                                want: NumaPolicy) -> None:
    r = must(request(numa=port, flavor=flavor))
    assert r.numa_policy is want
    assert all(e.numa_policy is want for e in r.alternatives)


def test_request_wording() -> None:
    r = must(request())
    assert str(r) == "port 'web' (VF on physnet2)"
    assert r.shortage() == "a free VF on physnet2 for port 'web'"
    assert str(must(request(VnicType.DIRECT_PHYSICAL))) == "port 'web' (PF on physnet2)"
    unnamed = must(request(name=None))
    assert str(unnamed) == "port 'p-1' (VF on physnet2)"
    assert unnamed.shortage() == "a free VF on physnet2 for port 'p-1'"
    assert str(must(request(name=""))) == "port 'p-1' (VF on physnet2)"


def test_alias_wording_is_unchanged() -> None:
    one = PciRequest(alias="gpu", count=1, alternatives=())
    two = PciRequest(alias="gpu", count=2, alternatives=())
    assert str(two) == "2 x gpu"
    assert one.shortage() == "1 free 'gpu' device"
    assert two.shortage() == "2 free 'gpu' devices"


def test_boot_request_describes_ports_and_refuses_one_twice() -> None:
    r = must(request())
    gpu = PciRequest(alias="gpu", count=2, alternatives=())
    assert BootRequest(2, 2048, pci=(gpu, r)).describe() == \
        "2 x gpu, port 'web' (VF on physnet2)"
    with pytest.raises(InvalidInput) as err:
        BootRequest(2, 2048, pci=(r, r))
    assert err.value.field == "pci"
    assert "port 'web' is asked for twice" in err.value.message


def test_the_module_does_no_io() -> None:
    # The port vocabulary is pure: it imports nothing that touches a host or a database.
    banned = {"os", "socket", "subprocess", "sqlalchemy", "pathlib", "logging"}
    assert not banned & set(vars(net_port))
