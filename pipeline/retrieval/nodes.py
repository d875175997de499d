"""Passages as LlamaIndex nodes and back: the node id is the corpus row, and the
passage's fields travel as metadata, of which only title and section reach the LLM."""

from __future__ import annotations

from llama_index.core.schema import NodeWithScore, TextNode

from pipeline.core.schema import Passage, Source

#: The metadata the LLM sees (the rest is for the UI and the API).
LLM_METADATA_KEYS = ("title", "section")


def passage_node(passage: Passage) -> TextNode:
    metadata = passage.model_dump(exclude={"text"})
    hidden = [key for key, value in metadata.items() if key not in LLM_METADATA_KEYS or not value]
    return TextNode(
        id_=str(passage.row),
        text=passage.text,
        metadata=metadata,
        excluded_llm_metadata_keys=hidden,
        excluded_embed_metadata_keys=list(metadata),
    )


def node_source(number: int, hit: NodeWithScore) -> Source:
    """A retrieved node as the numbered source ``[number]``."""
    fields = {name: hit.node.metadata.get(name) for name in Passage.model_fields}
    return Source(**{**fields, "text": hit.node.get_content()}, number=number, score=float(hit.score or 0.0))


def node_sources(hits: list[NodeWithScore]) -> list[Source]:
    return [node_source(number, hit) for number, hit in enumerate(hits, start=1)]
