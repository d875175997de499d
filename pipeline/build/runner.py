"""Where shard tasks run: worker processes on this host, or Ray Data on a cluster.

A stage is a function of one shard (a plain dict in, a dict of counts out) that reads its
input files and writes its output file itself, atomically. The runner only decides where
that happens:

- :class:`LocalRunner`: ``concurrent.futures`` process pools, one process per core for
  CPU tasks, one per GPU for the encoder (bound to its device when it starts);
- :class:`RayRunner`: the same functions as Ray Data ``map`` tasks (CPU) and
  ``map`` actors with ``num_gpus=1`` (the encoder), on a local Ray instance (``--ray``) or
  a cluster (``--ray-address``). Ray is imported only here, only then. On a cluster,
  ``--out`` must be on storage every node sees (NFS and the like), and every node needs
  this project's requirements; the ``pipeline`` package itself is shipped with the job.

Results come back as shards finish, in no particular order.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger("pipeline.build")

Task = Callable[[dict], dict]


class ShardActor(Protocol):
    """A stateful task (the encoder): built once per worker with ``device``, then called
    per shard."""

    def __init__(self, *, device: str | None = None, **options: Any) -> None: ...
    def __call__(self, item: dict) -> dict: ...


class Runner(Protocol):
    workers: int

    def map(self, task: Task, items: Iterable[dict]) -> Iterator[dict]: ...
    def map_actors(self, actor: type[ShardActor], options: dict, items: Iterable[dict]) -> Iterator[dict]: ...
    def describe(self) -> dict: ...
    def close(self) -> None: ...


def cuda_devices() -> list[str]:
    """The visible GPUs (none without torch or CUDA)."""
    try:
        import torch
    except ImportError:
        return []
    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _spawn() -> multiprocessing.context.SpawnContext:
    """Fresh interpreters: no copied locks or threads from the driver (torch, tqdm)."""
    return multiprocessing.get_context("spawn")


def _run_bounded(submit: Callable[[dict], Future], items: Iterable[dict], in_flight: int) -> Iterator[dict]:
    """Submit items lazily, at most ``in_flight`` at once (a dump's batches carry their
    bytes), and yield results as they finish."""
    pending: set[Future] = set()
    iterator = iter(items)
    while True:
        for item in islice(iterator, max(in_flight - len(pending), 0)):
            pending.add(submit(item))
        if not pending:
            return
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            yield future.result()


_actor: ShardActor | None = None


def _start_actor(actor: type[ShardActor], options: dict, devices: multiprocessing.Queue) -> None:
    global _actor
    _actor = actor(device=devices.get(), **options)


def _call_actor(item: dict) -> dict:
    assert _actor is not None
    return _actor(item)


class LocalRunner:
    """Process pools on this host: ``workers`` processes for CPU tasks, one per GPU for
    actors (on a host without a GPU, one actor in this process, using every core)."""

    def __init__(self, workers: int | None = None, gpus: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._gpus = gpus
        self._devices: list[str] | None = None
        self._pool: ProcessPoolExecutor | None = None

    def devices(self) -> list[str]:
        """The GPUs to use, looked up when an actor stage first runs (it imports torch)."""
        if self._devices is None:
            self._devices = cuda_devices()[: self._gpus] if self._gpus != 0 else []
        return self._devices

    def map(self, task: Task, items: Iterable[dict]) -> Iterator[dict]:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=_spawn())
        pool = self._pool
        yield from _run_bounded(lambda item: pool.submit(task, item), items, 2 * self.workers)

    def map_actors(self, actor: type[ShardActor], options: dict, items: Iterable[dict]) -> Iterator[dict]:
        devices = self.devices()
        if not devices:
            instance = actor(device="cpu", **options)
            yield from (instance(item) for item in items)
            return
        queue = _spawn().Queue()
        for device in devices:
            queue.put(device)
        with ProcessPoolExecutor(
            len(devices), mp_context=_spawn(), initializer=_start_actor, initargs=(actor, options, queue)
        ) as pool:
            yield from _run_bounded(lambda item: pool.submit(_call_actor, item), items, 2 * len(devices))

    def describe(self) -> dict:
        return {"runner": "local", "cpu_workers": self.workers, "gpus": self._devices or "none used"}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class RayRunner:
    """Ray Data on a local Ray instance (``address=None``: this host, ``workers`` CPUs) or
    on the cluster at ``address``."""

    def __init__(self, address: str | None, workers: int | None = None) -> None:
        import ray

        self._ray = ray
        package = str(Path(__file__).resolve().parents[1])
        ray.init(
            address=address,
            num_cpus=workers if address is None else None,
            include_dashboard=False,
            runtime_env={"py_modules": [package]},
            logging_level=logging.WARNING,
        )
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        resources = ray.cluster_resources()
        self.workers = int(resources.get("CPU", 1))
        self.gpus = int(resources.get("GPU", 0))
        self.address = address

    def map(self, task: Task, items: Iterable[dict]) -> Iterator[dict]:
        """Items go to Ray Data in windows of a few per CPU, so that lazily read inputs
        (a dump's batches) never sit in the object store all at once."""
        iterator = iter(items)
        while window := list(islice(iterator, 4 * self.workers)):
            dataset = self._ray.data.from_items(window, override_num_blocks=len(window))
            yield from (_plain(row) for row in dataset.map(task, num_cpus=1).iter_rows())

    def map_actors(self, actor: type[ShardActor], options: dict, items: Iterable[dict]) -> Iterator[dict]:
        """One actor per GPU of the cluster (one CPU actor without GPUs)."""
        window = list(items)
        if not window:
            return
        dataset = self._ray.data.from_items(window, override_num_blocks=len(window))
        mapped = dataset.map(
            actor,
            fn_constructor_kwargs=options,
            concurrency=max(self.gpus, 1),
            num_gpus=1 if self.gpus else 0,
            num_cpus=1,
        )
        yield from (_plain(row) for row in mapped.iter_rows())

    def describe(self) -> dict:
        return {
            "runner": "ray",
            "ray_address": self.address or "local",
            "cpus": self.workers,
            "gpus": self.gpus,
            "ray": self._ray.__version__,
        }

    def close(self) -> None:
        self._ray.shutdown()


def _plain(row: dict) -> dict:
    """Ray Data hands back numpy scalars; the build's records are plain Python."""
    return {key: value.item() if hasattr(value, "item") else value for key, value in row.items()}
