import numpy as np
import pytest

from clipsep_ray.audio.io import load_audio, write_audio
from clipsep_ray.cli import main
from clipsep_ray.models.checkpoint import save_checkpoint


@pytest.fixture
def ckpt(tmp_path, tiny_cfg, tiny_model):
    return save_checkpoint(str(tmp_path / "ckpt" / "model.pt"), tiny_model, tiny_cfg)


@pytest.fixture
def inputs(tmp_path):
    root = tmp_path / "in"
    rng = np.random.default_rng(0)
    files = {"a.wav": 16000, "sub/b song.flac": 44100, "sub/deeper/c.ogg": 22050}
    for rel, sr in files.items():
        write_audio(str(root / rel), (rng.standard_normal(int(sr * 1.3)) * 0.1).astype(np.float32), sr)
    return root, files


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["separate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--checkpoint", "--query", "--out", "--format", "--device", "--precision", "--batch-windows",
                "--overlap", "--clip-pretrained"):
        assert opt in out


def test_separate_folder_writes_stems_per_input(tmp_path, ckpt, inputs):
    root, files = inputs
    out = tmp_path / "out"
    rc = main(["separate", "--checkpoint", ckpt, "--query", "dog barking", "--query", "Rain!", str(root),
               "-o", str(out), "--no-progress"])
    assert rc == 0
    expected = {"a": ("wav", 16000), "sub/b_song": ("flac", 44100), "sub/deeper/c": ("flac", 22050)}  # ogg: lossless
    for name, (ext, sr) in expected.items():
        for stem in ("dog_barking", "rain", "residual"):
            wave, got_sr = load_audio(str(out / name / f"{stem}.{ext}"))
            assert got_sr == sr and abs(len(wave) - int(sr * 1.3)) == 0


def test_bad_file_fails_alone_and_exit_code_says_so(tmp_path, ckpt, inputs, capsys):
    root, _ = inputs
    (root / "broken.wav").write_bytes(b"definitely not audio")
    out = tmp_path / "out"
    rc = main(["separate", "--checkpoint", ckpt, "--query", "dog", str(root), "-o", str(out), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "broken.wav" in err
    assert (out / "a" / "dog.wav").exists() and not (out / "broken").exists()


def test_bad_query_and_checkpoint_exit_2(tmp_path, ckpt, inputs, capsys):
    root, _ = inputs
    assert main(["separate", "--checkpoint", ckpt, "--query", " ", str(root), "-o", str(tmp_path / "o")]) == 2
    assert "query #0 is empty" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"xx")
    assert main(["separate", "--checkpoint", str(bad), "--query", "dog", str(root), "-o", str(tmp_path / "o")]) == 2
    assert "bad.pt" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_serve_refuses_a_checkpoint_it_cannot_serve_before_starting_ray(tmp_path, capsys):
    """Checked before Ray starts (ray.is_initialized stays False): missing, corrupt, fixed outputs."""
    import ray

    from clipsep_ray.config import load_config
    from clipsep_ray.models.registry import build_model

    (tmp_path / "bad.pt").write_bytes(b"xx")
    cfg = load_config("tiny", ["model.arch=pit", "model.unet_width=4", "query.clip_pretrained="])
    pit = save_checkpoint(str(tmp_path / "pit.pt"), build_model(cfg.model), cfg)
    for ckpt, said in ((tmp_path / "none.pt", "not found"), (tmp_path / "bad.pt", "not a readable checkpoint"),
                       (pit, "separates fixed sources")):
        assert main(["serve", "--checkpoint", str(ckpt)]) == 2
        assert said in capsys.readouterr().err
    assert not ray.is_initialized()


@pytest.mark.parametrize("command", ["demo", "train", "evaluate", "ingest", "embed", "synth", "synth-clip"])
def test_library_commands_take_leading_options(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"clipsep-ray {command}" in capsys.readouterr().out


def test_experiment_configs_load():
    import glob

    from clipsep_ray.config import load_config

    files = sorted(glob.glob("jobs/experiments/*.yaml"))
    assert len(files) >= 8
    loaded = [load_config(f) for f in files]
    assert {(c.model.arch, c.train.mode, c.model.noise_heads) for c in loaded} >= {
        ("clipsep", "image", 0), ("clipsep", "text", 0), ("clipsep", "hybrid", 0), ("clipsep", "image", 2),
        ("labelsep", "text", 0), ("pit", "image", 0)}


def test_no_input_vanishes_lossless_by_default_and_no_empty_folder_on_failure(tmp_path, ckpt, inputs, capsys):
    """A file named ``...wav`` is separated (under ``_``), an Ogg input gets lossless stems that add up
    to it, and an input that fails half-way leaves no empty folder behind."""
    root, files = inputs
    rng = np.random.default_rng(1)
    write_audio(str(root / "x.wav"), (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
    (root / "x.wav").rename(root / "...wav")
    out = tmp_path / "out"
    assert main(["separate", "--checkpoint", ckpt, "--query", "dog", str(root), "-o", str(out), "--no-progress"]) == 0
    assert "separated 4 of 4 inputs" in capsys.readouterr().out
    assert (out / "_" / "dog.wav").exists()
    src, _ = load_audio(str(root / "sub/deeper/c.ogg"))
    stems = [load_audio(str(out / "sub/deeper/c" / f"{n}.flac"))[0] for n in ("dog", "residual")]
    assert np.abs(sum(stems) - src).max() < 2e-4  # PCM_16 FLAC: one quantisation step per file

    flac = (out / "sub/b_song/dog.flac").read_bytes()
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "half.flac").write_bytes(flac[: len(flac) // 2])  # decodes for a while, then fails
    rc = main(["separate", "--checkpoint", ckpt, "--query", "dog", str(tmp_path / "cut"), "-o", str(tmp_path / "o2"),
               "--no-progress"])
    assert rc == 1 and "half.flac" in capsys.readouterr().err
    assert not (tmp_path / "o2" / "half").exists()


def test_ctrl_c_is_exit_130_with_a_line_not_a_traceback(monkeypatch, capsys):
    from clipsep_ray.commands import separate_archive

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(separate_archive, "run", interrupted)
    assert main(["separate-archive", "in", "out", "--checkpoint", "m.pt", "--query", "dog"]) == 130
    assert capsys.readouterr().err == "interrupted: clipsep-ray separate-archive stopped\n"
