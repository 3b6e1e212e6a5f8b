"""PciAddress: one parser, one printed form, and only InvalidAddress for bad input."""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pcipass.errors import InvalidAddress, InvalidInput, PcipassError
from pcipass.pci.address import PciAddress
from strategies import addresses

CANONICAL = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


@given(addresses())
def test_print_then_parse_is_identity(addr: PciAddress) -> None:
    text = str(addr)
    assert CANONICAL.match(text), text
    assert PciAddress.parse(text) == addr


@given(addresses())
def test_upper_case_and_blanks_are_normalised(addr: PciAddress) -> None:
    assert PciAddress.parse(f"  {str(addr).upper()}\n") == addr


@given(addresses(), addresses())
def test_order_is_numeric_domain_bus_slot_function(a: PciAddress, b: PciAddress) -> None:
    key = (a.domain, a.bus, a.slot, a.function)
    other = (b.domain, b.bus, b.slot, b.function)
    assert (a < b) == (key < other)
    assert (a == b) == (key == other)


@pytest.mark.parametrize(
    ("text", "printed"),
    [
        ("10000:01:00.0", "10000:01:00.0"),  # Intel VMD
        ("1000a:e1:1f.7", "1000a:e1:1f.7"),
        ("ffffffff:ff:1f.7", "ffffffff:ff:1f.7"),
        ("0000:3B:00.1", "0000:3b:00.1"),
        ("0:0:0.0", "0000:00:00.0"),  # short fields are padded when printed
    ],
)
def test_known_forms(text: str, printed: str) -> None:
    addr = PciAddress.parse(text)
    assert str(addr) == printed
    assert repr(addr) == f"PciAddress('{printed}')"


def test_vmd_domain_value() -> None:
    addr = PciAddress.parse("10000:01:00.0")
    assert (addr.domain, addr.bus, addr.slot, addr.function) == (0x10000, 1, 0, 0)
    assert addr.slot_address == (0x10000, 1, 0)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "not a PCI address"),
        ("0000:00:00", "not a PCI address"),
        ("00:00.0", "not a PCI address"),
        ("0000:00:00.8", "not a PCI address"),  # function is one octal digit
        ("0000:100:00.0", "not a PCI address"),
        ("0000:00:20.0", "slot 0x20 is out of range"),
        ("0000:00:ff.0", "slot 0xff is out of range"),
        ("100000000:00:00.0", "not a PCI address"),  # nine domain digits
        ("0000:0g:00.0", "not a PCI address"),
        ("0000:00:00.0.0", "not a PCI address"),
        ("*:00:00.0", "not a PCI address"),
        ("0x0000:00:00.0", "not a PCI address"),
        ("0000:00:00:0", "not a PCI address"),
        ("0000 :00:00.0", "not a PCI address"),
        ("\u0660\u0660\u0660\u0660:\u0660\u0660:\u0660\u0660.\u0660", "not a PCI address"),
    ],
)
def test_invalid_text_is_refused(text: str, needle: str) -> None:
    with pytest.raises(InvalidAddress) as info:
        PciAddress.parse(text, field="devices[3].address")
    assert needle in info.value.message
    assert info.value.field == "devices[3].address"
    assert info.value.code == "invalid_address"


@pytest.mark.parametrize("value", [None, 5, b"0000:00:00.0", ["0000:00:00.0"]])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(InvalidAddress, match="must be a string") as info:
        PciAddress.parse(value)  # type: ignore[arg-type]
    assert info.value.field == "address"


@pytest.mark.parametrize(
    ("fields", "name"),
    [((-1, 0, 0, 0), "domain"), ((0x1_0000_0000, 0, 0, 0), "domain"), ((0, 0x100, 0, 0), "bus"),
     ((0, 0, 0x20, 0), "slot"), ((0, 0, 0, 8), "function")],
)
def test_out_of_range_fields_are_refused(fields: tuple[int, int, int, int], name: str) -> None:
    with pytest.raises(InvalidAddress, match=f"{name} .* is out of range") as info:
        PciAddress(*fields)
    assert info.value.field == name


def test_invalid_address_is_a_pcipass_error() -> None:
    assert issubclass(InvalidAddress, InvalidInput)
    assert issubclass(InvalidAddress, PcipassError)


_near_addresses = st.from_regex(r"[0-9a-fA-FxX*:. \t\n-]{0,20}", fullmatch=True)


@given(st.one_of(st.text(), _near_addresses))
@example("0000:00:1f.7")
@example("0000:00:20.0")
@example("0000:00:00.0\n")
def test_any_text_parses_or_raises_invalid_address(text: str) -> None:
    try:
        addr = PciAddress.parse(text)
    except InvalidAddress as exc:
        assert exc.field == "address"
        assert exc.message
        return
    # Whatever is accepted prints canonically and reads back as itself.
    assert CANONICAL.match(str(addr))
    assert PciAddress.parse(str(addr)) == addr
