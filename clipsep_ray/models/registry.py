"""Models by name: ``model.arch`` -> the class that builds itself from a :class:`ModelConfig`."""
from __future__ import annotations

from clipsep_ray.config import ARCHS, ModelConfig
from clipsep_ray.models.base import SeparationModel
from clipsep_ray.models.clipsep import CLIPSep, LabelSep, PITSep

MODELS: dict[str, type[SeparationModel]] = {"clipsep": CLIPSep, "labelsep": LabelSep, "pit": PITSep}
assert tuple(MODELS) == ARCHS and all(cls.arch == name for name, cls in MODELS.items()), \
    "config.ARCHS, the registry and each class's arch must agree"


def model_class(cfg: ModelConfig) -> type[SeparationModel]:
    """The class ``cfg.arch`` names."""
    try:
        return MODELS[cfg.arch]
    except KeyError:
        raise ValueError(f"unknown model.arch '{cfg.arch}' (known: {', '.join(MODELS)})") from None


def build_model(cfg: ModelConfig) -> SeparationModel:
    """The model a :class:`ModelConfig` describes."""
    return model_class(cfg).from_config(cfg)
