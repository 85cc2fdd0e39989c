# Cython declarations for engine.py (used only when compiled; see compiled.py).
cimport cython
from qserver.job cimport Job
from qserver.session cimport Session
from qserver.swapset cimport SwapSet
from qserver.tube cimport Tube

cdef class Engine:
    cdef public object log
    cdef public dict jobs, tubes
    cdef public SwapSet tube_order
    cdef public object next_id, next_bury_seq
    cdef public bint draining
    cdef public object job_timeouts, total_jobs
    cdef public Py_ssize_t producers, workers, waiting_count, delayed_total
    cdef public Py_ssize_t reserved_total
    cdef public list _delays, _ttrs, _waits, _pauses
    cdef public object _seq
    cdef public set _tubes_with_waiters
    cdef public object earliest
    cdef public bint timer_dirty
    cdef public dict policies, histories, meta, lock_jobs
    cdef public bint _promoted
    cdef public object events, lifecycle, steering, flusher, default_tube, call_soon

    cpdef _release_tube(self, Tube tube)
    cpdef mark_producer(self, Session session)
    cpdef mark_worker(self, Session session)
    cpdef allocate_id(self)
    @cython.locals(job=Job)
    cpdef put(self, Tube tube, job_id, pri, delay, ttr, body, now, created)
    @cython.locals(best=Job, job=Job, tube=Tube)
    cpdef _best_ready(self, tubes, now)
    cpdef _deadline_soon(self, Session session, now)
    @cython.locals(tube=Tube)
    cpdef _reserve(self, Session session, Job job, now)
    @cython.locals(job=Job, session=Session)
    cpdef _process_queue(self, now)
    @cython.locals(job=Job)
    cpdef delete(self, Session session, job_id)
    @cython.locals(tube=Tube)
    cpdef _forget(self, Job job)
    @cython.locals(job=Job)
    cpdef release(self, Session session, job_id, pri, delay, now)
    @cython.locals(job=Job)
    cpdef held(self, Session session, job_id)
    @cython.locals(tube=Tube)
    cpdef unhold(self, Job job)
    @cython.locals(tube=Tube)
    cpdef _unlist(self, Job job)
    cpdef _push(self, list heap, entry, when, live)
    @cython.locals(job=Job)
    cpdef find(self, job_id)
