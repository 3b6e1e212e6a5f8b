"""pcipass: PCI passthrough for KVM/libvirt clouds."""

__version__ = "0.1.0"
