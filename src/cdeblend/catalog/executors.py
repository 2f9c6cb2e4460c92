"""Running the tasks: serially, on a thread pool, an Executor, dask or a distributed
client, largest parent first, with an optional progress bar."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .._threads import thread_limit
from .tasks import Outcome, Task

__all__ = ["check_executor", "run_tasks", "submit_or_run", "usable_cpus"]

#: One logger for the whole catalog driver (its name is documented: ``cdeblend.catalog``),
#: whichever of its modules logs.
logger = logging.getLogger("cdeblend.catalog")


def _progress_bar(total: int, enabled: bool) -> Any:
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, desc="deblend", unit="parent")
        except ImportError:
            logger.debug("tqdm is not installed (pip install cdeblend[progress]); no progress bar")

    class _NoBar:
        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    return _NoBar()


def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask where the OS reports one)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _is_client(executor: Any) -> bool:
    return (
        hasattr(executor, "submit")
        and hasattr(executor, "gather")
        and hasattr(executor, "scheduler_info")
    )


def _materialize(task: Task) -> Task:
    # send only the cut-out to a remote worker, not the whole image behind the views
    def cp(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.ascontiguousarray(a).copy()

    return Task(
        task.index,
        task.parent_id,
        task.kind,
        task.box,
        cp(task.footprint),
        cp(task.peaks),
        cp(task.images),
        cp(task.variance),
        cp(task.weights),
        cp(task.mask),
        task.psfs,
        task.bands,
        task.model_psf_sigma,
        task.noise_rms,
        task.template,
    )


def _largest_first(tasks: list[Task]) -> list[int]:
    """Task indices, most expensive first (box area x peaks; ties keep parent order).

    A pool finishes no earlier than its longest task: started last, one big parent would
    leave the other workers idle at the end (a field's largest parent is often a large
    share of the total), so the big ones are submitted first. Results are assembled by
    index, so the order does not change them.
    """
    cost = [-(t.box[2] * t.box[3]) * max(len(t.peaks), 1) for t in tasks]
    return sorted(range(len(tasks)), key=cost.__getitem__)


def _limited(fn: Callable[[Task], Outcome], threads: int, task: Task) -> Outcome:
    with thread_limit(threads):
        return fn(task)


def _per_worker(fn: Callable[[Task], Outcome], workers: int) -> Callable[[Task], Outcome]:
    """``fn`` with each fit limited to this machine's share of cores per worker: a pool that
    runs parents side by side already keeps the cores busy, and a fit's own threads on top
    would only compete with the other workers (a module-level partial: it pickles)."""
    return functools.partial(_limited, fn, max(usable_cpus() // max(workers, 1), 1))


def run_tasks(
    tasks: list[Task],
    fn: Callable[[Task], Outcome],
    executor: Any,
    max_workers: int | None,
    progress: bool,
) -> list[Outcome]:
    out: list[Outcome | None] = [None] * len(tasks)
    bar = _progress_bar(len(tasks), progress and len(tasks) > 0)
    try:
        if not tasks:
            return []
        if executor == "serial":
            for k, t in enumerate(tasks):
                out[k] = fn(t)
                bar.update(1)
        elif executor == "threads" or isinstance(executor, cf.Executor):
            own = executor == "threads"
            workers = (
                (max_workers or usable_cpus()) if own else getattr(executor, "_max_workers", 0)
            )
            # an unknown pool (no worker count) gets one thread per fit
            fn = _per_worker(fn, workers or usable_cpus())
            # one thread per usable core: more only queue up for the GIL between kernels
            pool = (
                cf.ThreadPoolExecutor(max_workers=max_workers or usable_cpus()) if own else executor
            )
            futs: dict[cf.Future, int] = {}
            try:
                for k in _largest_first(tasks):
                    futs[pool.submit(fn, tasks[k])] = k
                for f in cf.as_completed(futs):
                    out[futs[f]] = f.result()
                    bar.update(1)
            except BaseException:
                for f in futs:
                    f.cancel()
                raise
            finally:
                if own:
                    pool.shutdown(wait=True)
        elif executor == "dask" or _is_client(executor):
            client = executor if _is_client(executor) else _current_client()
            # the local scheduler runs max_workers (default: a core each) parents at once; a
            # cluster's workers get one thread per fit
            fn = _per_worker(
                fn, (max_workers or usable_cpus()) if client is None else usable_cpus()
            )
            if client is None:
                import dask
                from dask import delayed

                res = dask.compute(
                    *[delayed(fn, pure=False)(t) for t in tasks],
                    scheduler="threads",
                    num_workers=max_workers,
                )
                out = list(res)
                bar.update(len(tasks))
            else:
                from distributed import as_completed

                order = _largest_first(tasks)
                futs = [client.submit(fn, _materialize(tasks[k]), pure=False) for k in order]
                index = {f.key: k for k, f in zip(order, futs, strict=True)}
                for f in as_completed(futs):
                    out[index[f.key]] = f.result()
                    bar.update(1)
        else:  # pragma: no cover - rejected by check_executor
            raise ValueError(f"unknown executor {executor!r}")
    finally:
        bar.close()
    return out  # type: ignore[return-value]


def _current_client() -> Any:
    try:
        from distributed import get_client
    except ImportError:
        try:
            import dask  # noqa: F401
        except ImportError as exc:
            raise ImportError("executor='dask' needs dask: pip install cdeblend[dask]") from exc
        return None
    try:
        return get_client()
    except ValueError:  # no client running: the threaded dask scheduler
        return None


def check_executor(executor: Any, max_workers: int | None) -> None:
    if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
        raise ValueError(f"max_workers must be a positive integer or None, got {max_workers!r}")
    if isinstance(executor, str):
        if executor not in ("serial", "threads", "dask"):
            raise ValueError(
                f"executor must be 'serial', 'threads', 'dask', a concurrent.futures Executor "
                f"or a distributed.Client, got {executor!r}"
            )
        return
    if not (isinstance(executor, cf.Executor) or _is_client(executor)):
        raise TypeError(
            "executor must be 'serial', 'threads', 'dask', a concurrent.futures Executor or a "
            f"distributed.Client, got {type(executor).__name__}"
        )


def submit_or_run(pool: cf.Executor | None, fn: Callable[..., Any], *args: Any) -> cf.Future:
    """``fn(*args)`` submitted to ``pool``, or run now (a done future) without one."""
    if pool is not None:
        return pool.submit(fn, *args)
    fut: cf.Future = cf.Future()
    try:
        fut.set_result(fn(*args))
    except Exception as exc:
        fut.set_exception(exc)
    return fut
