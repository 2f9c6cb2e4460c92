"""Reading FITS inputs for the command line."""

import numpy as np
import pytest

fits = pytest.importorskip("astropy.io.fits")

from cdeblend.fits_io import read_image_stack, read_peaks, variance_from_inverse  # noqa: E402


@pytest.fixture
def cube():
    rng = np.random.default_rng(3)
    return rng.normal(size=(3, 9, 7)).astype(np.float32)


def test_cube_mef_and_files_agree(tmp_path, cube):
    fits.PrimaryHDU(cube).writeto(tmp_path / "cube.fits")
    hdus = [fits.PrimaryHDU()]
    for p, b in zip(cube, "gri", strict=True):
        hdus.append(fits.ImageHDU(p, header=fits.Header([("BAND", b)])))
    fits.HDUList(hdus).writeto(tmp_path / "mef.fits")
    paths = []
    for p, b in zip(cube, "gri", strict=True):
        path = tmp_path / f"{b}.fits"
        fits.PrimaryHDU(p.byteswap().view(p.dtype.newbyteorder())).writeto(path)
        paths.append(path)
    a, bands_a = read_image_stack([tmp_path / "cube.fits"])
    b, bands_b = read_image_stack([tmp_path / "mef.fits"])
    c, _ = read_image_stack(paths)
    for arr in (a, b, c):
        np.testing.assert_array_equal(arr, cube)
        assert arr.dtype == np.float32 and arr.dtype.isnative
    assert bands_a == [None, None, None]
    assert bands_b == ["g", "r", "i"]


def test_image_errors(tmp_path, cube):
    with pytest.raises(ValueError, match="not found"):
        read_image_stack([tmp_path / "missing.fits"])
    (tmp_path / "junk.fits").write_text("not a fits file")
    with pytest.raises(ValueError, match="junk.fits"):
        read_image_stack([tmp_path / "junk.fits"])
    fits.PrimaryHDU(cube[0]).writeto(tmp_path / "a.fits")
    fits.PrimaryHDU(cube[0, :5]).writeto(tmp_path / "b.fits")
    with pytest.raises(ValueError, match="different shapes"):
        read_image_stack([tmp_path / "a.fits", tmp_path / "b.fits"])


def test_inverse_variance():
    iv = np.array([[4.0, 0.0], [-1.0, np.inf]])
    var, mask = variance_from_inverse(iv)
    np.testing.assert_array_equal(var, [[0.25, 0], [0, 0]])
    np.testing.assert_array_equal(mask, [[False, True], [True, True]])


def test_peaks_csv_text_and_fits(tmp_path):
    (tmp_path / "p.csv").write_text("id,x,y\n0,3.0,5.0\n1,7,2\n")
    (tmp_path / "p.txt").write_text("3 5\n7 2\n")
    cols = [fits.Column("X", "D", array=[3.0, 7.0]), fits.Column("Y", "D", array=[5.0, 2.0])]
    fits.BinTableHDU.from_columns(cols).writeto(tmp_path / "p.fits")
    for name in ("p.csv", "p.txt", "p.fits"):
        np.testing.assert_array_equal(read_peaks(tmp_path / name), [[5.0, 3.0], [2.0, 7.0]])
    (tmp_path / "bad.csv").write_text("x,y\n1,a\n")
    with pytest.raises(ValueError, match="not two numbers"):
        read_peaks(tmp_path / "bad.csv")
