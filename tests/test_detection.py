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
    det[5, 7] = 8  # within 2 of a brighter peak: not a peak
    det[12, 12] = 20
    det[12, 16] = 9  # 4 away: a peak of its own
    det[2, 15] = 4  # below threshold
    pk = find_peaks(det, labels, nsigma=5, min_separation=2)
    assert pk.tolist() == [[12, 12], [5, 5], [12, 16]]
    # A flat plateau gives one peak.
    det2 = np.zeros((10, 10))
    det2[4:6, 4:6] = 7
    assert len(find_peaks(det2, labels[:10, :10], nsigma=5, min_separation=2)) == 1


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
    from cdeblend import _symmetric_cy
    from cdeblend.detection import _gauss_kernel

    img = np.random.default_rng(seed).normal(size=(H, W))
    out = np.empty_like(img)
    _symmetric_cy.separable_smooth(img, _gauss_kernel(sigma), np.empty_like(img), out)
    ref = ndimage.gaussian_filter(img, sigma, mode="constant", truncate=3.5)
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)


def test_min_contrast_drops_bumps_on_a_profile_but_keeps_a_pair():
    from cdeblend.detection import find_peaks

    yy, xx = np.mgrid[:40, :60]
    galaxy = 100 * np.exp(-0.5 * ((yy - 20) ** 2 + (xx - 20) ** 2) / 6.0**2)
    # a bump on the galaxy's flank: a local maximum that barely dips towards the centre
    bump = galaxy.copy()
    bump[20, 28] = bump[20, 27] + 1.0
    # a second source beyond a real valley
    pair = galaxy + 60 * np.exp(-0.5 * ((yy - 20) ** 2 + (xx - 45) ** 2) / 2.0**2)
    labels = np.ones(galaxy.shape, dtype=np.int64)
    assert len(find_peaks(bump, labels, nsigma=1.0, min_separation=1)) == 2
    kept = find_peaks(bump, labels, nsigma=1.0, min_separation=1, min_contrast=0.2)
    assert kept.tolist() == [[20, 20]]
    # the pair's valley by hand: the minimum of the image on the row between the peaks
    valley = pair[20, 20:46].min()
    contrast = 1 - valley / pair[20, 45]
    assert contrast > 0.5
    kept = find_peaks(pair, labels, nsigma=1.0, min_separation=1, min_contrast=0.9 * contrast)
    assert kept.tolist() == [[20, 20], [20, 45]]
    kept = find_peaks(pair, labels, nsigma=1.0, min_separation=1, min_contrast=1.1 * contrast)
    assert kept.tolist() == [[20, 20]]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), bands=st.integers(1, 4),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_snr_coadd_and_noise_rms_kernels_match_numpy(seed, bands, dtype):
    """The catalog's S/N coadd and noise RMS against numpy, with pixels of zero, negative,
    infinite and NaN variance (no information) and NaN images."""
    from cdeblend import _symmetric_cy

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
    _symmetric_cy.snr_coadd(images, variance, out)
    v = variance.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = np.where((v > 0) & np.isfinite(v), 1.0 / v, 0.0)
        num, den = (images * ivar).sum(axis=0), ivar.sum(axis=0)
        ref = np.where(den > 0, num / np.sqrt(den), 0.0)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-300)
    for b in range(bands):
        good = np.isfinite(v[b])
        mean, n = _symmetric_cy.mean_sqrt(variance[b])
        assert n == good.sum()
        if n:
            with np.errstate(invalid="ignore"):  # sqrt of the negative test values
                np.testing.assert_allclose(mean, np.mean(np.sqrt(v[b][good])), rtol=1e-12)
        else:
            assert np.isnan(mean)


@settings(max_examples=80, deadline=None)
@given(H=st.integers(1, 40), W=st.integers(1, 40), seed=st.integers(0, 2**16))
def test_label_footprints_matches_scipy(H, W, seed):
    """The catalog's footprint labelling: scipy's 8-connected labels (same numbering, raster
    order of first pixels) and find_objects boxes, from sparse to dense masks."""
    from cdeblend import _symmetric_cy

    rng = np.random.default_rng(seed)
    on = rng.random((H, W)) < rng.random() ** 2
    ref, n = ndimage.label(on, structure=np.ones((3, 3), bool))
    labels = np.full((H, W), -7, dtype=np.int32)
    boxes = _symmetric_cy.label_footprints(on.view(np.uint8), labels)
    assert np.array_equal(labels, ref)
    assert boxes.shape == (n, 4)
    for k, sl in enumerate(ndimage.find_objects(ref)):
        assert tuple(boxes[k]) == (sl[0].start, sl[1].start, sl[0].stop - sl[0].start,
                                   sl[1].stop - sl[1].start)
