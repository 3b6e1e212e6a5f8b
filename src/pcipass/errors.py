"""The one error tree of pcipass.

Every error carries a stable ``code`` (append-only: never renamed or reused), a human
``message`` and, where one input is to blame, the ``field`` that names it. The API turns
any of them into ``{"code", "message", "field"}`` with the class's HTTP status.

    PcipassError
    ├── InvalidInput                 400  bad input, nothing was changed
    │   ├── InvalidAddress           a PCI address does not parse
    │   ├── InvalidDeviceSpec        a [pci] device_spec entry is refused
    │   ├── InvalidInventory         422  an inventory report fails validation
    │   ├── InvalidConfig            the configuration file or environment is wrong
    │   ├── InvalidAlias             a [pci] alias entry is refused
    │   └── InvalidPciRequest        a flavor's or image's PCI request is malformed
    │       ├── UnknownAlias         it names an alias that does not exist
    │       └── AliasNotSupportedByImage  the image cannot drive the alias
    ├── AuthError                    401  no token, or one that is not known
    ├── Forbidden                    403  the caller's role may not do this
    │   └── QuotaExceeded            the project would hold more devices than allowed
    ├── NotFound                     404
    ├── Conflict                     409
    │   ├── GenerationConflict       a write raced another (stale generation)
    │   ├── ClaimConflict            another claim won the device first
    │   └── TaskNotRunnable          the task is done, failed or expired: do not run it
    └── InfrastructureError          503  a database, sysfs, libvirt or netlink failure
        ├── DiscoveryError           sysfs could not be read at all
        ├── ServerUnreachable        the client got no HTTP answer
        ├── VirtError                libvirt (or the fake driver) refused an operation
        └── VfProgrammingError       the PF refused a VF setting

Every class takes ``(message, field=, code=)``, so a client rebuilds any of them from an error
body.
"""

from __future__ import annotations


class PcipassError(Exception):
    """Base of every error pcipass raises on purpose."""

    code = "error"
    status = 500

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "field": self.field}

    def __str__(self) -> str:
        return self.message


class InvalidInput(PcipassError):
    code = "invalid_input"
    status = 400


class InvalidAddress(InvalidInput):
    code = "invalid_address"


class InvalidDeviceSpec(InvalidInput):
    code = "invalid_device_spec"


class InvalidInventory(InvalidInput):
    code = "invalid_inventory"
    status = 422


class InvalidConfig(InvalidInput):
    code = "invalid_config"


class AuthError(PcipassError):
    code = "unauthenticated"
    status = 401


class Forbidden(PcipassError):
    code = "forbidden"
    status = 403


class NotFound(PcipassError):
    code = "not_found"
    status = 404


class Conflict(PcipassError):
    code = "conflict"
    status = 409


class GenerationConflict(Conflict):
    code = "generation_conflict"


class InfrastructureError(PcipassError):
    code = "infrastructure"
    status = 503


class DiscoveryError(InfrastructureError):
    code = "discovery_failed"


class ServerUnreachable(InfrastructureError):
    """Raised by clients (CLI, agent) when no HTTP answer came back: worth retrying later."""

    code = "server_unreachable"


class InvalidAlias(InvalidInput):
    """A ``[pci] alias`` entry is refused (unknown key, bad value, inconsistent entries)."""

    code = "invalid_alias"


class InvalidPciRequest(InvalidInput):
    """A flavor extra spec or image property that asks for devices is malformed or conflicts."""

    code = "invalid_pci_request"


class UnknownAlias(InvalidPciRequest):
    """A flavor names a PCI alias that is not defined."""

    code = "unknown_alias"


class AliasNotSupportedByImage(InvalidPciRequest):
    """The image's ``hw_pci_supported_aliases`` does not list an alias the boot asks for."""

    code = "alias_not_supported_by_image"


class VirtError(InfrastructureError):
    """A hypervisor operation failed (libvirt, or the fake driver told to fail).

    ``operation`` names what was attempted (``define``, ``start``, ``nodedev_detach``...);
    ``driver_code`` keeps libvirt's own error number where there is one. The message carries
    the driver's words, so a spawn's fault says what libvirt said.
    """

    code = "virt_error"

    def __init__(self, message: str, *, operation: str | None = None,
                 driver_code: int | None = None, field: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, field=field, code=code)
        self.operation = operation
        self.driver_code = driver_code


class QuotaExceeded(Forbidden):
    """A boot would take a project over its device quota for an alias."""

    code = "quota_exceeded"


class ClaimConflict(Conflict):
    """A claim lost a race: a chosen device was taken, or a counter moved, meanwhile.

    The store rolls the claim back whole; the scheduler retries on the next candidate host.
    """

    code = "claim_conflict"


class VfProgrammingError(InfrastructureError):
    """Setting (or reading) an SR-IOV VF's configuration on its PF failed.

    ``pf`` and ``vf_index`` name the VF, ``attribute`` what was being set (``mac``, ``vlan``,
    ``spoofchk``, ``trust``, ``link_state``, ``rate``; None for a read), ``errno`` the kernel's
    answer where there is one. The message says all of it in words, so a spawn's fault names
    the PF and what its driver refused.
    """

    code = "vf_programming_failed"

    def __init__(self, message: str, *, pf: str | None = None, vf_index: int | None = None,
                 attribute: str | None = None, errno: int | None = None,
                 field: str | None = None, code: str | None = None) -> None:
        super().__init__(message, field=field, code=code)
        self.pf = pf
        self.vf_index = vf_index
        self.attribute = attribute
        self.errno = errno


class TaskNotRunnable(Conflict):
    """An agent asked to start a task that is already done, failed or expired."""

    code = "task_not_runnable"
