"""Nova's [pci] alias, verbatim, and our ``match`` extension: parsing, refusals, matching."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pcipass.errors import InvalidAlias, InvalidInput
from pcipass.pci.address import PciAddress
from pcipass.pci.alias import (
    Alias,
    NumaPolicy,
    alias_entry_to_json,
    build_aliases,
    parse_alias_entry,
    parse_aliases,
)
from pcipass.pci.device import DevType, PciDevice


def dev(vendor: str = "10de", product: str = "20b5", *, cls: str = "030200",
        dev_type: DevType = DevType.PCI, driver: str | None = "vfio-pci",
        tags: dict[str, str] | None = None, subsys: tuple[str, str] | None = None) -> PciDevice:
    return PciDevice(
        address=PciAddress(0, 0x3B, 0, 0), vendor_id=vendor, product_id=product,
        class_code=cls, dev_type=dev_type, driver=driver, assignable=True,
        parent_addr=PciAddress(0, 0xAF, 0, 0) if dev_type is DevType.VF else None,
        subsystem_vendor_id=subsys[0] if subsys else None,
        subsystem_product_id=subsys[1] if subsys else None,
        tags=tags or {},
    )


def one(obj: dict[str, Any]) -> Alias:
    aliases = parse_aliases(obj)
    assert len(aliases) == 1
    return next(iter(aliases.values()))


# --- Nova's format, verbatim ---------------------------------------------------------------

def test_nova_docstring_example_two_entries_are_alternatives() -> None:
    # nova/pci/request.py: entries of one name, device type and policy are ORed.
    aliases = parse_aliases([
        '{"name": "QuickAssist", "product_id": "0443", "vendor_id": "8086", '
        '"device_type": "type-PCI", "numa_policy": "legacy"}',
        '{"name": "QuickAssist", "product_id": "0442", "vendor_id": "8086", '
        '"device_type": "type-PCI"}',
    ])
    qa = aliases["QuickAssist"]
    assert len(qa.entries) == 2
    assert qa.numa_policy is NumaPolicy.LEGACY and qa.dev_type is DevType.PCI
    assert qa.matches(dev("8086", "0443")) and qa.matches(dev("8086", "0442"))
    assert not qa.matches(dev("8086", "0444"))


def test_defaults_strip_and_case() -> None:
    a = one({"name": "  gpu ", "vendor_id": "10DE", "product_id": "20B5"})
    assert a.name == "gpu"
    assert a.numa_policy is NumaPolicy.LEGACY   # Nova's default
    assert a.dev_type is None
    assert a.matches(dev("10de", "20b5")) and a.matches(dev("10DE", "20B5"))


def test_empty_numa_policy_is_the_default() -> None:
    assert one({"name": "g", "vendor_id": "10de", "numa_policy": ""}).numa_policy is \
        NumaPolicy.LEGACY


@pytest.mark.parametrize("policy", ["required", "legacy", "preferred", "socket"])
def test_every_nova_policy(policy: str) -> None:
    assert one({"name": "g", "vendor_id": "10de", "numa_policy": policy}).numa_policy.value \
        == policy


def test_nova_only_keys_are_accepted() -> None:
    a = one({"name": "g", "vendor_id": "10de", "product_id": "20b5", "capability_type": "pci",
             "resource_class": "CUSTOM_PCI_10DE_20B5", "traits": "CUSTOM_FAST",
             "live_migratable": "yes"})
    e = a.entries[0]
    assert e.live_migratable is True and e.traits == ("CUSTOM_FAST",)


def test_device_type_filters_and_pf_only_when_asked() -> None:
    any_type = one({"name": "n", "vendor_id": "8086"})
    assert any_type.matches(dev("8086", "1889", dev_type=DevType.VF))
    # Nova drops PF pools unless type-PF is requested, whatever the ids.
    assert not any_type.matches(dev("8086", "1592", dev_type=DevType.PF))
    pf = one({"name": "p", "vendor_id": "8086", "device_type": "type-PF"})
    assert pf.matches(dev("8086", "1592", dev_type=DevType.PF))
    assert not pf.matches(dev("8086", "1889", dev_type=DevType.VF))
    vf = one({"name": "v", "vendor_id": "8086", "device_type": "type-VF"})
    assert not vf.matches(dev("8086", "1592"))


def test_remote_managed_only_when_asked() -> None:
    plain = one({"name": "v", "vendor_id": "8086", "device_type": "type-VF"})
    smart = dev("8086", "1889", dev_type=DevType.VF, tags={"remote_managed": "true"})
    assert not plain.matches(smart)
    asked = one({"name": "v", "vendor_id": "8086", "device_type": "type-VF",
                 "match": {"remote_managed": True}})
    assert asked.matches(smart)
    assert not asked.matches(dev("8086", "1889", dev_type=DevType.VF))


def test_resource_class_and_traits_as_placement_normalises_them() -> None:
    default_rc = one({"name": "g", "resource_class": "CUSTOM_PCI_10DE_20B5"})
    assert default_rc.matches(dev())
    assert not default_rc.matches(dev(product="1eb8"))
    named = one({"name": "g", "resource_class": "gpu-a"})
    assert named.matches(dev(tags={"resource_class": "CUSTOM_GPU_A"}))
    assert not named.matches(dev())
    traits = one({"name": "g", "vendor_id": "10de", "traits": "fast,CUSTOM_BIG"})
    assert traits.matches(dev(tags={"traits": "CUSTOM_FAST,big,other"}))
    assert not traits.matches(dev(tags={"traits": "CUSTOM_FAST"}))


# --- the match extension --------------------------------------------------------------------

MATCH_CASES: list[tuple[str, dict[str, Any], PciDevice, bool]] = [
    ("driver one of", {"driver": ["vfio-pci", "nvidia"]}, dev(driver="nvidia"), True),
    ("driver not listed", {"driver": "vfio-pci"}, dev(driver="nouveau"), False),
    ("driver unbound", {"driver": "vfio-pci"}, dev(driver=None), False),
    ("class prefix", {"class_code": "03"}, dev(cls="030200"), True),
    ("class prefix 0x", {"class_code": "0x0302"}, dev(cls="030200"), True),
    ("class prefix miss", {"class_code": "0300"}, dev(cls="030200"), False),
    ("physnet", {"physical_network": "physnet1"},
     dev(tags={"physical_network": "physnet1"}), True),
    ("physnet case", {"physical_network": "PhysNet1"},
     dev(tags={"physical_network": "physnet1"}), True),
    ("physnet list miss", {"physical_network": ["a", "b"]},
     dev(tags={"physical_network": "c"}), False),
    ("physnet untagged", {"physical_network": "physnet1"}, dev(), False),
    ("trusted bool vs word", {"trusted": True}, dev(tags={"trusted": "yes"}), True),
    ("trusted false vs untagged", {"trusted": "false"}, dev(), True),
    ("trusted true vs untagged", {"trusted": "true"}, dev(), False),
    ("live_migratable in match", {"live_migratable": True},
     dev(tags={"live_migratable": "true"}), True),
    ("custom tag", {"rack": ["r1", "r2"]}, dev(tags={"rack": "r2"}), True),
    ("numeric custom tag", {"gen": 4}, dev(tags={"gen": "4"}), True),
    ("subsystem", {"subsystem_vendor_id": "10DE", "subsystem_product_id": "1234"},
     dev(subsys=("10de", "1234")), True),
    ("all must hold", {"driver": "vfio-pci", "rack": "r1"},
     dev(driver="vfio-pci", tags={"rack": "r2"}), False),
]


@pytest.mark.parametrize(("name", "match", "device", "expected"), MATCH_CASES,
                         ids=[c[0] for c in MATCH_CASES])
def test_match(name: str, match: dict[str, Any], device: PciDevice, expected: bool) -> None:
    a = one({"name": "x", "vendor_id": "10de", "match": match})
    assert a.matches(device) is expected


def test_match_alone_identifies_a_device() -> None:
    a = one({"name": "vf-net1", "device_type": "type-VF",
             "match": {"physical_network": "physnet1"}})
    assert a.matches(dev("8086", "1889", dev_type=DevType.VF,
                         tags={"physical_network": "physnet1"}))


def test_live_migratable_top_level_absent_tag_is_false() -> None:
    a = one({"name": "g", "vendor_id": "10de", "live_migratable": "false"})
    assert a.matches(dev())
    assert not a.matches(dev(tags={"live_migratable": "true"}))


# --- refusals --------------------------------------------------------------------------------

ERROR_CASES: list[tuple[str, object, str, str]] = [
    # (case, input, field, text in the message)
    ("unknown key", {"name": "gpu", "vendor_id": "10de", "physical_network": "x"},
     "alias[0].physical_network", "unknown key 'physical_network'"),
    ("typo", {"name": "gpu", "vendor_ic": "10de"}, "alias[0].vendor_ic", "alias 'gpu'"),
    ("no constraint", {"name": "gpu"}, "alias[0]", "constrains nothing"),
    ("device type alone", {"name": "vf", "device_type": "type-VF"}, "alias[0]",
     "constrains nothing"),
    ("empty list", {"name": "gpu", "match": {"driver": []}}, "alias[0].match.driver",
     "could never match"),
    ("wildcard id", {"name": "gpu", "vendor_id": "*"}, "alias[0].vendor_id", "four hex"),
    ("long id", {"name": "gpu", "vendor_id": "10de0"}, "alias[0].vendor_id", "four hex"),
    ("numeric id", {"name": "gpu", "vendor_id": 4318}, "alias[0].vendor_id", "string"),
    ("bad type", {"name": "gpu", "vendor_id": "10de", "device_type": "type-VDPA"},
     "alias[0].device_type", "type-PCI, type-PF, type-VF"),
    ("bad policy", {"name": "gpu", "vendor_id": "10de", "numa_policy": "strict"},
     "alias[0].numa_policy", "required, legacy, preferred, socket"),
    ("colon in name", {"name": "gpu:a", "vendor_id": "10de"}, "alias[0].name", "':'"),
    ("comma in name", {"name": "a,b", "vendor_id": "10de"}, "alias[0].name", "could never"),
    ("blank name", {"name": "  ", "vendor_id": "10de"}, "alias[0].name", "empty"),
    ("no name", {"vendor_id": "10de"}, "alias[0].name", "name is required"),
    ("long name", {"name": "g" * 257, "vendor_id": "10de"}, "alias[0].name", "256"),
    ("not an object", [42], "alias[0]", "JSON object"),
    ("id in match", {"name": "gpu", "match": {"vendor_id": "10de"}},
     "alias[0].match.vendor_id", "top level"),
    ("address in match", {"name": "gpu", "vendor_id": "10de",
                          "match": {"address": "0000:3b:00.0"}},
     "alias[0].match.address", "cannot be a match key"),
    ("bad bool", {"name": "gpu", "vendor_id": "10de", "match": {"trusted": "maybe"}},
     "alias[0].match.trusted", "not a boolean"),
    ("bad class", {"name": "gpu", "match": {"class_code": "03xx"}},
     "alias[0].match.class_code", "prefix"),
    ("object value", {"name": "gpu", "vendor_id": "10de", "match": {"rack": {"a": 1}}},
     "alias[0].match.rack", "strings or booleans"),
    ("match not object", {"name": "gpu", "vendor_id": "10de", "match": ["driver"]},
     "alias[0].match", "object"),
    ("live twice", {"name": "g", "vendor_id": "10de", "live_migratable": "true",
                    "match": {"live_migratable": True}}, "alias[0].match.live_migratable",
     "both"),
    ("bad live", {"name": "g", "vendor_id": "10de", "live_migratable": "perhaps"},
     "alias[0].live_migratable", "boolean"),
    ("capability", {"name": "g", "vendor_id": "10de", "capability_type": "net"},
     "alias[0].capability_type", "'pci'"),
    ("mixed types", [{"name": "g", "vendor_id": "10de", "device_type": "type-PCI"},
                     {"name": "g", "vendor_id": "8086", "device_type": "type-VF"}],
     "device_type", "alias 'g': device type mismatch"),
    ("typed and untyped", [{"name": "g", "vendor_id": "10de", "device_type": "type-PCI"},
                           {"name": "g", "vendor_id": "8086"}],
     "device_type", "device type mismatch"),
    ("mixed policies", [{"name": "g", "vendor_id": "10de", "numa_policy": "required"},
                        {"name": "g", "vendor_id": "8086"}],
     "numa_policy", "alias 'g': NUMA policy mismatch"),
    ("bad json", "{name: gpu}", "alias[0]", "not valid JSON"),
    ("bad json line", ['{"name": "a", "vendor_id": "10de"}', "{"], "alias[1]",
     "not valid JSON"),
    ("scalar", 42, "alias", "object or a list"),
]


@pytest.mark.parametrize(("case", "given", "field", "text"), ERROR_CASES,
                         ids=[c[0] for c in ERROR_CASES])
def test_refused(case: str, given: object, field: str, text: str) -> None:
    with pytest.raises(InvalidAlias) as info:
        parse_aliases(given)
    err = info.value
    assert isinstance(err, InvalidInput)
    assert err.code == "invalid_alias"
    assert err.field == field
    assert text in err.message


def test_message_names_alias_and_key() -> None:
    with pytest.raises(InvalidAlias) as info:
        parse_aliases({"name": "gpu", "vendor_id": "10de", "match": {"trusted": "maybe"}})
    assert "alias 'gpu'" in info.value.message and "trusted" in info.value.message


def test_same_policy_spelled_or_defaulted_agrees() -> None:
    a = parse_aliases([{"name": "g", "vendor_id": "10de", "numa_policy": "legacy"},
                       {"name": "g", "vendor_id": "1002"}])["g"]
    assert len(a.entries) == 2


def test_untyped_entries_agree() -> None:
    # Nova would fail on a missing 'dev_type' key here; "absent" is a value we compare.
    a = parse_aliases([{"name": "g", "vendor_id": "10de"}, {"name": "g", "vendor_id": "1002"}])
    assert a["g"].matches(dev("1002", "0001"))


def test_duplicate_entry_collapses() -> None:
    e = {"name": "g", "vendor_id": "10de"}
    assert len(parse_aliases([e, dict(e)])["g"].entries) == 1


def test_several_names() -> None:
    aliases = parse_aliases(json.dumps([{"name": "a", "vendor_id": "10de"},
                                        {"name": "b", "vendor_id": "8086"}]))
    assert sorted(aliases) == ["a", "b"]


ROUND_TRIP: list[dict[str, Any]] = [
    {"name": "gpu", "vendor_id": "10de", "product_id": "20b5", "device_type": "type-PCI",
     "numa_policy": "required"},
    {"name": "vf", "device_type": "type-VF", "numa_policy": "socket",
     "match": {"physical_network": ["physnet1", "physnet2"], "trusted": True}},
    {"name": "pl", "resource_class": "CUSTOM_X", "traits": "A,CUSTOM_B", "live_migratable": "no",
     "capability_type": "pci", "match": {"class_code": "03", "driver": "vfio-pci"}},
]


@pytest.mark.parametrize("obj", ROUND_TRIP, ids=[o["name"] for o in ROUND_TRIP])
def test_round_trip(obj: dict[str, Any]) -> None:
    entry = parse_alias_entry(obj)
    again = parse_alias_entry(json.loads(json.dumps(alias_entry_to_json(entry))))
    assert again == entry


def test_build_aliases_from_entries() -> None:
    a = parse_alias_entry({"name": "g", "vendor_id": "10de"})
    b = parse_alias_entry({"name": "g", "vendor_id": "1002"}, where="alias[1]")
    assert build_aliases([a, b])["g"].entries == (a, b)


def test_input_not_mutated() -> None:
    obj = {"name": " gpu ", "vendor_id": "10DE", "match": {"driver": ["vfio-pci"]}}
    snapshot = json.dumps(obj)
    parse_aliases(obj)
    assert json.dumps(obj) == snapshot


@pytest.mark.parametrize(("word", "truth"), [
    ("true", True), (" YES ", True), ("1", True), ("on", True), ("t", True), ("y", True),
    ("false", False), ("No", False), ("0", False), ("off", False), ("f", False), ("n", False),
    ("maybe", None), ("", None), ("2", None),
])
def test_bool_words_are_oslos(word: str, truth: bool | None) -> None:
    from pcipass.pci.boolwords import bool_word
    assert bool_word(word) is truth
