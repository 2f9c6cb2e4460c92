"""Persisted models: exact FITS round trip, refusal of bad files, rebuild and re-apportioning.

The rebuild is checked against slow, obvious numpy references written here: a direct
(tap by tap) convolution, a dense insert of every component, and a dense re-apportioning.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from footprint_reference import children_footprint
from hypothesis import given, settings
from hypothesis import strategies as st

from cdeblend import (
    BlendData,
    ComponentData,
    DeblendResult,
    ModelData,
    SourceData,
    load_models,
    save_models,
)
from cdeblend.model_data import SCHEMA_VERSION
from cdeblend.observation import Observation, integrated_gaussian_psf

fits = pytest.importorskip("astropy.io.fits")


# ------------------------------------------------------------------------------------------
# hand-built model data
# ------------------------------------------------------------------------------------------


def random_model_data(
    seed: int,
    nb: int = 3,
    dtype=np.float32,
    n_blends: int = 3,
    image_shape=(80, 100),
    inside: bool = False,
) -> ModelData:
    """Random stored models; with ``inside`` every component lies inside its blend box (as
    after a fit), otherwise components may stick out a little (the file format allows it)."""
    rng = np.random.default_rng(seed)
    bands = tuple("grizy"[:nb])
    blends = {}
    sid = 100
    for b in range(n_blends):
        H, W = (int(v) for v in rng.integers(8, 30, size=2))
        y0 = int(rng.integers(0, image_shape[0] - H))
        x0 = int(rng.integers(0, image_shape[1] - W))
        sources = []
        for k in range(int(rng.integers(0, 4))):
            comps = []
            for _ in range(int(rng.integers(0, 3))):
                h, w = (int(v) for v in rng.integers(1, 12, size=2))
                if inside:
                    h, w = min(h, H), min(w, W)
                    cy = y0 + int(rng.integers(0, H - h + 1))
                    cx = x0 + int(rng.integers(0, W - w + 1))
                else:  # components may stick out of the blend box a little
                    cy = y0 + int(rng.integers(-2, H - 1))
                    cx = x0 + int(rng.integers(-2, W - 1))
                comps.append(
                    ComponentData(
                        (cy, cx, h, w),
                        (cy + h // 2, cx + w // 2),
                        rng.random(nb).astype(dtype) * 100,
                        rng.random((h, w)).astype(dtype),
                    )
                )
            sources.append(SourceData(sid, k, comps))
            sid += 1
        footprint = rng.random((H, W)) < 0.8 if b % 2 == 0 else None
        blends[b * 7 + 1] = BlendData(
            parent_id=b * 7 + 1,
            box=(y0, x0, H, W),
            bands=bands,
            sources=sources,
            footprint=footprint,
            iterations=int(rng.integers(0, 300)),
            loss=float(rng.normal()),
            converged=bool(b % 2),
            fallback=b == 1,
        )
    # and an isolated parent, kept as itself
    blends[999] = BlendData(
        999,
        (3, 4, 6, 5),
        bands,
        [SourceData(999, 0, [])],
        footprint=rng.random((6, 5)) < 0.7,
        isolated=True,
    )
    # Gaussian PSFs wider than the model PSF (sigma 0.8), as an Observation requires
    psfs = np.stack([integrated_gaussian_psf(1.2 + 0.3 * b, 9) for b in range(nb)]).astype(dtype)
    return ModelData(bands, integrated_gaussian_psf(0.8).astype(dtype), psfs, blends)


def assert_identical(a: ModelData, b: ModelData) -> None:
    assert a.bands == b.bands and a.schema_version == b.schema_version
    for x, y in ((a.model_psf, b.model_psf), (a.psfs, b.psfs)):
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
    assert list(a.blends) == list(b.blends)
    for pid, ba in a.blends.items():
        bb = b.blends[pid]
        assert (
            ba.parent_id,
            ba.box,
            ba.bands,
            ba.iterations,
            ba.converged,
            ba.isolated,
            ba.fallback,
        ) == (bb.parent_id, bb.box, bb.bands, bb.iterations, bb.converged, bb.isolated, bb.fallback)
        assert ba.loss == bb.loss or (np.isnan(ba.loss) and np.isnan(bb.loss))
        if ba.footprint is None:
            assert bb.footprint is None
        else:
            assert bb.footprint.dtype == bool and np.array_equal(ba.footprint, bb.footprint)
        assert len(ba.sources) == len(bb.sources)
        for sa, sb in zip(ba.sources, bb.sources, strict=True):
            assert (sa.id, sa.peak_id, len(sa.components)) == (
                sb.id,
                sb.peak_id,
                len(sb.components),
            )
            for ca, cb in zip(sa.components, sb.components, strict=True):
                assert ca.box == cb.box and ca.peak == cb.peak
                for x, y in ((ca.sed, cb.sed), (ca.morphology, cb.morphology)):
                    assert x.dtype == y.dtype and x.dtype.isnative and np.array_equal(x, y)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 5), st.sampled_from([np.float32, np.float64]))
def test_round_trip_is_exact(tmp_path_factory, seed, nb, dtype):
    md = random_model_data(seed, nb=nb, dtype=dtype)
    path = tmp_path_factory.mktemp("md") / "models.fits"
    save_models(path, md)
    assert_identical(md, load_models(path))


def test_round_trip_of_empty_model_data(tmp_path):
    md = ModelData(("r",), integrated_gaussian_psf(0.8), np.ones((1, 1, 1)))
    save_models(tmp_path / "e.fits", md)
    back = load_models(tmp_path / "e.fits")
    assert_identical(md, back)
    assert back.blends == {}


def test_file_layout_is_as_documented(tmp_path):
    md = random_model_data(4)
    save_models(tmp_path / "m.fits", md)
    with fits.open(tmp_path / "m.fits") as hdul:
        assert [h.name for h in hdul] == [
            "PRIMARY",
            "BLENDS",
            "SOURCES",
            "COMPONENTS",
            "MORPHS",
            "FOOTPRINTS",
            "MODEL_PSF",
            "PSFS",
        ]
        h = hdul[0].header
        assert h["SCHEMA"] == "cdeblend.model_data" and h["SCHVER"] == SCHEMA_VERSION
        assert [h[f"BAND{i + 1}"] for i in range(h["NBANDS"])] == list(md.bands)
        n_comp = sum(len(s.components) for b in md.blends.values() for s in b.sources)
        assert len(hdul["COMPONENTS"].data) == n_comp == h["NCOMPS"]
        n_pix = sum(
            c.morphology.size for b in md.blends.values() for s in b.sources for c in s.components
        )
        assert hdul["MORPHS"].data.size == n_pix


# ------------------------------------------------------------------------------------------
# refusing bad files
# ------------------------------------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.fits"
    save_models(path, random_model_data(9))
    return path


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -2880])
def test_truncated_file_is_refused(saved, keep):
    data = saved.read_bytes()
    cut = int(len(data) * keep) if keep > 0 else len(data) + keep
    bad = saved.with_name("cut.fits")
    bad.write_bytes(data[:cut])
    with pytest.raises(ValueError, match="truncated|damaged"):
        load_models(bad)


def test_not_fits_is_refused(tmp_path):
    bad = tmp_path / "notes.fits"
    bad.write_text("this is not FITS\n" * 200)
    with pytest.raises(ValueError, match="not a readable FITS file"):
        load_models(bad)


def test_foreign_fits_is_refused(tmp_path):
    path = tmp_path / "image.fits"
    fits.PrimaryHDU(np.zeros((4, 4))).writeto(path)
    with pytest.raises(ValueError, match="not a cdeblend model file"):
        load_models(path)


def test_newer_schema_is_refused(saved):
    with fits.open(saved) as hdul:
        hdul[0].header["SCHVER"] = SCHEMA_VERSION + 1
        hdul.writeto(saved.with_name("new.fits"), checksum=True)
    with pytest.raises(ValueError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        load_models(saved.with_name("new.fits"))


def test_missing_hdu_is_refused(saved):
    with fits.open(saved) as hdul:
        del hdul["MORPHS"]
        hdul.writeto(saved.with_name("short.fits"))
    with pytest.raises(ValueError, match="no MORPHS HDU"):
        load_models(saved.with_name("short.fits"))


def test_damaged_data_fails_the_checksum(saved):
    data = bytearray(saved.read_bytes())
    with fits.open(saved) as hdul:
        info = hdul.fileinfo(hdul.index_of("MORPHS"))
    data[info["datLoc"] + 5] ^= 0xFF  # flip one byte of the morphologies
    bad = saved.with_name("flip.fits")
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="[Cc]hecksum"):
        load_models(bad)


def test_the_childrens_footprint_threshold_is_stored(saved):
    """``conserved_thresh`` survives the file; a file written before it was stored reads
    as 0 (the rule it was made with); a damaged value is refused, not trusted."""
    md = load_models(saved)
    assert md.conserved_thresh == DeblendResult.conserved_thresh
    md.conserved_thresh = 0.25
    save_models(saved.with_name("t.fits"), md)
    assert load_models(saved.with_name("t.fits")).conserved_thresh == 0.25
    with fits.open(saved) as hdul:
        del hdul[0].header["CONSTHR"]
        hdul.writeto(saved.with_name("old.fits"), checksum=True)
    assert load_models(saved.with_name("old.fits")).conserved_thresh == 0.0
    for bad in (-1.0, "many"):  # FITS headers hold no NaN
        with fits.open(saved) as hdul:
            hdul[0].header["CONSTHR"] = bad
            hdul.writeto(saved.with_name("bad.fits"), checksum=True, overwrite=True)
        with pytest.raises(ValueError, match="damaged.*conserved_thresh"):
            load_models(saved.with_name("bad.fits"))
    with pytest.raises(ValueError, match="conserved_thresh"):
        ModelData(md.bands, md.model_psf, md.psfs, conserved_thresh=-0.1)


def test_inconsistent_counts_are_refused(saved):
    with fits.open(saved) as hdul:
        hdul[0].header["NCOMPS"] = hdul[0].header["NCOMPS"] + 1
        hdul.writeto(saved.with_name("odd.fits"), checksum=True)
    with pytest.raises(ValueError, match="truncated or damaged: tables have"):
        load_models(saved.with_name("odd.fits"))


# ------------------------------------------------------------------------------------------
# validation of the data classes
# ------------------------------------------------------------------------------------------


def test_bad_data_classes():
    with pytest.raises(ValueError, match="morphology has shape"):
        ComponentData((0, 0, 3, 4), (1, 1), np.ones(2), np.ones((4, 3)))
    with pytest.raises(ValueError, match="sed must be 1-D"):
        ComponentData((0, 0, 3, 4), (1, 1), np.ones((2, 1)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="negative size"):
        ComponentData((0, 0, -3, 4), (1, 1), np.ones(2), np.ones((3, 4)))
    with pytest.raises(ValueError, match="footprint has shape"):
        BlendData(1, (0, 0, 5, 5), ("g",), footprint=np.ones((5, 4), bool))
    with pytest.raises(ValueError, match="psfs must be"):
        ModelData(("g", "r"), integrated_gaussian_psf(0.8), np.ones((3, 5, 5)))
    with pytest.raises(ValueError, match="model_psf must be"):
        ModelData(("g",), np.ones(5), np.ones((1, 5, 5)))
    md = random_model_data(1)
    with pytest.raises(KeyError, match="no stored model for parent 12345"):
        md.models(12345)
    with pytest.raises(ValueError, match="isolated"):
        md.rebuild(np.zeros((3, 80, 100)), 999)


# ------------------------------------------------------------------------------------------
# rebuild and re-apportion
# ------------------------------------------------------------------------------------------


def dense_models(bd: BlendData) -> np.ndarray:
    """Slow reference: every component pixel added one by one."""
    y0, x0, H, W = bd.box
    out = np.zeros((len(bd.sources), len(bd.bands), H, W))
    for i, s in enumerate(bd.sources):
        for c in s.components:
            cy, cx, h, w = c.box
            for yy in range(h):
                for xx in range(w):
                    y, x = cy + yy - y0, cx + xx - x0
                    if 0 <= y < H and 0 <= x < W:
                        out[i, :, y, x] += c.sed.astype(float) * float(c.morphology[yy, xx])
    return out


def direct_convolve(model: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """out(p) = sum_k K(k) X(p - k), zero outside, tap by tap."""
    B, H, W = model.shape
    hy, hx = kernels.shape[1] // 2, kernels.shape[2] // 2
    out = np.zeros((B, H, W))
    for b in range(B):
        for dy in range(-hy, hy + 1):
            for dx in range(-hx, hx + 1):
                v = kernels[b, dy + hy, dx + hx]
                # out[y, x] += v * model[y - dy, x - dx] for in-range y, x and y - dy, x - dx
                ya, yb = max(dy, 0), min(H + dy, H)
                xa, xb = max(dx, 0), min(W + dx, W)
                if ya >= yb or xa >= xb:
                    continue
                out[b, ya:yb, xa:xb] += v * model[b, ya - dy : yb - dy, xa - dx : xb - dx]
    return out


def test_models_match_dense_reference():
    md = random_model_data(21, dtype=np.float64)
    for pid, bd in md.blends.items():
        np.testing.assert_allclose(md.models(pid), dense_models(bd), rtol=1e-12, atol=0)


def reference_conserved(md: ModelData, pid: int, obs: Observation):
    """Dense, obvious re-apportioning with the stored models: every source's model is
    convolved over the whole blend box tap by tap, clipped at 0, and the image (zero where
    the weight is zero, per band) is split in proportion on the children's footprint (the
    default threshold, in the observation's noise). Also returns the pixels within
    round-off of the footprint's threshold (``edge``)."""
    bd = md.blends[pid]
    y0, x0, H, W = bd.box
    sl = (slice(None), slice(y0, y0 + H), slice(x0, x0 + W))
    weights = obs.weights[sl] * (1 if bd.footprint is None else bd.footprint)
    img = np.where(weights > 0, obs.images[sl], 0).astype(float)
    conv = np.zeros((len(bd.sources),) + img.shape)
    for i, m in enumerate(dense_models(bd)):
        conv[i] = np.maximum(direct_convolve(m, obs.diff_kernels.astype(float)), 0)
    variance = np.where(weights > 0, obs.variance[sl], 0)
    inside, edge = children_footprint(conv, variance, DeblendResult.conserved_thresh)
    tsum = conv.sum(axis=0) * inside
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tsum > 0, img * conv / tsum, 0.0), tsum, img, edge


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 2e-5)])
def test_conserved_images_match_reference(dtype, tol):
    md = random_model_data(33, dtype=np.float64, inside=True)
    rng = np.random.default_rng(2)
    images = rng.normal(5, 2, size=(3, 80, 100)).astype(dtype)
    weights = (rng.random((3, 80, 100)) > 0.05).astype(dtype)
    obs = Observation(images, np.ones_like(images), md.psfs, bands=md.bands, weights=weights)
    # the random draw holds a blend with several non-null sources and one with a null source
    assert max(sum(bool(s.components) for s in b.sources) for b in md.blends.values()) >= 2
    assert any(not s.components for b in md.blends.values() for s in b.sources)
    shared = 0
    for pid in md.blends:
        got = md.conserved_images(obs, pid)
        if md.blends[pid].isolated:  # the image inside the footprint (and weight > 0)
            y0, x0, h, w = md.blends[pid].box
            sl = (slice(None), slice(y0, y0 + h), slice(x0, x0 + w))
            keep = md.blends[pid].footprint & np.any(weights[sl] > 0, axis=0)
            assert np.array_equal(got, (images[sl] * keep)[None])
            continue
        assert got.dtype == dtype and got.shape[0] == len(md.blends[pid].sources)
        ref, tsum, img, edge = reference_conserved(md, pid, obs)
        assert edge.mean() < 0.01  # round-off decides few pixels
        shared += int((tsum > 0).sum())
        np.testing.assert_allclose(
            got[..., ~edge], ref[..., ~edge], rtol=tol, atol=tol * np.abs(img).max()
        )
        # flux conservation where some template claims a pixel of the footprint
        claimed = (tsum > 0) & ~edge
        if len(got):
            np.testing.assert_allclose(got.sum(0)[claimed], img[claimed], rtol=tol * 10)
    # the children's footprint left pixels to share, and not only a few
    assert shared > 1000


def test_conserved_images_use_the_observation_psfs_and_plain_arrays():
    md = random_model_data(33, dtype=np.float64, inside=True)
    rng = np.random.default_rng(4)
    images = rng.normal(5, 2, size=(3, 80, 100))
    psfs = np.stack([integrated_gaussian_psf(s, 11) for s in (1.2, 1.5, 1.9)])
    pid = max(md.blends, key=lambda k: sum(bool(s.components) for s in md.blends[k].sources))
    assert sum(bool(s.components) for s in md.blends[pid].sources) >= 2
    # an observation with other PSFs: its own difference kernels are used
    obs = Observation(images, np.ones_like(images), psfs, bands=md.bands)
    ref, _, _, edge = reference_conserved(md, pid, obs)
    np.testing.assert_allclose(
        md.conserved_images(obs, pid)[..., ~edge], ref[..., ~edge], rtol=1e-10, atol=1e-10
    )
    # a plain array uses the stored PSFs
    ref2, _, _, edge = reference_conserved(md, pid, md.observation(images))
    np.testing.assert_allclose(
        md.conserved_images(images, pid)[..., ~edge], ref2[..., ~edge], rtol=1e-10, atol=1e-10
    )
    with pytest.raises(ValueError, match="inside the image"):
        md.conserved_images(images[:, :5, :5], pid)
    with pytest.raises(ValueError, match="bands"):
        md.conserved_images(Observation(images[:2], np.ones((2, 80, 100)), psfs[:2]), pid)


def test_reload_reproduces_the_fit_exactly(tmp_path):
    """A fitted blend, saved and reloaded, gives bit-identical models and conserved images,
    the same loss, and a restarted fit starts where the first one ended."""
    from cdeblend import DeblendConfig, Deblender, load_hsc_cosmos

    blend = load_hsc_cosmos()
    obs = Observation(blend.images, blend.variance, blend.psfs, bands=blend.bands)
    res = Deblender().deblend(obs, blend.peaks)
    md = ModelData(
        obs.bands,
        obs.model_psf,
        obs.psfs,
        {5: ModelData.from_blend(res, 5, (0, 0))},
        model_psf_sigma=obs.model_psf_sigma,
    )
    save_models(tmp_path / "m.fits", md)
    back = load_models(tmp_path / "m.fits")
    assert back.model_psf_sigma == 0.8
    rebuilt = back.rebuild(obs, 5)
    assert np.array_equal(rebuilt.models(), res.models())
    assert np.array_equal(back.conserved_images(obs, 5), res.conserved_images())
    assert np.array_equal(rebuilt.conserved_fluxes, res.conserved_fluxes)
    assert rebuilt.blend.loss() == pytest.approx(res.loss, rel=1e-6)
    cfg = DeblendConfig(max_iter=30, e_rel=1e-4, min_iter=3)
    again = back.restart(obs, 5, cfg)
    assert again.loss_history[0] == pytest.approx(res.loss, rel=1e-6)
    assert again.loss <= again.loss_history[0]
    assert 3 <= again.iterations <= 30


def test_reload_re_apportions_with_the_stored_threshold(tmp_path):
    """A catalog fitted with a non-default children's footprint stores its threshold, and the
    model file re-apportions the image to the catalog's conserved fluxes with it (with the
    default threshold the fluxes would differ)."""
    from cdeblend import CatalogConfig, DeblendConfig, deblend_catalog, load_hsc_cosmos

    blend = load_hsc_cosmos()
    obs = Observation(blend.images, blend.variance, blend.psfs, bands=blend.bands)
    cfg = CatalogConfig(multi_band=DeblendConfig(conserved_thresh=0.3))
    cat, md = deblend_catalog(obs, peaks=blend.peaks, config=cfg, executor="serial")
    save_models(tmp_path / "m.fits", md)
    back = load_models(tmp_path / "m.fits")
    assert back.conserved_thresh == 0.3
    pid = int(cat["id"][cat["is_parent"]][0])
    children = cat[cat["parent_id"] == pid]
    again = back.conserved_images(obs, pid).sum(axis=(2, 3))
    np.testing.assert_allclose(
        np.sort(again.sum(axis=1)), np.sort(children["flux_conserved"].sum(axis=1)), rtol=1e-5
    )
    back.conserved_thresh = DeblendResult.conserved_thresh
    default = back.conserved_images(obs, pid).sum(axis=(2, 3))
    assert not np.allclose(np.sort(default.sum(axis=1)), np.sort(again.sum(axis=1)), rtol=1e-3)


def test_centroids_match_moments():
    md = random_model_data(12, dtype=np.float64)
    for bd in md.blends.values():
        dense = dense_models(bd).sum(axis=1)
        y0, x0, H, W = bd.box
        yy, xx = np.mgrid[:H, :W]
        for i, c in enumerate(bd.centroids()):
            s = bd.sources[i]
            # full moments (components may stick out of the box, so use the components)
            tot = sum(float(cc.sed.sum() * cc.morphology.sum()) for cc in s.components)
            if tot == 0:
                assert np.all(np.isnan(c))
                continue
            inside = all(
                cc.box[0] >= y0
                and cc.box[1] >= x0
                and cc.box[0] + cc.box[2] <= y0 + H
                and cc.box[1] + cc.box[3] <= x0 + W
                for cc in s.components
            )
            if inside:
                m = dense[i]
                np.testing.assert_allclose(
                    c, ((yy * m).sum() / m.sum() + y0, (xx * m).sum() / m.sum() + x0)
                )


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 9),
    st.integers(0, 12),
    st.integers(0, 12),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from([np.float32, np.float64]),
    st.integers(-50, 500),
    st.integers(-50, 500),
)
def test_component_moments_match_numpy(seed, nb, h, w, sed_dtype, morph_dtype, y0, x0):
    from cdeblend._catalog_cy import component_moments

    rng = np.random.default_rng(seed)
    sed = (rng.normal(size=nb) * 10).astype(sed_dtype)
    morph = rng.random((h, w)).astype(morph_dtype)
    got = component_moments(sed, morph, y0, x0)
    # the numpy computation BlendData.centroids made per component
    m = morph.astype(np.float64)
    wsed = float(np.sum(sed, dtype=np.float64))
    want = (
        wsed * m.sum(),
        wsed * float((y0 + np.arange(h)) @ m.sum(axis=1)),
        wsed * float(m.sum(axis=0) @ (x0 + np.arange(w))),
    )
    scale = abs(wsed) * m.sum() * (1 + abs(y0) + abs(x0) + h + w) + 1e-300
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * scale)


def test_centroids_of_any_array_layout():
    """Morphologies and SEDs a kernel does not take as they are (integers, big-endian,
    strided) give the centroids of their float64 copies."""
    md = random_model_data(4, dtype=np.float64, inside=True)
    for bd in md.blends.values():
        want = bd.centroids()
        for s in bd.sources:
            for k, c in enumerate(s.components):
                if k % 3 == 0:
                    c.morphology = c.morphology.astype(">f8")
                    c.sed = c.sed.astype(">f8")
                elif k % 3 == 1:
                    c.morphology = np.asfortranarray(c.morphology)
                    c.sed = np.repeat(c.sed, 2)[::2]
        assert np.array_equal(bd.centroids(), want, equal_nan=True)
    comp = ComponentData((2, 3, 2, 2), (2, 3), np.array([1, 3]), np.array([[0, 1], [0, 3]]))
    bd = BlendData(1, (0, 0, 9, 9), ("g", "r"), [SourceData(1, 0, [comp]), SourceData(2, 1)])
    np.testing.assert_allclose(bd.centroids(), [[2.75, 4.0], [np.nan, np.nan]])


def test_from_blend_moves_boxes_to_the_image_frame():
    rng = np.random.default_rng(0)
    comps = [
        SimpleNamespace(
            sed=rng.random(2), morphology=rng.random((3, 4)), box=(1, 2, 3, 4), peak=(2, 3)
        )
    ]
    result = SimpleNamespace(
        blend=SimpleNamespace(sources=[SimpleNamespace(components=comps, peak_id=0)]),
        iterations=12,
        loss=3.25,
        converged=True,
    )
    bd = ModelData.from_blend(
        result, 7, origin=(10, 20), shape=(8, 9), bands=("g", "r"), source_ids=[55]
    )
    c = bd.sources[0].components[0]
    assert bd.box == (10, 20, 8, 9) and c.box == (11, 22, 3, 4) and c.peak == (12, 23)
    assert (bd.iterations, bd.loss, bd.converged, bd.sources[0].id) == (12, 3.25, True, 55)
    assert np.array_equal(c.morphology, comps[0].morphology)
    assert c.morphology is not comps[0].morphology  # a copy, not a view on the fit


# ------------------------------------------------------------------------------------------
# geometry the kernels trust (crafted files: tests/test_fuzz_files.py)
# ------------------------------------------------------------------------------------------


def test_rebuild_refuses_components_outside_the_blend_box():
    md = random_model_data(21, dtype=np.float64)  # components may stick out of the box
    images = np.zeros((3, 80, 100))
    stick_out = [
        pid
        for pid, bd in md.blends.items()
        if not bd.isolated
        and any(
            c.box[0] < bd.box[0]
            or c.box[1] < bd.box[1]
            or c.box[0] + c.box[2] > bd.box[0] + bd.box[2]
            or c.box[1] + c.box[3] > bd.box[1] + bd.box[3]
            for s in bd.sources
            for c in s.components
        )
    ]
    assert stick_out  # the draw holds one
    for pid in md.blends:
        if pid in stick_out:
            with pytest.raises(ValueError, match=f"lies outside the box of blend {pid}"):
                md.rebuild(images, pid)
            # its stored models are still there, clipped to the box
            np.testing.assert_allclose(md.models(pid), dense_models(md.blends[pid]), rtol=1e-12)
        elif not md.blends[pid].isolated:
            md.rebuild(images, pid)


def test_rebuild_refuses_non_finite_parameters():
    md = random_model_data(33, dtype=np.float64, inside=True)
    pid, comp = next(
        (pid, c) for pid, bd in md.blends.items() for s in bd.sources for c in s.components
    )
    comp.sed[0] = np.nan
    with pytest.raises(ValueError, match="sed has NaN"):
        md.rebuild(np.zeros((3, 80, 100)), pid)
    comp.sed[0] = 1.0
    comp.morphology[0, 0] = np.inf
    with pytest.raises(ValueError, match="morphology has NaN"):
        md.rebuild(np.zeros((3, 80, 100)), pid)


def test_data_classes_refuse_bad_ids_and_values():
    comp = ComponentData((0, 0, 2, 2), (1, 1), np.ones(2), np.ones((2, 2)))
    with pytest.raises(ValueError, match="out of range"):
        ComponentData((0, 0, 2**40, 1), (1, 0), np.ones(2), np.ones((1, 1)))
    with pytest.raises(TypeError, match="must be an integer"):
        ComponentData((0, 0.5, 2, 2), (1, 1), np.ones(2), np.ones((2, 2)))
    with pytest.raises(TypeError, match="real numeric"):
        ComponentData((0, 0, 2, 2), (1, 1), np.ones(2, complex), np.ones((2, 2)))
    with pytest.raises(ValueError, match="two sources with id 4"):
        BlendData(1, (0, 0, 5, 5), ("g", "r"), [SourceData(4, 0, [comp]), SourceData(4, 1)])
    with pytest.raises(ValueError, match="has 2 SED values, the blend has 3 bands"):
        BlendData(1, (0, 0, 5, 5), ("g", "r", "i"), [SourceData(4, 0, [comp])])
    with pytest.raises(ValueError, match="empty size"):
        BlendData(1, (0, 0, 0, 5), ("g", "r"))
    psf = integrated_gaussian_psf(0.8)
    psfs = np.stack([integrated_gaussian_psf(1.2, 9)] * 2)
    bd = BlendData(1, (0, 0, 5, 5), ("g", "r"), [SourceData(4, 0, [comp])])
    with pytest.raises(ValueError, match=r"blends\[2\] holds the blend of parent 1"):
        ModelData(("g", "r"), psf, psfs, {2: bd})
    with pytest.raises(ValueError, match="blend 1 has bands"):
        ModelData(("g", "i"), psf, psfs, {1: bd})
    bad = psfs.copy()
    bad[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="psfs has 1 NaN"):
        ModelData(("g", "r"), psf, bad, {1: bd})
    with pytest.raises(ValueError, match="model_psf_sigma must be > 0"):
        ModelData(("g", "r"), psf, psfs, {1: bd}, model_psf_sigma=-1.0)


def test_files_without_the_fallback_column_read_as_fitted(saved):
    """FALLBACK was added to BLENDS later: a file without it reads, every blend False."""
    assert any(b.fallback for b in load_models(saved).blends.values())
    with fits.open(saved) as hdul:
        old = hdul["BLENDS"]
        cols = [c for c in old.columns if c.name != "FALLBACK"]
        hdul["BLENDS"] = fits.BinTableHDU.from_columns(cols, name="BLENDS")
        hdul.writeto(saved.with_name("v1.fits"), checksum=True)
    back = load_models(saved.with_name("v1.fits"))
    assert not any(b.fallback for b in back.blends.values())
    assert sorted(back.blends) == sorted(load_models(saved).blends)
