"""How much of the GPU the vLLM engine may take, beside what this process keeps there.

vLLM reserves ``gpu_memory_utilization`` × the whole card at start-up and refuses to
start when less than that is free (its check: ``Free memory on device … is less than
desired GPU memory utilization``). On the GPU host the query encoder (E5-large) and the
vector search (10.6 GiB of fp16 vectors for the exact backend at 5.5M passages) share
the card, so the engine must be sized from what is really free once they are loaded,
minus the working memory they still need (the exact scan's scores for a batch of
queries, the encoder's activations) and a margin.

``auto`` takes the largest value that fits (at most :data:`AUTO_CAP`); a value set by
hand is checked against the same bound and refused with a message that names the value
to use. With tensor parallelism every card the engine uses is checked, and each keeps
room for the engine's communication buffers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.core.gpu import GpuMemory, ProductGpuUse
from pipeline.retrieval.dense.footprint import planned_gpu_use, search_work_gib
from pipeline.settings.model import Settings

#: ``auto`` never takes more than this share of a card (vLLM's own default is 0.9).
AUTO_CAP = 0.90
#: Left free on every card for allocator fragmentation, CUDA contexts of helpers and what
#: vLLM takes beyond its share under load: on the H100 host, bf16 at 32 users, vLLM held
#: 65.7 GiB for a 64.1 GiB share beside the product's 13.1, and with 1.0 GiB left free the
#: engine died out of memory; with 3.0 (share 0.78) the same load ran through.
MARGIN_GIB = 3.0
#: The encoder's activations for a question (fp16, CUDA graphs), beyond its weights.
ENCODER_WORK_GIB = 0.3
#: What a tensor-parallel engine allocates on each card beyond its share, under load
#: (NCCL and all-reduce buffers): on the H200 host, 2.7 GiB over its share at 32 users
#: with TP 2 (1.6 GiB with TP 1, inside the margins), and the engine died out of memory.
TENSOR_PARALLEL_GIB = 1.5


def working_gib(product: ProductGpuUse, rows: int, backend: str) -> float:
    """Memory the loaded parts still allocate while answering: the encoder's activations
    and, for the exact backends, one batch of scores over every passage."""
    if product.encoder_gib == 0.0:
        return 0.0
    return ENCODER_WORK_GIB + search_work_gib(backend, rows)


@dataclass(frozen=True)
class MemoryPlan:
    card: GpuMemory
    product: ProductGpuUse
    #: Still to be allocated by this process: what is not loaded yet, and working memory.
    reserve_gib: float
    #: The most the engine may take of each card it uses, as a share of the first card.
    max_utilization: float
    #: What the engine gets: the setting, or the ``auto`` choice.
    utilization: float
    requested: float | None

    @property
    def fits(self) -> bool:
        return self.utilization <= self.max_utilization and self.utilization > 0

    @property
    def engine_gib(self) -> float:
        return self.utilization * self.card.total_gib

    def refusal(self) -> tuple[str, str]:
        """(English, Japanese) explanation of why the engine cannot start like this."""
        card, value = self.card, self.requested if self.requested is not None else self.utilization
        if self.max_utilization >= 0.01:
            best = f"{self.max_utilization:.2f}"
            advice = (
                f"set it to {best} or less, or use index.backend=faiss-cpu",
                f"gpu_memory_utilization を {best} 以下にするか、ベクトル検索の方式を faiss-cpu にしてください。",
            )
        else:  # other processes hold the card: no share of it would do
            held_here = self.product.total_gib if self.product.measured else 0.0
            in_use = card.total_gib - card.free_gib - held_here  # by other processes
            advice = (
                f"no share of this card leaves that room: stop the other processes that use the GPU "
                f"({in_use:.1f} GiB in use) or use index.backend=faiss-cpu",
                f"この GPU には vLLM を置く余地がありません（他のプロセスが {in_use:.1f} GiB 使用中）。"
                "GPU を使う他のプロセスを止めるか、ベクトル検索の方式を faiss-cpu にしてください。",
            )
        return (
            f"gpu_memory_utilization={value} asks for {value * card.total_gib:.1f} GiB of {card.name} "
            f"({card.free_gib:.1f} of {card.total_gib:.1f} GiB free), but the query encoder and the vector search "
            f"still need {self.reserve_gib:.1f} GiB: {advice[0]}",
            f"{card.name}（全体 {card.total_gib:.1f} GiB、空き {card.free_gib:.1f} GiB）に、"
            f"gpu_memory_utilization={value} の vLLM（{value * card.total_gib:.1f} GiB）と、"
            f"質問の埋め込みモデル・ベクトル検索（あと {self.reserve_gib:.1f} GiB）が同時には収まりません。{advice[1]}",
        )


def plan_memory(
    settings: Settings, cards: list[GpuMemory], product: ProductGpuUse, rows: int, running: float = 0.0
) -> MemoryPlan:
    """The engine's share of the card for these settings, from the cards' free memory now.
    ``product`` is what this process holds (measured) or will hold (planned); ``running``
    is the share a running engine holds, which a restart gives back first."""
    if running:
        cards = [GpuMemory(c.index, c.name, c.total_gib, c.free_gib + running * c.total_gib) for c in cards]
    first = cards[0]
    if not product.measured:  # still to load: plan what the settings ask for
        product = planned_gpu_use(settings.device, settings.index.backend, rows, settings.index.scan_graphs)
    pending = 0.0 if product.measured else product.total_gib
    parallel = TENSOR_PARALLEL_GIB if settings.llm.tensor_parallel_size > 1 else 0.0
    reserve = pending + working_gib(product, rows, settings.index.backend) + MARGIN_GIB + parallel
    limits = [(first.free_gib - reserve) / first.total_gib]
    limits += [
        (card.free_gib - MARGIN_GIB - parallel) / card.total_gib
        for card in cards[1 : settings.llm.tensor_parallel_size]
    ]
    max_utilization = math.floor(min(limits) * 100) / 100
    requested = settings.llm.gpu_memory_utilization
    if requested == "auto":
        return MemoryPlan(first, product, reserve, max_utilization, min(max_utilization, AUTO_CAP), None)
    return MemoryPlan(first, product, reserve, max_utilization, requested, requested)
