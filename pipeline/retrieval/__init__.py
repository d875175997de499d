"""Finding passages: the corpus, BM25, embeddings, vector search and LlamaIndex retrievers."""
