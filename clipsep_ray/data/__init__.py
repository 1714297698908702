"""The data plane: the shard schema, video ingest, CLIP embedding, streaming row preparation
(Ray Data) and on-device mixing (plain torch).

``schema`` and ``mixing`` import without Ray; ``ingest``, ``embed`` and ``shards`` import
Ray lazily, inside the functions that need it.
"""
