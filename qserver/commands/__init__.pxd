# Cython declarations for commands/__init__.py (used only when compiled; see
# compiled.py).
cimport cython
from qserver.engine cimport Engine

cdef class CommandTable:
    cdef public dict with_args, no_args, counts
    cdef public list by_prefix
    cdef public object max_job_size

    cpdef execute(self, client, line)
    cpdef finish_body(self, client, body)


cdef class Commands(CommandTable):
    cdef public Engine engine
    cdef public object info, clock, wall, _last_created

    cpdef _store(self, client, body, job_id, pri, delay, ttr)
    cpdef creation_time(self)
    @cython.locals(engine=Engine)
    cpdef put(self, client, rest)
    cpdef _reserve(self, client, timeout)
    cpdef delete(self, client, rest)
    cpdef release(self, client, rest)
