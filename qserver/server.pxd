# Cython declarations for server.py (used only when compiled; see compiled.py).
# ConnectionCore is an extension type; Connection, a Python class, adds
# asyncio.Protocol to it. The loop's callbacks (data_received ...) and the methods
# handed out as callbacks (_wake, _release_one, _resume) stay Python-visible;
# _run, _send, _close and _limit_reading are C-only.
# The types are cimported under other names: server.py's own module globals (Engine,
# Session, Framer) stay Python names that a test may replace (server.Engine = ...).
cimport cython
from qserver.commands cimport CommandTable as CommandTableType
from qserver.engine cimport Engine as EngineType
from qserver.session cimport Session as SessionType
from qserver.wire cimport Framer as FramerType

cdef class ConnectionCore:
    cdef public object server
    cdef public CommandTableType commands
    cdef public EngineType engine
    cdef public FramerType framer
    cdef public SessionType session
    cdef public object transport, pending_body
    cdef public bint closing, half_closed, write_paused, read_paused, resume_scheduled
    cdef public object held
    cdef public bint close_when_sent, output_wait, refused
    cdef public object subscription
    cdef public bint awaiting
    cdef public object store_session
    cdef public double opened

    @cython.locals(framer=FramerType, session=SessionType, commands=CommandTableType, out=list,
                   pending=Py_ssize_t)
    cdef _run(self)
    cdef _send(self, data, bint logged)
    cdef _close(self)
    cdef _limit_reading(self)
