import json

import pytest
import torch

from clipsep_ray.config import load_config
from clipsep_ray.models.registry import build_model

TINY_CLIP = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip_name(tmp_path_factory):
    """A one-layer open_clip model registered under a test name (random weights, no download)."""
    import open_clip

    d = tmp_path_factory.mktemp("clipcfg")
    (d / "test-tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(d))
    return "test-tiny-clip"


@pytest.fixture
def tiny_cfg(tiny_clip_name):
    return load_config("tiny", [f"query.clip_model={tiny_clip_name}", "query.clip_pretrained=",
                                "inference.precision=fp32"])


@pytest.fixture
def tiny_model(tiny_cfg):
    torch.manual_seed(0)
    m = build_model(tiny_cfg.model)
    # Larger projection weights than the published init so queries give visibly different masks.
    torch.nn.init.normal_(m.query_proj.weight, 0, 0.5)
    return m.eval()
