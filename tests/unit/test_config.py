import pytest

from clipsep_ray.config import Config, ConfigError, load_config, preset_names, save_config


def test_presets_ship_and_paper_is_published_config():
    assert {"paper", "tiny"} <= set(preset_names())
    c = load_config("paper")
    assert (c.audio.sample_rate, c.audio.n_fft, c.audio.hop_length, c.audio.clip_samples) == (16000, 1024, 256, 65535)
    assert (c.audio.freq_bins, c.audio.model_bins, c.audio.num_frames) == (513, 256, 256)
    assert (c.model.unet_depth, c.model.unet_width, c.model.num_masks, c.model.embed_dim) == (7, 64, 32, 512)
    assert (c.query.clip_model, c.query.clip_pretrained) == ("ViT-B-32", "openai")
    assert (c.train.lr, c.train.batch_size, c.train.max_steps, c.train.warmup_steps) == (1e-3, 32, 200000, 5000)
    assert (c.mixing.gain_min, c.mixing.gain_max) == (0.5, 1.5)


def test_tiny_is_smaller_and_consistent():
    t, p = load_config("tiny"), load_config("paper")
    assert t.audio.sample_rate < p.audio.sample_rate and t.model.unet_width < p.model.unet_width
    assert t.audio.num_frames % 2 ** t.model.unet_depth == 0


def test_dotted_overrides_parse_by_field_type():
    c = load_config("tiny", ["model.num_masks=8", "train.lr=0.01", "query.prompt_template=a photo of {}",
                             "query.prompt_ensemble=['{}', 'a {}']", "model.channels_last=false"])
    assert c.model.num_masks == 8 and c.train.lr == 0.01 and c.model.channels_last is False
    assert c.query.prompt_template == "a photo of {}" and c.query.prompt_ensemble == ["{}", "a {}"]


@pytest.mark.parametrize("override,named", [
    (["model.nope=1"], "model.nope"),
    (["nosection.x=1"], "nosection"),
    (["model.num_masks=abc"], "model.num_masks"),
    (["train.lr=yes"], "train.lr"),
    (["model.unet_depth=9"], "2**model.unet_depth"),
    (["train.mode=video"], "train.mode"),
    (["model.num_masks"], "model.num_masks"),
    (["inference.batch_windows=0"], "inference.batch_windows"),
    (["train.batch_size=1"], "train.batch_size"),
    # Ranges: each of these was accepted and failed later (a ZeroDivisionError inside validate()
    # for the hop; after Ray had started for checkpoint_every=0 and lr=0; never for the rest).
    (["audio.hop_length=0"], r"audio.hop_length must be in \[1, inf\), got 0"),
    (["train.checkpoint_every=0"], "train.checkpoint_every"),
    (["train.log_every=0"], "train.log_every"),
    (["train.lr=0"], r"train.lr must be in \(0, inf\)"),
    (["train.lr=-1"], "train.lr"),
    (["train.grad_clip=.nan"], "'train.grad_clip' must be a finite number"),
    (["model.unet_depth=1"], "model.unet_depth"),
    (["model.num_masks=0"], "model.num_masks"),
    (["data.val_fraction=1.5"], "data.val_fraction"),
    (["data.val_clips=1"], "data.val_clips"),
    (["mixing.gain_min=2", "mixing.gain_max=1"], "mixing.gain_min"),
    (["audio.win_length=4096"], "audio.win_length"),
    (["inference.overlap=1.0"], "inference.overlap"),
])
def test_bad_overrides_name_the_field(override, named):
    with pytest.raises(ConfigError, match=named.replace("*", r"\*")):
        load_config("tiny", override)


def test_floats_are_read_as_people_write_them(tmp_path):
    """YAML 1.1 reads 1e-3 (no dot) as a string: it was refused as "must be float, got str"."""
    assert load_config("tiny", ["train.lr=1e-3", "train.final_lr=5E-5"]).train.lr == 1e-3
    f = tmp_path / "exp.yaml"
    f.write_text("preset: tiny\ntrain: {lr: 2e-4, final_lr: 1e-5}\n")
    c = load_config(str(f))
    assert (c.train.lr, c.train.final_lr) == (2e-4, 1e-5)
    with pytest.raises(ConfigError, match="must be float"):
        load_config("tiny", ["train.lr=1e-3x"])


def test_unknown_preset_and_missing_file():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        load_config("huge")
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/x.yaml")


def test_yaml_file_extends_preset_and_roundtrips(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("preset: tiny\nmodel:\n  noise_heads: 2\ntrain: {mode: text}\n")
    c = load_config(str(f), ["train.batch_size=4"])
    assert c.model.noise_heads == 2 and c.train.mode == "text" and c.train.batch_size == 4
    assert c.audio.sample_rate == 8000
    save_config(c, str(tmp_path / "resolved.yaml"))
    again = load_config(str(tmp_path / "resolved.yaml"))
    assert again == c
    assert Config.from_dict(c.to_dict()) == c


def test_yaml_wrong_type_in_file_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("audio: {sample_rate: fast}\n")
    with pytest.raises(ConfigError, match="audio.sample_rate"):
        load_config(str(f))


def test_evaluation_scores_the_published_duration_whatever_the_training_window():
    from clipsep_ray.data.shards import RowPrep

    paper, tiny = load_config("paper"), load_config("tiny")
    assert paper.audio.eval_samples == 65280  # docs/METHOD.md: the first 65,280 samples at 16 kHz
    assert tiny.audio.eval_samples == 32640 and tiny.audio.clip_samples < tiny.audio.eval_samples  # 4.08 s at 8 kHz
    assert RowPrep.from_config(tiny).clip_samples == tiny.audio.clip_samples
    assert RowPrep.from_config(tiny, mode="eval").clip_samples == 32640
    assert RowPrep.from_config(paper, mode="eval").clip_samples == paper.audio.clip_samples  # 65535 >= 65280


def test_label_ids_come_from_the_models_vocabulary_not_the_data_sets():
    """LabelSep's ids were the sorted labels of whichever text embeddings were read: a test set
    without class0 numbered class1 as 0, and the model was queried for the wrong label."""
    import numpy as np

    from clipsep_ray.data.shards import RowPrep
    from tests.ray.conftest import training_rows

    cfg = load_config("tiny", ["model.arch=labelsep", "model.num_labels=4", "model.embed_dim=128",
                               "model.labels=[class0, class1, class2, class3]"])
    table = training_rows(8)  # labels class0..class3, twice
    text = {f"class{k}": np.full(128, k, np.float32) for k in (1, 2, 3, 9)}  # class0 lacks; class9 is new
    rows, failures = RowPrep.from_config(cfg, text, mode="eval").prepare(table, "eval")
    assert list(rows["label_id"]) == [1, 2, 3, 1, 2, 3]
    assert len(failures) == 2 and all("no text embedding for label 'class0'" in f[2] for f in failures)
    cfg.model.labels = ["class1", "class2", "class3"]  # a row whose label the model never learned
    text["class0"] = np.zeros(128, np.float32)
    rows, failures = RowPrep.from_config(cfg, text, mode="eval").prepare(table, "eval")
    assert len(rows["label_id"]) == 6 and "'class0' is not in the model's vocabulary" in failures[0][2]


def test_training_sets_the_label_vocabulary_from_its_text_embeddings(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipsep_ray.config import ConfigError
    from clipsep_ray.train.trainer import with_label_vocabulary

    uri = str(tmp_path / "_text_embeddings.parquet")
    pq.write_table(pa.table({"label": ["dog", "bell", "cat"], "embedding": [[0.0], [1.0], [2.0]]}), uri)
    cfg = load_config("tiny", ["model.arch=labelsep", "model.num_labels=3"])
    assert with_label_vocabulary(cfg, uri, None).model.labels == ["bell", "cat", "dog"]
    with pytest.raises(ConfigError, match="model.num_labels is 2, and the data has 3 labels"):
        with_label_vocabulary(load_config("tiny", ["model.arch=labelsep", "model.num_labels=2"]), uri, None)
    with pytest.raises(ConfigError, match="model.labels lacks labels of .*'dog'"):
        with_label_vocabulary(cfg.override({"model.labels": ["bell", "cat"]}), uri, None)
