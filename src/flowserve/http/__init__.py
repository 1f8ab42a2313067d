"""The HTTP edge. The way in, in order:

- ``server``: ``flowserve serve`` (uvicorn with a header timeout, the drain, GC tuning);
- ``app``: the ASGI app over the services, and ``edge``: its one layer (size guard, route
  match, preflight, drain gate, access log, admission);
- ``routes``: the route table, every endpoint declared once (``routing``: its vocabulary;
  ``openapi``: the document generated from it);
- the handlers: ``runs``, ``flows``, ``ops``;
- what they use: ``admission`` (keys, CORS, limits), ``body``, ``stream`` and ``frames`` (the
  run relayed as SSE or JSON lines), ``errors`` and ``accept`` (errors as responses),
  ``access`` (the request log).
"""
