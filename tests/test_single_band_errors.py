"""The single-band children's wing light and total flux error (``Child.wing_flux``,
``Child.flux_total_err``; docs/trust.md): a hand-made star, slow references of the wing
sums, and a check against simulated truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cdeblend import SingleBandConfig, SingleBandDeblender
from cdeblend.single_band.frame import paste
from cdeblend.single_band.wings import inside_fraction, outside_ratio, point_outside_ratio

DATA = Path(__file__).parent / "data"


def gaussian_psf(sigma: float, size: int) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size // 2
    p = np.exp(-0.5 * (x**2 + y**2) / sigma**2)
    return p / p.sum()


def dense(values: np.ndarray, box, shape) -> np.ndarray:
    out = np.zeros(shape)
    paste(out, values, box)
    return out


# --------------------------------------------------------------------- a lone star
def lone_star(variance: float = 4.0):
    """A noiseless PSF star at a pixel centre, a disc footprint that cuts its wings."""
    H, W, cy, cx, flux = 41, 43, 20, 21, 5000.0
    psf = gaussian_psf(2.0, 25)
    image = np.zeros((H, W))
    paste(image, flux * psf, (cy - 12, cx - 12, 25, 25))
    yy, xx = np.mgrid[:H, :W]
    footprint = (yy - cy) ** 2 + (xx - cx) ** 2 <= 5.5**2
    var = np.full((H, W), variance)
    return image, var, psf, (cy, cx), footprint


def test_lone_star_errors_reduce_to_the_noise_and_its_lost_wings():
    """A lone PSF star: no deblending error, the noise error is the variance summed over
    the footprint, and the wing light is exactly the star's light outside the footprint."""
    image, var, psf, peak, footprint = lone_star()
    cfg = SingleBandConfig(deblend_single_peak=True)
    res = SingleBandDeblender(cfg).deblend(image, var, psf, np.array([peak]), footprint=footprint)
    (child,) = res.children
    assert child.template_kind == "psf"
    assert child.flux == pytest.approx(image[footprint].sum(), rel=1e-9)
    assert child.deblend_flux_err == pytest.approx(0.0, abs=1e-9 * child.flux)
    assert child.flux_err == pytest.approx(np.sqrt(var[footprint].sum()), rel=1e-9)
    # a pixel-centred star: the PSF fit may move its centre by a hair (Lanczos shift)
    assert child.wing_flux == pytest.approx(image[~footprint].sum(), rel=2e-3)
    assert child.flux_total_err == pytest.approx(np.hypot(child.flux_err, child.wing_flux))
    np.testing.assert_array_equal(res.wing_flux, [child.wing_flux])
    np.testing.assert_array_equal(res.flux_total_err, [child.flux_total_err])


def test_pixels_without_data_count_as_outside():
    """The light in footprint pixels without data is lost too: it joins the wing light."""
    image, var, psf, peak, footprint = lone_star()
    var[18:23, 24:26] = np.inf  # no data, inside the footprint
    cfg = SingleBandConfig(deblend_single_peak=True)
    res = SingleBandDeblender(cfg).deblend(image, var, psf, np.array([peak]), footprint=footprint)
    (child,) = res.children
    counted = footprint & np.isfinite(var)
    assert child.flux == pytest.approx(image[counted].sum(), rel=1e-9)
    assert child.wing_flux == pytest.approx(image[~counted].sum(), rel=2e-3)


def test_extended_child_wing_is_its_template_spread_by_the_psf():
    """A galaxy's wing light: its template's pixels taken as point sources, each seen
    through the PSF (slow sum over every template pixel), scaled to the child's flux."""
    H, W = 50, 60
    yy, xx = np.mgrid[:H, :W]
    psf = gaussian_psf(1.5, 15)
    galaxy = np.exp(-np.hypot((yy - 22) / 4.0, (xx - 20) / 2.5))
    star = np.exp(-0.5 * ((yy - 30) ** 2 + (xx - 44) ** 2) / 1.5**2)
    image = 3000 * galaxy / galaxy.sum() + 800 * star / star.sum()
    var = np.full((H, W), 1.0)
    footprint = image > 0.5
    peaks = np.array([(22, 20), (30, 44)])
    res = SingleBandDeblender().deblend(image, var, psf, peaks, footprint=footprint)
    child = next(c for c in res.children if c.index == 0)
    assert child.template_kind != "psf"
    t = dense(np.maximum(child.template, 0), child.template_box, (H, W))
    inside = total = 0.0
    for q in zip(*np.nonzero(t), strict=True):
        light = dense(psf, (q[0] - 7, q[1] - 7, 15, 15), (H, W))
        inside += t[q] * light[footprint].sum()
        total += t[q] * psf.sum()
    assert child.wing_flux == pytest.approx(child.flux * (total - inside) / inside, rel=1e-6)
    expected = np.sqrt(child.flux_err**2 + child.deblend_flux_err**2 + child.wing_flux**2)
    assert child.flux_total_err == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------- slow references
def test_inside_fraction_matches_a_slow_sum():
    """f(q) = sum_{p in region} P(p - q), with an asymmetric PSF and a moved centre."""
    rng = np.random.default_rng(5)
    region = rng.random((13, 17)) < 0.6
    psf = rng.random((5, 7))
    for center in (None, (1, 4)):
        cy, cx = (2, 3) if center is None else center
        f = inside_fraction(region, psf, center)
        slow = np.zeros(region.shape)
        for qy, qx in np.ndindex(*region.shape):
            slow[qy, qx] = dense(psf, (qy - cy, qx - cx, 5, 7), region.shape)[region].sum()
        np.testing.assert_allclose(f, slow, atol=1e-12)


def test_outside_ratios_match_slow_sums():
    """The point-source and template ratios against direct sums (the PSF's box reaching
    out of the frame; negative template values count as 0)."""
    rng = np.random.default_rng(6)
    region = rng.random((12, 14)) < 0.7
    psf = rng.random((5, 5))
    light = dense(psf, (-2, 10, 5, 5), region.shape)
    expected = (psf.sum() - light[region].sum()) / light[region].sum()
    assert point_outside_ratio(psf, (-2, 10), region) == pytest.approx(expected, rel=1e-12)
    template = rng.normal(size=(4, 6)) + 0.5
    box = (8, 0, 4, 6)
    f = inside_fraction(region, psf)
    inside = total = 0.0
    for (ty, tx), v in np.ndenumerate(np.maximum(template, 0)):
        q = (box[0] + ty, box[1] + tx)
        fq = dense(psf, (q[0] - 2, q[1] - 2, 5, 5), region.shape)[region].sum()
        inside += v * fq
        total += v * psf.sum()
    got = outside_ratio(template, box, f, float(psf.sum()))
    assert got == pytest.approx((total - inside) / inside, rel=1e-10)
    assert outside_ratio(np.zeros((2, 2)), (0, 0, 2, 2), f, 1.0) == 0.0


# --------------------------------------------------------------------- simulated truth
SIM_FILES = [
    "sim_single_blend_0002.npz",
    "sim_single_blend_0007.npz",
    "single_tune_blend_0000.npz",
    "single_tune_blend_0001.npz",
    "single_tune_blend_0002.npz",
    "single_tune_blend_0003.npz",
]


def sim_pulls() -> tuple[np.ndarray, np.ndarray]:
    """(F - F_true) / sigma of every child with truth S/N >= 20 in the copied simulations,
    with ``flux_total_err`` and with ``flux_err``."""
    total, noise = [], []
    for name in SIM_FILES:
        with np.load(DATA / name) as d:
            cat, true = d["catalog"], d["true_images"][:, 0].astype(np.float64)
            image, var, psf = d["images"][0], d["variance"][0], d["psfs"][0].astype(np.float64)
            true_flux = d["true_flux"][:, 0]
        peaks = np.stack([cat["y"], cat["x"]], axis=1).astype(np.int64)
        snr = np.sqrt((true**2 / var).sum(axis=(1, 2)))
        res = SingleBandDeblender().deblend(image, var, psf, peaks)
        for c in res.children:
            if snr[c.index] >= 20:
                total.append((c.flux - true_flux[c.index]) / c.flux_total_err)
                noise.append((c.flux - true_flux[c.index]) / c.flux_err)
    return np.array(total), np.array(noise)


def test_total_error_describes_the_truth_on_simulations():
    """On a few simulated blends (docs/trust.md has the full sets), the pulls with the
    total error have a width near 1 (tolerant: 13 entries), none beyond 7 sigma, while the
    noise error alone is several times too small."""
    total, noise = sim_pulls()
    assert total.size >= 10
    width = np.median(np.abs(total)) / 0.6745
    assert 0.5 < width < 2.0
    assert np.all(np.abs(total) < 7)
    assert np.median(np.abs(noise)) / 0.6745 > 2 * width


# --------------------------------------------------------------------- catalog
class Recorder:
    """The single-band deblender, keeping every result it returns."""

    def __init__(self) -> None:
        self.deblender = SingleBandDeblender()
        self.results: list = []

    def deblend(self, *args, **kwargs):
        res = self.deblender.deblend(*args, **kwargs)
        self.results.append(res)
        return res


def test_catalog_has_the_wing_column():
    """``flux_wing`` is each child's ``wing_flux``; with ``flux_conserved_err`` and
    ``flux_deblend_err`` in quadrature it gives ``flux_total_err``."""
    from cdeblend.catalog import deblend_catalog

    rng = np.random.default_rng(7)
    H, W = 40, 70
    psf = gaussian_psf(1.4, 15)
    image = np.zeros((H, W))
    for y, x, f in ((12, 12, 900.0), (14, 18, 500.0), (28, 50, 700.0), (25, 55, 300.0)):
        paste(image, f * psf, (y - 7, x - 7, 15, 15))
    var = np.full((H, W), 0.25)
    image += rng.normal(0, 0.5, (H, W))
    peaks = np.array([(12, 12), (14, 18), (28, 50), (25, 55)])
    rec = Recorder()
    cat, _ = deblend_catalog(
        image,
        peaks=peaks,
        variance=var,
        psf=psf,
        executor="serial",
        progress=False,
        deblender_factory=lambda kind, config, **kw: rec,
    )
    kids = np.asarray(cat)[~np.asarray(cat)["is_parent"]]
    children = [c for res in rec.results for c in res.children]
    assert len(kids) == len(children) == 4
    wing = np.array([c.wing_flux for c in children])
    assert np.all(wing > 0)
    np.testing.assert_array_equal(kids["flux_wing"][:, 0], wing)
    total = np.sqrt(
        kids["flux_conserved_err"][:, 0] ** 2
        + kids["flux_deblend_err"][:, 0] ** 2
        + kids["flux_wing"][:, 0] ** 2
    )
    np.testing.assert_allclose(total, [c.flux_total_err for c in children], rtol=1e-12)
