"""The class registry of the synthetic world: names, sounds, pictures.

``CLASSES`` lists the 14 class names (what a person would type as a query). For each,
``render_sound`` draws a clip of audio and ``render_picture``/``make_scene`` draw what a
camera sees. Everything is a pure function of the ``numpy.random.Generator`` passed in.

Loudness: each sound is scaled to an RMS level drawn uniformly in [-26, -16] dBFS and
then, if needed, scaled down so its peak is at most 0.9 (sparse sounds such as a clock
end up quieter than their RMS draw; nothing is clipped).
"""

from __future__ import annotations

import numpy as np

from clipsep_ray.synth import pictures, sounds

#: Sound classes, in a fixed order (class index = position).
CLASSES: list[str] = list(sounds.GENERATORS)

#: Coarse kind of each class (documentation and tests: which are harmonic or noise-like).
KINDS: dict[str, str] = {
    "violin": "harmonic", "flute": "harmonic", "trumpet": "harmonic", "piano": "harmonic",
    "guitar": "harmonic", "church bell": "inharmonic", "dog barking": "animal",
    "bird chirping": "animal", "siren": "harmonic", "engine": "noise", "clock ticking": "impulsive",
    "drum": "impulsive", "rain": "noise", "wind": "noise",
}

SAMPLE_RATE = 16000
PEAK_MAX = 0.9
RMS_DB_RANGE = (-26.0, -16.0)

assert set(KINDS) == set(CLASSES) == set(pictures.ICONS)


def _check_label(label: str) -> None:
    if label not in sounds.GENERATORS:
        raise ValueError(f"unknown class {label!r}; the synthetic world has: {', '.join(CLASSES)}")


def render_sound(label: str, rng: np.random.Generator, seconds: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """One clip of class ``label``: float32 array (round(seconds * sr),), mono, in [-0.9, 0.9]."""
    _check_label(label)
    n = int(round(seconds * sr))
    x = sounds.GENERATORS[label](rng, n, sr)
    x = x - x.mean()
    rms = float(np.sqrt(np.mean(x ** 2)))
    if not np.isfinite(rms) or rms <= 0:
        raise RuntimeError(f"generator for {label!r} produced a silent or invalid clip")
    x = x * (10.0 ** (rng.uniform(*RMS_DB_RANGE) / 20.0) / rms)
    peak = float(np.abs(x).max())
    if peak > PEAK_MAX:
        x *= PEAK_MAX / peak
    return x.astype(np.float32)


def render_noise(rng: np.random.Generator, seconds: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Background noise (unit RMS, float32): white-to-brown coloured noise, random tilt."""
    n = int(round(seconds * sr))
    slope = rng.uniform(0.0, 2.0)  # 0 white, 1 pink, 2 brown (power ~ 1/f^slope)
    x = sounds._colored_noise(rng, n, sr, lambda f: 1.0 / np.maximum(f, 20.0) ** (slope / 2))
    x = x - x.mean()
    return (x / (np.sqrt(np.mean(x ** 2)) + 1e-12)).astype(np.float32)


def make_scene(label: str, rng: np.random.Generator, size: int = 224) -> pictures.Scene:
    """A scene with one on-screen ``label`` object; ``scene.frame(t)`` -> PIL RGB (size, size)."""
    _check_label(label)
    return pictures.Scene(label, rng, size)


def render_picture(label: str, rng: np.random.Generator, size: int = 224):
    """One still picture of ``label``: PIL.Image, RGB, (size, size)."""
    return make_scene(label, rng, size).frame(0.0)


def class_rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent generator for (seed, *keys): the same keys give the same stream."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), *[int(k) for k in keys]]))
