"""Geometry checks of the public model classes (what the kernels trust).

Each bad geometry must be refused with a ValueError/TypeError naming it, before a kernel
could write past a buffer; valid geometries behave as before (a dense reference here).
"""

from __future__ import annotations

import numpy as np
import pytest

from cdeblend import Blend, Component, Deblender, FlatStack, Observation, Source, apportion_flux
from cdeblend.box import MAX_COORD, as_box, as_point
from cdeblend.observation import integrated_gaussian_psf


@pytest.fixture
def obs():
    psfs = np.stack([integrated_gaussian_psf(1.4, 9)] * 2)
    rng = np.random.default_rng(0)
    images = rng.normal(3, 1, (2, 12, 14))
    return Observation(images, np.ones_like(images), psfs)


def comp(box, peak, sed=(1.0, 2.0)):
    return Component(np.array(sed), np.ones(tuple(box[2:])), box, peak)


def test_as_box_and_point():
    assert as_box(np.array([1, 2, 3, 4]), "b") == (1, 2, 3, 4)
    assert as_box((1.0, 2.0, 3.0, 4.0), "b") == (1, 2, 3, 4)
    assert as_box((0, 0, 0, 3), "b", allow_empty=True) == (0, 0, 0, 3)
    with pytest.raises(ValueError, match="b has an empty size"):
        as_box((0, 0, 0, 3), "b")
    with pytest.raises(ValueError, match="b has a negative size"):
        as_box((0, 0, -1, 3), "b", allow_empty=True)
    with pytest.raises(ValueError, match="out of range"):
        as_box((-MAX_COORD - 1, 0, 1, 1), "b")
    with pytest.raises(TypeError, match="b must be an integer"):
        as_box((0, 0.5, 1, 1), "b")
    with pytest.raises(ValueError, match=r"\(y0, x0, height, width\)"):
        as_box((0, 0, 1), "b")
    with pytest.raises(TypeError, match="must be a pair"):
        as_point(3, "p")
    assert as_point((np.int32(2), 5), "p") == (2, 5)


def test_component_refuses_bad_geometry_and_values():
    with pytest.raises(ValueError, match=r"peak \(5, 1\) lies outside the component's box"):
        comp((0, 0, 3, 3), (5, 1))
    with pytest.raises(ValueError, match="empty size"):
        Component(np.ones(2), np.ones((0, 3)), (0, 0, 0, 3), (0, 0))
    with pytest.raises(ValueError, match="sed has NaN"):
        comp((0, 0, 3, 3), (1, 1), sed=(1.0, np.nan))
    with pytest.raises(ValueError, match="morphology has NaN"):
        Component(np.ones(2), np.full((2, 2), np.inf), (0, 0, 2, 2), (0, 0))
    with pytest.raises(TypeError, match="sed must be a real numeric"):
        Component(np.ones(2, complex), np.ones((2, 2)), (0, 0, 2, 2), (0, 0))
    with pytest.raises(ValueError, match="sed must be 1-D and non-empty"):
        Component(np.ones(0), np.ones((2, 2)), (0, 0, 2, 2), (0, 0))


def test_blend_refuses_boxes_outside_its_frame(obs):
    with pytest.raises(ValueError, match=r"components\[0\].box \(5, 5, 50, 50\) lies outside"):
        Blend(obs, [Source([comp((5, 5, 50, 50), (6, 6))], (6, 6))])
    with pytest.raises(ValueError, match="lies outside the blend's frame"):
        Blend(obs, [Source([comp((-1, 0, 3, 3), (0, 0))], (0, 0))])
    with pytest.raises(ValueError, match=r"sources\[1\].peak \(12, 3\) lies outside"):
        Blend(obs, [Source([], (1, 1)), Source([], (12, 3))])
    with pytest.raises(ValueError, match="sed has shape"):
        Blend(obs, [Source([comp((0, 0, 3, 3), (1, 1), sed=(1.0, 2.0, 3.0))], (1, 1))])
    with pytest.raises(TypeError, match="must be a Source"):
        Blend(obs, ["not a source"])


def test_blend_model_matches_dense_reference_and_checks_edits(obs):
    rng = np.random.default_rng(1)
    comps = [
        Component(rng.random(2), rng.random((4, 5)), (0, 0, 4, 5), (1, 2)),
        Component(rng.random(2), rng.random((12, 3)), (0, 11, 12, 3), (6, 13)),
        Component(rng.random(2), rng.random((3, 3)), (2, 3, 3, 3), (3, 4)),
    ]
    blend = Blend(obs, [Source(comps[:2], (1, 2)), Source(comps[2:], (3, 4), index=1)])
    want = np.zeros((2, 12, 14))
    for c in comps:
        y0, x0, h, w = c.box
        want[:, y0 : y0 + h, x0 : x0 + w] += c.sed[:, None, None] * c.morphology[None]
    np.testing.assert_allclose(blend.model(), want, rtol=1e-15)
    # a box moved out of the frame after packing is caught before the next kernel call
    comps[1].box = (0, 12, 12, 3)
    with pytest.raises(ValueError, match="lies outside the blend's frame"):
        blend.pack()
    with pytest.raises(ValueError, match="lies outside the blend's frame"):
        blend.convolved_sources()


def test_deblend_result_products_check_edited_boxes(obs):
    res = Deblender().deblend(obs, [(6, 7)])
    res.blend.components[0].box = (100, 100, *res.blend.components[0].box[2:])
    with pytest.raises(ValueError, match="lies outside the blend's frame"):
        res.models()


def test_flat_stack_refuses_bad_layouts():
    with pytest.raises(ValueError, match=r"boxes\[0\] = \(0, 0, -3, 4\) has a negative size"):
        FlatStack(np.ones(8), np.array([[0, 0, -3, 4], [0, 0, 5, 4]]), 1)
    with pytest.raises(ValueError, match="out of range"):
        FlatStack(np.ones(0), np.array([[0, 0, 2**32, 2**32]]), 1)
    with pytest.raises(ValueError, match="more values than any buffer"):
        FlatStack(np.ones(0), np.array([[0, 0, 2**31, 2**31]]), 3)
    with pytest.raises(ValueError, match="must hold integers"):
        FlatStack(np.ones(4), np.array([[0, 0, 2.5, 2]]), 1)
    with pytest.raises(TypeError, match="integer"):
        FlatStack(np.ones(4), np.array([["a", "b", "c", "d"]]), 1)
    with pytest.raises(TypeError, match="1-D numpy array"):
        FlatStack(np.ones((2, 2)), np.array([[0, 0, 2, 2]]), 1)
    with pytest.raises(ValueError, match="bands must be >= 1"):
        FlatStack(np.ones(0), np.array([[0, 0, 2, 2]]), 0)
    with pytest.raises(ValueError, match="flat buffer has 5 values, boxes need 4"):
        FlatStack(np.ones(5), np.array([[0, 0, 2, 2]]), 1)


def test_apportion_flux_checks_a_stack_edited_after_construction():
    stack = FlatStack(np.ones(4), np.array([[0, 0, 2, 2]]), 1)
    stack.boxes[0, 2] = 50  # now claims 100 values of a 4-value buffer
    with pytest.raises(ValueError, match="flat buffer has 4 values, boxes need 100"):
        apportion_flux(np.ones((5, 5)), stack)
    ok = FlatStack(np.ones(4), np.array([[3, 3, 2, 2]]), 1)  # partly outside: clipped
    cons, tsum = apportion_flux(np.full((4, 4), 2.0), ok)
    assert cons.get(0)[0, 0, 0] == 2.0 and cons.get(0)[0, 1, 1] == 0.0 and tsum.sum() == 1.0
