"""The GPU memory plan explained in Japanese for the settings page: the card, what the
query encoder and the vector search hold (measured once loaded), the engine's share, and
what the running engine reported of its weights and KV cache."""

from __future__ import annotations

from pipeline.generation.memory_plan import MemoryPlan

NO_GPU = "この環境には GPU がありません（vLLM は GPU ホストでのみ動きます）。"


def memory_summary(plan: MemoryPlan | None, engine_memory: dict[str, float] | None = None) -> str:
    """Markdown lines (hard breaks) describing the plan; the refusal when it cannot fit."""
    if plan is None:
        return NO_GPU
    card, product = plan.card, plan.product
    how = "測定値" if product.measured else "読み込み前の見込み"
    chosen = "auto で決めた値" if plan.requested is None else "設定値"
    pending = 0.0 if product.measured else product.total_gib
    lines = [
        f"{card.name}: 全体 {card.total_gib:.1f} GiB、vLLM を除いた空き {card.free_gib:.1f} GiB",
        f"質問の埋め込みモデル {product.encoder_gib:.1f} GiB ・ ベクトル検索 {product.search_gib:.1f} GiB（{how}）"
        f" ・ 作業用と余裕 {plan.reserve_gib - pending:.1f} GiB",
        f"vLLM: gpu_memory_utilization {plan.utilization:.2f}（{chosen}）= {plan.engine_gib:.1f} GiB"
        f"（この構成での上限は {max(plan.max_utilization, 0):.2f}）",
    ]
    if engine_memory:
        kv = engine_memory.get("kv_cache_gib", 0.0)
        tokens = int(engine_memory.get("kv_cache_tokens", 0))
        lines.append(
            f"起動中の vLLM（測定値）: 重み {engine_memory.get('weights_gib', 0.0):.1f} GiB ・ "
            f"KV キャッシュ {kv:.1f} GiB（{tokens:,} トークン）"
        )
    if not plan.fits:
        lines.append("⚠️ " + plan.refusal()[1])
    return "  \n".join(lines)
