"""On-device mixing (clipsep_ray.data.mixing): plain torch, no Ray."""
from __future__ import annotations

import pytest
import torch

from clipsep_ray.audio.stft import SpectralFrontEnd
from clipsep_ray.config import MixingConfig, load_config
from clipsep_ray.data.mixing import mix_batch, prepare_targets


def _batch(b=8, t=4096, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = (torch.rand(b, t, generator=g) * 2 - 1) * 0.9
    queries = torch.randn(b, d, generator=g)
    return audio, queries


@pytest.mark.parametrize("n", [2, 3])
def test_sources_sum_to_mixture_and_no_self_pairing(n):
    audio, queries = _batch()
    cfg = MixingConfig(num_sources=n)
    for seed in range(20):
        out = mix_batch(audio, queries, cfg, torch.Generator().manual_seed(seed))
        b = audio.shape[0]
        assert out["sources"].shape == (b, n, audio.shape[1])
        assert out["mixture"].shape == (b, audio.shape[1])
        assert out["queries"].shape == (b, n, queries.shape[1])
        torch.testing.assert_close(out["sources"].sum(1), out["mixture"])
        idx = out["index"]
        assert torch.equal(idx[:, 0], torch.arange(b))  # every row is the target of one mixture
        for row in idx.tolist():
            assert len(set(row)) == n  # no clip with itself, distinct interferers
        # every row is used exactly n times across the batch
        assert torch.equal(torch.bincount(idx.reshape(-1), minlength=b), torch.full((b,), n))


def test_queries_and_gains_belong_to_their_sources():
    audio, queries = _batch(b=6)
    cfg = MixingConfig(num_sources=2, gain_min=0.5, gain_max=1.5)
    out = mix_batch(audio, queries, cfg, torch.Generator().manual_seed(3))
    idx, gains = out["index"], out["gains"]
    assert ((gains >= 0.5) & (gains < 1.5)).all()
    torch.testing.assert_close(out["queries"], queries[idx])
    expected = (audio[idx] * gains[..., None]).clamp(-1, 1) / 2
    torch.testing.assert_close(out["sources"], expected)
    assert out["sources"].abs().max() <= 0.5 + 1e-6  # clipped to [-1, 1], then / N


def test_gains_cover_the_range_and_are_reproducible():
    audio, queries = _batch(b=32)
    cfg = MixingConfig()
    a = mix_batch(audio, queries, cfg, torch.Generator().manual_seed(7))
    b = mix_batch(audio, queries, cfg, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a["mixture"], b["mixture"])
    assert torch.equal(a["index"], b["index"])
    assert a["gains"].min() < 0.7 and a["gains"].max() > 1.3


def test_clip_index_avoids_mixing_a_clip_with_its_duplicate():
    audio, queries = _batch(b=4)
    clip_index = torch.tensor([10, 10, 20, 30])  # rows 0 and 1 hold the same clip
    for seed in range(10):
        out = mix_batch(audio, queries, MixingConfig(), torch.Generator().manual_seed(seed), clip_index=clip_index)
        ci = clip_index[out["index"]]
        assert (ci[:, 0] != ci[:, 1]).all()


def test_batch_smaller_than_sources_is_an_error():
    audio, queries = _batch(b=1)
    with pytest.raises(ValueError, match="num_sources"):
        mix_batch(audio, queries, MixingConfig(), torch.Generator().manual_seed(0))


def test_prepare_targets_shapes_and_weights():
    cfg = load_config("tiny")
    fe = SpectralFrontEnd.from_config(cfg.audio)
    audio, queries = _batch(b=4, t=cfg.audio.clip_samples)
    out = mix_batch(audio, queries, cfg.mixing, torch.Generator().manual_seed(0))
    tg = prepare_targets(fe, out["sources"], out["mixture"], binary=True)
    b, n, w, m = 4, 2, cfg.audio.model_bins, cfg.audio.num_frames
    assert tg["log_mag"].shape == (b, 1, w, m)
    assert tg["targets"].shape == (b, n, w, m)
    assert tg["weights"].shape == (b, 1, w, m)
    assert tg["spec"].shape == (b, cfg.audio.freq_bins, m) and tg["spec"].is_complex()
    assert set(torch.unique(tg["targets"]).tolist()) <= {0.0, 1.0}
    assert tg["weights"].min() >= 1e-3 and tg["weights"].max() <= 10.0
    torch.testing.assert_close(tg["weights"], torch.clamp(torch.log1p(fe.warp(tg["mix_mag"])), 1e-3, 10.0))
    ratio = prepare_targets(fe, out["sources"], out["mixture"], binary=False)["targets"]
    assert ratio.min() >= 0 and ratio.max() <= 1 and ratio.shape == (b, n, w, m)
