"""Self-describing checkpoints: resolved config + weights + versions, on any fsspec URI.

One file (``torch.save`` of plain containers and tensors) read back with
``torch.load(weights_only=True)``: no arbitrary object is ever unpickled. A URI that
names a folder (a Ray Train checkpoint directory, or one ending in '/') holds the
file as ``model.pt``.
"""
from __future__ import annotations

import hashlib
import io
import platform
from typing import Any

import torch
from torch import nn

from clipsep_ray.config import Config, ConfigError
from clipsep_ray.storage import read_bytes, url_to_fs, write_bytes

FORMAT = "clipsep_ray.checkpoint/1"
#: The model file inside a checkpoint folder (a Ray Train checkpoint holds one).
FILENAME = "model.pt"
#: The optimiser / schedule / random state beside it in a training checkpoint.
STATE_FILE = "train_state.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the URI and the problem."""


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("clipsep_ray", "torch", "open_clip_torch", "ray"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _file_uri(uri: str) -> str:
    fs, path = url_to_fs(uri)
    if uri.endswith("/") or fs.isdir(path):
        return uri.rstrip("/") + "/" + FILENAME
    return uri


def save_checkpoint(uri: str, model: nn.Module, cfg: Config, extra: dict[str, Any] | None = None) -> str:
    """Write model weights + ``cfg`` (+ ``extra`` plain state, e.g. optimiser) to ``uri``; returns the file URI.

    The write is atomic (:func:`clipsep_ray.storage.write_bytes`): a crash never leaves half a checkpoint.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "config": cfg.to_dict(), "versions": versions(), "model": state,
               "extra": extra or {}}
    buf = io.BytesIO()
    torch.save(payload, buf)
    target = _file_uri(uri)
    write_bytes(target, buf.getvalue())
    return target


def read_checkpoint_bytes(uri: str) -> bytes:
    """The checkpoint file's bytes (a folder URI holds it as ``model.pt``)."""
    target = _file_uri(uri)
    try:
        return read_bytes(target)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {target}") from None


def file_sha256(data: bytes) -> str:
    """A checkpoint file's identity: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(data).hexdigest()[:16]


def read_checkpoint(uri: str, map_location: str = "cpu", sha256: str | None = None) -> dict[str, Any]:
    """The raw payload (format, config, versions, model, extra), loaded safely, with the file's
    :func:`file_sha256` added as ``sha256``. ``sha256``, when given, is the identity the file must
    have: a job that recorded it refuses a checkpoint replaced since (a CheckpointError)."""
    target = _file_uri(uri)
    data = read_checkpoint_bytes(uri)
    got = file_sha256(data)
    if sha256 is not None and got != sha256:
        raise CheckpointError(f"{target} changed since the job recorded it (SHA-256 {got}..., the job's {sha256}...): "
                              f"another checkpoint was written there; run the job again to use it")
    try:
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{target} is not a readable checkpoint (corrupt, truncated or unsafe): "
                              f"{str(exc).splitlines()[0][:200]}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{target} is not a clipsep_ray checkpoint (expected format '{FORMAT}')")
    return {**payload, "sha256": got}


def load_checkpoint(uri: str, map_location: str = "cpu", expected: Config | None = None, sha256: str | None = None
                    ) -> tuple[nn.Module, Config, dict[str, Any]]:
    """Rebuild the model a checkpoint describes -> (model in eval mode, its Config, payload).

    ``expected``: when given, the checkpoint's model section must equal it; each
    differing field is named in the error. ``sha256``: as in :func:`read_checkpoint`.
    """
    from clipsep_ray.models.registry import build_model

    payload = read_checkpoint(uri, map_location, sha256)
    try:
        cfg = Config.from_dict(payload["config"]).validate()
    except ConfigError as exc:
        raise CheckpointError(f"{uri}: its saved config is invalid: {exc}") from None
    if expected is not None:
        diff = [f"model.{k}: checkpoint {v!r} != expected {getattr(expected.model, k)!r}"
                for k, v in vars(cfg.model).items() if getattr(expected.model, k) != v]
        if diff:
            raise CheckpointError(f"{uri} was trained with another model config: " + "; ".join(diff))
    model = build_model(cfg.model)
    try:
        model.load_state_dict(payload["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{uri}: weights do not match the config saved with them: "
                              f"{' '.join(str(exc).split())[:400]}") from None
    return model.eval(), cfg, payload
