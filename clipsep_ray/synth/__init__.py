"""A synthetic audio-visual world and a small CLIP trained on it.

Real videos and pretrained CLIP weights cannot be downloaded on the build machines, so
this package makes both: procedural sound classes with names a person would type,
procedural pictures of each class, "videos" written as real MP4 files with an index CSV
(clean and noisy training splits, clean validation/test sets), and a small open_clip
model trained contrastively on the pictures and captions of the world.

Modules (nothing heavy is imported here):
- ``world``: the class registry (``CLASSES``, ``render_sound``, ``render_picture``,
  ``make_scene``); ``sounds`` and ``pictures`` hold the generators.
- ``videos``: MP4 + ``index.csv`` writing, ``ensure_world`` (command: ``clipsep-ray synth``).
- ``clip``: the small CLIP (``register_configs``, ``train_clip``, ``ensure_clip``,
  ``zero_shot_accuracy``; command: ``clipsep-ray synth-clip``).
"""
