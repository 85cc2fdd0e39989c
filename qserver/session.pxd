# Cython declarations for session.py (used only when compiled; see compiled.py).
cimport cython
from qserver.job cimport Job
from qserver.swapset cimport SwapSet

cdef class Session:
    cdef public object use
    cdef public SwapSet watch
    cdef public dict reserved
    cdef public list deadlines
    cdef public bint waiting
    cdef public object wait_until
    cdef public object wait_seq
    cdef public bint producer, worker
    cdef public object wake

    cpdef hold(self, Job job)
    @cython.locals(heap=list)
    cpdef note_deadline(self, Job job)
    @cython.locals(heap=list, reserved=dict, job=Job)
    cpdef soonest_deadline(self)
