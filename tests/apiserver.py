"""A real pcipass API server in a child process, for HTTP tests.

``python -m pcipass.server`` on a free port with a fresh bootstrap admin token; the context
manager waits for ``/v1/health``, yields an :class:`ApiServer` and stops the process (and any
uvicorn workers it started) afterwards.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from pcipass.pci.address import PciAddress
from pcipass.pci.device import DevType, HostInfo, NetDev, NumaNode, PciDevice
from pcipass.pci.inventory import Inventory, inventory_to_json

STARTUP_TIMEOUT_S = 60.0
ERROR_KEYS = {"code", "message", "field"}


@dataclass(frozen=True)
class ApiServer:
    url: str
    admin_token: str
    db_url: str
    log_path: Path
    pid: int

    def client(self, token: str | None = None, *, admin: bool = True) -> httpx.Client:
        """An httpx client on the server; the admin token unless ``token`` or ``admin=False``."""
        token = token if token is not None else (self.admin_token if admin else None)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _server_env(state_dir: Path, admin_token: str, extra: Mapping[str, str]) -> dict[str, str]:
    # Settings from the developer's shell must not leak into the server under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PCIPASS_")}
    env.update({"PCIPASS_STATE_DIR": str(state_dir), "PCIPASS_ADMIN_TOKEN": admin_token})
    env.update(extra)
    return env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    # Workers share the session we started; make sure none outlives the test.
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> bool:
    """True once healthy; False if the port was taken (worth another port); else raise."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = log_path.read_text(errors="replace")
            if "address already in use" in log.lower():
                return False
            raise RuntimeError(f"pcipass server exited with {proc.returncode}:\n{log[-4000:]}")
        try:
            if httpx.get(f"{url}/v1/health", timeout=1.0).status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"pcipass server not healthy after {STARTUP_TIMEOUT_S}s:\n"
                       f"{log_path.read_text(errors='replace')[-4000:]}")


@contextmanager
def api_server(db_url: str, work_dir: Path, *, workers: int = 1,
               env: Mapping[str, str] | None = None) -> Iterator[ApiServer]:
    """Serve ``db_url``; ``env`` adds to (and wins over) the server's environment, so a test
    may fix ``PCIPASS_ADMIN_TOKEN`` itself."""
    admin_token = (env or {}).get("PCIPASS_ADMIN_TOKEN") or secrets.token_urlsafe(32)
    work_dir.mkdir(parents=True, exist_ok=True)
    tries = 3
    for _ in range(tries):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = work_dir / f"server-{port}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pcipass.server", "--db", db_url,
                 "--listen", f"127.0.0.1:{port}", "--workers", str(workers)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=_server_env(work_dir / "state", admin_token, env or {}),
                start_new_session=True,
            )
        try:
            if not _wait_healthy(proc, url, log_path):
                continue
            yield ApiServer(url=url, admin_token=admin_token, db_url=db_url,
                            log_path=log_path, pid=proc.pid)
            return
        finally:
            _stop(proc)
    raise RuntimeError(f"no free port for the pcipass server after {tries} tries")


def assert_error(reply: httpx.Response, status: int, code: str,
                 field: str | None = None) -> dict[str, Any]:
    """The error body is the same everywhere: code, message, field; nothing more."""
    assert reply.status_code == status, reply.text
    body: dict[str, Any] = reply.json()
    assert set(body) == ERROR_KEYS, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    if field is not None:
        assert body["field"] == field, body
    return body


# --- reports to send ------------------------------------------------------------------------

def gpu(addr: str, *, numa: int = 0, assignable: bool = True, product: str = "20b5") -> PciDevice:
    a = PciAddress.parse(addr)
    return PciDevice(address=a, vendor_id="10de", product_id=product, class_code="030200",
                     numa_node=numa, iommu_group=a.bus, iommu_group_members=(a,),
                     driver="vfio-pci", assignable=assignable)


def nic(pf_addr: str, vfs: int, *, physnet: str = "physnet1") -> list[PciDevice]:
    """An SR-IOV NIC: its PF (not handed out) and ``vfs`` VFs tagged with a physical network."""
    pf = PciAddress.parse(pf_addr)
    out = [PciDevice(address=pf, vendor_id="8086", product_id="1572", class_code="020000",
                     dev_type=DevType.PF, total_vfs=64, num_vfs=vfs, numa_node=1,
                     driver="i40e", netdevs=(NetDev("ens1f0", "3c:fd:fe:00:00:01"),))]
    for i in range(vfs):
        addr = PciAddress(pf.domain, pf.bus, 2 + i // 8, i % 8)
        out.append(PciDevice(address=addr, vendor_id="8086", product_id="154c",
                             class_code="020000", dev_type=DevType.VF, parent_addr=pf,
                             vf_index=i, numa_node=1, driver="iavf", assignable=True,
                             tags={"physical_network": physnet}))
    return out


def inventory(devices: list[PciDevice] | None = None) -> Inventory:
    """A two-socket host with two GPUs and a NIC with four VFs, unless told otherwise."""
    if devices is None:
        devices = [gpu("0000:3b:00.0"), gpu("0000:5e:00.0"), *nic("0000:af:00.0", 4)]
    host = HostInfo(hostname="compute", cpus=8, memory_mb=65536, numa_nodes=(
        NumaNode(0, (0, 1, 2, 3), 32768), NumaNode(1, (4, 5, 6, 7), 32768)))
    return Inventory(host=host, devices=tuple(devices))


def report(inv: Inventory, generation: int | None) -> dict[str, Any]:
    """The PUT body, exactly as an agent sends it."""
    return {"generation": generation, **inventory_to_json(inv)}
