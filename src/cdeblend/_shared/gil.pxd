# When a kernel releases the GIL (cimported by every kernel).
#
# Releasing the GIL lets another thread run Python meanwhile, but getting it back means
# waiting for that thread's next release, and each hand-over moves the Python working set
# between cores. For kernels of a few microseconds (per-peak stamps, small blends) the
# hand-overs cost more than the overlap gains: measured on 2 cores, a thread pool over small
# blends ran *slower* than one thread while numpy and the kernels released the GIL for
# microsecond-long work, and two threads calling a 26 us kernel between Python steps ran
# 1.5x faster than one, a 6 us kernel 0.9x. So every kernel releases the GIL when its work
# (a count of elementary operations: multiply-adds, pixel visits) is above this, and keeps
# it below. Either way it computes the same thing.

cdef enum:
    _NOGIL_WORK = 32768

cdef inline bint _release_gil(double work) noexcept nogil:
    """Whether a kernel with this much work should release the GIL."""
    return work >= _NOGIL_WORK
