"""The corpus builder (``python -m pipeline.build``): a jawiki CirrusSearch dump, or a
passages dataset, into passages, E5 vectors, the FAISS index and the BM25 index, in a
folder laid out like the hub repos the product reads (docs/build.md).

- ``wikitext``, ``chunking``, ``cirrus``, ``passages``: the dump into passages-c400;
- ``encode``, ``embed``: passage vectors, one process per GPU;
- ``ivfpq``: the IVF-PQ index; ``bm25``: BM25 from shards; ``install``: into the product's cache;
- ``runner``: worker processes on this host, or Ray Data; ``progress``, ``files``,
  ``layout``, ``manifest``: the shared plumbing; ``builder``: the stages in order.
"""
