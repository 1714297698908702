"""The evaluation protocol's pieces: deterministic pairs, bounds, PIT's order, the table."""
import numpy as np
import torch

from clipsep_ray.config import load_config
from clipsep_ray.evaluation.protocol import eval_pairs, evaluate_rows, markdown_table
from clipsep_ray.models.clipsep import PITSep
from clipsep_ray.models.registry import build_model, model_class


def test_pairs_are_deterministic_and_avoid_self_and_same_label():
    labels = ["a", "a", "b", "b", "c", "c", "c"]
    p1, p2 = eval_pairs(7, labels), eval_pairs(7, labels)
    assert np.array_equal(p1, p2)
    assert all(p1[i] != i and labels[p1[i]] != labels[i] for i in range(7))
    assert not np.array_equal(eval_pairs(50, seed=0), eval_pairs(50, seed=1))
    same = eval_pairs(4, ["x"] * 4)  # only one class: fall back to any other clip
    assert all(same[i] != i for i in range(4))


def _rows(cfg, n=4):
    t = torch.arange(cfg.audio.clip_samples) / cfg.audio.sample_rate
    audio = torch.stack([0.5 * torch.sin(2 * np.pi * (300 + 500 * k) * t) for k in range(n)])
    return {"audio": audio, "image_query": torch.randn(n, cfg.model.embed_dim), "clip_id": [f"c{k}" for k in range(n)],
            "label": [f"l{k}" for k in range(n)]}


class Oracle2(PITSep):
    """A 'model' whose two masks are the ideal binary masks of the mixture's sources, in SWAPPED order."""

    def __init__(self, sources_of, **kw):
        super().__init__(**kw)
        self.sources_of = sources_of

    def features(self, log_mag):
        return self.sources_of(log_mag)


def test_bounds_rows_and_oracle_beats_mixture():
    cfg = load_config("tiny", ["model.unet_width=4"])
    model = build_model(cfg.model)
    summary, per_clip = evaluate_rows(model, cfg, _rows(cfg), eval_pairs(4), train_data="clean")
    by = {(r["method"], r["query_kind"]): r for r in summary}
    assert set(by) == {("mixture", "none"), ("oracle-ibm", "none"), ("oracle-irm", "none"), ("CLIPSep", "image")}
    assert by[("oracle-ibm", "none")]["sdr_mean"] > by[("mixture", "none")]["sdr_mean"] + 10
    assert by[("CLIPSep", "image")]["train_data"] == "clean" and by[("mixture", "none")]["train_data"] == ""
    assert all(r["n"] == 4 and r["skipped"] == 0 for r in summary)
    assert len(per_clip) == 16
    md = markdown_table(summary)
    assert md.count("\n") == 2 + len(summary) and "oracle-ibm" in md


def test_pit_is_scored_in_its_best_order():
    cfg = load_config("tiny", ["model.arch=pit", "model.unet_width=4"])
    rows = _rows(cfg, 2)
    from clipsep_ray.audio.stft import SpectralFrontEnd

    fe = SpectralFrontEnd.from_config(cfg.audio)
    src = torch.stack([rows["audio"][0], rows["audio"][1]]) / 2
    ibm = fe.targets(fe.stft(src).abs()[None], fe.stft(src.sum(0)[None]).abs()[:, None])

    def swapped(log_mag):
        return (ibm.flip(1) * 40 - 20).expand(log_mag.shape[0], -1, -1, -1)  # logits of the swapped masks

    model = Oracle2(swapped, unet_depth=5, unet_width=4, num_sources=2)
    summary, _ = evaluate_rows(model, cfg, rows, [1, 0], bounds=False)
    (r,) = summary
    assert model_class(cfg.model).method_name(cfg.model, cfg.train.mode) == "PIT" and r["method"] == "PIT"
    assert r["sdr_mean"] > 10  # scored against the matching reference despite the swapped order
