"""Dense retrieval: the query encoder (``encoder``, ``gpu_encoder``), the passage vectors
on disk (``vector_files``), the searchers over them (``searchers``, chosen by
``backends``), the LlamaIndex vector store (``store``) and loading it all (``loading``)."""
