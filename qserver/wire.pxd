# Cython declarations for wire.py (used only when compiled; see compiled.py).
cimport cython

cdef class Framer:
    cdef public bytearray buf
    cdef public Py_ssize_t pos
    cdef public int mode
    cdef public Py_ssize_t remaining
    cdef public object next

    @cython.locals(buf=bytearray, pos=Py_ssize_t, avail=Py_ssize_t, window=Py_ssize_t,
                   cr=Py_ssize_t)
    cpdef _next_line(self)
    @cython.locals(pos=Py_ssize_t, end=Py_ssize_t)
    cpdef take_body(self, Py_ssize_t size)

# The cache of _number: typed, its .get is a C dict lookup rather than a bound
# method made and called per number (~1,000 instructions each, four per put).
cdef dict _NUMBERS

cpdef _u32(digits)
cpdef _u64(digits)
cpdef parse_id(rest)
cpdef _number(digits)
cpdef job_reply(word, job_id, body)
