"""device_spec: Nova's format, Nova's matching, our refusals.

The matching table mirrors nova/pci/devspec.py and nova/tests/unit/pci/test_devspec.py
(glob padding, regex anchoring, PF addresses and devnames that also select VFs).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pcipass.errors import InvalidDeviceSpec
from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, NetDev, PciDevice
from pcipass.pci.devspec import (
    AddressGlob,
    AddressRegex,
    DeviceSpec,
    DeviceSpecSet,
    HostView,
    load_device_specs,
    parse_device_spec,
    parse_device_spec_json,
    spec_to_json,
    split_spec_lines,
)
from strategies import addresses, devices, hex_spellings, hosts

# --- builders ----------------------------------------------------------------------------


def dev(addr: str, vendor: str = "8086", product: str = "1572", *,
        dev_type: DevType = DevType.PCI, parent: str | None = None,
        netdev: str | None = None, total_vfs: int | None = None) -> PciDevice:
    return PciDevice(
        address=PciAddress.parse(addr),
        vendor_id=vendor,
        product_id=product,
        class_code="020000",
        dev_type=dev_type,
        parent_addr=PciAddress.parse(parent) if parent else None,
        total_vfs=total_vfs if total_vfs is not None else (8 if dev_type is DevType.PF else None),
        netdevs=(NetDev(netdev),) if netdev else (),
    )


def pf(addr: str, product: str = "1572", **kw: Any) -> PciDevice:
    return dev(addr, product=product, dev_type=DevType.PF, **kw)


def vf(addr: str, parent: str, product: str = "154c", **kw: Any) -> PciDevice:
    return dev(addr, product=product, dev_type=DevType.VF, parent=parent, **kw)


# One host with a bit of everything. Names are the addresses in the table below.
HOST = [
    pf("0000:0a:00.0", netdev="ens1f0"),
    vf("0000:0a:02.0", "0000:0a:00.0", netdev="ens1f0v0"),
    vf("0000:0a:02.1", "0000:0a:00.0"),
    pf("0000:0a:00.1", netdev="ens1f1"),
    vf("0000:0a:0a.0", "0000:0a:00.1"),
    dev("0000:3b:00.0", "10de", "1db4"),  # GPU
    dev("0000:3b:00.1", "10de", "10f0"),  # its audio function
    dev("0000:5e:00.0", "15b3", "1017", netdev="eno1"),  # NIC without SR-IOV
    dev("10000:01:00.0", "144d", "a80a"),  # NVMe behind Intel VMD
]
ALL = {str(d.address) for d in HOST}
PF0_FAMILY = {"0000:0a:00.0", "0000:0a:02.0", "0000:0a:02.1"}
BUS_0A = {a for a in ALL if a.startswith("0000:0a:")}


def selected(specs: list[object]) -> set[str]:
    applied = load_device_specs([json.dumps(s) for s in specs]).apply(HOST)
    return {str(d.address) for d in applied if d.assignable}


@dataclass(frozen=True)
class Case:
    name: str
    spec: dict[str, Any]
    expect: set[str] = field(default_factory=set)
    why: str = ""


MATCH_CASES = [
    Case("empty spec selects every device", {}, ALL,
         "Nova defaults a missing address to *:*:*.*"),
    Case("vendor only", {"vendor_id": "8086"}, BUS_0A),
    Case("vendor with 0x prefix", {"vendor_id": "0x8086"}, BUS_0A,
         "ids are read with int(x, 16) and printed %04x"),
    Case("vendor in upper case", {"vendor_id": "10DE"}, {"0000:3b:00.0", "0000:3b:00.1"}),
    Case("vendor with leading zero and blanks", {"vendor_id": " 08086 "}, BUS_0A),
    Case("vendor and product", {"vendor_id": "10de", "product_id": "1db4"}, {"0000:3b:00.0"}),
    Case("wildcard vendor, VF product", {"vendor_id": "*", "product_id": "154c"},
         {"0000:0a:02.0", "0000:0a:02.1", "0000:0a:0a.0"}),
    Case("exact glob of a plain device", {"address": "0000:3b:00.0"}, {"0000:3b:00.0"}),
    Case("glob with wildcard domain and function", {"address": "*:3b:00.*"},
         {"0000:3b:00.0", "0000:3b:00.1"}),
    Case("glob with blank domain and function", {"address": ":3b:00."},
         {"0000:3b:00.0", "0000:3b:00.1"}, "blank parts are wildcards"),
    Case("two parts are bus and slot", {"address": "3b:00"}, {"0000:3b:00.0", "0000:3b:00.1"},
         "missing leading parts are padded with *"),
    Case("one part is the slot", {"address": "00"},
         {"0000:0a:00.0", "0000:0a:00.1", "0000:3b:00.0", "0000:3b:00.1", "0000:5e:00.0",
          "10000:01:00.0"}),
    Case("function only", {"address": ".1"}, {"0000:0a:00.1", "0000:0a:02.1", "0000:3b:00.1"}),
    Case("blanks around parts", {"address": "*: *: *.1"},
         {"0000:0a:00.1", "0000:0a:02.1", "0000:3b:00.1"}),
    Case("glob in upper case", {"address": "0000:3B:00.1"}, {"0000:3b:00.1"},
         "glob parts are compared as numbers"),
    Case("glob with short parts", {"address": "0:3b:0.1"}, {"0000:3b:00.1"}),
    Case("glob with 0x parts", {"address": "0x0:0x3b:0x0.0x1"}, {"0000:3b:00.1"}),
    Case("exact PF address also selects its VFs", {"address": "0000:0a:00.0"}, PF0_FAMILY),
    Case("PF address spelled short still names the PF", {"address": "0:A:0.0"}, PF0_FAMILY),
    Case("PF address with the VF product selects only VFs",
         {"address": "0000:0a:00.0", "product_id": "154c"}, {"0000:0a:02.0", "0000:0a:02.1"}),
    Case("wildcard function is not an exact PF address", {"address": "0000:0a:00.*"},
         {"0000:0a:00.0", "0000:0a:00.1"}),
    Case("bus glob", {"address": "*:0a:*.*"}, BUS_0A),
    Case("regex range", {"address": {"bus": "0a", "slot": "0[0-2]"}},
         {"0000:0a:00.0", "0000:0a:00.1", "0000:0a:02.0", "0000:0a:02.1"}),
    Case("regex is anchored at the start only", {"address": {"bus": "0"}},
         BUS_0A | {"10000:01:00.0"}, "re.match: bus '0' also matches 0a and 01"),
    Case("regex with an end anchor", {"address": {"bus": "0$"}}, set()),
    Case("regex is case sensitive on lower-case fields", {"address": {"bus": "0A"}}, set()),
    Case("regex function class", {"address": {"domain": ".*", "bus": ".*", "slot": "00",
                                              "function": "[1-2]"}},
         {"0000:0a:00.1", "0000:3b:00.1"}),
    Case("regex domain of a VMD device", {"address": {"domain": "1"}}, {"10000:01:00.0"}),
    Case("regex of a PF's canonical address selects its VFs",
         {"address": {"domain": "0000", "bus": "0a", "slot": "00", "function": "0"}},
         PF0_FAMILY, "the four hex strings name the PF in sysfs"),
    Case("regex of a PF in a non-canonical spelling does not",
         {"address": {"domain": "0", "bus": "0a", "slot": "00", "function": "0"}},
         {"0000:0a:00.0"}, "sysfs has no 0:0a:00.0; the regex still prefix-matches the PF"),
    Case("regex with three keys is never a PF address",
         {"address": {"domain": "0000", "bus": "0a", "slot": "00"}},
         {"0000:0a:00.0", "0000:0a:00.1"}),
    Case("devname of a PF selects it and its VFs", {"devname": "ens1f0"}, PF0_FAMILY),
    Case("devname of a PF with the VF product", {"devname": "ens1f0", "product_id": "154c"},
         {"0000:0a:02.0", "0000:0a:02.1"}),
    Case("devname of a VF selects only that VF", {"devname": "ens1f0v0"}, {"0000:0a:02.0"}),
    Case("devname of a plain NIC", {"devname": "eno1"}, {"0000:5e:00.0"}),
    Case("devname no device holds selects nothing", {"devname": "eth9"}, set()),
    Case("blank devname is no devname", {"devname": ""}, ALL),
    Case("null devname is no devname", {"devname": None, "vendor_id": "15b3"},
         {"0000:5e:00.0"}),
    Case("blank address is any address", {"address": ""}, ALL),
    Case("empty regex dict is any address", {"address": {}}, ALL),
    Case("null address is any address", {"address": None, "vendor_id": "144d"},
         {"10000:01:00.0"}),
    Case("blank address with a devname", {"address": "", "devname": "eno1"}, {"0000:5e:00.0"}),
    Case("VMD domain glob", {"address": "10000:01:00.0"}, {"10000:01:00.0"}),
    Case("VMD domain wildcard rest", {"address": "10000:*:*.*"}, {"10000:01:00.0"}),
    Case("ids and address together", {"vendor_id": "10de", "address": "*:3b:00.1"},
         {"0000:3b:00.1"}),
    Case("wrong vendor for the address", {"vendor_id": "8087", "address": "*:*:*.1"}, set()),
]


@pytest.mark.parametrize("case", MATCH_CASES, ids=lambda c: c.name)
def test_matching_is_novas(case: Case) -> None:
    assert selected([case.spec]) == case.expect, case.why


def test_several_specs_select_the_union() -> None:
    assert selected([{"devname": "eno1"}, {"address": "*:3b:00.0"}]) == {
        "0000:5e:00.0", "0000:3b:00.0"}


def test_first_matching_spec_gives_the_tags() -> None:
    specs = load_device_specs([
        '{"address": "0000:0a:00.0", "physical_network": "physnet1", "trusted": "true"}',
        '[{"vendor_id": "8086", "physical_network": "physnet2"}, {"address": ".1"}]',
    ])
    by_addr = {str(d.address): d for d in specs.apply(HOST)}
    for addr in PF0_FAMILY:
        assert by_addr[addr].tags == {"physical_network": "physnet1", "trusted": "true"}
    for addr in ("0000:0a:00.1", "0000:0a:0a.0"):
        assert by_addr[addr].tags == {"physical_network": "physnet2"}
    assert by_addr["0000:3b:00.1"].assignable and by_addr["0000:3b:00.1"].tags == {}
    assert not by_addr["0000:3b:00.0"].assignable and by_addr["0000:3b:00.0"].tags == {}
    assert specs.match(HOST[0], HostView.of(HOST)) is specs.specs[0]
    assert specs.match(HOST[5], HostView.of(HOST)) is None


def test_apply_copies_and_clears_stale_verdicts() -> None:
    stale = [*HOST[:5], replace(HOST[5], assignable=True, tags={"x": "y"})]
    before = copy.deepcopy(stale)
    out = load_device_specs(['{"vendor_id": "8086", "a": "b"}']).apply(stale)
    assert stale == before  # inputs untouched
    assert [d.address for d in out] == [d.address for d in stale]
    assert all(d.assignable and d.tags == {"a": "b"} for d in out[:5])
    assert not out[5].assignable and out[5].tags == {}
    out[0].tags["a"] = "changed"
    assert out[1].tags == {"a": "b"}  # every device holds its own copy


def test_no_specs_select_nothing() -> None:
    marked = [replace(d, assignable=True, tags={"x": "y"}) for d in HOST]
    assert load_device_specs([]).apply(marked) == tuple(
        replace(d, assignable=False, tags={}) for d in HOST)
    assert parse_device_spec([]) == ()


def test_matches_without_a_host_view_knows_only_the_device() -> None:
    spec = parse_device_spec({"address": "0000:0a:00.0"})[0]
    assert spec.matches(HOST[1])  # a VF's parent is a PF, whatever else is known
    by_name = parse_device_spec({"devname": "ens1f0"})[0]
    assert by_name.matches(HOST[0])
    assert not by_name.matches(HOST[1])  # the PF's netdev is not known without the host
    assert by_name.matches(HOST[1], HostView.of(HOST))


def test_tag_values_are_strings() -> None:
    (spec,) = parse_device_spec_json(json.dumps({
        "vendor_id": "8086",
        "physical_network": "physnet1",
        "trusted": True,
        "remote_managed": "True",
        "managed": "Yes",
        "live_migratable": False,
        "one_time_use": 0,
        "count": 3,
        "ratio": 1.5,
        "resource_class": "CUSTOM_NIC",
        "traits": "CUSTOM_A,HW_NIC_SRIOV",
        "note": "",
        "unset": None,
    }))
    assert spec.tags == {
        "physical_network": "physnet1",
        "trusted": "true",
        "remote_managed": "True",  # kept as written: Nova compares tags case-insensitively
        "managed": "true",
        "live_migratable": "false",
        "one_time_use": "false",
        "count": "3",
        "ratio": "1.5",
        "resource_class": "CUSTOM_NIC",
        "traits": "CUSTOM_A,HW_NIC_SRIOV",
        "note": "",
    }
    assert spec.vendor_id == 0x8086


def test_physical_network_null_from_novas_own_docs() -> None:
    (spec,) = parse_device_spec({"address": "0000:82:00.0", "product_id": "a2d6",
                                 "vendor_id": "15b3", "physical_network": None})
    assert "physical_network" not in spec.tags


def test_positions_and_list_entries_are_named() -> None:
    specs = load_device_specs([{"vendor_id": "8086"}, '[{"devname": "a"}, {"devname": "b"}]',
                               [{"address": ".1"}]])
    assert [s.where for s in specs.specs] == [
        "device_spec[0]", "device_spec[1][0]", "device_spec[1][1]", "device_spec[2][0]"]


def test_a_lone_string_is_one_spec() -> None:
    assert load_device_specs('{"vendor_id": "8086"}').specs == (
        DeviceSpec(vendor_id=0x8086),)


def test_spec_to_json_is_canonical() -> None:
    specs = load_device_specs([
        '{"vendor_id": "0X8086", "product_id": "154C", "address": "0:A:0.*", "x": true}',
        '{"address": {"bus": "0a"}}',
        '{"devname": "ens1f0", "address": ""}',
        '{"address": "*:*:*.*"}',
    ]).specs
    assert [spec_to_json(s) for s in specs] == [
        {"vendor_id": "8086", "product_id": "154c", "address": "0000:0a:00.*", "x": "true"},
        {"address": {"domain": ".*", "bus": "0a", "slot": ".*", "function": ".*"}},
        {"devname": "ens1f0"},
        {},
    ]


def test_split_spec_lines() -> None:
    text = '# GPUs\n{"vendor_id": "10de"}\n\n   \n  # NICs\n  [{"devname": "eth0"}]  \n'
    assert split_spec_lines(text) == ['{"vendor_id": "10de"}', '[{"devname": "eth0"}]']
    assert split_spec_lines("") == []


def test_address_values_are_typed() -> None:
    (glob,) = parse_device_spec({"address": "*:0a:00.*"})
    assert glob.address == AddressGlob(None, 0x0A, 0, None)
    (regex,) = parse_device_spec({"address": {"function": "[0-2]"}})
    assert regex.address == AddressRegex(function="[0-2]")
    assert len({glob, regex, parse_device_spec({"address": "*:0A:0.*"})[0]}) == 2  # values


# --- rejections --------------------------------------------------------------------------

@dataclass(frozen=True)
class Bad:
    name: str
    text: str
    field: str
    needles: tuple[str, ...]


POS = 3
BAD_CASES = [
    Bad("bus over 0xff", '{"address": "0000:100:00.0"}', "address", ("bus 0x100", "0xff")),
    Bad("slot over 0x1f", '{"address": "0000:0a:20.0"}', "address", ("slot 0x20", "0x1f")),
    Bad("function over 7", '{"address": "0000:0a:00.8"}', "address", ("function 0x8", "0x7")),
    Bad("domain over 32 bits", '{"address": "100000000:0a:00.0"}', "address",
        ("domain 0x100000000", "0xffffffff")),
    Bad("four colon parts", '{"address": "0000:0a:0b:00.5"}', "address",
        ("4 ':'-separated parts",)),
    Bad("function not hex (Nova's own case)", '{"address": "0000:h4.12:6"}', "address",
        ("function '12:6'", "not a hex number")),
    Bad("blank function after the dot", '{"address": "0000:0a:00. "}', "address",
        ("function ''",)),
    Bad("partial wildcard", '{"address": "0*:0a:00.0"}', "address", ("domain '0*'",)),
    Bad("negative part", '{"address": "-1:0a:00.0"}', "address", ("domain '-1'",)),
    Bad("address of a wrong type", '{"address": [".*", "0a"]}', "address",
        ("glob string or an object", "a list")),
    Bad("address false", '{"address": false}', "address", ("a boolean",)),
    Bad("bad regex", '{"address": {"function": "[6[-7]"}}', "address.function",
        ("'[6[-7]'", "not a valid regex")),
    Bad("star is not a regex", '{"address": {"domain": "*", "bus": "02"}}', "address.domain",
        ("'*'", "not a valid regex")),
    Bad("regex not a string", '{"address": {"bus": 2}}', "address.bus",
        ("must be a regex string", "int")),
    Bad("unknown regex key", '{"address": {"func": "1"}}', "address",
        ("'func'", "allowed: domain, bus, slot, function")),
    Bad("vendor id too big", '{"vendor_id": "80860"}', "vendor_id",
        ("'80860'", "greater than the maximum 0xffff")),
    Bad("vendor id not hex", '{"vendor_id": "intel"}', "vendor_id", ("'intel'", "not a hex")),
    Bad("vendor id blank", '{"vendor_id": ""}', "vendor_id", ("''", "not a hex")),
    Bad("vendor id a number", '{"vendor_id": 8086}', "vendor_id", ("a number",)),
    Bad("product id too big", '{"product_id": "50570"}', "product_id", ("'50570'", "0xffff")),
    Bad("product id null", '{"product_id": null}', "product_id", ("null",)),
    Bad("product id star with blanks (Nova strips only the vendor)", '{"product_id": " * "}',
        "product_id", ("' * '", "not a hex")),
    Bad("devname with address", '{"devname": "eth0", "address": "*:*:*.5"}', "devname",
        ("devname and address cannot be used together",)),
    Bad("devname with regex address", '{"devname": "eth0", "address": {"bus": "0a"}}',
        "devname", ("cannot be used together",)),
    Bad("devname a number", '{"devname": 7}', "devname", ("must be a string",)),
    Bad("nested tag object", '{"physical_network": {"name": "x"}}', "physical_network",
        ("string, number or boolean", "an object")),
    Bad("nested tag list", '{"traits": ["A", "B"]}', "traits", ("a list",)),
    Bad("NaN tag", '{"weight": NaN}', "weight", ("NaN",)),
    Bad("managed not a boolean", '{"managed": "maybe"}', "managed", ("'maybe'", "not a boolean")),
    Bad("live_migratable number", '{"live_migratable": 2}', "live_migratable", ("'2'",)),
]


@pytest.mark.parametrize("bad", BAD_CASES, ids=lambda b: b.name)
def test_bad_entry_is_refused_naming_spec_key_and_problem(bad: Bad) -> None:
    with pytest.raises(InvalidDeviceSpec) as info:
        parse_device_spec_json(bad.text, position=POS)
    exc = info.value
    assert exc.field == f"device_spec[{POS}].{bad.field}"
    assert exc.message.startswith(f"device_spec[{POS}] ")
    # A short repr of the entry, so the operator can find it.
    assert json.dumps(json.loads(bad.text), ensure_ascii=False)[:40] in exc.message
    for needle in bad.needles:
        assert needle in exc.message
    assert exc.code == "invalid_device_spec"


@pytest.mark.parametrize(
    ("text", "field", "needle"),
    [
        ('{"vendor_id": "8086"', "device_spec[3]", "not valid JSON"),
        ("", "device_spec[3]", "not valid JSON"),
        ('"0000:0a:00.0"', "device_spec[3]", "not a string"),
        ("5", "device_spec[3]", "a number"),
        ("null", "device_spec[3]", "null"),
        ('[{"vendor_id": "8086"}, "0000:0a:00.0"]', "device_spec[3][1]",
         "must be a JSON object, not a string"),
        ('[{"vendor_id": "8086"}, [{}]]', "device_spec[3][1]", "not a list"),
        ('[{}, {"address": "0000:0a:00.9"}]', "device_spec[3][1].address", "function 0x9"),
        ("[" * 100_000, "device_spec[3]", "JSON"),
    ],
)
def test_bad_document_is_refused(text: str, field: str, needle: str) -> None:
    with pytest.raises(InvalidDeviceSpec) as info:
        parse_device_spec_json(text, position=3)
    assert info.value.field == field
    assert needle in info.value.message


def test_a_long_entry_is_shortened_in_the_message() -> None:
    text = json.dumps({"address": "0000:0a:00.8", "note": "x" * 500})
    with pytest.raises(InvalidDeviceSpec) as info:
        parse_device_spec_json(text)
    assert len(info.value.message) < 250
    assert "..." in info.value.message


def test_the_first_bad_line_stops_loading() -> None:
    with pytest.raises(InvalidDeviceSpec) as info:
        load_device_specs(['{"vendor_id": "8086"}', '{"vendor_id": "8086"}',
                           '{"address": "0000:0a:00.0", "devname": "eth0"}'])
    assert info.value.field == "device_spec[2].devname"


def test_python_objects_with_odd_keys_are_refused() -> None:
    with pytest.raises(InvalidDeviceSpec, match="key 5 is not a string"):
        parse_device_spec({5: "x"})


# --- properties --------------------------------------------------------------------------

def _glob_part(value: int | None, width: int) -> st.SearchStrategy[str]:
    return st.sampled_from(["*", "", " * "]) if value is None else hex_spellings(value, width)


@st.composite
def glob_texts(draw: st.DrawFn) -> str:
    addr = draw(addresses())
    keep = [draw(st.booleans()) for _ in range(4)]
    d, b, s, f = (
        draw(_glob_part(v if k else None, w))
        for v, k, w in zip((addr.domain, addr.bus, addr.slot, addr.function), keep,
                           (4, 2, 2, 1), strict=True)
    )
    form = draw(st.integers(0, 3))
    dbs = [f"{d}:{b}:{s}", f"{b}:{s}", s, ""][form]
    return f"{dbs}.{f}" if draw(st.booleans()) or form == 3 else dbs


_regexes = st.sampled_from([".*", "0", "0a", "0000", "[0-2]", "0[0-9a-f]", "1.*", "(00|01)$",
                            "ff", "1"])
_tag_keys = st.sampled_from(["physical_network", "trusted", "remote_managed", "managed",
                             "resource_class", "traits", "custom", "x-y"])
_tag_values = st.one_of(st.text(max_size=10), st.booleans(), st.integers(-5, 10**6),
                        st.sampled_from(["yes", "no", "true", "False"]), st.none())


@st.composite
def spec_objects(draw: st.DrawFn) -> dict[str, object]:
    obj: dict[str, object] = {}
    for key in ("vendor_id", "product_id"):
        choice = draw(st.integers(0, 2))
        if choice == 1:
            obj[key] = "*"
        elif choice == 2:
            obj[key] = draw(st.integers(0, 0xFFFF).flatmap(lambda v: hex_spellings(v, 4)))
    where = draw(st.sampled_from(["none", "glob", "regex", "devname"]))
    if where == "glob":
        obj["address"] = draw(glob_texts())
    elif where == "regex":
        obj["address"] = draw(st.dictionaries(
            st.sampled_from(["domain", "bus", "slot", "function"]), _regexes))
    elif where == "devname":
        obj["devname"] = draw(st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True))
    tags: dict[str, object] = draw(st.dictionaries(_tag_keys, _tag_values, max_size=4))
    for key, value in tags.items():
        if key == "managed":
            value = draw(st.sampled_from(["yes", "no", "TRUE", True, False, 0, 1]))
        obj[key] = value
    return obj


@given(spec_objects())
def test_parse_to_json_round_trip(obj: dict[str, object]) -> None:
    (spec,) = parse_device_spec(obj, position=4)
    canon = spec_to_json(spec)
    (again,) = parse_device_spec_json(json.dumps(canon), position=4)
    assert again == spec
    assert spec_to_json(again) == canon
    assert again.where == "device_spec[4]"


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
    st.text(max_size=12), _regexes,
    st.sampled_from(["*", "", "0000:0a:00.0", "8086", "0x8086", ":0a:", ".5", "10000:1:0.0",
                     "0000:0a:0b:00.5", "ffff0"]),
)
_json_keys = st.one_of(
    st.sampled_from(["vendor_id", "product_id", "address", "devname", "domain", "bus", "slot",
                     "function", "managed", "live_migratable", "trusted"]),
    st.text(max_size=6),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_json_keys, inner, max_size=5),
    max_leaves=20,
)


@given(_json_values)
def test_any_json_value_parses_or_raises_invalid_device_spec(value: object) -> None:
    try:
        specs = parse_device_spec(value, position=1)
    except InvalidDeviceSpec as exc:
        assert exc.field is not None and exc.field.startswith("device_spec[1]")
        assert exc.message.startswith("device_spec[1]")
        return
    for spec in specs:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in spec.tags.items())
        assert parse_device_spec(spec_to_json(spec))[0] == spec


@given(st.text(max_size=60))
def test_any_text_parses_or_raises_invalid_device_spec(text: str) -> None:
    try:
        parse_device_spec_json(text)
    except InvalidDeviceSpec as exc:
        assert exc.field is not None and exc.field.startswith("device_spec[0]")


@given(devices(), st.data())
def test_a_spec_of_a_devices_own_address_and_ids_matches_it(
    device: PciDevice, data: st.DataObject
) -> None:
    a = device.address
    spelled = ":".join([
        data.draw(hex_spellings(a.domain, 4)).strip(),
        data.draw(hex_spellings(a.bus, 2)).strip(),
        data.draw(hex_spellings(a.slot, 2)).strip(),
    ]) + "." + data.draw(hex_spellings(a.function, 1)).strip()
    (spec,) = parse_device_spec({
        "vendor_id": data.draw(hex_spellings(int(device.vendor_id, 16), 4)),
        "product_id": data.draw(hex_spellings(int(device.product_id, 16), 4)),
        "address": spelled,
    })
    assert spec.matches(device)
    assert DeviceSpecSet((spec,)).match(device) is spec


def _nova_glob_match(spec: AddressGlob, addr: PciAddress) -> bool:
    """Nova's comparison: both sides printed %04x/%02x/%02x/%1x, then compared as text."""
    mine = (f"{addr.domain:04x}", f"{addr.bus:02x}", f"{addr.slot:02x}", f"{addr.function:1x}")
    theirs = (
        "*" if spec.domain is None else f"{spec.domain:04x}",
        "*" if spec.bus is None else f"{spec.bus:02x}",
        "*" if spec.slot is None else f"{spec.slot:02x}",
        "*" if spec.function is None else f"{spec.function:1x}",
    )
    return all(t in ("*", m) for t, m in zip(theirs, mine, strict=True))


@given(glob_texts(), addresses())
def test_glob_matching_equals_novas_padded_text_comparison(text: str, addr: PciAddress) -> None:
    (spec,) = parse_device_spec({"address": text})
    assert isinstance(spec.address, AddressGlob)
    assert spec.address.matches(addr) == _nova_glob_match(spec.address, addr)


@settings(deadline=None)
@given(hosts())
def test_exact_pf_address_selects_exactly_the_pf_and_its_vfs(host: list[PciDevice]) -> None:
    pfs = [d for d in host if d.dev_type is DevType.PF]
    assume(pfs)
    target = pfs[0].address
    applied = load_device_specs([json.dumps({"address": str(target)})]).apply(host)
    chosen = {d.address for d in applied if d.assignable}
    assert chosen == {d.address for d in host
                      if d.address == target or d.parent_addr == target}


@settings(deadline=None)
@given(hosts())
def test_devname_selects_its_device_and_a_pfs_vfs(host: list[PciDevice]) -> None:
    named = [d for d in host if d.netdevs]
    assume(named)
    owner = named[-1]
    applied = load_device_specs([json.dumps({"devname": owner.netdevs[0].name})]).apply(host)
    chosen = {d.address for d in applied if d.assignable}
    family = {owner.address}
    if owner.dev_type is DevType.PF:
        family |= {d.address for d in host if d.parent_addr == owner.address}
    assert chosen == family


@settings(deadline=None)
@given(hosts(), st.lists(spec_objects(), max_size=4))
def test_apply_agrees_with_match_and_leaves_input_alone(
    host: list[PciDevice], objs: list[dict[str, object]]
) -> None:
    specs = load_device_specs([json.dumps(o) for o in objs])
    before = copy.deepcopy(host)
    out = specs.apply(host)
    assert host == before
    view = HostView.of(host)
    for original, result in zip(host, out, strict=True):
        first = specs.match(original, view)
        assert result.assignable == (first is not None)
        assert result.tags == (first.tags if first is not None else {})
        assert result.address == original.address


# --- remote_managed: Nova's two rules for off-path SmartNIC DPUs ----------------------------

DPU_PF = "0000:af:00.0"


def dpu_host(serial: str | None) -> list[PciDevice]:
    """A BlueField-like PF with two VFs; VFs report their PF's card serial number."""
    pf_dev = replace(pf(DPU_PF, product="a2d6", netdev="p0"), card_serial_number=serial)
    return [pf_dev, *(replace(vf(f"0000:af:00.{i}", DPU_PF, product="101e"),
                              card_serial_number=serial) for i in (2, 3))]


REMOTE_VFS = {"vendor_id": "8086", "product_id": "101e", "address": DPU_PF,
              "physical_network": "physnet3", "remote_managed": "true"}


def test_a_remote_managed_spec_takes_vfs_whose_card_has_a_serial_number() -> None:
    out = load_device_specs([REMOTE_VFS]).apply(dpu_host("MT2245X00007"))
    assert [d.assignable for d in out] == [False, True, True]
    assert out[1].tags["remote_managed"] == "true"
    assert all(d.warnings == () for d in out)


@pytest.mark.parametrize("serial", [None, ""])
def test_without_a_card_serial_number_remote_managed_vfs_are_refused_saying_why(
        serial: str | None) -> None:
    specs = load_device_specs([REMOTE_VFS])
    out = specs.apply(dpu_host(serial))
    assert not any(d.assignable for d in out)
    assert out[1].warnings == (
        "device_spec[0] is remote_managed but its PF's VPD has no card serial number "
        "(the DPU finds the card by it)",)
    assert out[0].warnings == ()  # the spec's product id does not name the PF itself
    assert not specs.specs[0].matches(out[1], HostView.of(out))


def test_a_pf_is_never_remote_managed() -> None:
    host = dpu_host("MT2245X00007")
    specs = load_device_specs([{"address": DPU_PF, "remote_managed": "yes"}])
    out = specs.apply(host)
    # The exact PF address selects its VFs too (Nova's PF rule); only the VFs are taken.
    assert [d.assignable for d in out] == [False, True, True]
    assert out[0].warnings == ("device_spec[0] is remote_managed, which a PF cannot be (only "
                               "its VFs, through their representors on the DPU)",)


def test_a_later_spec_still_takes_what_a_remote_managed_one_refuses() -> None:
    specs = load_device_specs([REMOTE_VFS, {"vendor_id": "8086", "physical_network": "p1"}])
    out = specs.apply(dpu_host(None))
    assert [d.assignable for d in out] == [True, True, True]
    assert out[1].tags == {"physical_network": "p1"}
    assert "no card serial number" in out[1].warnings[0]  # the operator still learns why


@pytest.mark.parametrize("word", ["false", "no", "0", "off", "maybe", "True ", "ON"])
def test_only_a_true_word_makes_a_spec_remote_managed(word: str) -> None:
    spec = parse_device_spec({**REMOTE_VFS, "remote_managed": word})[0]
    assert spec.remote_managed is (word.strip().lower() in ("true", "on"))
    no_serial = dpu_host(None)
    assert spec.matches(no_serial[1], HostView.of(no_serial)) is not spec.remote_managed


def test_applying_twice_gives_the_same_devices() -> None:
    """The agent may apply its specs to devices that carry an earlier verdict: the
    remote_managed warning is not added again."""
    specs = load_device_specs([REMOTE_VFS])
    once = specs.apply(dpu_host(None))
    assert specs.apply(once) == once
    assert specs.verdict(once[1]) == (None, once[1].warnings[0])
