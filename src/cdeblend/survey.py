"""Survey-scale runs: many patch images deblended on a Dask cluster, one task per patch.

A *manifest* lists the patches. Each patch has a ``name`` and the inputs of
``cdeblend deblend`` (``images``, ``variance`` or ``invvar``, ``psfs``, and optionally
``bands``, ``peaks``, ``deblender``, ``fit_isolated`` or any other option of that command,
spelled with underscores). Each task runs on a worker: it reads its patch's files, deblends
every parent on a thread pool inside the worker and writes ``catalog.fits`` and
``models.fits`` into ``OUT/<name>/``; only a small summary (counts, times, the worker's peak
memory, the error if any) goes back to the driver, which writes one row per patch to
``OUT/summary.csv``. The driver never holds an image, a catalog or a model.

Resuming: a task writes into a hidden temporary folder, then a done marker
(``_done.json``, the patch's summary), then renames the folder to ``OUT/<name>`` in one
step. A patch counts as finished exactly when ``OUT/<name>/_done.json`` exists, so a run
that is killed halfway leaves no half-written patch behind, and the next run skips the
finished patches and deblends the rest. Two runs must not write into the same folder at once.

Manifest formats
----------------
CSV, one patch per row; a cell with several values (``images``, ``psfs``, ``bands``) holds
them separated by spaces (quote a path with spaces, as in a shell); ``true``/``false`` for
flags::

    name,images,invvar,psfs,bands,peaks
    p001,p001/cube.fits,p001/invvar.fits,psf_g.fits psf_r.fits psf_i.fits,g r i,p001/peaks.csv

JSON: a list of objects (or ``{"patches": [...]}``) whose values are strings, lists of
strings or booleans. Relative paths are relative to the manifest's folder.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import os
import shlex
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DONE_MARKER",
    "SUMMARY_COLUMNS",
    "PatchSpec",
    "deblend_survey",
    "read_manifest",
    "run_patch",
]

#: File whose presence marks a patch folder as completely written.
DONE_MARKER = "_done.json"

#: Columns of ``summary.csv``, in order. ``status`` is ``done`` (deblended by this run),
#: ``reused`` (finished by an earlier run, skipped) or ``failed`` (``error`` says why).
SUMMARY_COLUMNS = (
    "name",
    "status",
    "n_parents",
    "n_children",
    "n_skipped",
    "n_failed_parents",
    "seconds",
    "cpu_seconds",
    "peak_rss_mb",
    "worker",
    "error",
)

# Manifest keys that name input files (resolved against the manifest's folder).
_PATH_KEYS = frozenset({"images", "variance", "invvar", "psfs", "peaks"})
# Options of `cdeblend deblend` that the survey sets itself, per task.
_RESERVED_KEYS = frozenset({"out", "executor", "workers", "no_plots", "quiet", "max_plots"})
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0", ""})


@dataclass(frozen=True)
class PatchSpec:
    """One patch of a survey: its name and its ``cdeblend deblend`` arguments.

    Attributes
    ----------
    name : str
        The patch's output folder name (unique in the manifest).
    argv : tuple of str
        The ``cdeblend deblend`` options of the patch's inputs, paths made absolute.
    """

    name: str
    argv: tuple[str, ...]


# ---------------------------------------------------------------------------------------
# The manifest
# ---------------------------------------------------------------------------------------


def read_manifest(manifest: str | Path | Iterable[Mapping[str, Any]]) -> list[PatchSpec]:
    """Read and check a survey manifest.

    Parameters
    ----------
    manifest : path or iterable of mappings
        A CSV or JSON file (by suffix; see the module docstring), or the patches themselves
        as mappings (relative paths are then relative to the current folder).

    Returns
    -------
    list of PatchSpec
        In manifest order.

    Raises
    ------
    ValueError
        The manifest is empty, a patch has no or a duplicate or unusable name, uses an
        option the survey sets itself, or gives options ``cdeblend deblend`` rejects.
    """
    if isinstance(manifest, str | Path):
        path = Path(manifest)
        if not path.is_file():
            raise ValueError(f"manifest: file not found: {path}")
        entries = _load_manifest_file(path)
        base = path.resolve().parent
    else:
        entries = [dict(e) for e in manifest]
        base = Path.cwd()
    if not entries:
        raise ValueError("manifest: lists no patches")
    specs: list[PatchSpec] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        spec = _patch_spec(entry, i, base)
        if spec.name in seen:
            raise ValueError(f"manifest: patch name {spec.name!r} appears twice")
        seen.add(spec.name)
        specs.append(spec)
    return specs


def _load_manifest_file(path: Path) -> list[dict[str, Any]]:
    """The manifest's entries as dicts (CSV rows or JSON objects)."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"manifest: {path} is not valid JSON ({err})") from None
        if isinstance(data, dict):
            data = data.get("patches")
        if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
            raise ValueError(
                f"manifest: {path} must hold a list of objects or {{'patches': [...]}}"
            )
        return data
    if suffix in (".csv", ".txt"):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        for k, row in enumerate(rows):
            if None in row:
                raise ValueError(f"manifest: {path} row {k + 2} has more cells than columns")
        return [{key.strip(): _csv_value(val) for key, val in row.items()} for row in rows]
    raise ValueError(f"manifest: {path} must be a .csv or .json file")


def _csv_value(cell: str | None) -> Any:
    """A CSV cell as a bool (flags), a list of values (space-separated) or None (empty)."""
    text = (cell or "").strip()
    if text.lower() in _TRUE - {"1"}:
        return True
    if text.lower() in _FALSE - {"0"}:
        return False if text else None
    return shlex.split(text)


def _patch_spec(entry: Mapping[str, Any], index: int, base: Path) -> PatchSpec:
    """Check one manifest entry and turn it into ``cdeblend deblend`` options."""
    where = f"manifest: patch {index}"
    name = entry.get("name")
    if isinstance(name, list):
        name = " ".join(name)
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: needs a 'name'")
    name = name.strip()
    if "/" in name or os.sep in name or name.startswith(".") or name in (DONE_MARKER,):
        raise ValueError(f"{where}: name {name!r} must not contain '/' or start with '.'")
    argv: list[str] = []
    for key, value in entry.items():
        if key == "name" or value is None:
            continue
        if key in _RESERVED_KEYS:
            raise ValueError(f"{where} ({name}): {key!r} is set by the survey, not per patch")
        argv += _option(key, value, base, f"{where} ({name})")
    _check_with_deblend_parser(argv, f"{where} ({name})")
    return PatchSpec(name=name, argv=tuple(argv))


def _option(key: str, value: Any, base: Path, where: str) -> list[str]:
    """The command-line tokens of one manifest key."""
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return [flag] if value else []
    values = value if isinstance(value, list | tuple) else [value]
    if not values:
        return []
    if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{where}: {key!r} must be a string or a list of strings")
    tokens = [str(v) for v in values]
    if key in _PATH_KEYS:
        tokens = [str((base / t).resolve()) if not Path(t).is_absolute() else t for t in tokens]
    return [flag, *tokens]


def _deblend_namespace(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` with the parser of ``cdeblend deblend`` itself (so its defaults and any
    option it gains apply to survey patches too)."""
    from .cli import build_parser

    return build_parser().parse_args(["deblend", *argv])


def _check_with_deblend_parser(argv: Sequence[str], where: str) -> None:
    """Raise ValueError with argparse's message when ``cdeblend deblend`` rejects ``argv``."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            _deblend_namespace(argv)
    except SystemExit:
        lines = [ln for ln in err.getvalue().strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else "invalid options"
        raise ValueError(f"{where}: {reason}") from None


# ---------------------------------------------------------------------------------------
# One patch, on a worker
# ---------------------------------------------------------------------------------------


class _ThreadStdout(io.TextIOBase):
    """sys.stdout for a process whose threads may each capture their own output.

    ``cdeblend deblend`` reports on stdout; a task keeps that report (in its patch's
    ``log.txt``) instead of mixing it into the worker's terminal. Threads that capture
    nothing write through to the original stream, so other tasks in the same process
    (a threaded worker) are unaffected.
    """

    def __init__(self, original: Any) -> None:
        self.original = original
        self.local = threading.local()

    def write(self, text: str) -> int:
        buffer = getattr(self.local, "buffer", None)
        return (buffer if buffer is not None else self.original).write(text)

    def flush(self) -> None:
        buffer = getattr(self.local, "buffer", None)
        (buffer if buffer is not None else self.original).flush()


_STDOUT_LOCK = threading.Lock()


@contextlib.contextmanager
def _captured_stdout() -> Iterator[io.StringIO]:
    """Capture what this thread prints (other threads print as before)."""
    with _STDOUT_LOCK:
        if not isinstance(sys.stdout, _ThreadStdout):
            sys.stdout = _ThreadStdout(sys.stdout)
        proxy = sys.stdout
    buffer = io.StringIO()
    proxy.local.buffer = buffer
    try:
        yield buffer
    finally:
        proxy.local.buffer = None


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB)."""
    import resource  # Unix only

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024


def _fsync_tree(folder: Path) -> None:
    """Flush a folder's files and the folder itself to disk before it is renamed."""
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _catalog_counts(path: Path) -> dict[str, int]:
    """Parents, children, skipped and failed parents of a written catalog."""
    import numpy as np

    from .catalog import read_catalog

    cat = read_catalog(path)
    is_parent = np.asarray(cat["is_parent"], dtype=bool)
    return {
        "n_parents": int(is_parent.sum()),
        "n_children": int((~is_parent).sum()),
        "n_skipped": int(np.count_nonzero(np.asarray(cat["skipped"])[is_parent])),
        "n_failed_parents": int(np.count_nonzero(np.asarray(cat["failed"])[is_parent])),
    }


def run_patch(spec: PatchSpec, out: str, threads: int | None = None) -> dict[str, Any]:
    """Deblend one patch into ``out/<name>`` (the task a survey worker runs).

    The patch is deblended by ``cdeblend deblend``'s own code (its options parsed by that
    command's parser, plus ``--no-plots --quiet --executor threads``), so its catalog is the
    one that command writes. Nothing is raised: a failure is returned in the summary and
    leaves no output folder.

    Parameters
    ----------
    spec : PatchSpec
        The patch.
    out : str
        The survey's output folder.
    threads : int, optional
        Threads deblending the patch's parents (default: the cores this process may use).

    Returns
    -------
    dict
        The patch's summary row (keys :data:`SUMMARY_COLUMNS`).
    """
    from .cli import run_deblend

    start, cpu_start = time.perf_counter(), time.process_time()
    final = Path(out) / spec.name
    tmp = Path(out) / f".{spec.name}.partial-{uuid.uuid4().hex[:12]}"
    row: dict[str, Any] = {"name": spec.name, "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        args = _deblend_namespace(spec.argv)
        args.out, args.no_plots, args.quiet = str(tmp), True, True
        args.executor, args.workers = "threads", threads
        with _captured_stdout() as log:
            status = run_deblend(args)
        if status != 0:
            raise RuntimeError(f"cdeblend deblend returned {status}")
        (tmp / "log.txt").write_text(log.getvalue())
        row.update(_catalog_counts(tmp / "catalog.fits"))
        row.update(status="done", error="")
    except Exception as err:  # noqa: BLE001 - any failure is this patch's, reported
        row.update(status="failed", error=f"{type(err).__name__}: {err}")
    row["seconds"] = round(time.perf_counter() - start, 3)
    row["cpu_seconds"] = round(time.process_time() - cpu_start, 3)
    row["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    if row["status"] == "done":
        try:
            _publish(tmp, final, row)
        except Exception as err:  # noqa: BLE001
            row.update(status="failed", error=f"writing the outputs: {type(err).__name__}: {err}")
    shutil.rmtree(tmp, ignore_errors=True)
    return _complete_row(row)


def _publish(tmp: Path, final: Path, row: dict[str, Any]) -> None:
    """Write the done marker, then move the finished folder into place in one rename."""
    (tmp / DONE_MARKER).write_text(json.dumps(_complete_row(row), indent=1) + "\n")
    _fsync_tree(tmp)
    if final.exists():  # an unfinished folder (no marker) from elsewhere: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)


def _complete_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """``row`` with every summary column (missing counts as empty)."""
    return {key: row.get(key, "") for key in SUMMARY_COLUMNS}


# ---------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------


def finished_summary(folder: Path) -> dict[str, Any] | None:
    """The stored summary of a finished patch folder, or None if it is not finished."""
    marker = folder / DONE_MARKER
    if not marker.is_file():
        return None
    try:
        row = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return _complete_row(row) if isinstance(row, dict) else None


def _remove_stale_partials(out: Path, names: set[str]) -> None:
    """Temporary folders a killed run left behind (their patches run again)."""
    for path in out.glob(".*.partial-*"):
        if path.is_dir() and path.name[1:].rsplit(".partial-", 1)[0] in names:
            shutil.rmtree(path, ignore_errors=True)


def deblend_survey(
    manifest: str | Path | Iterable[Mapping[str, Any]],
    out: str | Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    client: Any = None,
    processes: bool = True,
    window: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Deblend every patch of a manifest on a Dask cluster; write ``OUT/summary.csv``.

    Parameters
    ----------
    manifest : path or iterable of mappings
        The patches (see :func:`read_manifest` and the module docstring).
    out : path
        Output folder: ``OUT/<name>/catalog.fits``, ``models.fits``, ``log.txt`` and the done
        marker per patch, and ``OUT/summary.csv``.
    scheduler : str, optional
        Address of a running ``dask.distributed`` scheduler. Without it (and without
        ``client``) a ``LocalCluster`` of ``workers`` worker processes starts (one task at a
        time each) and stops at the end.
    workers : int, optional
        Worker processes of the local cluster (default: the usable cores, at most one per
        patch to run).
    threads : int, optional
        Threads deblending each patch's parents inside a task (default: with a local
        cluster the usable cores shared out between the workers, else each worker's cores).
    client : distributed.Client, optional
        A client to use instead of ``scheduler``.
    processes : bool
        Local cluster only: worker processes (default) or threads of this process.
    window : int, optional
        Tasks in flight at once (default: 4 per worker); the rest are submitted as tasks
        finish, so the driver holds a bounded number of futures however long the survey.
    progress : bool
        Print a line per finished patch.

    Returns
    -------
    list of dict
        One summary row per patch in manifest order (keys :data:`SUMMARY_COLUMNS`); the
        same rows are written to ``OUT/summary.csv``.
    """
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    specs = read_manifest(manifest)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out, {s.name for s in specs})
    rows: dict[str, dict[str, Any]] = {}
    todo: list[PatchSpec] = []
    for spec in specs:
        previous = finished_summary(out / spec.name)
        if previous is not None:
            previous["status"] = "reused"
            rows[spec.name] = previous
        else:
            todo.append(spec)
    if progress and rows:
        print(f"{len(rows)} of {len(specs)} patches finished earlier: skipped")
    if todo:
        with _cluster_client(scheduler, client, workers, len(todo), processes) as (cl, n_workers):
            if threads is None and scheduler is None and client is None:
                threads = max(1, _usable_cpus() // n_workers)
            for row in _run_all(cl, todo, out, threads, window or 4 * n_workers):
                rows[row["name"]] = row
                if progress:
                    _report(row, len(rows), len(specs))
    ordered = [rows[s.name] for s in specs]
    write_summary(out / "summary.csv", ordered)
    return ordered


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _cluster_client(
    scheduler: str | None, client: Any, workers: int | None, n_tasks: int, processes: bool
) -> Iterator[tuple[Any, int]]:
    """A distributed client and its number of workers (a LocalCluster started if needed)."""
    if scheduler is not None and client is not None:
        raise ValueError("give either scheduler or client, not both")
    if workers is not None and (
        isinstance(workers, bool) or int(workers) != workers or workers < 1
    ):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise ImportError(
            "survey runs need dask.distributed: pip install 'cdeblend[dask]'"
        ) from err
    if client is not None:
        yield client, max(1, len(client.scheduler_info().get("workers", {})))
        return
    if scheduler is not None:
        with Client(scheduler) as cl:
            yield cl, max(1, len(cl.scheduler_info().get("workers", {})))
        return
    n = int(workers) if workers is not None else max(1, min(_usable_cpus(), n_tasks))
    # One task at a time per worker: the parallelism inside a patch is the deblend's threads.
    with (
        LocalCluster(
            n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=None
        ) as cluster,
        Client(cluster) as cl,
    ):
        yield cl, n


def _run_all(
    client: Any, specs: Sequence[PatchSpec], out: Path, threads: int | None, window: int
) -> Iterator[dict[str, Any]]:
    """Submit the patches (at most ``window`` in flight) and yield their summaries."""
    from distributed import as_completed

    pending = iter(specs)
    names: dict[str, str] = {}

    def submit(spec: PatchSpec) -> Any:
        key = f"cdeblend-survey-{spec.name}-{uuid.uuid4().hex[:8]}"
        names[key] = spec.name
        return client.submit(run_patch, spec, str(out), threads, key=key, pure=False)

    queue = as_completed([submit(s) for s in itertools.islice(pending, window)])
    for future in queue:
        try:
            row = future.result()
        except Exception as err:  # noqa: BLE001 - e.g. a worker died (KilledWorker)
            row = _complete_row(
                {
                    "name": names[future.key],
                    "status": "failed",
                    "error": f"{type(err).__name__}: {err}",
                }
            )
        del names[future.key]
        future.release()
        nxt = next(pending, None)
        if nxt is not None:
            queue.add(submit(nxt))
        yield row


def _report(row: Mapping[str, Any], done: int, total: int) -> None:
    if row["status"] == "failed":
        print(f"[{done}/{total}] {row['name']}: FAILED: {row['error']}", flush=True)
    else:
        print(
            f"[{done}/{total}] {row['name']}: {row['n_parents']} parents, "
            f"{row['n_children']} children in {row['seconds']} s",
            flush=True,
        )


def write_summary(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write the summary rows as CSV (to a temporary name, then renamed)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(SUMMARY_COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
