"""Agent tasks as use cases: who may poll, start and report which host's tasks, and the
delete flow that hands a server's end to its host (see :mod:`pcipass.store.tasks`)."""

from __future__ import annotations

from pcipass.config import Settings
from pcipass.errors import Forbidden, InvalidInput, NotFound
from pcipass.records import Principal, Role, ServerRecord
from pcipass.services.access import admin, tenant
from pcipass.store import Store
from pcipass.store.tasks import Outcome, TaskRecord, TaskStore

MAX_MESSAGE = 4000


def host_scope(p: Principal, host: str | None = None) -> str | None:
    """The host an agent is bound to (None for an admin, who reaches every host)."""
    if p.role is Role.ADMIN:
        return None
    if p.role is Role.AGENT and p.host:
        if host is not None and host != p.host:
            raise Forbidden(f"this agent token is for host {p.host!r}, not {host!r}",
                            field="host")
        return p.host
    raise Forbidden(f"a {p.role.value} token may not handle host tasks")


class Tasks:
    """Polling, starting and finishing tasks; deleting servers through them."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.queue = TaskStore(store, settings.tasks.timeout)

    def poll(self, p: Principal, host: str) -> list[TaskRecord]:
        """The host's open tasks; expired ones are failed first, so none is handed out."""
        host_scope(p, host)
        self.queue.expire(host=host)
        return self.queue.poll(host)

    def has_open(self, p: Principal, host: str) -> bool:
        host_scope(p, host)
        return self.queue.has_open(host)

    def start(self, p: Principal, task_id: str) -> TaskRecord:
        self.queue.expire()
        return self.queue.start(task_id, host=host_scope(p))

    def result(self, p: Principal, task_id: str, *, ok: bool, message: str | None,
               domain_xml: str | None) -> bool:
        scope = host_scope(p)
        if message is not None and len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE - 3] + "..."
        if not ok and domain_xml is not None:
            raise InvalidInput("a failed task has no domain XML", field="domain_xml")
        self.queue.expire()
        return self.queue.result(task_id, Outcome(ok, message, domain_xml), host=scope)

    def state(self, p: Principal, task_id: str) -> str:
        """Where the task stands: what a host's agent learns when its result was refused
        (``expired`` or ``failed``: undo what it did; ``done``: its first report was taken)."""
        return self.queue.state(task_id, host=host_scope(p))

    def expire(self) -> int:
        return self.queue.expire()

    def delete_server(self, p: Principal, ref: str, *, force: bool = False) -> ServerRecord:
        """DELETING until the host confirms (``force``, admins only: DELETED at once, the
        devices still kept until the host confirms)."""
        if force:
            admin(p, "force a delete")
        server = self.store.get_server(ref, project=tenant(p, "delete servers"))
        return self.queue.delete(server.id, force=force)

    def domain_xml(self, p: Principal, ref: str) -> str:
        admin(p, "read domain XML")
        server = self.store.get_server(ref)
        xml = self.queue.domain_xml(server.id)
        if xml is None:
            raise NotFound(f"server {server.name} ({server.id}) has no domain XML: its host "
                           f"has not started it (status {server.status.value})",
                           field="server")
        return xml
