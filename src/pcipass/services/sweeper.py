"""The expiry sweep as a background thread of ``pcipass serve``: spawns that no host finished
in time fail even while no agent polls (the sweep is idempotent, so several API processes
may run it at once)."""

from __future__ import annotations

import logging
import threading

from pcipass.errors import PcipassError
from pcipass.store import Store
from pcipass.store.tasks import TaskStore

log = logging.getLogger(__name__)
EVERY_S = 2.0


class Sweeper:
    def __init__(self, db_url: str, timeout: float, every: float = EVERY_S) -> None:
        self._db_url = db_url
        self._timeout = timeout
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pcipass-task-sweeper",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        store: Store | None = None
        try:
            while not self._stop.wait(self._every):
                try:
                    if store is None:
                        store = Store.open(self._db_url, migrate=False)
                    expired = TaskStore(store, self._timeout).expire()
                    if expired:
                        log.info("failed %d spawn task(s) that ran out of time", expired)
                except PcipassError as exc:
                    log.warning("task sweep failed: %s", exc.message)
        finally:
            if store is not None:
                store.close()
