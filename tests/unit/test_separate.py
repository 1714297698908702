import numpy as np
import pytest
import torch

from clipsep_ray.audio.io import load_audio, write_audio
from clipsep_ray.audio.stft import SpectralFrontEnd
from clipsep_ray.models.clipsep import PITSep
from clipsep_ray.models.query import QueryError
from clipsep_ray.separate import Separator, separate
from clipsep_ray.storage import slug


class IdentityMasks(PITSep):
    """Every mask is 1: separation must give the input back exactly (overlap-add of an identity)."""

    def features(self, log_mag):
        return torch.full((log_mag.shape[0], 1, *log_mag.shape[2:]), 50.0)


def test_overlap_add_of_identity_is_identity(tiny_cfg):
    fe = SpectralFrontEnd.from_config(tiny_cfg.audio)
    model = IdentityMasks(unet_depth=5, unet_width=4, num_sources=1).eval()
    x = (torch.rand(3 * tiny_cfg.audio.clip_samples + 1234) - 0.5) * 1.8
    for overlap in (0.0, 0.25, 0.5):
        tiny_cfg.inference.overlap = overlap
        y = separate(model, fe, x, None, tiny_cfg.inference)
        assert y.shape == (1, x.numel())
        assert torch.allclose(y[0], x, atol=1e-5)


def test_windows_equal_one_pass_away_from_window_edges(tiny_cfg, tiny_model):
    fe = SpectralFrontEnd.from_config(tiny_cfg.audio)
    w = tiny_cfg.audio.clip_samples
    ov = int(round(tiny_cfg.inference.overlap * w))
    hop = w - ov
    x = torch.randn(3 * w) * 0.2
    proj = tiny_model.project(torch.randn(2, tiny_cfg.model.embed_dim))
    y = separate(tiny_model, fe, x, proj, tiny_cfg.inference)
    for k in range(3):
        one = separate(tiny_model, fe, x[k * hop:k * hop + w], proj, tiny_cfg.inference)  # one pass
        lo, hi = k * hop + (ov if k else 0), k * hop + w - ov
        assert torch.allclose(y[:, lo:hi], one[:, lo - k * hop:hi - k * hop], atol=1e-5), k
    assert y.abs().sum() > 0


def test_batching_of_windows_does_not_change_results(tiny_cfg, tiny_model):
    fe = SpectralFrontEnd.from_config(tiny_cfg.audio)
    x = torch.randn(50000) * 0.2
    proj = tiny_model.project(torch.randn(1, tiny_cfg.model.embed_dim))
    tiny_cfg.inference.batch_windows = 1
    a = separate(tiny_model, fe, x, proj, tiny_cfg.inference)
    tiny_cfg.inference.batch_windows = 5
    b = separate(tiny_model, fe, x, proj, tiny_cfg.inference)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("seconds", [0.3, 2.7183])
def test_outputs_keep_rate_and_length(tiny_cfg, tiny_model, sr, seconds):
    sep = Separator(tiny_model, tiny_cfg)
    n = int(sr * seconds) + 7  # not a multiple of the hop
    wave = np.random.default_rng(0).standard_normal(n).astype(np.float32) * 0.1
    out = sep.separate(wave, sr, ["dog barking", "violin"])
    assert list(out) == ["dog barking", "violin", "residual"]
    assert out.sample_rate == sr
    for v in out.values():
        assert v.shape == (n,) and v.dtype == np.float32 and np.isfinite(v).all()
    np.testing.assert_allclose(out["dog barking"] + out["violin"] + out["residual"], wave, atol=1e-5)


def test_queries_change_the_stems_and_the_text_cache_is_used(tiny_cfg, tiny_model):
    sep = Separator(tiny_model, tiny_cfg)
    wave = np.random.default_rng(1).standard_normal(20000).astype(np.float32) * 0.2
    out = sep.separate(wave, 8000, ["dog barking", "rain"])
    assert not np.allclose(out["dog barking"], out["rain"])
    again = sep.separate(wave, 8000, ["rain"])
    np.testing.assert_allclose(again["rain"], out["rain"], atol=1e-5)  # a query's stem ignores the others
    assert ("rain", False) in sep.query_encoder._cache


def test_a_kept_analysis_answers_new_queries_as_a_fresh_separation_without_the_unet(tiny_cfg, tiny_model):
    """Serve's re-query path: the spectra and U-Net features of an input, kept once, give every
    later query set the stems a whole separation gives, and the U-Net never runs again."""
    from clipsep_ray.separate import window_features

    sep = Separator(tiny_model, tiny_cfg)
    wave = np.random.default_rng(5).standard_normal(10 * 16000 + 123).astype(np.float32) * 0.2  # 16 kHz: resampled
    calls = []

    def counted(log_mag):
        calls.append(log_mag.shape[0])
        return window_features(sep.model, log_mag, "fp32", sep.device)

    with pytest.raises(ValueError, match="kept"):
        sep.analyse(wave, 16000, counted).nbytes  # a lazy analysis: its U-Net has not run
    assert calls == []
    analysis = sep.analyse(wave, 16000, counted).kept()
    assert sum(calls) > tiny_cfg.inference.batch_windows  # more than one batch of windows
    windows = sum(calls)
    assert analysis.nbytes > wave.nbytes
    for queries in (["dog barking"], ["rain", "violin"], ["dog barking"]):
        again = sep.synthesise(analysis, queries)
        fresh = sep.separate(wave, 16000, queries)
        assert list(again) == list(fresh) == queries + ["residual"]
        for name in fresh:
            assert again[name].shape == wave.shape
            np.testing.assert_allclose(again[name], fresh[name], atol=1e-5)
    assert sum(calls) == windows  # the fresh separations used the default pass, not ``counted``


def test_bad_inputs_are_named(tiny_cfg, tiny_model):
    sep = Separator(tiny_model, tiny_cfg)
    wave = np.zeros(1000, np.float32)
    with pytest.raises(QueryError, match="query #1 is empty"):
        sep.separate(wave, 8000, ["dog", "  "])
    with pytest.raises(QueryError, match="repeated query"):
        sep.separate(wave, 8000, ["dog", "dog"])
    with pytest.raises(QueryError, match="'residual' names the rest"):
        sep.separate(wave, 8000, ["residual"])
    with pytest.raises(ValueError, match="non-empty"):
        sep.separate(np.zeros(0, np.float32), 8000, ["dog"])
    with pytest.raises(ValueError, match="NaN"):
        sep.separate(np.full(100, np.nan, np.float32), 8000, ["dog"])
    with pytest.raises(ValueError, match=r"shape \(1000, 2\) looks like \(T, C\)"):  # sf.read's layout
        sep.separate(np.zeros((1000, 2), np.float32), 8000, ["dog"])


def test_integer_pcm_is_scaled_as_a_file_reads_it(tiny_cfg, tiny_model):
    sep = Separator(tiny_model, tiny_cfg)
    pcm = (np.random.default_rng(3).standard_normal(8000) * 3000).astype(np.int16)
    as_int = sep.separate(pcm, 8000, ["dog"])
    as_float = sep.separate(pcm.astype(np.float32) / 32768, 8000, ["dog"])
    for name in as_float:
        np.testing.assert_allclose(as_int[name], as_float[name], atol=1e-6)
    assert np.abs(as_int["residual"]).max() < 1.0  # not samples of +-3000


def test_embeddings_and_images_as_queries(tiny_cfg, tiny_model):
    sep = Separator(tiny_model, tiny_cfg)
    wave = np.random.default_rng(2).standard_normal(9000).astype(np.float32) * 0.1
    emb = sep.query_encoder.encode_text(["dog"])
    by_emb = sep.separate(wave, 8000, emb)
    by_text = sep.separate(wave, 8000, ["dog"])
    np.testing.assert_allclose(by_emb["query_1"], by_text["dog"], atol=1e-5)
    img = np.random.default_rng(3).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    by_img = sep.separate(wave, 8000, [img])
    assert set(by_img) == {"image_1", "residual"}


def test_separate_file_streams_and_matches_in_memory(tiny_cfg, tiny_model, tmp_path):
    sep = Separator(tiny_model, tiny_cfg)
    sr = 22050
    wave = (np.random.default_rng(4).standard_normal(int(sr * 5.3)) * 0.1).astype(np.float32)
    src = tmp_path / "my input é.wav"
    write_audio(str(src), wave, sr, subtype="FLOAT")
    files = sep.separate_file(str(src), str(tmp_path / "out"), ["dog barking", "rain"], block_seconds=0.77)
    assert sorted(p.split("/")[-1] for p in files.values()) == ["dog_barking.wav", "rain.wav", "residual.wav"]
    mem = sep.separate(wave, sr, ["dog barking", "rain"])
    for name, path in files.items():
        got, got_sr = load_audio(path)
        assert got_sr == sr and got.shape == wave.shape
        np.testing.assert_allclose(got, mem[name], atol=2e-4)


@pytest.mark.parametrize("subtype,peak,fmt,written,atol", [
    ("PCM_16", 0.5, None, "PCM_16", 2e-4), ("PCM_24", 1e-3, None, "PCM_24", 1e-6),
    ("FLOAT", 1.5, "wav", "FLOAT", 1e-6), ("FLOAT", 0.5, "flac", "PCM_24", 1e-6)])
def test_outputs_keep_the_sources_precision(tiny_cfg, tiny_model, tmp_path, subtype, peak, fmt, written, atol):
    """Outputs were always 16-bit: a quiet 24-bit source's stems no longer added up to it (3% off),
    nor a float one's past full scale (its residual clipped)."""
    import soundfile as sf

    sep = Separator(tiny_model, tiny_cfg)
    sr = 16000
    wave = np.random.default_rng(6).standard_normal(sr * 2).astype(np.float32)
    wave *= peak / np.abs(wave).max()
    src = tmp_path / f"in.{'wav' if fmt or subtype != 'PCM_24' else 'flac'}"
    sf.write(str(src), wave, sr, subtype=subtype)
    source, _ = load_audio(str(src))
    files = sep.separate_file(str(src), str(tmp_path / "out"), ["dog barking"], format=fmt)
    total = np.zeros_like(source)
    for path in files.values():
        assert sf.info(path).subtype == written
        total += load_audio(path)[0]
    np.testing.assert_allclose(total, source, atol=atol)  # the stems and the residual add up to the input


def test_separate_file_leaves_nothing_on_failure(tiny_cfg, tiny_model, tmp_path):
    sep = Separator(tiny_model, tiny_cfg)
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(ValueError, match="broken.wav"):
        sep.separate_file(str(bad), str(tmp_path / "out"), ["dog"])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_separate_file_refuses_a_source_longer_than_max_seconds_header_or_not(tiny_cfg, tiny_model, tmp_path,
                                                                                monkeypatch):
    from clipsep_ray.audio import io as audio_io

    sep = Separator(tiny_model, tiny_cfg)
    src = tmp_path / "long.wav"
    write_audio(str(src), np.zeros(8000 * 3, np.float32), 8000)
    assert len(sep.separate_file(str(src), str(tmp_path / "ok"), ["dog"], max_seconds=3.0)) == 2
    with pytest.raises(audio_io.TooLongError, match="longer than 2 s"):
        sep.separate_file(str(src), str(tmp_path / "out"), ["dog"], max_seconds=2.0)
    opened = audio_io.AudioReader._open

    def no_length(self, target, ext):  # a container that does not say how long it is (some video streams)
        opened(self, target, ext)
        self.num_frames = None

    monkeypatch.setattr(audio_io.AudioReader, "_open", no_length)
    with pytest.raises(audio_io.TooLongError):  # found while decoding, and nothing is left behind
        sep.separate_file(str(src), str(tmp_path / "out"), ["dog"], max_seconds=2.0, block_seconds=0.5)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_separate_file_stops_at_the_next_block_once_asked_and_writes_nothing(tiny_cfg, tiny_model, tmp_path):
    import threading

    from clipsep_ray.separate import Stopped

    sep = Separator(tiny_model, tiny_cfg)
    src = tmp_path / "in.wav"
    write_audio(str(src), np.zeros(8000 * 300, np.float32), 8000)  # many window groups
    stop, blocks = threading.Event(), []
    hook = sep.model  # the U-Net pass, counted: the stop is set while the first windows are separated

    def features(log_mag):
        blocks.append(log_mag.shape[0])
        stop.set()
        from clipsep_ray.separate import window_features
        return window_features(hook, log_mag, sep.cfg.inference.precision, sep.device)

    with pytest.raises(Stopped):
        sep.separate_file(str(src), str(tmp_path / "out"), ["dog"], block_seconds=0.5, features=features, stop=stop)
    assert len(blocks) <= 2  # the group under way when asked, at most one more: not the rest of 300 s
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_slug_is_a_safe_file_name():
    assert slug("Dog barking!") == "dog_barking"
    assert slug("../../etc/passwd") == "etc_passwd"
    assert "/" not in slug("a/b\\c") and not slug("...").startswith(".")
    assert len(slug("x" * 500)) <= 60


def test_archive_replica_uses_the_drivers_projections_without_a_query_encoder(tiny_cfg, tiny_model, tmp_path):
    """The archive's model actors take (names, projections) made once by the driver: their stems
    equal a Separator's that encodes the queries itself, and they never build a query encoder."""
    from clipsep_ray.batch import stages
    from clipsep_ray.models.checkpoint import save_checkpoint

    ckpt = save_checkpoint(str(tmp_path / "m.pt"), tiny_model, tiny_cfg)
    driver = Separator.from_checkpoint(ckpt, device="cpu")
    names, proj = driver.projections(["dog barking", "rain"])
    sr = 16000
    wave = (np.random.default_rng(5).standard_normal(int(sr * 2.4)) * 0.1).astype(np.float32)
    write_audio(str(tmp_path / "in.wav"), wave, sr, subtype="FLOAT")
    actor = stages.SeparateFile(ckpt, driver.checkpoint_sha256, names, proj.numpy(), str(tmp_path / "out"), "cpu", 1.0,
                                fmt="wav")
    row = {"input": str(tmp_path / "in.wav"), "out_dir": "in", "status": "ok", "error": "", "seconds": 0.0,
           "sample_rate": 0, "channels": 0, "duration_s": 0.0, "outputs": "[]", "separate_rss_mb": 0.0}
    out = stages.rows_of(actor(stages.batch_of([row])))[0]
    assert out["status"] == "ok", out["error"]
    assert actor.sep._encoder is None  # no open_clip text tower in a replica
    mem = driver.separate(wave, sr, ["dog barking", "rain"])
    for name in ("dog barking", "rain", "residual"):
        got, got_sr = load_audio(str(tmp_path / "out" / "in" / f"{slug(name)}.wav"))
        assert got_sr == sr and got.shape == wave.shape
        np.testing.assert_allclose(got, mem[name], atol=2e-4)


@pytest.mark.parametrize("override,named", [({"overlap": 1.0}, "inference.overlap"),
                                            ({"overlap": -0.5}, "inference.overlap"),
                                            ({"batch_windows": 0}, "inference.batch_windows"),
                                            ({"precision": "fp8"}, "inference.precision")])
def test_bad_inference_settings_are_refused_when_loading(tiny_cfg, tiny_model, tmp_path, override, named):
    """An overlap of 1 made a window step of 0: separate() never ended. The others failed every input
    with a tensor size error, or (batch_windows=0) put a whole file's windows in one U-Net call."""
    from clipsep_ray.config import ConfigError
    from clipsep_ray.models.checkpoint import save_checkpoint

    ckpt = save_checkpoint(str(tmp_path / "m.pt"), tiny_model, tiny_cfg)
    with pytest.raises(ConfigError, match=named):
        Separator.from_checkpoint(ckpt, device="cpu", **override)
