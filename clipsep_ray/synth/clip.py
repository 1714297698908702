"""A small CLIP trained contrastively on the synthetic world's pictures and captions.

The architecture is the open_clip model config ``synth-clip``
(``clipsep_ray/models/clip_configs/synth-clip.json``): open_clip's ModifiedResNet image
tower (layers [1, 1, 1, 1], width 16, 64x64 pictures, attention pooling) and a 3-layer
text transformer (width 128, context 32) with the standard 49408-token vocabulary, so
open_clip's default tokenizer works; embeddings are 128-d. A tiny ViT (patch 8, 4 layers,
width 128) was tried first: on these 2 cores it was 4-6x slower per step and reached 51%
held-out accuracy where the ResNet reached 82% after the same 200 steps.

The trained weights are saved as a plain state_dict (``torch.save``, loadable with
``weights_only=True``), so after ``register_configs()``::

    open_clip.create_model_and_transforms("synth-clip", pretrained=".../synth-clip.pth")

loads it like any open_clip checkpoint. The folder also gets an ``open_clip_config.json``,
so ``create_model_and_transforms("local-dir:<folder>")`` works without registration.

Training pictures are made as query pictures will be: a frame of a random scene at a
random time, JPEG-compressed half of the time (ingested frames are JPEG), then open_clip's
validation transform (resize to 64, centre crop, CLIP normalisation). Each step takes a
batch of pictures and one caption per class, each drawn from ``CAPTION_TEMPLATES``; the
loss is the symmetric CLIP cross-entropy where a picture's positive is the caption of its
class. Captions are deduplicated per class: no picture is pushed away from a caption that
describes it, the text tower costs little, and tensor shapes stay fixed (CPU kernels stay
warm). Zero-shot accuracy: the prompt "a photo of {label}." for every class, the nearest
by cosine similarity, on held-out pictures drawn from a separate seed stream.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from clipsep_ray.config import QueryConfig
from clipsep_ray.synth.world import CLASSES, class_rng, make_scene

MODEL_NAME = "synth-clip"
CONFIG_DIR = Path(__file__).resolve().parent.parent / "models" / "clip_configs"
WEIGHTS_NAME = "synth-clip.pth"
METRICS_NAME = "synth-clip.json"
CLIP_VERSION = 2

#: Training captions (``{}`` = class name); they cover the prompt templates of docs/METHOD.md.
CAPTION_TEMPLATES = [
    "a photo of {}", "a photo of {}.", "a photo of a {}.", "a picture of a {}.", "{}",
    "a photo of the small {}.", "a low resolution photo of a {}.", "a photo of many {}.",
    "the sound of {}", "a video of {}.", "a drawing of a {}.", "a photo of the {}.",
]
EVAL_TEMPLATE = "a photo of {}."
ENSEMBLE_TEMPLATES = QueryConfig().prompt_ensemble  # the evaluation's prompt ensemble

# stream keys for class_rng(seed, _K_CLIP, part, class, j)
_K_CLIP, _TRAIN, _HELDOUT = 1000, 0, 1


def register_configs() -> None:
    """Make ``synth-clip`` known to open_clip (the package's config folder; idempotent)."""
    from clipsep_ray.models.query import register_clip_configs

    register_clip_configs()


def model_config() -> dict:
    return json.loads((CONFIG_DIR / f"{MODEL_NAME}.json").read_text())


@dataclass(frozen=True)
class ClipSpec:
    """Everything that determines the trained CLIP (recorded next to the checkpoint)."""

    seed: int = 0
    train_per_class: int = 400
    heldout_per_class: int = 50
    steps: int = 800
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 40
    shift: int = 4  # augmentation: random translation of up to +-shift pixels
    picture_size: int = 224  # pictures are rendered as video frames are, then preprocessed
    precision: str = "auto"  # auto: bf16 autocast where the CPU/GPU has it (1.6x faster here) | fp32 | bf16
    version: int = CLIP_VERSION

    def __post_init__(self):
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be auto, fp32 or bf16, got {self.precision!r}")


def world_picture(label: str, rng, size: int = 224, jpeg_p: float = 0.5):
    """A picture as the pipeline sees one: a video frame at a random time of a random scene,
    JPEG-compressed (quality 30-90) with probability ``jpeg_p``, as ingested frames are."""
    import io

    from PIL import Image

    pic = make_scene(label, rng, size).frame(float(rng.uniform(0.0, 10.0)))
    if rng.random() < jpeg_p:
        buf = io.BytesIO()
        pic.save(buf, format="JPEG", quality=int(rng.integers(30, 91)))
        pic = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return pic


def picture_set(seed: int, per_class: int, part: int, preprocess, size: int = 224):
    """Preprocessed pictures: (images float32 (N, 3, H, W), labels int64 (N,)), class-major.

    ``part`` picks an independent stream (0: training, 1: held-out).
    """
    import torch

    images, labels = [], []
    for ci, label in enumerate(CLASSES):
        for j in range(per_class):
            images.append(preprocess(world_picture(label, class_rng(seed, _K_CLIP, part, ci, j), size)))
            labels.append(ci)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def _lr_at(step: int, spec: ClipSpec) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    frac = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


def _shifted(padded, idx, pad, gen):
    """Pictures ``idx`` of ``padded`` (N, 3, H + 2 pad, W + 2 pad), each shifted by up to +-pad px."""
    import torch

    if not pad:
        return padded[idx]
    size = padded.shape[-1] - 2 * pad
    off = torch.randint(0, 2 * pad + 1, (len(idx), 2), generator=gen).tolist()
    return torch.stack([padded[i, :, a:a + size, b:b + size] for i, (a, b) in zip(idx.tolist(), off)])


def class_text_features(model, tokenizer, templates=(EVAL_TEMPLATE,)):
    """L2-normalised text features (num_classes, D), averaged over ``templates``."""
    import torch

    with torch.no_grad():
        feats = []
        for t in templates:
            f = model.encode_text(tokenizer([t.format(c) for c in CLASSES]))
            feats.append(f / f.norm(dim=-1, keepdim=True))
        f = torch.stack(feats).mean(0)
    return f / f.norm(dim=-1, keepdim=True)


def zero_shot_accuracy(model, tokenizer, images, labels, templates=(EVAL_TEMPLATE,), batch: int = 256) -> float:
    """Fraction of ``images`` whose nearest class prompt is their own class."""
    import torch

    model.eval()
    text = class_text_features(model, tokenizer, templates)
    correct = 0
    with torch.no_grad():
        for k in range(0, len(images), batch):
            f = model.encode_image(images[k:k + batch])
            pred = (f / f.norm(dim=-1, keepdim=True) @ text.T).argmax(-1)
            correct += int((pred == labels[k:k + batch]).sum())
    return correct / len(images)


def train_clip(spec: ClipSpec, out_dir, log=print, return_model: bool = False, threads: int | None = None):
    """Render the pictures, train the small CLIP, save it into ``out_dir``.

    Returns the metrics dict (also written to ``out_dir/synth-clip.json``), or
    ``(metrics, model)`` with the trained model in eval mode when ``return_model``.
    ``threads``: torch intra-op threads while training (default: leave torch's setting).
    One thread is much safer when other processes compete for the cores: OpenMP's
    busy-waiting made a 2-thread run here up to 20x slower under contention.
    """
    import torch

    before = torch.get_num_threads()
    if threads and threads != before:
        torch.set_num_threads(threads)
    try:
        return _train_clip(spec, out_dir, log, return_model)
    finally:
        # Only ever LOWER the thread count in-process: with torch 2.14.1's MKL, any
        # set_num_threads(n >= 2) call breaks torch.linalg.solve afterwards (DLASWP errors),
        # and with it BSSEval. The lower count stays for the rest of the process.
        if torch.get_num_threads() > before:
            torch.set_num_threads(before)


def _train_clip(spec: ClipSpec, out_dir, log, return_model: bool):
    import open_clip
    import torch
    import torch.nn.functional as F

    register_configs()
    t0 = time.time()
    torch.manual_seed(spec.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=None)
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    images, labels = picture_set(spec.seed, spec.train_per_class, _TRAIN, preprocess, spec.picture_size)
    held_images, held_labels = picture_set(spec.seed, spec.heldout_per_class, _HELDOUT, preprocess,
                                           spec.picture_size)
    t_data = time.time() - t0
    log(f"synth-clip: {len(images)} training and {len(held_images)} held-out pictures in {t_data:.1f} s")

    captions = torch.stack([tokenizer([t.format(c) for c in CLASSES]) for t in CAPTION_TEMPLATES])  # (T, C, L)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": spec.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=spec.lr)
    gen = torch.Generator().manual_seed(spec.seed)
    model = model.to(memory_format=torch.channels_last)  # 1.5x faster convolutions on CPU
    from clipsep_ray.runtime import autocast_dtype

    amp = autocast_dtype(spec.precision, torch.device("cpu"))  # weights and optimiser stay fp32
    pad = spec.shift
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate") if pad else images
    model.train()
    t1, loss_ema = time.time(), None
    for step in range(spec.steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, spec)
        idx = torch.randint(len(images), (spec.batch_size,), generator=gen)
        y = labels[idx]
        tmpl = torch.randint(len(CAPTION_TEMPLATES), (len(CLASSES),), generator=gen)
        batch = _shifted(padded, idx, pad, gen).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            img_f = model.encode_image(batch)
            txt_f = model.encode_text(captions[tmpl, torch.arange(len(CLASSES))])
        img_f, txt_f = F.normalize(img_f.float(), dim=-1), F.normalize(txt_f.float(), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img_f @ txt_f.T  # (B, classes)
        pos = (y[:, None] == torch.arange(len(CLASSES))[None, :]).float()
        present = pos.sum(0) > 0  # captions without a picture in the batch only act as negatives
        loss_i = F.cross_entropy(logits, y)
        loss_t = -(F.log_softmax(logits.T[present], dim=-1) * pos.T[present]).sum(-1).div(pos.sum(0)[present]).mean()
        loss = 0.5 * (loss_i + loss_t)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        if (step + 1) % 50 == 0 or step + 1 == spec.steps:
            log(f"synth-clip: step {step + 1}/{spec.steps} loss {loss_ema:.3f} ({time.time() - t1:.0f} s)")
    t_train = time.time() - t1

    acc = zero_shot_accuracy(model, tokenizer, held_images, held_labels)
    acc_ens = zero_shot_accuracy(model, tokenizer, held_images, held_labels, ENSEMBLE_TEMPLATES)
    acc_train = zero_shot_accuracy(model, tokenizer, images[:: max(1, len(images) // 700)],
                                   labels[:: max(1, len(images) // 700)])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / WEIGHTS_NAME
    tmp = weights.with_name(weights.name + ".tmp")
    torch.save({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, weights)
    (out_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_config()}, indent=2))
    metrics = {
        "spec": asdict(spec), "model_name": MODEL_NAME, "model_cfg": model_config(), "classes": CLASSES,
        "checkpoint": str(weights), "zero_shot_accuracy": acc, "zero_shot_prompt": EVAL_TEMPLATE,
        "zero_shot_accuracy_ensemble": acc_ens, "train_accuracy": acc_train,
        "heldout_pictures": len(held_images), "train_pictures": len(images),
        "data_seconds": round(t_data, 1), "train_seconds": round(t_train, 1),
        "total_seconds": round(time.time() - t0, 1), "final_loss": loss_ema,
        "torch_threads": torch.get_num_threads(), "autocast": str(amp).replace("torch.", "") if amp else "fp32",
    }
    (out_dir / METRICS_NAME).write_text(json.dumps(metrics, indent=2))
    log(f"synth-clip: zero-shot accuracy {acc:.4f} (ensemble {acc_ens:.4f}) on {len(held_images)} "
        f"held-out pictures; saved {weights}")
    return (metrics, model.eval()) if return_model else metrics


def video_frame_accuracy(checkpoint, index_csv, subset: str | None = "test", limit: int | None = None) -> dict:
    """Zero-shot accuracy on a world's videos: frames at 1 fps, prompt "a photo of {label}.".

    Frames are decoded with PyAV and go through the model's own preprocessing; rows are
    read from ``index_csv`` (paths relative to its folder), optionally one ``subset``.
    """
    import csv

    import av
    import torch

    model, preprocess, tokenizer = load_clip(checkpoint)
    text = class_text_features(model, tokenizer)
    root = Path(index_csv).parent
    with open(index_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if subset is None or r["subset"] == subset][:limit]
    correct = total = 0
    for r in rows:
        with av.open(str(root / r["path"])) as c:
            frames = [fr.to_image() for fr in c.decode(video=0)][:: int(r["fps"])]
        with torch.no_grad():
            f = model.encode_image(torch.stack([preprocess(im) for im in frames]))
        pred = (f / f.norm(dim=-1, keepdim=True) @ text.T).argmax(-1)
        correct += int((pred == CLASSES.index(r["label"])).sum())
        total += len(frames)
    return {"video_frame_accuracy": correct / max(1, total), "frames": total, "clips": len(rows)}


def load_clip(checkpoint, device: str = "cpu"):
    """(model in eval mode, preprocess_val, tokenizer) from a saved synth-clip checkpoint."""
    import open_clip

    register_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL_NAME, pretrained=str(checkpoint),
                                                                 device=device)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(MODEL_NAME)


def ensure_clip(out_dir, seed: int = 0, log=print, threads: int | None = None, **spec_kwargs) -> dict:
    """Train unless ``out_dir`` already holds a CLIP trained with the same spec and config."""
    spec = ClipSpec(seed=seed, **spec_kwargs)
    out_dir = Path(out_dir)
    try:
        old = json.loads((out_dir / METRICS_NAME).read_text())
    except (OSError, ValueError):
        old = None
    if (old and old.get("spec") == asdict(spec) and old.get("model_cfg") == model_config()
            and (out_dir / WEIGHTS_NAME).exists()):
        return {**old, "checkpoint": str(out_dir / WEIGHTS_NAME), "cached": True}
    return {**train_clip(spec, out_dir, log=log, threads=threads), "cached": False}
