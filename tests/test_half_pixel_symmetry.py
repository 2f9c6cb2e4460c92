"""Symmetric templates mirrored about the half-pixel point nearest a peak's centre."""

import numpy as np
import pytest

from cdeblend import SingleBandConfig, SingleBandDeblender
from cdeblend.single_band.templates import symmetry_shift


@pytest.mark.parametrize(
    ("offset", "half"),
    [
        ((0.1, -0.3), (0, -1)),
        ((0.26, 0.5), (1, 1)),
        ((-0.24, 0.0), (0, 0)),
        ((-0.49, 0.49), (-1, 1)),
    ],
)
def test_symmetry_shift_by_hand(offset, half):
    assert symmetry_shift(np.array(offset)) == half


def gaussian(shape, centres, sigma=1.0, flux=1e4):
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    img = np.zeros(shape)
    for cy, cx in centres:
        img += flux * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return img / (2 * np.pi * sigma**2)


def symmetric_stage(config, image, peaks):
    """(box, values, footprint) of the first child's symmetric template."""
    psf = gaussian((15, 15), [(7, 7)], flux=1.0)
    res = SingleBandDeblender(config).deblend(
        image, np.ones_like(image), psf, peaks, footprint=np.ones(image.shape, dtype=bool)
    )
    return res.children[0].stages["symmetric"]


def test_star_between_pixels_keeps_its_core():
    # A noiseless star centred half-way between rows 20 and 21 is symmetric about that
    # point: the template mirrored there is the image itself; mirrored about the peak pixel
    # (20, 15) it takes row 19's value at row 21, far below the image's.
    image = gaussian((41, 61), [(20.5, 15.0), (20.0, 45.0)])
    peaks = np.array([[20, 15], [20, 45]])
    forced = {"psf_chisq1": 0.0, "psf_chisq2": 0.0, "psf_chisq2b": 0.0, "keep_stages": True}
    box, vals, fp = symmetric_stage(SingleBandConfig(**forced), image, peaks)
    sub = image[box[0] : box[0] + box[2], box[1] : box[1] + box[3]]
    assert fp[21 - box[0], 15 - box[1]]
    # (the other star adds its far wing, below 1e-9 of the peak, asymmetrically)
    np.testing.assert_allclose(vals[fp], sub[fp], rtol=1e-9, atol=1e-9 * image.max())
    box0, vals0, fp0 = symmetric_stage(
        SingleBandConfig(half_pixel_symmetry=False, **forced), image, peaks
    )
    assert vals0[21 - box0[0], 15 - box0[1]] == pytest.approx(image[19, 15])
    assert vals0[21 - box0[0], 15 - box0[1]] < 0.4 * image[21, 15]
