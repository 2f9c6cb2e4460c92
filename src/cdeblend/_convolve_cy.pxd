# The convolution kernels that the fit loop (_adam_cy's FitKernel) calls without Python, once
# or twice per iteration each; defined in _convolve_cy.pyx. Each does a whole image per call,
# so the call through a function pointer (how Cython calls across modules) costs nothing
# measurable.

from ._fft cimport cd_conv
from ._shared.fused cimport real


cdef int _direct_conv(const real[:, :, ::1] src, const real[:, :, ::1] kernel,
                      real[:, :, ::1] out, Py_ssize_t oy, Py_ssize_t ox) except -1 nogil

cdef double _weighted_residual(const real[:, :, ::1] model_conv,
                               const real[:, :, ::1] images,
                               const real[:, :, ::1] weights,
                               real[:, :, ::1] residual, bint store) except? -1 nogil

cdef int _fft_cube(cd_conv* c, const real[:, :, ::1] src, int oy, int ox,
                   const real[:, :, :, ::1] fk, real[:, :, ::1] out,
                   int conj) except -1 nogil
