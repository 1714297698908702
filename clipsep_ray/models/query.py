"""The frozen open_clip query encoder: text prompts (template, ensemble) and images -> raw embeddings.

Embeddings are the encoder's raw outputs (not L2-normalised), as in the published
method: (Q, D) float32 for Q queries. The encoder is frozen (eval mode, no grad) and
never handed to an optimiser.
"""
from __future__ import annotations

import io
import os
import tempfile
from collections import OrderedDict
from importlib import resources
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from clipsep_ray.config import QueryConfig


class QueryError(ValueError):
    """A query that cannot be used; the message names it."""


_registered_config_dirs: set[str] = set()


def register_clip_configs(extra_dir: str | None = None) -> None:
    """Make the package's open_clip model configs (e.g. ``synth-clip``), and those in ``extra_dir``,
    known to open_clip; idempotent (each folder is added once per process)."""
    import open_clip

    pkg_dir = str(resources.files("clipsep_ray.models").joinpath("clip_configs"))
    for d in (pkg_dir, extra_dir):
        if d and os.path.isdir(d) and os.path.abspath(d) not in _registered_config_dirs:
            open_clip.add_model_config(d)
            _registered_config_dirs.add(os.path.abspath(d))


def _local_weights(pretrained: str) -> str | None:
    """'' -> None (random init); a remote URI is copied to a local temp file; else as given."""
    if not pretrained:
        return None
    if "://" in pretrained and not pretrained.startswith("file://"):
        import fsspec

        suffix = os.path.splitext(pretrained)[1] or ".pt"
        fd, path = tempfile.mkstemp(prefix="clipsep-clip-", suffix=suffix)
        os.close(fd)
        fsspec.filesystem(pretrained.split("://")[0]).get(pretrained, path)
        return path
    return pretrained.removeprefix("file://")


def check_queries(queries: Sequence[str]) -> list[str]:
    """Strip text queries; reject non-strings and empty ones with a message that names them."""
    if isinstance(queries, str):
        queries = [queries]
    out = []
    for i, q in enumerate(queries):
        if not isinstance(q, str):
            raise QueryError(f"query #{i} must be text, got {type(q).__name__}")
        if not q.strip():
            raise QueryError(f"query #{i} is empty: give a sound to look for, e.g. 'dog barking'")
        out.append(q.strip())
    if not out:
        raise QueryError("no query given")
    return out


def _pooled_length(model, tokens: Tensor) -> int | None:
    """How many leading token positions decide ``model``'s text embedding, or None when all do.

    A CLIP text tower with a causal mask pooled at the end-of-text token (OpenAI CLIP and the
    synthetic world's) reads each position only from the ones before it, so the padding after
    the longest prompt's end token changes nothing: cutting it gives the same embedding.
    """
    from open_clip.model import CLIP

    if not isinstance(model, CLIP) or getattr(model, "attn_mask", None) is None:
        return None
    if model.text_pool_type == "argmax":
        ends = tokens.argmax(dim=-1)
    elif model.text_pool_type == "eos" and model.text_eos_id is not None:
        ends = (tokens == model.text_eos_id).int().argmax(dim=-1)
    else:
        return None
    return int(ends.max()) + 1


@torch.no_grad()
def encode_tokens(model, tokens: Tensor) -> Tensor:
    """``model.encode_text(tokens)``, run only over the positions that decide the result.

    A query is a few tokens of a 77-token context, and a new text query is most of what a Serve
    re-query costs besides the masks: ViT-B/32's text tower took 109 ms for one prompt over 77
    tokens and 34 ms over its 7 on one core of the AMD build box (the embeddings agree within
    3e-6). Towers it does not apply to (:func:`_pooled_length`) run whole.
    """
    from open_clip.transformer import text_global_pool

    n = _pooled_length(model, tokens)
    if n is None or n >= tokens.shape[1]:
        return model.encode_text(tokens)
    tokens = tokens[:, :n]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=model.text_eos_id)
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


class QueryEncoder:
    """open_clip model + tokenizer + preprocessing, frozen, with a cache of text embeddings."""

    def __init__(self, clip_model: str = "ViT-B-32", clip_pretrained: str = "openai", device: str = "cpu",
                 prompt_template: str = "a photo of {}", prompt_ensemble: Sequence[str] = (),
                 text_cache_size: int = 1024):
        import open_clip

        register_clip_configs()
        weights = _local_weights(clip_pretrained)
        downloaded = weights is not None and weights != clip_pretrained.removeprefix("file://")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(clip_model, pretrained=weights, device=device)
        except Exception as exc:  # open_clip raises RuntimeError/ValueError/HF errors alike
            hint = " (no network here: pass a local checkpoint path)" if weights and not os.path.exists(weights) else ""
            reason = " ".join(str(exc).split())
            reason = reason[:300] + ("..." if len(reason) > 300 else "")
            raise QueryError(f"cannot load CLIP model '{clip_model}' with weights '{clip_pretrained}': "
                             f"{reason}{hint}") from exc
        finally:
            if downloaded:  # the weights are in memory now; don't leave a copy per encoder on disk
                os.remove(weights)
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(clip_model)
        self.device = torch.device(device)
        self.name = f"{clip_model}:{clip_pretrained}"
        self.prompt_template, self.prompt_ensemble = prompt_template, list(prompt_ensemble)
        self._cache: OrderedDict[tuple[str, bool], Tensor] = OrderedDict()
        self._cache_size = text_cache_size
        with torch.no_grad():
            self.embed_dim = int(self._encode_prompts(["a"]).shape[-1])

    @classmethod
    def from_config(cls, cfg: QueryConfig, device: str = "cpu") -> "QueryEncoder":
        return cls(cfg.clip_model, cfg.clip_pretrained, device, cfg.prompt_template, cfg.prompt_ensemble,
                   cfg.text_cache_size)

    @torch.no_grad()
    def _encode_prompts(self, prompts: list[str]) -> Tensor:
        tokens = self.tokenizer(prompts).to(self.device)
        return encode_tokens(self.model, tokens).float().cpu()

    @torch.no_grad()
    def encode_text(self, queries: Sequence[str], ensemble: bool = False) -> Tensor:
        """Text queries -> (Q, D) raw embeddings.

        ``ensemble=False`` fills the prompt template ("a photo of [query]");
        ``ensemble=True`` averages the raw embeddings over the prompt ensemble (evaluation).
        Repeated queries come from an LRU cache.
        """
        queries = check_queries(queries)
        missing = [q for q in dict.fromkeys(queries) if (q, ensemble) not in self._cache]
        if missing:
            templates = self.prompt_ensemble if ensemble and self.prompt_ensemble else [self.prompt_template]
            prompts = [t.format(q) for q in missing for t in templates]
            emb = self._encode_prompts(prompts).reshape(len(missing), len(templates), -1).mean(dim=1)
            for q, e in zip(missing, emb):
                self._cache[(q, ensemble)] = e
        out = []
        for q in queries:
            self._cache.move_to_end((q, ensemble))
            out.append(self._cache[(q, ensemble)])
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return torch.stack(out)

    def _to_pil(self, image):
        from PIL import Image

        if isinstance(image, (bytes, bytearray)):
            try:
                return Image.open(io.BytesIO(image)).convert("RGB")
            except Exception as exc:
                raise QueryError(f"image query is not a readable picture: {exc}") from exc
        if isinstance(image, np.ndarray):
            return Image.fromarray(image.astype(np.uint8)).convert("RGB")
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        raise QueryError(f"image query must be a PIL image, an HxWx3 uint8 array or encoded bytes, "
                         f"got {type(image).__name__}")

    @torch.no_grad()
    def encode_images(self, images: Sequence, batch_size: int = 64) -> Tensor:
        """Pictures (PIL, HxWx3 uint8 arrays, or JPEG/PNG bytes) -> (N, D) raw embeddings."""
        outs = []
        for i in range(0, len(images), batch_size):
            batch = torch.stack([self.preprocess(self._to_pil(im)) for im in images[i:i + batch_size]])
            outs.append(self.model.encode_image(batch.to(self.device)).float().cpu())
        if not outs:
            raise QueryError("no image given")
        return torch.cat(outs)
