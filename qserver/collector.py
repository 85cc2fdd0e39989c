"""The cyclic garbage collector's policy (no long pause with a million jobs live),
and handing freed memory back to the system (`trim`).

CPython's full pass (generation 2) visits every tracked object that survived the
previous ones. A job is such an object, so with a million jobs live one pass stops
the event loop for 150-350 ms, and passes recur whenever the long-lived population
has grown by a quarter. Refcounting frees jobs, tubes and sessions (they form no
cycle once done with, see tests/test_collector.py), so there is nothing for those
passes to find among them.

`Collector` freezes (`gc.freeze`) what survives each full pass: at the end of a
full pass every unreachable cycle has just been freed, so only reachable objects
are frozen. The next full pass visits only what was promoted since, a bounded
amount, and full passes come every other generation 1 pass. A frozen object that
later becomes part of an unreachable cycle would not be freed while frozen; to free
such cycles all the same, every THAW_EVERY-th full pass unfreezes everything first
when fewer than THAW_BELOW objects are frozen, i.e. when the server is back near
the size of a started one (about 20,000 objects, a full pass of a few ms), e.g.
once a backlog drained. Counting the frozen objects walks them all (about 30 ms
for a million), so it is done only when `live()` (the server's job count) is below
THAW_BELOW too.
`trim` asks glibc's malloc to return the free pages it keeps (malloc_trim): after
a large backlog drained, CPython's small-object arenas and the dict tables freed by
`Engine.shrink` leave holes that malloc would otherwise keep for reuse. ctypes is
imported only then; without glibc it does nothing.
Imports: stdlib only.
"""

import gc

# The young passes' thresholds: a generation 1 pass after every MIDDLE generation 0
# passes (CPython's default is 10), a full pass after every FULL_EVERY generation 1
# passes (10). While jobs pile up every one of them survives, so a generation 1 pass
# visits about (MIDDLE + 1) * 700 objects and a full one (FULL_EVERY + 1) times that:
# about 4,000 and 8,000 here, a few milliseconds each.
MIDDLE = 5
FULL_EVERY = 1
# A full pass looks at the frozen objects again (and frees what died in cycles
# among them) when fewer than THAW_BELOW are frozen, at most every THAW_EVERY-th
# full pass. A started server holds about 20,000 tracked objects of its own
# (modules, functions, classes).
THAW_BELOW = 30_000
THAW_EVERY = 10


class Collector:
    """Installs the policy for the life of a server (`start`, `stop`)."""

    def __init__(self, live=lambda: 0, middle: int = MIDDLE, full_every: int = FULL_EVERY,
                 thaw_below: int = THAW_BELOW, thaw_every: int = THAW_EVERY):
        self.live = live            # how many long-lived objects the server keeps
        self.middle = middle
        self.full_every = full_every
        self.thaw_below = thaw_below
        self.thaw_every = thaw_every
        self.old_threshold = None
        self.full_passes = 0
        self.thawed = 0

    def start(self) -> None:
        self.old_threshold = gc.get_threshold()
        gc.set_threshold(self.old_threshold[0], self.middle, self.full_every)
        gc.callbacks.append(self._on_pass)

    def stop(self) -> None:
        """Give the collector its thresholds back. What is frozen stays frozen: at
        exit, unfreezing would only make the interpreter's last pass visit it all."""
        if self._on_pass in gc.callbacks:
            gc.callbacks.remove(self._on_pass)
            gc.set_threshold(*self.old_threshold)

    def _on_pass(self, phase: str, info: dict) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            if self.full_passes % self.thaw_every == 0 \
                    and self.live() < self.thaw_below \
                    and gc.get_freeze_count() < self.thaw_below:
                gc.unfreeze()           # this pass looks at the frozen ones too
                self.thawed += 1
        else:
            # Everything tracked is now reachable (the pass freed the rest).
            self.full_passes += 1
            gc.freeze()


_malloc_trim = None


def trim() -> bool:
    """Return free heap pages to the system; False where malloc_trim is missing."""
    global _malloc_trim
    if _malloc_trim is None:
        try:
            import ctypes
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError, ImportError):
            _malloc_trim = False
    if not _malloc_trim:
        return False
    _malloc_trim(0)
    return True
