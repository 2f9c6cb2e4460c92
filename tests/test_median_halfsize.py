"""The single-band median filter's size follows the PSF: 3 x 3 below 3 pixels FWHM."""

import numpy as np
import pytest

from cdeblend import SingleBandConfig, SingleBandDeblender
from cdeblend.single_band.config import SMALL_PSF_FWHM


def test_halfsize_rule_by_hand():
    cfg = SingleBandConfig()
    assert cfg.median_halfsize(2.5) == 1
    assert cfg.median_halfsize(SMALL_PSF_FWHM) == 2
    assert cfg.median_halfsize(4.2) == 2
    assert SingleBandConfig(median_filter_halfsize=3).median_halfsize(2.0) == 3
    assert SingleBandConfig.lsst().median_halfsize(2.0) == 2


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_halfsize_is_named(bad):
    with pytest.raises(ValueError, match="median_filter_halfsize"):
        SingleBandConfig(median_filter_halfsize=bad)


def gaussian(shape, centres, sigma):
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    img = np.zeros(shape)
    for cy, cx in centres:
        img += 1e4 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
    return img


@pytest.mark.parametrize(("fwhm", "half"), [(2.0, 1), (4.0, 2)])
def test_sharp_star_core_is_the_median_of_its_box(fwhm, half):
    # Two noiseless stars centred on pixels, symmetric templates forced: the symmetric
    # template is the image, so the median stage's value at the peak is the plain median
    # of the (2h+1)^2 box of the image around it.
    sigma = fwhm / 2.3548
    image = gaussian((31, 51), [(15, 12), (15, 38)], sigma)
    psf = gaussian((15, 15), [(7, 7)], sigma)
    psf /= psf.sum()
    forced = {"psf_chisq1": 0.0, "psf_chisq2": 0.0, "psf_chisq2b": 0.0, "keep_stages": True}
    res = SingleBandDeblender(SingleBandConfig(**forced)).deblend(
        image,
        np.ones_like(image),
        psf,
        np.array([[15, 12], [15, 38]]),
        footprint=np.ones(image.shape, dtype=bool),
        psf_fwhm=fwhm,
    )
    box, vals, _ = res.children[0].stages["median"]
    expect = np.median(image[15 - half : 16 + half, 12 - half : 13 + half])
    assert vals[15 - box[0], 12 - box[1]] == pytest.approx(expect, rel=1e-12)
