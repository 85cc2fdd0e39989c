# Cython declarations for commands/__init__.py (used only when compiled; see
# compiled.py).
from qserver.engine cimport Engine

cdef class CommandTable:
    cdef public dict with_args, no_args, counts
    cdef public list by_prefix
    cdef public object max_job_size


cdef class Commands(CommandTable):
    cdef public Engine engine
    cdef public object info, clock, wall, _last_created
