/* cdeblend's FFT convolution core (see _fft.h): plans, and both precisions of the
 * transforms, generated from _fft_impl.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "_fft.h"

#define CD_PI 3.14159265358979323846264338327950288

int cd_fast_len(int n)
{
    if (n < 1)
        n = 1;
    for (int m = n;; m++) {
        int k = m;
        while (k % 2 == 0)
            k /= 2;
        while (k % 3 == 0)
            k /= 3;
        while (k % 5 == 0)
            k /= 5;
        if (k == 1)
            return m;
    }
}

void cd_plan_free(cd_plan *p)
{
    free(p->twf);
    free(p->twd);
    p->twf = NULL;
    p->twd = NULL;
}

int cd_plan_init(cd_plan *p, int n)
{
    p->n = n;
    p->nstages = 0;
    p->ntw = 0;
    p->twf = NULL;
    p->twd = NULL;
    if (n < 1)
        return -1;
    /* radix 4 as often as possible (fewest passes over the data), then 2, 3, 5 */
    int m = n, span = 1;
    size_t total = 0;
    while (m > 1) {
        int r = (m % 4 == 0) ? 4 : (m % 2 == 0) ? 2 : (m % 3 == 0) ? 3 : (m % 5 == 0) ? 5 : 0;
        if (r == 0 || p->nstages == CD_FFT_MAX_STAGES)
            return -1;
        p->radix[p->nstages] = r;
        p->span[p->nstages] = span;
        p->offset[p->nstages] = total;
        total += (size_t)span * r;
        p->nstages++;
        span *= r;
        m /= r;
    }
    p->ntw = total;
    if (total == 0)
        return 0;
    p->twd = malloc(2 * total * sizeof(double));
    p->twf = malloc(2 * total * sizeof(float));
    if (p->twd == NULL || p->twf == NULL) {
        cd_plan_free(p);
        return -2;
    }
    for (int s = 0; s < p->nstages; s++) {
        int r = p->radix[s], L = p->span[s];
        long long full = (long long)r * L;
        double *re = p->twd + p->offset[s], *im = re + total;
        for (int j = 0; j < L; j++)
            for (int q = 0; q < r; q++) {
                /* exp(-2 pi i q j / (r L)), the angle reduced first for accuracy */
                long long e = ((long long)q * j) % full;
                double a = -2.0 * CD_PI * (double)e / (double)full;
                re[j * r + q] = cos(a);
                im[j * r + q] = sin(a);
            }
    }
    for (size_t i = 0; i < 2 * total; i++)
        p->twf[i] = (float)p->twd[i];
    return 0;
}

/* Columns per cache strip: the four strip buffers (two complex ones) of n x strip values
 * fill about 1 MiB (an L2 cache), a multiple of 8 columns, and at least 256 bytes of each
 * row (64 floats, 32 doubles) on longer transforms. Wide strips matter more than a strict
 * cache fit: the late stages of a transform loop over strip-wide rows, and each strip row
 * of the first stage is a separate page of a large grid. At 1024 rows a 256 KiB budget
 * (16-column strips) ran the column pass ~1.7 x slower; at 2048 rows 64 columns beat 32
 * by ~9 % (bench/convolve.py and timings of the C functions). */
static int strip_width(int nmax, int vmax, size_t dsize)
{
    size_t s = (1024u * 1024u) / (4u * (size_t)nmax * dsize);
    s &= ~(size_t)7;
    if (s < 256u / dsize)
        s = 256u / dsize;
    if (s > (size_t)vmax)
        s = (size_t)vmax;
    return (int)s;
}

/* A row stride of at least n values whose byte length is not a multiple of 1 KiB: rows at
 * such strides all fall into a few cache sets, and the column strips of the transforms
 * (hundreds of rows) then evict each other. */
static int padded_stride(int n, size_t dsize)
{
    if (((size_t)n * dsize) % 1024 == 0)
        return n + (int)(64 / dsize);
    return n;
}

void cd_conv_free(cd_conv *c)
{
    cd_plan_free(&c->p0);
    cd_plan_free(&c->p1);
    free(c->mem);
    c->mem = NULL;
}

int cd_conv_init(cd_conv *c, int n0, int n1, int width, int dbl)
{
    memset(c, 0, sizeof(*c));
    if (n0 < 1 || n1 < 1 || width < 1 || width > n1)
        return -1;
    c->n0 = n0;
    c->n1 = n1;
    c->dbl = dbl;
    /* column extents are rounded up to a multiple of 8 (whole vectors), within the grid */
    c->vmax = (width + 7) & ~7;
    if (c->vmax > n1)
        c->vmax = n1;
    size_t d = dbl ? sizeof(double) : sizeof(float);
    int nmax = n0 > n1 ? n0 : n1;
    int vm = c->vmax > n0 ? c->vmax : n0;  /* axis-0 transforms run over vmax or n0 columns */
    c->strip = strip_width(nmax, vm, d);
    int st = cd_plan_init(&c->p0, n0);
    if (st == 0)
        st = cd_plan_init(&c->p1, n1);
    if (st != 0) {
        cd_conv_free(c);
        return st;
    }
    c->ldy = padded_stride(c->vmax, d);
    c->ldt = padded_stride(n0, d);
    size_t ny = (size_t)n0 * c->ldy, nt = (size_t)n1 * c->ldt, ns = (size_t)nmax * c->strip;
    size_t total = 2 * ny + 4 * nt + 4 * ns;
    char *mem = calloc(total, d);
    if (mem == NULL) {
        cd_conv_free(c);
        return -2;
    }
    c->mem = mem;
    c->yr = mem;
    c->yi = mem + ny * d;
    c->tr = mem + 2 * ny * d;
    c->ti = mem + (2 * ny + nt) * d;
    c->wr = mem + (2 * ny + 2 * nt) * d;
    c->wi = mem + (2 * ny + 3 * nt) * d;
    c->ar = mem + (2 * ny + 4 * nt) * d;
    c->ai = mem + (2 * ny + 4 * nt + ns) * d;
    c->br = mem + (2 * ny + 4 * nt + 2 * ns) * d;
    c->bi = mem + (2 * ny + 4 * nt + 3 * ns) * d;
    return 0;
}

/* Hot functions get an AVX2 clone picked at load time where the toolchain supports it
 * (glibc ifuncs). No FMA is enabled, so both clones round identically. */
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__GNUC__) && !defined(CD_NO_CLONES)
#  if defined(__has_attribute)
#    if __has_attribute(target_clones)
#      define CD_HOT __attribute__((target_clones("avx2", "default")))
#    endif
#  endif
#endif
#ifndef CD_HOT
#  define CD_HOT
#endif

#define R float
#define SUF(name) name##_f
#define TW(p) ((p)->twf)
#include "_fft_impl.h"
#undef R
#undef SUF
#undef TW

#define R double
#define SUF(name) name##_d
#define TW(p) ((p)->twd)
#include "_fft_impl.h"
#undef R
#undef SUF
#undef TW
