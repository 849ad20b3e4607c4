"""An API replica's in-process memory of committed releases and of each class's spend.

A repeated query is answered from the ledger's stored release (never new noise). Reading
that release and summing the class's spend from the ledger on every request costs more
than the rest of the request together, and the sum grows with the day's entries; this
module keeps both in memory without weakening what the ledger guarantees:

* Only committed releases enter it: an entry read back from the ledger, or the one a
  commit returned after its transaction committed. A release is never revealed before
  its ledger entry exists, whichever replica asks.
* A committed release never changes: the ledger is append-only and holds one entry per
  (class, data version) (``UNIQUE``), so a release remembered here is the one every
  replica sharing the ledger reads. A miss is not remembered: the next request asks the
  ledger again, and so sees what another replica committed meanwhile.
* The spend is exact: it adds the entries committed since the last read (the ledger's
  ``spent_after``, an index range), so commits made by other replicas count at once.
  It is recounted in full every ``recount_seconds`` all the same, which bounds how long
  a shown spend could miss an entry made visible out of id order (possible only while a
  class moves to another data product, whose commits are serialised under another key);
  the ledger's own check at commit never reads this memory.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from dashboards_api.ledger import LedgerEntry, ReleaseLedger


@dataclass
class _Spend:
    """A class's spend in one period up to entry ``last_id``, counted at ``counted_at``."""

    micro: int
    last_id: int
    counted_at: float


class CommittedReleases:
    """Committed releases by (class, data version), least recently used dropped first,
    and each class's spend per period, over ``ledger``."""

    def __init__(
        self,
        ledger: ReleaseLedger,
        capacity: int = 8_192,
        recount_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1 release, got {capacity}")
        if recount_seconds <= 0:
            raise ValueError(f"recount_seconds must be positive, got {recount_seconds}")
        self.ledger = ledger
        self.capacity = capacity
        self.recount_seconds = recount_seconds
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], LedgerEntry] = OrderedDict()
        self._spend: dict[tuple[str, str], _Spend] = {}
        self._lock = threading.Lock()  # the event loop and the thread pool both use it

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, class_id: str, data_version: str) -> LedgerEntry | None:
        """The committed release of (class, version): remembered, else read from the
        ledger (and remembered when found); None when the ledger has none."""
        key = (class_id, data_version)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                return entry
        entry = self.ledger.find(class_id, data_version)
        if entry is not None:
            self.committed(entry)
        return entry

    def committed(self, entry: LedgerEntry) -> None:
        """Remember ``entry``, which the ledger has committed (read back, or returned by a
        commit whose transaction is over)."""
        key = (entry.class_id, entry.data_version)
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def spent(self, class_id: str, period: str) -> int:
        """Micro-epsilon ``class_id`` has spent in ``period``, as the ledger holds it now."""
        key = (class_id, period)
        now = self.clock()
        with self._lock:
            known = self._spend.get(key)
        if known is None or now - known.counted_at >= self.recount_seconds:
            micro, last_id = self.ledger.spent_after(class_id, period, 0)
            fresh = _Spend(micro, last_id, now)
        else:
            more, last_id = self.ledger.spent_after(class_id, period, known.last_id)
            fresh = _Spend(known.micro + more, last_id, known.counted_at)
        with self._lock:
            current = self._spend.get(key)
            # Another thread may have counted further meanwhile: keep the newer count.
            if current is None or current.last_id <= fresh.last_id:
                self._spend[key] = fresh
                if len(self._spend) > self.capacity:
                    self._spend.pop(next(iter(self._spend)))
            else:
                fresh = current
        return fresh.micro
