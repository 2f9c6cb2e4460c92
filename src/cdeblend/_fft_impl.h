/* One precision of the FFT core; included by _fft.c with R (float or double), SUF(name)
 * (the suffix of the public names) and TW(plan) (the plan's twiddles in that precision).
 * Not a header to include elsewhere. */

#ifndef CD_INLINE
#  if defined(__GNUC__)
#    define CD_INLINE inline __attribute__((always_inline))
#  else
#    define CD_INLINE inline
#  endif
#endif

/* (ar, ai) = (xr + i xi) * (wr + i wi) */
#define CD_CMUL(ar, ai, xr, xi, wr, wi)            \
    do {                                           \
        R cm_xr_ = (xr), cm_xi_ = (xi);            \
        (ar) = cm_xr_ * (wr) - cm_xi_ * (wi);      \
        (ai) = cm_xr_ * (wi) + cm_xi_ * (wr);      \
    } while (0)

/* ---------------------------------------------------------------------------- butterflies
 * Each runs over V columns: inputs i<q> and outputs o<u> are rows of V values; with tw the
 * inputs q >= 1 are first multiplied by the twiddles (w<q>r, w<q>i). Forward transform:
 * y_u = sum_q a_q exp(-2 pi i q u / radix). */

static CD_INLINE void SUF(bf2)(int V, int tw, const R *restrict i0r, const R *restrict i0i,
                               const R *restrict i1r, const R *restrict i1i, R *restrict o0r,
                               R *restrict o0i, R *restrict o1r, R *restrict o1i, R w1r,
                               R w1i)
{
    for (int v = 0; v < V; v++) {
        R a1r = i1r[v], a1i = i1i[v];
        if (tw)
            CD_CMUL(a1r, a1i, i1r[v], i1i[v], w1r, w1i);
        o0r[v] = i0r[v] + a1r;
        o0i[v] = i0i[v] + a1i;
        o1r[v] = i0r[v] - a1r;
        o1i[v] = i0i[v] - a1i;
    }
}

static CD_INLINE void SUF(bf3)(int V, int tw, const R *restrict i0r, const R *restrict i0i,
                               const R *restrict i1r, const R *restrict i1i,
                               const R *restrict i2r, const R *restrict i2i, R *restrict o0r,
                               R *restrict o0i, R *restrict o1r, R *restrict o1i,
                               R *restrict o2r, R *restrict o2i, const R *w)
{
    const R c = (R)-0.5, s = (R)-0.86602540378443864676;  /* exp(-2 pi i / 3) */
    const R w1r = w[1], w2r = w[2], w1i = w[4], w2i = w[5];
    for (int v = 0; v < V; v++) {
        R a0r = i0r[v], a0i = i0i[v], a1r = i1r[v], a1i = i1i[v], a2r = i2r[v], a2i = i2i[v];
        if (tw) {
            CD_CMUL(a1r, a1i, i1r[v], i1i[v], w1r, w1i);
            CD_CMUL(a2r, a2i, i2r[v], i2i[v], w2r, w2i);
        }
        R sr = a1r + a2r, si = a1i + a2i, dr = a1r - a2r, di = a1i - a2i;
        R mr = a0r + c * sr, mi = a0i + c * si;
        o0r[v] = a0r + sr;
        o0i[v] = a0i + si;
        o1r[v] = mr - s * di;
        o1i[v] = mi + s * dr;
        o2r[v] = mr + s * di;
        o2i[v] = mi - s * dr;
    }
}

static CD_INLINE void SUF(bf4)(int V, int tw, const R *restrict i0r, const R *restrict i0i,
                               const R *restrict i1r, const R *restrict i1i,
                               const R *restrict i2r, const R *restrict i2i,
                               const R *restrict i3r, const R *restrict i3i, R *restrict o0r,
                               R *restrict o0i, R *restrict o1r, R *restrict o1i,
                               R *restrict o2r, R *restrict o2i, R *restrict o3r,
                               R *restrict o3i, const R *w)
{
    const R w1r = w[1], w2r = w[2], w3r = w[3], w1i = w[5], w2i = w[6], w3i = w[7];
    for (int v = 0; v < V; v++) {
        R a0r = i0r[v], a0i = i0i[v], a1r = i1r[v], a1i = i1i[v];
        R a2r = i2r[v], a2i = i2i[v], a3r = i3r[v], a3i = i3i[v];
        if (tw) {
            CD_CMUL(a1r, a1i, i1r[v], i1i[v], w1r, w1i);
            CD_CMUL(a2r, a2i, i2r[v], i2i[v], w2r, w2i);
            CD_CMUL(a3r, a3i, i3r[v], i3i[v], w3r, w3i);
        }
        R t0r = a0r + a2r, t0i = a0i + a2i, t1r = a0r - a2r, t1i = a0i - a2i;
        R t2r = a1r + a3r, t2i = a1i + a3i, t3r = a1r - a3r, t3i = a1i - a3i;
        o0r[v] = t0r + t2r;
        o0i[v] = t0i + t2i;
        o2r[v] = t0r - t2r;
        o2i[v] = t0i - t2i;
        o1r[v] = t1r + t3i;  /* t1 - i t3 */
        o1i[v] = t1i - t3r;
        o3r[v] = t1r - t3i;  /* t1 + i t3 */
        o3i[v] = t1i + t3r;
    }
}

static CD_INLINE void SUF(bf5)(int V, int tw, const R *restrict i0r, const R *restrict i0i,
                               const R *restrict i1r, const R *restrict i1i,
                               const R *restrict i2r, const R *restrict i2i,
                               const R *restrict i3r, const R *restrict i3i,
                               const R *restrict i4r, const R *restrict i4i, R *restrict o0r,
                               R *restrict o0i, R *restrict o1r, R *restrict o1i,
                               R *restrict o2r, R *restrict o2i, R *restrict o3r,
                               R *restrict o3i, R *restrict o4r, R *restrict o4i, const R *w)
{
    /* cos and -sin of 2 pi / 5 and 4 pi / 5 */
    const R c1 = (R)0.30901699437494742410, c2 = (R)-0.80901699437494742410;
    const R s1 = (R)-0.95105651629515357212, s2 = (R)-0.58778525229247312917;
    const R w1r = w[1], w2r = w[2], w3r = w[3], w4r = w[4];
    const R w1i = w[6], w2i = w[7], w3i = w[8], w4i = w[9];
    for (int v = 0; v < V; v++) {
        R a0r = i0r[v], a0i = i0i[v], a1r = i1r[v], a1i = i1i[v], a2r = i2r[v], a2i = i2i[v];
        R a3r = i3r[v], a3i = i3i[v], a4r = i4r[v], a4i = i4i[v];
        if (tw) {
            CD_CMUL(a1r, a1i, i1r[v], i1i[v], w1r, w1i);
            CD_CMUL(a2r, a2i, i2r[v], i2i[v], w2r, w2i);
            CD_CMUL(a3r, a3i, i3r[v], i3i[v], w3r, w3i);
            CD_CMUL(a4r, a4i, i4r[v], i4i[v], w4r, w4i);
        }
        R b1r = a1r + a4r, b1i = a1i + a4i, b4r = a1r - a4r, b4i = a1i - a4i;
        R b2r = a2r + a3r, b2i = a2i + a3i, b3r = a2r - a3r, b3i = a2i - a3i;
        o0r[v] = a0r + b1r + b2r;
        o0i[v] = a0i + b1i + b2i;
        R m1r = a0r + c1 * b1r + c2 * b2r, m1i = a0i + c1 * b1i + c2 * b2i;
        R m2r = a0r + c2 * b1r + c1 * b2r, m2i = a0i + c2 * b1i + c1 * b2i;
        R e1r = s1 * b4r + s2 * b3r, e1i = s1 * b4i + s2 * b3i;
        R e2r = s2 * b4r - s1 * b3r, e2i = s2 * b4i - s1 * b3i;
        o1r[v] = m1r - e1i;  /* m1 + i e1 */
        o1i[v] = m1i + e1r;
        o4r[v] = m1r + e1i;  /* m1 - i e1 */
        o4i[v] = m1i - e1r;
        o2r[v] = m2r - e2i;
        o2i[v] = m2i + e2r;
        o3r[v] = m2r + e2i;
        o3i[v] = m2i - e2r;
    }
}

/* One Stockham stage (self-sorting, out of place) over rows of V values (row strides ldx
 * and ldy). Before it, x holds the length-L transforms of the m = n / L decimated
 * sequences, transform j of sequence k in row j * m + k; after it, y holds the length r * L
 * transforms of the m / r sequences the same way. */
static CD_INLINE void SUF(stage)(const cd_plan *p, int s, int V, const R *x_r, const R *x_i,
                                 ptrdiff_t ldx, R *y_r, R *y_i, ptrdiff_t ldy)
{
    const int n = p->n, r = p->radix[s], L = p->span[s], m = n / L, mp = m / r;
    const R *twr = TW(p) + p->offset[s];
    const size_t ntw = p->ntw;
    const ptrdiff_t is = (ptrdiff_t)mp * ldx, os = (ptrdiff_t)L * mp * ldy;
    /* rows k of one j are consecutive in x and in y: with rows of exactly V values (the
     * strip buffers) the k and v loops are one contiguous loop of mp * V values, long
     * vector loops instead of mp short ones */
    const int merge = ldx == V && ldy == V;
    const int kn = merge ? 1 : mp, vw = merge ? mp * V : V;
    R wbuf[10];
    for (int j = 0; j < L; j++) {
        const int tw = j != 0;
        for (int q = 0; q < r; q++) {
            wbuf[q] = twr[(size_t)j * r + q];
            wbuf[r + q] = twr[ntw + (size_t)j * r + q];
        }
        for (int k = 0; k < kn; k++) {
            const ptrdiff_t i0 = ((ptrdiff_t)j * m + k) * ldx, o0 = ((ptrdiff_t)j * mp + k) * ldy;
            const R *xr = x_r + i0, *xi = x_i + i0;
            R *yr = y_r + o0, *yi = y_i + o0;
            switch (r) {
            case 4:
                if (tw)
                    SUF(bf4)(vw, 1, xr, xi, xr + is, xi + is, xr + 2 * is, xi + 2 * is,
                             xr + 3 * is, xi + 3 * is, yr, yi, yr + os, yi + os, yr + 2 * os,
                             yi + 2 * os, yr + 3 * os, yi + 3 * os, wbuf);
                else
                    SUF(bf4)(vw, 0, xr, xi, xr + is, xi + is, xr + 2 * is, xi + 2 * is,
                             xr + 3 * is, xi + 3 * is, yr, yi, yr + os, yi + os, yr + 2 * os,
                             yi + 2 * os, yr + 3 * os, yi + 3 * os, wbuf);
                break;
            case 2:
                if (tw)
                    SUF(bf2)(vw, 1, xr, xi, xr + is, xi + is, yr, yi, yr + os, yi + os,
                             wbuf[1], wbuf[3]);
                else
                    SUF(bf2)(vw, 0, xr, xi, xr + is, xi + is, yr, yi, yr + os, yi + os,
                             wbuf[1], wbuf[3]);
                break;
            case 3:
                if (tw)
                    SUF(bf3)(vw, 1, xr, xi, xr + is, xi + is, xr + 2 * is, xi + 2 * is, yr, yi,
                             yr + os, yi + os, yr + 2 * os, yi + 2 * os, wbuf);
                else
                    SUF(bf3)(vw, 0, xr, xi, xr + is, xi + is, xr + 2 * is, xi + 2 * is, yr, yi,
                             yr + os, yi + os, yr + 2 * os, yi + 2 * os, wbuf);
                break;
            default:
                if (tw)
                    SUF(bf5)(vw, 1, xr, xi, xr + is, xi + is, xr + 2 * is, xi + 2 * is,
                             xr + 3 * is, xi + 3 * is, xr + 4 * is, xi + 4 * is, yr, yi,
                             yr + os, yi + os, yr + 2 * os, yi + 2 * os, yr + 3 * os,
                             yi + 3 * os, yr + 4 * os, yi + 4 * os, wbuf);
                else
                    SUF(bf5)(vw, 0, xr, xi, xr + is, xi + is, xr + 2 * is, xi + 2 * is,
                             xr + 3 * is, xi + 3 * is, xr + 4 * is, xi + 4 * is, yr, yi,
                             yr + os, yi + os, yr + 2 * os, yi + 2 * os, yr + 3 * os,
                             yi + 3 * os, yr + 4 * os, yi + 4 * os, wbuf);
                break;
            }
        }
    }
}

/* One full 8 x 8 tile of transpose: constant trip counts, so the compiler keeps the tile
 * in registers (vector loads, shuffles, vector stores) instead of 64 scalar moves. */
static CD_INLINE void SUF(tile8)(const R *restrict in, ptrdiff_t ldi, R *restrict out,
                                 ptrdiff_t ldo)
{
    R t[8][8];
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 8; j++)
            t[j][i] = in[i * ldi + j];
    for (int j = 0; j < 8; j++)
        for (int i = 0; i < 8; i++)
            out[j * ldo + i] = t[j][i];
}

/* out[j, i] = in[i, j] for i < rows, j < cols, in 8 x 8 tiles */
static CD_INLINE void SUF(transpose)(int rows, int cols, const R *restrict in, ptrdiff_t ldi,
                                     R *restrict out, ptrdiff_t ldo)
{
    for (int i0 = 0; i0 < rows; i0 += 8) {
        const int i1 = i0 + 8 < rows ? i0 + 8 : rows;
        for (int j0 = 0; j0 < cols; j0 += 8) {
            const int j1 = j0 + 8 < cols ? j0 + 8 : cols;
            if (i1 - i0 == 8 && j1 - j0 == 8) {
                SUF(tile8)(in + i0 * ldi + j0, ldi, out + j0 * ldo + i0, ldo);
                continue;
            }
            for (int i = i0; i < i1; i++)
                for (int j = j0; j < j1; j++)
                    out[j * ldo + i] = in[i * ldi + j];
        }
    }
}

/* Forward transform along axis 0 of an (n, V) array of row stride ld, a strip of at most
 * c->strip columns at a time: the first stage reads the array, the stages after it
 * ping-pong in two strip buffers that stay in cache. The last stage writes the array back
 * (outr == NULL) or, while the strip is still in cache, the transpose of its first `rows`
 * rows and `cols` columns: out[j, i] (row stride ldo) = x[i, j]. The fused transpose saves
 * a pass over a grid that does not fit in cache. */
static CD_INLINE void SUF(fft_cols_to)(cd_conv *c, const cd_plan *p, int V, ptrdiff_t ld,
                                       R *re, R *im, R *outr, R *outi, ptrdiff_t ldo,
                                       int rows, int cols)
{
    const int n = p->n, S = c->strip, ns = p->nstages;
    if (V <= 0)
        return;
    R *ar = (R *)c->ar, *ai = (R *)c->ai, *br = (R *)c->br, *bi = (R *)c->bi;
    for (int c0 = 0; c0 < V; c0 += S) {
        const int w = V - c0 < S ? V - c0 : S;
        R *xr = re + c0, *xi = im + c0;
        const R *sr = xr, *si = xi;
        ptrdiff_t lds = ld;
        R *dr = ar, *di = ai;
        for (int s = 0; s < ns; s++) {
            const int last = s == ns - 1;
            if (last && outr == NULL && s > 0) {
                SUF(stage)(p, s, w, sr, si, lds, xr, xi, ld);
                break;
            }
            SUF(stage)(p, s, w, sr, si, lds, dr, di, w);
            sr = dr;
            si = di;
            lds = w;
            dr = dr == ar ? br : ar;
            di = di == ai ? bi : ai;
        }
        if (outr == NULL) {
            if (ns == 1)  /* a single stage ran out of place into the strip buffer */
                for (int i = 0; i < n; i++) {
                    memcpy(xr + i * ld, ar + (size_t)i * w, (size_t)w * sizeof(R));
                    memcpy(xi + i * ld, ai + (size_t)i * w, (size_t)w * sizeof(R));
                }
            continue;
        }
        const int wo = cols - c0 < w ? cols - c0 : w;
        if (wo <= 0)
            continue;
        SUF(transpose)(rows, wo, sr, lds, outr + c0 * ldo, ldo);
        SUF(transpose)(rows, wo, si, lds, outi + c0 * ldo, ldo);
    }
}

/* In-place forward transform along axis 0 of an (n, V) array of row stride ld. */
static CD_INLINE void SUF(fft_cols)(cd_conv *c, const cd_plan *p, int V, ptrdiff_t ld, R *re,
                                    R *im)
{
    if (p->nstages == 0)
        return;
    SUF(fft_cols_to)(c, p, V, ld, re, im, NULL, NULL, 0, 0, 0);
}

/* The first V columns of the (n0, ld) grid: rows [oy, oy + h) hold the (h, w) plane a (row
 * stride lda) at column ox, zeros elsewhere (a NULL plane: all zeros); each value is
 * written once. */
static CD_INLINE void SUF(place)(R *grid, ptrdiff_t ld, int n0, int V, const R *a,
                                 ptrdiff_t lda, int h, int w, int oy, int ox)
{
    for (int y = 0; y < n0; y++) {
        R *row = grid + y * ld;
        if (a == NULL || y < oy || y >= oy + h) {
            memset(row, 0, (size_t)V * sizeof(R));
            continue;
        }
        memset(row, 0, (size_t)ox * sizeof(R));
        memcpy(row + ox, a + (y - oy) * lda, (size_t)w * sizeof(R));
        memset(row + ox + w, 0, (size_t)(V - ox - w) * sizeof(R));
    }
}

static CD_INLINE int SUF(width8)(const cd_conv *c, int w)
{
    int v = (w + 7) & ~7;
    return v > c->n1 ? c->n1 : v;
}

CD_HOT void SUF(cd_fft_cols)(cd_conv *c, const cd_plan *p, int V, ptrdiff_t ld, R *re, R *im)
{
    SUF(fft_cols)(c, p, V, ld, re, im);
}

CD_HOT void SUF(cd_fwd2d)(cd_conv *c, const R *a, ptrdiff_t lda, int ha, int wa, int oya,
                          int oxa, const R *b, ptrdiff_t ldb, int hb, int wb, int oyb, int oxb)
{
    const int n0 = c->n0, n1 = c->n1;
    int wc = oxa + wa;
    if (b != NULL && oxb + wb > wc)
        wc = oxb + wb;
    const int V = SUF(width8)(c, wc);
    R *yr = (R *)c->yr, *yi = (R *)c->yi, *tr = (R *)c->tr, *ti = (R *)c->ti;
    const ptrdiff_t ldy = c->ldy, ldt = c->ldt;
    SUF(place)(yr, ldy, n0, V, a, lda, ha, wa, oya, oxa);
    SUF(place)(yi, ldy, n0, V, b, ldb, hb, wb, oyb, oxb);
    /* columns >= wc are zero: transpose the others, clear the rest of the spectrum rows */
    SUF(fft_cols_to)(c, &c->p0, V, ldy, yr, yi, tr, ti, ldt, n0, wc);
    memset(tr + (size_t)wc * ldt, 0, (size_t)(n1 - wc) * ldt * sizeof(R));
    memset(ti + (size_t)wc * ldt, 0, (size_t)(n1 - wc) * ldt * sizeof(R));
    SUF(fft_cols)(c, &c->p1, n0, ldt, tr, ti);
}

/* The forward transform of two full (n0, n1) planes a, b (row stride ld) that are zero in
 * columns [wl, n1 - wr): wrapped kernels, whose taps sit at both ends of the rows. The
 * axis-0 pass runs on the wl + wr columns that hold taps only (a zero column transforms to
 * zeros), straight from the planes; each column is transformed by the same arithmetic as
 * in cd_fwd2d, so the spectrum is the same to the bit. */
CD_HOT void SUF(cd_fwd2d_wrapped)(cd_conv *c, const R *a, const R *b, ptrdiff_t ld, int wl,
                                  int wr)
{
    const int n0 = c->n0, n1 = c->n1;
    R *tr = (R *)c->tr, *ti = (R *)c->ti;
    const ptrdiff_t ldt = c->ldt;
    R *ar = (R *)a, *br = (R *)b; /* fft_cols_to only reads its input when given an output */
    if (wl < 0 || wr < 0 || wl + wr >= n1) {
        wl = n1;
        wr = 0;
    }
    SUF(fft_cols_to)(c, &c->p0, wl, ld, ar, br, tr, ti, ldt, n0, wl);
    memset(tr + (size_t)wl * ldt, 0, (size_t)(n1 - wr - wl) * ldt * sizeof(R));
    memset(ti + (size_t)wl * ldt, 0, (size_t)(n1 - wr - wl) * ldt * sizeof(R));
    if (wr > 0)
        SUF(fft_cols_to)(c, &c->p0, wr, ld, ar + (n1 - wr), br + (n1 - wr),
                         tr + (size_t)(n1 - wr) * ldt, ti + (size_t)(n1 - wr) * ldt, ldt, n0,
                         wr);
    SUF(fft_cols)(c, &c->p1, n0, ldt, tr, ti);
}

/* One spectrum row of pair_mul: z = Z(kx, .), u = Z(-kx, .) (mirrored in ky below). */
static CD_INLINE void SUF(pair_row)(int n0, const R *restrict zr, const R *restrict zi,
                                    const R *restrict ur, const R *restrict ui,
                                    const R *restrict far, const R *restrict fai,
                                    const R *restrict fbr, const R *restrict fbi,
                                    R *restrict wr, R *restrict wi, R sg)
{
    /* X_A = (Z(k) + conj Z(-k)) / 2, i X_B = (Z(k) - conj Z(-k)) / 2, W = FA X_A + FB i X_B */
    {
        const R mr = ur[0], mi = ui[0];
        const R xar = (zr[0] + mr) * (R)0.5, xai = (zi[0] - mi) * (R)0.5;
        const R xbr = (zr[0] - mr) * (R)0.5, xbi = (zi[0] + mi) * (R)0.5;
        const R ai = sg * fai[0], bi = sg * fbi[0];
        wr[0] = far[0] * xar - ai * xai + fbr[0] * xbr - bi * xbi;
        wi[0] = far[0] * xai + ai * xar + fbr[0] * xbi + bi * xbr;
    }
    const R *restrict vr = ur + n0, *restrict vi = ui + n0;
    for (int k = 1; k < n0; k++) {
        const R mr = vr[-k], mi = vi[-k];
        const R xar = (zr[k] + mr) * (R)0.5, xai = (zi[k] - mi) * (R)0.5;
        const R xbr = (zr[k] - mr) * (R)0.5, xbi = (zi[k] + mi) * (R)0.5;
        const R ai = sg * fai[k], bi = sg * fbi[k];
        wr[k] = far[k] * xar - ai * xai + fbr[k] * xbr - bi * xbi;
        wi[k] = far[k] * xai + ai * xar + fbr[k] * xbi + bi * xbr;
    }
}

static CD_INLINE void SUF(mul_row)(int n, const R *restrict zr, const R *restrict zi,
                                   const R *restrict fr, const R *restrict fi,
                                   R *restrict wr, R *restrict wi, R sg)
{
    for (int k = 0; k < n; k++) {
        const R ii = sg * fi[k];
        wr[k] = fr[k] * zr[k] - ii * zi[k];
        wi[k] = fr[k] * zi[k] + ii * zr[k];
    }
}

CD_HOT void SUF(cd_mul)(cd_conv *c, const R *f, int conj)
{
    const int n0 = c->n0, n1 = c->n1;
    const size_t nt = (size_t)n0 * n1;
    const ptrdiff_t ldt = c->ldt;
    for (int kx = 0; kx < n1; kx++) {
        const size_t o = (size_t)kx * n0;
        SUF(mul_row)(n0, (const R *)c->tr + kx * ldt, (const R *)c->ti + kx * ldt, f + o,
                     f + nt + o, (R *)c->wr + kx * ldt, (R *)c->wi + kx * ldt,
                     conj ? (R)-1 : (R)1);
    }
}

/* w = z * (fa + i fb), conjugating fa and fb when sg < 0 */
static CD_INLINE void SUF(mul2_row)(int n, const R *restrict zr, const R *restrict zi,
                                    const R *restrict far, const R *restrict fai,
                                    const R *restrict fbr, const R *restrict fbi,
                                    R *restrict wr, R *restrict wi, R sg)
{
    for (int k = 0; k < n; k++) {
        const R gr = far[k] - sg * fbi[k], gi = sg * fai[k] + fbr[k];
        wr[k] = gr * zr[k] - gi * zi[k];
        wi[k] = gr * zi[k] + gi * zr[k];
    }
}

CD_HOT void SUF(cd_mul2)(cd_conv *c, const R *fa, const R *fb, int conj)
{
    const int n0 = c->n0, n1 = c->n1;
    const size_t nt = (size_t)n0 * n1;
    const ptrdiff_t ldt = c->ldt;
    for (int kx = 0; kx < n1; kx++) {
        const size_t o = (size_t)kx * n0;
        SUF(mul2_row)(n0, (const R *)c->tr + kx * ldt, (const R *)c->ti + kx * ldt, fa + o,
                      fa + nt + o, fb + o, fb + nt + o, (R *)c->wr + kx * ldt,
                      (R *)c->wi + kx * ldt, conj ? (R)-1 : (R)1);
    }
}

void SUF(cd_spectrum)(const cd_conv *c, R *out)
{
    const int n0 = c->n0, n1 = c->n1;
    const size_t nt = (size_t)n0 * n1;
    for (int kx = 0; kx < n1; kx++) {
        memcpy(out + (size_t)kx * n0, (const R *)c->tr + kx * c->ldt, (size_t)n0 * sizeof(R));
        memcpy(out + nt + (size_t)kx * n0, (const R *)c->ti + kx * c->ldt,
               (size_t)n0 * sizeof(R));
    }
}

CD_HOT void SUF(cd_pair_mul)(cd_conv *c, const R *fa, const R *fb, int conj)
{
    const int n0 = c->n0, n1 = c->n1;
    const size_t nt = (size_t)n0 * n1;
    const ptrdiff_t ldt = c->ldt;
    const R sg = conj ? (R)-1 : (R)1;
    if (fb == NULL) {  /* the imaginary plane was zero: Z is the first plane's transform */
        SUF(cd_mul)(c, fa, conj);
        return;
    }
    const R *tr = (const R *)c->tr, *ti = (const R *)c->ti;
    R *wr = (R *)c->wr, *wi = (R *)c->wi;
    for (int kx = 0; kx < n1; kx++) {
        const int mx = kx ? n1 - kx : 0;
        const size_t o = (size_t)kx * n0;
        SUF(pair_row)(n0, tr + kx * ldt, ti + kx * ldt, tr + mx * ldt, ti + mx * ldt, fa + o,
                      fa + nt + o, fb + o, fb + nt + o, wr + kx * ldt, wi + kx * ldt, sg);
    }
}

CD_HOT void SUF(cd_inv2d)(cd_conv *c, R *a, ptrdiff_t lda, int ha, int wa, R *b, ptrdiff_t ldb,
                          int hb, int wb, int accumulate)
{
    const int n0 = c->n0, n1 = c->n1;
    const ptrdiff_t ldy = c->ldy, ldt = c->ldt;
    R *yr = (R *)c->yr, *yi = (R *)c->yi, *wr = (R *)c->wr, *wi = (R *)c->wi;
    /* inverse = forward with the real and imaginary planes swapped */
    int wc = wa;
    if (b != NULL && wb > wc)
        wc = wb;
    const int V = SUF(width8)(c, wc);
    (void)n1;
    /* only the first wc rows (x < wc) are needed: transpose those into the work grid */
    SUF(fft_cols_to)(c, &c->p1, n0, ldt, wi, wr, yi, yr, ldy, wc, n0);
    SUF(fft_cols)(c, &c->p0, V, ldy, yi, yr);
    const R scale = (R)(1.0 / ((double)n0 * (double)n1));
    for (int y = 0; y < ha; y++) {
        const R *restrict src = yr + y * ldy;
        R *restrict dst = a + y * lda;
        if (accumulate)
            for (int x = 0; x < wa; x++)
                dst[x] += src[x] * scale;
        else
            for (int x = 0; x < wa; x++)
                dst[x] = src[x] * scale;
    }
    if (b != NULL)
        for (int y = 0; y < hb; y++) {
            const R *restrict src = yi + y * ldy;
            R *restrict dst = b + y * ldb;
            if (accumulate)
                for (int x = 0; x < wb; x++)
                    dst[x] += src[x] * scale;
            else
                for (int x = 0; x < wb; x++)
                    dst[x] = src[x] * scale;
        }
}

/* ------------------------------------------------------------- one plane on several threads
 * The convolution of one real plane a (h x w, row stride lda, at the grid's origin) with one
 * kernel transform f (conjugated with conj) into out (h x w, row stride ldo): what
 * cd_fwd2d (no second plane), cd_pair_mul (no second kernel) and cd_inv2d compute, cut into
 * 8 phases (0-7) of which each of P threads runs part p, the threads waiting for each other
 * between phases. The parts split columns or rows, so every value is computed by the same
 * operations as in the one-thread calls (the same results). The grids are c's; the strip
 * buffers of the transforms are s's (the calling thread's own cd_conv on the same grid). */
static CD_INLINE void SUF(part)(int n, int p, int P, int *lo, int *hi)
{
    int chunk = ((n + P - 1) / P + 7) & ~7; /* whole vectors */
    long long a = (long long)p * chunk, b = a + chunk;
    *lo = a < n ? (int)a : n;
    *hi = b < n ? (int)b : n;
}

/* The phases cd_conv1_part and cd_rconv1_part share (1, 2, 4, 5 and 6): the transposes
 * between the two axes and the column transforms of c's grid. used: the plane columns (and
 * spectrum rows) in use; moved: those this part transposes (0 when the caller fused the
 * transposes into the transforms); V: the columns transformed along axis 0. */
static CD_INLINE void SUF(conv_phase)(cd_conv *c, cd_conv *s, int phase, int p, int P,
                                      int used, int moved, int V)
{
    const int n0 = c->n0, n1 = c->n1;
    const ptrdiff_t ldy = c->ldy, ldt = c->ldt;
    R *yr = (R *)c->yr, *yi = (R *)c->yi, *tr = (R *)c->tr, *ti = (R *)c->ti;
    R *wr = (R *)c->wr, *wi = (R *)c->wi;
    int lo, hi;
    switch (phase) {
    case 1: /* transpose columns lo..hi of the used ones; clear spectrum rows >= used */
        SUF(part)(moved, p, P, &lo, &hi);
        SUF(transpose)(n0, hi - lo, yr + lo, ldy, tr + (size_t)lo * ldt, ldt);
        SUF(transpose)(n0, hi - lo, yi + lo, ldy, ti + (size_t)lo * ldt, ldt);
        SUF(part)(n1 - used, p, P, &lo, &hi);
        memset(tr + (size_t)(used + lo) * ldt, 0, (size_t)(hi - lo) * ldt * sizeof(R));
        memset(ti + (size_t)(used + lo) * ldt, 0, (size_t)(hi - lo) * ldt * sizeof(R));
        return;
    case 2: /* transform along kx */
        SUF(part)(n0, p, P, &lo, &hi);
        if (hi > lo)
            SUF(fft_cols)(s, &c->p1, hi - lo, ldt, tr + lo, ti + lo);
        return;
    case 4: /* inverse along kx (forward with re and im swapped) */
        SUF(part)(n0, p, P, &lo, &hi);
        if (hi > lo)
            SUF(fft_cols)(s, &c->p1, hi - lo, ldt, wi + lo, wr + lo);
        return;
    case 5: /* transpose the used rows back */
        SUF(part)(moved, p, P, &lo, &hi);
        SUF(transpose)(hi - lo, n0, wr + (size_t)lo * ldt, ldt, yr + lo, ldy);
        SUF(transpose)(hi - lo, n0, wi + (size_t)lo * ldt, ldt, yi + lo, ldy);
        return;
    default: /* 6: inverse along axis 0 */
        SUF(part)(V, p, P, &lo, &hi);
        if (hi > lo)
            SUF(fft_cols)(s, &c->p0, hi - lo, ldy, yi + lo, yr + lo);
        return;
    }
}

CD_HOT void SUF(cd_conv1_part)(cd_conv *c, cd_conv *s, int phase, int p, int P, const R *a,
                               ptrdiff_t lda, int h, int w, const R *f, int conj, R *out,
                               ptrdiff_t ldo)
{
    const int n0 = c->n0, n1 = c->n1, V = SUF(width8)(c, w);
    const ptrdiff_t ldy = c->ldy, ldt = c->ldt;
    R *yr = (R *)c->yr, *yi = (R *)c->yi, *tr = (R *)c->tr, *ti = (R *)c->ti;
    R *wr = (R *)c->wr, *wi = (R *)c->wi;
    int lo, hi;
    switch (phase) {
    case 0: /* place the plane (columns lo..hi), transform them along axis 0 */
        SUF(part)(V, p, P, &lo, &hi);
        if (hi <= lo)
            return;
        for (int y = 0; y < n0; y++) {
            R *row = yr + y * ldy;
            memset(yi + y * ldy + lo, 0, (size_t)(hi - lo) * sizeof(R));
            int copy = y < h ? (w < hi ? w : hi) - lo : 0;
            if (copy < 0)
                copy = 0;
            if (copy > 0)
                memcpy(row + lo, a + y * lda + lo, (size_t)copy * sizeof(R));
            memset(row + lo + copy, 0, (size_t)(hi - lo - copy) * sizeof(R));
        }
        SUF(fft_cols)(s, &c->p0, hi - lo, ldy, yr + lo, yi + lo);
        return;
    case 1:
    case 2:
    case 4:
    case 5:
    case 6:
        SUF(conv_phase)(c, s, phase, p, P, w, w, V);
        return;
    case 3: { /* times the kernel, spectrum rows lo..hi */
        const size_t nt = (size_t)n0 * n1;
        SUF(part)(n1, p, P, &lo, &hi);
        for (int kx = lo; kx < hi; kx++) {
            const size_t o = (size_t)kx * n0;
            SUF(mul_row)(n0, tr + kx * ldt, ti + kx * ldt, f + o, f + nt + o, wr + kx * ldt,
                         wi + kx * ldt, conj ? (R)-1 : (R)1);
        }
        return;
    }
    default: { /* scaled real part, output rows lo..hi */
        const R scale = (R)(1.0 / ((double)n0 * (double)n1));
        SUF(part)(h, p, P, &lo, &hi);
        for (int y = lo; y < hi; y++) {
            const R *restrict src = yr + y * ldy;
            R *restrict dst = out + y * ldo;
            for (int x = 0; x < w; x++)
                dst[x] = src[x] * scale;
        }
        return;
    }
    }
}

/* ----------------------------------------------------- one real plane on a half-width grid
 * The convolution of cd_conv1_part (one real plane a, h x w at the origin, with one kernel
 * transform f of the full (n0, 2 M) grid, conjugated with conj, into out) computed with a
 * complex transform of half the width: c is a cd_conv of the (n0, M) grid. The even and odd
 * columns of the plane are packed as the real and imaginary parts of one (n0, M) plane
 * z = a[:, 0::2] + i a[:, 1::2]; its transform Z gives the half spectrum of the plane,
 * kx = 0 .. M, as X(ky, kx) = E + t O with t = exp(-2 pi i kx / 2M),
 * E = (Z(ky, kx) + conj Z(-ky, -kx)) / 2, O = (Z(ky, kx) - conj Z(-ky, -kx)) / 2i (kx mod
 * M); the product Y = F X (F: rows kx = 0 .. M of f) is packed back as
 * W(ky, k) = Y(ky, k) + Y(ky, k + M) + i exp(2 pi i k / 2M) (Y(ky, k) - Y(ky, k + M)),
 * k < M, with Y(ky, k + M) = conj Y(-ky, M - k) (Y is the spectrum of a real plane), whose
 * inverse holds the even output columns in its real part and the odd ones in its imaginary
 * part. The phases split as in cd_conv1_part (the same results for any P: alone, P = 1,
 * phases 0 and 4 write the transposes of phases 1 and 5 from their last stage, the same
 * values by the same operations, a pass over the grid fewer); phase 3 works
 * on the pairs of spectrum rows (k, M - k), k = 0 .. M / 2, with s's strip buffers as its
 * scratch rows. */

/* rows K of Y (K = 0 .. M): Y(ky, K) = F(ky, K) X(ky, K), into (yr, yi) */
static CD_INLINE void SUF(rhalf_row)(const cd_conv *c, int K, const R *f, int conj,
                                     R *restrict yr, R *restrict yi)
{
    const int n0 = c->n0, M = c->n1, N = 2 * M;
    const size_t nt = (size_t)n0 * N;
    const ptrdiff_t ldt = c->ldt;
    const int zk = K % M, zm = (M - zk) % M;
    const R *restrict ar = (const R *)c->tr + zk * ldt, *restrict ai = (const R *)c->ti + zk * ldt;
    const R *restrict br = (const R *)c->tr + zm * ldt, *restrict bi = (const R *)c->ti + zm * ldt;
    const R *restrict fr = f + (size_t)K * n0, *restrict fi = f + nt + (size_t)K * n0;
    const double ang = 2.0 * CD_PI * (double)K / (double)N;
    const R tc = (R)cos(ang), ts = (R)-sin(ang), sg = conj ? (R)-1 : (R)1;
    /* B at -ky: row start for ky = 0, then read backwards from its end (a loop without
     * the wrap, which vectorises) */
    const R *restrict vr = br + n0, *restrict vi = bi + n0;
#define CD_RHALF_Y(ky, mr, mi)                                                               \
    do {                                                                                     \
        /* S = A + conj B, D = A - conj B, X = (S - i t D) / 2 */                            \
        const R sr = ar[ky] + (mr), si = ai[ky] - (mi);                                      \
        const R dr = ar[ky] - (mr), di = ai[ky] + (mi);                                      \
        const R xr = (sr + tc * di + ts * dr) * (R)0.5;                                      \
        const R xi = (si - tc * dr + ts * di) * (R)0.5;                                      \
        const R gr = fr[ky], gi = sg * fi[ky];                                               \
        yr[ky] = gr * xr - gi * xi;                                                          \
        yi[ky] = gr * xi + gi * xr;                                                          \
    } while (0)
    CD_RHALF_Y(0, br[0], bi[0]);
    for (int ky = 1; ky < n0; ky++)
        CD_RHALF_Y(ky, vr[-ky], vi[-ky]);
#undef CD_RHALF_Y
}

/* row k of W from the rows k (p) and M - k (q) of Y */
static CD_INLINE void SUF(rhalf_pack)(int n0, int k, int M, const R *restrict pr,
                                      const R *restrict pi, const R *restrict qr,
                                      const R *restrict qi, R *restrict wr, R *restrict wi)
{
    const double ang = 2.0 * CD_PI * (double)k / (double)(2 * M);
    const R uc = (R)cos(ang), us = (R)sin(ang);
    const R *restrict vr = qr + n0, *restrict vi = qi + n0;
#define CD_RHALF_W(ky, mr, mi)                                                               \
    do {                                                                                     \
        /* P + Q and P - Q, Q = conj Y(-ky, M - k); W = (P + Q) + i u (P - Q) */             \
        const R ser = pr[ky] + (mr), sei = pi[ky] - (mi);                                    \
        const R dor = pr[ky] - (mr), doi = pi[ky] + (mi);                                    \
        wr[ky] = ser - uc * doi - us * dor;                                                  \
        wi[ky] = sei + uc * dor - us * doi;                                                  \
    } while (0)
    CD_RHALF_W(0, qr[0], qi[0]);
    for (int ky = 1; ky < n0; ky++)
        CD_RHALF_W(ky, vr[-ky], vi[-ky]);
#undef CD_RHALF_W
}

CD_HOT void SUF(cd_rconv1_part)(cd_conv *c, cd_conv *s, int phase, int p, int P, const R *a,
                                ptrdiff_t lda, int h, int w, const R *f, int conj, R *out,
                                ptrdiff_t ldo)
{
    const int n0 = c->n0, M = c->n1, wz = (w + 1) / 2, V = SUF(width8)(c, wz);
    const ptrdiff_t ldy = c->ldy, ldt = c->ldt;
    R *yr = (R *)c->yr, *yi = (R *)c->yi, *tr = (R *)c->tr, *ti = (R *)c->ti;
    R *wr = (R *)c->wr, *wi = (R *)c->wi;
    int lo, hi;
    switch (phase) {
    case 0: /* pack the plane's columns 2k, 2k + 1 (k = lo..hi), transform along axis 0 */
        SUF(part)(V, p, P, &lo, &hi);
        if (hi <= lo)
            return;
        {
            /* columns k < kp hold whole pairs; k = w / 2 of an odd w only an even column */
            const int kp = w / 2 < lo ? lo : w / 2 < hi ? w / 2 : hi;
            const int ke = w % 2 && w / 2 >= lo && w / 2 < hi;
            for (int y = 0; y < n0; y++) {
                R *restrict rr = yr + y * ldy, *restrict ri = yi + y * ldy;
                int k = lo;
                if (y < h) {
                    const R *restrict src = a + y * lda;
                    for (; k < kp; k++) {
                        rr[k] = src[2 * k];
                        ri[k] = src[2 * k + 1];
                    }
                    if (ke) {
                        rr[k] = src[2 * k];
                        ri[k] = 0;
                        k++;
                    }
                }
                memset(rr + k, 0, (size_t)(hi - k) * sizeof(R));
                memset(ri + k, 0, (size_t)(hi - k) * sizeof(R));
            }
        }
        if (P == 1) /* alone: phase 1's transpose fused into the transform's last stage */
            SUF(fft_cols_to)(s, &c->p0, V, ldy, yr, yi, tr, ti, ldt, n0, wz);
        else
            SUF(fft_cols)(s, &c->p0, hi - lo, ldy, yr + lo, yi + lo);
        return;
    case 3: { /* unpack, times the kernel, pack: the row pairs (k, M - k), k = lo..hi */
        R *pr = (R *)s->ar, *pi = (R *)s->ai, *qr = (R *)s->br, *qi = (R *)s->bi;
        SUF(part)(M / 2 + 1, p, P, &lo, &hi);
        for (int k = lo; k < hi; k++) {
            SUF(rhalf_row)(c, k, f, conj, pr, pi);
            SUF(rhalf_row)(c, M - k, f, conj, qr, qi);
            SUF(rhalf_pack)(n0, k, M, pr, pi, qr, qi, wr + k * ldt, wi + k * ldt);
            if (k > 0 && 2 * k != M)
                SUF(rhalf_pack)(n0, M - k, M, qr, qi, pr, pi, wr + (M - k) * ldt,
                                wi + (M - k) * ldt);
        }
        return;
    }
    case 4: /* inverse along kx (forward with re and im swapped) */
        if (P == 1) { /* alone: phase 5's transpose fused into the last stage */
            SUF(fft_cols_to)(s, &c->p1, n0, ldt, wi, wr, yi, yr, ldy, wz, n0);
            return;
        }
        /* fall through */
    case 1: /* with P = 1 phase 0 wrote the transpose: nothing to move */
    case 2:
    case 5:
    case 6:
        SUF(conv_phase)(c, s, phase, p, P, wz, P == 1 ? 0 : wz, V);
        return;
    default: { /* scaled, unpacked: output rows lo..hi */
        const R scale = (R)(1.0 / ((double)n0 * (double)(2 * M)));
        SUF(part)(h, p, P, &lo, &hi);
        for (int y = lo; y < hi; y++) {
            const R *restrict sr = yr + y * ldy, *restrict si = yi + y * ldy;
            R *restrict dst = out + y * ldo;
            for (int m = 0; m < w / 2; m++) {
                dst[2 * m] = sr[m] * scale;
                dst[2 * m + 1] = si[m] * scale;
            }
            if (w % 2)
                dst[w - 1] = sr[w / 2] * scale;
        }
        return;
    }
    }
}
