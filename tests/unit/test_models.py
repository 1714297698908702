import pytest
import torch

from clipsep_ray.config import load_config
from clipsep_ray.models.clipsep import CLIPSep, LabelSep, PITSep
from clipsep_ray.models.registry import build_model
from clipsep_ray.models.unet import AudioUNet


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_paper_model_has_published_size():
    m = build_model(load_config("paper").model)
    assert isinstance(m, CLIPSep)
    assert 29e6 < n_params(m) < 31.5e6  # "about 30 M parameters"


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_stage_shapes(preset):
    c = load_config(preset, ["model.noise_heads=2"])
    m = build_model(c.model).eval()
    F, N, k = c.audio.model_bins, c.audio.num_frames, c.model.num_masks
    x = torch.randn(2, 1, F, N)
    with torch.no_grad():
        feats = m.features(x)
        proj = m.project(torch.randn(2, 3, c.model.embed_dim))
        out = m(x, torch.randn(2, 3, c.model.embed_dim))
    assert feats.shape == (2, k, F, N) and proj.shape == (2, 3, k)
    assert out["query_logits"].shape == (2, 3, F, N)
    assert out["noise_logits"].shape == (2, 2, F, N)


def test_unet_channels_and_rejects_bad_input():
    u = AudioUNet(depth=7, width=64, out_channels=32)
    convs = [m for m in u.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (4, 4)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 512, 512, 512]
    with pytest.raises(ValueError, match="multiples of 2\\*\\*depth"):
        u(torch.randn(1, 1, 100, 256))


def test_late_fusion_features_do_not_depend_on_query_and_slots_are_independent():
    c = load_config("tiny")
    m = build_model(c.model).eval()
    torch.nn.init.normal_(m.query_proj.weight, 0, 0.3)
    x = torch.randn(1, 1, 128, 256)
    e = torch.randn(3, c.model.embed_dim)
    with torch.no_grad():
        all3 = m(x, e[None])["query_logits"]
        one = m(x, e[1:2][None])["query_logits"]
        swapped = m(x, e.flip(0)[None])["query_logits"]
    assert torch.allclose(all3[:, 1], one[:, 0], atol=1e-5)
    assert torch.allclose(all3.flip(1), swapped, atol=1e-5)
    assert not torch.allclose(all3[:, 0], all3[:, 1])


def test_noise_heads_follow_the_mean_projection():
    c = load_config("tiny", ["model.noise_heads=2"])
    m = build_model(c.model).eval()
    for p in m.noise_proj.parameters():
        torch.nn.init.normal_(p, 0, 0.5)
    x, e = torch.randn(1, 1, 128, 256), torch.randn(1, 2, c.model.embed_dim)
    with torch.no_grad():
        out = m(x, e)
        feats, proj = m.features(x), m.project(e)
        manual = m.fuse(feats, m.noise_proj[1](proj.mean(1))[:, None])
    assert torch.allclose(out["noise_logits"][:, 1:2], manual, atol=1e-5)
    assert not torch.allclose(out["noise_logits"][:, 0], out["noise_logits"][:, 1])


def test_baselines():
    c = load_config("tiny", ["model.arch=labelsep", "model.num_labels=12"])
    m = build_model(c.model).eval()
    assert isinstance(m, LabelSep)
    emb = m.embed_labels(torch.tensor([[0, 5]]))
    out = m(torch.randn(1, 1, 128, 256), emb)
    assert out["query_logits"].shape == (1, 2, 128, 256)
    p = build_model(load_config("tiny", ["model.arch=pit", "model.num_sources=3"]).model).eval()
    assert isinstance(p, PITSep)
    assert p(torch.randn(2, 1, 128, 256))["query_logits"].shape == (2, 3, 128, 256)


def test_gradients_reach_unet_and_projection():
    c = load_config("tiny", ["model.noise_heads=2"])
    m = build_model(c.model).train()
    out = m(torch.randn(2, 1, 128, 256), torch.randn(2, 2, c.model.embed_dim))
    (out["query_logits"].mean() + out["noise_logits"].mean()).backward()
    assert m.query_proj.weight.grad.abs().sum() > 0
    assert m.noise_proj[0].weight.grad.abs().sum() > 0
    assert m.unet.net.down[0].weight.grad.abs().sum() > 0


def test_init_choice_published_vs_pytorch():
    from clipsep_ray.config import ConfigError, load_config
    from clipsep_ray.models.registry import build_model

    pub = build_model(load_config("tiny", ["model.init=published"]).model)
    pt = build_model(load_config("tiny").model)  # the tiny preset trains with PyTorch's defaults
    convs = [m for m in pub.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(float(c.weight.std()) < 2e-3 for c in convs)  # N(0, 1e-3)
    assert float(pub.query_proj.weight.std()) < 2e-4  # N(0, 1e-4)
    assert float(pt.query_proj.weight.abs().max()) > 1e-2  # Kaiming-uniform, ~U(-1/sqrt(D), 1/sqrt(D))
    assert float(next(m for m in pt.modules() if isinstance(m, torch.nn.Conv2d)).weight.std()) > 1e-2
    with pytest.raises(ConfigError, match="model.init"):
        load_config("tiny", ["model.init=xavier"])


def test_normalize_queries_makes_the_projection_ignore_the_embedding_norm():
    torch.manual_seed(0)
    e = torch.randn(2, 3, 128) * 5
    raw = build_model(load_config("tiny").model)
    unit = build_model(load_config("tiny", ["model.normalize_queries=true"]).model)
    # Off (as published): scaling a query changes its projection; on: only its direction counts.
    assert (raw.project(e * 0.3) - raw.project(e)).abs().max() > 1e-2
    assert torch.allclose(unit.project(e * 0.3), unit.project(e), atol=1e-5)
    assert torch.allclose(unit.project(e), unit.query_proj(torch.nn.functional.normalize(e, dim=-1) * 128 ** 0.5))
    # The option travels in the config, so a checkpoint rebuilds the same model.
    from clipsep_ray.models.clipsep import CLIPSep
    assert CLIPSep.from_config(load_config("tiny", ["model.normalize_queries=true"]).model).normalize_queries


def test_text_pass_cut_at_the_end_token_equals_the_whole_context(tiny_clip_name):
    """``encode_tokens`` runs the text tower only up to the longest prompt's end-of-text token:
    the same embeddings as open_clip's whole-context pass, for prompts of different lengths."""
    import open_clip

    from clipsep_ray.models.query import _pooled_length, encode_tokens

    torch.manual_seed(0)
    model = open_clip.create_model(tiny_clip_name).eval()
    tokens = open_clip.get_tokenizer(tiny_clip_name)(["a photo of dog", "a photo of a man playing loud bagpipes", "x"])
    n = _pooled_length(model, tokens)
    assert n == int(tokens.argmax(dim=-1).max()) + 1 < tokens.shape[1]  # the padding is cut
    with torch.no_grad():
        torch.testing.assert_close(encode_tokens(model, tokens), model.encode_text(tokens), atol=1e-5, rtol=1e-5)
        for row in tokens:  # each prompt alone (its own, shorter cut) gives its row of the batch
            torch.testing.assert_close(encode_tokens(model, row[None]), model.encode_text(row[None]),
                                       atol=1e-5, rtol=1e-5)


def test_text_pass_runs_whole_when_the_pool_does_not_read_the_end_token(tiny_clip_name):
    import open_clip

    from clipsep_ray.models.query import _pooled_length

    model = open_clip.create_model(tiny_clip_name).eval()
    tokens = open_clip.get_tokenizer(tiny_clip_name)(["a photo of dog"])
    model.text_pool_type = "last"  # pools the last position: every position counts
    assert _pooled_length(model, tokens) is None
    model.text_pool_type, model.attn_mask = "argmax", None  # no causal mask: later tokens reach earlier ones
    assert _pooled_length(model, tokens) is None
