import os

# No network on the build machines: open_clip / huggingface must never try to download.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
