"""Survey runs (``cdeblend.deblend_survey``): throughput, worker and driver memory, resuming.

Cuts N patches (128 x 128 or ``--patch`` pixels, corners on a 7 x 7 grid, so neighbours
overlap) out of the 512 x 512 LSST-like field ``../shared/data/field_lsst_512.npz`` (6 bands;
relative to the repository root, ``--data`` to change; see ``../shared/data/README.md``),
writes each as FITS files (image cube, variance cube, a shared PSF cube, the catalog's peaks
inside it as CSV) with a CSV manifest, then for N = 8, 16, 32:

- **one process**: the patches one after the other in a single process, each deblended the
  way ``cdeblend deblend`` does with a 2-thread pool inside (``survey.run_patch``);
- **survey**: ``deblend_survey`` on a 2-process ``LocalCluster`` (one patch at a time per
  worker, one deblending thread each).

Each run is its own subprocess, so every peak memory is that run's. The local cluster's
start-up (spawning the workers, importing cdeblend and astropy there) is timed apart from the
patches; the one-process run imports the same before its timing. Memory: the driver's peak
RSS and its peak traced Python memory (tracemalloc) while the survey runs, and each worker's
peak RSS (from the patches' summaries). The driver never holds an image or a model, so its
memory must not grow with N.

The smallest survey's catalogs are compared with those of the ``cdeblend deblend`` command
run on each patch. Finally a survey of ``--kill-n`` patches (the ``cdeblend survey``
command) is killed (SIGKILL to its process group) once half its patches are written, and
rerun: the rerun must deblend only the rest, and every catalog must equal an uninterrupted
run's.

    python bench/survey.py [--data DIR] [--sizes 8 16 32] [--patch 128] [--kill-n 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def write_patches(field: Path, folder: Path, n: int, size: int) -> list[str]:
    """Write ``n`` ``size`` x ``size`` cut-outs of the field (their corners on a 7 x 7 grid)
    as FITS + peak CSV; return their names."""
    from astropy.io import fits

    with np.load(field) as data:
        images, variance = data["images"], data["variance"]
        psfs, cat = data["psfs"], data["catalog"]
        bands = [str(b) for b in data["filters"]]
    fits.PrimaryHDU(psfs).writeto(folder / "psfs.fits")
    stride = max(1, (images.shape[1] - size) // 6)
    starts = range(0, images.shape[1] - size + 1, stride)
    corners = [(y0, x0) for y0 in starts for x0 in starts]
    if n > len(corners):
        raise SystemExit(f"at most {len(corners)} patches of {size} px fit in the field")
    names = []
    for k, (y0, x0) in enumerate(corners[:n]):
        name = f"patch{k:03d}"
        out = folder / name
        out.mkdir()
        cut = np.s_[:, y0 : y0 + size, x0 : x0 + size]
        fits.PrimaryHDU(np.ascontiguousarray(images[cut])).writeto(out / "images.fits")
        fits.PrimaryHDU(np.ascontiguousarray(variance[cut])).writeto(out / "variance.fits")
        inside = (
            (cat["y"] >= y0) & (cat["y"] < y0 + size) & (cat["x"] >= x0) & (cat["x"] < x0 + size)
        )
        rows = "".join(
            f"{x - x0},{y - y0}\n" for x, y in zip(cat["x"][inside], cat["y"][inside], strict=False)
        )
        (out / "peaks.csv").write_text("x,y\n" + rows)
        names.append(name)
    (folder / "bands.txt").write_text(" ".join(bands))
    return names


def write_manifest(folder: Path, names: list[str], path: Path) -> None:
    bands = (folder / "bands.txt").read_text()
    lines = ["name,images,variance,psfs,bands,peaks"]
    for name in names:
        p = folder / name
        lines.append(
            f"{name},{p / 'images.fits'},{p / 'variance.fits'},{folder / 'psfs.fits'},"
            f"{bands},{p / 'peaks.csv'}"
        )
    path.write_text("\n".join(lines) + "\n")


def warm_imports() -> None:
    """Import what a patch needs (cdeblend, astropy's FITS and tables) before the timing."""
    import astropy.io.fits  # noqa: F401
    import astropy.table  # noqa: F401

    import cdeblend.cli  # noqa: F401


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_one_process(manifest: str, out: str, threads: int) -> dict:
    """The baseline, in this process: every patch in turn, threads inside."""
    warm_imports()  # outside the timing, as for the workers
    from cdeblend.survey import read_manifest, run_patch

    start = time.perf_counter()
    rows = [run_patch(spec, out, threads) for spec in read_manifest(manifest)]
    return {
        "seconds": time.perf_counter() - start,
        "failed": sum(r["status"] != "done" for r in rows),
        "cpu": sum(float(r["cpu_seconds"]) for r in rows),
        "rss_mb": peak_rss_mb(),
    }


def child_survey(manifest: str, out: str, workers: int, threads: int) -> dict:
    """The survey from this process as its driver, on a LocalCluster started (and timed)
    first, so that the run's time is the patches' and not the cluster's start-up."""
    from distributed import Client, LocalCluster

    import cdeblend

    start = time.perf_counter()
    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(workers)
        client.run(warm_imports)  # the workers' imports, as for the one-process run
        startup = time.perf_counter() - start
        tracemalloc.start()
        start = time.perf_counter()
        rows = cdeblend.deblend_survey(
            manifest, out, client=client, threads=threads, progress=False
        )
        seconds = time.perf_counter() - start
        traced = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    per_worker: dict[str, float] = {}
    for r in rows:
        per_worker[r["worker"]] = max(per_worker.get(r["worker"], 0.0), float(r["peak_rss_mb"]))
    return {
        "startup": startup,
        "seconds": seconds,
        "failed": sum(r["status"] == "failed" for r in rows),
        "cpu": sum(float(r["cpu_seconds"]) for r in rows),
        "rss_mb": peak_rss_mb(),
        "traced_mb": traced,
        "worker_rss_mb": sorted(per_worker.values()),
    }


def run_child(*args: str) -> dict:
    """Run this script in child mode; its last stdout line is a JSON result."""
    res = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def same_catalogs(dir_a: Path, dir_b: Path, names: list[str]) -> bool:
    from cdeblend import read_catalog

    for name in names:
        a, b = (
            read_catalog(dir_a / name / "catalog.fits"),
            read_catalog(dir_b / name / "catalog.fits"),
        )
        if a.colnames != b.colnames or len(a) != len(b):
            return False
        for col in a.colnames:
            x, y = np.asarray(a[col]), np.asarray(b[col])
            eq = (
                np.array_equal(x, y, equal_nan=True)
                if x.dtype.kind == "f"
                else np.array_equal(x, y)
            )
            if not eq:
                return False
    return True


def same_as_deblend(folder: Path, names: list[str], survey_out: Path, out: Path) -> bool:
    """Run the `cdeblend deblend` command (its default thread pool) on each patch and compare
    its catalog with the survey's."""
    bands = (folder / "bands.txt").read_text().split()
    for name in names:
        p = folder / name
        cmd = [
            sys.executable,
            "-m",
            "cdeblend.cli",
            "deblend",
            "--images",
            str(p / "images.fits"),
            "--variance",
            str(p / "variance.fits"),
            "--psfs",
            str(folder / "psfs.fits"),
            "--bands",
            *bands,
            "--peaks",
            str(p / "peaks.csv"),
            "--out",
            str(out / name),
            "--no-plots",
            "--quiet",
        ]
        subprocess.run(cmd, check=True, capture_output=True)
    return same_catalogs(out, survey_out, names)


def kill_and_rerun(tmp: Path, manifest: Path, names: list[str], reference: Path) -> None:
    """Kill a `cdeblend survey` run halfway, rerun it, and check what the rerun did."""
    from cdeblend.survey import DONE_MARKER

    out = tmp / "killed"
    cmd = [
        sys.executable,
        "-m",
        "cdeblend.cli",
        "survey",
        str(manifest),
        "--out",
        str(out),
        "--workers",
        "2",
        "--threads",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    half = len(names) // 2
    while proc.poll() is None:
        if sum((out / n / DONE_MARKER).exists() for n in names) >= half:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver, its cluster and its workers
            break
        time.sleep(0.05)
    proc.wait()
    finished = sum((out / n / DONE_MARKER).exists() for n in names)
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    print(
        f"\nkill halfway: SIGKILL after {finished} of {len(names)} patches were written "
        f"({len(leftovers)} unfinished temporary folders left)"
    )
    start = time.perf_counter()
    rerun = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    import csv

    with open(out / "summary.csv", newline="") as f:
        status = [row["status"] for row in csv.DictReader(f)]
    left = [p.name for p in out.iterdir() if p.name.startswith(".")]
    print(
        f"rerun: exit {rerun.returncode} in {seconds:.1f} s: {status.count('reused')} reused, "
        f"{status.count('done')} deblended, {status.count('failed')} failed; temporary "
        f"folders left: {len(left)}"
    )
    print(f"every catalog equals the uninterrupted run's: {same_catalogs(out, reference, names)}")


def main() -> int:
    here = Path(__file__).resolve()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=here.parents[2] / "shared" / "data",
        help="folder with field_lsst_512.npz (default: ../shared/data)",
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patch", type=int, default=128, help="patch size in pixels")
    parser.add_argument("--kill-n", type=int, default=16, help="patches of the kill test (0: off)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the one-process runs")
    args = parser.parse_args()
    field = args.data / "field_lsst_512.npz"
    if not field.exists():
        print(f"no field at {field} (give --data)", file=sys.stderr)
        return 1
    print(
        f"data: {field}; {args.patch} x {args.patch} patches; {args.workers} workers; "
        f"{os.cpu_count()} cores (measured on a shared, loaded machine)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        patches = tmp / "patches"
        patches.mkdir()
        names = write_patches(field, patches, max(args.sizes + [args.kill_n]), args.patch)
        header = (
            "N",
            "run",
            "start-up s",
            "wall s",
            "patches/s",
            "CPU s",
            "driver RSS MB",
            "driver traced MB",
            "worker peak RSS MB",
            "failed",
        )
        table = []
        for n in args.sizes:
            manifest = tmp / f"manifest_{n}.csv"
            write_manifest(patches, names[:n], manifest)
            if not args.no_baseline:
                r = run_child(
                    "--one-process", str(manifest), str(tmp / f"one_{n}"), str(args.workers)
                )
                table.append(
                    (
                        n,
                        "one process, 2 threads",
                        "",
                        r["seconds"],
                        n / r["seconds"],
                        r["cpu"],
                        r["rss_mb"],
                        "",
                        "",
                        r["failed"],
                    )
                )
            r = run_child(
                "--survey", str(manifest), str(tmp / f"survey_{n}"), str(args.workers), "1"
            )
            workers = " ".join(f"{v:.0f}" for v in r["worker_rss_mb"])
            table.append(
                (
                    n,
                    f"survey, {args.workers} processes",
                    r["startup"],
                    r["seconds"],
                    n / r["seconds"],
                    r["cpu"],
                    r["rss_mb"],
                    r["traced_mb"],
                    workers,
                    r["failed"],
                )
            )
            print(f"  N={n} done", flush=True)
        print()
        print_table(header, table)
        print(
            "start-up: the LocalCluster's (worker processes spawned, cdeblend imported); "
            "wall: the patches' (start-up excluded);\nCPU: the patches' CPU seconds summed; "
            "driver RSS: the driver process's peak (Python, numpy, dask and astropy imported); "
            "traced: its peak Python allocations during the survey."
        )
        n = min(args.sizes)
        same = same_as_deblend(patches, names[:n], tmp / f"survey_{n}", tmp / "deblend")
        print(f"\nthe survey's {n} catalogs equal `cdeblend deblend` run on each patch: {same}")
        if args.kill_n:
            manifest = tmp / f"manifest_{args.kill_n}.csv"
            write_manifest(patches, names[: args.kill_n], manifest)
            reference = tmp / f"survey_{args.kill_n}"
            if not reference.exists():
                run_child("--survey", str(manifest), str(reference), str(args.workers), "1")
            kill_and_rerun(tmp, manifest, names[: args.kill_n], reference)
    return 0


def print_table(header, rows) -> None:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    cells = [list(header)] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for k, row in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=False)))
        if k == 0:
            print("  ".join("-" * w for w in widths))


if __name__ == "__main__":  # the guard matters: dask's worker processes are spawned
    if len(sys.argv) > 1 and sys.argv[1] == "--one-process":
        print(json.dumps(child_one_process(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    elif len(sys.argv) > 1 and sys.argv[1] == "--survey":
        print(
            json.dumps(child_survey(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
        )
    else:
        sys.exit(main())
