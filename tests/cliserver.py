"""Shared by the issue-3 CLI tests: run ``pcipass`` commands against a real server.

Hosts are built from the demo's profiles, discovered from their simulated sysfs and reported
with the admin token, so the CLI sees the devices (and NUMA layout) the demo shows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from typer.testing import CliRunner, Result

from apiserver import ApiServer
from fleet import host_inventory
from pcipass.cli.main import app
from pcipass.pci.inventory import inventory_to_json

CLEAN_ENV: dict[str, str | None] = {
    k: None for k in ("PCIPASS_URL", "PCIPASS_TOKEN", "PCIPASS_CONFIG", "PCIPASS_STATE_DIR",
                      "PCIPASS_PCI_DEVICE_SPEC", "PCIPASS_AGENT_SYSFS_ROOT")
}


def cli(*args: str | Path, env: Mapping[str, str | None] | None = None) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], env={**CLEAN_ENV, **(env or {})})


def env_for(server: ApiServer, token: str | None = None) -> dict[str, str | None]:
    return {"PCIPASS_URL": server.url, "PCIPASS_TOKEN": token or server.admin_token}


def ok_json(result: Result) -> Any:
    """The command succeeded and printed JSON only."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def ok_text(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return " ".join(result.stdout.split())


def failed(result: Result, code: int = 1) -> str:
    """The command failed with ``code`` and a clean message on stderr; the message, one line."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    message = " ".join(result.stderr.split())
    assert message, result.output
    return message


def report_host(server: ApiServer, name: str, root: Path, profile: str) -> None:
    body = {"generation": None, **inventory_to_json(host_inventory(root, profile))}
    with server.client() as http:
        reply = http.put(f"/v1/hosts/{name}/inventory", json=body)
    assert reply.status_code == 200, reply.text


def member_token(server: ApiServer, project: str) -> str:
    with server.client() as http:
        reply = http.post("/v1/tokens", json={"role": "member", "project": project})
    assert reply.status_code == 201, reply.text
    token: str = reply.json()["token"]
    return token


def api(server: ApiServer, method: str, path: str, body: Any = None) -> httpx.Response:
    with server.client() as http:
        return http.request(method, path, json=body)
