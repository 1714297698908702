"""The separation-model contract (models are built from config by ``models.registry``).

Inference (``separate``), evaluation and the training loop call only the methods below,
so none of them asks which class a model is. A model is a mask network: its U-Net
``features`` do not depend on the query (late fusion), and each kind of query becomes
mask logits through ``project`` and ``mask_logits``. Shapes: B batch, Q queries, k mask
features, D embedding size, F x N the warped spectrogram.

=========================  ===================================================================
``query_columns``          query kind -> the row column holding it (``"image"`` ->
                           ``image_query``; ``None`` for a model that takes no query)
``text_queries``           whether user text (through CLIP's text tower) is a query
``training_column``        the row column that queries each source at a training step
``query_embeddings``       column values (B, ...) -> embeddings (B, ..., D), or None
``project``                embeddings (..., D) or None -> projections (..., k) or None
``mask_logits``            features (B, k, F, N) + projections (Q, k) -> logits (B, Q, F, N)
``num_outputs``            how many estimates one call gives for these projections
``output_names``           fixed names of the outputs of a model without queries, else None
``training_loss``          forward outputs + targets -> (loss, metrics)
``method_name``            the name results tables give the trained model
=========================  ===================================================================
"""
from __future__ import annotations

from torch import Tensor, nn

from clipsep_ray.config import ModelConfig, TrainConfig

#: Query kinds, in the order results tables list them.
QUERY_KINDS = ("none", "image", "text", "label")


class SeparationModel(nn.Module):
    """Base of every separation model; see the module docstring for the contract."""

    arch: str = ""
    query_columns: dict[str, str | None] = {}
    text_queries: bool = False

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "SeparationModel":
        raise NotImplementedError

    @classmethod
    def method_name(cls, cfg: ModelConfig, train_mode: str) -> str:
        raise NotImplementedError

    @classmethod
    def training_column(cls, train_mode: str, step: int) -> str | None:
        """The row column whose values query each mixture's sources at ``step`` (None: no query)."""
        raise NotImplementedError

    @classmethod
    def training_columns(cls, train_mode: str) -> set[str]:
        """Every column :meth:`training_column` may name under ``train_mode``."""
        return {c for c in (cls.training_column(train_mode, s) for s in (0, 1)) if c}

    def features(self, log_mag: Tensor) -> Tensor:
        """log |X| (B, 1, F, N) -> mask features (B, k, F, N)."""
        raise NotImplementedError

    def query_embeddings(self, values: Tensor | None) -> Tensor | None:
        """Values of a query column -> query embeddings for :meth:`project` (None: no query)."""
        return None if values is None else values.float()

    def project(self, embeddings: Tensor | None) -> Tensor | None:
        """(..., D) query embeddings -> (..., k) pre-sigmoid projections."""
        raise NotImplementedError

    def mask_logits(self, features: Tensor, projections: Tensor | None) -> Tensor:
        """Features (B, k, F, N) + projections (Q, k) or (B, Q, k) -> mask logits (B, Q, F, N)."""
        raise NotImplementedError

    def num_outputs(self, projections: Tensor | None) -> int:
        return int(projections.shape[-2])

    def output_names(self) -> list[str] | None:
        """Names of the outputs when they do not come from queries (e.g. PIT's sources)."""
        return None

    def training_loss(self, outputs: dict[str, Tensor], targets: Tensor, weights: Tensor,
                      cfg: TrainConfig) -> tuple[Tensor, dict[str, float]]:
        """``forward`` outputs, targets (B, N, F, M), weights (B, 1, F, M) -> (loss, metrics)."""
        raise NotImplementedError
