# Cython declarations for job.py (used only when compiled; see compiled.py).

cdef class Job:
    cdef public object id, tube, pri, delay, ttr, body, state, deadline, created
    cdef public object holder, counts, file
