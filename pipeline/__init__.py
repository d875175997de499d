"""jawiki-rag: Japanese Wikipedia question answering with cited passages.

Sub-packages, from the bottom up (docs/architecture.md draws them):

- ``core``: the shared schema, errors, well-formed text, timings, GPUs;
- ``settings``: the settings object, its layers and saving, field messages;
- ``assets``: hub and mirror downloads, the index cache, what is on disk;
- ``text``: Japanese text: MeCab tokens, sentences, citation markers;
- ``retrieval``: corpus, BM25, LlamaIndex retrievers, the retrieval service; ``dense``:
  the E5 query encoder, vector search and the LlamaIndex vector store;
- ``build``: a fresh corpus and index from a Wikipedia dump;
- ``generation``: prompts, the LLM backends and the vLLM supervisor, the chat engine;
- ``serving``: the interface the UI needs, its local implementation, the API client,
  and the composition root that builds a service from settings;
- ``evaluation``: JSQuAD reading and retrieval metrics;
- ``api``: the RAG API server.

Command-line entry points: ``python -m pipeline.ask``, ``pipeline.evaluation``,
``pipeline.download``, ``pipeline.build``, ``pipeline.api``.
"""

import os

# GPU images often have JAX and TensorFlow installed. ``datasets`` and ``transformers``
# import them when they can, and JAX takes 75 % of a GPU's memory on first use, which
# leaves vLLM too little. The product uses neither; these keep them out (override by
# setting the variables).
for _name, _value in (("USE_JAX", "0"), ("USE_TF", "0"), ("XLA_PYTHON_CLIENT_PREALLOCATE", "false")):
    os.environ.setdefault(_name, _value)
