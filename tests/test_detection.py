"""Detection: detection image, footprints, peaks, grouping and whole-image deblending."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

import cdeblend as cdb
from cdeblend.detection import find_footprints, find_peaks, group_peaks


def gaussian(H, W, y, x, sigma, flux):
    yy, xx = np.mgrid[:H, :W]
    g = np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))
    return flux * g / g.sum()


def gaussian_psf(fwhm, size):
    s = fwhm / 2.3548
    yy, xx = np.mgrid[:size, :size] - size // 2
    p = np.exp(-(yy**2 + xx**2) / (2 * s * s))
    return p / p.sum()


def scene(seed=0):
    rng = np.random.default_rng(seed)
    H, W = 60, 80
    img = (
        gaussian(H, W, 20, 20, 2.0, 3000)
        + gaussian(H, W, 24, 29, 2.0, 2000)  # blended with the first
        + gaussian(H, W, 45, 62, 1.5, 1500)  # isolated
    )
    var = np.full((H, W), 4.0)
    img = img + rng.normal(0, 2, (H, W))
    return img, var


def test_detection_image_formula():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(3, 12, 14))
    variance = rng.uniform(0.5, 2, size=(3, 12, 14))
    det = cdb.detection_image(images, variance)
    ref = (images / variance).sum(0) / np.sqrt((1 / variance).sum(0))
    np.testing.assert_allclose(det, ref, rtol=1e-12)
    # One band: S/N per pixel.
    np.testing.assert_allclose(
        cdb.detection_image(images[0], variance[0]), images[0] / np.sqrt(variance[0]), rtol=1e-12
    )


def test_matched_filter_against_direct_correlation():
    rng = np.random.default_rng(2)
    images = rng.normal(size=(2, 20, 22))
    variance = rng.uniform(0.5, 2, size=(2, 20, 22))
    psf = rng.random((5, 5))
    psf /= psf.sum()
    det = cdb.detection_image(images, variance, psf)
    num = (images / variance).sum(0)
    den = (1 / variance).sum(0)
    ref_num = ndimage.correlate(num, psf, mode="constant")
    ref_den = ndimage.correlate(den, psf * psf, mode="constant")
    np.testing.assert_allclose(det, ref_num / np.sqrt(ref_den), rtol=1e-9, atol=1e-9)


def test_gaussian_matched_filter_gives_point_source_snr():
    # A noiseless Gaussian point source: the matched-filter S/N at its centre is
    # sqrt(sum(model^2 / var)), which the Gaussian filter reproduces when the PSF is Gaussian.
    H = W = 41
    fwhm = 4.0
    model = gaussian(H, W, 20, 20, fwhm / 2.3548, 500.0)
    var = np.full((H, W), 2.0)
    det = cdb.detection_image(model, var, psf_fwhm=fwhm)
    expect = np.sqrt((model**2 / var).sum())
    assert det[20, 20] == pytest.approx(expect, rel=2e-3)
    assert np.unravel_index(np.argmax(det), det.shape) == (20, 20)


def test_footprints_threshold_growth_and_merging():
    det = np.zeros((30, 30))
    det[5:8, 5:8] = 10  # a 3x3 source
    det[5:8, 12:15] = 10  # 4 pixels away: merges after growing by 2
    det[25, 25] = 10  # a single pixel: dropped with min_area 2
    labels, n = find_footprints(det, nsigma=5, grow=0, min_area=1)
    assert n == 3
    labels, n = find_footprints(det, nsigma=5, grow=0, min_area=2)
    assert n == 2 and labels[25, 25] == 0
    labels, n = find_footprints(det, nsigma=5, grow=2, min_area=2)
    assert n == 1
    # Growing is a disc of radius 2 around the 3x3 block.
    assert labels[3, 6] and labels[9, 6] and not labels[2, 6]
    assert not labels[3, 3]  # the corner offset (2, 2) is outside a radius-2 disc
    # A one-pixel bump next to a footprint merges into it instead of being dropped.
    det2 = np.zeros((20, 20))
    det2[5:8, 5:8] = 10
    det2[6, 10] = 10
    labels, n = find_footprints(det2, nsigma=5, grow=2, min_area=2)
    assert n == 1 and labels[6, 10] == labels[6, 6] == 1
    labels, n = find_footprints(det2, nsigma=5, grow=0, min_area=2)
    assert n == 1 and labels[6, 10] == 0
    with pytest.raises(ValueError, match="grow"):
        find_footprints(det, grow=-1)


def test_peaks_separation_and_order():
    det = np.zeros((20, 20))
    labels = np.ones((20, 20), np.int32)
    det[5, 5] = 10
    det[5, 7] = 8  # 2 pixels from a brighter peak
    det[12, 12] = 20
    det[12, 16] = 9  # 4 away
    det[2, 15] = 4  # below threshold
    pk = find_peaks(det, labels, nsigma=5)
    assert pk.tolist() == [[12, 12], [5, 5], [12, 16], [5, 7]]
    # closer than 2.5 pixels to a brighter peak: dropped; 4 away: kept
    pk = find_peaks(det, labels, nsigma=5, min_separation=2.5)
    assert pk.tolist() == [[12, 12], [5, 5], [12, 16]]
    # A flat plateau gives one peak.
    det2 = np.zeros((10, 10))
    det2[4:6, 4:6] = 7
    assert find_peaks(det2, labels[:10, :10], nsigma=5).tolist() == [[4, 4]]


def test_detect_and_group_peaks():
    img, var = scene()
    parents = cdb.detect(img, var, psf=gaussian_psf(4.7, 15), nsigma=5, grow=2)
    assert len(parents) == 2
    big = max(parents, key=lambda p: len(p.peaks))
    assert len(big.peaks) == 2
    assert {tuple(p) for p in big.peaks} == {(20, 20), (24, 29)}
    for p in parents:
        assert isinstance(p, cdb.Parent)
        y0, x0, h, w = p.box
        assert p.footprint.shape == (h, w)
        for y, x in p.peaks:
            assert p.footprint[y - y0, x - x0]
    # The caller's peaks, with one in the background (an orphan) and their row order kept.
    mine = [(45, 62), (20, 20), (2, 2), (24, 29)]
    parents = cdb.detect(img, var, psf=gaussian_psf(4.7, 15), nsigma=5, grow=2, peaks=mine)
    rows = sorted(int(i) for p in parents for i in p.peak_index)
    assert rows == [0, 1, 2, 3]
    orphan = [p for p in parents if 2 in p.peak_index][0]
    assert orphan.peaks.tolist() == [[2, 2]] and orphan.area <= 13
    with pytest.raises(ValueError, match=r"peaks\[2\].*no footprint"):
        cdb.detect(img, var, nsigma=5, grow=2, peaks=mine, orphans="raise")
    dropped = cdb.detect(img, var, nsigma=5, grow=2, peaks=mine, orphans="drop")
    assert sorted(int(i) for p in dropped for i in p.peak_index) == [0, 1, 3]


def test_group_peaks_by_label():
    labels = np.zeros((10, 10), np.int32)
    labels[0:4, 0:4] = 1
    labels[6:10, 6:10] = 2
    parents = group_peaks([(1, 1), (7, 7), (2, 2)], labels)
    assert [p.id for p in parents] == [1, 2]
    assert parents[0].peak_index.tolist() == [0, 2]
    assert parents[0].box == (0, 0, 4, 4)
    with pytest.raises(TypeError, match="labels"):
        group_peaks([(1, 1)], labels.astype(float))
    with pytest.raises(ValueError, match="orphans"):
        group_peaks([(1, 1)], labels, orphans="keep")


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-6), (np.float64, 1e-12)])
def test_deblend_image_conserves_flux_on_every_footprint(dtype, tol):
    img, var = scene(3)
    img, var = img.astype(dtype), var.astype(dtype)
    cfg = cdb.SingleBandConfig(stray_flux_rule="r-to-peak")
    results = cdb.deblend_image(img, var, gaussian_psf(4.7, 15), config=cfg, nsigma=5, grow=2)
    assert len(results) == 2
    total = np.zeros(img.shape)
    fp = np.zeros(img.shape, bool)
    stray = 0.0
    for r in results:
        total += r.conserved_images(img.shape).astype(np.float64).sum(axis=0)
        fp |= r.parent.full_footprint(img.shape)
        if r.result.children:
            stray += r.result.stray_flux
    assert np.all(total[~fp] == 0)
    img64 = img.astype(np.float64)
    # Children (and a single-peak parent's own image) plus stray flux give the image.
    assert abs(total[fp].sum() + stray - img64[fp].sum()) <= tol * np.abs(img64).sum()
    # Pixel-wise where no flux stayed unassigned.
    ok = fp & (img64 > 0)
    assert np.abs(total[ok] - img64[ok]).max() <= tol * np.abs(img64).max()


def test_deblend_image_bad_input():
    img, var = scene()
    psf = gaussian_psf(4.7, 15)
    # no data (all variance negative) is not an error: nothing is detected
    assert cdb.deblend_image(img, -var, psf) == []
    with pytest.raises(ValueError, match="psf must have odd"):
        cdb.deblend_image(img, var, np.full((4, 4), 1 / 16))
    with pytest.raises(ValueError, match="variance has shape"):
        cdb.deblend_image(img, var[:, :-1], psf)
    with pytest.raises(TypeError, match="mask must be bool"):
        cdb.deblend_image(img, var, psf, mask=np.zeros(img.shape))
    with pytest.raises(ValueError, match="images must have 2 or 3"):
        cdb.detect(img[None, None], var[None, None])
    with pytest.raises(TypeError, match="detect needs variance"):
        cdb.detect(img)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.integers(1, 30), st.floats(0.3, 6.0), st.integers(0, 2**32 - 1))
def test_separable_smooth_matches_scipy(H, W, sigma, seed):
    from cdeblend import _detection_cy
    from cdeblend.detection.image import _gauss_kernel

    img = np.random.default_rng(seed).normal(size=(H, W))
    out = np.empty_like(img)
    _detection_cy.separable_smooth(img, _gauss_kernel(sigma), np.empty_like(img), out)
    ref = ndimage.gaussian_filter(img, sigma, mode="constant", truncate=3.5)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    bands=st.integers(1, 4),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_snr_coadd_and_noise_rms_kernels_match_numpy(seed, bands, dtype):
    """The catalog's S/N coadd and noise RMS against numpy, with pixels of zero, negative,
    infinite and NaN variance (no information) and NaN images."""
    from cdeblend import _detection_cy

    rng = np.random.default_rng(seed)
    H, W = int(rng.integers(1, 20)), int(rng.integers(1, 20))
    images = rng.normal(size=(bands, H, W)).astype(dtype)
    variance = rng.uniform(0.1, 3, size=(bands, H, W)).astype(dtype)
    bad = rng.random(variance.shape)
    variance[bad < 0.1] = 0
    variance[(bad >= 0.1) & (bad < 0.15)] = np.inf
    variance[(bad >= 0.15) & (bad < 0.2)] = np.nan
    variance[(bad >= 0.2) & (bad < 0.22)] = -1
    out = np.empty((H, W))
    _detection_cy.snr_coadd(images, variance, out)
    v = variance.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = np.where((v > 0) & np.isfinite(v), 1.0 / v, 0.0)
        num, den = (images * ivar).sum(axis=0), ivar.sum(axis=0)
        ref = np.where(den > 0, num / np.sqrt(den), 0.0)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-300)
    for b in range(bands):
        good = np.isfinite(v[b])
        mean, n = _detection_cy.mean_sqrt(variance[b])
        assert n == good.sum()
        if n:
            with np.errstate(invalid="ignore"):  # sqrt of the negative test values
                np.testing.assert_allclose(mean, np.mean(np.sqrt(v[b][good])), rtol=1e-12)
        else:
            assert np.isnan(mean)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    bands=st.integers(1, 5),
    dtypes=st.sampled_from([(np.float64,) * 2, (np.float32,) * 2, (np.float32, np.float64)]),
)
def test_unfiltered_detection_image_is_the_coadd_ratio_to_the_bit(seed, bands, dtypes):
    """One detection image: unfiltered (the catalog's grouping of peaks uses it) it is the
    S/N kernel's, and that equals ``num / sqrt(den)`` of the coadd the filtered images are
    made from, bit for bit and sign of zero included, with pixels without data (zero, NaN,
    infinite variance; NaN or infinite values; negative zeros) and in either precision."""
    from cdeblend.detection.image import coadd

    rng = np.random.default_rng(seed)
    H, W = int(rng.integers(1, 30)), int(rng.integers(1, 30))
    images = (rng.normal(size=(bands, H, W)) * 10.0 ** rng.uniform(-3, 4)).astype(dtypes[0])
    variance = rng.uniform(1e-3, 1e3, size=(bands, H, W)).astype(dtypes[1])
    u = rng.random(images.shape)
    variance[u < 0.1] = 0
    variance[(u >= 0.1) & (u < 0.15)] = np.nan
    variance[(u >= 0.15) & (u < 0.2)] = np.inf
    images[(u >= 0.2) & (u < 0.25)] = np.nan
    images[(u >= 0.25) & (u < 0.3)] = -0.0
    det = cdb.detection_image(images, variance)
    num, den = coadd(images, variance)
    ref = np.divide(num, np.sqrt(den), out=np.zeros_like(num), where=den > 0)
    assert det.dtype == np.float64 and det.shape == (H, W)
    assert np.array_equal(det, ref)
    assert np.array_equal(np.signbit(det), np.signbit(ref))


@settings(max_examples=80, deadline=None)
@given(H=st.integers(1, 40), W=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_label_footprints_matches_scipy(H, W, seed):
    """The catalog's footprint labelling: scipy's 8-connected labels (same numbering, raster
    order of first pixels) and find_objects boxes, from sparse to dense masks."""
    from cdeblend import _detection_cy

    rng = np.random.default_rng(seed)
    on = rng.random((H, W)) < rng.random() ** 2
    ref, n = ndimage.label(on, structure=np.ones((3, 3), bool))
    labels = np.full((H, W), -7, dtype=np.int32)
    boxes = _detection_cy.label_footprints(on.view(np.uint8), labels)
    assert np.array_equal(labels, ref)
    assert boxes.shape == (n, 4)
    for k, sl in enumerate(ndimage.find_objects(ref)):
        assert tuple(boxes[k]) == (
            sl[0].start,
            sl[1].start,
            sl[0].stop - sl[0].start,
            sl[1].stop - sl[1].start,
        )


# --- peak culling: the merge tree against a slow reference, and hand-made scenes ---


def merge_tree_reference(image, labels):
    """Slow merge tree from its definition, with scipy's labelling of level sets.

    Pixels are ranked brightest first (ties: raster order). A peak is a pixel none of whose
    8-neighbours in its footprint ranks before it. Peak p merges at the first rank t at
    which its connected region among the pixels of rank <= t (same footprint) holds a pixel
    ranking before p; the saddle is the value of the pixel of rank t, and the two regions
    just before are p's and the brightest one adjacent to that pixel.
    """
    H, W = image.shape
    idx = np.flatnonzero(labels.ravel() > 0)
    order = idx[np.lexsort((idx, -image.ravel()[idx]))]
    rank = np.full(H * W, np.iinfo(np.int64).max)
    rank[order] = np.arange(len(order))
    rank = rank.reshape(H, W)
    eight = np.ones((3, 3), bool)

    def regions(t):
        on = rank <= t
        out = np.zeros((H, W), np.int64)
        n = 0
        for lab in np.unique(labels[labels > 0]):
            sub, k = ndimage.label(on & (labels == lab), structure=eight)
            out[sub > 0] = sub[sub > 0] + n
            n += k
        return out

    peaks = []
    for t, p in enumerate(order):
        y, x = divmod(int(p), W)
        nb = rank[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
        same = labels[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2] == labels[y, x]
        if not (same & (nb < t)).any():
            peaks.append((y, x))
    peak_of = {pk: k for k, pk in enumerate(peaks)}
    out = {"peak": np.array(peaks), "into": [], "saddle": [], "npix": [], "flux": []}
    for y, x in peaks:
        r0 = rank[y, x]
        for t in range(r0 + 1, len(order)):
            before = regions(t - 1)
            after = regions(t)
            comp = after == after[y, x]
            if (rank[comp] < r0).any():
                own = before == before[y, x]
                py, px = divmod(int(order[t]), W)
                win = rank.max()
                for yy in range(max(py - 1, 0), min(py + 2, H)):
                    for xx in range(max(px - 1, 0), min(px + 2, W)):
                        if before[yy, xx] and labels[yy, xx] == labels[py, px]:
                            reg = before == before[yy, xx]
                            win = min(win, rank[reg].min())
                wreg = before == before.ravel()[order[win]]
                top = divmod(int(order[win]), W)
                out["into"].append(peak_of[top])
                out["saddle"].append(image[py, px])
                out["npix"].append((own.sum(), wreg.sum()))
                out["flux"].append((image[own].sum(), image[wreg].sum()))
                break
        else:
            out["into"].append(-1)
            out["saddle"].append(np.nan)
            out["npix"].append((0, 0))
            out["flux"].append((0.0, 0.0))
    return {k: np.array(v) for k, v in out.items()}


@settings(max_examples=40, deadline=None)
@given(H=st.integers(1, 9), W=st.integers(1, 9), seed=st.integers(0, 2**16), ties=st.booleans())
def test_merge_tree_matches_reference(H, W, seed, ties):
    from cdeblend import _detection_cy
    from cdeblend.detection.peaks import _merge_tree

    rng = np.random.default_rng(seed)
    image = rng.normal(size=(H, W))
    if ties:  # plateaus and equal saddles
        image = np.round(image * 2) / 2
    labels = (rng.random((H, W)) < 0.8).astype(np.int32)
    labels[labels > 0], _ = ndimage.label(labels > 0, structure=np.ones((3, 3)))[0][labels > 0], 0
    got = _merge_tree(image, labels)
    ref = merge_tree_reference(image, labels)
    assert got["peak"].reshape(-1, 2).tolist() == ref["peak"].reshape(-1, 2).tolist()
    if len(ref["peak"]) == 0:
        return
    assert got["into"].tolist() == ref["into"].tolist()
    np.testing.assert_array_equal(got["saddle"], ref["saddle"])
    assert got["npix"].tolist() == ref["npix"].tolist()
    np.testing.assert_allclose(got["flux"], ref["flux"], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got["value"], image[tuple(ref["peak"].T)])
    # the brightest peak of each footprint carries the footprint's count and sum
    for k in np.flatnonzero(ref["into"] < 0):
        lab = labels[tuple(ref["peak"][k])]
        assert got["total_npix"][k] == (labels == lab).sum()
        assert got["total_flux"][k] == pytest.approx(image[labels == lab].sum(), abs=1e-12)
    with pytest.raises(ValueError, match="more than once"):
        _detection_cy.merge_tree(image, labels, np.zeros(2, np.int64))


@settings(max_examples=60, deadline=None)
@given(K=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_keep_along_tree_matches_reference(K, seed):
    from cdeblend import _detection_cy

    rng = np.random.default_rng(seed)
    into = np.array([-1] + [int(rng.integers(-1, k)) for k in range(1, K)], np.int64)
    keep = (rng.random(K) < 0.7).astype(np.uint8)
    ref = keep.astype(bool).copy()
    for k in range(K):  # kept iff every peak on the path to its root is
        j = k
        while j >= 0:
            ref[k] &= bool(keep[j])
            j = into[j]
    _detection_cy.keep_along_tree(into, keep)
    assert keep.astype(bool).tolist() == ref.tolist()
    with pytest.raises(ValueError, match="must be <"):
        _detection_cy.keep_along_tree(np.array([0], np.int64), np.ones(1, np.uint8))


def two_sources(sep_fwhm, flux2, fwhm=4.0, seed=0, noise=1.0):
    rng = np.random.default_rng(seed)
    H, W = 48, 64
    s = fwhm / 2.3548
    img = gaussian(H, W, 24, 20, s, 3000.0) + gaussian(H, W, 24, 20 + sep_fwhm * fwhm, s, flux2)
    return img + rng.normal(0, noise, (H, W)), np.full((H, W), noise**2)


def test_two_far_sources_give_two_peaks():
    img, var = two_sources(6.0, 2000.0)
    parents = cdb.detect(img, var, psf_fwhm=4.0)
    peaks = sorted(tuple(p) for q in parents for p in q.peaks)
    assert len(peaks) == 2
    assert np.abs(np.array(peaks) - [[24, 20], [24, 44]]).max() <= 1


@pytest.mark.parametrize("seed", range(5))
def test_close_pair_at_1p5_fwhm_stays_two(seed):
    img, var = two_sources(1.5, 2400.0, seed=seed)
    parents = cdb.detect(img, var, psf_fwhm=4.0)
    assert len(parents) == 1
    pk = parents[0].peaks
    assert len(pk) == 2
    assert np.abs(np.sort(pk[:, 1]) - [20, 26]).max() <= 1


@pytest.mark.parametrize("seed", range(5))
def test_one_galaxy_with_noise_is_one_peak(seed):
    # an extended galaxy (sigma 10 px, PSF FWHM 3 px) at S/N ~ 16 per pixel in its centre:
    # noise bumps make many local maxima on it, the culling keeps its centre only
    rng = np.random.default_rng(seed)
    H = W = 64
    img = gaussian(H, W, 32, 30, 10.0, 1e4) + rng.normal(0, 1.0, (H, W))
    var = np.ones((H, W))
    parents = cdb.detect(img, var, psf_fwhm=3.0)
    assert len(parents) == 1 and len(parents[0].peaks) == 1
    assert np.abs(parents[0].peaks[0] - [32, 30]).max() <= 2
    loose = cdb.detect(
        img, var, psf_fwhm=3.0, min_contrast=0, peak_significance=0, min_separation=0
    )
    assert sum(len(p.peaks) for p in loose) > 5


def bump_scene():
    """A bright noiseless galaxy with a faint compact bump on its wing, on one row."""
    yy, xx = np.mgrid[:60, :80]
    galaxy = 1e4 * np.exp(-0.5 * ((yy - 30) ** 2 + (xx - 30) ** 2) / 6.0**2)
    bump = 40 * np.exp(-0.5 * ((yy - 30) ** 2 + (xx - 54) ** 2) / 1.5**2)
    return galaxy + bump


def test_faint_bump_below_contrast_is_culled():
    image = bump_scene()
    labels = (image > 1.0).astype(np.int32)
    kw = dict(nsigma=1.0, contrast_reference="neighbour")
    kept = find_peaks(image, labels, **kw)
    assert kept.tolist() == [[30, 30], [30, 54]]
    # by hand: the scene is symmetric about row 30, so the saddle is the lowest value on
    # that row between the peaks; just above it the two regions are apart
    s = image[30, 30:55].min()
    regions, _ = ndimage.label(image > s, structure=np.ones((3, 3)))
    own = regions == regions[30, 54]
    galaxy = regions == regions[30, 30]
    assert not (own & galaxy).any()
    above = (image[own] - s).sum()
    ratio = above / (image[galaxy] - s).sum()
    assert 0 < ratio < 0.005
    assert find_peaks(image, labels, min_contrast=0.005, **kw).tolist() == [[30, 30]]
    assert find_peaks(image, labels, min_contrast=0.98 * ratio, **kw).tolist() == kept.tolist()
    assert find_peaks(image, labels, min_contrast=1.02 * ratio, **kw).tolist() == [[30, 30]]
    # relative to the footprint's flux above the threshold (SExtractor's reference)
    fr = above / image[(labels > 0) & (image > 1.0)].sum()
    kw["contrast_reference"] = "footprint"
    assert find_peaks(image, labels, min_contrast=0.98 * fr, **kw).tolist() == kept.tolist()
    assert find_peaks(image, labels, min_contrast=1.02 * fr, **kw).tolist() == [[30, 30]]


def test_peak_significance_is_height_above_the_saddle():
    det = np.zeros((9, 20))
    det[4, 3] = 30.0
    det[4, 4:12] = 10.0  # a ridge: the saddle between the peaks is at 10
    det[4, 12] = 13.0  # 3 above the saddle
    labels = (det > 0).astype(np.int32)
    assert len(find_peaks(det, labels, nsigma=5, peak_significance=2.9)) == 2
    assert len(find_peaks(det, labels, nsigma=5, peak_significance=3.1)) == 1
    # in noise units: the same heights with noise 2 are 1.5 sigma
    assert len(find_peaks(det, labels, nsigma=5, peak_significance=1.4, noise=2.0)) == 2
    assert len(find_peaks(det, labels, nsigma=5, peak_significance=1.6, noise=2.0)) == 1
    # a region of fewer pixels than min_area above its saddle is culled
    assert len(find_peaks(det, labels, nsigma=5, min_area=2)) == 1


def test_culled_region_takes_its_peaks_along():
    # C merges into B at 30, then B (with C) into the big A at 10
    det = np.zeros((12, 40))
    det[1:11, 0:10] = 90.0
    det[5, 5] = 100.0  # A, 100 pixels at 90-100
    det[5, 10:15] = 10.0  # the ridge A-B
    det[5, 15] = 40.0  # B
    det[5, 16:18] = 30.0  # the ridge B-C
    det[5, 18] = 38.0  # C
    labels = (det > 0).astype(np.int32)
    kw = dict(nsigma=5, contrast_reference="neighbour")
    assert find_peaks(det, labels, **kw).tolist() == [[5, 5], [5, 15], [5, 18]]
    # by hand, above the saddles: C / B = 8 / 10; (B + C) / A = 98 / 8000
    assert find_peaks(det, labels, min_contrast=0.5, **kw).tolist() == [[5, 5]]
    assert find_peaks(det, labels, min_contrast=0.011, **kw).tolist() == [[5, 5], [5, 15], [5, 18]]
    # B fails 0.05 of A, C passes it against B but goes with B
    assert find_peaks(det, labels, min_contrast=0.05, **kw).tolist() == [[5, 5]]


def test_conv_filter_units_and_noise():
    rng = np.random.default_rng(4)
    img = rng.normal(0, 2.0, (200, 200))
    var = np.full(img.shape, 4.0)
    conv = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], float)
    det = cdb.detection_image(img, var, kernel=conv, filter_type="conv")
    ref = ndimage.correlate(img, conv / 16, mode="constant") / 2.0
    np.testing.assert_allclose(det[1:-1, 1:-1], ref[1:-1, 1:-1], rtol=1e-12)
    noise = cdb.detection.filter_noise(kernel=conv, filter_type="conv")
    assert noise == pytest.approx(np.sqrt(((conv / 16) ** 2).sum()))
    assert det[5:-5, 5:-5].std() == pytest.approx(noise, rel=0.05)
    # the Gaussian's noise: 1 / (2 sqrt(pi) s)
    g = cdb.detection_image(img, var, psf_fwhm=4.0, filter_type="conv")
    assert g[10:-10, 10:-10].std() == pytest.approx(
        cdb.detection.filter_noise(psf_fwhm=4.0, filter_type="conv"), rel=0.1
    )
    # the matched filter's is 1
    m = cdb.detection_image(img, var, kernel=conv)
    assert m[5:-5, 5:-5].std() == pytest.approx(1.0, rel=0.05)


def test_sextractor_settings_and_bad_arguments():
    img, var = scene()
    conv = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], float)
    parents = cdb.detect(img, var, nsigma=1.5, min_area=5, grow=0, kernel=conv, filter_type="conv")
    assert len(parents) >= 2
    for p in parents:  # no growing: every footprint pixel is above 1.5 sigma filtered
        det = cdb.detection_image(img, var, kernel=conv, filter_type="conv")
        assert (det[p.full_footprint(img.shape)] > 1.5).all()
    with pytest.raises(ValueError, match="kernel must have odd"):
        cdb.detect(img, var, kernel=np.ones((2, 2)))
    with pytest.raises(ValueError, match="kernel must have a positive"):
        cdb.detect(img, var, kernel=-np.ones((3, 3)))
    with pytest.raises(ValueError, match="filter_type"):
        cdb.detect(img, var, kernel=conv, filter_type="gauss")
    with pytest.raises(ValueError, match="contrast_reference"):
        cdb.detect(img, var, contrast_reference="parent")
    with pytest.raises(ValueError, match="min_contrast"):
        cdb.detect(img, var, min_contrast=-0.1)
    with pytest.raises(ValueError, match="peak_significance"):
        cdb.detect(img, var, peak_significance=np.nan)
    with pytest.raises(ValueError, match="peak_filter"):
        cdb.detect(img, var, psf_fwhm=4.0, peak_filter=0.0)
    with pytest.raises(ValueError, match="noise"):
        find_peaks(img, np.ones(img.shape, np.int32), noise=0.0)


def test_catalog_detects_with_the_psf_and_the_config_options():
    img, var = scene()
    psf = gaussian_psf(4.7, 15)

    def peaks_per_parent(cat):
        return sorted(int(n) for n in cat["n_peaks"][cat["is_parent"]])

    cat, _ = cdb.deblend_catalog(img, variance=var, psf=psf, progress=False, executor="serial")
    assert peaks_per_parent(cat) == sorted(len(p.peaks) for p in cdb.detect(img, var, psf=psf))
    assert peaks_per_parent(cat) == [1, 2]
    # a minimum separation of 3 FWHM (14 px) merges the pair 9.8 px apart
    cfg = cdb.CatalogConfig(detection={"min_separation": 3.0})
    cat, _ = cdb.deblend_catalog(
        img, variance=var, psf=psf, progress=False, executor="serial", config=cfg
    )
    assert peaks_per_parent(cat) == [1, 1]


def test_deblend_image_passes_detection_options():
    img, var = scene(3)
    psf = gaussian_psf(4.7, 15)
    both = cdb.deblend_image(img, var, psf)
    assert sorted(len(r.parent.peaks) for r in both) == [1, 2]
    one = cdb.deblend_image(img, var, psf, min_separation=3.0)
    assert sorted(len(r.parent.peaks) for r in one) == [1, 1]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), ref=st.sampled_from(["footprint", "neighbour"]))
def test_stricter_culling_keeps_a_subset(seed, ref):
    """Each test is a threshold and a culled region takes its peaks along, so raising any
    threshold keeps a subset of the peaks, all of them local maxima of the image."""
    rng = np.random.default_rng(seed)
    H, W = 30, 40
    img = ndimage.gaussian_filter(rng.normal(size=(H, W)), 1.0) * 3
    for _ in range(4):
        img += gaussian(H, W, *rng.uniform(5, 25, 2), rng.uniform(1, 4), rng.uniform(20, 400))
    labels, _ = find_footprints(img, nsigma=0.5, grow=1)
    loose = find_peaks(img, labels, nsigma=0.5, contrast_reference=ref)
    mx = ndimage.maximum_filter(img, size=3, mode="constant", cval=-np.inf)
    assert all(img[y, x] == mx[y, x] for y, x in loose)
    prev = {tuple(p) for p in loose}
    for c, sig, area in [(0.001, 0.5, 1), (0.01, 1.0, 2), (0.05, 2.0, 4), (0.2, 4.0, 8)]:
        cur = {
            tuple(p)
            for p in find_peaks(
                img,
                labels,
                nsigma=0.5,
                min_contrast=c,
                peak_significance=sig,
                min_area=area,
                contrast_reference=ref,
            )
        }
        assert cur <= prev
        # the brightest peak of every footprint always stays
        for lab in np.unique(labels[labels > 0]):
            inside = [p for p in loose if labels[tuple(p)] == lab]
            if inside:
                assert tuple(inside[0]) in cur
        prev = cur


def test_an_image_with_its_sky_warns(caplog):
    img, var = scene()
    with caplog.at_level("WARNING", logger="cdeblend.detection"):
        cdb.detect(img, var, psf_fwhm=4.0)
    assert not caplog.records
    with caplog.at_level("WARNING", logger="cdeblend.detection"):
        parents = cdb.detect(img + 50.0, var, psf_fwhm=4.0)
    assert len(parents) == 1
    assert "not background-subtracted" in caplog.text


def test_measure_noise_on_correlated_noise(caplog):
    # noise smoothed like a drizzled image, with its true per-pixel variance 1: the
    # filtered noise is larger than the variance says, which breeds false detections
    rng = np.random.default_rng(11)
    H = W = 160
    noise = ndimage.gaussian_filter(rng.normal(size=(H, W)), 1.2)
    noise /= noise.std()
    img = noise + gaussian(H, W, 80, 80, 2.0, 400.0)
    var = np.ones((H, W))
    naive = cdb.detect(img, var, psf_fwhm=4.0)
    measured = cdb.detect(img, var, psf_fwhm=4.0, measure_noise=True)
    assert len(naive) > 5
    assert len(measured) == 1
    assert np.abs(measured[0].peaks[0] - [80, 80]).max() <= 1
    # the rescaling is the robust sigma outside the footprints, by hand
    det = cdb.detection_image(img, var, psf_fwhm=4.0)
    labels, _ = find_footprints(det, nsigma=5.0, grow=2, min_area=3)
    out = det[labels == 0]
    sigma = 1.4826 * np.median(np.abs(out - np.median(out)))
    assert sigma > 1.5
    expect, _ = find_footprints(det / sigma, nsigma=5.0, grow=2, min_area=3)
    got = np.zeros((H, W), bool)
    for p in measured:
        got |= p.full_footprint((H, W))
    assert np.array_equal(got, expect > 0)
    # too few pixels outside the footprints: the variance is used, and it is logged
    with caplog.at_level("INFO", logger="cdeblend.detection"):
        small = cdb.detect(img[65:95, 65:95], var[:30, :30], psf_fwhm=4.0, measure_noise=True)
    assert "using the variance" in caplog.text
    assert len(small) == len(cdb.detect(img[65:95, 65:95], var[:30, :30], psf_fwhm=4.0))


@pytest.mark.parametrize("size", [3, 7])  # the direct and the FFT correlation
@pytest.mark.parametrize("filter_type", ["matched", "conv"])
def test_filtered_detection_image_against_direct_correlation(size, filter_type):
    rng = np.random.default_rng(size)
    images = rng.normal(size=(2, 25, 31))
    variance = rng.uniform(0.5, 2, size=(2, 25, 31))
    k = rng.random((size, size)) + 0.1
    det = cdb.detection_image(images, variance, kernel=k, filter_type=filter_type)
    p = k / k.sum()
    num = ndimage.correlate((images / variance).sum(0), p, mode="constant")
    w = p if filter_type == "conv" else p * p
    den = ndimage.correlate((1 / variance).sum(0), w, mode="constant")
    np.testing.assert_allclose(det, num / np.sqrt(den), rtol=1e-9, atol=1e-12)


def test_unsubtracted_sky_warns_on_a_field_not_on_a_filled_cutout(caplog):
    """A field whose sky was left in is above threshold nearly everywhere: warned. A small
    cutout that one galaxy fills is too, with a clean sky: not warned."""
    import logging

    from cdeblend.detection import detect

    rng = np.random.default_rng(5)
    field = 50.0 + rng.normal(0.0, 1.0, (120, 120))
    with caplog.at_level(logging.WARNING, logger="cdeblend"):
        detect(field, np.ones_like(field))
    assert any("background-subtracted" in r.getMessage() for r in caplog.records)
    caplog.clear()
    yy, xx = np.mgrid[:40, :40]
    galaxy = 400.0 * np.exp(-np.hypot(yy - 20, xx - 20) / 15.0) + rng.normal(0, 1, (40, 40))
    with caplog.at_level(logging.WARNING, logger="cdeblend"):
        detect(galaxy, np.ones_like(galaxy))
    assert not any("background-subtracted" in r.getMessage() for r in caplog.records)
