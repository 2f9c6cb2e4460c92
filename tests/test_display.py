"""Colour images and figures."""

import math

import numpy as np
import pytest

from cdeblend.display import lupton_rgb, rgb_bands


def test_rgb_bands_follow_gri():
    assert rgb_bands(5) == (2, 1, 0)  # grizy -> i, r, g
    assert rgb_bands(6) == (3, 2, 1)  # ugrizy -> i, r, g
    assert rgb_bands(1) == (0, 0, 0)
    with pytest.raises(ValueError, match="n_bands"):
        rgb_bands(0)


def test_lupton_grey_value_by_hand():
    # A grey pixel of intensity I maps to asinh(q I / stretch) / q of full scale.
    img = np.full((3, 2, 2), 1.0)
    rgb = lupton_rgb(img, stretch=1.0, q=8.0)
    expected = int(math.asinh(8.0) / 8.0 * 255 + 0.5)
    assert np.all(rgb == expected)


def test_lupton_keeps_colour_ratios():
    img = np.zeros((3, 1, 1))
    img[:, 0, 0] = [0.1, 0.2, 0.4]  # blue, green, red inputs (bands ordered blue to red)
    rgb = lupton_rgb(img, stretch=1.0, q=1.0).astype(float)[0, 0]
    # red channel comes from band 2, blue from band 0: ratio 4 survives the stretch.
    assert rgb[0] / rgb[2] == pytest.approx(4.0, rel=0.05)
    assert rgb[1] / rgb[2] == pytest.approx(2.0, rel=0.05)


def test_lupton_saturated_pixels_keep_hue():
    img = np.zeros((3, 1, 1))
    img[:, 0, 0] = [1e6, 2e6, 4e6]
    rgb = lupton_rgb(img, stretch=1e-3, q=1.0)[0, 0]
    assert rgb[0] == 255
    assert rgb[1] == pytest.approx(128, abs=1)


def test_lupton_bad_input():
    with pytest.raises(ValueError, match="images"):
        lupton_rgb(np.ones((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="channels"):
        lupton_rgb(np.ones((3, 2, 2)), channels=(0, 1))


def test_figures_are_png(tmp_path):
    pytest.importorskip("matplotlib")
    from cdeblend.display import plot_loss, plot_single_band_child, plot_source_panels

    rng = np.random.default_rng(0)
    img = rng.normal(size=(3, 20, 16))
    plot_source_panels(img, img * 0.5, img * 0.9, img * 0.5, path=tmp_path / "s.png", peak=(5, 6))
    plot_single_band_child(img[0], img[0] * 0.5, img[0] * 0.7, path=tmp_path / "c.png")
    plot_loss([10.0, 5.0, 4.0], path=tmp_path / "l.png")
    for name in ("s.png", "c.png", "l.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 1000
