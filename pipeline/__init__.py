"""jawiki-rag: Japanese Wikipedia question answering with cited passages.

Sub-packages, from the bottom up (docs/architecture.md draws them):

- ``core``: settings, errors, the shared schema, hub access, caches, timings, GPUs;
- ``text``: Japanese text: MeCab tokens, sentences, citation markers;
- ``retrieval``: corpus, BM25, embeddings, vector search, LlamaIndex retrievers;
- ``generation``: prompts, the LLM backends and the vLLM supervisor, the chat engine;
- ``serving``: the interface the UI needs, its local implementation, the API client,
  and the composition root that builds a service from settings;
- ``evaluation``: JSQuAD reading and retrieval metrics;
- ``api``: the RAG API server.

Command-line entry points: ``python -m pipeline.ask``, ``pipeline.evaluation``,
``pipeline.download``, ``pipeline.api``.
"""

import os

# GPU images often have JAX and TensorFlow installed. ``datasets`` and ``transformers``
# import them when they can, and JAX takes 75 % of a GPU's memory on first use, which
# leaves vLLM too little. The product uses neither; these keep them out (override by
# setting the variables).
for _name, _value in (("USE_JAX", "0"), ("USE_TF", "0"), ("XLA_PYTHON_CLIENT_PREALLOCATE", "false")):
    os.environ.setdefault(_name, _value)
