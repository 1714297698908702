"""Decode, resample, encode and stream audio.

Every reader returns mono float32 in [-1, 1]: shape ``(T,)``. Sources are local paths,
fsspec URIs (``s3://``, ``file://``, ``memory://``, ...) or raw bytes. wav/flac/ogg/mp3
go through soundfile; everything else (m4a/aac, the audio track of mp4/mkv/webm/mov/avi)
and anything soundfile refuses goes through PyAV. Long files are read block by block
(:class:`AudioReader`), so memory does not grow with the file's length.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import re
import tempfile
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
import torchaudio

from clipsep_ray.storage import hidden_temp, without_query

# Every container this build's libsndfile or FFmpeg (PyAV) decodes the usual codecs of
# (checked against av.formats_available and av.codecs_available).
SUPPORTED_AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".m4b", ".aac", ".aif",
                              ".aiff", ".aifc", ".w64", ".au", ".snd", ".caf", ".wma", ".mka", ".amr", ".ac3",
                              ".eac3", ".mp2", ".wv")
SUPPORTED_VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".wmv", ".asf", ".mpg", ".mpeg",
                              ".ts", ".mts", ".m2ts", ".vob", ".3gp", ".3g2", ".flv", ".ogv")
# Not .mp3: libsndfile stops at the length an MP3's Xing header declares, so two joined MP3s decoded
# as the first one (FFmpeg decodes every frame).
_SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc", ".w64", ".au", ".snd")
_WRITE_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"),
                  ".ogg": ("OGG", "VORBIS"), ".mp3": ("MP3", "MPEG_LAYER_III"), ".rf64": ("RF64", "PCM_16")}
#: A WAV file's sizes are 32-bit: libsndfile writes them wrapped past 4 GiB, and readers then see
#: the audio cut short (16-bit mono at 48 kHz: 12.4 hours). RF64 (``format="rf64"``) has no bound.
WAV_MAX_BYTES = (1 << 32) - 1 - 4096
_SAMPLE_BYTES = {"PCM_U8": 1, "PCM_S8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}


class AudioDecodeError(ValueError):
    """A source could not be decoded; the message names the source and the reason."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"cannot decode audio from {source}: {reason}")
        self.source, self.reason = source, reason


def extension(path) -> str:
    """What follows the last dot of the file name, lower-case, with the dot ('' when none).

    Unlike ``os.path.splitext`` a name of leading dots keeps its extension: ``...wav`` -> ``.wav``.
    """
    base = without_query(str(path)).replace("\\", "/").rsplit("/", 1)[-1]
    return "." + base.rsplit(".", 1)[1].lower() if "." in base else ""


def is_media_file(path) -> bool:
    """True when ``path``'s extension is a supported audio or video container."""
    ext = extension(path)
    return ext in SUPPORTED_AUDIO_EXTENSIONS or ext in SUPPORTED_VIDEO_EXTENSIONS


def _is_uri(path: str) -> bool:
    return "://" in path


def _describe(source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes in memory>"
    return repr(os.fspath(source))


def pcm_to_float(data: np.ndarray) -> np.ndarray:
    """Integer PCM (signed, or unsigned with its offset) scaled to [-1, 1) as a file reads it
    (16-bit: v / 32768); any other dtype as it is."""
    if not np.issubdtype(data.dtype, np.integer):
        return data
    info = np.iinfo(data.dtype)
    return (data.astype(np.float64) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)


def _to_mono_float(data: np.ndarray) -> np.ndarray:
    """(T, C) any dtype -> (T,) float32, integer PCM scaled to [-1, 1]."""
    data = pcm_to_float(data)
    if data.shape[1] == 1:
        return np.ascontiguousarray(data[:, 0], dtype=np.float32)
    # Channel by channel in float64: numpy's ``mean(axis=1)`` over 2 columns is a strided
    # reduction 25x slower (0.55 s against 0.02 s for 5 minutes of 44.1 kHz stereo), which was a
    # tenth of the whole separation of such a file with the tiny model.
    acc = data[:, 0].astype(np.float64)
    for c in range(1, data.shape[1]):
        acc += data[:, c]
    acc *= 1.0 / data.shape[1]
    return acc.astype(np.float32)


_DATA_CHUNK = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.M)
_UNKNOWN_LENGTHS = (0, 0xFFFFFFFF, 0x7FFFFFFF)  # streamed WAVs that never wrote their length


#: A source's precision (``AudioReader.depth``): "16" for 16-bit or coarser PCM and every lossy
#: codec, "24"/"32" for deeper integer PCM, "float" for float samples (which may pass full scale).
_SF_DEPTH = {"PCM_24": "24", "PCM_32": "32", "FLOAT": "float", "DOUBLE": "float"}
_LOSSLESS_CODECS = ("flac", "alac", "wavpack", "tta", "ape", "mlp", "truehd")


def _av_depth(cc) -> str:
    if not (cc.name.startswith("pcm_") or cc.name in _LOSSLESS_CODECS):
        return "16"  # a lossy codec: its decoder's float output holds no more than the codec kept
    if cc.name.startswith("pcm_f"):
        return "float"
    bits = int(getattr(cc, "bits_per_raw_sample", 0) or 0) or 8 * int(getattr(cc.format, "bytes", 2) or 2)
    return "16" if bits <= 16 else "24" if bits <= 24 else "32"


def output_subtype(depth: str, dest: str) -> str | None:
    """The sample format of an output file ``dest`` for a source of precision ``depth``
    (:attr:`AudioReader.depth`), None for the format's default (16-bit). Stems of a 24-bit source
    written in 16 bits no longer added up to it (3% off on a quiet one); a float source keeps its
    samples past full scale in a float WAV, and a FLAC holds 24 bits (clipped at full scale)."""
    ext = extension(dest)
    if ext not in (".wav", ".rf64", ".flac") or depth == "16":
        return None
    return "FLOAT" if depth == "float" and ext != ".flac" else "PCM_24"


def sample_bytes(subtype: str | None) -> int:
    """Bytes per sample of a PCM/float subtype (None: the 16-bit default)."""
    return _SAMPLE_BYTES.get(subtype or "PCM_16", 2)


def _check_complete(name: str, f: "sf.SoundFile") -> None:
    """A RIFF/WAV file whose header promises more audio than the file holds is truncated:
    libsndfile would silently decode the part that is there."""
    m = _DATA_CHUNK.search(f.extra_info or "")
    if m and int(m.group(1)) > int(m.group(2)) and int(m.group(1)) not in _UNKNOWN_LENGTHS:
        raise AudioDecodeError(name, f"truncated: the header declares {m.group(1)} bytes of audio, "
                                     f"the file holds {m.group(2)}")


def _ffmpeg_reason(e: Exception) -> str:
    """FFmpeg's own words ("Invalid data found when processing input"), without the errno and the
    path that PyAV's message repeats (the path is already in :class:`AudioDecodeError`)."""
    return f"{getattr(e, 'strerror', None) or e} (ffmpeg)"


def _ogg_is_chained(target) -> bool:
    """True when the last Ogg page belongs to another logical stream than the first: libsndfile
    decodes the first link of a chained file (a radio recording, ``cat a.ogg b.ogg``) and stops,
    silently. Reads the first page header and the file's last 64 KB."""
    fh = open(target, "rb") if isinstance(target, (str, os.PathLike)) else target
    try:
        pos = fh.tell()
        fh.seek(0)
        head = fh.read(18)
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 65536))
        tail = fh.read()
        fh.seek(pos)
    finally:
        if fh is not target:
            fh.close()
    i = tail.rfind(b"OggS")
    return head[:4] == b"OggS" and 0 <= i <= len(tail) - 18 and tail[i + 14:i + 18] != head[14:18]


def _soundfile_reason(e: Exception) -> str:
    """libsndfile's reason, without the "Error opening '<path>': " that soundfile puts before it.
    For bytes it cannot parse as the format its extension names (random bytes as ``.mp3``), it
    says "File does not exist or is not a regular file (possibly a pipe?)" of a file that exists:
    that is replaced by what it means."""
    text = getattr(e, "error_string", None) or str(e)
    if "does not exist or is not a regular file" in text:
        return "not a format it recognises"
    return text


class AudioReader:
    """Streaming decoder of one source. Use as a context manager.

    Attributes: ``sample_rate`` (native rate), ``num_frames`` (samples per channel, or
    None when the container does not say, as for some PyAV streams), ``channels``,
    ``exact_length`` (True when decoding stops at ``num_frames``: libsndfile's formats; a
    PyAV container's duration is only what it declares, and its packets may hold more).
    ``blocks(n)`` yields mono float32 ``(n,)`` arrays (the last may be shorter).
    """

    def __init__(self, source):
        self.name = _describe(source)
        self._file = None  # what we opened and must close
        self._sf = self._av = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise AudioDecodeError(self.name, "empty file")
            target, ext = io.BytesIO(bytes(source)), ""
        else:
            path = os.fspath(source)
            ext = extension(path)
            if _is_uri(path):
                from clipsep_ray.storage import url_to_fs

                fs, fpath = url_to_fs(path)
                if fs.size(fpath) == 0:
                    raise AudioDecodeError(self.name, "empty file")
                self._file = target = fs.open(fpath, "rb")
            else:
                if os.path.getsize(path) == 0:  # FileNotFoundError when missing
                    raise AudioDecodeError(self.name, "empty file")
                target = path
        try:
            self._open(target, ext)
        except BaseException:
            self.close()
            raise

    def _open(self, target, ext: str) -> None:
        sf_error = None
        if ext in _SOUNDFILE_EXTENSIONS or ext == "":
            try:
                self._sf = sf.SoundFile(target)
                _check_complete(self.name, self._sf)
                if self._sf.format == "OGG" and _ogg_is_chained(target):
                    raise AudioDecodeError(self.name, "a chained Ogg file (streams one after another): only the "
                                                      "first would be decoded; re-encode it as one stream")
                self.sample_rate, self.channels = self._sf.samplerate, self._sf.channels
                self.depth = _SF_DEPTH.get(self._sf.subtype, "16")
                self.num_frames = self._sf.frames if self._sf.frames > 0 else None
                self.exact_length = self.num_frames is not None  # libsndfile reads no further
                return
            except (sf.LibsndfileError, RuntimeError, TypeError) as e:
                sf_error = e
                if hasattr(target, "seek"):
                    target.seek(0)
        import av  # imported lazily: wav/flac users never pay for FFmpeg
        try:
            self._av = av.open(target, mode="r")
        except (av.FFmpegError, OSError, ValueError) as e:
            reason = _ffmpeg_reason(e) + (f"; soundfile: {_soundfile_reason(sf_error)}" if sf_error else "")
            raise AudioDecodeError(self.name, f"corrupt or unsupported: {reason}") from e
        if not self._av.streams.audio:
            raise AudioDecodeError(self.name, "no audio stream")
        # The track marked default, else the first: a film's first track may be a silent commentary.
        self._stream = next((st for st in self._av.streams.audio if st.disposition & av.stream.Disposition.default),
                            self._av.streams.audio[0])
        cc = self._stream.codec_context
        # The rate of the first decoded frame, not only the container's: its probe may have read a
        # later segment of joined ones, and HE-AAC decodes at twice the rate it is stored at.
        self._frames = self._av.decode(self._stream)
        try:
            self._first = next(self._frames, None)
        except av.FFmpegError as e:
            raise AudioDecodeError(self.name, f"corrupt or unsupported: {e}") from e
        self.sample_rate = int(self._first.sample_rate if self._first is not None else cc.sample_rate)
        self.channels = int(cc.channels)
        self.depth = _av_depth(cc)
        if not self.sample_rate:
            raise AudioDecodeError(self.name, "corrupt or unsupported: audio stream has no sample rate")
        self.num_frames, self.exact_length = None, False
        if self._stream.duration is not None and self._stream.time_base is not None:
            self.num_frames = int(round(float(self._stream.duration * self._stream.time_base) * self.sample_rate))

    def _raw_chunks(self) -> Iterator[np.ndarray]:
        """Mono float32 chunks of whatever size the decoder produces."""
        if self._sf is not None:
            while True:
                try:
                    data = self._sf.read(65536, dtype="float32", always_2d=True)
                except (sf.LibsndfileError, RuntimeError) as e:
                    raise AudioDecodeError(self.name, f"corrupt or unsupported: {e}") from e
                if len(data) == 0:
                    return
                yield _to_mono_float(data)
            return
        import av
        done = 0
        frames = self._frames if self._first is None else itertools.chain([self._first], self._frames)
        self._first = None
        try:
            for frame in frames:
                if frame.sample_rate != self.sample_rate:  # joined segments (broadcast .ts, ad inserts)
                    raise AudioDecodeError(self.name, f"the audio changes sample rate at {done / self.sample_rate:.3f} "
                                                      f"s ({self.sample_rate} -> {frame.sample_rate} Hz): re-encode it "
                                                      "at one rate")
                done += frame.samples
                arr = frame.to_ndarray()
                nch = len(frame.layout.channels)
                # packed formats come as (1, samples * channels), planar as (channels, samples)
                arr = arr.reshape(-1, nch) if not frame.format.is_planar else arr.T
                yield _to_mono_float(arr)
        except av.FFmpegError as e:
            raise AudioDecodeError(self.name, f"corrupt or unsupported: {e}") from e

    def blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        """Yield mono float32 blocks of exactly ``block_frames`` samples (last one shorter)."""
        if block_frames <= 0:
            raise ValueError(f"block_frames must be positive, got {block_frames}")
        pending: list[np.ndarray] = []
        have = total = 0
        for chunk in self._raw_chunks():
            if not np.isfinite(chunk).all():  # a float file can hold them; every stem would be NaN
                at = (total + have + int(np.argmin(np.isfinite(chunk)))) / self.sample_rate
                raise AudioDecodeError(self.name, f"the audio holds NaN or infinite samples (the first at {at:.3f} s)")
            pending.append(chunk)
            have += len(chunk)
            while have >= block_frames:
                buf = np.concatenate(pending)
                yield buf[:block_frames]
                total += block_frames
                rest = buf[block_frames:]
                pending, have = ([rest] if len(rest) else []), len(rest)
        if have:
            total += have
            yield np.concatenate(pending)
        if total == 0:
            raise AudioDecodeError(self.name, "no audio samples (zero-length stream)")

    def read(self) -> np.ndarray:
        """Decode everything that is left: mono float32 ``(T,)``."""
        return np.concatenate(list(self.blocks(1 << 20)))

    def close(self) -> None:
        for obj in (self._sf, self._av, self._file):
            if obj is not None:
                obj.close()
        self._sf = self._av = self._file = None

    def __enter__(self) -> "AudioReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_audio(source, target_sr: int | None = None) -> tuple[np.ndarray, int]:
    """Decode ``source`` to mono float32 ``(T,)``; resample to ``target_sr`` if given.

    Returns ``(wave, sample_rate)``. Raises :class:`AudioDecodeError` (naming the source)
    for empty, corrupt or audio-less inputs, FileNotFoundError for missing local paths.
    """
    with AudioReader(source) as reader:
        wave, sr = reader.read(), reader.sample_rate
    if target_sr is not None and target_sr != sr:
        wave, sr = resample(wave, sr, target_sr), int(target_sr)
    return wave, sr


def iter_audio_blocks(source, block_seconds: float = 30.0) -> Iterator[np.ndarray]:
    """Stream ``source`` as mono float32 blocks of ``block_seconds`` at its native rate.

    Use :class:`AudioReader` directly when the rate is needed before the first block.
    """
    with AudioReader(source) as reader:
        yield from reader.blocks(max(1, int(round(block_seconds * reader.sample_rate))))


#: The most filter taps a resampler may hold (64 MB as float32). torchaudio's kernel has
#: n x (o + 2 x width) taps, n/o the reduced rates: 44.1 -> 16 kHz takes 160 x 475, but a file that
#: declares 48,001 Hz would take 16,000 x 48,039, 3 GB for one kernel (and float64 intermediates of
#: that size). Refused, among rates in use: 44,056 Hz (old NTSC video) against 11.025, 22.05 and
#: 44.1 kHz models (121-486 M taps); fine against 8, 16 and 48 kHz ones.
MAX_RESAMPLER_TAPS = 1 << 24


#: The highest sample rate taken (DXD, the fastest studio converters). A file may declare any rate
#: up to 655,350 Hz: 10 minutes of silence at that rate is a 1.3 MB FLAC and 1.6 GB of float32 samples.
MAX_SAMPLE_RATE = 384_000


class RateError(ValueError):
    """A sample rate that cannot be resampled to another within the resampler's bound."""


def check_rate(sr: int) -> None:
    """Raise :class:`RateError` for a rate that is not positive or above :data:`MAX_SAMPLE_RATE`."""
    if not 0 < int(sr) <= MAX_SAMPLE_RATE:
        raise RateError(f"a sample rate of {int(sr):,} Hz is not taken here (1 Hz to {MAX_SAMPLE_RATE:,} Hz); "
                        "convert the file to a usual rate first")


class TooLongError(ValueError):
    """A source longer than a caller's limit (found while decoding, when its header did not say)."""

    def __init__(self, source: str, max_seconds: float):
        super().__init__(f"{source} is longer than {max_seconds:g} s")
        self.source, self.max_seconds = source, max_seconds


def _sinc_width(o: int, n: int, lowpass_filter_width: int, rolloff: float) -> int:
    """Half-width, in input samples, of torchaudio's sinc kernel for reduced rates ``o`` -> ``n``."""
    return math.ceil(lowpass_filter_width * o / (min(o, n) * rolloff))


def check_rates(orig_sr: int, new_sr: int, width: int = 6, rolloff: float = 0.99) -> None:
    """Raise :class:`RateError` when ``orig_sr`` -> ``new_sr`` is not a usable resampling: the size
    of torchaudio's sinc kernel for them (``lowpass_filter_width`` ``width``) past the bound."""
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    check_rate(orig_sr)
    check_rate(new_sr)
    g = math.gcd(orig_sr, new_sr)
    o, n = orig_sr // g, new_sr // g
    taps = n * (o + 2 * _sinc_width(o, n, width, rolloff))
    if taps > MAX_RESAMPLER_TAPS:
        raise RateError(f"{orig_sr} Hz cannot be resampled to {new_sr} Hz here: the two rates have no common "
                        f"factor large enough ({taps:,} filter taps); convert the file to a usual rate first")


def resample(wave, orig_sr: int, new_sr: int):
    """Band-limited (windowed sinc) resampling along the last axis.

    ``wave``: np.ndarray or Tensor ``(..., T)``; returns the same type, float. Output length
    is ``ceil(T * new_sr / orig_sr)`` (torchaudio's convention). Identity when rates match.
    """
    if int(orig_sr) == int(new_sr):
        return wave
    check_rates(orig_sr, new_sr)
    if wave.shape[-1] == 0:  # torchaudio cannot reshape an empty signal
        return wave[..., :0] if isinstance(wave, torch.Tensor) else np.asarray(wave, np.float32)[..., :0]
    if isinstance(wave, torch.Tensor):
        return torchaudio.functional.resample(wave if wave.is_floating_point() else wave.float(), int(orig_sr), int(new_sr))
    arr = np.asarray(wave)
    arr = arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float32)
    return torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(arr)), int(orig_sr), int(new_sr)).numpy()


class StreamingResampler:
    """Resample a stream block by block; outputs concatenate to :func:`resample`'s.

    Blocks are mono ``(t,)`` or multichannel ``(C, t)`` (one call for every channel, e.g.
    all stems of a separation); outputs have the blocks' shape.

    The whole-signal resampler computes output group ``k`` (``new/g`` samples, g = gcd of
    the rates) from input ``[k*o - w, k*o + o + w)``, o = orig/g, w = the sinc half-width.
    We therefore resample spans starting at multiples of ``o`` with ``C >= w`` samples of
    real context on both sides and drop the context's outputs; ``flush`` lets the right
    edge be zero-padded exactly like the whole-signal call. Memory stays O(block + C).
    """

    def __init__(self, orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99):
        self.orig_sr, self.new_sr = int(orig_sr), int(new_sr)
        if self.orig_sr != self.new_sr:
            check_rates(self.orig_sr, self.new_sr, lowpass_filter_width, rolloff)
        g = math.gcd(self.orig_sr, self.new_sr)
        self._o, self._n = self.orig_sr // g, self.new_sr // g
        half_width = _sinc_width(self._o, self._n, lowpass_filter_width, rolloff)
        self._ctx = self._o * (half_width // self._o + 2)  # a multiple of o, with margin
        self._resampler = torchaudio.transforms.Resample(
            self.orig_sr, self.new_sr, lowpass_filter_width=lowpass_filter_width, rolloff=rolloff, dtype=torch.float32)
        self._reset()

    def _reset(self) -> None:
        self._buf: np.ndarray | None = None  # (C, T) input from absolute index _buf_start
        self._mono = True
        self._buf_start = 0
        self._next = 0  # first input index (multiple of o) whose outputs are not emitted yet

    def _empty(self) -> np.ndarray:
        c = 1 if self._buf is None else self._buf.shape[0]
        return np.zeros((c, 0), np.float32)

    def _shape(self, out: np.ndarray) -> np.ndarray:
        return out[0] if self._mono else out

    def _run(self, stop: int) -> np.ndarray:
        """Resample buffer[:, : stop - _buf_start] and keep outputs for input groups >= _next."""
        seg = torch.from_numpy(np.ascontiguousarray(self._buf[:, : stop - self._buf_start]))
        with torch.no_grad():
            out = self._resampler(seg).numpy()
        return out[:, (self._next - self._buf_start) // self._o * self._n:]

    def push(self, block) -> np.ndarray:
        """Add samples ``(t,)`` or ``(C, t)``; return the output samples that are now final."""
        block = np.asarray(block, dtype=np.float32)
        if self.orig_sr == self.new_sr:
            return block.copy()
        mono = block.ndim == 1
        block = block.reshape(1, -1) if mono else block
        if self._buf is None:
            self._buf, self._mono = np.zeros((block.shape[0], 0), np.float32), mono
        self._buf = np.concatenate([self._buf, block], axis=1)
        end = self._buf_start + self._buf.shape[1]
        stop_group = (end - self._ctx) // self._o * self._o  # last span end with full right context
        if stop_group <= self._next:
            return self._shape(self._empty())
        out = self._run(stop_group + self._ctx)[:, : (stop_group - self._next) // self._o * self._n]
        self._next = stop_group
        keep_from = max(0, stop_group - self._ctx)
        self._buf = self._buf[:, keep_from - self._buf_start:]
        self._buf_start = keep_from
        return self._shape(out)

    def flush(self) -> np.ndarray:
        """Emit the rest (the signal's end is zero-padded, as in the whole-signal call)."""
        if self.orig_sr == self.new_sr or self._buf is None:
            return self._shape(self._empty()) if self._buf is not None else np.zeros(0, np.float32)
        end = self._buf_start + self._buf.shape[1]
        out = self._run(end) if end > self._next else self._empty()
        out = self._shape(out)
        self._reset()
        return out


def _format_for(dest: str, format: str | None, subtype: str | None) -> tuple[str, str]:
    ext = "." + format.lower().lstrip(".") if format else os.path.splitext(dest)[1].lower()
    if ext not in _WRITE_FORMATS:
        raise ValueError(f"cannot write {dest!r}: unsupported format {ext or '(no extension)'!r}; "
                         f"use one of {sorted(_WRITE_FORMATS)}")
    fmt, default_subtype = _WRITE_FORMATS[ext]
    return fmt, (subtype or default_subtype)


def to_pcm16(wave) -> np.ndarray:
    """Float audio in [-1, 1] (clipped beyond) -> int16 PCM, as the 16-bit subtypes store it.
    numpy's rounding is about 3x faster than libsndfile's float conversion, which matters when
    one input becomes many stems. Scaled by 32768, the inverse of how a 16-bit file reads (v / 32768):
    libsndfile's own x 32767 moved a full-scale input by a step on the way through (32767 -> 32766)."""
    return np.clip(np.rint(np.asarray(wave, dtype=np.float32) * 32768.0), -32768, 32767).astype(np.int16)


def _prepare(wave, subtype: str) -> np.ndarray:
    """(T,) or (C, T) float, or int16 PCM (:func:`to_pcm16`) -> soundfile's (T, C); clipped
    unless the subtype is float."""
    arr = np.asarray(wave.detach().cpu() if isinstance(wave, torch.Tensor) else wave)
    if arr.ndim not in (1, 2):
        raise ValueError(f"audio must be (T,) or (C, T), got shape {arr.shape}")
    arr = arr if arr.ndim == 1 else arr.T
    if arr.dtype == np.int16:
        return arr if subtype == "PCM_16" else arr.astype(np.float32) / 32768.0
    arr = arr.astype(np.float32, copy=False)
    if subtype in ("FLOAT", "DOUBLE"):
        return arr
    if subtype == "PCM_16":
        return to_pcm16(arr)
    return np.clip(arr, -1.0, 1.0)


class StreamingAudioWriter:
    """Write audio block by block to ``dest`` (path or fsspec URI), atomically.

    Blocks go to a temporary file (beside ``dest`` for local paths, a local temp file for
    URIs); a clean exit renames (or uploads) it to ``dest``. If the ``with`` block raises,
    the temporary file is removed and ``dest`` is not created. Defaults: wav and flac
    PCM_16, ogg Vorbis, mp3 layer III; samples are clipped to [-1, 1] unless
    ``subtype`` is FLOAT/DOUBLE.
    """

    def __init__(self, dest, sample_rate: int, format: str | None = None, channels: int = 1,
                 subtype: str | None = None, temp_dir: str | None = None):
        self.dest = os.fspath(dest)
        self._fmt, self._subtype = _format_for(self.dest, format, subtype)
        self._remote = _is_uri(self.dest) and not self.dest.startswith("file://")
        local = self.dest[len("file://"):] if self.dest.startswith("file://") else self.dest
        if self._remote:
            fd, self._tmp = tempfile.mkstemp(suffix=".tmp", dir=temp_dir)  # the local copy an upload sends
            os.close(fd)
        else:
            self._local = os.path.abspath(local)
            os.makedirs(os.path.dirname(self._local), exist_ok=True)
            self._tmp = hidden_temp(self._local)
        try:
            self._sf = sf.SoundFile(self._tmp, "w", samplerate=int(sample_rate), channels=int(channels),
                                    format=self._fmt, subtype=self._subtype)
        except BaseException:
            if os.path.exists(self._tmp):
                os.remove(self._tmp)
            raise
        self._frame_bytes = int(channels) * _SAMPLE_BYTES.get(self._subtype, 8) if self._fmt == "WAV" else 0
        self._bytes = 0

    def write(self, block) -> None:
        """Append ``(T,)`` (mono) or ``(C, T)`` samples."""
        data = _prepare(block, self._subtype)
        if self._frame_bytes:
            self._bytes += len(data) * self._frame_bytes
            if self._bytes > WAV_MAX_BYTES:
                raise ValueError(f"{self.dest}: a WAV file holds at most 4 GiB "
                                 f"({WAV_MAX_BYTES / self._frame_bytes / self._sf.samplerate / 3600:.1f} hours of this "
                                 "audio); write FLAC instead")
        self._sf.write(data)

    def close(self, commit: bool = True) -> None:
        if self._sf is None:
            return
        try:
            self._sf.close()
            self._sf = None
            if commit and self._remote:
                from clipsep_ray.storage import url_to_fs

                fs, path = url_to_fs(self.dest)
                fs.put_file(self._tmp, path)
            elif commit:
                os.replace(self._tmp, self._local)
        finally:
            self._sf = None
            if os.path.exists(self._tmp):
                os.remove(self._tmp)

    def unpublish(self) -> None:
        """Remove ``dest`` after a commit (its input's other outputs could not be published)."""
        if self._remote:
            from clipsep_ray.storage import url_to_fs

            fs, path = url_to_fs(self.dest)
            if fs.exists(path):
                fs.rm_file(path)
        elif os.path.exists(self._local):
            os.remove(self._local)

    def __enter__(self) -> "StreamingAudioWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(commit=exc_type is None)


def close_writers(writers, commit: bool, folder: str | None = None) -> None:
    """Close an input's output writers together. ``commit``: publish each under its final name;
    when one cannot be (an S3 PUT refused, a folder in the file's place), the others are discarded
    and those already published removed, so an input's outputs appear all together or not at all.
    A ``folder`` (local) left empty by a failure is removed."""
    writers, published = list(writers), []
    try:
        for w in writers:
            w.close(commit=commit)
            published.append(w)
        if commit:
            return
    except BaseException:
        for w in writers:
            with contextlib.suppress(Exception):  # the first error is the one to report
                w.close(commit=False)  # closes (and drops the temporaries of) those not reached
        for w in published if commit else ():
            with contextlib.suppress(Exception):
                w.unpublish()
        raise
    finally:
        if folder is not None and "://" not in folder:
            with contextlib.suppress(OSError):  # not empty (another input's folder inside), or gone
                os.rmdir(folder)


def encode_audio(wave, sample_rate: int, format: str, subtype: str | None = None) -> bytes:
    """``wave`` ``(T,)`` or ``(C, T)`` as the bytes of a ``format`` file (as :func:`write_audio`
    would write it), in memory: for answers that never touch the disk."""
    import io

    fmt, subtype = _format_for(f"stem.{format}", format, subtype)
    arr = _prepare(wave, subtype)
    buf = io.BytesIO()
    sf.write(buf, arr, int(sample_rate), format=fmt, subtype=subtype)
    return buf.getvalue()


def write_audio(dest, wave, sample_rate: int, format: str | None = None, subtype: str | None = None) -> None:
    """Write ``wave`` ``(T,)`` or ``(C, T)`` to ``dest`` atomically (see :class:`StreamingAudioWriter`).

    Format comes from the extension (wav, flac, ogg, mp3) unless ``format`` is given;
    parent folders are created; integer/lossy subtypes are clipped to [-1, 1].
    """
    arr = np.asarray(wave.detach().cpu() if isinstance(wave, torch.Tensor) else wave)
    with StreamingAudioWriter(dest, sample_rate, format, 1 if arr.ndim == 1 else arr.shape[0], subtype) as w:
        w.write(arr)
