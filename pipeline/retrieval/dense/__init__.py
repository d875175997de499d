"""Dense retrieval: the query encoder (``encoder``, ``gpu_encoder``), the passage vectors
on disk (``vector_files``), the searchers over them (``searchers``, chosen by
``backends``), the LlamaIndex vector store (``store``), loading it all (``loading``),
the GPU memory each part takes (``footprint``) and why dense search is off (``notices``)."""
