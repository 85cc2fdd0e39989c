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

from qserver.errors import BadFormat
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
    held by id.
    Entries are the sort keys; the job id is the last element of each."""

    __slots__ = ("lists",)

    def __init__(self, engine, tube):
        from sortedcontainers import SortedList
        ready, delayed, buried = [], [], []
        for job in engine.jobs_of(tube):
            if job.state == READY:
                ready.append(ready_key(job))
            elif job.state == DELAYED:
                delayed.append((job.deadline, job.id))
            else:
                buried.append((job.bury_seq, job.id))
        reserved = [(job.deadline, job.id) for job in engine.reserved_in(tube)]
        held = [(job.id, job.id) for job in engine.steering.held_in(tube)]
        self.lists = {READY: SortedList(ready), DELAYED: SortedList(delayed),
                      RESERVED: SortedList(reserved), BURIED: SortedList(buried),
                      HELD: SortedList(held)}

    def add(self, state: int, key) -> None:
        self.lists[state].add(key)

    def discard(self, state: int, key) -> None:
        self.lists[state].discard(key)


def ready_key(job) -> tuple:
    return (job.pri, job.id)


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
    """(states to walk, (state, key) to start after or None); BAD_FORMAT if wrong."""
    if not 1 <= limit <= MAX_LIMIT:
        raise BadFormat
    if state_name == "all":
        states = [state for _, state, _ in STATES]
    elif state_name in _BY_NAME:
        states = [_BY_NAME[state_name][0]]
    else:
        raise BadFormat
    if cursor == "0":
        return states, None
    letter, _, rest = cursor.partition(":")
    state = _BY_LETTER.get(letter)
    if state is None or state not in states:
        raise BadFormat
    try:
        first, second = rest.split(":")
        after = (float(first) if "." in first or "e" in first else int(first), int(second))
    except ValueError:
        raise BadFormat from None
    return states[states.index(state):], (state, after)


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
    """One page of list-jobs: (jobs or retained records, next cursor or None)."""
    states, after = parse_request(state_name, cursor, limit)
    tube = engine.tubes.get(tube_name)
    ledger = engine.lifecycle.ledger
    if tube is not None and tube.index is None:
        tube.index = TubeIndex(engine, tube)

    def lists_by_state(state):
        if state == COMPLETED or state == DEAD:
            return ledger.listing().lists.get((state, tube_name)) if len(ledger) else None
        return tube.index.lists[state] if tube is not None else None

    entries, next_cursor = page(lists_by_state, states, after, limit)
    found = [ledger.get(key[-1]) if state == COMPLETED or state == DEAD
             else engine.jobs[key[-1]] for state, key in entries]
    return found, next_cursor
