"""PCI requests from flavor extra specs and image properties, with Nova's syntax and rules."""

from __future__ import annotations

import copy

import pytest

from pcipass.errors import AliasNotSupportedByImage, InvalidPciRequest, UnknownAlias
from pcipass.pci.alias import NumaPolicy, parse_aliases
from pcipass.pci.request import (
    PciRequest,
    numa_node_count,
    parse_alias_counts,
    pci_numa_policy,
    pci_requests,
    requested_aliases,
    supported_aliases,
    validate_flavor_specs,
    validate_image_properties,
)

ALIASES = parse_aliases([
    {"name": "gpu", "vendor_id": "10de", "product_id": "20b5", "numa_policy": "required"},
    {"name": "gpu", "vendor_id": "10de", "product_id": "20b7", "numa_policy": "required"},
    {"name": "fpga", "vendor_id": "1d0f", "product_id": "f010"},
    {"name": "vf", "device_type": "type-VF", "match": {"physical_network": "physnet1"}},
])


# --- pci_passthrough:alias syntax (Nova's pattern, fullmatch) --------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("gpu:2", (("gpu", 2),)),
    ("gpu:2, fpga:1", (("gpu", 2), ("fpga", 1))),
    ("gpu:2,fpga:1", (("gpu", 2), ("fpga", 1))),
    (" gpu :2 ,  fpga:01", (("gpu", 2), ("fpga", 1))),
    ("my gpu:1", (("my gpu", 1),)),
    ("gpu:1, gpu:1", (("gpu", 1), ("gpu", 1))),   # Nova keeps repeats as two requests
])
def test_alias_counts(value: str, expected: tuple[tuple[str, int], ...]) -> None:
    assert parse_alias_counts(value) == expected


@pytest.mark.parametrize(("value", "text"), [
    ("gpu", "is not of the form"),
    ("gpu:", "is not of the form"),
    ("gpu:x", "is not of the form"),
    ("gpu: 2", "is not of the form"),     # Nova's pattern has no space after ':'
    (":2", "is not of the form"),
    ("gpu:1:2", "is not of the form"),
    ("gpu:-1", "is not of the form"),
    ("gpu:٢", "is not of the form"),      # a non-ASCII digit
    ("gpu:0", "at least 1"),
    ("gpu:1,,fpga:1", "item"),
    ("a,b:1", "item 'a' without ':count'"),
    ("gpu:1, :2", "without an alias name"),
    ("", "is not of the form"),
])
def test_alias_counts_refused(value: str, text: str) -> None:
    with pytest.raises(InvalidPciRequest) as info:
        parse_alias_counts(value)
    assert info.value.field == "extra_specs.pci_passthrough:alias"
    assert text in info.value.message


def test_alias_counts_not_a_string() -> None:
    with pytest.raises(InvalidPciRequest):
        parse_alias_counts(2)


# --- building requests ------------------------------------------------------------------------

def test_hard_and_soft_in_order() -> None:
    reqs = pci_requests({"pci_passthrough:alias": "gpu:2, fpga:1",
                         "pci_passthrough:alias_preferred": "vf:1"}, {}, ALIASES)
    assert [(r.alias, r.count, r.soft) for r in reqs] == [
        ("gpu", 2, False), ("fpga", 1, False), ("vf", 1, True)]
    assert len(reqs[0].alternatives) == 2          # both gpu entries
    assert str(reqs[0]) == "2 x gpu"
    assert requested_aliases(reqs) == ("gpu", "fpga", "vf")


def test_no_spec_no_requests() -> None:
    assert pci_requests({"hw:numa_nodes": "1"}, None, ALIASES) == ()


@pytest.mark.parametrize(("flavor", "image", "expected"), [
    ({}, {}, {"gpu": NumaPolicy.REQUIRED, "fpga": NumaPolicy.LEGACY}),     # alias's own
    ({"hw:pci_numa_affinity_policy": "preferred"}, {},
     {"gpu": NumaPolicy.PREFERRED, "fpga": NumaPolicy.PREFERRED}),          # flavor overrides
    ({}, {"hw_pci_numa_affinity_policy": "socket"},
     {"gpu": NumaPolicy.SOCKET, "fpga": NumaPolicy.SOCKET}),                # image overrides
    ({"hw:pci_numa_affinity_policy": "legacy"}, {"hw_pci_numa_affinity_policy": "legacy"},
     {"gpu": NumaPolicy.LEGACY, "fpga": NumaPolicy.LEGACY}),                # agree: fine
])
def test_policy_precedence(flavor: dict[str, str], image: dict[str, str],
                           expected: dict[str, NumaPolicy]) -> None:
    specs = {"pci_passthrough:alias": "gpu:1, fpga:1", **flavor}
    got = {r.alias: r.numa_policy for r in pci_requests(specs, image, ALIASES)}
    assert got == expected


def test_image_may_not_override_flavor_policy() -> None:
    # Nova: ImagePCINUMAPolicyForbidden.
    with pytest.raises(InvalidPciRequest) as info:
        pci_requests({"pci_passthrough:alias": "gpu:1", "hw:pci_numa_affinity_policy": "required"},
                     {"hw_pci_numa_affinity_policy": "preferred"}, ALIASES, image="cirros")
    assert info.value.field == "properties.hw_pci_numa_affinity_policy"
    assert "image 'cirros'" in info.value.message and "required" in info.value.message


@pytest.mark.parametrize(("flavor", "image", "field"), [
    ({"hw:pci_numa_affinity_policy": "strict"}, {}, "extra_specs.hw:pci_numa_affinity_policy"),
    ({}, {"hw_pci_numa_affinity_policy": "REQUIRED"},
     "properties.hw_pci_numa_affinity_policy"),
    ({}, {"hw_pci_numa_affinity_policy": 1}, "properties.hw_pci_numa_affinity_policy"),
])
def test_bad_policy(flavor: dict[str, object], image: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidPciRequest) as info:
        pci_numa_policy(flavor, image)
    assert info.value.field == field
    assert "required, legacy, preferred, socket" in info.value.message


def test_unknown_alias_names_spec_and_alias() -> None:
    with pytest.raises(UnknownAlias) as info:
        pci_requests({"pci_passthrough:alias_preferred": "tpu:1"}, {}, ALIASES)
    assert info.value.code == "unknown_alias"
    assert info.value.field == "extra_specs.pci_passthrough:alias_preferred"
    assert "'tpu'" in info.value.message


# --- image support ------------------------------------------------------------------------------

def test_image_supported_aliases() -> None:
    props = {"hw_pci_supported_aliases": "gpu, vf"}
    assert supported_aliases(props) == frozenset({"gpu", "vf"})
    assert len(pci_requests({"pci_passthrough:alias": "gpu:1"}, props, ALIASES)) == 1


@pytest.mark.parametrize("spec", ["pci_passthrough:alias", "pci_passthrough:alias_preferred"])
def test_image_refuses_unsupported_alias(spec: str) -> None:
    with pytest.raises(AliasNotSupportedByImage) as info:
        pci_requests({spec: "fpga:1"}, {"hw_pci_supported_aliases": "gpu,vf"}, ALIASES,
                     image="ubuntu-24.04")
    err = info.value
    assert err.code == "alias_not_supported_by_image" and err.status == 400
    assert "'fpga'" in err.message and "image 'ubuntu-24.04'" in err.message
    assert err.field == "properties.hw_pci_supported_aliases"


def test_image_that_supports_none() -> None:
    assert supported_aliases({"hw_pci_supported_aliases": " , "}) == frozenset()
    with pytest.raises(AliasNotSupportedByImage) as info:
        pci_requests({"pci_passthrough:alias": "gpu:1"}, {"hw_pci_supported_aliases": ""},
                     ALIASES)
    assert "none" in info.value.message


def test_image_without_the_property_supports_all() -> None:
    assert supported_aliases({"os_distro": "ubuntu"}) is None
    assert supported_aliases(None) is None


# --- NUMA node count ----------------------------------------------------------------------------

@pytest.mark.parametrize(("flavor", "image", "expected"), [
    ({}, {}, None),
    ({"hw:numa_nodes": "2"}, {}, 2),
    ({"hw:numa_nodes": 1}, {}, 1),
    ({}, {"hw_numa_nodes": "2"}, 2),
])
def test_numa_nodes(flavor: dict[str, object], image: dict[str, object],
                    expected: int | None) -> None:
    assert numa_node_count(flavor, image, vcpus=8, ram_mb=8192) == expected


@pytest.mark.parametrize(("flavor", "image", "field", "text"), [
    ({"hw:numa_nodes": "0"}, {}, "extra_specs.hw:numa_nodes", "at least 1"),
    ({"hw:numa_nodes": "two"}, {}, "extra_specs.hw:numa_nodes", "whole number"),
    ({"hw:numa_nodes": True}, {}, "extra_specs.hw:numa_nodes", "whole number"),
    ({"hw:numa_nodes": "2"}, {"hw_numa_nodes": "2"}, "properties.hw_numa_nodes",
     "may not be set"),
    ({"hw:numa_nodes": "3"}, {}, "extra_specs.hw:numa_nodes", "split evenly"),
])
def test_numa_nodes_refused(flavor: dict[str, object], image: dict[str, object], field: str,
                            text: str) -> None:
    with pytest.raises(InvalidPciRequest) as info:
        numa_node_count(flavor, image, vcpus=8, ram_mb=8192)
    assert info.value.field == field
    assert text in info.value.message


# --- creation-time validation -------------------------------------------------------------------

def test_validate_flavor() -> None:
    validate_flavor_specs({"pci_passthrough:alias": "gpu:2", "hw:numa_nodes": "2",
                           "hw:pci_numa_affinity_policy": "socket"}, ALIASES,
                          vcpus=4, ram_mb=4096)
    with pytest.raises(UnknownAlias):
        validate_flavor_specs({"pci_passthrough:alias": "nope:1"}, ALIASES)
    with pytest.raises(InvalidPciRequest):
        validate_flavor_specs({"pci_passthrough:alias": "gpu"}, ALIASES)
    with pytest.raises(InvalidPciRequest):
        validate_flavor_specs({"hw:numa_nodes": "2"}, ALIASES, vcpus=3, ram_mb=4096)


def test_validate_image() -> None:
    validate_image_properties({"hw_pci_supported_aliases": "gpu,tpu",   # may name future ones
                               "hw_pci_numa_affinity_policy": "legacy"})
    with pytest.raises(InvalidPciRequest):
        validate_image_properties({"hw_pci_supported_aliases": ["gpu"]})
    with pytest.raises(InvalidPciRequest):
        validate_image_properties({"hw_numa_nodes": "-1"})


def test_request_matching_uses_every_alternative() -> None:
    from pcipass.pci.address import PciAddress
    from pcipass.pci.device import PciDevice

    req = pci_requests({"pci_passthrough:alias": "gpu:1"}, {}, ALIASES)[0]
    assert isinstance(req, PciRequest)

    def gpu(product: str) -> PciDevice:
        return PciDevice(PciAddress(0, 1, 0, 0), "10de", product, "030200", assignable=True)

    assert req.matches(gpu("20b5")) and req.matches(gpu("20b7")) and not req.matches(gpu("1eb8"))


def test_inputs_not_mutated() -> None:
    flavor = {"pci_passthrough:alias": "gpu:1", "hw:pci_numa_affinity_policy": "legacy"}
    image = {"hw_pci_supported_aliases": "gpu"}
    before = copy.deepcopy((flavor, image))
    pci_requests(flavor, image, ALIASES)
    assert (flavor, image) == before
