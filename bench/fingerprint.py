"""Fingerprint of cdeblend's results, to prove that a refactoring changed no behaviour.

Runs the multi-band and single-band deblenders on the bundled HSC blend and on the first
``--n-sims`` blends of ``sim_lsst`` and ``sim_single``, and the catalog driver (serial
executor) on the 512 x 512 field, all from ``../shared/data`` (``--data DIR``), and saves
every loss history, model, conserved image and catalog column in one ``.npz``. With
``--compare OLD.npz`` it reports, array by array, whether the new results are bit-identical.

    python bench/fingerprint.py --out before.npz
    ... change the code ...
    python bench/fingerprint.py --out after.npz --compare before.npz
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

import cdeblend as cdb


def _multi(prefix: str, obs: cdb.Observation, peaks: np.ndarray, out: dict) -> None:
    res = cdb.Deblender(cdb.DeblendConfig()).deblend(obs, peaks)
    out[f"{prefix}/loss_history"] = np.asarray(res.loss_history)
    out[f"{prefix}/models"] = np.asarray(res.models())
    out[f"{prefix}/conserved"] = np.asarray(res.conserved_images())


def _single(prefix: str, image, variance, psf, peaks, out: dict) -> None:
    res = cdb.SingleBandDeblender(cdb.SingleBandConfig()).deblend(image, variance, psf, peaks)
    out[f"{prefix}/fluxes"] = np.array([c.flux for c in res.children], dtype=float)
    out[f"{prefix}/stray"] = np.array([res.stray_flux], dtype=float)


def _peaks(catalog) -> np.ndarray:
    return np.stack([catalog["y"], catalog["x"]], axis=1).astype(float)


def fingerprint(data: Path, n_sims: int) -> dict[str, np.ndarray]:
    """Every result array, keyed by what made it."""
    out: dict[str, np.ndarray] = {}
    blend = cdb.load_hsc_cosmos()
    obs = cdb.Observation(blend.images, blend.variance, blend.psfs, bands=blend.bands)
    _multi("hsc", obs, blend.peaks, out)
    r = blend.band_index("r")
    _single("hsc_r", blend.images[r], blend.variance[r], blend.psfs[r], blend.peaks, out)
    for path in sorted((data / "sim_lsst").glob("*.npz"))[:n_sims]:
        f = np.load(path)
        sim = cdb.Observation(f["images"], f["variance"], f["psfs"])
        _multi(f"sim_lsst/{path.stem}", sim, _peaks(f["catalog"]), out)
    for path in sorted((data / "sim_single").glob("*.npz"))[:n_sims]:
        f = np.load(path)
        try:
            _single(
                f"sim_single/{path.stem}",
                f["images"][0],
                f["variance"][0],
                f["psfs"][0],
                _peaks(f["catalog"]),
                out,
            )
        except ValueError as err:  # recorded: an error is behaviour too
            out[f"sim_single/{path.stem}/error"] = np.array([str(err)])
    f = np.load(data / "field_lsst_512.npz")
    field = cdb.Observation(f["images"], f["variance"], f["psfs"])
    catalog, model = cdb.deblend_catalog(
        field, peaks=_peaks(f["catalog"]), executor="serial", progress=False
    )
    for name in catalog.colnames:
        column = np.asarray(catalog[name])
        if name != "deblend_runtime":  # wall-clock time: differs from run to run
            out[f"field/{name}"] = column
    _files(catalog, model, out)
    return out


def without_checksums(path: Path) -> np.ndarray:
    """A FITS file's bytes, CHECKSUM and DATASUM cards blanked (their comments hold the time)."""
    cards = bytearray(path.read_bytes())
    for at in range(0, len(cards) - 79, 80):
        if cards[at : at + 8] in (b"CHECKSUM", b"DATASUM "):
            cards[at : at + 80] = b" " * 80
    return np.frombuffer(bytes(cards), np.uint8)


def _files(catalog, model, out: dict) -> None:
    """The bytes of the field's catalog and model files and the models read back."""
    catalog = catalog.copy()
    catalog.remove_column("deblend_runtime")
    with tempfile.TemporaryDirectory() as tmp:
        cdb.write_catalog(Path(tmp) / "cat.fits", catalog)
        cdb.save_models(Path(tmp) / "models.fits", model)
        out["files/catalog.fits"] = without_checksums(Path(tmp) / "cat.fits")
        out["files/models.fits"] = without_checksums(Path(tmp) / "models.fits")
        back = cdb.load_models(Path(tmp) / "models.fits")
    for pid in sorted(back.blends):
        out[f"files/models/{pid}"] = back.models(pid)


def compare(new: dict[str, np.ndarray], old_path: Path) -> int:
    """Print the arrays that differ; return how many."""
    old = np.load(old_path)
    names = sorted(set(new) | set(old.files))
    bad = 0
    for name in names:
        if name not in new or name not in old.files:
            print(f"only in {'old' if name in old.files else 'new'}: {name}")
            bad += 1
            continue
        a, b = new[name], old[name]
        same = (
            a.shape == b.shape
            and a.dtype == b.dtype
            and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
        )
        if not same:
            bad += 1
            print(f"differs: {name} {a.shape} {b.shape}")
    print(f"{len(names) - bad} of {len(names)} arrays bit-identical")
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--data", type=Path, default=root.parent / "shared" / "data")
    parser.add_argument("--n-sims", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path)
    args = parser.parse_args(argv)
    result = fingerprint(args.data, args.n_sims)
    np.savez_compressed(args.out, **result)
    print(f"{len(result)} arrays written to {args.out}")
    return 0 if args.compare is None else int(compare(result, args.compare) > 0)


if __name__ == "__main__":
    sys.exit(main())
