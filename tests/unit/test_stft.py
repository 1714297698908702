import math

import pytest
import torch

from clipsep_ray.audio.stft import SpectralFrontEnd
from clipsep_ray.config import load_config


@pytest.fixture(params=["tiny", "paper"])
def frontend(request):
    return SpectralFrontEnd.from_config(load_config(request.param).audio), load_config(request.param).audio


def test_shapes(frontend):
    fe, a = frontend
    x = torch.randn(2, a.clip_samples) * 0.1
    spec, mag, log_mag = fe.analyse(x)
    assert spec.shape == (2, a.freq_bins, a.num_frames) and spec.is_complex()
    assert mag.shape == (2, 1, a.freq_bins, a.num_frames)
    assert log_mag.shape == (2, 1, a.model_bins, a.num_frames)
    masks = torch.rand(2, 3, a.model_bins, a.num_frames)
    assert fe.unwarp(masks).shape == (2, 3, a.freq_bins, a.num_frames)
    assert fe.reconstruct(masks, spec, a.clip_samples).shape == (2, 3, a.clip_samples)


def test_istft_inverts_stft(frontend):
    fe, a = frontend
    x = torch.rand(3, a.clip_samples) - 0.5
    y = fe.istft(fe.stft(x), a.clip_samples)
    assert torch.allclose(x, y, atol=1e-5)


def test_warp_then_unwarp_of_smooth_field_is_near_identity(frontend):
    fe, a = frontend
    f = torch.linspace(0, 1, a.freq_bins)[:, None]
    t = torch.linspace(0, 1, a.num_frames)[None, :]
    field = (0.5 + 0.3 * torch.sin(2 * math.pi * f) * torch.cos(2 * math.pi * t))[None, None]
    back = fe.unwarp(fe.warp(field))
    assert back.shape == field.shape
    assert (back - field).abs().max() < 0.02


def test_warp_expands_low_frequencies():
    a = load_config("paper").audio
    fe = SpectralFrontEnd.from_config(a)
    lin = torch.zeros(1, 1, a.freq_bins, a.num_frames)
    lin[:, :, :32] = 1.0  # the lowest 0.5 kHz
    rows = (fe.warp(lin)[0, 0, :, 0] > 0.5).sum().item()
    assert rows > 60  # log scale gives the low band far more than its linear share (16 of 256 rows)


def test_targets_binary_and_ratio():
    fe = SpectralFrontEnd.from_config(load_config("tiny").audio)
    s1, s2 = torch.rand(1, 1, 129, 256), torch.rand(1, 1, 129, 256) * 0.1
    mix = s1 + s2
    tb = fe.targets(torch.cat([s1, s2], 1), mix, binary=True)
    assert set(tb.unique().tolist()) <= {0.0, 1.0}
    assert tb[:, 0].mean() > 0.9 and tb[:, 1].mean() < 0.1
    tr = fe.targets(torch.cat([s1, s2], 1), mix, binary=False)
    assert tr.min() >= 0 and tr.max() <= 1
    # Per-bin normalisation: ratio targets of additive magnitudes sum to ~1 everywhere,
    # independent of the other items in the batch.
    assert torch.allclose(tr.sum(1), torch.ones_like(tr.sum(1)), atol=1e-4)
    tr2 = fe.targets(torch.cat([torch.cat([s1, s2], 1), 5 * torch.cat([s1, s2], 1)]), torch.cat([mix, 5 * mix]),
                     binary=False)
    assert torch.allclose(tr2[0], tr[0], atol=1e-5)
