"""The one-call single-band API: its default footprint is the whole-image path's, and the
default and LSST settings."""

import inspect
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cdeblend import SingleBandConfig, SingleBandDeblender
from cdeblend import single_band as sb
from cdeblend.detection import deblend_image

DATA = Path(__file__).parent / "data"


def load(name):
    with np.load(DATA / name) as d:
        peaks = np.stack([d["catalog"]["y"], d["catalog"]["x"]], axis=1).astype(np.int64)
        return (
            d["images"][0],
            d["variance"][0],
            d["psfs"][0].astype(np.float64),
            peaks,
            d["true_flux"][:, 0],
        )


def whole_image(image, variance, psf, peaks, config=None):
    """(N, H, W) conserved children of deblend_image, rows in peak order, and the parents."""
    out = np.zeros((len(peaks),) + image.shape)
    parents = deblend_image(image, variance, psf, config, peaks=peaks)
    for pr in parents:
        out[pr.parent.peak_index] += pr.conserved_images(image.shape)
    return out, parents


@pytest.mark.parametrize("config", [SingleBandConfig(), SingleBandConfig.lsst()])
def test_one_call_gives_the_whole_image_result(config):
    """sim_single blend 2: every peak lies in one detection footprint; the one call without
    footprint= deblends that parent, as deblend_image does."""
    image, variance, psf, peaks, true_flux = load("sim_single_blend_0002.npz")
    whole, parents = whole_image(image, variance, psf, peaks, config)
    assert len(parents) == 1
    res = SingleBandDeblender(config).deblend(image, variance, psf, peaks)
    fp = parents[0].parent.full_footprint(image.shape)
    ry, rx, rh, rw = res.footprint_box
    mine = np.zeros(image.shape, dtype=bool)
    mine[ry : ry + rh, rx : rx + rw] = res.footprint
    np.testing.assert_array_equal(mine, fp)
    # the same parent and peaks: the same children (the cut-out only moves the frame)
    np.testing.assert_allclose(
        res.conserved_images(), whole, rtol=1e-6, atol=1e-6 * np.abs(image).max()
    )
    # and a footprint, not a fractal of noise: every child within a factor 2 of its truth
    flux = res.conserved_images().sum(axis=(1, 2))
    assert np.all(np.abs(flux / true_flux - 1) < 1)


def test_faint_peak_on_a_negative_pixel_gets_a_small_footprint():
    """sim_single blend 7: a faint peak sits on a negative pixel (the old default, pixels
    above 0 sigma connected to a peak, raised ValueError there)."""
    image, variance, psf, peaks, _ = load("sim_single_blend_0007.npz")
    assert np.any(image[peaks[:, 0], peaks[:, 1]] <= 0)
    with pytest.raises(ValueError, match="outside the footprint"):
        SingleBandDeblender(SingleBandConfig(footprint_nsigma=0.0)).deblend(
            image, variance, psf, peaks
        )
    res = SingleBandDeblender().deblend(image, variance, psf, peaks)
    y0, x0, h, w = res.footprint_box
    fp = np.zeros(image.shape, dtype=bool)
    fp[y0 : y0 + h, x0 : x0 + w] = res.footprint
    assert fp[peaks[:, 0], peaks[:, 1]].all()
    # the footprint is the union of deblend_image's parents (its peak-less discs included)
    _, parents = whole_image(image, variance, psf, peaks)
    union = np.zeros(image.shape, dtype=bool)
    for pr in parents:
        union |= pr.parent.full_footprint(image.shape)
    np.testing.assert_array_equal(fp, union)


def test_peak_in_empty_sky_gets_a_disc_of_its_own():
    rng = np.random.default_rng(5)
    H = W = 60
    yy, xx = np.mgrid[:H, :W]
    psf = np.exp(-0.5 * ((yy[:15, :15] - 7) ** 2 + (xx[:15, :15] - 7) ** 2) / 1.5**2)
    psf /= psf.sum()
    image = 2000 * np.exp(-0.5 * ((yy - 20) ** 2 + (xx - 20) ** 2) / 2.5**2)
    image += rng.normal(size=(H, W))
    peaks = np.array([[20, 20], [50, 50]])
    image[50, 50] = -1.0  # below any threshold
    res = SingleBandDeblender().deblend(image, np.ones((H, W)), psf, peaks)
    y0, x0, h, w = res.footprint_box
    fp = np.zeros((H, W), dtype=bool)
    fp[y0 : y0 + h, x0 : x0 + w] = res.footprint
    r = sb.DETECT_GROW
    disc = (yy - 50) ** 2 + (xx - 50) ** 2 <= r * r
    np.testing.assert_array_equal(fp[40:, 40:], disc[40:, 40:])


def test_footprint_constants_are_deblend_image_defaults():
    params = inspect.signature(deblend_image).parameters
    assert params["nsigma"].default == sb.DETECT_NSIGMA
    assert params["grow"].default == sb.DETECT_GROW
    assert params["min_area"].default == sb.DETECT_MIN_AREA


def test_lsst_preset_and_defaults():
    lsst = SingleBandConfig.lsst()
    assert not lsst.weight_templates and lsst.stray_flux_rule == "trim"
    default = SingleBandConfig()
    assert default.weight_templates and default.stray_flux_rule == "r-to-peak"
    assert default.footprint_nsigma is None
    # everything else is the task's
    assert (
        SingleBandConfig(
            weight_templates=False,
            weight_by_variance=False,
            stray_flux_rule="trim",
            subpixel_centers=False,
            half_pixel_symmetry=False,
            median_filter_halfsize=2,
            faint_psf_snr=0.0,
            faint_psf_flux_floor=0.0,
            subtract_psf_templates=False,
        )
        == lsst
    )
    assert SingleBandConfig.lsst(max_number_of_peaks=3).max_number_of_peaks == 3
    with pytest.raises(ValueError, match="footprint_nsigma"):
        SingleBandConfig(footprint_nsigma=float("nan"))


def test_template_weight_floor_keeps_every_bright_source():
    """A harder simulated single-band blend (blend 10 of seed 2003, made by the data folder's
    make_blends.py, truth kept; its ``description`` gives the command) where the
    unconstrained template weights leave a source with S/N >= 20 without flux; the default
    floor gives every such source its share."""
    f = np.load(DATA / "hard_single_blend_0010.npz")
    peaks = np.stack([f["catalog"]["y"], f["catalog"]["x"]], axis=1)
    bright = f["snr"] >= 20
    kept = {}
    for floor in (0.0, SingleBandConfig().min_template_weight):
        res = SingleBandDeblender(SingleBandConfig(min_template_weight=floor)).deblend(
            f["images"][0], f["variance"][0], f["psfs"][0].astype(np.float64), peaks
        )
        kept[floor] = res.conserved_images().sum(axis=(1, 2)) / f["true_flux"][:, 0]
    assert np.any(bright & (kept[0.0] < 0.05))  # the failure the floor is for
    assert not np.any(bright & (kept[0.1] < 0.05))


@pytest.mark.parametrize("bad", [-0.1, np.nan, np.inf])
def test_template_weight_floor_is_checked(bad):
    with pytest.raises(ValueError, match="min_template_weight"):
        SingleBandConfig(min_template_weight=bad)


@pytest.mark.parametrize("name", ["faint_psf_snr", "faint_psf_ratio", "faint_psf_flux_floor"])
@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_faint_psf_settings_are_checked(name, bad):
    with pytest.raises(ValueError, match=name):
        SingleBandConfig(**{name: bad})


def test_faint_peak_on_a_bright_wing_takes_the_psf_template():
    """A harder simulated blend (seed 2003's blend 24, made by the data folder's
    make_blends.py, truth kept): a faint galaxy (catalog row 3) on a brighter neighbour's
    wing fails the PSF fit's chi^2 because of the neighbour; its symmetric template holds
    more than 5 times its PSF-fit flux, mostly the neighbour's light. The default gives it
    the PSF template, and its flux comes within 30% of the truth instead of several times
    it; without the rule (faint_psf_snr=0) nothing changes in kind. The point sources are
    left in the image here (subtract_psf_templates=False) and the PSF template's weight has
    the plain floor (faint_psf_flux_floor=0), so that only this rule acts; with the
    default floor (at least 0.7 times what the floored symmetric template held) it keeps
    the PSF template and its error stays well under the symmetric template's."""
    image, variance, psf, peaks, true_flux = load("hard_single_blend_2003_0024.npz")
    keep = SingleBandConfig(subtract_psf_templates=False, faint_psf_flux_floor=0.0)
    new = SingleBandDeblender(keep).deblend(image, variance, psf, peaks)
    old = SingleBandDeblender(replace(keep, faint_psf_snr=0.0)).deblend(image, variance, psf, peaks)
    c_new = next(c for c in new.children if c.index == 3)
    c_old = next(c for c in old.children if c.index == 3)
    assert "faint_psf" in c_new.flags and c_new.template_kind == "psf"
    assert "faint_psf" not in c_old.flags and c_old.template_kind != "psf"
    assert not any("faint_psf" in c.flags for c in old.children)
    assert abs(c_new.flux / true_flux[3] - 1) < 0.3
    assert abs(c_old.flux / true_flux[3] - 1) > 1
    floored = SingleBandDeblender(replace(keep, faint_psf_flux_floor=0.7)).deblend(
        image, variance, psf, peaks
    )
    c_fl = next(c for c in floored.children if c.index == 3)
    assert "faint_psf" in c_fl.flags and c_fl.template_kind == "psf"
    assert abs(c_fl.flux / true_flux[3] - 1) < 0.5 * abs(c_old.flux / true_flux[3] - 1)
    # the swap is a template choice: the children still add up to the footprint's image
    for res in (new, old):
        y0, x0, h, w = res.footprint_box
        total = res.conserved_images().sum(axis=0)[y0 : y0 + h, x0 : x0 + w] + res.unassigned
        np.testing.assert_allclose(
            total[res.footprint], image[y0 : y0 + h, x0 : x0 + w][res.footprint], atol=1e-3
        )


def test_point_source_behind_a_neighbours_mirror_keeps_its_flux():
    """A harder simulated blend (seed 2003's blend 171, made by the data folder's
    make_blends.py, truth kept): source 4 (S/N 21) gets a PSF template, but its mirror image
    about source 1 lands on source 0, so source 1's symmetric template (the minimum of the
    two) holds source 4's light, and the joint fit floors source 4's template: it kept 6% of
    its flux (mirrored about the peak pixels). With the symmetric templates made from the
    image minus the PSF templates and mirrored about the half-pixel centres (the defaults) it
    keeps more than 40%, and the children still add up to the image."""
    image, variance, psf, peaks, true_flux = load("hard_single_blend_2003_0171.npz")
    kept = {}
    for sub in (False, True):
        config = SingleBandConfig(subtract_psf_templates=sub, half_pixel_symmetry=sub)
        res = SingleBandDeblender(config).deblend(image, variance, psf, peaks)
        c = next(c for c in res.children if c.index == 4)
        assert c.template_kind == "psf"
        kept[sub] = c.flux / true_flux[4]
        y0, x0, h, w = res.footprint_box
        total = res.conserved_images().sum(axis=0)[y0 : y0 + h, x0 : x0 + w] + res.unassigned
        np.testing.assert_allclose(
            total[res.footprint], image[y0 : y0 + h, x0 : x0 + w][res.footprint], atol=1e-3
        )
    assert kept[False] < 0.1  # the failure
    assert kept[True] > 0.4


def test_faint_peak_refitted_without_its_neighbours_takes_the_psf_template():
    """A harder simulated blend (seed 2003's blend 149, made by the data folder's
    make_blends.py, truth kept): source 7 (S/N 8.7) fails the PSF fit's chi^2, but the fit
    also took its neighbours' wings for its flux (S/N above faint_psf_snr). Refitted on the
    image minus the other templates it is faint, and its symmetric template (8 times its
    true flux) gives way to the PSF template of that fit: the error drops from +275% to
    about +30% (with the templates mirrored about the peak pixels, from +707% to +200%: the
    faint source still takes part of the wings it sits on). With the default weight floor
    of such a template (``faint_psf_flux_floor=0.7``: at least 0.7 times what the floored
    symmetric template held) it keeps the PSF template and the error is about +50%."""
    image, variance, psf, peaks, true_flux = load("hard_single_blend_2003_0149.npz")
    floored = SingleBandDeblender().deblend(image, variance, psf, peaks)
    c_fl = next(c for c in floored.children if c.index == 7)
    assert "faint_psf" in c_fl.flags and c_fl.template_kind == "psf"
    new = SingleBandDeblender(SingleBandConfig(faint_psf_flux_floor=0.0)).deblend(
        image, variance, psf, peaks
    )
    old = SingleBandDeblender(SingleBandConfig(faint_psf_snr=0)).deblend(
        image, variance, psf, peaks
    )
    c_new = next(c for c in new.children if c.index == 7)
    c_old = next(c for c in old.children if c.index == 7)
    assert "faint_psf" in c_new.flags and c_new.template_kind == "psf"
    assert c_old.template_kind != "psf"
    # the child's PSF-fit record is the refit its template comes from
    assert c_new.psf_flux > 0
    # (the PSF template is flux x PSF cut to the footprint: its sum is a little smaller)
    np.testing.assert_allclose(c_new.template.sum() / c_new.weight, c_new.psf_flux, rtol=0.2)
    err_new = abs(c_new.flux / true_flux[7] - 1)
    err_old = abs(c_old.flux / true_flux[7] - 1)
    assert err_new < 1 < 2 < err_old
    assert abs(c_fl.flux / true_flux[7] - 1) < 0.5 * err_old


def test_bright_galaxy_beside_a_much_brighter_one_keeps_its_flux():
    """A harder simulated blend (seed 2003's blend 16, made by the data folder's
    make_blends.py, truth kept): galaxy 0 (S/N 54, half-light radius 0.47") sits 0.7 FWHM
    from galaxy 3 (24 times brighter). Its PSF fit, which galaxy 3's PSF and the background
    also take light from, holds about a quarter of its flux (S/N 15, under faint_psf_snr); its
    symmetric template (mostly galaxy 3's light) more than 5 times that: the faint-peak
    rule gives it the PSF template, and the joint fit scales that down to 16% of its true
    flux. The default floor of that weight (at least 0.7 times ``min_template_weight``
    times the symmetric template's flux, what the symmetric template kept when the joint
    fit floored it) keeps most of its flux; the children still add up to the image."""
    image, variance, psf, peaks, true_flux = load("hard_single_blend_2003_0016.npz")
    kept, children = {}, {}
    for floor in (0.0, SingleBandConfig().faint_psf_flux_floor):
        config = SingleBandConfig(faint_psf_flux_floor=floor, keep_stages=True)
        res = SingleBandDeblender(config).deblend(image, variance, psf, peaks)
        c = next(c for c in res.children if c.index == 0)
        assert "faint_psf" in c.flags and c.template_kind == "psf"
        kept[floor], children[floor] = c.flux / true_flux[0], c
        y0, x0, h, w = res.footprint_box
        total = res.conserved_images().sum(axis=0)[y0 : y0 + h, x0 : x0 + w] + res.unassigned
        np.testing.assert_allclose(
            total[res.footprint], image[y0 : y0 + h, x0 : x0 + w][res.footprint], atol=1e-3
        )
    assert kept[0.0] < 0.25  # the failure
    default = SingleBandConfig()
    assert 0.5 < kept[default.faint_psf_flux_floor] < 2
    # the floor: the PSF template holds at least faint_psf_flux_floor x min_template_weight
    # x the symmetric template it replaced (the last stage kept before the swap)
    c = children[default.faint_psf_flux_floor]
    floor = default.faint_psf_flux_floor * default.min_template_weight
    sym_flux = c.stages["monotonic"][1].sum()
    assert c.template.sum() >= floor * sym_flux * (1 - 1e-9)
    assert children[0.0].template.sum() < floor * sym_flux


def sersic_image(shape, center, hlr, n, q, theta, flux, over=4):
    """A Sersic profile of index ``n`` and half-light radius ``hlr`` (pixels), axis ratio
    ``q`` at angle ``theta``, integrated over each pixel on an ``over`` x finer grid."""
    H, W = shape
    yy, xx = (np.mgrid[0 : H * over, 0 : W * over] + 0.5) / over - 0.5
    dy, dx = yy - center[0], xx - center[1]
    u = np.cos(theta) * dx + np.sin(theta) * dy
    v = (-np.sin(theta) * dx + np.cos(theta) * dy) / q
    g = np.exp(-(2 * n - 1 / 3) * (np.hypot(u, v) / hlr) ** (1 / n))
    g = g.reshape(H, over, W, over).sum(axis=(1, 3))
    return flux * g / g.sum()


def convolved(image, psf):
    """``image`` convolved with the odd-sized centred ``psf`` (periodic; the scene's
    light is far from the edges)."""
    k = np.zeros_like(image)
    n = psf.shape[0]
    k[:n, :n] = psf
    k = np.roll(k, (-(n // 2), -(n // 2)), axis=(0, 1))
    return np.real(np.fft.ifft2(np.fft.fft2(image) * np.fft.fft2(k)))


def test_faint_point_source_on_a_bright_galaxys_wing_takes_the_psf_template():
    """Hand-built: a point source of flux 100 (PSF S/N about 9) 8 px (2.2 FWHM) from a
    bulge-and-disc galaxy 260 times brighter. Its symmetric template is mostly the
    galaxy's wing (without the faint-peak rule its flux comes out about 5 times the
    truth); with the defaults it takes the PSF template (flag ``faint_psf``), its weight
    floored at ``faint_psf_flux_floor`` x ``min_template_weight`` x that symmetric
    template's flux, and its error is smaller (about 2 times the truth over instead of 4).
    With the plain floor (``faint_psf_flux_floor=0``) it mostly comes within 60% of the
    truth, but gets its symmetric template back in some noise draws: the default floor
    gives such a source back part of the wing."""
    fwhm = 3.7
    r = np.arange(25) - 12
    psf = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / (fwhm / 2.355) ** 2)
    psf /= psf.sum()
    shape, var = (64, 64), 3.76
    gal, star = (31.3, 29.2), (31.3 + 8 * np.sin(0.3), 29.2 + 8 * np.cos(0.3))
    galaxy = 0.3 * sersic_image(shape, gal, 2.5, 4, 0.7, 0.4, 26000.0)
    galaxy += 0.7 * sersic_image(shape, gal, 6.0, 1, 0.7, 0.4, 26000.0)
    truth = convolved(sersic_image(shape, star, 0.3, 1, 0.8, 1.2, 100.0), psf)
    scene = convolved(galaxy, psf) + truth
    peaks = np.array([[round(gal[0]), round(gal[1])], [round(star[0]), round(star[1])]])
    for seed in range(3):
        image = scene + np.random.default_rng(seed).normal(0, np.sqrt(var), shape)
        variance = np.full(shape, var)
        errs = {}
        for label, config in (
            ("default", SingleBandConfig(keep_stages=True)),
            ("no rule", SingleBandConfig(faint_psf_snr=0.0)),
        ):
            res = SingleBandDeblender(config).deblend(image, variance, psf, peaks)
            c = next(c for c in res.children if c.index == 1)
            errs[label] = abs(c.flux / truth.sum() - 1)
            if label == "default":
                assert "faint_psf" in c.flags and c.template_kind == "psf"
                floor = config.faint_psf_flux_floor * config.min_template_weight
                sym_flux = c.stages["monotonic"][1].sum()
                assert c.template.sum() >= floor * sym_flux * (1 - 1e-9)
            else:
                assert c.template_kind != "psf" and errs[label] > 3
        assert errs["default"] < 0.75 * errs["no rule"]
