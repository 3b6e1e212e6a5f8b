"""The sweep as a background thread of ``pcipass serve``: spawns that no host finished in
time fail even while no agent polls, hosts whose agent went silent are marked down
(:mod:`pcipass.store.liveness`), and the disks of moves that are over are removed (the
sweep is idempotent, so several API processes may run it at once)."""

from __future__ import annotations

import logging
import threading

from pcipass.errors import PcipassError
from pcipass.services.move_disks import MoveDisks
from pcipass.store import Store
from pcipass.store.tasks import TaskStore

log = logging.getLogger(__name__)
EVERY_S = 2.0


class Sweeper:
    def __init__(self, db_url: str, timeout: float, every: float = EVERY_S,
                 disks: MoveDisks | None = None, host_down_after: float | None = None) -> None:
        self._db_url = db_url
        self._timeout = timeout
        self._host_down_after = host_down_after
        self._disks = disks
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
                    if self._host_down_after is not None:
                        down = store.mark_hosts_down(self._host_down_after)
                        if down:
                            log.warning("host(s) %s are down: no poll or report for %g s; "
                                        "nothing new is placed there", ", ".join(down),
                                        self._host_down_after)
                    if self._disks is not None:
                        gone = self._disks.sweep(store.closed_move_ids)
                        if gone:
                            log.info("removed the handed-over disks of moves %s", gone)
                except PcipassError as exc:
                    log.warning("task sweep failed: %s", exc.message)
                except OSError as exc:     # the disks' directory; the next sweep tries again
                    log.warning("disk sweep failed: %s", exc)
        finally:
            if store is not None:
                store.close()
