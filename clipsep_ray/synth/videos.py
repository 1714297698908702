"""Write the synthetic world as real MP4 videos plus a sidecar index, and cache it.

Layout of a world folder::

    OUT_DIR/world.json             parameters, version, counts, timing ("complete": true when done)
    OUT_DIR/index.csv              every clip; columns INDEX_COLUMNS; paths relative to OUT_DIR
    OUT_DIR/{train,val,test}.csv   the same rows, one subset per file
    OUT_DIR/{train,val,test}/NNNNN.mp4

Each MP4 holds MPEG-4 part 2 video (or H.264 with ``codec="libx264"``), ``fps``
frames per second, ``size`` x ``size`` pixels, and AAC mono audio at 16 kHz; clips last
8-10 s (a whole number of frames). ``split`` chooses the training condition:

- ``clean``: one on-screen source per clip (what the video shows is what you hear);
- ``noisy``: the on-screen source plus an off-screen source of another class at an
  on/off-screen SNR drawn from ``offscreen_snr_db`` and background noise at an SNR
  (relative to the on-screen source) drawn from ``noise_snr_db``, as in VGGSound; only a
  ``noisy_fraction`` of the training clips (default all) is noisy, the rest are clean.

Validation and test clips are always clean (their sources serve as references, as for
the paper's clean test sets). Labels are class-balanced within each subset (counts
differ by at most one), and clip i of a subset does not depend on how many clips were
asked for: a world of 100 clips is a prefix of a world of 300 with the same seed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from clipsep_ray.synth.world import CLASSES, SAMPLE_RATE, class_rng, make_scene, render_noise, render_sound

#: Bump when generators change in a way that changes outputs (invalidates caches).
WORLD_VERSION = 2  # 2: room tone under every clip
SUBSETS = ("train", "val", "test")
INDEX_COLUMNS = ["path", "label", "subset", "clip_id", "duration_s", "n_frames", "fps", "sample_rate",
                 "offscreen_label", "offscreen_snr_db", "noise_snr_db"]

# stream keys for class_rng(seed, subset, index, KEY)
_K_LABELS, _K_LEN, _K_SOUND, _K_PICTURE, _K_OFF, _K_NOISE, _K_OFF_SOUND, _K_ROOM, _K_FRACTION = range(9)


@dataclass(frozen=True)
class WorldSpec:
    """Everything that determines a world's files (recorded in ``world.json``)."""

    clips: int = 280                 # training clips
    split: str = "clean"             # clean | noisy (training condition)
    seed: int = 0
    val_clips: int | None = None     # default: max(#classes, clips // 10)
    test_clips: int | None = None    # default: max(#classes, clips // 10)
    fps: int = 4
    size: int = 224
    min_seconds: float = 8.0
    max_seconds: float = 10.0
    offscreen_snr_db: tuple[float, float] = (-2.0, 8.0)
    noise_snr_db: tuple[float, float] = (10.0, 30.0)
    room_tone_db: tuple[float, float] = (30.0, 45.0)  # on-screen source RMS over room-tone RMS, every clip
    noisy_fraction: float = 1.0      # share of a noisy world's training clips that are noisy
    codec: str = "mpeg4"             # mpeg4 (byte-deterministic) | libx264 (see write_mp4)
    version: int = field(default=WORLD_VERSION)

    def __post_init__(self):
        if self.split not in ("clean", "noisy"):
            raise ValueError(f"split must be 'clean' or 'noisy', got {self.split!r}")
        if self.clips < 1:
            raise ValueError(f"clips must be >= 1, got {self.clips}")
        if self.codec not in ("mpeg4", "libx264"):
            raise ValueError(f"codec must be 'mpeg4' or 'libx264', got {self.codec!r}")
        if not 0.0 <= self.noisy_fraction <= 1.0:
            raise ValueError(f"noisy_fraction must be in [0, 1], got {self.noisy_fraction}")
        for key in ("offscreen_snr_db", "noise_snr_db"):
            lo, hi = getattr(self, key)
            if lo > hi:
                raise ValueError(f"{key} must be (low, high) with low <= high, got {(lo, hi)}")
        if self.min_seconds * self.fps < 8 or self.max_seconds < self.min_seconds:
            raise ValueError("clips need at least 8 s (8 frames at 1 fps) and max_seconds >= min_seconds")

    def counts(self) -> dict[str, int]:
        dflt = max(len(CLASSES), self.clips // 10)
        return {"train": self.clips,
                "val": dflt if self.val_clips is None else self.val_clips,
                "test": dflt if self.test_clips is None else self.test_clips}

    def to_json(self) -> dict:
        d = asdict(self)
        for key in ("offscreen_snr_db", "noise_snr_db", "room_tone_db"):
            d[key] = list(d[key])
        if d["noisy_fraction"] == 1.0:
            del d["noisy_fraction"]  # the default: worlds cached before the option stay valid
        return d


def clip_label(seed: int, subset: str, index: int) -> str:
    """Class of clip ``index``: each block of len(CLASSES) clips is a permutation of the classes."""
    block, pos = divmod(index, len(CLASSES))
    perm = class_rng(seed, SUBSETS.index(subset), block, _K_LABELS).permutation(len(CLASSES))
    return CLASSES[perm[pos]]


def clip_plan(spec: WorldSpec, subset: str, index: int) -> dict:
    """The index row of one clip (no rendering)."""
    s = SUBSETS.index(subset)
    label = clip_label(spec.seed, subset, index)
    lo, hi = math.ceil(spec.min_seconds * spec.fps), math.floor(spec.max_seconds * spec.fps)
    n_frames = int(class_rng(spec.seed, s, index, _K_LEN).integers(lo, hi + 1))
    row = {"path": f"{subset}/{index:05d}.mp4", "label": label, "subset": subset,
           "clip_id": f"synth-{spec.split}-s{spec.seed}-{subset}-{index:05d}",
           "duration_s": n_frames / spec.fps, "n_frames": n_frames, "fps": spec.fps,
           "sample_rate": SAMPLE_RATE, "offscreen_label": "", "offscreen_snr_db": "", "noise_snr_db": ""}
    noisy = spec.noisy_fraction >= 1.0 or class_rng(spec.seed, s, index, _K_FRACTION).random() < spec.noisy_fraction
    if spec.split == "noisy" and subset == "train" and noisy:
        rng = class_rng(spec.seed, s, index, _K_OFF)
        others = [c for c in CLASSES if c != label]
        row["offscreen_label"] = others[int(rng.integers(len(others)))]
        row["offscreen_snr_db"] = round(float(rng.uniform(*spec.offscreen_snr_db)), 2)
        row["noise_snr_db"] = round(float(rng.uniform(*spec.noise_snr_db)), 2)
    return row


def clip_audio(spec: WorldSpec, row: dict, index: int) -> dict[str, np.ndarray]:
    """Audio of a clip: {'mixture', 'onscreen'} (+ 'offscreen', 'noise' when noisy); float32 (n,).

    Every clip carries a faint room tone (coloured noise ``room_tone_db`` below the sound),
    part of its on-screen audio, as every real recording has one. Without it the event
    sounds (barks, chirps, ticks) sit in digital silence, two of them can be disjoint in
    time, and the oracle masks then rebuild a source almost exactly: BSSEval SDRs of
    70-146 dB that made the oracle mean a statistic of a handful of pairs.
    """
    s = SUBSETS.index(row["subset"])
    seconds = row["duration_s"]
    on = render_sound(row["label"], class_rng(spec.seed, s, index, _K_SOUND), seconds).astype(np.float64)
    rng_room = class_rng(spec.seed, s, index, _K_ROOM)
    room_db = float(rng_room.uniform(*spec.room_tone_db))
    on = on + render_noise(rng_room, seconds).astype(np.float64) * np.sqrt(np.mean(on ** 2) / 10 ** (room_db / 10))
    on = (on * min(1.0, 0.99 / np.abs(on).max())).astype(np.float32)
    out = {"onscreen": on}
    mix = on.astype(np.float64)
    if row["offscreen_label"]:
        rng = class_rng(spec.seed, s, index, _K_OFF_SOUND)
        off = render_sound(row["offscreen_label"], rng, seconds).astype(np.float64)
        p_on = np.mean(mix ** 2)
        off *= np.sqrt(p_on / np.mean(off ** 2) / 10 ** (row["offscreen_snr_db"] / 10))
        noise = render_noise(class_rng(spec.seed, s, index, _K_NOISE), seconds).astype(np.float64)
        noise *= np.sqrt(p_on / 10 ** (row["noise_snr_db"] / 10))
        mix = mix + off + noise
        peak = np.abs(mix).max()
        if peak > 0.99:  # keep the file unclipped; scale every part the same way
            mix, off, noise = mix * 0.99 / peak, off * 0.99 / peak, noise * 0.99 / peak
            out["onscreen"] = (on * (0.99 / peak)).astype(np.float32)
        out["offscreen"], out["noise"] = off.astype(np.float32), noise.astype(np.float32)
    out["mixture"] = mix.astype(np.float32)
    return out


def video_codec(preferred: str = "mpeg4") -> str:
    """``preferred`` if this PyAV build has its encoder, else MPEG-4 part 2."""
    import av

    return preferred if preferred in av.codecs_available else "mpeg4"


def write_mp4(path: Path, frames, fps: int, audio: np.ndarray, sr: int, codec: str = "mpeg4") -> None:
    """Mux RGB frames (iterable of uint8 (H, W, 3)) and mono float audio (n,) into an MP4.

    ``mpeg4`` (MPEG-4 part 2, the default) gives the same bytes on every run. PyAV's
    libx264 (H.264) does not quite: measured here, encoding the same frames twice in one
    process gave different bitstreams (pixel differences of a few levels), so H.264
    worlds are deterministic in content, not in bytes.
    """
    import av

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.mp4")
    codec = video_codec(codec)
    with av.open(str(tmp), "w") as out:
        v, a = None, out.add_stream("aac", rate=sr)
        a.layout, a.bit_rate = "mono", 96000
        a.options = {"aac_coder": "fast"}  # 3x faster than the default coder, same quality here
        for i, img in enumerate(frames):
            if v is None:
                v = out.add_stream(codec, rate=fps)
                v.height, v.width = img.shape[:2]
                v.pix_fmt = "yuv420p"
                v.options = {"preset": "veryfast", "crf": "20"} if codec == "libx264" else {"qscale": "3"}
                v.codec_context.thread_count = 1  # threads must not change the bytes
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = i
            out.mux(v.encode(frame))
        out.mux(v.encode())
        step = 4096
        for start in range(0, len(audio), step):
            chunk = np.ascontiguousarray(audio[start:start + step], dtype=np.float32)[None, :]
            af = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            af.sample_rate, af.pts = sr, start
            out.mux(a.encode(af))
        out.mux(a.encode())
    os.replace(tmp, path)


def render_clip(spec: WorldSpec, subset: str, index: int, out_dir: Path) -> dict:
    """Render and write one clip (skipped if its file exists); returns its index row."""
    row = clip_plan(spec, subset, index)
    path = Path(out_dir) / row["path"]
    if not path.exists():
        audio = clip_audio(spec, row, index)["mixture"]
        scene = make_scene(row["label"], class_rng(spec.seed, SUBSETS.index(subset), index, _K_PICTURE), spec.size)
        frames = (np.asarray(scene.frame(i / spec.fps)) for i in range(row["n_frames"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        write_mp4(path, frames, spec.fps, audio, SAMPLE_RATE, spec.codec)
    return row


def _render_many(args):
    spec, jobs, out_dir = args
    return [render_clip(spec, subset, i, out_dir) for subset, i in jobs]


def _write_csv(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=INDEX_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _read_manifest(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / "world.json").read_text())
    except (OSError, ValueError):
        return None


def generate_world(spec: WorldSpec, out_dir, workers: int | None = None) -> dict:
    """Render every clip of ``spec`` into ``out_dir`` (existing clip files are kept)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    old = _read_manifest(out_dir)
    if old is not None and old.get("spec") != spec.to_json():  # files of another world: start over
        for subset in SUBSETS:
            for p in (out_dir / subset).glob("*.mp4"):
                p.unlink()
    manifest = {"spec": spec.to_json(), "complete": False}
    (out_dir / "world.json").write_text(json.dumps(manifest, indent=2))
    t0 = time.time()
    jobs = [(s, i) for s, n in spec.counts().items() for i in range(n)]
    workers = workers or min(2, os.cpu_count() or 1)
    if workers <= 1 or len(jobs) < 8:
        rows = _render_many((spec, jobs, out_dir))
    else:
        chunks = [jobs[k::workers * 4] for k in range(workers * 4)]
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            parts = list(pool.map(_render_many, [(spec, c, out_dir) for c in chunks]))
        order = {j: k for k, j in enumerate(jobs)}
        rows = sorted((r for p in parts for r in p), key=lambda r: order[(r["subset"], int(r["path"][-9:-4]))])
    _write_csv(out_dir / "index.csv", rows)
    for subset in SUBSETS:
        _write_csv(out_dir / f"{subset}.csv", [r for r in rows if r["subset"] == subset])
    per_class = {s: {c: sum(1 for r in rows if r["subset"] == s and r["label"] == c) for c in CLASSES}
                 for s in SUBSETS}
    manifest.update(complete=True, counts=spec.counts(), per_class=per_class, classes=CLASSES,
                    video_codec=video_codec(spec.codec), seconds=round(time.time() - t0, 2), workers=workers)
    (out_dir / "world.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def ensure_world(out_dir, clips: int = 280, seed: int = 0, split: str = "clean",
                 workers: int | None = None, **spec_kwargs) -> dict:
    """Generate the world unless ``out_dir`` already holds a complete one with the same spec.

    Returns the manifest plus ``cached`` (bool), ``index`` (path of index.csv) and ``out_dir``.
    """
    spec = WorldSpec(clips=clips, seed=seed, split=split, **spec_kwargs)
    out_dir = Path(out_dir)
    old = _read_manifest(out_dir)
    cached = bool(old and old.get("complete") and old.get("spec") == spec.to_json()
                  and (out_dir / "index.csv").exists()
                  and all((out_dir / subset / f"{i:05d}.mp4").exists()
                          for subset, n in spec.counts().items() for i in range(n)))
    manifest = old if cached else generate_world(spec, out_dir, workers)
    return {**manifest, "cached": cached, "index": str(out_dir / "index.csv"), "out_dir": str(out_dir)}
