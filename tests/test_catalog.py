"""Catalog machinery: parents, skip rules, flags, failure isolation, executors, columns, FITS.

The deblenders used here are small *test deblenders* that do real, simple work: every
footprint pixel goes to its nearest peak (a Voronoi split, ties to the lower index), the
child's morphology is the positive band-summed image on its cell and its SED the cell's flux
per band. They follow the public call signatures of ``cdeblend.Deblender`` and
``cdeblend.SingleBandDeblender``, so the catalog code is exercised exactly as it will be with
the real ones; the expectations are recomputed independently below with plain numpy.
``test_real_deblenders_*`` at the end run the real deblenders once they are in the package.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cdeblend
from cdeblend import (
    CatalogConfig,
    _catalog_cy,
    deblend_catalog,
    load_models,
    save_models,
)
from cdeblend.catalog import (
    CatalogParent,
    driver,
    parents_from_peaks,
    read_catalog,
    results,
    table,
    write_catalog,
)
from cdeblend.catalog import parents as catalog_parents

BANDS = ("g", "r", "i")


# ------------------------------------------------------------------------------------------
# a scene and the test deblenders
# ------------------------------------------------------------------------------------------


def gaussian_psf(sigma: float, size: int = 11) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size // 2
    p = np.exp(-0.5 * (x**2 + y**2) / sigma**2)
    return p / p.sum()


#: (y, x, flux) of the sources: two close pairs, a triple, an isolated one.
SOURCES = [
    (12, 12, 400.0),
    (12, 19, 250.0),
    (40, 14, 300.0),
    (45, 20, 200.0),
    (38, 22, 150.0),
    (15, 60, 500.0),
    (45, 60, 300.0),
    (47, 67, 350.0),
]


def make_scene(nb: int = 3, seed: int = 3, dtype=np.float64):
    rng = np.random.default_rng(seed)
    H, W = 60, 84
    yy, xx = np.mgrid[:H, :W]
    images = np.zeros((nb, H, W))
    for k, (y, x, f) in enumerate(SOURCES):
        prof = np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / 1.8**2)
        sed = 1.0 + 0.3 * np.cos(np.arange(nb) + k)
        images += f * sed[:, None, None] * prof[None] / prof.sum()
    variance = np.full((nb, H, W), 0.04)
    images += rng.normal(0, 0.2, size=images.shape)
    psfs = np.stack([gaussian_psf(1.0 + 0.1 * b) for b in range(nb)])
    peaks = np.array([(y, x) for y, x, _ in SOURCES])
    return images.astype(dtype), variance.astype(dtype), psfs, peaks


def voronoi_cells(shape, peaks, valid):
    """(N, H, W) bool: each valid pixel to its nearest peak, ties to the lower index."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    d2 = np.stack([(yy - py) ** 2 + (xx - px) ** 2 for py, px in peaks])
    owner = np.argmin(d2, axis=0)
    return np.stack([(owner == i) & valid for i in range(len(peaks))])


def bbox_of(mask):
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return 0, 0, 1, 1
    return ys.min(), xs.min(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


class TestObservation:
    """Stands in for cdeblend.Observation: keeps what the test deblender needs."""

    __test__ = False

    def __init__(
        self, images, variance, psfs, bands=None, weights=None, mask=None, model_psf_sigma=0.8
    ):
        self.images, self.variance, self.psfs = images, variance, psfs
        self.bands = bands
        self.weights = weights
        self.model_psf_sigma = model_psf_sigma


class VoronoiDeblender:
    """Multi-band test deblender (the public ``Deblender.deblend(obs, peaks)`` signature)."""

    def __init__(self, fail_when=None, calls=None):
        self.fail_when = fail_when
        self.calls = calls

    def deblend(self, obs, peaks):
        if self.calls is not None:
            self.calls.append(tuple(map(tuple, peaks)))
        if self.fail_when is not None and self.fail_when(peaks):
            raise ZeroDivisionError("test deblender refuses this parent")
        img = np.asarray(obs.images, dtype=np.float64)
        valid = np.any(obs.weights > 0, axis=0)
        cells = voronoi_cells(img.shape[1:], peaks, valid)
        sources, conserved = [], []
        model = np.zeros_like(img)
        for i, cell in enumerate(cells):
            y0, x0, h, w = bbox_of(cell)
            sl = (slice(y0, y0 + h), slice(x0, x0 + w))
            pos = np.where(cell[sl], np.maximum(img[:, sl[0], sl[1]].sum(0), 0), 0)
            morph = pos / pos.max() if pos.max() > 0 else cell[sl].astype(float)
            sed = np.where(cell, img, 0).sum(axis=(1, 2)) / morph.sum()
            model[:, sl[0], sl[1]] += sed[:, None, None] * morph
            comp = SimpleNamespace(
                sed=sed, morphology=morph, box=(y0, x0, h, w), peak=tuple(peaks[i])
            )
            sources.append(SimpleNamespace(components=[comp], peak_id=i))
            conserved.append(np.where(cell, img, 0))
        loss = 0.5 * float(np.sum(obs.weights * (img - model) ** 2))
        fluxes = np.array(
            [
                [c.sed[b] * c.morphology.sum() for b in range(img.shape[0])]
                for s in sources
                for c in s.components
            ]
        )
        return SimpleNamespace(
            blend=SimpleNamespace(sources=sources),
            fluxes=fluxes,
            conserved_fluxes=np.array([c.sum(axis=(1, 2)) for c in conserved]),
            loss=loss,
            iterations=len(peaks),
            converged=True,
        )


class VoronoiSingleBand:
    """Single-band test deblender (``SingleBandDeblender.deblend`` signature)."""

    def deblend(self, image, variance, psf, peaks, footprint=None, mask=None):
        valid = np.ones(image.shape, bool) if footprint is None else footprint.copy()
        if mask is not None:
            valid &= ~mask
        cells = voronoi_cells(image.shape, peaks, valid)
        children = []
        for i, cell in enumerate(cells):
            y0, x0, h, w = bbox_of(cell)
            sl = (slice(y0, y0 + h), slice(x0, x0 + w))
            cons = np.where(cell[sl], image[sl], 0.0)
            children.append(
                SimpleNamespace(
                    peak=tuple(peaks[i]),
                    box=(y0, x0, h, w),
                    template=np.maximum(cons, 0),
                    template_kind="symmetric",
                    conserved=cons,
                    flux=float(cons.sum()),
                    flags={
                        "ramped": False,
                        "has_stray_flux": bool(mask is not None and mask.any()),
                    },
                )
            )
        stray = float(np.sum(image[(footprint if footprint is not None else True) & ~valid]))
        return SimpleNamespace(children=children, stray_flux=stray)


def factory(kind, config, **kw):
    return VoronoiDeblender(**kw) if kind == "multi" else VoronoiSingleBand()


def run(
    images,
    variance,
    psfs,
    peaks=None,
    parents=None,
    config=None,
    executor="serial",
    fac=factory,
    **kw,
):
    return deblend_catalog(
        images,
        peaks=peaks,
        parents=parents,
        config=config,
        executor=executor,
        progress=False,
        variance=variance,
        psf=psfs,
        bands=BANDS[: len(images)] if images.ndim == 3 else None,
        deblender_factory=fac,
        observation_factory=TestObservation,
        **kw,
    )


def assert_catalogs_identical(a, b):
    assert a.colnames == b.colnames
    for name in a.colnames:
        x, y = np.asarray(a[name]), np.asarray(b[name])
        assert x.dtype == y.dtype, name
        if x.dtype.kind == "f":
            assert np.array_equal(x, y, equal_nan=True), name
        else:
            assert np.array_equal(x, y), name


def assert_model_data_identical(a, b):
    assert list(a.blends) == list(b.blends)
    for pid in a.blends:
        ba, bb = a.blends[pid], b.blends[pid]
        assert ba.box == bb.box and len(ba.sources) == len(bb.sources)
        for sa, sb in zip(ba.sources, bb.sources, strict=True):
            assert (sa.id, sa.peak_id) == (sb.id, sb.peak_id)
            for ca, cb in zip(sa.components, sb.components, strict=True):
                assert ca.box == cb.box and ca.peak == cb.peak
                assert np.array_equal(ca.sed, cb.sed) and ca.sed.dtype == cb.sed.dtype
                assert np.array_equal(ca.morphology, cb.morphology)


@pytest.fixture(scope="module")
def scene():
    return make_scene()


# ------------------------------------------------------------------------------------------
# parents from a flat peak list
# ------------------------------------------------------------------------------------------


def test_parents_from_peaks_groups_the_scene(scene):
    images, variance, psfs, peaks = scene
    parents = parents_from_peaks(images, variance, peaks, snr=3.0, grow=2)
    groups = [sorted(map(tuple, p.peaks)) for p in parents]
    want = [[(12, 12), (12, 19)], [(15, 60)], [(38, 22), (40, 14), (45, 20)], [(45, 60), (47, 67)]]
    assert sorted(groups) == sorted(want)
    assert [p.id for p in parents] == list(range(1, len(parents) + 1))
    # raster order of the boxes' first row
    assert [p.box[0] for p in parents] == sorted(p.box[0] for p in parents)
    total = np.zeros(images.shape[1:], int)
    for p in parents:
        y0, x0, h, w = p.box
        assert p.footprint.shape == (h, w)
        for py, px in p.peaks:
            assert p.footprint[py - y0, px - x0]
        total[y0 : y0 + h, x0 : x0 + w] += p.footprint
    assert total.max() == 1  # footprints do not overlap


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frame_parents_equal_parents_from_peaks(scene, dtype):
    # the catalog's path (the S/N kernel alone on the checked frame) against the public
    # parents_from_peaks of the raw arrays, with pixels without data (NaN, zero variance,
    # a masked pixel) and an odd number of rows
    from cdeblend.catalog.frame import as_frame

    images, variance, psfs, peaks = scene
    # (contiguous copies: parents_from_peaks refuses non-contiguous arrays)
    images = np.ascontiguousarray(images[:, :59], dtype=dtype)
    variance = np.ascontiguousarray(variance[:, :59], dtype=dtype)
    images[0, 30, 30] = np.nan
    variance[1, 5:9, 40:50] = 0.0
    mask = np.zeros(images.shape[1:], bool)
    mask[20, 20:25] = True
    frame = as_frame(images, variance, psfs, mask, None, CatalogConfig())
    want = parents_from_peaks(frame.images, frame.variance, peaks, snr=3.0, grow=2)
    raw = np.where(mask, np.nan, images)
    assert len(parents_from_peaks(raw, variance, peaks, snr=3.0, grow=2)) == len(want)
    got = catalog_parents.frame_parents_from_peaks(frame.images, frame.variance, peaks, 3.0, 2)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert (a.id, a.box) == (b.id, b.box)
        np.testing.assert_array_equal(a.footprint, b.footprint)
        np.testing.assert_array_equal(a.peaks, b.peaks)
        np.testing.assert_array_equal(a.peak_index, b.peak_index)


def test_catalog_and_detection_share_one_parent_type(scene):
    """parents_from_peaks, detect and group_peaks all give cdeblend.Parent (CatalogParent and
    ParentLike are its old names); peak_index points back into the caller's peak list, and
    each peak lies in its parent's footprint, which is the thresholded unfiltered
    detection image's connected region (grown by 0 here) around it."""
    from scipy import ndimage

    from cdeblend.catalog import ParentLike

    images, variance, psfs, peaks = scene
    assert CatalogParent is cdeblend.Parent and ParentLike is cdeblend.Parent
    parents = parents_from_peaks(images, variance, peaks, snr=3.0, grow=0)
    detected = cdeblend.detect(images, variance, psfs)
    assert all(type(p) is cdeblend.Parent for p in parents + detected)
    on = cdeblend.detection_image(images, variance) >= 3.0
    on[peaks[:, 0], peaks[:, 1]] = True
    labels, _ = ndimage.label(on, structure=np.ones((3, 3), bool))
    seen = []
    for p in parents:
        assert np.array_equal(np.asarray(peaks)[p.peak_index], p.peaks)
        y0, x0, h, w = p.box
        lab = labels[p.peaks[0, 0], p.peaks[0, 1]]
        assert np.array_equal(labels[y0 : y0 + h, x0 : x0 + w] == lab, p.footprint)
        assert p.area == int((labels == lab).sum())
        seen.extend(p.peak_index.tolist())
    assert sorted(seen) == list(range(len(peaks)))


# ------------------------------------------------------------------------------------------
# rows against an independent numpy computation
# ------------------------------------------------------------------------------------------


def test_rows_match_numpy_reference(scene):
    images, variance, psfs, peaks = scene
    cat, md = run(images, variance, psfs, peaks=peaks)
    parents = parents_from_peaks(images, variance, peaks)
    par = cat[cat["is_parent"]]
    assert list(par["id"]) == [p.id for p in parents]
    assert np.all(par["parent_id"] == -1)
    next_id = max(p.id for p in parents) + 1
    # rows sorted by id: the parents, then the children in parent order
    assert list(cat["id"]) == sorted(cat["id"]) and list(cat["is_parent"][: len(parents)])
    for row, p in enumerate(parents):
        y0, x0, h, w = p.box
        cut = images[:, y0 : y0 + h, x0 : x0 + w]
        prow = cat[row]
        assert prow["id"] == p.id and prow["n_peaks"] == len(p.peaks)
        np.testing.assert_allclose(prow["flux_footprint"], (cut * p.footprint).sum(axis=(1, 2)))
        if len(p.peaks) == 1:  # isolated: not fitted by default
            assert prow["skipped"] and prow["skipped_isolated"] and prow["n_children"] == 0
            assert prow["deblender"] == "none"
            continue
        assert not prow["skipped"] and not prow["failed"] and prow["deblender"] == "multi"
        local = p.peaks - (y0, x0)
        cells = voronoi_cells((h, w), local, p.footprint)
        assert prow["n_children"] == len(p.peaks)
        assert prow["iterations"] == len(p.peaks) and prow["converged"]
        children = cat[cat["parent_id"] == p.id]
        assert list(children["id"]) == list(range(next_id, next_id + len(p.peaks)))
        next_id += len(p.peaks)
        assert np.all(children["parent_id"] == p.id) and not np.any(children["is_parent"])
        for i, ch in enumerate(children):
            flux = (cut * cells[i]).sum(axis=(1, 2))
            np.testing.assert_allclose(ch["flux_conserved"], flux, rtol=1e-12)
            np.testing.assert_allclose(ch["flux_model"], flux, rtol=1e-12)
            assert (ch["peak_y"], ch["peak_x"]) == tuple(p.peaks[i]) and ch["peak_id"] == i
            pos = np.maximum((cut * cells[i]).sum(0), 0) * cells[i]
            yy, xx = np.mgrid[:h, :w]
            np.testing.assert_allclose(
                (ch["centroid_y"], ch["centroid_x"]),
                ((yy * pos).sum() / pos.sum() + y0, (xx * pos).sum() / pos.sum() + x0),
                rtol=1e-12,
            )
        # every footprint pixel went to a child: nothing unassigned, totals add up
        np.testing.assert_allclose(prow["flux_unassigned"], 0, atol=1e-9)
        np.testing.assert_allclose(prow["flux_conserved"], children["flux_conserved"].sum(0))
    assert next_id == cat["id"][-1] + 1 and len(cat) == next_id - 1
    # the model data holds the fitted parents with their children's ids, and the isolated
    # parents as themselves
    fitted = [p.id for p in parents if len(p.peaks) > 1]
    assert list(md.blends) == [p.id for p in parents]
    for p in parents:
        bd = md.blends[p.id]
        assert bd.isolated == (len(p.peaks) == 1) and bd.box == tuple(p.box)
        assert np.array_equal(bd.footprint, p.footprint)
        if bd.isolated:
            y0, x0, h, w = p.box
            assert [s.id for s in bd.sources] == [p.id]
            np.testing.assert_array_equal(
                md.conserved_images(images, p.id)[0],
                images[:, y0 : y0 + h, x0 : x0 + w] * p.footprint,
            )
    for pid in fitted:
        kids = cat[cat["parent_id"] == pid]
        bd = md.blends[pid]
        assert [s.id for s in bd.sources] == list(kids["id"])
        models = md.models(pid)  # model space: sed x morph, sums to the model flux
        np.testing.assert_allclose(models.sum(axis=(2, 3)), kids["flux_model"], rtol=1e-12)
        np.testing.assert_allclose(bd.centroids(), np.c_[kids["centroid_y"], kids["centroid_x"]])


def test_model_data_of_a_run_survives_the_file(scene, tmp_path):
    images, variance, psfs, peaks = scene
    _, md = run(images, variance, psfs, peaks=peaks)
    save_models(tmp_path / "m.fits", md)
    back = load_models(tmp_path / "m.fits")
    assert_model_data_identical(md, back)
    assert back.bands == BANDS and np.array_equal(back.psfs, md.psfs)
    for pid, bd in md.blends.items():
        assert np.array_equal(back.blends[pid].footprint, bd.footprint)


# ------------------------------------------------------------------------------------------
# executors: same result, in parent order, whatever runs it
# ------------------------------------------------------------------------------------------


def test_executors_give_identical_results(scene):
    images, variance, psfs, peaks = scene
    ref_cat, ref_md = run(images, variance, psfs, peaks=peaks, executor="serial")
    for executor, workers in (("threads", 3), ("threads", None), ("dask", 2)):
        cat, md = run(images, variance, psfs, peaks=peaks, executor=executor, max_workers=workers)
        assert_catalogs_identical(ref_cat, cat)
        assert_model_data_identical(ref_md, md)


def test_results_are_in_parent_order_even_when_workers_finish_out_of_order(scene):
    images, variance, psfs, peaks = scene
    parents = parents_from_peaks(images, variance, peaks)
    first = parents[0]
    release = threading.Event()

    class SlowFirst(VoronoiDeblender):
        def deblend(self, obs, pk):
            # the first parent waits until a later one has finished
            if len(pk) == len(first.peaks) and np.array_equal(pk, first.peaks - first.box[:2]):
                release.wait(timeout=30)
            else:
                release.set()
            return super().deblend(obs, pk)

    cat, _ = run(
        images,
        variance,
        psfs,
        parents=parents,
        executor="threads",
        max_workers=4,
        fac=lambda kind, cfg: SlowFirst(),
    )
    ref, _ = run(images, variance, psfs, parents=parents, executor="serial")
    assert_catalogs_identical(ref, cat)


def test_dask_local_cluster(scene):
    distributed = pytest.importorskip("distributed")
    images, variance, psfs, peaks = scene
    parents = parents_from_peaks(images, variance, peaks)
    bad = parents[-1].peaks - parents[-1].box[:2]

    def fac(kind, cfg):
        return VoronoiDeblender(fail_when=lambda pk: np.array_equal(pk, bad))

    ref, ref_md = run(images, variance, psfs, parents=parents, executor="serial", fac=fac)
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        with distributed.Client(cluster) as client:
            cat, md = run(images, variance, psfs, parents=parents, executor=client, fac=fac)
    assert_catalogs_identical(ref, cat)
    assert_model_data_identical(ref_md, md)
    assert cat[cat["id"] == parents[-1].id]["failed"][0]


def test_any_concurrent_futures_executor(scene):
    from concurrent.futures import ThreadPoolExecutor

    images, variance, psfs, peaks = scene
    ref, _ = run(images, variance, psfs, peaks=peaks)
    with ThreadPoolExecutor(2) as pool:
        cat, _ = run(images, variance, psfs, peaks=peaks, executor=pool)
    assert_catalogs_identical(ref, cat)


# ------------------------------------------------------------------------------------------
# failures are isolated
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["serial", "threads"])
def test_a_failing_parent_is_flagged_and_the_others_kept(scene, executor, caplog):
    images, variance, psfs, peaks = scene
    parents = parents_from_peaks(images, variance, peaks)
    victim = next(p for p in parents if len(p.peaks) == 3)
    local = victim.peaks - victim.box[:2]

    def fac(kind, cfg):
        return VoronoiDeblender(fail_when=lambda pk: np.array_equal(pk, local))

    ref, ref_md = run(images, variance, psfs, parents=parents)
    with caplog.at_level(logging.WARNING, logger="cdeblend.catalog"):
        cat, md = run(images, variance, psfs, parents=parents, executor=executor, fac=fac)
    assert any(
        str(victim.id) in r.getMessage() and "ZeroDivisionError" in r.getMessage()
        for r in caplog.records
    )
    vrow = cat[cat["id"] == victim.id][0]
    assert vrow["failed"] and vrow["error"] == "ZeroDivisionError" and not vrow["skipped"]
    assert vrow["n_children"] == 0 and np.all(np.isnan(vrow["flux_conserved"]))
    assert victim.id not in md.blends
    assert np.sum(cat["parent_id"] == victim.id) == 0
    # every other parent and child is exactly as without the failure (ids after the
    # failed parent's children shift by its children)
    keep_ref = (ref["id"] != victim.id) & (ref["parent_id"] != victim.id)
    keep = cat["id"] != victim.id
    for name in ("parent_id", "flux_conserved", "flux_model", "centroid_y", "peak_x", "skipped"):
        assert np.array_equal(
            np.asarray(ref[name][keep_ref]), np.asarray(cat[name][keep]), equal_nan=True
        ), name
    assert sum(cat["failed"]) == 1


def test_catch_failures_off_reraises(scene):
    images, variance, psfs, peaks = scene

    def fac(kind, cfg):
        return VoronoiDeblender(fail_when=lambda pk: len(pk) == 3)

    with pytest.raises(ZeroDivisionError, match="refuses"):
        run(
            images,
            variance,
            psfs,
            peaks=peaks,
            fac=fac,
            executor="threads",
            config=CatalogConfig(catch_failures=False),
        )


def test_long_exception_names_are_cut_to_25_characters(scene):
    images, variance, psfs, peaks = scene

    class AVeryLongExceptionClassNameForTesting(RuntimeError):
        pass

    class Boom:
        def deblend(self, obs, pk):
            raise AVeryLongExceptionClassNameForTesting("x")

    cat, md = run(
        images,
        variance,
        psfs,
        peaks=peaks,
        fac=lambda k, c: Boom(),
        config=CatalogConfig(persist_isolated=False),
    )
    failed = cat[cat["failed"]]
    assert len(failed) == 3 and not md.blends  # every multi-peak parent
    assert set(failed["error"]) == {"AVeryLongExceptionClassNameForTesting"[:25]}


# ------------------------------------------------------------------------------------------
# skip rules
# ------------------------------------------------------------------------------------------


def box_parent(pid, box, peaks):
    y0, x0, h, w = box
    return CatalogParent(pid, box, np.ones((h, w), bool), np.asarray(peaks))


def skip_parents():
    return [
        box_parent(1, (0, 0, 30, 30), [(12, 12), (12, 19)]),  # 900 px, 2 peaks: fitted
        box_parent(2, (30, 0, 30, 40), [(40, 14), (45, 20), (38, 22)]),  # 1200 px, 3 peaks
        box_parent(3, (0, 50, 30, 30), [(15, 60)]),  # isolated
        box_parent(4, (30, 45, 30, 39), [(45, 60), (47, 67)]),  # 1170 px, 2 peaks
    ]


def flags_of(cat, pid):
    row = cat[cat["id"] == pid][0]
    return {
        f
        for f in (
            "skipped_isolated",
            "skipped_parent_too_big",
            "skipped_masked",
            "skipped_too_many_peaks",
            "failed",
        )
        if row[f]
    }


@pytest.mark.parametrize(
    "cfg, expect",
    [
        (CatalogConfig(), {3: {"skipped_isolated"}}),
        (CatalogConfig(skip_isolated=False), {}),
        (
            CatalogConfig(max_number_of_peaks=2),
            {2: {"skipped_too_many_peaks"}, 3: {"skipped_isolated"}},
        ),
        (
            CatalogConfig(max_footprint_area=1000),
            {2: {"skipped_parent_too_big"}, 3: {"skipped_isolated"}, 4: {"skipped_parent_too_big"}},
        ),
        (
            CatalogConfig(max_footprint_size=35),
            {2: {"skipped_parent_too_big"}, 3: {"skipped_isolated"}, 4: {"skipped_parent_too_big"}},
        ),
        (
            CatalogConfig(max_area_times_peaks=3000),
            {2: {"skipped_parent_too_big"}, 3: {"skipped_isolated"}},
        ),
        # a parent that breaks two rules gets the first one's flag only (spec order)
        (
            CatalogConfig(max_footprint_area=1000, max_number_of_peaks=2),
            {2: {"skipped_parent_too_big"}, 3: {"skipped_isolated"}, 4: {"skipped_parent_too_big"}},
        ),
        # non-positive limits are off
        (
            CatalogConfig(
                max_number_of_peaks=0,
                max_footprint_area=0,
                max_area_times_peaks=0,
                skip_isolated=False,
            ),
            {},
        ),
    ],
)
def test_skip_rules_and_flags(scene, cfg, expect):
    images, variance, psfs, _ = scene
    calls = []

    def fac(kind, c):
        return VoronoiDeblender(calls=calls)

    cat, md = run(images, variance, psfs, parents=skip_parents(), config=cfg, fac=fac)
    for pid in (1, 2, 3, 4):
        want = expect.get(pid, set())
        assert flags_of(cat, pid) == want, pid
        row = cat[cat["id"] == pid][0]
        assert bool(row["skipped"]) == bool(want)
        assert (pid in md.blends) == (not want or want == {"skipped_isolated"})
        assert (pid in md.blends and md.blends[pid].isolated) == (want == {"skipped_isolated"})
        assert row["n_children"] == (0 if want else row["n_peaks"])
    # the deblender ran on exactly the parents that were not skipped
    fitted = [p for p in skip_parents() if p.id not in expect]
    assert sorted(calls) == sorted(tuple(map(tuple, p.peaks - p.box[:2])) for p in fitted)


def test_masked_fraction_rule(scene):
    images, variance, psfs, _ = scene
    mask = np.zeros(images.shape[1:], bool)
    mask[0:15, 0:30] = True  # half of parent 1's box
    mask[30:33, 0:40] = True  # a tenth of parent 2's
    cfg = CatalogConfig(max_masked_fraction=0.3)
    cat, _ = run(images, variance, psfs, parents=skip_parents(), config=cfg, mask=mask)
    row1, row2 = cat[cat["id"] == 1][0], cat[cat["id"] == 2][0]
    assert row1["masked_fraction"] == 0.5 and row2["masked_fraction"] == 0.1
    assert flags_of(cat, 1) == {"skipped_masked"} and flags_of(cat, 2) == set()
    # masked pixels have no data: no weight, no flux in the footprint or to any child
    cut = images[:, 30:60, 0:40]
    np.testing.assert_allclose(row2["flux_footprint"], cut[:, 3:].sum(axis=(1, 2)))
    np.testing.assert_allclose(row2["flux_unassigned"], 0, atol=1e-9)
    np.testing.assert_allclose(row2["flux_conserved"], cut[:, 3:].sum(axis=(1, 2)))


# ------------------------------------------------------------------------------------------
# single band
# ------------------------------------------------------------------------------------------


def test_single_band_image_uses_the_single_band_deblender():
    images, variance, psfs, peaks = make_scene(nb=1)
    mask = np.zeros(images.shape[1:], bool)
    mask[11, 10:14] = True
    cat, md = deblend_catalog(
        images[0],
        peaks=peaks,
        variance=variance[0],
        psf=psfs[0],
        mask=mask,
        executor="threads",
        progress=False,
        deblender_factory=factory,
    )
    assert not md.blends  # nothing to persist from the single-band deblender
    par = cat[cat["is_parent"] & ~cat["skipped"]]
    assert set(par["deblender"]) == {"single"} and len(par) == 3
    parents = parents_from_peaks(images, variance, peaks)
    for p in parents:
        if len(p.peaks) == 1:
            continue
        y0, x0, h, w = p.box
        valid = p.footprint & ~mask[y0 : y0 + h, x0 : x0 + w]
        cells = voronoi_cells((h, w), p.peaks - (y0, x0), valid)
        kids = cat[cat["parent_id"] == p.id]
        cut = images[0, y0 : y0 + h, x0 : x0 + w]
        np.testing.assert_allclose(kids["flux_conserved"][:, 0], [(cut * c).sum() for c in cells])
        np.testing.assert_allclose(
            kids["flux_model"][:, 0], [np.maximum(cut * c, 0).sum() for c in cells]
        )
        masked_here = mask[y0 : y0 + h, x0 : x0 + w].any()
        want = "has_stray_flux" if masked_here else ""
        assert set(kids["child_flags"]) == {want}
        prow = cat[cat["id"] == p.id][0]
        # masked pixels have no data: nothing of them is in the footprint flux or unassigned
        np.testing.assert_allclose(prow["flux_footprint"][0], cut[valid].sum(), atol=1e-9)
        np.testing.assert_allclose(prow["flux_unassigned"][0], 0, atol=1e-9)


# ------------------------------------------------------------------------------------------
# catalog container and file
# ------------------------------------------------------------------------------------------


def test_catalog_fits_round_trip(scene, tmp_path):
    images, variance, psfs, peaks = scene
    cat, _ = run(images, variance, psfs, peaks=peaks, config=CatalogConfig(skip_isolated=False))
    write_catalog(tmp_path / "cat.fits", cat)
    back = read_catalog(tmp_path / "cat.fits")
    assert back.colnames == cat.colnames and len(back) == len(cat) == 4 + len(SOURCES)
    for name in cat.colnames:
        a, b = np.asarray(cat[name]), np.asarray(back[name])
        if a.dtype.kind == "U":
            assert list(a) == [str(v) for v in b], name
        else:
            assert np.array_equal(a, b.astype(a.dtype), equal_nan=a.dtype.kind == "f"), name
    assert np.asarray(back["flux_conserved"]).shape == (len(cat), 3)
    assert back.meta["BANDS"] == "g,r,i"
    # a structured array writes too
    write_catalog(tmp_path / "cat2.fits", cat.as_array())
    assert np.array_equal(np.asarray(read_catalog(tmp_path / "cat2.fits")["id"]), cat["id"])


def test_structured_array_without_astropy(scene, monkeypatch):
    images, variance, psfs, peaks = scene
    ref, _ = run(images, variance, psfs, peaks=peaks)
    monkeypatch.setitem(sys.modules, "astropy.table", None)  # import fails
    cat, _ = run(images, variance, psfs, peaks=peaks)
    assert isinstance(cat, np.ndarray) and cat.dtype.names == tuple(ref.colnames)
    assert np.array_equal(cat["flux_conserved"], np.asarray(ref["flux_conserved"]), equal_nan=True)


def test_progress_bar_is_shown(scene, capsys):
    pytest.importorskip("tqdm")
    images, variance, psfs, peaks = scene
    deblend_catalog(
        images,
        peaks=peaks,
        variance=variance,
        psf=psfs,
        progress=True,
        deblender_factory=factory,
        observation_factory=TestObservation,
    )
    assert "deblend" in capsys.readouterr().err


def test_observation_input_and_float32(scene):
    images, variance, psfs, peaks = make_scene(dtype=np.float32)
    obs = TestObservation(images, variance, psfs.astype(np.float32), bands=BANDS)
    cat, md = deblend_catalog(
        obs,
        peaks=peaks,
        progress=False,
        deblender_factory=factory,
        observation_factory=TestObservation,
    )
    ref, _ = run(images.astype(np.float64), variance.astype(np.float64), psfs, peaks=peaks)
    np.testing.assert_allclose(
        np.asarray(cat["flux_conserved"]), np.asarray(ref["flux_conserved"]), rtol=1e-5
    )
    assert md.bands == BANDS and cat.meta["BANDS"] == "g,r,i"


# ------------------------------------------------------------------------------------------
# the catalog kernels and the bulk steps against plain numpy, parent by parent
# ------------------------------------------------------------------------------------------


def cut_out(rng, shape, dtype, lo=0.0):
    """Random values of ``shape`` as a strided view into a larger array (a parent's box)."""
    full = rng.uniform(lo, 1.0, size=(shape[0], shape[1] + 3, shape[2] + 5)).astype(dtype)
    return full[:, 2 : 2 + shape[1], 1 : 1 + shape[2]]


def weights_reference(source, inverse, footprint, mask, dtype):
    """The weights as _deblend_task computed them with numpy."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        w = np.where(source > 0, 1.0 / source, 0.0) * footprint if inverse else source * footprint
        if mask is not None:
            w = w * ~mask
    return np.ascontiguousarray(w, dtype=dtype)


@settings(max_examples=120, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 4),
    st.integers(1, 13),
    st.integers(1, 13),
    st.sampled_from([np.float32, np.float64]),
    st.sampled_from([None, np.float32, np.float64]),
    st.booleans(),
)
def test_parent_arrays_is_bit_identical_to_numpy(seed, nb, h, w, dtype, wdtype, with_mask):
    rng = np.random.default_rng(seed)
    images = cut_out(rng, (nb, h, w), dtype, lo=-1.0)
    variance = cut_out(rng, (nb, h, w), dtype)
    # zero variance, and variance so small that its inverse overflows (inf x 0 = nan)
    variance[rng.random(variance.shape) < 0.2] = 0
    variance[rng.random(variance.shape) < 0.1] = np.finfo(dtype).smallest_subnormal
    footprint = rng.random((h, w)) < 0.7
    mask = rng.random((h + 1, w))[1:] < 0.3 if with_mask else None  # a strided view too
    if wdtype is None:
        source, inverse = variance, True
    else:
        source, inverse = cut_out(rng, (nb, h, w), wdtype) * 1e3, False
    out = np.full((3, nb, h, w), np.nan, dtype=dtype)
    _catalog_cy.parent_arrays(
        images,
        variance,
        source,
        inverse,
        footprint.view(np.uint8),
        None if mask is None else mask.view(np.uint8),
        *out,
    )
    want = weights_reference(source, inverse, footprint, mask, dtype)
    bits = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}[np.dtype(dtype)]
    assert np.array_equal(out[2].view(bits), want.view(bits))
    assert np.array_equal(out[0], images) and np.array_equal(out[1], variance)


def test_parent_arrays_refuses_bad_shapes():
    a = np.ones((2, 3, 4))
    fp = np.ones((3, 4), np.uint8)

    def call(**kw):
        args = dict(
            images=a,
            variance=a,
            source=a,
            inverse=True,
            footprint=fp,
            mask=None,
            images_out=np.empty_like(a),
            variance_out=np.empty_like(a),
            weights_out=np.empty_like(a),
        )
        args.update(kw)
        _catalog_cy.parent_arrays(*args.values())

    call()
    for name, bad in (
        ("variance", np.ones((2, 3, 5))),
        ("source", np.ones((1, 3, 4))),
        ("weights_out", np.empty((2, 4, 4))),
        ("footprint", fp[:2]),
        ("mask", np.ones((4, 4), np.uint8)),
    ):
        with pytest.raises(ValueError, match=name):
            call(**{name: bad})


def stats_reference(images, boxes, footprints, mask):
    """Per parent, as the catalog assembly computed them with numpy."""
    flux, cents, fracs = [], [], []
    for (y0, x0, h, w), fp in zip(boxes, footprints, strict=True):
        cut = images[:, y0 : y0 + h, x0 : x0 + w]
        flux.append(np.sum(np.where(fp, cut, 0.0), axis=(1, 2), dtype=np.float64))
        cents.append(results._centroid(np.where(fp, cut, 0).sum(0), y0, x0))
        mcut = None if mask is None else mask[y0 : y0 + h, x0 : x0 + w]
        fracs.append(0.0 if mcut is None else float(np.count_nonzero(mcut & fp)) / max(fp.sum(), 1))
    return np.array(flux).reshape(-1, images.shape[0]), np.array(cents).reshape(-1, 2), fracs


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 4),
    st.integers(0, 6),
    st.sampled_from([np.float32, np.float64]),
    st.booleans(),
)
def test_parent_stats_match_numpy(seed, nb, n_parents, dtype, with_mask):
    rng = np.random.default_rng(seed)
    H, W = 17, 23
    # negative pixels too: a footprint without positive flux has no centroid
    images = (rng.normal(size=(nb, H, W)) * 10 - rng.uniform(0, 30)).astype(dtype)
    boxes, footprints = [], []
    for _ in range(n_parents):
        h, w = int(rng.integers(1, H + 1)), int(rng.integers(1, W + 1))
        boxes.append((int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w))
        footprints.append(rng.random((h, w)) < rng.uniform(0, 1))
    mask = rng.random((H, W)) < 0.3 if with_mask else None
    frame = SimpleNamespace(images=images, mask=mask)
    stats = catalog_parents.parent_stats(
        frame, np.array(boxes, np.int64).reshape(-1, 4), footprints
    )
    flux, cents, fracs = stats_reference(images, boxes, footprints, mask)
    scale = np.abs(images).sum()
    np.testing.assert_allclose(stats.flux, flux, rtol=1e-12, atol=1e-12 * scale)
    np.testing.assert_allclose(stats.centroid, cents, rtol=1e-12, atol=1e-10)
    assert stats.masked_fraction.tolist() == fracs  # exactly: counts, then one division


def test_parent_stats_refuses_bad_arguments():
    images = np.zeros((2, 5, 6))
    boxes = np.array([[1, 1, 2, 3]], np.int64)

    def call(**kw):
        args = dict(
            boxes=boxes,
            footprints=np.ones(6, np.uint8),
            mask=None,
            flux=np.empty((1, 2)),
            centroid=np.empty((1, 2)),
            counts=np.empty((1, 2), np.int64),
        )
        args.update(kw)
        _catalog_cy.parent_stats(images, *args.values())

    call()
    with pytest.raises(ValueError, match=r"boxes\[0\]"):
        call(boxes=np.array([[4, 1, 2, 3]], np.int64))
    with pytest.raises(ValueError, match="boxes must be"):
        call(boxes=np.zeros((1, 3), np.int64))
    for name, bad in (
        ("footprints", np.ones(5, np.uint8)),
        ("mask", np.ones((5, 5), np.uint8)),
        ("flux", np.empty((1, 3))),
        ("centroid", np.empty((2, 2))),
        ("counts", np.empty((1, 1), np.int64)),
    ):
        with pytest.raises(ValueError, match=name):
            call(**{name: bad})


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.sampled_from(["i8", "f4", "f8"]))
def test_check_parents_at_once_equals_parent_by_parent(seed, n_parents, peak_dtype):
    rng = np.random.default_rng(seed)
    H, W = 40, 50
    parents = []
    for i in range(n_parents):
        h, w = int(rng.integers(1, 20)), int(rng.integers(1, 20))
        y0, x0 = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
        n = int(rng.integers(1, 5))
        # float peaks up to half a pixel off (rounded half away from zero), a single peak
        # as a flat pair, a footprint of None or of ints
        pk = np.c_[rng.integers(y0, y0 + h, n), rng.integers(x0, x0 + w, n)].astype(peak_dtype)
        if pk.dtype.kind == "f":
            pk = pk + rng.uniform(-0.5, 0.5, pk.shape) * (
                (pk >= [y0 + 1, x0 + 1]) & (pk < [y0 + h - 1, x0 + w - 1])
            )
        fp = [None, rng.random((h, w)) < 0.5, (rng.random((h, w)) < 0.5).astype(int)][i % 3]
        parents.append(CatalogParent(10 + i, (y0, x0, h, w), fp, pk[0] if n == 1 else pk))
    got = catalog_parents.check_parents(iter(parents), (H, W))  # any iterable
    want = [catalog_parents._check_parent(p, i, (H, W)) for i, p in enumerate(parents)]
    assert len(got) == len(want)
    for g, r in zip(got, want, strict=True):
        assert g[0] == r[0] and g[1] == r[1]
        assert g[2].dtype == bool and np.array_equal(g[2], r[2])
        assert g[3].dtype == r[3].dtype and np.array_equal(g[3], r[3])


def test_check_parents_reports_the_first_bad_parent():
    good = box_parent(1, (0, 0, 10, 10), [(1, 1), (2, 2)])
    mixed = box_parent(3, (0, 0, 10, 10), np.array([(1.4, 1.6)]))  # another peak dtype
    for bad, match in (
        (box_parent(2, (0, 0, 10, 10), [(1, 1), (12, 3)]), r"parents\[1\].peaks\[1\]"),
        (box_parent(2, (0, 0, 10, 10), [(np.nan, 3)]), r"parents\[1\].peaks holds NaN"),
        (box_parent(2, (0, 0, 10, 10), np.zeros((0, 2))), r"parents\[1\].peaks is empty"),
        (box_parent(2, (0, 0, 99, 10), [(1, 1)]), r"parents\[1\] \(id 2\) box"),
        (SimpleNamespace(id=2, box=(0, 0, 2, 2)), r"parents\[1\] has no .peaks"),
    ):
        with pytest.raises((ValueError, TypeError), match=match):
            catalog_parents.check_parents([good, bad, mixed], (60, 84))
    checked = catalog_parents.check_parents([good, mixed], (60, 84))
    assert checked[1][3].tolist() == [[1, 2]]


def assemble_reference(checked, ids, boxes, stats, reasons, outcomes, kind, nb):
    """The catalog rows filled row by row, as deblend_catalog did."""
    next_id = (max(ids) if ids else 0) + 1
    n_rows = len(checked) + sum(len(o.peak_id) for o in outcomes.values() if not o.failed)
    flag_width = max([len(s) for o in outcomes.values() for s in o.child_flags] + [1])
    pflag_width = max([len(o.parent_flags) for o in outcomes.values()] + [1])
    cat = np.zeros(n_rows, dtype=table._catalog_dtype(nb, flag_width, pflag_width))
    r = 0
    for k, (pid, box, _, local) in enumerate(checked):
        y0, x0 = box[:2]
        prow = cat[r]
        prow["id"], prow["parent_id"], prow["is_parent"] = pid, -1, True
        prow["n_peaks"], prow["peak_id"] = len(local), -1
        prow["peak_y"], prow["peak_x"] = local[0] + (y0, x0)
        prow["centroid_y"], prow["centroid_x"] = stats.centroid[k]
        prow["box_y0"], prow["box_x0"], prow["box_height"], prow["box_width"] = box
        prow["flux_footprint"] = stats.flux[k]
        prow["masked_fraction"] = stats.masked_fraction[k]
        prow["flux_model"] = prow["flux_conserved"] = prow["flux_unassigned"] = np.nan
        prow["deblender"], prow["iterations"], prow["loss"] = "none", -1, np.nan
        prow["flux_conserved_err"] = stats.flux_err[k]
        prow["flux_model_err"] = prow["chi2_reduced"] = prow["deblend_runtime"] = np.nan
        for name in table._BAND_METRICS:
            prow[name] = np.nan
        r += 1
        if k in outcomes:
            prow["deblender"] = kind
            prow["deblender_flags"] = outcomes[k].parent_flags
        if reasons[k] == "skipped_isolated":  # a lone source owns its footprint's flux
            prow["flux_conserved"], prow["flux_unassigned"] = stats.flux[k], 0.0
        if reasons[k]:
            prow["skipped"] = prow[reasons[k]] = True
            continue
        o = outcomes[k]
        if o.failed:
            prow["failed"], prow["error"] = True, o.error
            continue
        n = len(o.peak_id)
        prow["n_children"], prow["n_components"] = n, int(o.n_components.sum())
        prow["iterations"], prow["loss"], prow["converged"] = o.iterations, o.loss, o.converged
        prow["flux_model"] = o.flux_model.sum(axis=0)
        prow["flux_conserved"] = o.flux_conserved.sum(axis=0)
        prow["flux_unassigned"] = stats.flux[k] - o.flux_conserved.sum(axis=0)
        if n == 0 and len(local) == 1 and not o.parent_flags:
            prow["flux_conserved"], prow["flux_unassigned"] = stats.flux[k], 0.0
        prow["chi2_reduced"], prow["deblend_runtime"] = o.chi2_reduced, o.runtime
        for i in range(n):
            row = cat[r + i]
            row["id"], row["parent_id"], row["n_peaks"] = next_id + i, pid, 1
            row["n_components"], row["peak_id"] = o.n_components[i], o.peak_id[i]
            row["peak_y"], row["peak_x"] = o.peaks[i]
            row["centroid_y"], row["centroid_x"] = o.centroids[i]
            row["box_y0"] = row["box_x0"] = row["box_height"] = row["box_width"] = -1
            row["flux_model"], row["flux_conserved"] = o.flux_model[i], o.flux_conserved[i]
            row["flux_footprint"] = row["flux_unassigned"] = np.nan
            row["masked_fraction"], row["deblender"] = stats.masked_fraction[k], kind
            row["iterations"], row["loss"], row["converged"] = o.iterations, o.loss, o.converged
            row["zero_flux"] = np.all(o.flux_conserved[i] == 0)
            row["child_flags"] = o.child_flags[i]
            row["deblend_runtime"] = o.runtime
            for name, value in (
                ("flux_conserved_err", o.flux_conserved_err),
                ("flux_model_err", o.flux_model_err),
            ):
                row[name] = np.nan if value is None else value[i]
            m = o.metrics or {}
            for name in (*table._BAND_METRICS, "chi2_reduced"):
                row[name] = m[name][i] if name in m else np.nan
            for name in ("deblend_zeroFlux", "deblend_edgePixels"):
                row[name] = m[name][i] if name in m else False
        next_id += n
        r += n
    return cat


@pytest.mark.parametrize("single", [False, True])
def test_bulk_assembly_equals_row_by_row(scene, monkeypatch, single):
    """Skipped, failed and fitted parents (and zero-flux children): every column of every row,
    bit for bit."""
    images, variance, psfs, peaks = make_scene(nb=1) if single else scene
    parents = parents_from_peaks(images, variance, peaks)
    victim = next(p for p in parents if len(p.peaks) == 3)
    local = victim.peaks - victim.box[:2]
    mask = np.zeros(images.shape[-2:], bool)
    mask[0:30, 16:30] = True  # the cell of (12, 19): a child without flux

    def fac(kind, c):
        if kind == "single":
            return VoronoiSingleBand()
        return VoronoiDeblender(fail_when=lambda pk: np.array_equal(pk, local))

    seen = []
    real = driver.assemble

    def spy(*args):
        seen.append((args, real(*args)))
        return seen[-1][1]

    monkeypatch.setattr(driver, "assemble", spy)
    with np.errstate(invalid="ignore"):  # the test deblender's SED of an empty cell: NaN
        run(
            images,
            variance,
            psfs,
            parents=parents,
            fac=fac,
            mask=mask,
            config=CatalogConfig(max_number_of_peaks=2 if single else 600),
        )
    ((args, got),) = seen
    want = assemble_reference(*args)
    assert got.dtype == want.dtype
    for name in want.dtype.names:
        assert np.array_equal(got[name], want[name], equal_nan=got[name].dtype.kind == "f"), name
    assert got["failed"].sum() == (0 if single else 1) and got["skipped"].sum() >= 1
    assert single or got["zero_flux"].any()


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


def test_bad_arguments(scene):
    images, variance, psfs, peaks = scene
    parents = skip_parents()
    with pytest.raises(ValueError, match="executor"):
        run(images, variance, psfs, peaks=peaks, executor="processes")
    with pytest.raises(TypeError, match="executor"):
        run(images, variance, psfs, peaks=peaks, executor=42)
    with pytest.raises(ValueError, match="max_workers"):
        run(images, variance, psfs, peaks=peaks, executor="threads", max_workers=0)
    with pytest.raises(ValueError, match="either peaks or parents"):
        run(images, variance, psfs, peaks=peaks, parents=parents)
    with pytest.raises(ValueError, match="variance and psf are required"):
        deblend_catalog(images, peaks=peaks)
    with pytest.raises(TypeError, match="observation_or_image"):
        deblend_catalog("image.fits", peaks=peaks)
    with pytest.raises(TypeError, match="CatalogConfig"):
        run(images, variance, psfs, peaks=peaks, config={"max_number_of_peaks": 3})
    with pytest.raises(ValueError, match="needs one band"):
        run(images, variance, psfs, peaks=peaks, config=CatalogConfig(deblender="single"))
    with pytest.raises(ValueError, match="deblender must be"):
        CatalogConfig(deblender="scarlet")
    with pytest.raises(ValueError, match="max_masked_fraction"):
        CatalogConfig(max_masked_fraction=2)
    with pytest.raises(ValueError, match="variance has shape"):
        run(images, variance[:, :10], psfs, peaks=peaks)
    with pytest.raises(ValueError, match="psf has 2 band"):
        run(images, variance, psfs[:2], peaks=peaks)
    with pytest.raises(ValueError, match="unit sum"):
        run(images, variance, psfs * 2, peaks=peaks)
    with pytest.raises(ValueError, match="outside the image"):
        run(images, variance, psfs, peaks=[(0, 0), (100, 3)])
    with pytest.raises(ValueError, match=r"parents\[0\].*not inside the image"):
        run(images, variance, psfs, parents=[box_parent(1, (50, 0, 20, 20), [(55, 5)])])
    with pytest.raises(ValueError, match=r"parents\[0\].*footprint has shape"):
        run(
            images,
            variance,
            psfs,
            parents=[CatalogParent(1, (0, 0, 10, 10), np.ones((9, 10), bool), [(1, 1)])],
        )
    with pytest.raises(ValueError, match=r"parents\[0\].peaks\[1\].*outside its box"):
        run(images, variance, psfs, parents=[box_parent(1, (0, 0, 10, 10), [(1, 1), (12, 3)])])
    with pytest.raises(ValueError, match="unique"):
        run(images, variance, psfs, parents=[box_parent(1, (0, 0, 10, 10), [(1, 1)])] * 2)
    with pytest.raises(TypeError, match=r"parents\[0\] has no .peaks"):
        run(images, variance, psfs, parents=[SimpleNamespace(id=1, box=(0, 0, 2, 2))])
    with pytest.raises(ValueError, match="mask has shape"):
        run(images, variance, psfs, peaks=peaks, mask=np.zeros((3, 3), bool))


# ------------------------------------------------------------------------------------------
# the real deblenders
# ------------------------------------------------------------------------------------------


def test_real_multi_band_deblender_conserves_flux_and_rebuilds(scene):
    images, variance, psfs, peaks = scene
    obs = cdeblend.Observation(images, variance, psfs, bands=BANDS)
    cat, md = deblend_catalog(obs, peaks=peaks, executor="threads", progress=False)
    par = cat[cat["is_parent"] & ~cat["skipped"]]
    assert not np.any(par["failed"]), list(par["error"])
    for prow in par:
        kids = cat[cat["parent_id"] == prow["id"]]
        assert len(kids) == prow["n_peaks"]
        # conserved children + unassigned flux = the footprint's flux (by construction of the
        # columns) and the unassigned part is small for these well-detected sources
        np.testing.assert_allclose(
            prow["flux_unassigned"], prow["flux_footprint"] - kids["flux_conserved"].sum(0)
        )
        conserved = md.conserved_images(obs, int(prow["id"]))
        np.testing.assert_allclose(
            conserved.sum(axis=(2, 3)), kids["flux_conserved"], rtol=1e-4, atol=1e-3
        )


def test_real_single_band_deblender_runs_on_the_catalog():
    images, variance, psfs, peaks = make_scene(nb=1)
    cat, _ = deblend_catalog(
        images[0],
        peaks=peaks,
        variance=variance[0],
        psf=psfs[0],
        executor="threads",
        progress=False,
    )
    par = cat[cat["is_parent"] & ~cat["skipped"]]
    assert not np.any(par["failed"]), list(par["error"])
    for prow in par:
        kids = cat[cat["parent_id"] == prow["id"]]
        np.testing.assert_allclose(
            kids["flux_conserved"].sum(0) + prow["flux_unassigned"],
            prow["flux_footprint"],
            rtol=1e-9,
        )


def real_rows(cat):
    """Parent id -> (children rows as tuples) for comparing whole catalogs."""
    out = {}
    for prow in cat[cat["is_parent"]]:
        kids = cat[cat["parent_id"] == prow["id"]]
        out[int(prow["id"])] = (
            np.asarray(kids["flux_conserved"]).tobytes(),
            np.asarray(kids["flux_model"]).tobytes(),
            np.asarray(kids["centroid_y"]).tobytes(),
            int(prow["iterations"]),
        )
    return out


def test_real_deblender_threads_equal_serial_and_a_failure_is_isolated(scene, caplog):
    """With the real multi-band deblender: the thread pool gives bit-identical rows, and a
    parent whose deblend raises is flagged while every other parent keeps its exact rows."""
    images, variance, psfs, peaks = scene
    obs = cdeblend.Observation(images, variance, psfs, bands=BANDS)
    cfg = CatalogConfig(skip_isolated=False)
    serial, _ = deblend_catalog(obs, peaks=peaks, config=cfg, executor="serial", progress=False)
    threads, _ = deblend_catalog(
        obs, peaks=peaks, config=cfg, executor="threads", progress=False, max_workers=2
    )
    assert real_rows(serial) == real_rows(threads)

    class Exploding:
        """The real deblender, except that its first call (one parent) raises."""

        calls = 0

        def __init__(self, config):
            self.inner = cdeblend.Deblender(config)

        def deblend(self, observation, peaks):
            Exploding.calls += 1
            if Exploding.calls == 1:
                raise np.linalg.LinAlgError("injected failure")
            return self.inner.deblend(observation, peaks)

    def factory_(kind, config):
        assert kind == "multi"
        return Exploding(config.multi_band or cdeblend.DeblendConfig())

    with caplog.at_level("WARNING", logger="cdeblend.catalog"):
        broken, _ = deblend_catalog(
            obs,
            peaks=peaks,
            config=cfg,
            executor="serial",
            progress=False,
            deblender_factory=factory_,
        )
    failed = broken[broken["is_parent"] & broken["failed"]]
    assert len(failed) == 1 and failed["error"][0] == "LinAlgError"
    assert "injected failure" in caplog.text
    good, bad = real_rows(serial), real_rows(broken)
    lost = int(failed["id"][0])
    for pid in good:
        if pid != lost:
            assert bad[pid] == good[pid]


def test_model_file_reproduces_the_catalog_fluxes_exactly(scene, tmp_path):
    """Fluxes re-apportioned from the saved model file equal the catalog's, bit for bit."""
    images, variance, psfs, peaks = scene
    obs = cdeblend.Observation(
        images.astype(np.float32), variance.astype(np.float32), psfs.astype(np.float32), bands=BANDS
    )
    cat, md = deblend_catalog(obs, peaks=peaks, executor="threads", progress=False)
    cdeblend.save_models(tmp_path / "m.fits", md)
    back = cdeblend.load_models(tmp_path / "m.fits")
    fitted = cat[cat["is_parent"] & ~cat["skipped"]]
    assert len(fitted) >= 1
    for prow in fitted:
        kids = cat[cat["parent_id"] == prow["id"]]
        rebuilt = back.rebuild(obs, int(prow["id"]))
        assert np.array_equal(rebuilt.conserved_fluxes, np.asarray(kids["flux_conserved"]))
        assert np.array_equal(rebuilt.fluxes, np.asarray(kids["flux_model"]))
