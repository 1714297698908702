"""Ray Serve: the HTTP API, the web page and the batched model replicas.

``app.build_app(args)`` builds the application that ``clipsep-ray serve`` runs and that
``serve run cluster/serve.yaml`` imports: a FastAPI ingress (``ClipSepIngress``, in
:mod:`.ingress`) in front of the model replicas (``ClipSepModel``, in :mod:`.model`),
which batch the windows of concurrent requests. Limits and error answers live in
:mod:`.limits`; the re-query cache in :mod:`.cache`. Importing this package loads nothing.
"""
