"""The Ray backend of ``storecast train``: the same ``fit_chunk`` over chunks of stores, as Ray tasks.

The series go into Ray's object store once, before any task runs (one ``ray.put`` per chunk); each
task gets only the reference of its chunk (numpy arrays come out of the store without a copy, and a
task deserializes its own stores only), runs ``pipelines.training.fitting.fit_chunk`` on it and returns its
``StoreResult`` list; a retried task or one on another node reads the same object again.
The progress bar advances as tasks finish (``ray.wait``). Ray retries a task whose worker died
(``max_retries``); a chunk still lost after that is reported store by store, as a store that cannot
be fitted is, and the job goes on. An exception raised by ``fit_chunk`` itself fails the job, as it
does on the local backend. Everything is gathered on the driver, which alone registers the version.

Without an address a local Ray is started for the run (``num_cpus`` = workers, no dashboard, every
server on loopback) and stopped at the end. With one (``auto`` inside a Ray cluster or a RayJob,
``HOST:PORT`` of a head node, or ``ray://HOST:10001`` through Ray Client) the driver joins that
cluster, sizes the chunks for its CPUs, and leaves it running.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from pipelines.training.fitting import FitConfig, Series, StoreResult, fit_chunk, quiet

INSTALL_HINT = "the Ray backend needs Ray: pip install storecast[ray]"
MAX_RETRIES = 3  # Ray re-runs a task whose worker process or node died this many times
MOST_PER_CHUNK = 50  # as the local backend: seconds of fitting per task, far above Ray's ~ms per task
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray keeps a loopback node address (start_local)

log = logging.getLogger("storecast.ray")


def installed() -> bool:
    """Is Ray importable (without importing it)?"""
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["ray"] is None
        return False


def import_ray() -> Any:
    """Import Ray, or fail with one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(INSTALL_HINT) from None
    return ray


def start_local(ray: Any, num_cpus: int) -> None:
    """Start a new local Ray whose every server listens on 127.0.0.1 only.

    Ray on Linux replaces a loopback node address by the machine's own and binds its servers to
    every interface; as on macOS (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``) it keeps 127.0.0.1 and
    binds there. Ray reads that switch when it is imported: it is set for the processes Ray starts and
    flipped for the start in this process (Ray may have been imported before), then restored, so a
    later driver in this process can still join a real cluster.
    """
    from ray._private import ray_constants

    os.environ.setdefault(LOOPBACK_ENV, "0")
    was = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
                 logging_level=logging.WARNING)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = was


def resplit(series: list[Series], cpus: int, most: int = MOST_PER_CHUNK) -> list[list[Series]]:
    """Chunks for ``cpus`` CPUs, in the given order: several per CPU, at most ``most`` stores each."""
    size = max(1, min(most, -(-len(series) // max(1, cpus * 4))))
    return [series[i: i + size] for i in range(0, len(series), size)]


# ---- the task ---------------------------------------------------------------------------------
_quieted = False


def fit_task(chunk: list[Series], cfg: FitConfig,
             fit: Callable[[list[Series], FitConfig], list[StoreResult]]) -> list[StoreResult]:
    """What one Ray task runs: ``fit`` (``fit_chunk``) on its chunk, read from the object store."""
    global _quieted
    if not _quieted:  # once per worker process: one BLAS thread, quiet cmdstanpy / Prophet
        quiet(single_thread=True)
        _quieted = True
    return fit(chunk, cfg)


def lost(chunk: list[Series], exc: BaseException) -> list[StoreResult]:
    """The stores of a chunk Ray could not run even after its retries, reported like unfittable ones."""
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    reason = f"Ray task lost after {MAX_RETRIES} retries: {type(exc).__name__}: {first}".rstrip(": ")
    return [StoreResult(s[0], error=reason, metrics={"store_id": s[0], "open_days": len(s[1])}) for s in chunk]


@contextlib.contextmanager
def session(address: str | None, num_cpus: int) -> Iterator[Any]:
    """Ray for one run: join ``address``, or start a local Ray on loopback; left as it was found."""
    ray = import_ray()
    if ray.is_initialized():  # the caller runs Ray itself (a notebook, a test): use it, leave it
        yield ray
        return
    if address is None:
        start_local(ray, num_cpus)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()  # a local Ray stops with its driver; a cluster just loses this driver


def fit_on_ray(chunks: list[list[Series]], cfg: FitConfig, workers: int, *, address: str | None = None,
               progress: bool = True, while_fitting: Callable[[], None] | None = None,
               fit: Callable[[list[Series], FitConfig], list[StoreResult]] = fit_chunk) -> list[StoreResult]:
    """Fit ``chunks`` as Ray tasks with a progress bar on stderr; the results of every store.

    A local Ray gets ``workers`` CPUs and the chunks as given; on a cluster the chunks are cut again
    for its CPUs, in the same order (a store's fit does not depend on the stores it shares a chunk
    with: prophet-batch fits each series on its own).
    """
    from tqdm import tqdm

    series = [s for chunk in chunks for s in chunk]
    results: list[StoreResult] = []
    if not series:
        return results
    with session(address, workers) as ray:
        if address is not None:
            chunks = resplit(series, int(ray.cluster_resources().get("CPU", workers)))
        cfg_ref = ray.put(cfg)
        refs = [(ray.put(chunk), chunk) for chunk in chunks if chunk]  # every series put once
        task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(fit_task)
        pending = {task.remote(ref, cfg_ref, fit): chunk for ref, chunk in refs}
        if while_fitting is not None:
            threading.Thread(target=while_fitting, daemon=True).start()
        bar = tqdm(total=len(series), unit="store", desc="fit (ray)", disable=not progress, file=sys.stderr)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    chunk = pending.pop(ref)
                    try:
                        results += ray.get(ref)
                    except ray.exceptions.RayTaskError:
                        raise  # fit_chunk itself failed: fail the job, as the local backend does
                    except ray.exceptions.RayError as exc:  # the worker or node died MAX_RETRIES + 1 times
                        log.warning("%d stores lost (%s ...): %s", len(chunk), chunk[0][0], exc)
                        results += lost(chunk, exc)
                    bar.update(len(chunk))
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()
    return results
