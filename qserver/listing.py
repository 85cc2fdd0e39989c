"""Ordered, pageable views of a tube's jobs for `list-jobs` (protocol.md, "list-jobs").

The ready heap cannot be paged, so a tube gets a `TubeIndex` (sorted lists, from
`sortedcontainers`) the first time it is listed, built from its current jobs, and the
tube keeps it up to date from then on; tubes nobody lists never pay for one, and
`sortedcontainers` is imported only then. A page is a bisect and a slice:
O(limit + log n). Cursors carry the position itself (the sort key of the last job
shown), so paging stays correct while jobs come and go: a job that did not move is
shown exactly once.
Imports: `job`, `errors`, stdlib (`sortedcontainers` when first used).
"""

import math
import time

from qserver.errors import BadFormat
from qserver.flush import CHUNK, SLICE_SECONDS, hides
from qserver.job import BURIED, COMPLETED, DEAD, DELAYED, HELD, READY, RESERVED

MAX_LIMIT = 1000
# list-jobs states in the order `all` walks them, with their cursor letters.
STATES = (("ready", READY, "r"), ("delayed", DELAYED, "d"), ("reserved", RESERVED, "s"),
          ("buried", BURIED, "b"), ("held", HELD, "h"), ("completed", COMPLETED, "c"),
          ("dead", DEAD, "x"))
_BY_NAME = {name: (state, letter) for name, state, letter in STATES}
_BY_LETTER = {letter: state for _, state, letter in STATES}


class TubeIndex:
    """A tube's live jobs by state, each list in the state's own order: ready by
    (pri, id), delayed by due time, reserved by TTR deadline, buried by bury order,
    held by id. Entries are the sort keys; the job id is the last element of each.

    It starts empty with a copy of the tube's lists (a C-speed copy) to add a slice
    at a time (`build_step`), so a million jobs do not hold the loop for the two
    seconds adding them takes; the tube's hooks (add, discard) keep it current from
    the start, and each copied entry is added only if it still describes its job
    and is not there already. Pages wait until `pending` is done (`waiters`)."""

    __slots__ = ("lists", "pending", "waiters")

    def __init__(self, engine, tube):
        from sortedcontainers import SortedList
        self.lists = {state: SortedList() for state in (READY, DELAYED, RESERVED,
                                                         BURIED, HELD)}
        self.pending = _copied_entries(engine, tube)
        self.waiters = []           # called once the index is complete

    @property
    def built(self) -> bool:
        return self.pending is None

    def add(self, state: int, key) -> None:
        self.lists[state].add(key)

    def discard(self, state: int, key) -> None:
        self.lists[state].discard(key)

    def take(self, states) -> list:
        """flush-tube: hand over those states' lists (emptied in slices by the
        flush) and start empty ones."""
        from sortedcontainers import SortedList
        taken = [self.lists[state] for state in states]
        for state in states:
            self.lists[state] = SortedList()
        return taken

    def build_step(self, engine, tube, stop: float) -> bool:
        """Add copied entries until perf_counter() passes `stop`; True when done."""
        lists, jobs = self.lists, engine.jobs
        flushing = tube.flushes
        clock = time.perf_counter
        for state, chunk in self.pending:
            found = lists[state]
            for key in chunk:
                job = jobs.get(key[-1])
                if job is not None and job.tube is tube and job.state == state \
                        and _sort_key(job) == key and key not in found \
                        and not (flushing and hides(job)):
                    found.add(key)
            if clock() > stop:
                return False
        self.pending = None
        return True


def _copied_entries(engine, tube):
    """(state, [sort keys]) chunks of what the tube holds now. The lists are
    copied at once (C-speed copies: a few ms for a million) and turned into sort
    keys a chunk at a time, so no slice does more than CHUNK of either."""
    copies = [(READY, ids, _ready_keys(pri)) for pri, ids in tube.ready_keys()]
    copies += [(DELAYED, list(tube.delayed), list),
               (BURIED, list(tube.buried.values()), _buried_keys)]
    reserved = [(job.deadline, job.id) for job in engine.reserved_in(tube)]
    held = [(job.id, job.id) for job in engine.steering.held_in(tube)]
    for state, entries, keys_of in copies:
        for start in range(0, len(entries), CHUNK):
            yield state, keys_of(entries[start:start + CHUNK])
    for state, keys in ((RESERVED, reserved), (HELD, held)):
        for start in range(0, len(keys), CHUNK):
            yield state, keys[start:start + CHUNK]


def _ready_keys(pri: int):
    """The sort keys of a chunk of one priority's ready ids."""
    return lambda ids: [(pri, job_id) for job_id in ids]


def _buried_keys(jobs: list) -> list:
    return [(job.bury_seq, job.id) for job in jobs]


def _sort_key(job) -> tuple:
    state = job.state
    if state == READY:
        return (job.pri, job.id)
    if state == BURIED:
        return (job.bury_seq, job.id)
    if state == HELD:
        return (job.id, job.id)
    return (job.deadline, job.id)           # delayed: due time; reserved: TTR deadline


def index_of(engine, tube) -> TubeIndex:
    """The tube's index, started now if it has none (its first slice runs at once,
    which completes it for all but big tubes); without a loop it completes here."""
    index = tube.index
    if index is None:
        index = tube.index = TubeIndex(engine, tube)
        if engine.call_soon is None:
            index.build_step(engine, tube, math.inf)
        else:
            _build_turn(engine, tube, index)
    return index


def _build_turn(engine, tube, index) -> None:
    if not index.build_step(engine, tube, time.perf_counter() + SLICE_SECONDS):
        engine.call_soon(_build_turn, engine, tube, index)
        return
    waiters, index.waiters = index.waiters, []
    for waiter in waiters:
        waiter()


class LedgerIndex:
    """Retained records by expiry (finish time plus the tube's `retain`), per state
    and tube name, built on the first listing of finished jobs."""

    def __init__(self, records):
        from sortedcontainers import SortedList
        self.lists = {}
        self._sorted = SortedList
        for record in records:
            self.add(record)

    def _list(self, record):
        key = (record.state, record.tube.name)
        found = self.lists.get(key)
        if found is None:
            found = self.lists[key] = self._sorted()
        return found

    def add(self, record) -> None:
        self._list(record).add((record.deadline, record.id))

    def discard(self, record) -> None:
        found = self.lists.get((record.state, record.tube.name))
        if found is not None:
            found.discard((record.deadline, record.id))
            if not found:
                del self.lists[(record.state, record.tube.name)]


# -- requests ----------------------------------------------------------------------

def parse_request(state_name: str, cursor: str, limit: int) -> tuple:
    """(states to walk, (state, key) to start after or None, limit); BAD_FORMAT if
    wrong."""
    if not 1 <= limit <= MAX_LIMIT:
        raise BadFormat
    if state_name == "all":
        states = [state for _, state, _ in STATES]
    elif state_name in _BY_NAME:
        states = [_BY_NAME[state_name][0]]
    else:
        raise BadFormat
    if cursor == "0":
        return states, None, limit
    letter, _, rest = cursor.partition(":")
    state = _BY_LETTER.get(letter)
    if state is None or state not in states:
        raise BadFormat
    try:
        first, second = rest.split(":")
        after = (float(first) if "." in first or "e" in first else int(first), int(second))
    except ValueError:
        raise BadFormat from None
    return states[states.index(state):], (state, after), limit


def cursor_text(state: int, key: tuple) -> str:
    letter = next(letter for _, s, letter in STATES if s == state)
    return f"{letter}:{key[0]!r}:{key[1]}"


def page(lists_by_state, states: list, after, limit: int) -> tuple:
    """Up to `limit` (state, key) entries after the cursor, walking `states` in
    order; returns (entries, cursor of the next page or None)."""
    entries = []
    for state in states:
        found = lists_by_state(state)
        if found is None:
            continue
        start = 0
        if after is not None and after[0] == state:
            start = found.bisect_right(after[1])
        for key in found.islice(start, start + limit - len(entries)):
            entries.append((state, key))
        if len(entries) == limit:
            last_state, last_key = entries[-1]
            more = found.bisect_right(last_key) < len(found) or \
                any(lists_by_state(s) for s in states[states.index(state) + 1:])
            return entries, cursor_text(last_state, last_key) if more else None
    return entries, None


def list_jobs(engine, tube_name: str, state_name: str, cursor: str, limit: int) -> tuple:
    """One page of list-jobs on an engine without a loop (its index completes at
    once): (jobs or retained records, next cursor or None)."""
    return page_of(engine, tube_name, parse_request(state_name, cursor, limit))


def page_of(engine, tube_name: str, request: tuple) -> tuple:
    """One page of list-jobs (`request` from parse_request): (jobs or retained
    records, next cursor or None). Call when the tube's index is `built`."""
    states, after, limit = request
    tube = engine.tubes.get(tube_name)
    ledger = engine.lifecycle.ledger
    if tube is not None:
        index = index_of(engine, tube)
        if not index.built:             # a tube made again since the page was asked for
            index.build_step(engine, tube, math.inf)

    def lists_by_state(state):
        if state == COMPLETED or state == DEAD:
            return ledger.listing().lists.get((state, tube_name)) if len(ledger) else None
        return tube.index.lists[state] if tube is not None else None

    entries, next_cursor = page(lists_by_state, states, after, limit)
    found = [ledger.get(key[-1]) if state == COMPLETED or state == DEAD
             else engine.jobs[key[-1]] for state, key in entries]
    return found, next_cursor
