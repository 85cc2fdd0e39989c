# Cython declarations for swapset.py (used only when compiled; see compiled.py).

cdef class SwapSet:
    cdef public list items
    cdef public dict index
    cdef public Py_ssize_t cursor

    cpdef append(self, item)
