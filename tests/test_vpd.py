"""Parsing PCI VPD: records as cards store them, every way they go wrong, and a round trip."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcipass.pci.vpd import Vpd, VpdFormatError, encode_vpd, parse_vpd


def checksummed(head: bytes) -> bytes:
    """``head`` ends with an RV entry's ``RV\\x01``: append the byte that makes the sum 0."""
    return head + bytes(((-sum(head)) & 0xFF,))


# Assembled by hand from the layout in the PCI spec, not by encode_vpd.
NAME = b"\x82\x10\x00ConnectX-6 Dx EN"
READ_ONLY = b"PN\x0bMCX623106AN" + b"EC\x02A7" + b"SN\x0cMT2245X00007" + b"V0\x03PCI"
CARD = checksummed(NAME + b"\x90" + bytes((len(READ_ONLY) + 4, 0)) + READ_ONLY + b"RV\x01") \
    + b"\x91\x05\x00YA\x02ok" + b"\x78"


def test_a_card_record_gives_its_name_fields_and_serial() -> None:
    vpd = parse_vpd(CARD)
    assert vpd.product_name == "ConnectX-6 Dx EN"
    assert dict(vpd.fields) == {"PN": "MCX623106AN", "EC": "A7", "SN": "MT2245X00007",
                                "V0": "PCI"}
    assert vpd.serial_number == "MT2245X00007"


def test_encode_writes_what_a_card_stores() -> None:
    fields = {"PN": "MCX623106AN", "EC": "A7", "SN": "MT2245X00007", "V0": "PCI"}
    encoded = encode_vpd("ConnectX-6 Dx EN", fields)
    # The same bytes as the hand-built record, up to the writable section it leaves out.
    assert encoded == CARD[: CARD.index(b"\x91")] + b"\x78"
    assert parse_vpd(encoded) == Vpd("ConnectX-6 Dx EN", fields)


def test_padding_after_the_end_tag_and_a_missing_end_tag_are_accepted() -> None:
    assert parse_vpd(CARD + b"\xff" * 200).serial_number == "MT2245X00007"
    assert parse_vpd(CARD[:-1]).serial_number == "MT2245X00007"


@pytest.mark.parametrize("data", [b"", b"\xff" * 256, b"\x00" * 64], ids=["empty", "ff", "zero"])
def test_a_blank_eeprom_is_no_vpd(data: bytes) -> None:
    assert parse_vpd(data) == Vpd()
    assert parse_vpd(data).serial_number is None


def test_a_blank_or_missing_serial_is_none() -> None:
    assert parse_vpd(encode_vpd("NIC", {"SN": "    "})).serial_number is None
    assert parse_vpd(encode_vpd("NIC", {"PN": "X1"})).serial_number is None
    assert parse_vpd(encode_vpd(None, {})).serial_number is None


def test_trailing_spaces_and_nuls_are_padding() -> None:
    head = b"\x90\x0e\x00SN\x07AB12\x00  RV\x01"
    assert parse_vpd(checksummed(head) + b"\x78").serial_number == "AB12"


def corrupt(data: bytes, at: int, value: int) -> bytes:
    return data[:at] + bytes((value,)) + data[at + 1:]


SN_AT = CARD.index(b"MT2245X")


@pytest.mark.parametrize(("data", "needle"), [
    (corrupt(CARD, SN_AT, ord("N")), "checksum does not match"),
    (CARD[:SN_AT], "resource 0x90 says 44 bytes but only 22 follow"),
    (CARD[:2], "cut short"),
    (NAME + b"\x90\x04\x00SN\x05ABCDE\x78", "runs past its section"),
    (checksummed(b"\x90\x08\x00SN\x01ARV\x01")[:-1] + b"\x00\x78", "checksum"),
    (b"\x90\x03\x00SN\x00\x78", "no RV checksum entry"),
    (b"\x90\x04\x00SN\x00\x00\x78", "entry is cut short"),
    (checksummed(b"\x90\x0a\x00SN\x01AS\x00\x00RV\x01") + b"\x78", "not two letters or digits"),
    (checksummed(b"\x90\x0c\x00SN\x01ASN\x01BRV\x01") + b"\x78", "appears twice"),
    (checksummed(b"\x90\x08\x00SN\x01\x07RV\x01") + b"\x78", "not printable ASCII"),
    (NAME + NAME, "a second identifier string"),
    (b"\x84\x01\x00x\x78", "unknown resource tag 0x84"),
    (checksummed(b"\x90\x04\x00RV\x01") + checksummed(b"\x90\x04\x00RV\x01"),
     "a second read-only section"),
    (b"\x90\x03\x00RV\x00\x78", "no checksum byte"),
], ids=["checksum", "truncated", "tag-cut", "entry-overruns", "bad-rv", "no-rv", "entry-cut",
        "bad-key",
        "twice", "binary", "two-names", "unknown-tag", "two-ro", "empty-rv"])
def test_a_malformed_record_is_refused_saying_where(data: bytes, needle: str) -> None:
    with pytest.raises(VpdFormatError) as exc:
        parse_vpd(data)
    assert needle in str(exc.value)
    assert 0 <= exc.value.offset < len(data)


def test_only_the_first_32_kib_are_read() -> None:
    pad = b"\x91\xfd\x7f" + b"\x00" * 0x7FFD  # a writable section filling the address space
    assert parse_vpd(pad + CARD) == Vpd()


def test_encode_refuses_what_a_card_cannot_hold() -> None:
    with pytest.raises(ValueError, match="two letters"):
        encode_vpd("x", {"SERIAL": "1"})
    with pytest.raises(ValueError, match="two letters"):
        encode_vpd("x", {"RV": "1"})
    with pytest.raises(ValueError, match="255"):
        encode_vpd("x", {"SN": "9" * 256})


_keys = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=2, max_size=2)
_values = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)


@given(name=st.none() | _values.filter(bool),
       fields=st.dictionaries(_keys.filter(lambda k: k != "RV"), _values, max_size=8))
def test_encoded_records_parse_back(name: str | None, fields: dict[str, str]) -> None:
    vpd = parse_vpd(encode_vpd(name, fields))
    assert vpd.product_name == name
    assert dict(vpd.fields) == fields
    assert vpd.serial_number == (fields.get("SN") or None)


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_a_format_error(data: bytes) -> None:
    try:
        vpd = parse_vpd(data)
    except VpdFormatError as exc:   # anything else escaping (IndexError, ...) fails the test
        assert 0 <= exc.offset < len(data)
    else:
        assert vpd.serial_number is None or vpd.serial_number.isprintable()


def test_any_change_to_the_serial_number_is_caught_by_the_checksum() -> None:
    """A corrupt serial number must never reach a DPU: every one-byte change to it is refused."""
    refused = 0
    for at in range(SN_AT, SN_AT + len(b"MT2245X00007")):
        for value in range(256):
            if value != CARD[at]:
                with pytest.raises(VpdFormatError):
                    parse_vpd(corrupt(CARD, at, value))
                refused += 1
    assert refused == 12 * 255
