"""Retained records of finished jobs (protocol.md, "job-info", "peek-result").

A job that completes or dies (`dead-letter delete`) in a tube with `retain` above 0
leaves a record here: the job object itself with its body dropped, its state
COMPLETED or DEAD, `tube` a `TubeRef` (the tube may be gone), `deadline` the
monotonic moment the record expires and `file` the log segment holding it. The
record's attempts, failures and result stay in the lifecycle's histories.
Expiry sits in one heap so the engine's single timer covers it.
Imports: stdlib only.
"""

import heapq
import math


class TubeRef:
    """Stands in for a tube in a retained record: only the name is kept."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class Ledger:
    def __init__(self):
        self.records = {}         # id -> retained job record
        self._expiry = []         # heap of (expires, id)
        self.index = None         # listing.LedgerIndex once finished jobs were listed

    def __len__(self) -> int:
        return len(self.records)

    def get(self, job_id: int):
        return self.records.get(job_id)

    def keep(self, record, expires: float) -> None:
        record.deadline = expires
        self.records[record.id] = record
        heapq.heappush(self._expiry, (expires, record.id))
        if self.index is not None:
            self.index.add(record)

    def listing(self):
        """The ordered view for list-jobs, made on first use."""
        if self.index is None:
            from qserver.listing import LedgerIndex
            self.index = LedgerIndex(self.records.values())
        return self.index

    def next_expiry(self) -> float:
        heap = self._expiry
        return heap[0][0] if heap else math.inf

    def expire(self, now: float) -> list:
        """Drop and return the records whose time has come."""
        gone = []
        heap = self._expiry
        while heap and heap[0][0] <= now:
            expires, job_id = heapq.heappop(heap)
            record = self.records.get(job_id)
            if record is not None and record.deadline == expires:
                del self.records[job_id]
                gone.append(record)
                if self.index is not None:
                    self.index.discard(record)
        return gone
