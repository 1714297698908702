import io

import pytest
import torch

from clipsep_ray.config import load_config
from clipsep_ray.models.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from clipsep_ray.models.registry import build_model


def _outputs(model, cfg):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, cfg.audio.model_bins, cfg.audio.num_frames, generator=g)
    e = torch.randn(2, 2, cfg.model.embed_dim, generator=g)
    with torch.no_grad():
        return model.eval()(x, e)


@pytest.mark.parametrize("uri_kind", ["file", "dir", "memory"])
def test_round_trip_gives_identical_outputs(tmp_path, uri_kind):
    cfg = load_config("tiny", ["model.noise_heads=2"])
    model = build_model(cfg.model)
    # Make the BatchNorm running statistics non-trivial so that buffers are checked too.
    model.train()
    model(torch.randn(4, 1, 128, 256), torch.randn(4, 2, 128))
    uri = {"file": str(tmp_path / "m.pt"), "dir": str(tmp_path / "ckpt") + "/",
           "memory": "memory://ckpts/run1/m.pt"}[uri_kind]
    written = save_checkpoint(uri, model, cfg, extra={"step": 7})
    loaded, cfg2, payload = load_checkpoint(uri)
    assert cfg2 == cfg and payload["extra"]["step"] == 7 and "torch" in payload["versions"]
    a, b = _outputs(model, cfg), _outputs(loaded, cfg2)
    assert torch.equal(a["query_logits"], b["query_logits"]) and torch.equal(a["noise_logits"], b["noise_logits"])
    if uri_kind == "dir":
        assert written.endswith("/model.pt")
    assert not list(tmp_path.glob("**/.tmp-*"))


def test_corrupt_and_foreign_files_are_rejected(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="bad.pt is not a readable checkpoint"):
        load_checkpoint(str(bad))
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not a clipsep_ray checkpoint"):
        load_checkpoint(str(other))
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pt"))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_no_arbitrary_unpickling(tmp_path, capsys):
    f = tmp_path / "evil.pt"
    torch.save({"format": "clipsep_ray.checkpoint/1", "config": {}, "model": {}, "x": Evil()}, f)
    with pytest.raises(CheckpointError, match="unsafe"):
        read_checkpoint(str(f))
    assert "pwned" not in capsys.readouterr().out  # the payload's code never ran


def test_checkpoint_from_another_config_is_named(tmp_path):
    cfg = load_config("tiny")
    uri = save_checkpoint(str(tmp_path / "m.pt"), build_model(cfg.model), cfg)
    with pytest.raises(CheckpointError, match="model.num_masks: checkpoint 16 != expected 8"):
        load_checkpoint(uri, expected=load_config("tiny", ["model.num_masks=8"]))
    # Weights that disagree with the config saved beside them (an edited or mixed-up file).
    payload = torch.load(uri, weights_only=True)
    payload["config"]["model"]["num_masks"] = 8
    buf = io.BytesIO()
    torch.save(payload, buf)
    (tmp_path / "mixed.pt").write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="weights do not match the config"):
        load_checkpoint(str(tmp_path / "mixed.pt"))


def test_a_checkpoint_is_identified_by_its_bytes(tmp_path):
    """The identity an archive job records; loading with it refuses another file at the same URI."""
    cfg = load_config("tiny")
    uri = save_checkpoint(str(tmp_path / "m.pt"), build_model(cfg.model), cfg)
    first = read_checkpoint(uri)["sha256"]
    assert len(first) == 16 and read_checkpoint(uri)["sha256"] == first
    load_checkpoint(uri, sha256=first)
    save_checkpoint(uri, build_model(cfg.model), cfg)  # other weights written to the same URI
    with pytest.raises(CheckpointError, match="m.pt changed since the job recorded it"):
        load_checkpoint(uri, sha256=first)
    assert read_checkpoint(uri)["sha256"] != first
