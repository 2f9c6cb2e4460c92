/* cdeblend's FFT convolution core: 2-D transforms of real planes on 5-smooth grids.
 *
 * Why a C core of our own: the fit and the products of a blend convolve small images
 * hundreds of times, and calling a Python FFT for each transform holds the GIL between the
 * calls, so a thread pool over many small blends spends its time handing the GIL over. These
 * functions are plain C, allocate nothing after cd_conv_init, and are called without the
 * GIL, so that one Cython call can run whole fit iterations.
 *
 * Layout: complex arrays are split (separate real and imaginary planes). A 1-D transform
 * runs along axis 0 of an (n, V) array with whole rows as the vector elements (the inner
 * loop over V columns is contiguous and vectorises). A 2-D transform of an (n0, n1) grid is
 * the axis-0 transform, a transpose, the axis-0 transform of the transposed array; spectra
 * are kept transposed: (n1, n0) with kx major. Two real planes are transformed at once as
 * the real and imaginary parts of one complex plane.
 *
 * Convolution convention (as cdeblend.observation): "same-size" linear convolution with
 * zero outside, kernel centre at its middle pixel; a kernel transform FK is the 2-D DFT of
 * the kernel wrapped with its centre at index (0, 0), alias-free when n0 >= rows + ry and
 * n1 >= columns + rx.
 */
#ifndef CDEBLEND_FFT_H
#define CDEBLEND_FFT_H

#include <stddef.h>

#define CD_FFT_MAX_STAGES 40

typedef struct {
    int n;                            /* transform length, 2^a 3^b 5^c */
    int nstages;
    int radix[CD_FFT_MAX_STAGES];     /* 4, 2, 3 or 5 */
    int span[CD_FFT_MAX_STAGES];      /* length of the sub-transforms before the stage */
    size_t offset[CD_FFT_MAX_STAGES]; /* start of the stage's twiddles */
    size_t ntw;                       /* number of twiddles of all stages */
    float *twf;                       /* twiddles: per stage span * radix values (re), then */
    double *twd;                      /* the same count of imaginary parts */
} cd_plan;

typedef struct {
    int n0, n1;        /* FFT grid (rows, columns) */
    int vmax;          /* widest column extent handled (input or output), rounded up */
    int strip;         /* columns per cache strip of the axis-0 transforms */
    int ldy, ldt;      /* row strides of the work grid (>= vmax) and of the spectra (>= n0):
                          padded where a row is a multiple of 1 KiB (cache-set aliasing) */
    int dbl;           /* 1: double precision buffers, 0: float */
    cd_plan p0, p1;
    void *mem;
    void *yr, *yi;     /* (n0, vmax) work grid, row stride ldy */
    void *tr, *ti;     /* (n1, n0) spectrum, row stride ldt */
    void *wr, *wi;     /* (n1, n0) product, row stride ldt */
    void *ar, *ai, *br, *bi;  /* strip buffers: (max(n0, n1), strip) each */
} cd_conv;

/* smallest 2^a 3^b 5^c >= n (n >= 1) */
int cd_fast_len(int n);
/* 0 on success, -1 when n is not 5-smooth or < 1, -2 when out of memory */
int cd_plan_init(cd_plan *p, int n);
void cd_plan_free(cd_plan *p);
/* grid (n0, n1); inputs and outputs span at most `width` columns (<= n1) */
int cd_conv_init(cd_conv *c, int n0, int n1, int width, int dbl);
void cd_conv_free(cd_conv *c);

/* ---- one precision each (suffix _f: float, _d: double) ---------------------------------
 * fwd2d: forward transform of plane a (ha x wa, row stride lda, placed at (oya, oxa) in the
 *        grid) as the real part and plane b (may be NULL) as the imaginary part -> c->t.
 * pair_mul: c->w = FA * A + i FB * B, with A, B the transforms of the two real planes
 *        packed in c->t; fa, fb: kernel transforms, each a (2, n1, n0) re/im block (fb NULL:
 *        no second plane). conj != 0 multiplies by the conjugates (the adjoint).
 * mul:   c->w = F * c->t (one kernel for both packed planes).
 * mul2:  c->w = c->t * (FA + i FB): the transform of one real plane times two kernels, so
 *        that the inverse holds the plane convolved with FA (real part) and FB (imaginary).
 * spectrum: copy c->t to out, a (2, n1, n0) re/im block (kernel transforms).
 * inv2d: inverse transform of c->w scaled by 1 / (n0 n1); its real part on rows [0, ha),
 *        columns [0, wa) of the grid goes to a (row stride lda), its imaginary part to b
 *        (may be NULL); accumulate != 0 adds to a and b instead of overwriting.
 * fft_cols: in-place forward transform along axis 0 of an (n, V) array with row stride ld
 *        (used by the tests; the inverse is the same call with re and im swapped).
 */
void cd_fwd2d_f(cd_conv *c, const float *a, ptrdiff_t lda, int ha, int wa, int oya, int oxa,
                const float *b, ptrdiff_t ldb, int hb, int wb, int oyb, int oxb);
void cd_pair_mul_f(cd_conv *c, const float *fa, const float *fb, int conj);
void cd_mul_f(cd_conv *c, const float *f, int conj);
void cd_mul2_f(cd_conv *c, const float *fa, const float *fb, int conj);
void cd_spectrum_f(const cd_conv *c, float *out);
void cd_inv2d_f(cd_conv *c, float *a, ptrdiff_t lda, int ha, int wa, float *b, ptrdiff_t ldb,
                int hb, int wb, int accumulate);
void cd_fft_cols_f(cd_conv *c, const cd_plan *p, int V, ptrdiff_t ld, float *re, float *im);
/* conv1_part: part p of P of phase 0-7 of one plane's convolution with one kernel on c's
 * grid with s's strip buffers (see _fft_impl.h), for threads that share one transform */
void cd_conv1_part_f(cd_conv *c, cd_conv *s, int phase, int p, int P, const float *a,
                     ptrdiff_t lda, int h, int w, const float *f, int conj, float *out,
                     ptrdiff_t ldo);

void cd_fwd2d_d(cd_conv *c, const double *a, ptrdiff_t lda, int ha, int wa, int oya, int oxa,
                const double *b, ptrdiff_t ldb, int hb, int wb, int oyb, int oxb);
void cd_pair_mul_d(cd_conv *c, const double *fa, const double *fb, int conj);
void cd_mul_d(cd_conv *c, const double *f, int conj);
void cd_mul2_d(cd_conv *c, const double *fa, const double *fb, int conj);
void cd_spectrum_d(const cd_conv *c, double *out);
void cd_inv2d_d(cd_conv *c, double *a, ptrdiff_t lda, int ha, int wa, double *b, ptrdiff_t ldb,
                int hb, int wb, int accumulate);
void cd_fft_cols_d(cd_conv *c, const cd_plan *p, int V, ptrdiff_t ld, double *re, double *im);
/* fwd2d_wrapped: forward transform of the full (n0, n1) planes a (real part) and b
 *        (imaginary part), row stride ld, which are zero in columns [wl, n1 - wr) (wrapped
 *        kernels): the same spectrum in c->t as cd_fwd2d of the whole planes. */
void cd_fwd2d_wrapped_f(cd_conv *c, const float *a, const float *b, ptrdiff_t ld, int wl,
                        int wr);
void cd_fwd2d_wrapped_d(cd_conv *c, const double *a, const double *b, ptrdiff_t ld, int wl,
                        int wr);
void cd_conv1_part_d(cd_conv *c, cd_conv *s, int phase, int p, int P, const double *a,
                     ptrdiff_t lda, int h, int w, const double *f, int conj, double *out,
                     ptrdiff_t ldo);
/* rconv1_part: cd_conv1_part with a complex transform of half the width (the real plane's
 * even and odd columns packed as one complex plane, see _fft_impl.h): c is a cd_conv of the
 * (n0, n1 / 2) grid, f the kernel transform of the full (n0, n1) grid (n1 even), s a
 * cd_conv on a grid at least as large as c's (its strip buffers) */
void cd_rconv1_part_f(cd_conv *c, cd_conv *s, int phase, int p, int P, const float *a,
                      ptrdiff_t lda, int h, int w, const float *f, int conj, float *out,
                      ptrdiff_t ldo);
void cd_rconv1_part_d(cd_conv *c, cd_conv *s, int phase, int p, int P, const double *a,
                      ptrdiff_t lda, int h, int w, const double *f, int conj, double *out,
                      ptrdiff_t ldo);

#endif
