"""The preprocessing engine: map a function over tasks, on this machine or a Dask cluster.

The seam is small on purpose. `open_engine(section)` gives an `Engine` with two operations:

    with open_engine(cfg.engine) as engine:
        for index, result in engine.map(count_lines, [("a.txt",), ("b.txt",)]):
            ...                                   # results arrive as tasks finish
        with engine.semaphore("teacher", 8):      # a lease of a cluster-wide semaphore
            ...                                   # (`lease(name, n)` inside a task)

Tasks are tuples of small, picklable arguments that *name* their inputs (a file and a byte range,
a Parquet row group, a shard index); the function reads them itself, so no text travels from the
driver to the workers; what every task needs (a tokenizer) goes to each worker once
(`map(..., shared=(tok,))`). Determinism and resume come from the caller's plan (one output per
task, written atomically), never from the engine: any engine and any number of workers gives the
same outputs.

The `engine` config section:
  kind: local (default: a LocalCluster of worker processes on this machine, loopback only)
        | synchronous (in this process; tests and debugging) | dask (an existing scheduler).
  num_workers: local worker processes (0 = one per core).
  scheduler: kind=dask: the scheduler address (tcp://host:8786).
  scheduler_file: kind=dask: a scheduler file (`dask scheduler --scheduler-file F`), e.g. on a
    shared filesystem.
  retries: times a task is retried after it raised or its worker died.
  dashboard: the Dask dashboard address for kind=local (e.g. "127.0.0.1:8787"; needs bokeh);
    empty = off.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from lepjax.config import ConfigError

log = logging.getLogger("lepjax.engine")

KINDS = ("local", "synchronous", "dask")
CONNECT_TIMEOUT_S = 30


def engine_section():
    """The `engine` config section (see the module docstring for its keys)."""
    from ml_collections import ConfigDict

    return ConfigDict(dict(kind="local", num_workers=0, scheduler="", scheduler_file="",
                           retries=2, dashboard=""))


def validate(section: Any) -> None:
    """Check an `engine` section without starting anything; raises ConfigError naming the key."""
    if section.kind not in KINDS:
        raise ConfigError(f"engine.kind {section.kind!r}; expected one of {', '.join(KINDS)}")
    if section.num_workers < 0:
        raise ConfigError(f"engine.num_workers {section.num_workers} is negative")
    if section.retries < 0:
        raise ConfigError(f"engine.retries {section.retries} is negative")
    if section.kind == "dask":
        if bool(section.scheduler) == bool(section.scheduler_file):
            raise ConfigError("engine.kind=dask needs exactly one of engine.scheduler (an "
                              "address) or engine.scheduler_file")
        if section.scheduler_file and not os.path.isfile(section.scheduler_file):
            raise FileNotFoundError(f"engine.scheduler_file {section.scheduler_file} does not "
                                    "exist (start `dask scheduler --scheduler-file` first)")
    elif section.scheduler or section.scheduler_file:
        raise ConfigError(f"engine.scheduler / engine.scheduler_file need engine.kind=dask "
                          f"(kind is {section.kind!r})")
    if section.dashboard:
        if section.kind != "local":
            raise ConfigError("engine.dashboard applies to kind=local (a dask scheduler serves "
                              "its own dashboard)")
        try:
            import bokeh  # noqa: F401
        except ImportError:
            raise ConfigError("engine.dashboard needs bokeh: pip install bokeh") from None


class Engine:
    """Runs tasks in this process (`client=None`) or on a Dask cluster through `client`."""

    def __init__(self, client: Any = None, retries: int = 2):
        self.client = client
        self.retries = retries

    @property
    def num_workers(self) -> int:
        """Workers that run tasks (1 in process)."""
        if self.client is None:
            return 1
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def map(self, fn: Callable[..., Any], tasks: Sequence[tuple], *,
            retries: int | None = None, shared: Sequence[Any] = ()
            ) -> Iterator[tuple[int, Any]]:
        """`fn(*shared, *task)` for every task; yields `(task index, result)` as tasks finish.

        `shared`: objects every task takes (a tokenizer, a mask), sent to each worker once
        rather than with every task. A task that raises (or whose worker dies) is retried
        `retries` times (default: the engine's); then its error is raised here, and the tasks not
        yet started are cancelled.
        """
        retries = self.retries if retries is None else retries
        if self.client is None:
            for i, task in enumerate(tasks):
                for attempt in range(retries + 1):
                    try:
                        result = fn(*shared, *task)
                        break
                    except Exception as e:
                        if attempt == retries:
                            raise
                        log.warning("task %d of %s failed (%s); retrying", i, fn.__name__, e)
                yield i, result
            return
        from distributed import as_completed

        held = self.client.scatter(list(shared), broadcast=True, hash=False) if shared else []
        futures = [self.client.submit(fn, *held, *task, retries=retries, pure=False,
                                      key=f"{fn.__name__}-{i}-{os.urandom(4).hex()}")
                   for i, task in enumerate(tasks)]
        index = {f.key: i for i, f in enumerate(futures)}
        try:
            for future in as_completed(futures):
                yield index[future.key], future.result()
        finally:
            self.client.cancel(futures + held)

    def semaphore(self, name: str, max_leases: int):
        """A lease of the semaphore `name`: at most `max_leases` holders cluster-wide (`lease`)."""
        return lease(name, max_leases)

    def close(self) -> None:
        """Release the client (a local cluster stays up for this process's next engine)."""
        if self.client is not None and self.client not in _LOCAL.values():
            self.client.close()
        self.client = None

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_THREAD_SEMAPHORES: dict[str, threading.Semaphore] = {}


def _in_dask() -> bool:
    try:
        from distributed import default_client, get_worker
    except ImportError:
        return False
    try:
        get_worker()
        return True
    except ValueError:
        pass
    try:
        default_client()
        return True
    except ValueError:
        return False


@contextmanager
def lease(name: str, max_leases: int) -> Iterator[None]:
    """Hold one lease of the semaphore `name`, which has at most `max_leases` holders.

    Inside a Dask task (or a driver with a Dask client) it is a `distributed.Semaphore` shared
    by the whole cluster; in a process without Dask, a semaphore of this process.
    """
    if not _in_dask():
        sem = _THREAD_SEMAPHORES.setdefault(name, threading.Semaphore(max_leases))
        with sem:
            yield
        return
    with _dask_semaphore(name, max_leases):
        yield


# One distributed.Semaphore per (name, max_leases) and thread, reused for each of that thread's
# leases (one at a time, as the class expects): making one registers it with the scheduler and
# starts its lease-refresh callback, a scheduler round trip more than the acquire and release. One
# instance shared by the threads of a process instead stalled the cap's holders (seen with 512
# threads on 2 workers), so each thread keeps its own.
_DASK_SEMAPHORES = threading.local()


def _dask_semaphore(name: str, max_leases: int) -> Any:
    """This thread's `distributed.Semaphore` `name` on its worker (or client), made once."""
    from distributed import Semaphore, default_client, get_worker

    try:
        owner = get_worker()
    except ValueError:
        owner = default_client()
    cache = _DASK_SEMAPHORES.__dict__
    cached = cache.get((name, max_leases))
    if cached is None or cached[0] is not owner:
        sem = Semaphore(max_leases=max_leases, name=name)
        sem.register()
        cached = cache[(name, max_leases)] = (owner, sem)
    return cached[1]


# One LocalCluster per (workers, dashboard) for the life of the process: starting one costs
# seconds, and a process that prepares several datasets (a pipeline, a test module) reuses it.
_LOCAL: dict[tuple, Any] = {}
_LOCAL_CLUSTERS: list[Any] = []


def _quiet(level: int = logging.CRITICAL) -> None:
    """Raise the level of Dask's loggers (they log every worker and task at INFO)."""
    for name in ["distributed", *logging.root.manager.loggerDict]:
        if name.startswith("distributed"):
            logging.getLogger(name).setLevel(level)


def _quiet_unless_debugging() -> None:
    if not logging.getLogger("lepjax").isEnabledFor(logging.DEBUG):
        _quiet(logging.WARNING)


def _close_local_clusters() -> None:
    """Close this process's local clusters quietly (workers and scheduler log their shutdown)."""
    _quiet()
    for client in _LOCAL.values():
        try:
            client.run(_quiet)
        except Exception:  # a worker already gone: nothing to quieten
            pass
        client.close()
    for cluster in _LOCAL_CLUSTERS:
        cluster.close()
    _LOCAL.clear()
    _LOCAL_CLUSTERS.clear()


atexit.register(_close_local_clusters)


def start_local_cluster(num_workers: int, dashboard: str = "") -> Any:
    """A LocalCluster of `num_workers` single-threaded worker processes on the loopback
    interface; its dashboard at `dashboard` (an address), or off (its HTTP endpoints then take
    a free loopback port). The workers log nothing below CRITICAL unless lepjax logs at DEBUG: a
    task's error is raised again in the driver, which names the culprit in one line."""
    from distributed import LocalCluster

    http = None if dashboard else {"dashboard": False, "dashboard_address": "127.0.0.1:0"}
    _quiet_unless_debugging()
    debugging = logging.getLogger("lepjax").isEnabledFor(logging.DEBUG)
    return LocalCluster(n_workers=num_workers, threads_per_worker=1, processes=True,
                        host="127.0.0.1", dashboard_address=dashboard or None,
                        scheduler_kwargs=http,
                        silence_logs=logging.INFO if debugging else logging.CRITICAL)


def _local_client(num_workers: int, dashboard: str) -> Any:
    key = (num_workers, dashboard)
    client = _LOCAL.get(key)
    if client is not None and client.status == "running":
        return client
    from distributed import Client

    cluster = start_local_cluster(num_workers, dashboard)
    _LOCAL_CLUSTERS.append(cluster)
    client = _LOCAL[key] = Client(cluster)
    if dashboard:
        log.info("Dask dashboard at %s", client.dashboard_link)
    return client


def _check_versions(client: Any, where: str) -> None:
    try:
        client.get_versions(check=True, packages=["lepjax"])
    except ValueError as e:
        lines = " ".join(str(e).split())
        raise ConfigError(f"the workers of {where} run other package versions than this "
                          f"driver: {lines}") from None


def open_engine(section: Any) -> Engine:
    """The engine an `engine` config section describes (validated first)."""
    validate(section)
    if section.kind == "synchronous":
        return Engine(None, section.retries)
    if section.kind == "local":
        workers = section.num_workers or os.cpu_count() or 1
        return Engine(_local_client(workers, section.dashboard), section.retries)
    from distributed import Client

    _quiet_unless_debugging()
    where = section.scheduler or f"the scheduler file {section.scheduler_file}"
    try:
        if section.scheduler:
            client = Client(section.scheduler, timeout=CONNECT_TIMEOUT_S)
        else:
            client = Client(scheduler_file=section.scheduler_file, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as e:
        raise ConfigError(f"engine: cannot reach the Dask scheduler at {where}: {e}") from None
    try:
        _check_versions(client, where)
    except ConfigError:
        client.close()
        raise
    if not client.scheduler_info(n_workers=-1)["workers"]:
        log.warning("the Dask scheduler at %s has no workers yet; tasks wait for one", where)
    return Engine(client, section.retries)
