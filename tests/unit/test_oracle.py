"""Oracle masks on a synthetic two-source mixture: the front end and metrics together."""
import numpy as np
import torch

from clipsep_ray.audio.stft import SpectralFrontEnd
from clipsep_ray.config import load_config
from clipsep_ray.metrics import evaluate_mixture


def _sources(sr, n):
    t = torch.arange(n) / sr
    g = torch.Generator().manual_seed(0)
    harmonic = sum(0.3 / h * torch.sin(2 * np.pi * 220 * h * t) for h in range(1, 6))
    noise = torch.randn(n, generator=g)
    # A noise texture in the high band only: different spectra, as two unlike sound classes.
    spec = torch.fft.rfft(noise)
    spec[: int(len(spec) * 0.5)] = 0
    noise = torch.fft.irfft(spec, n)
    noise = 0.3 * noise / noise.abs().max()
    return torch.stack([harmonic, noise]) / 2


def test_oracle_masks_give_high_sdr():
    a = load_config("paper").audio
    fe = SpectralFrontEnd(a.sample_rate, a.n_fft, a.hop_length, a.win_length, a.clip_samples, warp_bins=0)
    src = _sources(a.sample_rate, a.clip_samples)
    mix = src.sum(0, keepdim=True)
    spec = fe.stft(mix)
    mags = fe.stft(src).abs().unsqueeze(0)
    mix_mag = spec.abs().unsqueeze(1)
    results = {}
    for name, binary in (("ibm", True), ("irm", False)):
        masks = fe.targets(mags, mix_mag, binary=binary)
        est = fe.reconstruct(masks, spec, a.clip_samples)[0]
        results[name] = evaluate_mixture(src, est, mix[0], num_samples=65280)
    for name, r in results.items():
        assert not r["skipped"]
        assert min(r["sdr"]) > 15, (name, r["sdr"])
        assert min(r["sdri"]) > 10, (name, r["sdri"])


def test_oracle_masks_on_warped_grid_still_separate():
    a = load_config("tiny").audio
    fe = SpectralFrontEnd.from_config(a)
    src = _sources(a.sample_rate, a.clip_samples)
    mix = src.sum(0, keepdim=True)
    spec = fe.stft(mix)
    masks = fe.targets(fe.stft(src).abs().unsqueeze(0), spec.abs().unsqueeze(1), binary=True)
    est = fe.reconstruct(masks, spec, a.clip_samples)[0]
    r = evaluate_mixture(src, est, mix[0])
    assert min(r["sdri"]) > 5, r["sdri"]
