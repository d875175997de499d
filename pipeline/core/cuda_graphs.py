"""CUDA graphs recorded by hand, and the one thread of the process that records them.

A graph recorded with ``torch.cuda.CUDAGraph`` replays a whole GPU step (E5's forward
pass, the int8 scan's shortlist) as one launch: a replay is a copy into its static
inputs, the launch and a copy out, a handful of calls into torch where running the step
op by op makes dozens. Each call gives up the GIL and takes it back behind the burst's
other requests, and, with vLLM on the same card, each synchronisation waits for the card
to come back to this process.

Recording synchronises the device and must not meet another recording: on the H200 host
two encoders capturing at once on threads of their own failed (cuBLAS could not create
its handle mid-capture, and the thread stayed "recording" after). So every graph of the
process is recorded on :func:`graph_thread` (those recorded by hand at load time;
torch.compile's at a question length's first use), under :data:`CAPTURE_LOCK`, with
``capture_error_mode="thread_local"`` (the other threads may synchronise meanwhile, which
the default global mode forbids to every thread of the process). A graph recorded by hand
replays from any thread; its static buffers must see one replay at a time. A graph
replays on a stream of its own, and each replay ends with a blocking copy out on that
stream: only then may its buffers (made on the default stream) be written again or freed.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class OneThread:
    """Runs every call on one thread of its own, in order."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def submit(self, function: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        self._calls.put((function, args, future))
        return future

    def run(self, function: Callable[..., Any], *args: Any) -> Any:
        return self.submit(function, *args).result()

    def _serve(self) -> None:
        while True:
            self._call(*self._calls.get())

    @staticmethod
    def _call(function: Callable[..., Any], args: tuple, future: Future) -> None:
        """One call; in a function of its own so that nothing of it outlives it on the
        thread. A loop variable kept the last call's bound method, and with it the last
        compiled encoder (1.04 GiB on the H200) until the next call, which never comes
        after a switch to another encoder or a close."""
        try:
            future.set_result(function(*args))
        except BaseException as exc:  # the caller gets it
            future.set_exception(exc)


@functools.cache
def graph_thread() -> OneThread:
    """The process's one thread for CUDA-graph capture (and, for torch.compile's graphs,
    which belong to the thread that recorded them, replay)."""
    return OneThread("cuda-graphs")


def serve_waiting(
    waiting: queue.SimpleQueue, limit: int, size: Callable[[Any], int], serve: Callable[[list], list]
) -> None:
    """On the graph thread: every request waiting in ``waiting`` by now, as (what it asks,
    its future), up to ``limit`` (each counted by ``size``), answered by one call of
    ``serve`` (one result a request, in order), which is one replay's batch. A call that
    finds none (an earlier one took them) does nothing; an error goes to every caller."""
    taken: list[tuple[Any, Future]] = []
    count = 0
    while count < limit:
        try:
            asked, future = waiting.get_nowait()
        except queue.Empty:
            break
        taken.append((asked, future))
        count += size(asked)
    if not taken:
        return
    try:
        results = serve([asked for asked, _ in taken])
        if len(results) != len(taken):
            raise RuntimeError(f"{len(results)} results for {len(taken)} requests")
    except BaseException as exc:  # every waiting caller gets it
        for _, future in taken:
            future.set_exception(exc)
        return
    for (_, future), result in zip(taken, results, strict=True):
        future.set_result(result)


#: Held while a graph is recorded, and by :func:`~pipeline.core.gpu.release_gpu_memory`
#: around emptying PyTorch's cache, which fails an internal assertion of the caching
#: allocator while a capture is under way. Reentrant: a warm-up that records holds it too.
CAPTURE_LOCK = threading.RLock()


def warm_up(step: Callable[[], Any], stream) -> None:
    """Run ``step`` twice on ``stream``, as torch's documentation asks before a capture:
    cuBLAS and the kernels set up outside it. Its memory goes back to PyTorch's cache,
    for the next warm-up (the capture empties the cache first)."""
    import torch

    with torch.inference_mode():
        stream.wait_stream(torch.cuda.current_stream(stream.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                step()
        torch.cuda.current_stream(stream.device).wait_stream(stream)


def record_graph(step: Callable[[], Any], pool, stream) -> tuple[Any, Any]:
    """(the graph, its static output) of ``step``, a function of static buffers on the
    device, already warmed up (:func:`warm_up`), recorded into ``pool`` on ``stream``
    under inference mode: no autograd state is recorded into the graph or kept by it.
    Graphs of one pool must replay one at a time, each output copied before the next.

    cuBLAS keeps a workspace per handle and stream, allocated at first use: the warm-up's
    would be in PyTorch's general cache, where torch.compile's recordings free it
    (``query_encoder = compiled`` records at a length's first use) while this graph still
    writes into it. So, as torch.compile's cudagraph trees do, the workspaces are let go
    before the capture (the graph's own is then allocated in its pool, held as long as
    the graph) and after it (no later eager call uses the pool's)."""
    import torch

    with CAPTURE_LOCK, torch.inference_mode():
        graph = torch.cuda.CUDAGraph()
        torch._C._cuda_clearCublasWorkspaces()
        try:
            with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                output = step()
        finally:
            torch._C._cuda_clearCublasWorkspaces()
    return graph, output


def leave_failed_capture(device: str) -> None:
    """Put this thread back on the default stream: a capture that failed in
    ``capture_end`` leaves it on the capture stream (torch restores the stream after it)."""
    import torch

    torch.cuda.set_stream(torch.cuda.default_stream(device))
