"""CLIPSep (late fusion of query embeddings with U-Net masks), NIT noise heads, and baselines.

Stages and shapes (B batch, Q queries per item, k masks, D embedding size, H noise heads,
F x N the warped spectrogram):
    features  : log |X| (B, 1, F, N) -> BatchNorm -> U-Net -> M (B, k, F, N)
    project   : query embedding e (B, Q, D) or (Q, D) -> p = Linear(D -> k)(e), pre-sigmoid
    fuse      : y_q(f, t) = sum_j w_j sigmoid(p_qj) M_j(f, t) + b -> logits (B, Q, F, N)
    noise     : n_h = sigmoid(Linear_h(k -> k)(mean_q p_q)) -> the same inner product (B, H, F, N)
The fusion weights (w, b) are shared across queries, as in the authors' public code
(w init ones, b init zero): the paper writes w_ij, b_i, but sharing keeps a query's mask
independent of which slot it sits in, which the inference path relies on. M does not
depend on the query, so inference computes it once per window for every query.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from clipsep_ray.config import ModelConfig
from clipsep_ray.models.unet import AudioUNet


def init_weights(module: nn.Module) -> None:
    """REFERENCE.md init ("published"): conv N(0, 1e-3), linear N(0, 1e-4), BatchNorm scale N(1, 0.02).
    ``model.init=pytorch`` skips it and keeps PyTorch's defaults."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 1e-3)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1e-4)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class MaskNet(nn.Module):
    """Input norm + U-Net: log |X| (B, 1, F, N) -> mask features (B, k, F, N)."""

    def __init__(self, depth: int, width: int, out_channels: int, channels_last: bool = True):
        super().__init__()
        self.input_norm = nn.BatchNorm2d(1)
        self.unet = AudioUNet(depth, width, out_channels)
        self.channels_last = channels_last

    def features(self, log_mag: Tensor) -> Tensor:
        x = self.input_norm(log_mag)
        if self.channels_last:
            # 1.6-2x faster convolutions on CPU and GPU (SETUP-NOTES.md).
            x = x.contiguous(memory_format=torch.channels_last)
        return self.unet(x)


class CLIPSep(MaskNet):
    """Query-conditioned separation; ``noise_heads`` > 0 adds the NIT noise heads."""

    def __init__(self, unet_depth: int = 7, unet_width: int = 64, num_masks: int = 32, embed_dim: int = 512,
                 noise_heads: int = 0, channels_last: bool = True, init: str = "published"):
        super().__init__(unet_depth, unet_width, num_masks, channels_last)
        self.query_proj = nn.Linear(embed_dim, num_masks)
        self.noise_proj = nn.ModuleList(nn.Linear(num_masks, num_masks) for _ in range(noise_heads))
        self.fusion_weight = nn.Parameter(torch.ones(num_masks))
        self.fusion_bias = nn.Parameter(torch.zeros(1))
        self.embed_dim, self.num_masks, self.noise_heads = embed_dim, num_masks, noise_heads
        if init == "published":
            init_weights(self)

    def project(self, embeddings: Tensor) -> Tensor:
        """(..., D) raw query embeddings -> (..., k) pre-sigmoid projections."""
        if embeddings.shape[-1] != self.embed_dim:
            raise ValueError(f"query embeddings have size {embeddings.shape[-1]}, the model expects {self.embed_dim}")
        return self.query_proj(embeddings.to(self.query_proj.weight.dtype))

    def fuse(self, features: Tensor, projections: Tensor) -> Tensor:
        """Features (B, k, F, N), projections (B, Q, k) or (Q, k) -> mask logits (B, Q, F, N)."""
        q = torch.sigmoid(projections.float()) * self.fusion_weight
        eq = "qk,bkfn->bqfn" if q.dim() == 2 else "bqk,bkfn->bqfn"
        return torch.einsum(eq, q, features.float()) + self.fusion_bias

    def noise_logits(self, features: Tensor, projections: Tensor) -> Tensor:
        """Features (B, k, F, N), projections (B, Q, k) -> noise-head logits (B, H, F, N)."""
        pooled = projections.mean(dim=1)
        heads = [proj(pooled) for proj in self.noise_proj]
        if not heads:
            return features.new_zeros(features.shape[0], 0, *features.shape[2:])
        # fuse() applies the sigmoid: n_h = sigmoid(Linear_h(mean_q p_q)).
        return self.fuse(features, torch.stack(heads, dim=1))

    def forward(self, log_mag: Tensor, embeddings: Tensor) -> dict[str, Tensor]:
        """log |X| (B, 1, F, N), embeddings (B, Q, D) -> query_logits (B, Q, F, N), noise_logits (B, H, F, N)."""
        feats = self.features(log_mag)
        proj = self.project(embeddings)
        out = {"query_logits": self.fuse(feats, proj)}
        out["noise_logits"] = self.noise_logits(feats, proj) if self.noise_heads else feats.new_zeros(0)
        return out


class LabelSep(CLIPSep):
    """Baseline: a learned label embedding (num_labels x D) replaces the CLIP query."""

    def __init__(self, num_labels: int, **kwargs):
        super().__init__(**kwargs)
        if num_labels < 1:
            raise ValueError("LabelSep needs model.num_labels >= 1")
        self.label_embedding = nn.Embedding(num_labels, self.embed_dim)
        nn.init.normal_(self.label_embedding.weight, 0.0, 1.0)

    def embed_labels(self, labels: Tensor) -> Tensor:
        """(B, Q) or (Q,) long label ids -> (B, Q, D) or (Q, D) embeddings."""
        return self.label_embedding(labels)


class PITSep(MaskNet):
    """Baseline: the U-Net predicts one mask per source directly, no query; trained with PIT."""

    def __init__(self, unet_depth: int = 7, unet_width: int = 64, num_sources: int = 2, channels_last: bool = True,
                 init: str = "published"):
        super().__init__(unet_depth, unet_width, num_sources, channels_last)
        self.num_sources = num_sources
        if init == "published":
            init_weights(self)

    def forward(self, log_mag: Tensor, embeddings: Tensor | None = None) -> dict[str, Tensor]:
        """log |X| (B, 1, F, N) -> query_logits (B, S, F, N) in no particular source order."""
        return {"query_logits": self.features(log_mag).float(), "noise_logits": log_mag.new_zeros(0)}


def build_model(cfg: ModelConfig) -> nn.Module:
    """The model a :class:`ModelConfig` describes."""
    common = dict(unet_depth=cfg.unet_depth, unet_width=cfg.unet_width, channels_last=cfg.channels_last,
                  init=cfg.init)
    if cfg.arch == "pit":
        return PITSep(num_sources=cfg.num_sources, **common)
    kwargs = dict(num_masks=cfg.num_masks, embed_dim=cfg.embed_dim, noise_heads=cfg.noise_heads, **common)
    if cfg.arch == "labelsep":
        return LabelSep(cfg.num_labels, **kwargs)
    if cfg.arch == "clipsep":
        return CLIPSep(**kwargs)
    raise ValueError(f"unknown model.arch '{cfg.arch}'")
