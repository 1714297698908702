"""Tests for clipsep_ray.metrics: BSSEval agreement with mir_eval, SI-SDR, protocol rules."""

import math
import statistics

import mir_eval
import numpy as np
import pytest
import torch

from clipsep_ray.metrics import bss_eval, evaluate_mixture, is_silent, si_sdr, summarize

SR = 16000
# mir_eval 0.8 flags bss_eval_sources as deprecated; it is the reference we compare to.
pytestmark = pytest.mark.filterwarnings("ignore:mir_eval.separation:FutureWarning")


def _sources(seed, length=4000):
    """Two sources: white noise and a two-partial tone with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(length) / SR
    noise = 0.3 * rng.standard_normal(length)
    tone = 0.5 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t + 0.3)
    tone += 0.01 * rng.standard_normal(length)
    return np.stack([noise, tone]), rng


def _imperfect(refs, rng):
    """Leakage from the other source, a short causal smearing filter and added noise
    (BSSEval's distortion filters are causal: a non-causal smear would count as error)."""
    leak = refs + 0.3 * refs[::-1]
    smeared = np.stack([np.convolve(x, [0.8, 0.15, 0.05])[: x.size] for x in leak])
    return smeared + 0.05 * rng.standard_normal(refs.shape)


@pytest.mark.parametrize("seed", [0, 1])
def test_bss_eval_agrees_with_mir_eval(seed):
    refs, rng = _sources(seed)
    est = _imperfect(refs, rng)
    sdr, sir, sar, _ = mir_eval.separation.bss_eval_sources(
        refs, est, compute_permutation=False
    )
    got = bss_eval(torch.from_numpy(refs), torch.from_numpy(est))
    assert set(got) == {"sdr", "sir", "sar"}
    assert got["sdr"].shape == (2,) and got["sdr"].dtype == torch.float64
    np.testing.assert_allclose(got["sdr"].numpy(), sdr, atol=0.01)
    np.testing.assert_allclose(got["sir"].numpy(), sir, atol=0.01)
    np.testing.assert_allclose(got["sar"].numpy(), sar, atol=0.01)
    # Sanity: the estimates are imperfect, so the scores are moderate.
    assert np.all((sdr > 0) & (sdr < 30))


def test_bss_eval_numpy_float32_and_batched():
    refs, rng = _sources(2, length=3000)
    est = _imperfect(refs, rng)
    single = bss_eval(refs.astype(np.float32), est.astype(np.float32))
    mir_sdr = mir_eval.separation.bss_eval_sources(refs, est, compute_permutation=False)[0]
    np.testing.assert_allclose(single["sdr"].numpy(), mir_sdr, atol=0.01)
    batch = bss_eval(np.stack([refs, refs]), np.stack([est, refs + 0.5 * est]))
    assert batch["sdr"].shape == (2, 2)
    torch.testing.assert_close(batch["sdr"][0], bss_eval(refs, est)["sdr"])
    assert not torch.allclose(batch["sdr"][0], batch["sdr"][1])


def test_bss_eval_no_permutation_search():
    refs, rng = _sources(3)
    est = _imperfect(refs, rng)
    straight = bss_eval(refs, est)["sdr"]
    swapped = bss_eval(refs, est[::-1].copy())["sdr"]
    # Estimates in the wrong order must score badly, not be silently re-paired.
    assert torch.all(swapped < straight - 10)


def test_bss_eval_shape_errors():
    with pytest.raises(ValueError, match="estimates"):
        bss_eval(np.zeros((2, 1000)), np.zeros((2, 999)))
    with pytest.raises(ValueError, match="references"):
        bss_eval(np.zeros(1000), np.zeros(1000))


def test_si_sdr_known_values():
    rng = np.random.default_rng(4)
    ref = torch.from_numpy(rng.standard_normal((2, 2000)))
    assert torch.all(si_sdr(ref, 0.5 * ref) > 60)
    assert torch.all(si_sdr(ref, ref + 3.0) > 60)  # offset removed by zero-mean
    noise = torch.from_numpy(rng.standard_normal((2, 2000)))
    assert torch.all(si_sdr(ref, noise) < -10)
    # Error orthogonal to the zero-mean reference with 1/10 of its energy: exactly 10 dB.
    r = ref - ref.mean(-1, keepdim=True)
    n = noise - noise.mean(-1, keepdim=True)
    n = n - (n * r).sum(-1, keepdim=True) / (r * r).sum(-1, keepdim=True) * r
    n = n * torch.sqrt((r * r).sum(-1, keepdim=True) / (10 * (n * n).sum(-1, keepdim=True)))
    got = si_sdr(ref, r + n)
    assert got.shape == (2,)
    torch.testing.assert_close(got, torch.full((2,), 10.0, dtype=torch.float64), atol=1e-6, rtol=0)
    # Scale invariance: rescaling the estimate does not change the score.
    torch.testing.assert_close(si_sdr(ref, 7.0 * (r + n)), got, atol=1e-6, rtol=0)


def test_is_silent_threshold():
    x = torch.zeros(3, 100)
    x[1, 0] = 1e-5  # exactly at the threshold: silent
    x[2, 0] = 2e-5
    assert is_silent(x).tolist() == [True, True, False]
    assert is_silent(np.ones(10), threshold=10.0).item() is True


def _assert_plain(d):
    for key in ("mean", "sem", "median"):
        assert d[key] is None or type(d[key]) is float
    assert type(d["n"]) is int and type(d["skipped"]) is int


def test_summarize_matches_statistics():
    values = [3.5, -1.25, 7.0, 2.0, 10.5, 0.25]
    got = summarize(values, skipped=2)
    _assert_plain(got)
    assert got["mean"] == pytest.approx(statistics.mean(values))
    assert got["sem"] == pytest.approx(statistics.stdev(values) / math.sqrt(len(values)))
    assert got["median"] == pytest.approx(statistics.median(values))
    assert got["n"] == 6 and got["skipped"] == 2
    arr = np.array(values)
    from_tensor = summarize(torch.tensor(values))
    assert from_tensor["sem"] == pytest.approx(arr.std(ddof=1) / np.sqrt(arr.size))


def test_summarize_edge_cases():
    one = summarize([4.0])
    _assert_plain(one)
    assert one == {**one, "mean": 4.0, "sem": 0.0, "median": 4.0, "n": 1}
    empty = summarize([], skipped=3)
    _assert_plain(empty)
    assert empty["mean"] is None and empty["sem"] is None and empty["median"] is None
    assert empty["n"] == 0 and empty["skipped"] == 3
    with_inf = summarize([1.0, float("inf"), 3.0])
    assert with_inf["mean"] == 2.0 and with_inf["n"] == 2 and with_inf["nonfinite"] == 1


def test_evaluate_mixture_perfect_and_imperfect():
    refs, rng = _sources(5)
    mix = refs.sum(0)
    perfect = evaluate_mixture(refs, refs, mix)
    assert perfect["skipped"] is False
    assert all(x > 30 for x in perfect["sdri"])
    assert all(x > 30 for x in perfect["si_sdri"])
    near = evaluate_mixture(refs, refs + 1e-3 * rng.standard_normal(refs.shape), mix)
    assert all(30 < x < 80 for x in near["sdri"])  # large, and finite unlike exact copies
    est = _imperfect(refs, rng)
    res = evaluate_mixture(torch.from_numpy(refs), torch.from_numpy(est), torch.from_numpy(mix))
    base = mir_eval.separation.bss_eval_sources(
        refs, np.stack([mix, mix]), compute_permutation=False
    )[0]
    np.testing.assert_allclose(res["sdr_mixture"], base, atol=0.01)
    np.testing.assert_allclose(res["sdri"], np.array(res["sdr"]) - base, atol=0.01)
    np.testing.assert_allclose(
        res["si_sdri"], np.array(res["si_sdr"]) - np.array(res["si_sdr_mixture"]), atol=1e-9
    )
    assert all(len(res[k]) == 2 for k in ("sdr", "sir", "sar", "si_sdr"))
    assert all(x > 0 for x in res["sdri"])  # the estimates beat the raw mixture


def test_evaluate_mixture_truncates():
    refs, rng = _sources(6, length=5000)
    est = _imperfect(refs, rng)
    est_bad = est.copy()
    est_bad[:, 3000:] = rng.standard_normal((2, 2000))  # garbage past the cut
    mix = refs.sum(0)
    cut = evaluate_mixture(refs, est_bad, mix, num_samples=3000)
    ref_cut = evaluate_mixture(refs[:, :3000], est[:, :3000], mix[:3000])
    np.testing.assert_allclose(cut["sdr"], ref_cut["sdr"], atol=1e-9)
    full = evaluate_mixture(refs, est_bad, mix)
    assert all(a > b + 1 for a, b in zip(cut["sdr"], full["sdr"]))


def test_evaluate_mixture_skips_silence():
    refs, rng = _sources(7)
    silent_ref = refs.copy()
    silent_ref[1] = 0.0
    res = evaluate_mixture(silent_ref, _imperfect(refs, rng), refs.sum(0))
    assert res["skipped"] is True and res["sdr"] == []
    silent_est = _imperfect(refs, rng)
    silent_est[0] = 1e-9
    assert evaluate_mixture(refs, silent_est, refs.sum(0))["skipped"] is True


def test_evaluate_mixture_shape_errors():
    refs = np.ones((2, 1000))
    with pytest.raises(ValueError, match="mixture"):
        evaluate_mixture(refs, refs, np.ones(999))
    with pytest.raises(ValueError, match="estimates"):
        evaluate_mixture(refs, np.ones((3, 1000)), np.ones(1000))
