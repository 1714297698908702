"""Batch separation of large audio archives on Ray Data (``clipsep-ray separate-archive``):
``inputs`` (what is read, where outputs go), ``stages`` (decode, separate, encode),
``archive`` (the driver: exactly-once outputs, resume, the manifest)."""
