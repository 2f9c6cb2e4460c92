"""Fuzzing catalog-level deblending, the model data round trip and apportion_flux.

deblend_catalog gets small damaged fields (dtypes, layouts, NaN/inf, zero or negative
variance, degenerate PSFs, masks, peaks on edges and corners) with ``catch_failures=False``
so that a crash inside a parent is not hidden as a flag; it must give a clear
ValueError/TypeError or a catalog whose children share out each parent's footprint flux.
The model data it returns must survive save_models/load_models unchanged.
apportion_flux gets random templates (negative, zero, NaN-free), boxes partly outside the
image, masks and dtypes, and must conserve the image exactly where templates claim it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from fuzz_helpers import (
    FUZZ,
    LAYOUTS,
    assert_finite,
    damaged_scene,
    layout_for,
    outcome,
    psf_images,
    relayout,
)
from hypothesis import given
from hypothesis import strategies as st

from cdeblend import (
    CatalogConfig,
    DeblendConfig,
    FlatStack,
    apportion_flux,
    deblend_catalog,
    load_models,
    save_models,
)

pytest.importorskip("astropy")


@st.composite
def fields(draw):
    images, variance, peaks, kind = damaged_scene(draw, max_size=36, min_size=4)
    B = images.shape[0]
    layout = layout_for(draw, kind)
    psf = draw(psf_images())
    psfs = np.repeat(psf[None], B, axis=0)
    mask = None
    if draw(st.booleans()):
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        mask = (rng.random(images.shape[1:]) < 0.1).astype(np.int32)
    return relayout(images, layout), relayout(variance, layout), psfs, peaks, mask


def _check_catalog(cat, images) -> None:
    nb = np.shape(images)[0]
    par = cat[np.asarray(cat["is_parent"])]
    kids = cat[~np.asarray(cat["is_parent"])]
    assert np.all(np.asarray(par["failed"]) == 0)
    for row in kids:
        assert_finite("flux_conserved", row["flux_conserved"])
        assert_finite("flux_model", row["flux_model"])
    for row in par:
        if row["skipped"]:
            continue
        mine = kids[np.asarray(kids["parent_id"]) == row["id"]]
        assert len(mine) == row["n_children"]
        # the children and the unassigned flux share out the footprint's flux (a lone
        # source without a child row owns all of it in its own row)
        held = mine["flux_conserved"] if len(mine) else row["flux_conserved"]
        got = np.sum(np.asarray(held, dtype=np.float64).reshape(-1, nb), axis=0) + np.asarray(
            row["flux_unassigned"], dtype=np.float64
        )
        want = np.asarray(row["flux_footprint"], dtype=np.float64)
        img = np.asarray(images, dtype=np.float64)
        scale = np.abs(img[np.isfinite(img)]).sum() + 1e-300  # no-data pixels count 0
        assert np.all(np.abs(got - want) <= 1e-4 * scale)


def _same_models(a, b) -> None:
    assert a.bands == b.bands
    assert sorted(a.blends) == sorted(b.blends)
    for pid, blend in a.blends.items():
        other = b.blends[pid]
        assert tuple(blend.box) == tuple(other.box)
        assert len(blend.sources) == len(other.sources)
        for s, t in zip(blend.sources, other.sources, strict=True):
            assert s.id == t.id and s.peak_id == t.peak_id
            for c, d in zip(s.components, t.components, strict=True):
                assert tuple(c.box) == tuple(d.box)
                np.testing.assert_array_equal(c.sed, d.sed)
                np.testing.assert_array_equal(c.morphology, d.morphology)


@FUZZ
@given(fields(), st.sampled_from(["serial", "threads"]), st.booleans())
def test_fuzz_deblend_catalog_and_models(field, executor, skip_isolated):
    images, variance, psfs, peaks, mask = field
    cfg = CatalogConfig(
        catch_failures=False,
        skip_isolated=skip_isolated,
        multi_band=DeblendConfig(max_iter=10, min_iter=2),
        model_psf_sigma=0.5,
    )
    out, err = outcome(
        lambda: deblend_catalog(
            images,
            peaks=peaks,
            variance=variance,
            psf=psfs,
            mask=mask,
            config=cfg,
            executor=executor,
            progress=False,
            max_workers=2,
        )
    )
    if err is not None:
        return
    cat, md = out
    _check_catalog(cat, images)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "models.fits"
        save_models(path, md)
        back = load_models(path)
    _same_models(md, back)


@FUZZ
@given(st.data())
def test_fuzz_apportion_flux(data):
    B = data.draw(st.integers(1, 3))
    H, W = data.draw(st.integers(1, 12)), data.draw(st.integers(1, 12))
    n = data.draw(st.integers(0, 4))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    boxes, arrays = [], []
    for _ in range(n):
        h, w = data.draw(st.integers(0, 6)), data.draw(st.integers(0, 6))
        y0, x0 = data.draw(st.integers(-4, H + 2)), data.draw(st.integers(-4, W + 2))
        boxes.append((y0, x0, h, w))
        kind = data.draw(st.sampled_from(["random", "zeros", "negative"]))
        a = rng.normal(size=(B, h, w))
        if kind == "zeros":
            a[:] = 0
        elif kind == "negative":
            a = -np.abs(a)
        arrays.append(a)
    image = rng.normal(size=(B, H, W))
    nan_at = None
    if data.draw(st.booleans()):
        nan_at = (
            data.draw(st.integers(0, B - 1)),
            data.draw(st.integers(0, H - 1)),
            data.draw(st.integers(0, W - 1)),
        )
        image[nan_at] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    layout = data.draw(st.sampled_from(LAYOUTS))
    if nan_at is not None and layout in ("int32", "int64", "bool"):
        layout = "plain"
    image_in = relayout(image, layout)
    mask = None if data.draw(st.booleans()) else rng.random((H, W)) < 0.7
    stack = FlatStack.from_arrays(
        arrays, np.array(boxes, dtype=np.int64).reshape(-1, 4), dtype=dtype, bands=B
    )
    res, err = outcome(
        lambda: apportion_flux(image_in if B > 1 else relayout(image[0], layout), stack, mask)
    )
    if err is not None:
        assert layout == "bool", f"unexpected rejection: {err}"
        return
    assert layout != "bool"
    cons, tsum = res
    assert len(cons) == n
    assert_finite("conserved", cons.flat)
    # dense check against a plain numpy apportioning
    img = np.asarray(image_in, dtype=np.float64).reshape(B, H, W).astype(dtype)
    img[~np.isfinite(img)] = 0  # a pixel without data gives no flux
    inside = np.ones((H, W), bool) if mask is None else mask
    total = np.zeros((B, H, W))
    want_sum = np.zeros((B, H, W))
    for (y0, x0, h, w), a in zip(boxes, arrays, strict=True):
        ya, yb, xa, xb = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
        if yb > ya and xb > xa:
            want_sum[:, ya:yb, xa:xb] += np.maximum(a.astype(dtype), 0)[
                :, ya - y0 : yb - y0, xa - x0 : xb - x0
            ]
    want_sum *= inside
    np.testing.assert_allclose(tsum, want_sum, rtol=1e-6, atol=0)
    for i, (y0, x0, h, w) in enumerate(boxes):
        c = cons.get(i).astype(np.float64)
        assert c.shape == (B, h, w)
        ya, yb, xa, xb = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
        if yb > ya and xb > xa:
            total[:, ya:yb, xa:xb] += c[:, ya - y0 : yb - y0, xa - x0 : xb - x0]
    claimed = want_sum > 0
    img[~np.isfinite(img)] = 0  # outside the mask: never read
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.all(np.abs(total - img)[claimed] <= tol * (np.abs(img).max() + 1))
    assert np.all(total[~claimed] == 0)
