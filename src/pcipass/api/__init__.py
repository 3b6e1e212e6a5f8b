"""The control plane's HTTP API (``/v1``): thin routes over the store."""

from pcipass.api.app import create_app

__all__ = ["create_app"]
