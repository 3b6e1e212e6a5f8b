"""Hypothesis strategies for the pci vocabulary, shared by every test that needs them.

``addresses`` and ``devices`` give valid values; ``hosts`` gives a consistent set of devices
(unique addresses and netdev names, every VF's parent a PF of the same host), the shape an
inventory report has.
"""

from __future__ import annotations

from hypothesis import strategies as st

from pcipass.pci.address import MAX_BUS, MAX_DOMAIN, MAX_FUNCTION, MAX_SLOT, PciAddress
from pcipass.pci.device import DevType, NetDev, PciDevice

# Most hosts have domain 0; VMD puts devices in 0x10000 and above.
domains = st.one_of(st.just(0), st.integers(0, 0xFFFF), st.integers(0x10000, MAX_DOMAIN))
buses = st.integers(0, MAX_BUS)
slots = st.integers(0, MAX_SLOT)
functions = st.integers(0, MAX_FUNCTION)


def addresses() -> st.SearchStrategy[PciAddress]:
    return st.builds(PciAddress, domains, buses, slots, functions)


def hex_ids() -> st.SearchStrategy[str]:
    """A vendor or product id as inventories carry it: four lower-case hex digits."""
    return st.integers(0, 0xFFFF).map(lambda v: f"{v:04x}")


def class_codes() -> st.SearchStrategy[str]:
    return st.sampled_from(["020000", "030000", "030200", "010802", "120000", "040300"])


def netdev_names() -> st.SearchStrategy[str]:
    return st.from_regex(r"[a-z][a-z0-9]{0,14}", fullmatch=True)


def devices(
    address: st.SearchStrategy[PciAddress] | None = None,
    dev_type: st.SearchStrategy[DevType] | None = None,
) -> st.SearchStrategy[PciDevice]:
    """A lone device (a PCI function or a PF; a VF needs a host, see :func:`hosts`)."""
    return st.builds(
        _device,
        address=address if address is not None else addresses(),
        vendor_id=hex_ids(),
        product_id=hex_ids(),
        class_code=class_codes(),
        dev_type=dev_type if dev_type is not None else st.sampled_from([DevType.PCI, DevType.PF]),
        netdev=st.none() | netdev_names(),
    )


def _device(address: PciAddress, vendor_id: str, product_id: str, class_code: str,
            dev_type: DevType, netdev: str | None, parent: PciAddress | None = None,
            ) -> PciDevice:
    return PciDevice(
        address=address,
        vendor_id=vendor_id,
        product_id=product_id,
        class_code=class_code,
        dev_type=dev_type,
        parent_addr=parent,
        total_vfs=8 if dev_type is DevType.PF else None,
        netdevs=(NetDev(netdev),) if netdev else (),
    )


@st.composite
def hosts(draw: st.DrawFn, max_devices: int = 12) -> list[PciDevice]:
    """The devices of one host: plain functions, PFs, and VFs of those PFs.

    Addresses are drawn from a small space so that globs and regexes often hit several.
    """
    small = st.builds(PciAddress, st.sampled_from([0, 0, 0, 1, 0x10000]),
                      st.integers(0, 4), st.integers(0, 3), functions)
    addrs = draw(st.lists(small, min_size=1, max_size=max_devices, unique=True))
    names = draw(st.lists(netdev_names(), min_size=len(addrs), max_size=len(addrs),
                          unique=True))
    out: list[PciDevice] = []
    pfs: list[PciAddress] = []
    for addr, name in zip(addrs, names, strict=True):
        kind = draw(st.sampled_from([DevType.PCI, DevType.PF, DevType.VF]))
        if kind is DevType.VF and not pfs:
            kind = DevType.PF
        parent = draw(st.sampled_from(pfs)) if kind is DevType.VF else None
        out.append(_device(
            addr,
            vendor_id=draw(st.sampled_from(["8086", "15b3", "10de", draw(hex_ids())])),
            product_id=draw(st.sampled_from(["1572", "154c", "1017", draw(hex_ids())])),
            class_code=draw(class_codes()),
            dev_type=kind,
            netdev=name if draw(st.booleans()) else None,
            parent=parent,
        ))
        if kind is DevType.PF:
            pfs.append(addr)
    return out


def hex_spellings(value: int, width: int) -> st.SearchStrategy[str]:
    """The ways an operator may write a hex number that Nova reads as ``value``."""
    base = f"{value:0{width}x}"
    return st.sampled_from([
        base, base.upper(), f"{value:x}", f"0x{base}", f"0X{value:X}", f"0{base}", f" {base} ",
    ])
