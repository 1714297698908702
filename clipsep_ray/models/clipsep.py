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

from clipsep_ray.config import ModelConfig, TrainConfig
from clipsep_ray.losses import clipsep_loss, nit_loss, noise_regularizer, pit_loss
from clipsep_ray.models.base import SeparationModel
from clipsep_ray.models.unet import AudioUNet

_MODE_NAMES = {"image": "CLIPSep", "text": "CLIPSep-Text", "hybrid": "CLIPSep-Hybrid"}


def init_weights(module: nn.Module) -> None:
    """The published init (docs/METHOD.md, "Initialisation"): conv N(0, 1e-3), linear N(0, 1e-4), BatchNorm scale N(1, 0.02).
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


class MaskNet(SeparationModel):
    """Input norm + U-Net: log |X| (B, 1, F, N) -> mask features (B, k, F, N)."""

    def __init__(self, depth: int, width: int, out_channels: int, channels_last: bool = True):
        super().__init__()
        self.input_norm = nn.BatchNorm2d(1)
        self.unet = AudioUNet(depth, width, out_channels)
        self.channels_last = channels_last

    def features(self, log_mag: Tensor) -> Tensor:
        x = self.input_norm(log_mag)
        if self.channels_last:
            # 1.6-2x faster convolutions on CPU and GPU (measured: docs/DECISIONS.md, "channels_last").
            x = x.contiguous(memory_format=torch.channels_last)
        return self.unet(x)


class CLIPSep(MaskNet):
    """Query-conditioned separation; ``noise_heads`` > 0 adds the NIT noise heads.

    Queries are CLIP embeddings: of video frames (``image_query``) or of text (``text_query``).
    """

    arch = "clipsep"
    query_columns = {"image": "image_query", "text": "text_query"}
    text_queries = True

    def __init__(self, unet_depth: int = 7, unet_width: int = 64, num_masks: int = 32, embed_dim: int = 512,
                 noise_heads: int = 0, channels_last: bool = True, init: str = "published",
                 normalize_queries: bool = False):
        super().__init__(unet_depth, unet_width, num_masks, channels_last)
        self.query_proj = nn.Linear(embed_dim, num_masks)
        self.noise_proj = nn.ModuleList(nn.Linear(num_masks, num_masks) for _ in range(noise_heads))
        self.fusion_weight = nn.Parameter(torch.ones(num_masks))
        self.fusion_bias = nn.Parameter(torch.zeros(1))
        self.embed_dim, self.num_masks, self.noise_heads = embed_dim, num_masks, noise_heads
        self.normalize_queries = normalize_queries
        if init == "published":
            init_weights(self)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "CLIPSep":
        return cls(**_common(cfg), num_masks=cfg.num_masks, embed_dim=cfg.embed_dim, noise_heads=cfg.noise_heads,
                   normalize_queries=cfg.normalize_queries)

    @classmethod
    def method_name(cls, cfg: ModelConfig, train_mode: str) -> str:
        return _MODE_NAMES[train_mode] + ("-NIT" if cfg.noise_heads else "")

    @classmethod
    def training_column(cls, train_mode: str, step: int) -> str:
        """Image queries, text queries, or the two alternating step by step (hybrid)."""
        if train_mode == "image":
            return "image_query"
        if train_mode == "text":
            return "text_query"
        return "image_query" if step % 2 == 0 else "text_query"

    def project(self, embeddings: Tensor) -> Tensor:
        """(..., D) raw query embeddings -> (..., k) pre-sigmoid projections."""
        if embeddings.shape[-1] != self.embed_dim:
            raise ValueError(f"query embeddings have size {embeddings.shape[-1]}, the model expects {self.embed_dim}")
        e = embeddings.to(self.query_proj.weight.dtype)
        if self.normalize_queries:
            e = nn.functional.normalize(e, dim=-1) * self.embed_dim ** 0.5
        return self.query_proj(e)

    def fuse(self, features: Tensor, projections: Tensor) -> Tensor:
        """Features (B, k, F, N), projections (B, Q, k) or (Q, k) -> mask logits (B, Q, F, N)."""
        q = torch.sigmoid(projections.float()) * self.fusion_weight
        eq = "qk,bkfn->bqfn" if q.dim() == 2 else "bqk,bkfn->bqfn"
        return torch.einsum(eq, q, features.float()) + self.fusion_bias

    def mask_logits(self, features: Tensor, projections: Tensor) -> Tensor:
        return self.fuse(features, projections)

    def training_loss(self, outputs: dict[str, Tensor], targets: Tensor, weights: Tensor,
                      cfg: TrainConfig) -> tuple[Tensor, dict[str, float]]:
        """Weighted BCE of every query's mask; with noise heads the NIT arrangement loss plus
        the noise regulariser (docs/METHOD.md, "Noise invariant training (NIT)")."""
        logits = outputs["query_logits"].float()
        if not self.noise_heads:
            return clipsep_loss(logits, targets, weights), {}
        noise = outputs["noise_logits"].float()
        sep, choice = nit_loss(logits, noise, targets, weights)
        reg = noise_regularizer(noise, cfg.noise_reg_lambda, cfg.noise_reg_gamma)
        return sep + reg, {"noise_reg": float(reg.detach()), "arrangement_0": float((choice == 0).float().mean())}

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

    arch = "labelsep"
    query_columns = {"label": "label_id"}
    text_queries = False

    def __init__(self, num_labels: int, **kwargs):
        super().__init__(**kwargs)
        if num_labels < 1:
            raise ValueError("LabelSep needs model.num_labels >= 1")
        self.label_embedding = nn.Embedding(num_labels, self.embed_dim)
        nn.init.normal_(self.label_embedding.weight, 0.0, 1.0)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "LabelSep":
        return cls(cfg.num_labels, **_common(cfg), num_masks=cfg.num_masks, embed_dim=cfg.embed_dim,
                   noise_heads=cfg.noise_heads)

    @classmethod
    def method_name(cls, cfg: ModelConfig, train_mode: str) -> str:
        return "LabelSep"

    @classmethod
    def training_column(cls, train_mode: str, step: int) -> str:
        return "label_id"

    def query_embeddings(self, values: Tensor | None) -> Tensor | None:
        """Label ids (any shape) -> their learned embeddings (..., D)."""
        return None if values is None else self.embed_labels(values.long())

    def embed_labels(self, labels: Tensor) -> Tensor:
        """(B, Q) or (Q,) long label ids -> (B, Q, D) or (Q, D) embeddings."""
        return self.label_embedding(labels)


class PITSep(MaskNet):
    """Baseline: the U-Net predicts one mask per source directly, no query; trained with PIT."""

    arch = "pit"
    query_columns = {"none": None}
    text_queries = False

    def __init__(self, unet_depth: int = 7, unet_width: int = 64, num_sources: int = 2, channels_last: bool = True,
                 init: str = "published"):
        super().__init__(unet_depth, unet_width, num_sources, channels_last)
        self.num_sources = num_sources
        if init == "published":
            init_weights(self)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "PITSep":
        return cls(num_sources=cfg.num_sources, **_common(cfg))

    @classmethod
    def method_name(cls, cfg: ModelConfig, train_mode: str) -> str:
        return "PIT"

    @classmethod
    def training_column(cls, train_mode: str, step: int) -> None:
        return None

    def project(self, embeddings: Tensor | None) -> None:
        return None

    def mask_logits(self, features: Tensor, projections: Tensor | None) -> Tensor:
        return features.float()

    def num_outputs(self, projections: Tensor | None) -> int:
        return self.num_sources

    def output_names(self) -> list[str]:
        return [f"source_{i + 1}" for i in range(self.num_sources)]

    def training_loss(self, outputs: dict[str, Tensor], targets: Tensor, weights: Tensor,
                      cfg: TrainConfig) -> tuple[Tensor, dict[str, float]]:
        """Weighted BCE in the best output order per mixture (permutation invariant training)."""
        loss, _ = pit_loss(outputs["query_logits"].float(), targets, weights)
        return loss, {}

    def forward(self, log_mag: Tensor, embeddings: Tensor | None = None) -> dict[str, Tensor]:
        """log |X| (B, 1, F, N) -> query_logits (B, S, F, N) in no particular source order."""
        return {"query_logits": self.features(log_mag).float(), "noise_logits": log_mag.new_zeros(0)}


def _common(cfg: ModelConfig) -> dict:
    return dict(unet_depth=cfg.unet_depth, unet_width=cfg.unet_width, channels_last=cfg.channels_last, init=cfg.init)
