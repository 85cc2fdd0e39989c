# Cython declarations for tube.py (used only when compiled; see compiled.py).
cimport cython
from qserver.job cimport Job
from qserver.swapset cimport SwapSet

cdef class Tube:
    cdef public object name
    cdef public dict jobs
    cdef public dict ready
    cdef public list pris
    cdef public Py_ssize_t ready_entries, ready_count, urgent_count
    cdef public list delayed
    cdef public Py_ssize_t delayed_count
    cdef public dict buried
    cdef public Py_ssize_t reserved_count
    cdef public SwapSet waiting
    cdef public Py_ssize_t using, watching
    cdef public object total_jobs, cmd_delete, cmd_pause, pause, unpause_at
    cdef public object policy, counters, index, flushes

    cpdef bint is_unused(self)
    cpdef bint is_paused(self, now)
    cpdef push_ready(self, Job job)
    @cython.locals(pris=list, heap=list, jobs=dict, job=Job)
    cpdef peek_ready(self)
    cpdef forget_ready(self, Job job)
