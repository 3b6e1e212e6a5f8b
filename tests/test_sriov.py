"""VF programming without a kernel: the values, program/restore/rollback against the recording
fake, and the netlink backend's message building and parsing through pyroute2's own codec."""

from __future__ import annotations

import errno
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from pcipass.errors import InvalidInput, VfProgrammingError
from pcipass.host.sriov import (
    FRESH_VF,
    ZERO_MAC,
    RecordingVfProgrammer,
    VfAttribute,
    VfCall,
    VfConfig,
    VfSlot,
    changed_attributes,
    effective,
)
from pcipass.host.sriov.netlink import ETH_P_8021AD, ETH_P_8021Q, parse_vf, vf_spec
from pcipass.host.sriov.programmer import kernel_reason

MAC = "fa:16:3e:12:34:56"
SLOT = VfSlot("ens1f0", 3)
PORT = VfConfig(mac=MAC, vlan=100, qos=3, spoofchk=False, trust=True, link_state="enable",
                min_tx_rate_mbps=100, max_tx_rate_mbps=1000)


@pytest.fixture
def fake() -> RecordingVfProgrammer:
    return RecordingVfProgrammer({"ens1f0": 8, "ens1f1": 4})


# -- values ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {},
    {"mac": MAC},
    {"mac": ZERO_MAC},
    {"vlan": 0},
    {"vlan": 4094, "qos": 7},
    {"vlan": 1, "vlan_proto": "802.1ad"},
    {"spoofchk": False, "trust": True},
    {"link_state": "disable"},
    {"min_tx_rate_mbps": 0, "max_tx_rate_mbps": 0},
    {"min_tx_rate_mbps": 500, "max_tx_rate_mbps": 0},  # max 0: no limit
    {"min_tx_rate_mbps": 500, "max_tx_rate_mbps": 500},
    {"max_tx_rate_mbps": 0xFFFFFFFF},
])
def test_valid_configs(kwargs: dict[str, Any]) -> None:
    config = VfConfig(**kwargs)
    for key, value in kwargs.items():
        if key != "vlan":
            assert getattr(config, key) == value


@pytest.mark.parametrize(("kwargs", "field", "words"), [
    ({"mac": "fa:16:3e:12:34"}, "mac", "six hex octets"),
    ({"mac": "fa:16:3e:12:34:zz"}, "mac", "six hex octets"),
    ({"mac": 42}, "mac", "six hex octets"),
    ({"mac": "01:00:5e:00:00:01"}, "mac", "multicast"),
    ({"mac": "ff:ff:ff:ff:ff:ff"}, "mac", "multicast"),
    ({"vlan": 4095}, "vlan", "0 to 4094"),
    ({"vlan": -1}, "vlan", "0 to 4094"),
    ({"vlan": True}, "vlan", "0 to 4094"),
    ({"vlan": "100"}, "vlan", "0 to 4094"),
    ({"vlan": 10, "qos": 8}, "qos", "0 to 7"),
    ({"vlan": 10, "qos": -1}, "qos", "0 to 7"),
    ({"qos": 2}, "qos", "needs a VLAN"),
    ({"vlan": 0, "qos": 2}, "qos", "needs a VLAN"),
    ({"vlan": 10, "vlan_proto": "802.1x"}, "vlan_proto", "802.1Q, 802.1ad"),
    ({"vlan_proto": "802.1ad"}, "vlan_proto", "needs a VLAN"),
    ({"spoofchk": 1}, "spoofchk", "true, false"),
    ({"trust": "yes"}, "trust", "true, false"),
    ({"link_state": "up"}, "link_state", "auto, enable, disable"),
    ({"min_tx_rate_mbps": -1}, "min_tx_rate_mbps", ">= 0"),
    ({"max_tx_rate_mbps": 1.5}, "max_tx_rate_mbps", ">= 0"),
    ({"max_tx_rate_mbps": 0x100000000}, "max_tx_rate_mbps", ">= 0"),
    ({"min_tx_rate_mbps": 600, "max_tx_rate_mbps": 500}, "min_tx_rate_mbps", "above"),
])
def test_invalid_configs_name_the_field(kwargs: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        VfConfig(**kwargs)
    assert caught.value.field == field
    assert words in caught.value.message


def test_config_normalises_mac_and_untagged_vlan() -> None:
    assert VfConfig(mac="FA-16-3E-12-34-56").mac == MAC
    assert VfConfig(vlan=0) == VfConfig(vlan=None) == VfConfig()
    assert VfConfig(vlan=0).vlan is None


@pytest.mark.parametrize(("pf", "index", "field"), [
    ("", 0, "pf_netdev"), ("a" * 16, 0, "pf_netdev"), ("eth/0", 0, "pf_netdev"),
    ("eth 0", 0, "pf_netdev"), ("..", 0, "pf_netdev"), ("eth0", -1, "vf_index"),
    ("eth0", True, "vf_index"), ("eth0", "1", "vf_index"),
])
def test_invalid_slots(pf: str, index: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        VfSlot(pf, index)
    assert caught.value.field == field


def test_slot_reads_as_words() -> None:
    assert str(SLOT) == "VF 3 on PF ens1f0"


# -- what changes -----------------------------------------------------------------------------

@pytest.mark.parametrize(("target", "changed"), [
    (VfConfig(), ()),
    (VfConfig(mac=ZERO_MAC, spoofchk=True, link_state="auto"), ()),
    (VfConfig(mac=MAC), (VfAttribute.MAC,)),
    (VfConfig(vlan=5), (VfAttribute.VLAN,)),
    (PORT, tuple(VfAttribute)),
    (VfConfig(max_tx_rate_mbps=0), ()),
    (VfConfig(max_tx_rate_mbps=10), (VfAttribute.RATE,)),
])
def test_changed_attributes_lists_only_what_differs(
        target: VfConfig, changed: tuple[VfAttribute, ...]) -> None:
    assert changed_attributes(FRESH_VF, target) == changed


def test_untagged_target_clears_a_left_behind_vlan() -> None:
    tagged = replace(FRESH_VF, vlan=7, qos=1)
    assert changed_attributes(tagged, VfConfig(mac=MAC)) == (VfAttribute.MAC, VfAttribute.VLAN)
    after = effective(tagged, VfConfig(mac=MAC))
    assert (after.vlan, after.qos) == (None, 0)


def test_rates_merge_unless_inconsistent() -> None:
    limited = replace(FRESH_VF, min_tx_rate_mbps=100, max_tx_rate_mbps=1000)
    assert effective(limited, VfConfig(max_tx_rate_mbps=2000)).min_tx_rate_mbps == 100
    # a new min above the old max: the target's pair whole, its unset max meaning no limit
    after = effective(limited, VfConfig(min_tx_rate_mbps=5000))
    assert (after.min_tx_rate_mbps, after.max_tx_rate_mbps) == (5000, 0)


# -- program / restore against the fake -------------------------------------------------------

def test_program_then_restore_puts_back_exactly_what_was_there(
        fake: RecordingVfProgrammer) -> None:
    before = replace(FRESH_VF, mac="02:00:00:00:00:03", vlan=9, qos=1, max_tx_rate_mbps=50)
    fake.add_pf("ens1f0", 8, initial=before)
    previous = fake.program(SLOT, PORT)
    assert previous == before
    assert fake.state(SLOT) == PORT
    assert [c.attribute for c in fake.ops("write")] == list(VfAttribute)
    fake.restore(SLOT, previous)
    assert fake.state(SLOT) == before
    assert [c.attribute for c in fake.ops("write")] == list(VfAttribute) * 2
    assert fake.table("ens1f1") == (FRESH_VF,) * 4
    assert [c.op for c in fake.calls] == (
        ["program", "read", *["write"] * 6, "restore", "read", *["write"] * 6])


def test_restore_leaves_what_the_driver_never_reported(fake: RecordingVfProgrammer) -> None:
    fake.add_pf("ens1f0", 8, initial=replace(FRESH_VF, trust=None))
    previous = fake.program(SLOT, VfConfig(mac=MAC, trust=True))
    fake.restore(SLOT, previous)
    assert fake.state(SLOT) == replace(FRESH_VF, trust=True)
    assert [c.attribute for c in fake.ops("write")] == [
        VfAttribute.MAC, VfAttribute.TRUST, VfAttribute.MAC]


def test_program_writes_nothing_when_nothing_changes(fake: RecordingVfProgrammer) -> None:
    fake.program(SLOT, PORT)
    fake.calls.clear()
    assert fake.program(SLOT, PORT) == PORT
    assert fake.calls == [VfCall("program", SLOT, config=PORT), VfCall("read", SLOT)]


def test_calls_are_recorded_in_order(fake: RecordingVfProgrammer) -> None:
    config = VfConfig(mac=MAC, vlan=100)
    fake.program(SLOT, config)
    target = effective(FRESH_VF, config)
    assert fake.calls == [
        VfCall("program", SLOT, config=config),
        VfCall("read", SLOT),
        VfCall("write", SLOT, VfAttribute.MAC, target),
        VfCall("write", SLOT, VfAttribute.VLAN, target),
    ]


def test_refused_attribute_rolls_back_what_was_set(fake: RecordingVfProgrammer) -> None:
    fake.fail(VfAttribute.TRUST, pf="ens1f0")
    with pytest.raises(VfProgrammingError) as caught:
        fake.program(SLOT, VfConfig(mac=MAC, vlan=100, trust=True))
    err = caught.value
    assert (err.code, err.pf, err.vf_index, err.attribute, err.errno) == (
        "vf_programming_failed", "ens1f0", 3, "trust", errno.EOPNOTSUPP)
    assert err.message == (
        "cannot set trust of VF 3 on PF ens1f0: the PF driver does not support setting a VF's "
        "trust mode (EOPNOTSUPP); rolled back vlan, mac")
    assert fake.state(SLOT) == FRESH_VF
    assert [c.attribute for c in fake.ops("write")] == [
        VfAttribute.MAC, VfAttribute.VLAN, VfAttribute.TRUST, VfAttribute.VLAN, VfAttribute.MAC]


def test_first_refusal_has_nothing_to_roll_back(fake: RecordingVfProgrammer) -> None:
    fake.fail(VfAttribute.MAC, errno=errno.EINVAL)
    with pytest.raises(VfProgrammingError) as caught:
        fake.program(SLOT, VfConfig(mac=MAC, vlan=100))
    assert "rolled back" not in caught.value.message
    assert "PF ens1f0" in caught.value.message and "EINVAL" in caught.value.message
    assert len(fake.ops("write")) == 1


def test_failed_rollback_is_reported(fake: RecordingVfProgrammer) -> None:
    fake.fail(VfAttribute.VLAN)
    fake.fail(VfAttribute.MAC, skip=1, errno=errno.EBUSY)  # the set works, its undo does not
    with pytest.raises(VfProgrammingError) as caught:
        fake.program(SLOT, VfConfig(mac=MAC, vlan=100))
    assert caught.value.attribute == "vlan"
    assert "could not roll back mac (cannot set mac of VF 3 on PF ens1f0: the PF is busy " \
           "(EBUSY))" in caught.value.message
    assert fake.state(SLOT).mac == MAC


def test_rollback_cannot_restore_an_unreported_value(fake: RecordingVfProgrammer) -> None:
    fake.add_pf("ens1f0", 8, initial=replace(FRESH_VF, spoofchk=None))
    fake.fail(VfAttribute.TRUST)
    with pytest.raises(VfProgrammingError) as caught:
        fake.program(SLOT, VfConfig(spoofchk=False, trust=True))
    assert "could not roll back spoofchk (the driver did not report its previous value)" \
        in caught.value.message


def test_failures_are_scoped_to_their_pf_and_vf(fake: RecordingVfProgrammer) -> None:
    fake.fail(VfAttribute.MAC, pf="ens1f1")
    fake.fail(None, pf="ens1f0", vf_index=0)
    fake.program(SLOT, VfConfig(mac=MAC))
    for slot in (VfSlot("ens1f1", 3), VfSlot("ens1f0", 0)):
        with pytest.raises(VfProgrammingError) as caught:
            fake.program(slot, VfConfig(mac=MAC))
        assert caught.value.pf == slot.pf_netdev
        assert f"PF {slot.pf_netdev}" in caught.value.message
    fake.clear_failures()
    fake.program(VfSlot("ens1f1", 3), VfConfig(mac=MAC))
    assert fake.state(VfSlot("ens1f1", 3)).mac == MAC


def test_failure_times_runs_out(fake: RecordingVfProgrammer) -> None:
    fake.fail("read", times=1, errno=errno.EPERM)
    with pytest.raises(VfProgrammingError) as caught:
        fake.read(SLOT)
    assert caught.value.message == ("cannot read VF 3 on PF ens1f0: permission denied "
                                    "(programming a VF needs CAP_NET_ADMIN) (EPERM)")
    assert caught.value.attribute is None
    assert fake.read(SLOT) == FRESH_VF


def test_restore_tries_every_attribute_and_names_all_failures(
        fake: RecordingVfProgrammer) -> None:
    previous = fake.program(SLOT, PORT)
    fake.fail(VfAttribute.MAC)
    fake.fail(VfAttribute.RATE, errno=errno.ERANGE)
    with pytest.raises(VfProgrammingError) as caught:
        fake.restore(SLOT, previous)
    err = caught.value
    assert err.attribute == "mac"
    assert err.message.startswith("restoring VF 3 on PF ens1f0 failed: cannot set mac of VF 3")
    assert "cannot set rate of VF 3 on PF ens1f0: the value is out of the range" in err.message
    state = fake.state(SLOT)
    assert (state.mac, state.vlan, state.trust, state.link_state) == (MAC, None, False, "auto")


def test_unknown_pf_and_vf_index(fake: RecordingVfProgrammer) -> None:
    with pytest.raises(VfProgrammingError) as caught:
        fake.program(VfSlot("ens9", 0), PORT)
    assert caught.value.message == "PF ens9 not found: no network interface by that name"
    with pytest.raises(VfProgrammingError) as caught:
        fake.read(VfSlot("ens1f1", 4))
    assert caught.value.message == "PF ens1f1 has no VF 4: it has 4 VFs (indexes 0-3)"
    fake.add_pf("eno1", 0)
    with pytest.raises(VfProgrammingError) as caught:
        fake.restore(VfSlot("eno1", 0), FRESH_VF)
    assert "PF eno1 has no VF 0: it has no VFs" in caught.value.message
    assert caught.value.to_dict()["code"] == "vf_programming_failed"
    assert caught.value.status == 503


_macs = st.builds(lambda b: "02:" + ":".join(f"{x:02x}" for x in b),
                  st.lists(st.integers(0, 255), min_size=5, max_size=5))
_rates = st.one_of(st.none(), st.integers(0, 20000))


@st.composite
def _configs(draw: st.DrawFn, complete: bool) -> VfConfig:
    vlan = draw(st.integers(0, 4094))
    low, high = draw(_rates), draw(_rates)
    if complete:
        low, high = low or 0, high or 0
    if low is not None and high and low > high:
        low, high = high, low
    pick = st.sampled_from if complete else (lambda xs: st.sampled_from([None, *xs]))
    return VfConfig(
        mac=draw(_macs if complete else st.none() | _macs),
        vlan=vlan,
        qos=draw(st.integers(0, 7)) if vlan else 0,
        vlan_proto=draw(st.sampled_from(["802.1Q", "802.1ad"])) if vlan else "802.1Q",
        spoofchk=draw(pick([True, False])),
        trust=draw(pick([True, False])),
        link_state=draw(pick(["auto", "enable", "disable"])),
        min_tx_rate_mbps=low, max_tx_rate_mbps=high)


@settings(max_examples=150, deadline=None)
@given(before=_configs(complete=True), port=_configs(complete=False),
       refused=st.none() | st.sampled_from(list(VfAttribute)))
def test_property_program_restore_round_trip(before: VfConfig, port: VfConfig,
                                             refused: VfAttribute | None) -> None:
    fake = RecordingVfProgrammer()
    fake.add_pf("ens1f0", 4, initial=before)
    if refused is not None:
        fake.fail(refused)
    try:
        assert fake.program(SLOT, port) == before
    except VfProgrammingError as exc:
        assert exc.attribute == refused
        assert fake.state(SLOT) == before  # rolled back whole
        return
    assert fake.state(SLOT) == effective(before, port)
    assert refused is None or refused not in changed_attributes(before, port)
    fake.clear_failures()
    fake.restore(SLOT, before)
    assert fake.state(SLOT) == before


# -- netlink messages, without a kernel --------------------------------------------------------

@pytest.mark.parametrize(("attribute", "config", "spec"), [
    (VfAttribute.MAC, VfConfig(mac=MAC), {"mac": MAC}),
    (VfAttribute.VLAN, VfConfig(vlan=100, qos=3), {"vlan": {"vlan": 100, "qos": 3}}),
    (VfAttribute.VLAN, VfConfig(), {"vlan": {"vlan": 0, "qos": 0}}),
    (VfAttribute.VLAN, VfConfig(vlan=100, vlan_proto="802.1ad"),
     {"vlan": [{"vlan": 100, "qos": 0, "proto": ETH_P_8021AD}]}),
    (VfAttribute.SPOOFCHK, VfConfig(spoofchk=False), {"spoofchk": 0}),
    (VfAttribute.TRUST, VfConfig(trust=True), {"trust": 1}),
    (VfAttribute.LINK_STATE, VfConfig(link_state="disable"), {"link_state": 2}),
    (VfAttribute.RATE, VfConfig(max_tx_rate_mbps=1000),
     {"rate": {"min_tx_rate": 0, "max_tx_rate": 1000}}),
])
def test_vf_spec(attribute: VfAttribute, config: VfConfig, spec: dict[str, Any]) -> None:
    assert vf_spec(3, attribute, config) == {"vf": 3, **spec}


def _encode_decode(attrs: list[Any]) -> Any:
    msg = ifinfmsg()
    msg["index"] = 5
    msg["attrs"] = attrs
    msg.encode()
    decoded = ifinfmsg(bytes(msg.data[:msg["header"]["length"]]))
    decoded.decode()
    return decoded


def test_802_1ad_vlan_info_is_as_long_as_the_kernel_struct() -> None:
    msg = _encode_decode([("IFLA_VFINFO_LIST", {"attrs": [("IFLA_VF_INFO", {"attrs": [
        ("IFLA_VF_VLAN_LIST", {"attrs": [("IFLA_VF_VLAN_INFO", {
            "vf": 0, "vlan": 100, "qos": 2, "proto": ETH_P_8021AD})]})]})]})])
    info = (msg.get_attr("IFLA_VFINFO_LIST").get_attr("IFLA_VF_INFO")
            .get_attr("IFLA_VF_VLAN_LIST").get_attrs("IFLA_VF_VLAN_INFO")[0])
    assert info.length - 4 == 16  # sizeof(struct ifla_vf_vlan_info); shorter is EINVAL
    assert (info["vlan"], info["qos"], info["proto"]) == (100, 2, ETH_P_8021AD)


def _vf_info(index: int, mac: str, *, vlan: int = 0, qos: int = 0, proto: int = ETH_P_8021Q,
             spoofchk: int = 1, trust: int = 0, link_state: int = 0, rate: tuple[int, int] =
             (0, 0), vlan_list: bool = True) -> tuple[str, dict[str, Any]]:
    """One IFLA_VF_INFO as the kernel's rtnl_fill_vfinfo writes it."""
    attrs: list[Any] = [
        ("IFLA_VF_MAC", {"vf": index, "mac": mac}),
        ("IFLA_VF_VLAN", {"vf": index, "vlan": vlan, "qos": qos}),
        ("IFLA_VF_TX_RATE", {"vf": index, "tx_rate": rate[1]}),
        ("IFLA_VF_RATE", {"vf": index, "min_tx_rate": rate[0], "max_tx_rate": rate[1]}),
        ("IFLA_VF_SPOOFCHK", {"vf": index, "spoofchk": spoofchk}),
        ("IFLA_VF_LINK_STATE", {"vf": index, "link_state": link_state}),
        ("IFLA_VF_TRUST", {"vf": index, "trust": trust}),
    ]
    if vlan_list:
        attrs.append(("IFLA_VF_VLAN_LIST", {"attrs": [("IFLA_VF_VLAN_INFO", {
            "vf": index, "vlan": vlan, "qos": qos, "proto": proto})]}))
    return ("IFLA_VF_INFO", {"attrs": attrs})


def _link(*vfs: tuple[str, dict[str, Any]], num_vfs: int | None = None) -> Any:
    attrs: list[Any] = [("IFLA_IFNAME", "ens1f0")]
    if num_vfs is not None:
        attrs.append(("IFLA_NUM_VF", num_vfs))
    if vfs:
        attrs.append(("IFLA_VFINFO_LIST", {"attrs": list(vfs)}))
    return _encode_decode(attrs)


def test_parse_vf_reads_every_attribute() -> None:
    link = _link(_vf_info(0, ZERO_MAC),
                 _vf_info(3, MAC, vlan=100, qos=3, proto=ETH_P_8021AD, spoofchk=0, trust=1,
                          link_state=2, rate=(10, 1000)), num_vfs=4)
    assert parse_vf(SLOT, link) == VfConfig(
        mac=MAC, vlan=100, qos=3, vlan_proto="802.1ad", spoofchk=False, trust=True,
        link_state="disable", min_tx_rate_mbps=10, max_tx_rate_mbps=1000)
    assert parse_vf(VfSlot("ens1f0", 0), link) == FRESH_VF


def test_parse_vf_unreported_flags_and_old_kernels() -> None:
    link = _link(_vf_info(3, MAC, vlan=7, qos=1, spoofchk=0xFFFFFFFF, trust=0xFFFFFFFF,
                          vlan_list=False))
    config = parse_vf(SLOT, link)
    assert (config.spoofchk, config.trust) == (None, None)
    assert (config.vlan, config.qos, config.vlan_proto) == (7, 1, "802.1Q")


@pytest.mark.parametrize(("link", "words"), [
    (_link(), "PF ens1f0 has no VF 3: it has no VFs"),
    (_link(num_vfs=0), "PF ens1f0 has no VF 3: it has no VFs"),
    (_link(_vf_info(0, ZERO_MAC), num_vfs=1), "PF ens1f0 has no VF 3: it has 1 VF (indexes 0-0)"),
])
def test_parse_vf_missing_vf(link: Any, words: str) -> None:
    with pytest.raises(VfProgrammingError) as caught:
        parse_vf(SLOT, link)
    assert caught.value.message.startswith(words)
    assert (caught.value.pf, caught.value.vf_index) == ("ens1f0", 3)


def test_parse_vf_odd_kernel_value_is_an_infrastructure_error() -> None:
    with pytest.raises(VfProgrammingError) as caught:
        parse_vf(SLOT, _link(_vf_info(3, "01:00:5e:00:00:01")))
    assert "the kernel reported a value pcipass does not understand" in caught.value.message


@pytest.mark.parametrize("code", [errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.EINVAL,
                                  errno.ERANGE, errno.EPERM, errno.EACCES, errno.ENODEV,
                                  errno.EBUSY])
def test_kernel_reasons_are_worded(code: int) -> None:
    import os
    assert kernel_reason(code, VfAttribute.VLAN) != os.strerror(code).lower()
