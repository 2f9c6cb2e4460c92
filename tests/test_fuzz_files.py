"""Fuzzing crafted model files and the geometries of the public model classes.

A model file may come from anywhere: :func:`load_models` must give either a ModelData whose
every blend can be rebuilt, re-apportioned and refitted, or a ValueError/TypeError naming
what is wrong, never a crash. Crafted files are a valid file with one to three fields
changed (a table value, a column's type, a header keyword, an image's values or dtype, raw
bytes, a cut). Likewise ``Component``/``Source``/``Blend`` and ``FlatStack`` with boxes and
peaks anywhere (outside the frame, negative or huge sizes, peaks outside their box): a
ValueError/TypeError, or a model equal to a dense numpy reference.

A crash must fail the test and nothing else, so the known crashers and a few hundred seeded
random files run in a **subprocess** (this file is also its script: ``python
test_fuzz_files.py CASES.json``), which reports every case's outcome; a signal there fails
the test with the case that was running. The hypothesis tests run in this process: under
``.ci/boundscheck.sh`` (kernels built with bounds checks) an out-of-bounds access there is an
IndexError, which fails the test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

try:  # the subprocess runs this file as a script, without pytest's helpers on the path
    from fuzz_helpers import FUZZ, outcome
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - script mode
    FUZZ = outcome = given = settings = st = None

from cdeblend import (
    Blend,
    BlendData,
    Component,
    ComponentData,
    DeblendConfig,
    FlatStack,
    ModelData,
    Observation,
    Source,
    SourceData,
    apportion_flux,
    load_models,
    save_models,
)
from cdeblend.observation import integrated_gaussian_psf

#: Every crafted image is this big; the base blends lie inside it.
IMAGE_SHAPE = (40, 48)

INT_VALUES = (-1, 0, 1, 3, 39, 2**31, 2**31 + 7, -(2**31) - 7, 2**40, 2**62, 2**63 - 1, -(2**63))
FLOAT_VALUES = (np.nan, np.inf, -np.inf, -1.0, 0.0, 1e300)
INT_COLUMNS = {
    "BLENDS": (
        "PARENT_ID",
        "Y0",
        "X0",
        "HEIGHT",
        "WIDTH",
        "SRC_START",
        "N_SOURCES",
        "FP_OFFSET",
        "ITERATIONS",
    ),
    "SOURCES": ("ID", "PEAK_ID", "COMP_START", "N_COMPS"),
    "COMPONENTS": ("Y0", "X0", "HEIGHT", "WIDTH", "PEAK_Y", "PEAK_X", "MORPH_OFFSET"),
}
KEYWORDS = {
    "NBANDS": (0, -1, 1, 3, 10**9, "two", 1.5, True),
    "SEDTYPE": ("float32", "float16", "int64", "complex128", "bogus", 3),
    "MORTYPE": ("float64", "float16", "uint8", "object", "<f8"),
    "NBLENDS": (-1, 0, 1, 3, 2**40),
    "NSOURCES": (-1, 0, 5, 2**40),
    "NCOMPS": (-1, 0, 5, 2**40),
    "MPSFSIG": (0.0, -1.0, "wide", 1e300),
    "SCHVER": (0, True, "1", 1.0),
    "BAND1": (3, ""),
}


# ------------------------------------------------------------------------------------------
# the base file and its damage
# ------------------------------------------------------------------------------------------


def base_model_data() -> ModelData:
    """Two fitted blends (one with a footprint, components of several sizes, a null
    source) and an isolated one, all inside :data:`IMAGE_SHAPE`."""
    rng = np.random.default_rng(5)
    bands = ("g", "r")

    def comp(y0, x0, h, w):
        morph = rng.random((h, w))
        return ComponentData(
            (y0, x0, h, w), (y0 + h // 2, x0 + w // 2), rng.uniform(5, 50, 2), morph
        )

    b1 = BlendData(
        3,
        (2, 3, 16, 18),
        bands,
        [
            SourceData(10, 0, [comp(4, 5, 7, 6), comp(5, 6, 4, 4)]),
            SourceData(11, 1, [comp(9, 12, 6, 7)]),
            SourceData(12, 2, []),
        ],
        footprint=rng.random((16, 18)) < 0.9,
        iterations=40,
        loss=12.5,
        converged=True,
    )
    b2 = BlendData(
        8,
        (20, 24, 14, 15),
        bands,
        [SourceData(20, 0, [comp(22, 26, 9, 9)]), SourceData(21, 1, [comp(27, 30, 5, 6)])],
    )
    iso = BlendData(
        9,
        (30, 2, 6, 5),
        bands,
        [SourceData(9, 0, [])],
        footprint=rng.random((6, 5)) < 0.7,
        isolated=True,
    )
    psfs = np.stack([integrated_gaussian_psf(s, 9) for s in (1.2, 1.5)])
    return ModelData(bands, integrated_gaussian_psf(0.8), psfs, {3: b1, 8: b2, 9: iso})


def _apply(hdul, m) -> None:
    """Apply one FITS-level mutation (see :func:`random_mutation`) to an open HDU list."""
    from astropy.io import fits

    kind = m[0]
    if kind == "cell":
        _, hdu, col, row, value = m
        data = hdul[hdu].data
        if data is not None and len(data):
            data[col][row % len(data)] = value
    elif kind == "sed":
        _, row, band, value = m
        data = hdul["COMPONENTS"].data
        sed = data["SED"].reshape(len(data), -1)
        sed[row % len(data), band % sed.shape[1]] = value
    elif kind == "coltype":  # the same values in another column format
        _, hdu, col, fmt = m
        old = hdul[hdu]
        cols = [
            fits.Column(
                name=c.name,
                format=fmt if c.name == col else c.format,
                array=np.asarray(old.data[c.name]).astype(
                    {"D": float, "E": np.float32, "J": np.int32, "K": np.int64, "L": bool}[fmt]
                    if c.name == col
                    else None
                ),
            )
            for c in old.columns
        ]
        hdul[hdu] = fits.BinTableHDU.from_columns(cols, name=hdu)
    elif kind == "key":
        hdul[0].header[m[1]] = m[2]
    elif kind == "delkey":
        del hdul[0].header[m[1]]
    elif kind == "image":  # one value of an image HDU
        _, hdu, index, value = m
        data = hdul[hdu].data
        if data is not None and data.size:
            flat = data.reshape(-1)
            flat[index % flat.size] = value
    elif kind == "imagetype":
        _, hdu, dtype = m
        data = hdul[hdu].data
        # a NaN or inf cast to an integer type gives garbage: on purpose, a hostile file
        with np.errstate(invalid="ignore"):
            cast = None if data is None else data.astype(dtype)
        hdul[hdu] = fits.ImageHDU(cast, name=hdu)
    elif kind == "reshape":  # an image of another shape
        _, hdu, shape = m
        hdul[hdu] = fits.ImageHDU(np.ones(shape), name=hdu)
    elif kind == "drop":
        del hdul[m[1]]
    else:
        raise AssertionError(m)


def craft(base: Path, out: Path, mutations: list) -> None:
    """Write ``base`` with ``mutations`` applied to ``out`` (with valid checksums, so that
    the reader has to find the damage itself); byte-level mutations come last."""
    from astropy.io import fits

    fits_level = [m for m in mutations if m[0] not in ("bytes", "cut")]
    with fits.open(base) as hdul:
        hdul.readall()
        for m in fits_level:
            _apply(hdul, m)
        hdul.writeto(out, overwrite=True, checksum=True, output_verify="silentfix")
    raw = bytearray(out.read_bytes())
    for m in mutations:
        if m[0] == "bytes":  # overwrite a few bytes anywhere (headers included)
            pos = m[1] % len(raw)
            raw[pos : pos + len(m[2])] = m[2]
        elif m[0] == "cut":
            raw = raw[: m[1] % (len(raw) + 1)]
    out.write_bytes(bytes(raw))


def random_mutation(rng: np.random.Generator) -> tuple:
    """One damage drawn at random (a plain tuple: it goes to the subprocess as JSON)."""
    kind = rng.choice(
        [
            "cell",
            "cell",
            "cell",
            "sed",
            "coltype",
            "key",
            "delkey",
            "image",
            "imagetype",
            "reshape",
            "drop",
            "bytes",
            "cut",
        ]
    )
    if kind == "cell":
        hdu = str(rng.choice(list(INT_COLUMNS)))
        col = str(rng.choice(INT_COLUMNS[hdu]))
        return ("cell", hdu, col, int(rng.integers(0, 6)), int(rng.choice(INT_VALUES)))
    if kind == "sed":
        return (
            "sed",
            int(rng.integers(0, 6)),
            int(rng.integers(0, 2)),
            float(rng.choice(FLOAT_VALUES)),
        )
    if kind == "coltype":
        hdu = str(rng.choice(list(INT_COLUMNS)))
        return ("coltype", hdu, str(rng.choice(INT_COLUMNS[hdu])), str(rng.choice(["D", "J"])))
    if kind in ("key", "delkey"):
        key = str(rng.choice(list(KEYWORDS)))
        if kind == "delkey":
            return ("delkey", key)
        vals = KEYWORDS[key]
        v = vals[int(rng.integers(0, len(vals)))]
        return ("key", key, v.item() if isinstance(v, np.generic) else v)
    if kind == "image":
        hdu = str(rng.choice(["MORPHS", "FOOTPRINTS", "MODEL_PSF", "PSFS"]))
        value = (
            float(rng.choice(FLOAT_VALUES)) if hdu != "FOOTPRINTS" else int(rng.choice([2, 255]))
        )
        return ("image", hdu, int(rng.integers(0, 1000)), value)
    if kind == "imagetype":
        return (
            "imagetype",
            str(rng.choice(["MORPHS", "FOOTPRINTS", "PSFS"])),
            str(rng.choice(["float32", "float64", "int16", "uint8"])),
        )
    if kind == "reshape":
        return (
            "reshape",
            str(rng.choice(["MORPHS", "FOOTPRINTS", "MODEL_PSF", "PSFS"])),
            [int(v) for v in rng.integers(1, 6, size=int(rng.integers(1, 4)))],
        )
    if kind == "drop":
        return ("drop", str(rng.choice(["BLENDS", "MORPHS", "PSFS"])))
    if kind == "bytes":
        return (
            "bytes",
            int(rng.integers(0, 40000)),
            list(rng.integers(0, 256, size=int(rng.integers(1, 9))).tolist()),
        )
    return ("cut", int(rng.integers(0, 40000)))


#: The reproductions of the reported crashes: each must now be a ValueError.
KNOWN_CRASHERS = {
    # component box outside its blend box (peak moved along): restart wrote past buffers
    "component box outside blend": [
        ("cell", "COMPONENTS", "Y0", 0, -36),
        ("cell", "COMPONENTS", "PEAK_Y", 0, -33),
    ],
    # peak outside its component box: "free(): invalid pointer" in restart
    "peak outside component box": [("cell", "COMPONENTS", "PEAK_Y", 0, 200)],
    "negative component size": [("cell", "COMPONENTS", "HEIGHT", 0, -7)],
    "huge component size": [
        ("cell", "COMPONENTS", "HEIGHT", 0, 2**32),
        ("cell", "COMPONENTS", "WIDTH", 0, 2**32),
    ],
    "NaN SED": [("sed", 0, 0, float("nan"))],
    "inf morphology": [("image", "MORPHS", 3, float("inf"))],
    "SEDTYPE cast": [("key", "SEDTYPE", "float32")],
    "MORTYPE cast": [("key", "MORTYPE", "float16")],
    "duplicated parent id": [("cell", "BLENDS", "PARENT_ID", 1, 3)],
    "float coordinates": [("coltype", "COMPONENTS", "X0", "D")],
    "huge band count": [("key", "NBANDS", 10**9)],
    "huge blend box": [("cell", "BLENDS", "HEIGHT", 1, 2**31)],
}


# ------------------------------------------------------------------------------------------
# what is done with a file that loads
# ------------------------------------------------------------------------------------------


def exercise(path: Path) -> ModelData:
    """Load ``path`` and use every blend as a user would: models, centroids, rebuild,
    re-apportion, continue the fit, save and reload. Returns the loaded ModelData."""
    md = load_models(path)
    rng = np.random.default_rng(0)
    images = rng.normal(3.0, 1.0, size=(len(md.bands), *IMAGE_SHAPE))
    obs = md.observation(images)
    for pid, bd in md.blends.items():
        models = md.models(pid)
        assert models.shape == (len(bd.sources), len(md.bands), *bd.shape)
        assert np.all(np.isfinite(models))
        bd.centroids()
        md.conserved_images(obs, pid)
        if bd.isolated:
            continue
        res = md.rebuild(obs, pid)
        cons = res.conserved_images()
        assert np.all(np.isfinite(cons))
        md.restart(obs, pid, DeblendConfig(max_iter=3, min_iter=1))
    with tempfile.TemporaryDirectory() as tmp:
        save_models(Path(tmp) / "again.fits", md)
        again = load_models(Path(tmp) / "again.fits")
    assert sorted(again.blends) == sorted(md.blends)
    return md


def run_cases(cases: dict[str, list], base: Path, workdir: Path) -> dict[str, str]:
    """Craft and exercise every case; ``{name: "ok" | "ValueError: ..." | "BUG ..."}``.

    Before each case its name goes to stdout, so that a crash shows which case it was."""
    results = {}
    for name, mutations in cases.items():
        print(f"CASE {name}", flush=True)
        path = workdir / "case.fits"
        mutations = [tuple(m) if m[0] != "bytes" else (m[0], m[1], bytes(m[2])) for m in mutations]
        try:
            craft(base, path, mutations)
        except Exception as exc:  # astropy refused to write the damage: nothing to read
            results[name] = f"uncraftable: {type(exc).__name__}"
            continue
        try:
            exercise(path)
            results[name] = "ok"
        except (ValueError, TypeError) as exc:
            results[name] = f"{type(exc).__name__}: {exc}" if str(exc) else "BUG empty message"
        except Exception as exc:
            results[name] = f"BUG {type(exc).__name__}: {exc}"
    return results


# ------------------------------------------------------------------------------------------
# tests
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_file(tmp_path_factory) -> Path:
    pytest.importorskip("astropy")
    path = tmp_path_factory.mktemp("base") / "base.fits"
    save_models(path, base_model_data())
    return path


def _in_subprocess(cases: dict[str, list], base: Path, tmp: Path) -> dict[str, str]:
    spec = tmp / "cases.json"
    spec.write_text(json.dumps({"base": str(base), "cases": cases}))
    env = dict(os.environ, PYTHONFAULTHANDLER="1")
    proc = subprocess.run(
        [sys.executable, __file__, str(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        cwd=tmp,
    )
    running = [ln[5:] for ln in proc.stdout.splitlines() if ln.startswith("CASE ")]
    assert proc.returncode == 0, (
        f"the subprocess died (return code {proc.returncode}) in case "
        f"{running[-1] if running else '?'}:\n{proc.stderr[-3000:]}"
    )
    return json.loads((tmp / "results.json").read_text())


def test_base_file_is_fully_usable(base_file):
    md = exercise(base_file)
    assert sorted(md.blends) == [3, 8, 9]


def test_known_crashers_are_value_errors(base_file, tmp_path):
    results = _in_subprocess(KNOWN_CRASHERS, base_file, tmp_path)
    want = {
        "component box outside blend": "lies outside the box of blend 3",
        "peak outside component box": "has its peak (200, 8) outside its box",
        "negative component size": "has the box",
        "huge component size": "sizes must be 1 to",
        "NaN SED": "NaN or infinite SED",
        "inf morphology": "NaN or infinite morphology",
        "SEDTYPE cast": "the header declares float32",
        "MORTYPE cast": "MORTYPE = 'float16'",
        "duplicated parent id": "parent id 3 appears 2 times",
        "float coordinates": "column X0 of COMPONENTS is float64",
        "huge band count": "NBANDS = 1000000000 is out of range",
        "huge blend box": "BLENDS row 1 has a box of 2147483648 x 15 pixels",
    }
    for name, msg in want.items():
        assert results[name].startswith("ValueError") and msg in results[name], (
            name,
            results[name],
        )


def test_random_crafted_files_never_crash(base_file, tmp_path):
    """Seeded random damage (1 to 3 fields per file), all in one subprocess."""
    n = int(os.environ.get("CDEBLEND_FUZZ_EXAMPLES", "0")) or 80
    rng = np.random.default_rng(20261206)
    cases = {
        f"random {i}": [random_mutation(rng) for _ in range(int(rng.integers(1, 4)))]
        for i in range(n)
    }
    results = _in_subprocess(cases, base_file, tmp_path)
    bugs = {k: (cases[k], v) for k, v in results.items() if v.startswith("BUG")}
    assert not bugs, bugs
    # the damage was found: most files are refused, and each refusal says why
    refused = [v for v in results.values() if v.startswith(("ValueError", "TypeError"))]
    assert len(refused) >= n // 2


def test_dev_zero_and_directories_are_refused(tmp_path):
    pytest.importorskip("astropy")
    for path in ("/dev/zero", tmp_path):
        if Path(path).exists():
            with pytest.raises(ValueError, match="not a regular file"):
                load_models(path)
    fifo = tmp_path / "fifo"
    if hasattr(os, "mkfifo"):
        os.mkfifo(fifo)  # opening it to read would block: it must not be opened
        with pytest.raises(ValueError, match="not a regular file"):
            load_models(fifo)


def test_zero_filled_and_endless_headers_are_refused(tmp_path):
    pytest.importorskip("astropy")
    zeros = tmp_path / "zeros.fits"
    zeros.write_bytes(bytes(2880 * 4))
    with pytest.raises(ValueError, match="not a readable FITS file"):
        load_models(zeros)
    # a primary header with no END card in 100 blocks of blank cards
    endless = tmp_path / "endless.fits"
    endless.write_bytes(b"SIMPLE  =                    T" + b" " * (2880 * 100 - 30))
    with pytest.raises(ValueError, match="no END card"):
        load_models(endless)
    # a header declaring far more data than the file holds
    huge = tmp_path / "huge.fits"
    cards = [
        b"SIMPLE  =                    T",
        b"BITPIX  =                  -64",
        b"NAXIS   =                    2",
        b"NAXIS1  =           1000000000",
        b"NAXIS2  =           1000000000",
        b"END",
    ]
    huge.write_bytes(b"".join(c.ljust(80) for c in cards).ljust(2880) + bytes(2880))
    with pytest.raises(ValueError, match="declares 8000000000000000000 bytes"):
        load_models(huge)


if FUZZ is not None:

    @st.composite
    def mutations(draw):
        seed = draw(st.integers(0, 2**32 - 1))
        rng = np.random.default_rng(seed)
        return [random_mutation(rng) for _ in range(draw(st.integers(1, 3)))]

    @settings(FUZZ, max_examples=FUZZ.max_examples // 2)  # each writes and fits a file
    @given(mutations())
    def test_fuzz_crafted_files(base_file, tmp_path_factory, muts):
        """In this process (bounds-checked kernels under .ci/boundscheck.sh)."""
        path = tmp_path_factory.mktemp("crafted") / "case.fits"
        try:
            craft(
                base_file, path, [m if m[0] != "bytes" else (m[0], m[1], bytes(m[2])) for m in muts]
            )
        except Exception:  # astropy would not write this damage
            return
        outcome(lambda: exercise(path))


# -- geometries of the public classes -----------------------------------------------------


def dense_render(sources, B: int, H: int, W: int) -> np.ndarray:
    """Slow reference of Blend.model(): every component pixel added one by one."""
    out = np.zeros((B, H, W))
    for s in sources:
        for c in s.components:
            y0, x0, h, w = c.box
            for y in range(h):
                for x in range(w):
                    out[:, y0 + y, x0 + x] += c.sed * c.morphology[y, x]
    return out


def _blend_case(draw_int, rng, H, W, B):
    """Random sources with boxes and peaks anywhere near (and far outside) the frame."""
    sources = []
    for _ in range(draw_int(1, 3)):
        comps = []
        for _ in range(draw_int(0, 2)):
            h = (
                rng.choice([draw_int(-2, 8), 2**31, 2**40])
                if draw_int(0, 9) == 0
                else draw_int(-1, 8)
            )
            w = draw_int(-1, 8)
            y0, x0 = draw_int(-6, H + 2), draw_int(-6, W + 2)
            py, px = y0 + draw_int(-2, 9), x0 + draw_int(-2, 9)
            shape = (max(int(h), 0) if h < 100 else 1, max(w, 0))
            comps.append(
                (
                    (y0, x0, int(h), w),
                    (py, px),
                    rng.uniform(0, 5, B + draw_int(0, 1) * (draw_int(0, 5) == 0)),
                    rng.random(shape),
                )
            )
        sources.append((comps, (draw_int(-2, H + 1), draw_int(-2, W + 1))))
    return sources


if FUZZ is not None:

    @FUZZ
    @given(st.data())
    def test_fuzz_blend_geometry(data):
        """Blend/Component/Source with random geometry: a clear refusal, or a model equal
        to the dense reference (and a conserved split adding up to the image)."""

        def draw_int(lo, hi):
            return data.draw(st.integers(lo, hi))

        B, H, W = draw_int(1, 3), draw_int(1, 12), draw_int(1, 12)
        rng = np.random.default_rng(draw_int(0, 2**16))
        psfs = np.stack([integrated_gaussian_psf(1.3, 7)] * B)
        images = rng.normal(5, 1, (B, H, W))
        obs = Observation(images, np.ones_like(images), psfs)
        spec = _blend_case(draw_int, rng, H, W, B)

        def build():
            return Blend(
                obs, [Source([Component(*c) for c in comps], peak) for comps, peak in spec]
            )

        blend, err = outcome(build)
        if err is not None:
            return
        model = blend.model()
        np.testing.assert_allclose(
            model, dense_render(blend.sources, B, H, W), rtol=1e-12, atol=1e-12
        )
        # moving a box out of the frame after construction is caught before any kernel
        comps = blend.components
        if comps:
            comps[0].box = (H, W, *comps[0].box[2:])
            with pytest.raises(ValueError, match="outside the blend's frame"):
                blend.pack()
            with pytest.raises(ValueError, match="outside the blend's frame"):
                blend.convolved_sources()

    @FUZZ
    @given(st.data())
    def test_fuzz_flat_stack_geometry(data):
        """FlatStack with any boxes: a clear refusal, or apportion_flux conserving the
        image where the templates claim it."""
        B = data.draw(st.integers(1, 2))
        H, W = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8))
        n = data.draw(st.integers(0, 3))
        side = st.one_of(st.integers(-3, 6), st.sampled_from([2**31, 2**32, 2**62, -(2**62)]))
        boxes = [
            (
                data.draw(st.integers(-5, 10)),
                data.draw(st.integers(-5, 10)),
                data.draw(side),
                data.draw(side),
            )
            for _ in range(n)
        ]
        extra = data.draw(st.sampled_from([0, 0, 0, 1, -1]))
        rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
        need = sum(
            B * max(h, 0) * max(w, 0) for _, _, h, w in boxes if 0 <= h < 100 and 0 <= w < 100
        )
        flat = rng.normal(size=max(need + extra, 0))
        stack, err = outcome(lambda: FlatStack(flat, np.array(boxes, dtype=np.int64), B))
        if err is not None:
            return
        assert all(0 <= h < 100 and 0 <= w < 100 for _, _, h, w in boxes) and flat.size == need
        image = rng.normal(size=(B, H, W))
        cons, tsum = apportion_flux(image, stack)
        total = np.zeros((B, H, W))
        for i, (y0, x0, h, w) in enumerate(boxes):
            c = cons.get(i)
            ya, yb, xa, xb = max(y0, 0), min(y0 + h, H), max(x0, 0), min(x0 + w, W)
            if yb > ya and xb > xa:
                total[:, ya:yb, xa:xb] += c[:, ya - y0 : yb - y0, xa - x0 : xb - x0]
        claimed = tsum > 0
        np.testing.assert_allclose(total[claimed], image[claimed], rtol=1e-12, atol=1e-12)
        assert np.all(total[~claimed] == 0)


GEOMETRY_CRASHERS = """
import numpy as np
from cdeblend import Blend, Component, FlatStack, Observation, Source, apportion_flux
from cdeblend.observation import integrated_gaussian_psf
psfs = np.stack([integrated_gaussian_psf(1.5, 9)] * 2)
obs = Observation(np.zeros((2, 10, 10)), np.ones((2, 10, 10)), psfs)
cases = {
    "box outside frame": lambda: Blend(obs, [Source([Component(
        np.ones(2), np.ones((50, 50)), (5, 5, 50, 50), (6, 6))], (6, 6))]).model(),
    "negative FlatStack height": lambda: apportion_flux(
        np.ones((10, 10)), FlatStack(np.ones(8), np.array([[0, 0, -3, 4], [0, 0, 5, 4]]), 1)),
    "wrapping FlatStack size": lambda: apportion_flux(
        np.ones((10, 10)), FlatStack(np.ones(0), np.array([[0, 0, 2**32, 2**32]]), 1)),
}
for name, fn in cases.items():
    try:
        fn()
        print(name, "=> accepted")
    except ValueError as exc:
        print(name, "=> ValueError:", exc)
"""


def test_known_geometry_crashers_are_value_errors():
    proc = subprocess.run(
        [sys.executable, "-c", GEOMETRY_CRASHERS], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(ln.split(" => ", 1) for ln in proc.stdout.splitlines())
    assert "outside the blend's frame" in lines["box outside frame"]
    assert "has a negative size" in lines["negative FlatStack height"]
    assert "out of range" in lines["wrapping FlatStack size"]


if __name__ == "__main__":  # the subprocess of the tests above
    spec_path = Path(sys.argv[1])
    spec = json.loads(spec_path.read_text())
    with tempfile.TemporaryDirectory() as work:
        out = run_cases(spec["cases"], Path(spec["base"]), Path(work))
    (spec_path.parent / "results.json").write_text(json.dumps(out))
