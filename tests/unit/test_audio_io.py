"""Tests for clipsep_ray.audio.io: decoding, resampling, streaming and atomic writing.

All fixtures are generated in tmp_path (tiny signals, no network, no binary files).
"""

from __future__ import annotations

import io
import os

import av
import fsspec
import numpy as np
import pytest
import soundfile as sf
import torch

from clipsep_ray.audio.io import (
    SUPPORTED_AUDIO_EXTENSIONS,
    SUPPORTED_VIDEO_EXTENSIONS,
    AudioDecodeError,
    AudioReader,
    StreamingAudioWriter,
    StreamingResampler,
    is_media_file,
    iter_audio_blocks,
    load_audio,
    resample,
    write_audio,
)


def tone(freq: float, sr: int, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(sr * seconds))) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_frequency(wave: np.ndarray, sr: int) -> float:
    spec = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[np.argmax(spec)])


def write_mp4(path, audio: np.ndarray | None, sr: int = 22050, seconds: float = 1.0, codec: str = "mpeg4"):
    """A real MP4: small video stream plus (optionally) AAC audio of ``audio`` (C, T)."""
    with av.open(str(path), mode="w") as out:
        vs = out.add_stream(codec, rate=10)
        vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        a_stream = None
        if audio is not None:
            a_stream = out.add_stream("aac", rate=sr)
            a_stream.layout = "stereo" if audio.shape[0] == 2 else "mono"
        for i in range(int(seconds * 10)):
            img = np.full((64, 64, 3), (i * 20) % 255, dtype=np.uint8)
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if a_stream is not None:
            step = 1024
            for start in range(0, audio.shape[1], step):
                chunk = np.ascontiguousarray(audio[:, start:start + step], dtype=np.float32)
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=a_stream.layout.name)
                frame.sample_rate, frame.pts = sr, start
                for packet in a_stream.encode(frame):
                    out.mux(packet)
            for packet in a_stream.encode():
                out.mux(packet)


# ---------------------------------------------------------------- decoding

@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_round_trip_formats_and_rates(tmp_path, ext, sr):
    wave = tone(440.0, sr, 0.5)
    path = tmp_path / f"tone.{ext}"
    write_audio(path, wave, sr)
    got, got_sr = load_audio(path)
    assert got_sr == sr
    assert got.dtype == np.float32 and got.ndim == 1
    assert np.abs(got).max() <= 1.0
    assert abs(dominant_frequency(got, sr) - 440.0) < 5.0
    if ext in ("wav", "flac"):  # lossless PCM_16: exact length, error below one LSB
        assert len(got) == len(wave)
        np.testing.assert_allclose(got, wave, atol=1.0 / 32768 + 1e-6)
    else:  # lossy codecs add priming/padding; the duration stays close
        assert abs(len(got) - len(wave)) < 0.06 * sr


def test_stereo_is_downmixed_by_mean(tmp_path):
    sr = 16000
    left, right = tone(300, sr, 0.25, 0.6), tone(1000, sr, 0.25, 0.2)
    write_audio(tmp_path / "st.wav", np.stack([left, right]), sr, subtype="FLOAT")
    assert sf.info(str(tmp_path / "st.wav")).channels == 2
    got, _ = load_audio(tmp_path / "st.wav")
    np.testing.assert_allclose(got, (left + right) / 2, atol=1e-6)


def test_load_with_target_rate(tmp_path):
    wave = tone(440, 44100, 0.5)
    write_audio(tmp_path / "a.flac", wave, 44100)
    got, sr = load_audio(tmp_path / "a.flac", target_sr=16000)
    assert sr == 16000 and len(got) == int(np.ceil(len(wave) * 16000 / 44100))
    assert abs(dominant_frequency(got, sr) - 440.0) < 5.0


def test_mp4_audio_track(tmp_path):
    sr = 22050
    audio = np.stack([tone(440, sr, 1.0, 0.4), tone(440, sr, 1.0, 0.4)])
    path = tmp_path / "clip.mp4"
    write_mp4(path, audio, sr, codec="libx264")
    got, got_sr = load_audio(path)
    assert got_sr == sr
    assert abs(len(got) / sr - 1.0) < 0.1
    assert abs(dominant_frequency(got, sr) - 440.0) < 5.0
    assert 0.2 < np.abs(got).max() < 0.6
    got16, sr16 = load_audio(path, target_sr=16000)
    assert sr16 == 16000 and abs(len(got16) - len(got) * 16000 / sr) <= 1


def test_mp4_without_audio_raises_naming_file(tmp_path):
    path = tmp_path / "silent video.mp4"
    write_mp4(path, None, codec="mpeg4")
    with pytest.raises(AudioDecodeError, match="no audio stream") as info:
        load_audio(path)
    assert "silent video.mp4" in str(info.value)


def test_corrupt_bytes_raise_naming_file(tmp_path):
    for name in ("junk.wav", "junk.mp4", "junk.bin", "junk.mp3"):
        path = tmp_path / name
        # Seeded junk: os.urandom bytes now and then looked like the start of some container to a
        # decoder, which then failed with another message (1 run in a few).
        path.write_bytes(np.random.default_rng(129).bytes(64) + b"not audio at all" * 8)
        with pytest.raises(AudioDecodeError, match="corrupt or unsupported") as info:
            load_audio(path)
        message = str(info.value)
        assert name in message
        # The decoders' reasons, without libsndfile's "File does not exist" for a file that exists
        # (its words for bytes that are not an mp3) or PyAV's errno.
        assert "(ffmpeg)" in message and "does not exist" not in message and "Errno" not in message


def test_zero_length_file_raises_naming_file(tmp_path):
    path = tmp_path / "empty.flac"
    path.write_bytes(b"")
    with pytest.raises(AudioDecodeError, match="empty file") as info:
        load_audio(path)
    assert "empty.flac" in str(info.value)
    with pytest.raises(AudioDecodeError, match="empty file"):
        load_audio(b"")


def test_wav_with_no_samples_raises(tmp_path):
    path = tmp_path / "nosamples.wav"
    sf.write(str(path), np.zeros(0, np.float32), 16000)
    assert path.stat().st_size > 0
    with pytest.raises(AudioDecodeError, match="no audio samples") as info:
        load_audio(path)
    assert "nosamples.wav" in str(info.value)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "nope.wav")


def test_unicode_and_spaces_in_name(tmp_path):
    wave = tone(440, 16000, 0.2)
    path = tmp_path / "dir with space" / "chien aboie ñ 犬.flac"
    write_audio(path, wave, 16000)
    got, sr = load_audio(str(path))
    assert sr == 16000 and len(got) == len(wave)
    mp4 = tmp_path / "vidéo à écouter.mp4"
    write_mp4(mp4, tone(440, 16000, 1.0)[None], 16000)
    got, sr = load_audio(mp4)
    assert sr == 16000 and abs(dominant_frequency(got, sr) - 440) < 5


def test_load_from_bytes_and_memory_uri(tmp_path):
    wave = tone(523.25, 16000, 0.3)
    write_audio(tmp_path / "a.wav", wave, 16000)
    raw = (tmp_path / "a.wav").read_bytes()
    got, sr = load_audio(raw)
    assert sr == 16000 and len(got) == len(wave)
    np.testing.assert_allclose(got, wave, atol=1e-4)

    fs = fsspec.filesystem("memory")
    with fs.open("/clipsep_io_test/a.wav", "wb") as f:
        f.write(raw)
    try:
        got2, sr2 = load_audio("memory://clipsep_io_test/a.wav")
        np.testing.assert_array_equal(got2, got)
        # an mp4 through fsspec exercises the PyAV path on a file object
        write_mp4(tmp_path / "v.mp4", tone(440, 22050, 1.0)[None], 22050)
        with fs.open("/clipsep_io_test/v.mp4", "wb") as f:
            f.write((tmp_path / "v.mp4").read_bytes())
        got3, sr3 = load_audio("memory://clipsep_io_test/v.mp4")
        assert sr3 == 22050 and abs(dominant_frequency(got3, sr3) - 440) < 5
        # raw mp4 bytes: soundfile refuses, PyAV takes over
        got4, sr4 = load_audio((tmp_path / "v.mp4").read_bytes())
        np.testing.assert_array_equal(got4, got3)
    finally:
        fs.rm("/clipsep_io_test", recursive=True)


def test_memory_uri_empty_raises():
    fs = fsspec.filesystem("memory")
    fs.pipe("/clipsep_io_empty/x.wav", b"")
    try:
        with pytest.raises(AudioDecodeError, match="empty file") as info:
            load_audio("memory://clipsep_io_empty/x.wav")
        assert "clipsep_io_empty/x.wav" in str(info.value)
    finally:
        fs.rm("/clipsep_io_empty", recursive=True)


def test_media_extensions():
    assert ".flac" in SUPPORTED_AUDIO_EXTENSIONS and ".mp4" in SUPPORTED_VIDEO_EXTENSIONS
    assert is_media_file("a/b/C.MP4") and is_media_file("s3://x/y.m4a") and is_media_file("z.webm")
    assert not is_media_file("notes.txt") and not is_media_file("wav")


# ---------------------------------------------------------------- streaming reads

def test_audio_reader_blocks_soundfile(tmp_path):
    rng = np.random.default_rng(1)
    wave = (rng.standard_normal(10_007) * 0.1).astype(np.float32)
    write_audio(tmp_path / "n.flac", wave, 8000)
    full, _ = load_audio(tmp_path / "n.flac")
    with AudioReader(tmp_path / "n.flac") as reader:
        assert reader.sample_rate == 8000 and reader.num_frames == len(wave) and reader.exact_length
        blocks = list(reader.blocks(997))
    assert all(len(b) == 997 for b in blocks[:-1]) and 0 < len(blocks[-1]) <= 997
    np.testing.assert_array_equal(np.concatenate(blocks), full)
    chunks = list(iter_audio_blocks(tmp_path / "n.flac", block_seconds=0.5))
    assert len(chunks[0]) == 4000
    np.testing.assert_array_equal(np.concatenate(chunks), full)


def test_audio_reader_blocks_pyav(tmp_path):
    path = tmp_path / "v.mp4"
    write_mp4(path, tone(440, 22050, 1.0)[None], 22050)
    full, _ = load_audio(path)
    with AudioReader(path) as reader:
        assert reader.sample_rate == 22050 and not reader.exact_length  # a container's declared duration
        assert reader.num_frames is None or abs(reader.num_frames - len(full)) < 0.1 * 22050
        blocks = list(reader.blocks(1500))
    assert all(len(b) == 1500 for b in blocks[:-1])
    np.testing.assert_array_equal(np.concatenate(blocks), full)


def test_reader_rejects_bad_block_size(tmp_path):
    write_audio(tmp_path / "a.wav", tone(100, 8000, 0.1), 8000)
    with AudioReader(tmp_path / "a.wav") as reader, pytest.raises(ValueError):
        next(reader.blocks(0))


# ---------------------------------------------------------------- resampling

def test_resample_types_and_lengths():
    x = tone(440, 44100, 0.1)
    y = resample(x, 44100, 16000)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    assert len(y) == int(np.ceil(len(x) * 16000 / 44100))
    t = resample(torch.from_numpy(np.stack([x, x])), 44100, 16000)
    assert isinstance(t, torch.Tensor) and t.shape == (2, len(y))
    np.testing.assert_allclose(t[0].numpy(), y, atol=1e-6)
    assert resample(x, 16000, 16000) is x
    assert resample(np.zeros(0, np.float32), 8000, 16000).shape == (0,)


RATE_PAIRS = [(8000, 16000), (16000, 8000), (44100, 16000), (22050, 16000), (48000, 16000)]


@pytest.mark.parametrize("orig,new", RATE_PAIRS)
@pytest.mark.parametrize("blocks", ["1", "997", "4096", "random"])
def test_streaming_resampler_matches_whole_signal(orig, new, blocks):
    rng = np.random.default_rng(orig + new)
    n = 1500 if blocks == "1" else 12_345
    x = (rng.standard_normal(n) * 0.3).astype(np.float32)
    ref = resample(x, orig, new)
    r = StreamingResampler(orig, new)
    outs, i = [], 0
    while i < n:
        size = int(rng.integers(1, 3000)) if blocks == "random" else int(blocks)
        outs.append(r.push(x[i:i + size]))
        i += size
    outs.append(r.flush())
    y = np.concatenate(outs)
    assert len(y) == len(ref)
    assert np.abs(y - ref).max() < 1e-5


@pytest.mark.parametrize("n", [0, 1, 3, 50])
def test_streaming_resampler_short_signals(n):
    x = np.linspace(-0.5, 0.5, n, dtype=np.float32)
    r = StreamingResampler(44100, 16000)
    y = np.concatenate([r.push(x), r.flush()])
    assert len(y) == len(resample(x, 44100, 16000))
    np.testing.assert_allclose(y, resample(x, 44100, 16000), atol=1e-5)


def test_streaming_resampler_emits_incrementally():
    r = StreamingResampler(48000, 16000)
    out = r.push(np.zeros(48000, np.float32))
    assert 15000 < len(out) <= 16000  # only the right context is held back


# ---------------------------------------------------------------- writing

def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_audio_is_atomic_and_clean(tmp_path):
    dest = tmp_path / "out" / "nested" / "x.wav"
    write_audio(dest, np.array([0.0, 2.0, -3.0, 0.5], np.float32), 8000)
    assert _leftovers(dest.parent) == ["x.wav"]
    info = sf.info(str(dest))
    assert info.subtype == "PCM_16" and info.samplerate == 8000
    data, _ = sf.read(str(dest), dtype="float32")
    assert data.max() <= 1.0 and data.min() >= -1.0 and data[1] > 0.99 and data[2] < -0.99
    write_audio(tmp_path / "out" / "y.flac", np.zeros(10), 16000)
    assert sf.info(str(tmp_path / "out" / "y.flac")).format == "FLAC"
    write_audio(tmp_path / "out" / "raw", np.zeros(10), 16000, format="wav")
    assert sf.info(str(tmp_path / "out" / "raw")).format == "WAV"
    assert _leftovers(tmp_path / "out") == ["nested", "raw", "y.flac"]


def test_write_audio_unknown_format(tmp_path):
    with pytest.raises(ValueError, match="unsupported format"):
        write_audio(tmp_path / "x.xyz", np.zeros(10), 16000)
    assert _leftovers(tmp_path) == []


def test_write_audio_to_memory_uri():
    fs = fsspec.filesystem("memory")
    try:
        write_audio("memory://clipsep_io_w/sub/a.flac", tone(440, 16000, 0.1), 16000)
        got, sr = load_audio("memory://clipsep_io_w/sub/a.flac")
        assert sr == 16000 and len(got) == 1600
        assert fs.ls("/clipsep_io_w/sub", detail=False) == ["/clipsep_io_w/sub/a.flac"]
    finally:
        fs.rm("/clipsep_io_w", recursive=True)


def test_streaming_writer_success(tmp_path):
    dest = tmp_path / "s.flac"
    parts = [tone(440, 8000, 0.1), tone(440, 8000, 0.2)]
    with StreamingAudioWriter(dest, 8000) as w:
        for p in parts:
            w.write(p)
        assert not dest.exists()  # nothing under the final name until close
    got, sr = load_audio(dest)
    np.testing.assert_allclose(got, np.concatenate(parts), atol=1.0 / 32768 + 1e-6)
    assert _leftovers(tmp_path) == ["s.flac"]


def test_streaming_writer_exception_leaves_nothing(tmp_path):
    dest = tmp_path / "fail.wav"
    with pytest.raises(RuntimeError, match="boom"):
        with StreamingAudioWriter(dest, 8000) as w:
            w.write(tone(440, 8000, 0.1))
            raise RuntimeError("boom")
    assert _leftovers(tmp_path) == []


def test_streaming_writer_exception_keeps_previous_file(tmp_path):
    dest = tmp_path / "keep.wav"
    write_audio(dest, np.full(100, 0.25, np.float32), 8000)
    with pytest.raises(KeyError):
        with StreamingAudioWriter(dest, 8000) as w:
            w.write(np.zeros(50, np.float32))
            raise KeyError("x")
    got, _ = load_audio(dest)
    assert len(got) == 100 and abs(got[0] - 0.25) < 1e-3
    assert _leftovers(tmp_path) == ["keep.wav"]


def test_streaming_resampler_multichannel_matches_per_channel():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 20011)).astype(np.float32)
    sr = StreamingResampler(16000, 44100)
    parts = [sr.push(x[:, i:i + 1999]) for i in range(0, x.shape[1], 1999)] + [sr.flush()]
    got = np.concatenate(parts, axis=1)
    want = np.stack([resample(ch, 16000, 44100) for ch in x])
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_truncated_wav_is_an_error_not_a_shorter_file(tmp_path):
    from clipsep_ray.audio.io import AudioDecodeError, AudioReader

    wave = (0.1 * np.sin(np.arange(16000) / 5)).astype(np.float32)
    write_audio(str(tmp_path / "full.wav"), wave, 16000)
    data = (tmp_path / "full.wav").read_bytes()
    (tmp_path / "half.wav").write_bytes(data[: len(data) // 2])
    with AudioReader(str(tmp_path / "full.wav")) as r:
        assert len(r.read()) == 16000
    with pytest.raises(AudioDecodeError, match="half.wav.*truncated"):
        AudioReader(str(tmp_path / "half.wav"))


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_encode_audio_in_memory_matches_the_written_file(tmp_path, fmt):
    from clipsep_ray.audio.io import encode_audio

    wave = (np.random.default_rng(0).standard_normal((2, 1600)) * 0.2).astype(np.float32)
    data = encode_audio(wave, 16000, fmt)
    write_audio(str(tmp_path / f"a.{fmt}"), wave, 16000)
    got, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    ref, _ = sf.read(str(tmp_path / f"a.{fmt}"), dtype="float32", always_2d=True)
    assert sr == 16000 and got.shape == (1600, 2)
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError, match="unsupported format"):
        encode_audio(wave, 16000, "xyz")


@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_int16_pcm_encodes_to_the_same_bytes_as_the_float_audio_it_came_from(fmt):
    from clipsep_ray.audio.io import encode_audio, to_pcm16

    wave = (np.random.default_rng(1).standard_normal(1600) * 0.5).astype(np.float32)  # some samples clip
    pcm = to_pcm16(wave)
    assert pcm.dtype == np.int16 and pcm.max() == 32767 and pcm.min() == -32768
    # a 16-bit file read (v / 32768) and written again is the same samples, full scale included
    ints = np.array([-32768, -30000, -1, 0, 1, 30000, 32767], np.int16)
    np.testing.assert_array_equal(to_pcm16(ints.astype(np.float32) / 32768), ints)
    assert encode_audio(pcm, 16000, fmt) == encode_audio(wave, 16000, fmt)
    # Into a lossy float codec the PCM is scaled back to [-1, 1] (Vorbis overshoots a little), not
    # written as sample counts.
    back, _ = sf.read(io.BytesIO(encode_audio(pcm, 16000, "ogg")), dtype="float32")
    assert np.abs(back).max() < 2.0 and np.corrcoef(back, np.clip(wave, -1, 1))[0, 1] > 0.95


def test_non_finite_samples_and_extreme_rates_are_refused(tmp_path):
    from clipsep_ray.audio.io import AudioDecodeError, AudioReader, RateError, check_rate, check_rates

    wave = np.zeros(16000 * 3, np.float32)
    wave[16000 * 2 + 5] = np.inf
    sf.write(str(tmp_path / "inf.wav"), wave, 16000, subtype="FLOAT")
    with AudioReader(str(tmp_path / "inf.wav")) as reader, \
            pytest.raises(AudioDecodeError, match=r"inf.wav.*NaN or infinite samples \(the first at 2.000 s\)"):
        list(reader.blocks(4000))
    for ok in (8000, 44100, 384_000):
        check_rate(ok)
    check_rates(384_000, 16000)
    for bad in (0, -8000, 384_001, 655_350):
        with pytest.raises(RateError, match="is not taken here"):
            check_rate(bad)
    with pytest.raises(RateError):
        check_rates(655_350, 16000)


def test_an_inputs_outputs_are_published_together_or_not_at_all(tmp_path):
    """The second output cannot take its name (a folder is in the way): the first, already
    published, is removed again, and no temporary file is left."""
    from clipsep_ray.audio.io import StreamingAudioWriter, close_writers

    out = tmp_path / "x"
    (out / "residual.flac").mkdir(parents=True)
    writers = [StreamingAudioWriter(str(out / name), 8000) for name in ("dog.flac", "residual.flac")]
    for w in writers:
        w.write(np.zeros(800, np.float32))
    with pytest.raises(OSError):
        close_writers(writers, commit=True)
    assert sorted(p.name for p in out.iterdir()) == ["residual.flac"] and (out / "residual.flac").is_dir()
    close_writers(writers, commit=False, folder=str(out))  # what a caller's clean-up does after: nothing left to do
    (out / "residual.flac").rmdir()
    w = StreamingAudioWriter(str(out / "dog.flac"), 8000)
    close_writers([w], commit=False, folder=str(out))
    assert not out.exists()  # a failed input leaves no empty folder


def test_a_wav_output_past_4_gib_is_refused_not_written_wrapped(tmp_path, monkeypatch):
    """libsndfile writes a WAV's 32-bit sizes wrapped past 4 GiB (readers then see it cut short).
    The bound is lowered here so the test writes kilobytes, not gigabytes; RF64 has none."""
    from clipsep_ray.audio import io as aio

    monkeypatch.setattr(aio, "WAV_MAX_BYTES", 3000)
    w = aio.StreamingAudioWriter(str(tmp_path / "long.wav"), 8000)
    w.write(np.zeros(1000, np.float32))  # 2,000 bytes of 16-bit samples
    with pytest.raises(ValueError, match="long.wav: a WAV file holds at most 4 GiB"):
        w.write(np.zeros(1000, np.float32))
    w.close(commit=False)
    with aio.StreamingAudioWriter(str(tmp_path / "t.wav"), 8000, format="rf64", subtype="FLOAT") as w:
        for _ in range(3):
            w.write(np.zeros(1000, np.float32))
    assert sf.info(str(tmp_path / "t.wav")).format == "RF64" and sf.info(str(tmp_path / "t.wav")).frames == 3000
    assert not list(tmp_path.glob(".*"))


def _encode_raw(path, container: str, codec: str, rate: int, seconds: float, tracks=((0.5, True),)):
    """A file of ``codec`` tones at ``rate`` (one stream per (amplitude, default) in ``tracks``)."""
    import av

    n = int(rate * seconds)
    with av.open(str(path), "w", format=container) as c:
        streams = []
        for amp, default in tracks:
            st = c.add_stream(codec, rate=rate, layout="mono")
            st.disposition = av.stream.Disposition.default if default else av.stream.Disposition(0)
            streams.append((st, amp))
        for st, amp in streams:
            x = (amp * 32767 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.int16)[None]
            frame = av.AudioFrame.from_ndarray(x, format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, 0
            for pkt in [*st.encode(frame), *st.encode(None)]:
                c.mux(pkt)


def test_joined_segments_at_two_rates_are_refused_and_joined_mp3s_decode_whole(tmp_path):
    """Bytes of two AC3 files at 48 and 44.1 kHz joined (as in broadcast captures): the second
    half was decoded at the first's rate, 9% fast, with no error. Two MP3s joined: libsndfile
    stopped at the first one's declared length."""
    _encode_raw(tmp_path / "a.ac3", "ac3", "ac3", 48000, 1.0)
    _encode_raw(tmp_path / "b.ac3", "ac3", "ac3", 44100, 1.0)
    (tmp_path / "ab.ac3").write_bytes((tmp_path / "a.ac3").read_bytes() + (tmp_path / "b.ac3").read_bytes())
    with AudioReader(tmp_path / "ab.ac3") as reader, \
            pytest.raises(AudioDecodeError, match=r"changes sample rate at 1\.\d+ s \(48000 -> 44100 Hz\)"):
        reader.read()
    one = tmp_path / "one.mp3"
    sf.write(str(one), tone(440, 22050, 1.0), 22050, format="MP3")
    (tmp_path / "two.mp3").write_bytes(one.read_bytes() * 2)
    single, joined = load_audio(one)[0], load_audio(tmp_path / "two.mp3")[0]
    # both halves (the second keeps its encoder delay: FFmpeg strips gapless padding of the first only)
    assert 2 * len(single) <= len(joined) < 2 * len(single) + 0.15 * 22050


def test_the_default_audio_track_is_read_not_merely_the_first(tmp_path):
    _encode_raw(tmp_path / "film.mkv", "matroska", "flac", 16000, 0.5, tracks=((0.0, False), (0.5, True)))
    wave, _ = load_audio(tmp_path / "film.mkv")
    assert np.sqrt(np.mean(wave ** 2)) > 0.3  # the tone, not the silent first track


def test_a_chained_ogg_is_refused_not_cut_to_its_first_link(tmp_path):
    """``cat a.ogg b.ogg`` (a radio recording): libsndfile decoded the first link and stopped."""
    one = tmp_path / "one.ogg"
    sf.write(str(one), tone(440, 16000, 1.0), 16000, format="OGG")
    assert len(load_audio(one)[0]) == 16000  # a plain Ogg file reads whole
    sf.write(str(tmp_path / "two.ogg"), tone(660, 16000, 1.0), 16000, format="OGG")
    chained = one.read_bytes() + (tmp_path / "two.ogg").read_bytes()
    (tmp_path / "chain.ogg").write_bytes(chained)
    for source in (tmp_path / "chain.ogg", chained):  # a path, and an upload's bytes (no extension)
        with pytest.raises(AudioDecodeError, match="a chained Ogg file"):
            AudioReader(source)
