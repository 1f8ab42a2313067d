"""Knowledge bases and per-user documents: files uploaded, parsed by format, chunked by
structure, indexed for full-text search in the database, and searched behind one interface.

    upload (upload.py) -> checks (formats.py) -> original on disk by hash (blobs.py)
      -> background indexing (ingest.py): parsers/ -> chunking.py -> store.py
    search.py: Index.search(kb_ids, query, top_k, strategy) -> Hit (keyword: FTS5 / tsvector)
    objects.py: the JSON objects (KB, file, citation); service.py: what routes, CLI, nodes call
"""
