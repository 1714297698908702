"""Typed configuration: dataclasses, YAML presets and dotted command-line overrides.

Every field is a constructor argument of the component it configures. A run's
resolved config is a plain dict (``Config.to_dict``) saved next to the run and
inside every checkpoint, so a checkpoint can rebuild its own model.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

from clipsep_ray.runtime import PRECISIONS


class ConfigError(ValueError):
    """A bad preset, field name or value; the message names the field."""


#: Model architectures (``model.arch``); ``models.registry`` maps each to its class.
ARCHS = ("clipsep", "labelsep", "pit")

#: docs/METHOD.md, "Evaluation protocol": SDR over the first 65,280 samples at 16 kHz.
PUBLISHED_EVAL_SAMPLES, PUBLISHED_SAMPLE_RATE = 65280, 16000


@dataclass
class AudioConfig:
    """Audio front end (docs/METHOD.md, "Audio front end")."""

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    clip_samples: int = 65535  # one training clip / inference window (256 frames at hop 256)
    warp_bins: int = 256  # rows of the log-frequency grid; 0 disables the warp

    @property
    def num_frames(self) -> int:
        """STFT frames of one clip (centred STFT)."""
        return 1 + self.clip_samples // self.hop_length

    @property
    def eval_samples(self) -> int:
        """Samples that evaluation scores: the published 65,280 samples at 16 kHz (4.08 s), at this rate.

        A duration, not a sample count: a preset with shorter training windows or a lower
        rate still scores 4.08 s per mixture (windowed inference covers it).
        """
        return int(round(PUBLISHED_EVAL_SAMPLES * self.sample_rate / PUBLISHED_SAMPLE_RATE))

    @property
    def freq_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def model_bins(self) -> int:
        """Frequency rows the U-Net sees."""
        return self.warp_bins if self.warp_bins else self.freq_bins


@dataclass
class ModelConfig:
    """The separation network: U-Net masks + query fusion (+ noise heads)."""

    arch: str = "clipsep"  # clipsep | labelsep | pit
    unet_depth: int = 7
    unet_width: int = 64
    num_masks: int = 32  # k intermediate masks
    noise_heads: int = 0  # 0 = CLIPSep; 2 = the paper's NIT
    embed_dim: int = 512  # query embedding size (CLIP's output dim)
    num_sources: int = 2  # PIT output count
    num_labels: int = 0  # LabelSep vocabulary size
    # LabelSep's vocabulary: label i is the embedding table's row i. Training sets it from its text
    # embeddings' labels (sorted), and evaluation reads ids through it: a test set's own sorted labels
    # gave other ids when it lacked one of the training labels, and silently wrong scores.
    labels: list[str] = field(default_factory=list)
    channels_last: bool = True
    # "published": conv N(0, 1e-3), linear N(0, 1e-4), BN scale N(1, 0.02) (docs/METHOD.md);
    # "pytorch": PyTorch's default (Kaiming-uniform) init, which learns ~3x faster in a
    # few hundred steps (docs/DECISIONS.md; the CPU-sized `tiny` preset uses it).
    init: str = "published"
    # Scale every query embedding to norm sqrt(embed_dim) before the projection (False: the raw
    # embedding, as published). CLIP compares directions; norms differ between modalities: on
    # the synthetic world a class's text embedding is 0.34-1.75x its pictures' norm at cosine 0.82-0.87.
    normalize_queries: bool = False


@dataclass
class QueryConfig:
    """The frozen open_clip query encoder and its prompts."""

    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"  # open_clip tag or a local checkpoint path/URI
    prompt_template: str = "a photo of {}"
    prompt_ensemble: list[str] = field(
        default_factory=lambda: [
            "a photo of {}.",
            "a photo of the small {}.",
            "a low resolution photo of a {}.",
            "a photo of many {}.",
        ]
    )
    frames_per_query: int = 3  # centre frame c and c +- 1 s, mean-pooled
    fps: float = 1.0
    text_cache_size: int = 1024


@dataclass
class MixingConfig:
    """On-the-fly mix-and-separate (docs/METHOD.md, "Training (mix-and-separate)")."""

    num_sources: int = 2
    gain_min: float = 0.5
    gain_max: float = 1.5
    binary_masks: bool = True  # targets 1[|S| > 0.5 |X|]; False = ratio masks


@dataclass
class TrainConfig:
    """Optimiser, schedule, loop and checkpointing."""

    mode: str = "image"  # image | text | hybrid
    batch_size: int = 32  # global: split evenly over train.num_workers
    lr: float = 1e-3
    final_lr: float = 1e-4
    warmup_steps: int = 5000
    decay_steps: int = 100000
    max_steps: int = 200000
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    noise_reg_lambda: float = 0.1
    noise_reg_gamma: float = 0.25
    nit_warmup_steps: int = 0  # steps of plain CLIPSep loss (noise heads unused) before NIT starts
    # Moving average of the weights (0 = off): validation, the best checkpoint and model.pt use the
    # average; the raw weights travel in the training state for resuming (train.loop.WeightAverage).
    ema_decay: float = 0.0
    num_workers: int = 1
    use_gpu: bool = False
    precision: str = "auto"  # auto (bf16 autocast where the hardware has it: GPU, or CPU with avx512_bf16/AMX) | fp32 | bf16
    checkpoint_every: int = 5000
    val_every: int = 0  # validations between checkpoints, every N steps (0: at checkpoints only)
    log_every: int = 50
    shuffle_buffer: int = 256
    seed: int = 0


@dataclass
class DataConfig:
    """Where a run reads its shards (any fsspec URI; '' = not set)."""

    train_uri: str = ""
    val_uri: str = ""  # '' = hold out val_fraction of train_uri's shards
    val_fraction: float = 0.1
    val_clips: int = 64  # validation mixtures per evaluation (deterministic)
    text_embeddings: str = ""  # '' = <train_uri>/_text_embeddings.parquet when it exists
    s3_endpoint: str = ""  # '' = AWS_ENDPOINT_URL(_S3) from the environment, else AWS
    # A small data set is listed several times per streaming pass (each listing draws fresh
    # random windows), so a pass holds at least this many rows: every pass restarts Ray
    # Data's pipeline, and restarting every few dozen steps starves the workers.
    min_rows_per_pass: int = 2048
    # Logical CPUs per row-preparation task: the work is light (one short FLAC window per row),
    # and a whole CPU per task lets Ray Data run one task at a time beside the training workers.
    prep_cpus: float = 0.25
    # Shards up to this size (MiB, all listings) are read once into the object store; each pass
    # then only re-cuts random windows from memory (0 = always stream from storage).
    cache_mb: float = 512
    # A set that fits cache_mb is read as one planned pass of train.max_steps x train.batch_size
    # rows (each epoch a seeded permutation, seeded windows, blocks in order): train.seed then
    # repeats a run (two demo runs of one seed gave 60.6% and 55.7% of the oracle without it).
    planned_pass: bool = True


@dataclass
class RunConfig:
    """Where and how a training run lives on Ray."""

    name: str = "clipsep"
    storage_path: str = "./runs"  # local folder or s3://bucket/prefix
    max_failures: int = 1  # worker restarts before the run fails
    num_to_keep: int = 3  # checkpoints kept, best by validation SDR (the latest is always kept)
    cpus_per_worker: float = 0.5  # logical CPUs a training worker reserves; the rest feed Ray Data


@dataclass
class InferenceConfig:
    """The one separation function, ``separate``."""

    overlap: float = 0.25  # fraction of a window shared with its neighbour (cross-faded)
    batch_windows: int = 4  # windows per U-Net call
    precision: str = "auto"  # auto (bf16 where the hardware has it) | fp32 | bf16
    soft_masks: bool = True  # False thresholds masks at 0.5
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass
class Config:
    """The resolved configuration of a run or a checkpoint."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Config":
        return _build(cls, data or {}, "")

    def override(self, overrides: list[str] | dict[str, Any]) -> "Config":
        """Return a copy with dotted overrides applied (``["model.num_masks=16"]``)."""
        data = self.to_dict()
        items = overrides.items() if isinstance(overrides, dict) else (_split(o) for o in overrides)
        # Command-line values stay text until the field's type is known (see _check_type).
        for dotted, value in items:
            parts = dotted.split(".")
            node = data
            for i, part in enumerate(parts[:-1]):
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"unknown config section '{'.'.join(parts[: i + 1])}' in override '{dotted}'")
                node = node[part]
            if parts[-1] not in node:
                raise ConfigError(f"unknown config field '{dotted}'")
            node[parts[-1]] = value
        return Config.from_dict(data)

    def check_section(self, section: str) -> None:
        """Check one section's numeric ranges (``INTERVALS``) and precision: what a loaded
        checkpoint's overridden ``inference`` section needs, without the rest of ``validate``."""
        for dotted, interval in INTERVALS.items():
            sec, key = dotted.split(".")
            if sec == section:
                _check_interval(dotted, getattr(getattr(self, sec), key), interval)
        precision = getattr(getattr(self, section), "precision", None)
        if precision is not None and precision not in PRECISIONS:
            raise ConfigError(f"{section}.precision must be {', '.join(PRECISIONS)}, got {precision!r}")

    def validate(self) -> "Config":
        """Check every numeric field's range (``INTERVALS``) and the cross-field constraints; return self."""
        a, m = self.audio, self.model
        for section in (f.name for f in dataclasses.fields(self)):
            self.check_section(section)
        if m.arch not in ARCHS:
            raise ConfigError(f"model.arch must be {', '.join(ARCHS)}, got '{m.arch}'")
        if m.init not in ("published", "pytorch"):
            raise ConfigError(f"model.init must be published or pytorch, got '{m.init}'")
        if self.train.mode not in ("image", "text", "hybrid"):
            raise ConfigError(f"train.mode must be image, text or hybrid, got '{self.train.mode}'")
        step = 2 ** m.unet_depth
        if a.num_frames % step or a.model_bins % step:
            raise ConfigError(
                f"audio gives {a.model_bins} bins x {a.num_frames} frames; both must be multiples of "
                f"2**model.unet_depth = {step} (set audio.clip_samples / audio.warp_bins)"
            )
        if self.train.batch_size < self.mixing.num_sources:
            raise ConfigError(f"train.batch_size must be >= mixing.num_sources ({self.mixing.num_sources})")
        if a.win_length > a.n_fft:
            raise ConfigError(f"audio.win_length ({a.win_length}) must be <= audio.n_fft ({a.n_fft})")
        if self.data.val_clips == 1:
            raise ConfigError("data.val_clips must be 0 (no validation) or >= 2 (mixtures pair clips)")
        if self.mixing.gain_min > self.mixing.gain_max:
            raise ConfigError(f"mixing.gain_min ({self.mixing.gain_min}) must be <= mixing.gain_max "
                              f"({self.mixing.gain_max})")
        return self


#: The numeric fields' ranges, in interval notation ("(0, inf)": above 0). Before these checks a
#: zero hop length was a ZeroDivisionError inside validate(), and checkpoint_every=0 or lr=0 one
#: after Ray and the data pipeline had started.
INTERVALS = {
    "audio.sample_rate": "[1, inf)", "audio.n_fft": "[2, inf)", "audio.hop_length": "[1, inf)",
    "audio.win_length": "[1, inf)", "audio.clip_samples": "[1, inf)", "audio.warp_bins": "[0, inf)",
    "model.unet_depth": "[2, inf)", "model.unet_width": "[1, inf)", "model.num_masks": "[1, inf)",
    "model.noise_heads": "[0, inf)", "model.embed_dim": "[1, inf)", "model.num_sources": "[1, inf)",
    "model.num_labels": "[0, inf)",
    "query.frames_per_query": "[1, inf)", "query.fps": "(0, inf)", "query.text_cache_size": "[0, inf)",
    "mixing.num_sources": "[2, inf)", "mixing.gain_min": "(0, inf)", "mixing.gain_max": "(0, inf)",
    "train.batch_size": "[1, inf)", "train.lr": "(0, inf)", "train.final_lr": "[0, inf)",
    "train.warmup_steps": "[0, inf)", "train.decay_steps": "[0, inf)", "train.max_steps": "[1, inf)",
    "train.grad_clip": "(0, inf)", "train.weight_decay": "[0, inf)", "train.noise_reg_lambda": "[0, inf)",
    "train.noise_reg_gamma": "[0, inf)", "train.num_workers": "[1, inf)", "train.checkpoint_every": "[1, inf)",
    "train.val_every": "[0, inf)", "train.log_every": "[1, inf)", "train.shuffle_buffer": "[0, inf)",
    "train.seed": "[0, inf)", "train.nit_warmup_steps": "[0, inf)", "train.ema_decay": "[0, 1)",
    "data.val_fraction": "[0, 1)", "data.val_clips": "[0, inf)", "data.min_rows_per_pass": "[0, inf)",
    "data.prep_cpus": "(0, inf)", "data.cache_mb": "[0, inf)",
    "run.max_failures": "[-1, inf)", "run.num_to_keep": "[1, inf)", "run.cpus_per_worker": "[0, inf)",
    "inference.overlap": "[0, 1)", "inference.batch_windows": "[1, inf)",
}


def _check_interval(dotted: str, value: float, interval: str) -> None:
    low, high = (float(x) for x in interval[1:-1].split(","))
    above = value > low if interval[0] == "(" else value >= low
    below = value < high if interval[-1] == ")" else value <= high
    if not (above and below):
        raise ConfigError(f"{dotted} must be in {interval}, got {value!r}")


def _split(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form section.field=value")
    key, value = item.split("=", 1)
    return key.strip(), _Raw(value)


#: A decimal number as people write it, exponent and all ("1e-3", "-2.5E+4").
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def yaml_float(value: Any) -> Any:
    """``value``, or the float a string such as "1e-3" writes: YAML 1.1 reads an exponent without
    a dot as a string, and ``lr: 1e-3`` was refused as "must be float, got str"."""
    return float(value) if isinstance(value, str) and _FLOAT.fullmatch(value.strip()) else value


class _Raw(str):
    """A command-line value: parsed as YAML unless the field is a string."""


def _check_type(value: Any, tp: Any, where: str) -> Any:
    if isinstance(value, _Raw):
        if tp is str:
            return str(value)
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"config field '{where}': cannot parse {str(value)!r}") from None
    origin = typing.get_origin(tp)
    if tp is float:
        value = yaml_float(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"config field '{where}' must be a finite number, got {value!r}")
        return float(value)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config field '{where}' must be a list, got {type(value).__name__}")
        return [_check_type(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp in (int, float, str, bool):
        if isinstance(value, bool) and tp is not bool or not isinstance(value, tp):
            raise ConfigError(
                f"config field '{where}' must be {tp.__name__}, got {type(value).__name__} ({value!r})"
            )
    return value


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config field '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(value, tp, f"{prefix}{name}")
    return cls(**kwargs)


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("clipsep_ray.presets").iterdir() if p.name.endswith(".yaml"))


def load_config(source: str = "tiny", overrides: list[str] | None = None) -> Config:
    """Load a preset name (``paper``, ``tiny``) or a YAML file, then apply overrides.

    A YAML file may name a ``preset:`` to start from; its other keys override it.
    """
    from clipsep_ray.storage import read_bytes

    if source in preset_names():
        text = resources.files("clipsep_ray.presets").joinpath(f"{source}.yaml").read_text()
    elif source.endswith((".yaml", ".yml")):
        try:
            text = read_bytes(source).decode("utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {source}") from None
    else:
        raise ConfigError(f"unknown preset '{source}' (presets: {', '.join(preset_names())}; or a .yaml file)")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping")
    base = data.pop("preset", None)
    cfg = load_config(base) if base else Config()
    cfg = cfg.override(flatten(data))
    return cfg.override(overrides or []).validate()


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {"section.field": value}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def save_config(cfg: Config, uri: str, endpoint: str | None = None) -> None:
    """Write the resolved config as YAML to any fsspec URI (atomically)."""
    from clipsep_ray.storage import write_text

    write_text(uri, yaml.safe_dump(cfg.to_dict(), sort_keys=False), endpoint)
