"""The one error tree of pcipass.

Every error carries a stable ``code`` (append-only: never renamed or reused), a human
``message`` and, where one input is to blame, the ``field`` that names it. The API turns
any of them into ``{"code", "message", "field"}`` with the class's HTTP status.

    PcipassError
    ├── InvalidInput                 400/422  bad input, nothing was changed
    │   ├── InvalidAddress           a PCI address does not parse
    │   ├── InvalidDeviceSpec        a [pci] device_spec entry is refused
    │   ├── InvalidInventory         an inventory report fails validation (422)
    │   └── InvalidConfig            the configuration file or environment is wrong
    ├── AuthError                    401  no token, or one that is not known
    ├── Forbidden                    403  the caller's role may not do this
    ├── NotFound                     404
    ├── Conflict                     409
    │   └── GenerationConflict       a write raced another (stale generation)
    └── InfrastructureError          500/503 a database, sysfs or libvirt failure
        └── DiscoveryError           sysfs could not be read at all
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
