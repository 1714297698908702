"""The synthetic world: sounds, pictures, MP4 videos and the index (no Ray, no torch)."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest

from clipsep_ray.synth import videos, world
from clipsep_ray.synth.world import CLASSES, KINDS, class_rng, make_scene, render_picture, render_sound

SR = world.SAMPLE_RATE


def _spectrum(x, n_fft=1024):
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::n_fft // 2] * np.hanning(n_fft)
    return (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(0)


def _local_flatness(x):
    """Energy-weighted spectral flatness in 250 Hz bands (250 Hz - 4 kHz): ~1 noise, ~0 harmonic."""
    p = _spectrum(x.astype(np.float64))[16:256].reshape(15, 16) + 1e-12
    flat = np.exp(np.log(p).mean(1)) / p.mean(1)
    return float((flat * p.sum(1)).sum() / p.sum())


# ----------------------------------------------------------------------------- sounds
def test_registry_has_typable_classes_of_several_kinds():
    assert len(CLASSES) >= 12 and len(set(CLASSES)) == len(CLASSES)
    assert all(c == c.strip().lower() and c.replace(" ", "").isalpha() for c in CLASSES)
    kinds = Counter(KINDS.values())
    assert kinds["harmonic"] >= 4 and kinds["noise"] >= 2
    with pytest.raises(ValueError, match="unknown class 'kazoo'"):
        render_sound("kazoo", class_rng(0), 1.0)


@pytest.mark.parametrize("label", CLASSES)
def test_sound_shape_level_and_determinism(label):
    a = render_sound(label, class_rng(7, 1), 3.0)
    b = render_sound(label, class_rng(7, 1), 3.0)
    c = render_sound(label, class_rng(8, 1), 3.0)
    assert a.dtype == np.float32 and a.shape == (3 * SR,)
    assert np.isfinite(a).all() and 0.05 < np.abs(a).max() <= world.PEAK_MAX + 1e-6
    rms_db = 20 * np.log10(np.sqrt(np.mean(a.astype(np.float64) ** 2)))
    assert rms_db <= world.RMS_DB_RANGE[1] + 0.1
    np.testing.assert_array_equal(a, b)  # same seed, same sound
    assert not np.allclose(a, c)  # another seed, another sound


@pytest.mark.parametrize("label", CLASSES)
def test_within_class_variation_is_more_than_loudness(label):
    """Two draws of a class differ in content (spectrum or timing), not only in gain."""
    x, y = (render_sound(label, class_rng(s, 2), 4.0).astype(np.float64) for s in (1, 2))
    sx, sy = _spectrum(x), _spectrum(y)
    spectral_cos = sx @ sy / np.linalg.norm(sx) / np.linalg.norm(sy)
    ex, ey = (np.abs(v).reshape(-1, 400).mean(1) for v in (x, y))  # 25 ms loudness envelopes
    env_corr = np.corrcoef(ex, ey)[0, 1]
    assert spectral_cos < 0.995 or env_corr < 0.9, (spectral_cos, env_corr)


def test_overlapping_classes_and_textures():
    """Violin and flute share a register; rain and wind are noise, instruments are not."""
    def band_energy(label, seed):
        s = _spectrum(render_sound(label, class_rng(seed, 3), 4.0))
        f = np.fft.rfftfreq(1024, 1 / SR)
        return s[(f > 250) & (f < 1100)].sum() / s.sum()

    for label in ("violin", "flute"):
        assert np.mean([band_energy(label, s) for s in range(3)]) > 0.4
    flat = {c: [_local_flatness(render_sound(c, class_rng(s, 4), 3.0)) for s in range(3)]
            for c in ("rain", "wind", "violin", "flute")}
    assert min(flat["rain"] + flat["wind"]) > 0.9 and max(flat["violin"] + flat["flute"]) < 0.3, flat


def test_background_noise_is_unit_rms_and_deterministic():
    a, b = world.render_noise(class_rng(1), 2.0), world.render_noise(class_rng(1), 2.0)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (2 * SR,) and abs(np.sqrt(np.mean(a.astype(np.float64) ** 2)) - 1) < 1e-3


# ----------------------------------------------------------------------------- pictures
def test_pictures_deterministic_varied_and_sized():
    for ci, label in enumerate(CLASSES):
        a = np.asarray(render_picture(label, class_rng(3, ci), 96))
        b = np.asarray(render_picture(label, class_rng(3, ci), 96))
        c = np.asarray(render_picture(label, class_rng(4, ci), 96))
        assert a.shape == (96, 96, 3) and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
        assert np.abs(a.astype(int) - c).mean() > 10  # new pose, colours, background


def test_scene_moves_a_little_between_frames():
    scene = make_scene("dog barking", class_rng(5), 128)
    f0, f1, f8 = (np.asarray(scene.frame(t)).astype(int) for t in (0.0, 0.25, 8.0))
    other = np.asarray(make_scene("dog barking", class_rng(6), 128).frame(0.0)).astype(int)
    assert 0 < np.abs(f0 - f1).mean() < np.abs(f0 - other).mean() / 3
    assert np.abs(f0 - f8).mean() > np.abs(f0 - f1).mean()  # drift accumulates over the clip


# ----------------------------------------------------------------------------- world plan
def test_labels_balanced_and_prefix_stable():
    spec = videos.WorldSpec(clips=3 * len(CLASSES) + 5, seed=11)
    rows = [videos.clip_plan(spec, "train", i) for i in range(spec.clips)]
    counts = Counter(r["label"] for r in rows)
    assert set(counts) == set(CLASSES) and max(counts.values()) - min(counts.values()) <= 1
    small = videos.WorldSpec(clips=10, seed=11)
    assert [videos.clip_plan(small, "train", i) for i in range(10)] == rows[:10]
    other = [videos.clip_plan(videos.WorldSpec(clips=10, seed=12), "train", i)["label"] for i in range(10)]
    assert other != [r["label"] for r in rows[:10]]
    assert all(8.0 <= r["duration_s"] <= 10.0 and r["n_frames"] == r["duration_s"] * 4 for r in rows)


def test_noisy_audio_adds_offscreen_source_and_noise_to_the_clean_clip():
    clean, noisy = videos.WorldSpec(clips=4, seed=2), videos.WorldSpec(clips=4, seed=2, split="noisy")
    for i in range(4):
        rc, rn = videos.clip_plan(clean, "train", i), videos.clip_plan(noisy, "train", i)
        assert rc["label"] == rn["label"] and rc["offscreen_label"] == ""
        assert rn["offscreen_label"] in CLASSES and rn["offscreen_label"] != rn["label"]
        ac, an = videos.clip_audio(clean, rc, i), videos.clip_audio(noisy, rn, i)
        np.testing.assert_allclose(ac["mixture"], ac["onscreen"])
        scale = an["onscreen"].std() / ac["onscreen"].std()  # 1 unless the mixture was scaled down
        np.testing.assert_allclose(an["onscreen"], ac["onscreen"] * scale, atol=1e-6)
        np.testing.assert_allclose(an["mixture"], an["onscreen"] + an["offscreen"] + an["noise"], atol=1e-5)
        snr = 10 * np.log10(np.mean(an["onscreen"].astype(np.float64) ** 2)
                            / np.mean(an["offscreen"].astype(np.float64) ** 2))
        assert abs(snr - rn["offscreen_snr_db"]) < 0.05
        assert noisy.offscreen_snr_db[0] <= rn["offscreen_snr_db"] <= noisy.offscreen_snr_db[1]
    assert videos.clip_plan(noisy, "test", 0)["offscreen_label"] == ""  # test sets stay clean
    with pytest.raises(ValueError, match="split"):
        videos.WorldSpec(split="dirty")


def test_every_clip_has_a_room_tone_instead_of_digital_silence():
    """Event sounds (barks, ticks) get a faint noise floor room_tone_db below them, as recordings do."""
    spec = videos.WorldSpec(clips=2 * len(CLASSES), seed=5)
    rows = [videos.clip_plan(spec, "train", i) for i in range(spec.clips)]
    lo, hi = spec.room_tone_db
    for i, row in enumerate(rows):
        if row["label"] not in ("dog barking", "clock ticking"):
            continue
        on = videos.clip_audio(spec, row, i)["onscreen"].astype(np.float64)
        dry = render_sound(row["label"], class_rng(spec.seed, 0, i, videos._K_SOUND), row["duration_s"])
        dry = dry.astype(np.float64)
        def still(x):  # 10 ms frames without any signal (the generators leave a tiny DC offset)
            return x[: len(x) // 160 * 160].reshape(-1, 160).std(1) < 1e-7

        assert still(dry).mean() > 0.05  # the generator alone leaves digital silence between events
        floor = on - dry  # the clip minus its dry sound (peaks stay under 0.99: no rescaling)
        ratio_db = 10 * np.log10(np.mean(dry ** 2) / np.mean(floor ** 2))
        assert lo - 0.5 <= ratio_db <= hi + 0.5, (row["label"], ratio_db)
        assert not still(on).any()


# ----------------------------------------------------------------------------- MP4 + index
@pytest.fixture(scope="module")
def noisy_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    from clipsep_ray.commands import call

    result = call("synth", [str(out), "--clips", "6", "--split", "noisy", "--seed", "3",
                            "--val-clips", "2", "--test-clips", "2", "--processes", "1"])
    return out, result


def test_world_files_and_index(noisy_world):
    out, result = noisy_world
    assert result["complete"] and not result["cached"] and result["counts"] == {"train": 6, "val": 2, "test": 2}
    with open(out / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == videos.INDEX_COLUMNS and len(rows) == 10
    assert [r["subset"] for r in rows] == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    for r in rows:
        i = int(r["path"][-9:-4])
        assert r["label"] == videos.clip_label(3, r["subset"], i) and (out / r["path"]).is_file()
        if r["subset"] == "train":
            assert r["offscreen_label"] in CLASSES and r["offscreen_label"] != r["label"]
        else:
            assert r["offscreen_label"] == "" and r["noise_snr_db"] == ""
    for subset, n in (("train", 6), ("val", 2), ("test", 2)):
        with open(out / f"{subset}.csv", newline="") as f:
            assert [r["path"] for r in csv.DictReader(f)] == [r["path"] for r in rows if r["subset"] == subset]
    manifest = json.loads((out / "world.json").read_text())
    assert manifest["spec"]["split"] == "noisy" and manifest["spec"]["seed"] == 3
    assert sum(manifest["per_class"]["train"].values()) == 6 and max(manifest["per_class"]["train"].values()) == 1


def test_mp4_streams_decode_with_expected_duration_fps_and_audio(noisy_world):
    av = pytest.importorskip("av")
    out, _ = noisy_world
    with open(out / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    spec = videos.WorldSpec(clips=6, seed=3, split="noisy", val_clips=2, test_clips=2)
    for r in (rows[0], rows[-1]):
        with av.open(str(out / r["path"])) as c:
            v, a = c.streams.video[0], c.streams.audio[0]
            assert v.codec_context.name in ("h264", "mpeg4") and a.codec_context.name == "aac"
            assert float(v.average_rate) == 4 and (v.width, v.height) == (224, 224)
            assert a.rate == SR and a.channels == 1
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        with av.open(str(out / r["path"])) as c:
            audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        dur = float(r["duration_s"])
        assert len(frames) == int(r["n_frames"]) == round(dur * 4)
        assert abs(len(audio) - dur * SR) <= 1024
        # the decoded audio is the synthesised mixture (AAC is lossy, but aligned and close)
        ref = videos.clip_audio(spec, videos.clip_plan(spec, r["subset"], int(r["path"][-9:-4])),
                                int(r["path"][-9:-4]))["mixture"]
        m = min(len(ref), len(audio))
        err = ref[:m] - audio[:m]
        assert 10 * np.log10(np.sum(ref[:m] ** 2) / np.sum(err ** 2)) > 10
        # the frames show the rendered scene (video coding is lossy too)
        scene = make_scene(r["label"], class_rng(3, videos.SUBSETS.index(r["subset"]),
                                                 int(r["path"][-9:-4]), videos._K_PICTURE), 224)
        assert np.abs(frames[4].astype(int) - np.asarray(scene.frame(1.0))).mean() < 8


def test_mp4_bytes_do_not_depend_on_what_was_encoded_before(tmp_path):
    spec = videos.WorldSpec(clips=2, seed=5)
    a, b = tmp_path / "a", tmp_path / "b"
    videos.render_clip(spec, "train", 1, a)
    videos.render_clip(spec, "train", 0, b)  # another clip first: encoder history differs
    videos.render_clip(spec, "train", 1, b)
    assert (a / "train/00001.mp4").read_bytes() == (b / "train/00001.mp4").read_bytes()
    assert (b / "train/00000.mp4").read_bytes() != (b / "train/00001.mp4").read_bytes()


def test_world_is_cached_and_regenerated_when_the_spec_changes(noisy_world, tmp_path):
    out, _ = noisy_world
    mtime = (out / "train" / "00000.mp4").stat().st_mtime_ns
    again = videos.ensure_world(out, clips=6, seed=3, split="noisy", val_clips=2, test_clips=2, workers=1)
    assert again["cached"] and (out / "train" / "00000.mp4").stat().st_mtime_ns == mtime
    small = videos.ensure_world(tmp_path, clips=1, seed=3, split="clean", val_clips=1, test_clips=1, workers=1)
    assert not small["cached"] and len(list((tmp_path / "train").glob("*.mp4"))) == 1
    changed = videos.ensure_world(tmp_path, clips=1, seed=4, split="clean", val_clips=1, test_clips=1, workers=1)
    assert not changed["cached"] and changed["spec"]["seed"] == 4
    assert json.loads((tmp_path / "world.json").read_text())["spec"]["seed"] == 4


def test_noisy_fraction_and_offscreen_range_shape_the_noisy_world():
    from clipsep_ray.synth.videos import WorldSpec, clip_plan

    full = [clip_plan(WorldSpec(clips=40, split="noisy"), "train", i) for i in range(40)]
    assert all(r["offscreen_label"] for r in full)
    half = [clip_plan(WorldSpec(clips=40, split="noisy", noisy_fraction=0.5), "train", i) for i in range(40)]
    noisy = [r for r in half if r["offscreen_label"]]
    assert 8 <= len(noisy) <= 32
    # The noisy clips are those of the full world (same draws), the others are clean.
    assert all(r == full[int(r["path"][6:11])] for r in noisy)
    loud = [clip_plan(WorldSpec(clips=40, split="noisy", offscreen_snr_db=(10.0, 20.0)), "train", i) for i in range(40)]
    assert all(10.0 <= r["offscreen_snr_db"] <= 20.0 for r in loud)
    assert "noisy_fraction" not in WorldSpec().to_json()  # default worlds keep their cache key
    with pytest.raises(ValueError, match="noisy_fraction"):
        WorldSpec(noisy_fraction=1.5)
    with pytest.raises(ValueError, match="offscreen_snr_db"):
        WorldSpec(offscreen_snr_db=(8.0, -2.0))
