# Declarations of the C FFT core (_fft.h), its only way in: cimported by the kernels that
# convolve (_convolve_cy, and _adam_cy for its FitKernel's transform buffers).

cdef extern from "_fft.h" nogil:
    ctypedef struct cd_plan:
        int n
    ctypedef struct cd_conv:
        int n0
        int n1
        int vmax
        int dbl
        cd_plan p0
        cd_plan p1
    int cd_fast_len(int n)
    int cd_conv_init(cd_conv *c, int n0, int n1, int width, int dbl)
    void cd_conv_free(cd_conv *c)
    void cd_fwd2d_f(cd_conv *c, const float *a, Py_ssize_t lda, int ha, int wa, int oya,
                    int oxa, const float *b, Py_ssize_t ldb, int hb, int wb, int oyb, int oxb)
    void cd_pair_mul_f(cd_conv *c, const float *fa, const float *fb, int conj)
    void cd_mul_f(cd_conv *c, const float *f, int conj)
    void cd_mul2_f(cd_conv *c, const float *fa, const float *fb, int conj)
    void cd_inv2d_f(cd_conv *c, float *a, Py_ssize_t lda, int ha, int wa, float *b,
                    Py_ssize_t ldb, int hb, int wb, int accumulate)
    void cd_fft_cols_f(cd_conv *c, const cd_plan *p, int V, Py_ssize_t ld, float *re, float *im)
    void cd_spectrum_f(const cd_conv *c, float *out)
    void cd_fwd2d_d(cd_conv *c, const double *a, Py_ssize_t lda, int ha, int wa, int oya,
                    int oxa, const double *b, Py_ssize_t ldb, int hb, int wb, int oyb, int oxb)
    void cd_pair_mul_d(cd_conv *c, const double *fa, const double *fb, int conj)
    void cd_mul_d(cd_conv *c, const double *f, int conj)
    void cd_mul2_d(cd_conv *c, const double *fa, const double *fb, int conj)
    void cd_inv2d_d(cd_conv *c, double *a, Py_ssize_t lda, int ha, int wa, double *b,
                    Py_ssize_t ldb, int hb, int wb, int accumulate)
    void cd_fft_cols_d(cd_conv *c, const cd_plan *p, int V, Py_ssize_t ld, double *re,
                       double *im)
    void cd_spectrum_d(const cd_conv *c, double *out)
    void cd_fwd2d_wrapped_d(cd_conv *c, const double *a, const double *b, Py_ssize_t ld,
                            int wl, int wr)
    void cd_conv1_part_f(cd_conv *c, cd_conv *s, int phase, int p, int P, const float *a,
                         Py_ssize_t lda, int h, int w, const float *f, int conj, float *out,
                         Py_ssize_t ldo)
    void cd_conv1_part_d(cd_conv *c, cd_conv *s, int phase, int p, int P, const double *a,
                         Py_ssize_t lda, int h, int w, const double *f, int conj,
                         double *out, Py_ssize_t ldo)
    void cd_rconv1_part_f(cd_conv *c, cd_conv *s, int phase, int p, int P, const float *a,
                          Py_ssize_t lda, int h, int w, const float *f, int conj, float *out,
                          Py_ssize_t ldo)
    void cd_rconv1_part_d(cd_conv *c, cd_conv *s, int phase, int p, int P, const double *a,
                          Py_ssize_t lda, int h, int w, const double *f, int conj,
                          double *out, Py_ssize_t ldo)
