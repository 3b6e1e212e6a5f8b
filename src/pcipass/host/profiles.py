"""Realistic servers to simulate: the demo's hosts, and fixtures for tests and benchmarks.

Each profile writes a whole host into a :class:`SysfsTree` with real vendor/product ids and a
plausible Ice Lake-SP topology (root ports, an ASPEED BMC, an onboard I350, a boot NVMe), and
carries the Nova ``[pci] device_spec`` (and ``[pci] alias``) an operator would write for it.
``index`` varies what differs between otherwise identical machines (MACs), so many hosts can be
built from one profile.

    gpu-server        4 x A100 PCIe + 2 x RTX A6000 (GPU + HDMI audio in one IOMMU group)
    sriov-nic-server  E810-C and ConnectX-6 PFs on physnet1/physnet2, 8 VFs each; an E810-XXV
                      uplink with SR-IOV capable but off (a PF with 0 VFs)
    storage-server    4 x Samsung PM9A3 + 4 x Intel P4510 NVMe, one bound to the host, one unbound
    vmd-host          NVMe behind an Intel VMD controller (domain 10000, no IOMMU group, no or
                      -1 NUMA node) beside an ordinary passthrough NVMe
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pcipass.errors import InvalidInput
from pcipass.host.sysfs_tree import FakeDevice, FakeNetDev, FakeSriov, SysfsTree
from pcipass.pci.vpd import encode_vpd

SpecEntry = dict[str, str]

# Class codes (PCI "class" attribute, 24 bits).
HOST_BRIDGE = "060000"
PCI_BRIDGE = "060400"
VGA = "030000"
GPU_3D = "030200"
AUDIO = "040300"
ETHERNET = "020000"
NVME = "010802"
RAID = "010400"

INTEL = "8086"
NVIDIA = "10de"
MELLANOX = "15b3"
SAMSUNG = "144d"
ASPEED = "1a03"

ROOT_PORT = "347a"  # Ice Lake-SP PCIe root port


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    description: str
    build: Callable[[SysfsTree, int], None]
    device_spec: tuple[SpecEntry, ...]  # Nova [pci] device_spec entries, JSON-ready
    aliases: tuple[SpecEntry, ...] = ()  # Nova [pci] alias entries that fit the device spec


def _mac(oui: str, index: int, port: int) -> str:
    return f"{oui}:{(index >> 8) & 0xFF:02x}:{index & 0xFF:02x}:{port & 0xFF:02x}"


def _vf_mac_base(index: int, pf: int) -> str:
    """Locally administered MACs for VFs: ``02:<host>:<host>:<pf>:<vf>:<vf>``."""
    return f"02:{(index >> 8) & 0xFF:02x}:{index & 0xFF:02x}:{pf & 0xFF:02x}:00:00"


def _numa(tree: SysfsTree, nodes: int, cores_per_node: int, memory_mb_per_node: int) -> None:
    """Nodes with hyper-threads numbered the Linux way: node 0 = 0-31,64-95 for 2 x 32."""
    total = nodes * cores_per_node
    for n in range(nodes):
        first = n * cores_per_node
        cpus = [*range(first, first + cores_per_node),
                *range(total + first, total + first + cores_per_node)]
        tree.add_numa_node(n, cpus, memory_mb_per_node)
    tree.write_proc_meminfo(nodes * memory_mb_per_node)


def _root_port(tree: SysfsTree, addr: str, numa: int | None) -> None:
    tree.add_device(FakeDevice(addr, INTEL, ROOT_PORT, PCI_BRIDGE, numa_node=numa,
                               iommu_group=tree.next_iommu_group(), driver="pcieport"))


def _platform(tree: SysfsTree, index: int, *, boot_nvme: tuple[str, str] = (SAMSUNG, "a808"),
              ) -> None:
    """What every server here has on socket 0: host bridge, BMC VGA, onboard NICs, boot disk."""
    tree.add_device(FakeDevice("0000:00:00.0", INTEL, "09a2", HOST_BRIDGE, numa_node=0,
                               iommu_group=tree.next_iommu_group()))
    _root_port(tree, "0000:00:1c.0", 0)
    tree.add_device(FakeDevice("0000:01:00.0", *boot_nvme, NVME, subsystem_product_id="a801",
                               numa_node=0, iommu_group=tree.next_iommu_group(), driver="nvme",
                               bridge="0000:00:1c.0"))
    _root_port(tree, "0000:00:1c.4", 0)
    bmc_group = tree.next_iommu_group()  # a PCIe-to-PCI bridge: no ACS, one group with the VGA
    tree.add_device(FakeDevice("0000:02:00.0", ASPEED, "1150", PCI_BRIDGE, numa_node=0,
                               iommu_group=bmc_group, bridge="0000:00:1c.4"))
    tree.add_device(FakeDevice("0000:03:00.0", ASPEED, "2000", VGA, numa_node=0,
                               iommu_group=bmc_group, driver="ast", bridge="0000:02:00.0"))
    _root_port(tree, "0000:00:1c.5", 0)
    for fn in (0, 1):
        tree.add_device(FakeDevice(
            f"0000:04:00.{fn}", INTEL, "1521", ETHERNET, subsystem_product_id="00a3",
            numa_node=0, iommu_group=tree.next_iommu_group(), driver="igb",
            bridge="0000:00:1c.5",
            netdevs=(FakeNetDev(f"eno{fn + 1}", _mac("3c:ec:ef", index, fn)),),
        ))


# --- gpu-server ------------------------------------------------------------------------

A100 = "20f1"
RTX_A6000 = "2230"
RTX_A6000_AUDIO = "1aef"


def build_gpu_server(tree: SysfsTree, index: int = 0) -> None:
    _numa(tree, 2, 32, 262144)
    _platform(tree, index)
    slots = [  # (root port, GPU address, NUMA node, model, driver)
        ("0000:16:02.0", "0000:17:00.0", 0, A100, "vfio-pci"),
        ("0000:30:02.0", "0000:31:00.0", 0, A100, "vfio-pci"),
        ("0000:4a:02.0", "0000:4b:00.0", 0, RTX_A6000, "vfio-pci"),
        ("0000:97:02.0", "0000:98:00.0", 1, A100, "vfio-pci"),
        ("0000:b0:02.0", "0000:b1:00.0", 1, A100, "vfio-pci"),
        ("0000:c9:02.0", "0000:ca:00.0", 1, RTX_A6000, "nvidia"),
    ]
    for port, gpu, node, model, driver in slots:
        _root_port(tree, port, node)
        group = tree.next_iommu_group()
        if model == A100:
            tree.add_device(FakeDevice(gpu, NVIDIA, A100, GPU_3D, subsystem_product_id="145f",
                                       numa_node=node, iommu_group=group, driver=driver,
                                       bridge=port))
            continue
        # A display GPU: function .0 the VGA controller, .1 its HDMI audio, one group.
        tree.add_device(FakeDevice(gpu, NVIDIA, RTX_A6000, VGA, subsystem_product_id="1459",
                                   numa_node=node, iommu_group=group, driver=driver,
                                   bridge=port))
        audio_driver = "vfio-pci" if driver == "vfio-pci" else "snd_hda_intel"
        tree.add_device(FakeDevice(gpu[:-1] + "1", NVIDIA, RTX_A6000_AUDIO, AUDIO,
                                   subsystem_product_id="1459", numa_node=node,
                                   iommu_group=group, driver=audio_driver, bridge=port))


GPU_SPEC: tuple[SpecEntry, ...] = (
    {"vendor_id": NVIDIA, "product_id": A100},
    {"vendor_id": NVIDIA, "product_id": RTX_A6000},
    {"vendor_id": NVIDIA, "product_id": RTX_A6000_AUDIO},
)
GPU_ALIASES: tuple[SpecEntry, ...] = (
    {"name": "a100", "vendor_id": NVIDIA, "product_id": A100, "device_type": "type-PCI",
     "numa_policy": "preferred"},
    {"name": "a6000", "vendor_id": NVIDIA, "product_id": RTX_A6000, "device_type": "type-PCI"},
)


# --- sriov-nic-server ------------------------------------------------------------------

E810_C = "1592"
E810_XXV = "159b"
E810_VF = "1889"
CX6 = "101b"
CX6_VF = "101c"


def build_sriov_nic_server(tree: SysfsTree, index: int = 0, *, vfs_per_pf: int = 8) -> None:
    _numa(tree, 2, 32, 262144)
    _platform(tree, index)
    pf_ordinal = 0

    def card(port: str, bus: str, node: int, vendor: str, pf_id: str, subsys: str,
             driver: str, total_vfs: int, offsets: tuple[int, int], vf_id: str,
             vf_driver: str, ifnames: tuple[str, str], oui: str, enable: int,
             product: str, serial: str) -> None:
        nonlocal pf_ordinal
        _root_port(tree, port, node)
        # Both ports of a card read the same EEPROM: one serial number per card.
        vpd = encode_vpd(product, {"PN": f"{pf_id.upper()}-{subsys}", "SN": serial, "V0": "0"})
        for fn in (0, 1):
            addr = f"{bus}:00.{fn}"
            sriov = FakeSriov(total_vfs=total_vfs, vf_product_id=vf_id, vf_driver=vf_driver,
                              first_vf_offset=offsets[fn], vf_netdevs=True,
                              vf_mac_base=_vf_mac_base(index, pf_ordinal))
            tree.add_device(FakeDevice(
                addr, vendor, pf_id, ETHERNET, subsystem_product_id=subsys, numa_node=node,
                iommu_group=tree.next_iommu_group(), driver=driver, bridge=port,
                netdevs=(FakeNetDev(ifnames[fn], _mac(oui, index, 0x10 + pf_ordinal)),),
                sriov=sriov, vpd=vpd,
            ))
            if enable:
                tree.enable_vfs(addr, enable)
            pf_ordinal += 1

    # E810-C, socket 0: VFs of port 0 start at 3b:01.0, of port 1 after port 0's 128.
    card("0000:3a:02.0", "0000:3b", 0, INTEL, E810_C, "0002", "ice", 128, (8, 135),
         E810_VF, "iavf", ("ens1f0", "ens1f1"), "b4:96:91", vfs_per_pf,
         "Intel(R) Ethernet Network Adapter E810-C-Q2", f"B49691{index:04X}10")
    # E810-XXV uplink for the host itself: SR-IOV capable, no VFs.
    card("0000:5d:02.0", "0000:5e", 0, INTEL, E810_XXV, "0003", "ice", 64, (8, 71),
         E810_VF, "iavf", ("ens3f0", "ens3f1"), "b4:96:91", 0,
         "Intel(R) Ethernet Network Adapter E810-XXV-2", f"B49691{index:04X}12")
    # ConnectX-6, socket 1: VFs right after the two PFs (af:00.2 ...).
    card("0000:ae:02.0", "0000:af", 1, MELLANOX, CX6, "0083", "mlx5_core", 16, (2, 17),
         CX6_VF, "mlx5_core", ("ens2f0", "ens2f1"), "0c:42:a1", vfs_per_pf,
         "ConnectX-6 Dx EN adapter card, 100GbE, Dual-port QSFP56", f"MT2245X{index:05d}")


SRIOV_SPEC: tuple[SpecEntry, ...] = (
    # By PF address (with the VF product id: the PF's VFs, not the PF itself) ...
    {"vendor_id": INTEL, "product_id": E810_VF, "address": "0000:3b:00.0",
     "physical_network": "physnet1"},
    {"vendor_id": MELLANOX, "product_id": CX6_VF, "address": "0000:af:00.0",
     "physical_network": "physnet1", "trusted": "true"},
    # ... and by PF netdev name: every VF of that PF.
    {"devname": "ens1f1", "physical_network": "physnet2"},
    {"devname": "ens2f1", "physical_network": "physnet2"},
)


# --- storage-server --------------------------------------------------------------------

PM9A3 = "a80a"
P4510 = "0a54"


def build_storage_server(tree: SysfsTree, index: int = 0) -> None:
    _numa(tree, 2, 24, 196608)
    _platform(tree, index)
    # (root port, drive, node, vendor, product, subsystem, driver)
    drives: list[tuple[str, str, int, str, str, str, str | None]] = [
        *((f"0000:16:0{2 + i}.0", f"0000:{0x17 + i:02x}:00.0", 0, SAMSUNG, PM9A3, "a813",
           "vfio-pci") for i in range(4)),
        *((f"0000:97:0{2 + i}.0", f"0000:{0x98 + i:02x}:00.0", 1, INTEL, P4510, "4802",
           "vfio-pci") for i in range(4)),
    ]
    drives[3] = (*drives[3][:6], "nvme")  # one drive the host itself mounts
    drives[7] = (*drives[7][:6], None)  # one freshly unbound, not yet given to vfio-pci
    for port, drive, node, vendor, product, subsys, driver in drives:
        _root_port(tree, port, node)
        tree.add_device(FakeDevice(drive, vendor, product, NVME, subsystem_product_id=subsys,
                                   numa_node=node, iommu_group=tree.next_iommu_group(),
                                   driver=driver, bridge=port))


STORAGE_SPEC: tuple[SpecEntry, ...] = (
    {"vendor_id": SAMSUNG, "product_id": PM9A3},
    {"vendor_id": INTEL, "product_id": P4510},
)
STORAGE_ALIASES: tuple[SpecEntry, ...] = (
    {"name": "nvme-pm9a3", "vendor_id": SAMSUNG, "product_id": PM9A3, "device_type": "type-PCI"},
    {"name": "nvme-p4510", "vendor_id": INTEL, "product_id": P4510, "device_type": "type-PCI"},
)


# --- vmd-host --------------------------------------------------------------------------

VMD = "28c0"
VMD_DOMAIN = 0x10000


def build_vmd_host(tree: SysfsTree, index: int = 0) -> None:
    _numa(tree, 2, 16, 131072)
    _platform(tree, index)
    # The VMD controller is an integrated endpoint on socket 0's root bus 64.
    vmd = "0000:64:05.5"
    tree.add_device(FakeDevice(vmd, INTEL, VMD, RAID, numa_node=0,
                               iommu_group=tree.next_iommu_group(), driver="vmd"))
    tree.add_vmd_domain(vmd, VMD_DOMAIN)
    # Behind it: its own PCI domain, no IOMMU groups (DMA carries the VMD's requester id),
    # and NUMA affinity the platform does not describe.
    for i, numa_file in enumerate((True, False)):
        port = f"10000:00:0{2 + i}.0"
        tree.add_device(FakeDevice(port, INTEL, ROOT_PORT, PCI_BRIDGE, driver="pcieport"))
        tree.add_device(FakeDevice(f"10000:{1 + i:02x}:00.0", INTEL, P4510, NVME,
                                   subsystem_product_id="4802", numa_file=numa_file,
                                   driver="nvme", bridge=port))
    # An ordinary NVMe on socket 1 that VFIO can isolate.
    _root_port(tree, "0000:b0:02.0", 1)
    tree.add_device(FakeDevice("0000:b1:00.0", INTEL, P4510, NVME, subsystem_product_id="4802",
                               numa_node=1, iommu_group=tree.next_iommu_group(),
                               driver="vfio-pci", bridge="0000:b0:02.0"))


VMD_SPEC: tuple[SpecEntry, ...] = ({"vendor_id": INTEL, "product_id": P4510},)


# --- registry --------------------------------------------------------------------------

PROFILES: dict[str, Profile] = {
    p.name: p for p in (
        Profile("gpu-server", "2 sockets, 4 x NVIDIA A100 PCIe and 2 x RTX A6000 with audio",
                build_gpu_server, GPU_SPEC, GPU_ALIASES),
        Profile("sriov-nic-server", "2 sockets, Intel E810 and Mellanox ConnectX-6 PFs on "
                "physnet1/physnet2 with 8 VFs each", build_sriov_nic_server, SRIOV_SPEC),
        Profile("storage-server", "2 sockets, 4 x Samsung PM9A3 and 4 x Intel P4510 NVMe",
                build_storage_server, STORAGE_SPEC, STORAGE_ALIASES),
        Profile("vmd-host", "NVMe behind Intel VMD (domain 10000) and one ordinary NVMe",
                build_vmd_host, VMD_SPEC),
    )
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise InvalidInput(
            f"unknown host profile {name!r} (known: {', '.join(sorted(PROFILES))})",
            field="profile",
        ) from None


def build_host(root: Path, profile: str, *, index: int = 0) -> SysfsTree:
    """Write host number ``index`` of ``profile`` under ``root``; the tree stays editable."""
    chosen = get_profile(profile)
    tree = SysfsTree(Path(root))
    chosen.build(tree, index)
    return tree


def suggested_device_spec(profile: str) -> list[SpecEntry]:
    """The Nova ``[pci] device_spec`` entries an operator would write for ``profile``."""
    return [dict(e) for e in get_profile(profile).device_spec]


def suggested_aliases(profile: str) -> list[SpecEntry]:
    return [dict(e) for e in get_profile(profile).aliases]


# --- scale -----------------------------------------------------------------------------

def build_sriov_scale(tree: SysfsTree, *, pfs: int = 4, vfs_per_pf: int = 256,
                      total_vfs: int | None = None, index: int = 0) -> None:
    """A host with ``pfs`` E810 PFs of ``vfs_per_pf`` VFs each, for benchmarks (not a profile:
    4 x 256 VFs is ~10k files). ``total_vfs`` above ``vfs_per_pf`` leaves room to add VFs."""
    if not 1 <= pfs <= 6:
        raise ValueError("pfs must be 1 to 6 (each PF takes 0x20 buses)")
    _numa(tree, 2, 32, 262144)
    _platform(tree, index)
    for k in range(pfs):
        bus = 0x17 + 0x20 * k
        port = f"0000:{bus - 1:02x}:02.0"
        node = 0 if k < (pfs + 1) // 2 else 1
        _root_port(tree, port, node)
        addr = f"0000:{bus:02x}:00.0"
        tree.add_device(FakeDevice(
            addr, INTEL, E810_C, ETHERNET, subsystem_product_id="0002", numa_node=node,
            iommu_group=tree.next_iommu_group(), driver="ice", bridge=port,
            netdevs=(FakeNetDev(f"ens{k + 1}f0", _mac("b4:96:91", index, 0x10 + k)),),
            sriov=FakeSriov(total_vfs=max(total_vfs or vfs_per_pf, 1), vf_product_id=E810_VF,
                            vf_driver="iavf", first_vf_offset=8, vf_netdevs=True,
                            vf_mac_base=_vf_mac_base(index, k)),
            vpd=encode_vpd("Intel(R) Ethernet Network Adapter E810-C-Q1",
                           {"PN": "E810CQDA1", "SN": f"B49691{index:04X}{0x20 + k:02X}"}),
        ))
        if vfs_per_pf:
            tree.enable_vfs(addr, vfs_per_pf)
