"""``cdeblend survey`` / ``cdeblend.deblend_survey``: many patches on a Dask cluster.

Every patch's catalog must be the one ``cdeblend deblend`` writes for the same inputs; a
rerun deblends only the patches without a done marker; a broken patch is reported while the
others finish.
"""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

fits = pytest.importorskip("astropy.io.fits")
pytest.importorskip("distributed")

from cdeblend import deblend_survey, load_models, read_catalog  # noqa: E402
from cdeblend.cli import main  # noqa: E402
from cdeblend.observation import integrated_gaussian_psf  # noqa: E402
from cdeblend.survey import DONE_MARKER, read_manifest  # noqa: E402

SIGMAS = (1.6, 1.5, 1.4)


def write_patch(folder, seed):
    """A 3-band 40 x 48 patch (a close pair and a single source) as FITS files + peaks."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    H, W = 40, 48
    yy, xx = np.mgrid[:H, :W]
    y0, x0 = rng.uniform(10, 14), rng.uniform(10, 16)
    sources = [(y0, x0), (y0 + 4, x0 + 5), (rng.uniform(26, 31), rng.uniform(32, 38))]
    images = np.zeros((3, H, W))
    for y, x in sources:
        sed = rng.uniform(200, 700, 3)
        for b, s in enumerate(SIGMAS):
            prof = np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / s**2)
            images[b] += sed[b] * prof / prof.sum()
    variance = np.full((3, H, W), 0.5)
    images += rng.normal(size=images.shape) * np.sqrt(variance)
    fits.PrimaryHDU(images.astype(np.float32)).writeto(folder / "cube.fits")
    fits.PrimaryHDU((1 / variance).astype(np.float32)).writeto(folder / "invvar.fits")
    peaks = "".join(f"{round(x)},{round(y)}\n" for y, x in sources)
    (folder / "peaks.csv").write_text("x,y\n" + peaks)


@pytest.fixture(scope="module")
def survey_dir(tmp_path_factory):
    """Three patches, shared PSF files, and a CSV manifest with relative paths."""
    root = tmp_path_factory.mktemp("survey")
    for b, band in enumerate("gri"):
        fits.PrimaryHDU(integrated_gaussian_psf(SIGMAS[b], 15)).writeto(root / f"psf_{band}.fits")
    names = ["p0", "p1", "p2"]
    for k, name in enumerate(names):
        write_patch(root / "in" / name, seed=100 + k)
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "images", "invvar", "psfs", "bands", "peaks"])
        for name in names:
            writer.writerow(
                [
                    name,
                    f"in/{name}/cube.fits",
                    f"in/{name}/invvar.fits",
                    "psf_g.fits psf_r.fits psf_i.fits",
                    "g r i",
                    f"in/{name}/peaks.csv",
                ]
            )
    return root, names


def deblend_argv(root, name):
    """The `cdeblend deblend` options of one patch (as the manifest gives them)."""
    return [
        "--images",
        str(root / "in" / name / "cube.fits"),
        "--invvar",
        str(root / "in" / name / "invvar.fits"),
        "--psfs",
        *(str(root / f"psf_{b}.fits") for b in "gri"),
        "--bands",
        "g",
        "r",
        "i",
        "--peaks",
        str(root / "in" / name / "peaks.csv"),
    ]


@pytest.fixture(scope="module")
def reference(survey_dir):
    """Each patch deblended by `cdeblend deblend` (serial executor, no pictures)."""
    root, names = survey_dir
    for name in names:
        out = root / "reference" / name
        assert (
            main(
                [
                    "deblend",
                    *deblend_argv(root, name),
                    "--out",
                    str(out),
                    "--quiet",
                    "--no-plots",
                    "--executor",
                    "serial",
                ]
            )
            == 0
        )
    return root / "reference"


def assert_same_catalog(path_a, path_b):
    a, b = read_catalog(path_a), read_catalog(path_b)
    assert a.colnames == b.colnames and len(a) == len(b) > 0
    for col in a.colnames:
        if col == "deblend_runtime":  # a wall-clock time, never the same twice
            continue
        x, y = np.asarray(a[col]), np.asarray(b[col])
        same = np.array_equal(x, y, equal_nan=True) if x.dtype.kind == "f" else np.array_equal(x, y)
        assert same, f"column {col} differs"


def read_summary(path):
    with open(path, newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


def test_survey_catalogs_match_deblend_and_rerun_skips(survey_dir, reference, tmp_path):
    root, names = survey_dir
    out = tmp_path / "out"
    rows = deblend_survey(root / "manifest.csv", out, workers=2, processes=False, progress=False)
    assert [r["name"] for r in rows] == names
    assert all(r["status"] == "done" for r in rows), rows
    for name in names:
        assert (out / name / DONE_MARKER).is_file()
        assert_same_catalog(out / name / "catalog.fits", reference / name / "catalog.fits")
        ours, ref = (
            load_models(out / name / "models.fits"),
            load_models(reference / name / "models.fits"),
        )
        assert sorted(ours.blends) == sorted(ref.blends)
    cat = read_catalog(out / "p0" / "catalog.fits")
    is_parent = np.asarray(cat["is_parent"])
    summary = read_summary(out / "summary.csv")
    assert int(summary["p0"]["n_parents"]) == is_parent.sum() == 2
    assert int(summary["p0"]["n_children"]) == (~is_parent).sum() == 2

    # Rerun after losing one patch (as if the run had been killed before it finished):
    # only that patch is deblended again; the finished ones are not touched.
    stamps = {n: os.stat(out / n / "catalog.fits").st_mtime_ns for n in names}
    for path in (out / "p1").iterdir():
        path.unlink()
    (out / "p1").rmdir()
    (out / ".p2.partial-deadbeef").mkdir()  # a killed task's temporary folder
    again = deblend_survey(root / "manifest.csv", out, workers=2, processes=False, progress=False)
    status = {r["name"]: r["status"] for r in again}
    assert status == {"p0": "reused", "p1": "done", "p2": "reused"}
    for name in ("p0", "p2"):
        assert os.stat(out / name / "catalog.fits").st_mtime_ns == stamps[name]
    assert_same_catalog(out / "p1" / "catalog.fits", reference / "p1" / "catalog.fits")
    assert not list(out.glob(".*partial*"))
    assert {n: r["status"] for n, r in read_summary(out / "summary.csv").items()} == status


def test_unfinished_folder_is_redone(survey_dir, reference, tmp_path):
    """A patch folder without a done marker (outputs not completely written) runs again; the
    survey runs on a cluster given by its scheduler's address."""
    from distributed import LocalCluster

    root, names = survey_dir
    out = tmp_path / "out"
    (out / "p0").mkdir(parents=True)
    (out / "p0" / "catalog.fits").write_bytes(b"truncated")
    patches = [
        {
            "name": n,
            "images": str(root / "in" / n / "cube.fits"),
            "invvar": [str(root / "in" / n / "invvar.fits")],
            "psfs": [str(root / f"psf_{b}.fits") for b in "gri"],
            "bands": ["g", "r", "i"],
            "peaks": str(root / "in" / n / "peaks.csv"),
        }
        for n in names[:1]
    ]
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        rows = deblend_survey(patches, out, scheduler=cluster.scheduler_address, progress=False)
    assert rows[0]["status"] == "done"
    assert not (out / "p0" / "catalog.fits").read_bytes().startswith(b"truncated")
    assert_same_catalog(out / "p0" / "catalog.fits", reference / "p0" / "catalog.fits")


def test_cli_broken_patch_reported_others_finish(survey_dir, reference, tmp_path, capsys):
    """The real command (worker processes) with a JSON manifest and a patch whose image file
    is missing: the others are written, the error is in the summary, the exit status is 1."""
    root, names = survey_dir
    patches = [
        {
            "name": n,
            "images": f"in/{n}/cube.fits",
            "invvar": f"in/{n}/invvar.fits",
            "psfs": ["psf_g.fits", "psf_r.fits", "psf_i.fits"],
            "bands": ["g", "r", "i"],
            "peaks": f"in/{n}/peaks.csv",
        }
        for n in names
    ]
    patches.insert(1, dict(patches[0], name="broken", images="in/missing.fits"))
    manifest = root / "manifest_broken.json"
    manifest.write_text(json.dumps({"patches": patches}))
    out = tmp_path / "out"
    assert main(["survey", str(manifest), "--out", str(out), "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "1 patch(es) failed: broken" in err
    summary = read_summary(out / "summary.csv")
    assert list(summary) == ["p0", "broken", "p1", "p2"]
    assert summary["broken"]["status"] == "failed"
    assert "file not found" in summary["broken"]["error"]
    assert "missing.fits" in summary["broken"]["error"]
    assert not (out / "broken").exists()
    for name in names:
        assert summary[name]["status"] == "done" and summary[name]["error"] == ""
        assert float(summary[name]["peak_rss_mb"]) > 0
        assert_same_catalog(out / name / "catalog.fits", reference / name / "catalog.fits")
    # the broken patch is tried again on a rerun (threads: a second process cluster costs
    # seconds); the others are skipped
    rows = deblend_survey(manifest, out, workers=1, processes=False, progress=False)
    assert [r["status"] for r in rows] == ["reused", "failed", "reused", "reused"]
    summary = read_summary(out / "summary.csv")
    assert [r["status"] for r in summary.values()] == ["reused", "failed", "reused", "reused"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"images": "a.fits"}, "needs a 'name'"),
        ({"name": "../x", "images": "a.fits"}, "must not contain '/'"),
        ({"name": "a", "images": "a.fits", "out": "elsewhere"}, "'out' is set by the survey"),
        ({"name": "a", "images": "a.fits", "executor": "dask"}, "'executor' is set by"),
        (
            {
                "name": "a",
                "images": "a.fits",
                "invvar": "i.fits",
                "psfs": "p.fits",
                "bogus_option": "1",
            },
            "unrecognized arguments: --bogus-option",
        ),
        ({"name": "a", "invvar": "i.fits", "psfs": "p.fits"}, "--images"),
        (
            {
                "name": "a",
                "images": "a.fits",
                "invvar": "i.fits",
                "psfs": "p.fits",
                "deblender": "nonsense",
            },
            "invalid choice",
        ),
        ({"name": "a", "images": ["a.fits", 3.5, None]}, "'images' must be a string"),
    ],
)
def test_manifest_errors_name_the_problem(entry, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_manifest([entry])


def test_manifest_files(tmp_path):
    ok = {"name": "a", "images": "a.fits", "invvar": "i.fits", "psfs": "p.fits"}
    with pytest.raises(ValueError, match="appears twice"):
        read_manifest([ok, ok])
    with pytest.raises(ValueError, match="lists no patches"):
        read_manifest([])
    with pytest.raises(ValueError, match="file not found"):
        read_manifest(tmp_path / "nope.csv")
    (tmp_path / "m.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list of objects"):
        read_manifest(tmp_path / "m.json")
    (tmp_path / "m.yaml").write_text("")
    with pytest.raises(ValueError, match=r"\.csv or \.json"):
        read_manifest(tmp_path / "m.yaml")
    # CSV: relative paths against the manifest's folder, several values split on spaces
    # (shell quoting keeps a path with a space whole), flags from true/false
    (tmp_path / "m.csv").write_text(
        "name,images,invvar,psfs,fit_isolated,peaks\n"
        "a,'x y.fits' b.fits,/abs/i.fits,p.fits,true,\n"
        "b,c.fits,i.fits,p.fits,false,pk.csv\n"
    )
    a, b = read_manifest(tmp_path / "m.csv")
    assert a.argv == (
        "--images",
        str(tmp_path / "x y.fits"),
        str(tmp_path / "b.fits"),
        "--invvar",
        "/abs/i.fits",
        "--psfs",
        str(tmp_path / "p.fits"),
        "--fit-isolated",
    )
    assert "--fit-isolated" not in b.argv and b.argv[-2:] == ("--peaks", str(tmp_path / "pk.csv"))


@pytest.mark.parametrize(("option", "value"), [("workers", 0), ("threads", 0), ("threads", 1.5)])
def test_bad_worker_counts(survey_dir, tmp_path, option, value):
    root, _ = survey_dir
    with pytest.raises(ValueError, match=f"{option} must be a positive integer"):
        deblend_survey(root / "manifest.csv", tmp_path, progress=False, **{option: value})
    assert not (tmp_path / "summary.csv").exists()
