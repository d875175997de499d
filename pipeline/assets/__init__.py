"""Models, corpora and indexes on disk: fetching them from the hub or a local mirror
(``hub``), the cache of indexes built from them (``index_cache``) and what of them is
present (``presence``)."""
