"""Procedural sound generators, one per class of the synthetic world.

Every generator has the signature ``gen(rng, n, sr) -> np.ndarray`` (float64, shape
``(n,)``, arbitrary scale); ``world.render_sound`` normalises the result. All randomness
comes from ``rng`` (a ``numpy.random.Generator``), so a seed fixes a sound exactly.

Within-class variation: every clip draws its own pitch register, melody, tempo/rhythm,
timbre (harmonic weights, spectral tilt, formants, decay times) and loudness contour.
Overlaps on purpose: violin, flute and trumpet share the register C4-C6; rain, wind
and the engine's rumble are all filtered noise with overlapping bands. Musical and
animal content stays mostly below 4 kHz (a CPU preset resamples to 8 kHz); the noise
textures are broadband.
"""

from __future__ import annotations

import numpy as np

TWO_PI = 2.0 * np.pi


# ----------------------------------------------------------------------------- helpers
def _midi_hz(m):
    return 440.0 * 2.0 ** ((np.asarray(m, dtype=np.float64) - 69.0) / 12.0)


def _slow_curve(rng, n, sr, rate_hz):
    """Smooth random curve in about [-1, 1] with features at ``rate_hz`` (linear knots)."""
    knots = max(2, int(n / sr * rate_hz) + 2)
    vals = rng.uniform(-1.0, 1.0, knots)
    return np.interp(np.linspace(0, knots - 1, n), np.arange(knots), vals)


def _moving_average(x, width):
    width = max(1, int(width))
    if width == 1:
        return x
    c = np.cumsum(np.concatenate([np.full(width // 2, x[0]), x, np.full(width - width // 2, x[-1])]))
    return (c[width:width + len(x)] - c[:len(x)]) / width


def _fft_filter(x, sr, gain_fn):
    """Filter ``x`` by a zero-phase frequency response ``gain_fn(freqs_hz)``."""
    spec = np.fft.rfft(x)
    spec *= gain_fn(np.fft.rfftfreq(len(x), 1.0 / sr))
    return np.fft.irfft(spec, n=len(x))


def _bump(f, centre, width):
    return np.exp(-0.5 * ((f - centre) / width) ** 2)


def _colored_noise(rng, n, sr, gain_fn):
    return _fft_filter(rng.standard_normal(n), sr, gain_fn)


def _harmonic_sum(phase, f0, amps, sr, fmax=3800.0, bright=None):
    """Sum of harmonics ``sum_k amps[k] sin((k+1) phase)``, fading out near ``fmax``.

    phase, f0: per-sample arrays (n,). bright: optional per-sample (n,) exponent base in
    [0, 1]; harmonic k is scaled by ``bright ** k`` (louder -> brighter, as in brass).
    """
    out = np.zeros_like(phase)
    fmax = min(fmax, 0.45 * sr)
    for k, a in enumerate(amps):
        h = k + 1
        if a == 0.0 or h * f0.min() >= fmax:
            continue
        w = np.clip((fmax - h * f0) / (0.15 * fmax), 0.0, 1.0)
        term = a * w * np.sin(h * phase + 1.7 * k)
        if bright is not None and k:
            term *= bright ** k
        out += term
    return out


def _adsr(length, sr, attack, release, sustain_len):
    """Envelope of ``length`` samples: linear attack, hold, exponential-ish release."""
    t = np.arange(length) / sr
    env = np.clip(t / max(attack, 1e-3), 0.0, 1.0)
    rel_t = np.clip(t - sustain_len, 0.0, None)
    return env * np.exp(-rel_t / max(release, 1e-3) * 3.0)


_SCALES = ([0, 2, 4, 7, 9], [0, 3, 5, 7, 10], [0, 2, 4, 5, 7, 9, 11], [0, 2, 3, 5, 7, 8, 10])


def _melody(rng, seconds, lo, hi, durs, rest_p=0.1, max_step=3):
    """Random walk on a random scale: list of (onset_s, dur_s, midi)."""
    scale = _SCALES[rng.integers(len(_SCALES))]
    root = int(rng.integers(12))
    pitches = [m for m in range(lo, hi + 1) if (m - root) % 12 in scale]
    tempo = rng.uniform(0.75, 1.35)
    idx = int(rng.integers(len(pitches) // 4, 3 * len(pitches) // 4 + 1))
    t, notes = float(rng.uniform(0.0, 0.3)), []
    while t < seconds:
        d = float(rng.choice(durs)) * tempo
        if not notes or rng.random() >= rest_p:
            notes.append((t, d, pitches[idx]))
        idx = int(np.clip(idx + rng.integers(-max_step, max_step + 1), 0, len(pitches) - 1))
        t += d
    return notes


def _sustained(rng, n, sr, notes, amps, attack, release, legato, vib_cents, vib_rate,
               glide_s=0.03, bright=None):
    """Legato instrument: one continuous oscillator that follows the melody's pitch."""
    f0 = np.full(n, _midi_hz(notes[0][2]) if notes else 440.0)
    env = np.zeros(n)
    for on, d, m in notes:
        a = int(on * sr)
        if a >= n:
            break
        f0[a:] = _midi_hz(m)
        seg = min(n - a, int((d * legato + release) * sr))
        env[a:a + seg] = np.maximum(env[a:a + seg], _adsr(seg, sr, attack, release, d * legato))
    logf = _moving_average(np.log2(f0), glide_s * sr)
    t = np.arange(n) / sr
    depth = vib_cents * (0.6 + 0.4 * _slow_curve(rng, n, sr, 0.7))
    logf = logf + depth / 1200.0 * np.sin(TWO_PI * vib_rate * t + rng.uniform(0, TWO_PI))
    f0 = 2.0 ** logf
    phase = TWO_PI * np.cumsum(f0) / sr
    b = None if bright is None else (bright[0] + bright[1] * env)
    return env * _harmonic_sum(phase, f0, amps, sr, bright=b)


def _partials_event(n_len, sr, freqs, amps, taus, attack=0.002):
    """A struck/plucked event: decaying partials (freqs, amps, taus are arrays)."""
    t = (np.arange(n_len) / sr).astype(np.float32)
    out = np.zeros(n_len, dtype=np.float32)
    for f, a, tau in zip(freqs, amps, taus):
        m = min(n_len, int(7.0 * tau * sr))  # a partial is 60 dB down after 7 tau
        if f < 0.45 * sr and m > 0:
            tt = t[:m]
            out[:m] += np.float32(a) * np.exp(tt / np.float32(-tau)) * np.sin(np.float32(TWO_PI * f) * tt)
    return out.astype(np.float64) * np.clip(t / attack, 0.0, 1.0)


def _place(out, ev, start):
    if start >= len(out):
        return
    m = min(len(ev), len(out) - start)
    out[start:start + m] += ev[:m]


# ----------------------------------------------------------------------------- harmonic
def violin(rng, n, sr):
    notes = _melody(rng, n / sr, 55, 84, [0.25, 0.5, 0.5, 0.75, 1.0], rest_p=0.05)
    tilt = rng.uniform(0.8, 1.3)
    amps = [(1.0 / h ** tilt) * rng.uniform(0.6, 1.4) for h in range(1, 13)]
    x = _sustained(rng, n, sr, notes, amps, attack=rng.uniform(0.05, 0.15),
                   release=rng.uniform(0.08, 0.2), legato=0.95,
                   vib_cents=rng.uniform(15, 35), vib_rate=rng.uniform(5.0, 7.0))
    body = [rng.uniform(250, 350), rng.uniform(600, 900), rng.uniform(2000, 3000)]
    x = _fft_filter(x, sr, lambda f: 0.4 + sum(_bump(f, c, c * 0.25) for c in body))
    env = _moving_average(np.abs(x), int(0.02 * sr))
    bow = _colored_noise(rng, n, sr, lambda f: _bump(f, 2500, 1200)) * rng.uniform(0.02, 0.06)
    return x + bow * env / (env.max() + 1e-9)


def flute(rng, n, sr):
    notes = _melody(rng, n / sr, 60, 84, [0.25, 0.5, 0.75, 1.0, 1.5], rest_p=0.1, max_step=2)
    amps = [1.0, rng.uniform(0.2, 0.5), rng.uniform(0.05, 0.2), rng.uniform(0.0, 0.08),
            rng.uniform(0.0, 0.03)]
    x = _sustained(rng, n, sr, notes, amps, attack=rng.uniform(0.03, 0.08),
                   release=rng.uniform(0.05, 0.15), legato=rng.uniform(0.7, 0.95),
                   vib_cents=rng.uniform(5, 20), vib_rate=rng.uniform(4.0, 5.5))
    env = np.abs(x)
    env = _moving_average(env, int(0.02 * sr))
    breath = _colored_noise(rng, n, sr, lambda f: _bump(f, 1500, 900)) * rng.uniform(0.05, 0.15)
    return x + breath * env / (env.max() + 1e-9)


def trumpet(rng, n, sr):
    notes = _melody(rng, n / sr, 52, 79, [0.25, 0.25, 0.5, 0.75], rest_p=0.2, max_step=4)
    amps = [rng.uniform(0.6, 1.0) / h ** 0.5 for h in range(1, 15)]
    return _sustained(rng, n, sr, notes, amps, attack=rng.uniform(0.02, 0.05),
                      release=rng.uniform(0.04, 0.1), legato=rng.uniform(0.6, 0.85),
                      vib_cents=rng.uniform(0, 12), vib_rate=rng.uniform(5.0, 6.5),
                      glide_s=0.015, bright=(rng.uniform(0.2, 0.4), rng.uniform(0.4, 0.6)))


def piano(rng, n, sr):
    out = np.zeros(n)
    notes = _melody(rng, n / sr, 36, 84, [0.25, 0.25, 0.5, 0.5, 1.0], rest_p=0.1, max_step=5)
    inh = rng.uniform(1e-4, 5e-4)
    hammer = rng.uniform(0.9, 1.5)
    for on, d, m in notes:
        chord = [m] + ([m - 4, m - 7] if rng.random() < 0.25 else [])
        for mm in chord:
            f0 = float(_midi_hz(mm))
            h = np.arange(1, 13)
            freqs = f0 * h * np.sqrt(1.0 + inh * h ** 2)
            tau = rng.uniform(0.6, 1.4) * (1.5 - 0.8 * (mm - 36) / 48) / h ** 0.6
            ev = _partials_event(int(min(2.5, 4 * tau[0]) * sr), sr, freqs, 1.0 / h ** hammer, tau)
            _place(out, ev * rng.uniform(0.6, 1.0), int(on * sr))
    return out


def guitar(rng, n, sr):
    out = np.zeros(n)
    pos = rng.uniform(0.1, 0.3)
    strum = rng.random() < 0.5
    step = rng.uniform(0.25, 0.6) if strum else rng.uniform(0.15, 0.35)
    root = int(rng.integers(40, 52))
    t = float(rng.uniform(0, 0.2))
    while t < n / sr:
        shape = [0, 7, 12, 16, 19] if rng.random() < 0.5 else [0, 7, 12, 15, 19]
        root_t = root + int(rng.choice([0, 5, 7, -2]))
        strings = shape if strum else [shape[int(rng.integers(len(shape)))]]
        for i, iv in enumerate(strings):
            f0 = float(_midi_hz(root_t + iv))
            h = np.arange(1, 11)
            amps = np.abs(np.sin(np.pi * h * pos)) / h ** 1.5
            tau = rng.uniform(0.4, 1.0) / h ** 0.8
            ev = _partials_event(int(min(1.2, 4 * tau[0]) * sr), sr, f0 * h, amps, tau, attack=0.001)
            _place(out, ev, int((t + i * rng.uniform(0.008, 0.025)) * sr))
        t += step * float(rng.choice([1, 1, 2]))
    return out


def church_bell(rng, n, sr):
    out = np.zeros(n)
    bells = [rng.uniform(180, 480) for _ in range(int(rng.integers(1, 3)))]
    ratios = np.array([0.5, 1.0, 1.19, 1.5, 2.0, 2.52, 2.66, 3.01, 4.07])
    amps0 = np.array([0.6, 0.8, 0.7, 0.4, 1.0, 0.35, 0.3, 0.25, 0.15])
    gap = rng.uniform(1.0, 2.5)
    t, i = float(rng.uniform(0, 0.5)), 0
    while t < n / sr:
        f = bells[i % len(bells)]
        detune = 1.0 + rng.uniform(-0.004, 0.004, len(ratios))
        tau = rng.uniform(1.5, 3.5) / (ratios ** 0.7)
        amps = amps0 * rng.uniform(0.7, 1.3, len(ratios))
        ev = _partials_event(int(5.0 * sr), sr, f * ratios * detune, amps, tau, attack=0.003)
        _place(out, ev * rng.uniform(0.7, 1.0), int(t * sr))
        t += gap * rng.uniform(0.9, 1.1)
        i += 1
    return out


# ----------------------------------------------------------------------------- animals
def dog_barking(rng, n, sr):
    out = np.zeros(n)
    size = rng.uniform(0.0, 1.0)  # small dogs bark higher and shorter
    f_start = 900 - 450 * size
    formants = (rng.uniform(500, 900), rng.uniform(1200, 2000))
    t = float(rng.uniform(0, 0.5))
    while t < n / sr:
        for _ in range(int(rng.integers(1, 5))):
            dur = rng.uniform(0.1, 0.18) + 0.15 * size
            m = int(dur * sr)
            tt = np.arange(m) / sr
            f0 = f_start * rng.uniform(0.85, 1.15) * (1.0 - 0.35 * tt / dur)
            phase = TWO_PI * np.cumsum(f0) / sr
            bark = np.zeros(m)
            for h in range(1, 12):
                g = _bump(h * f0, formants[0], 250) + 0.7 * _bump(h * f0, formants[1], 400)
                bark += g * np.sin(h * phase) / h ** 0.3
            bark += 0.4 * rng.standard_normal(m) * _bump(tt, 0.02, 0.02)
            env = np.clip(tt / 0.01, 0, 1) * np.exp(-np.clip(tt - 0.3 * dur, 0, None) / (0.3 * dur))
            _place(out, bark * env * rng.uniform(0.6, 1.0), int(t * sr))
            t += dur + rng.uniform(0.08, 0.3)
        t += rng.uniform(0.5, 2.0)
    return _fft_filter(out, sr, lambda f: np.clip(f / 150.0, 0, 1))


def bird_chirping(rng, n, sr):
    out = np.zeros(n)
    lo, hi = rng.uniform(1800, 2600), rng.uniform(2800, 3800)
    kind = int(rng.integers(3))  # 0 down-sweeps, 1 up-sweeps, 2 warbles
    t = float(rng.uniform(0, 0.5))
    while t < n / sr:
        rate = rng.uniform(7, 15)
        for _ in range(int(rng.integers(3, 11))):
            dur = rng.uniform(0.03, 0.09)
            m = int(dur * sr)
            u = np.linspace(0, 1, m)
            if kind == 0:
                f = hi - (hi - lo) * u ** rng.uniform(0.5, 2.0)
            elif kind == 1:
                f = lo + (hi - lo) * u
            else:
                f = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.sin(TWO_PI * rng.uniform(40, 90) * u * dur)
            phase = TWO_PI * np.cumsum(f) / sr
            ev = (np.sin(phase) + 0.15 * np.sin(2 * phase)) * np.sin(np.pi * u) ** 2
            _place(out, ev * rng.uniform(0.5, 1.0), int(t * sr))
            t += 1.0 / rate
        t += rng.uniform(0.3, 1.5)
    return out


# ----------------------------------------------------------------------------- machines
def siren(rng, n, sr):
    t = np.arange(n) / sr
    lo, hi = rng.uniform(550, 800), rng.uniform(1100, 1600)
    mode = int(rng.integers(3))
    if mode == 0:  # wail
        sweep = 0.5 - 0.5 * np.cos(TWO_PI * t / rng.uniform(2.0, 4.0))
    elif mode == 1:  # yelp
        sweep = (t / rng.uniform(0.25, 0.45)) % 1.0
    else:  # hi-lo
        sweep = ((t / rng.uniform(0.45, 0.75)) % 2.0 >= 1.0).astype(float)
        sweep = _moving_average(sweep, 0.01 * sr)
    f0 = lo + (hi - lo) * sweep
    phase = TWO_PI * np.cumsum(f0) / sr + rng.uniform(0, TWO_PI)
    amps = [1.0 / h if h % 2 else 0.25 / h for h in range(1, 6)]
    x = _harmonic_sum(phase, f0, amps, sr)
    approach = 0.3 + 0.7 * _bump(t, rng.uniform(0, n / sr), rng.uniform(2.0, 6.0))
    return x * approach


def engine(rng, n, sr):
    rpm = rng.uniform(25, 70) * (1.0 + 0.35 * _slow_curve(rng, n, sr, rng.uniform(0.2, 0.6)))
    phase = np.cumsum(rpm) / sr
    width = rng.uniform(0.08, 0.25)
    pulses = np.exp(-(phase % 1.0) / width)  # one firing pulse per cycle: rich harmonics
    pulses -= pulses.mean()
    reson = rng.uniform(120, 400)
    x = _fft_filter(pulses, sr, lambda f: 1.0 / (1.0 + (f / 900.0) ** 2) + 0.8 * _bump(f, reson, 80))
    rumble = _colored_noise(rng, n, sr, lambda f: 1.0 / (1.0 + (f / 300.0) ** 2))
    x = x / (np.abs(x).max() + 1e-9) + rng.uniform(0.1, 0.3) * rumble / (np.abs(rumble).max() + 1e-9)
    return x * (1.0 + 0.2 * (rpm / rpm.mean() - 1.0))


def clock_ticking(rng, n, sr):
    out = np.zeros(n)
    period = rng.uniform(0.25, 0.6)
    f_tick, f_tock = rng.uniform(2000, 3500), rng.uniform(1000, 2200)
    body = rng.uniform(500, 900)
    t, i = float(rng.uniform(0, 0.3)), 0
    while t < n / sr:
        f = f_tick if i % 2 == 0 else f_tock
        m = int(0.04 * sr)
        ev = _partials_event(m, sr, [f, body, f * 1.6], [1.0, 0.5, 0.4], [0.004, 0.008, 0.003],
                             attack=0.0003)
        _place(out, ev * rng.uniform(0.8, 1.0), int(t * sr))
        t += period * rng.uniform(0.98, 1.02)
        i += 1
    return out


def drum(rng, n, sr):
    out = np.zeros(n)
    step = 60.0 / rng.uniform(80, 160) / 4.0  # sixteenth notes
    kick = rng.random(16) < np.tile([0.9, 0.1, 0.3, 0.1], 4)
    snare = rng.random(16) < np.tile([0.0, 0.05, 0.1, 0.05, 0.9, 0.05, 0.1, 0.1], 2)
    hat = rng.random(16) < rng.uniform(0.3, 0.9)
    tom_f = rng.uniform(90, 200)
    kick_f = rng.uniform(45, 65)
    for s in range(int(n / sr / step) + 1):
        k, start = s % 16, int(s * step * sr)
        fill = rng.random() < 0.05
        if kick[k]:
            m = int(0.35 * sr)
            tt = np.arange(m) / sr
            f = kick_f + 100 * np.exp(-tt / 0.03)
            _place(out, np.sin(TWO_PI * np.cumsum(f) / sr) * np.exp(-tt / 0.12), start)
        if snare[k] or fill:
            m = int(0.2 * sr)
            tt = np.arange(m) / sr
            nz = _fft_filter(rng.standard_normal(m), sr, lambda f: _bump(f, 2500, 1800))
            tone = np.sin(TWO_PI * (tom_f if fill else 190.0) * tt)
            _place(out, (0.6 * nz + 0.6 * tone) * np.exp(-tt / 0.06), start)
        if hat[k]:
            m = int(0.05 * sr)
            tt = np.arange(m) / sr
            nz = _fft_filter(rng.standard_normal(m), sr, lambda f: (f > 5000).astype(float))
            _place(out, 0.25 * nz * np.exp(-tt / 0.015), start)
    return out


# ----------------------------------------------------------------------------- textures
def rain(rng, n, sr):
    tilt = rng.uniform(0.0, 0.6)
    hum = rng.uniform(2500, 6000)
    bed = _colored_noise(rng, n, sr, lambda f: (np.clip(f / 400.0, 0, 1) * (1 + f / 1000.0) ** -tilt
                                                + 0.8 * _bump(f, hum, 2000)))
    bed /= np.abs(bed).std() + 1e-9
    rate = rng.uniform(40, 250)  # droplets per second
    k = rng.poisson(rate * n / sr)
    drops = np.zeros(n)
    drops[rng.integers(0, n, k)] = rng.uniform(0.1, 1.0, k) ** 2
    m = int(0.006 * sr)
    ring = np.exp(-np.arange(m) / (0.0015 * sr)) * np.sin(TWO_PI * rng.uniform(2000, 5000) * np.arange(m) / sr)
    drops = np.convolve(drops, ring, mode="same")
    level = 1.0 + 0.25 * _slow_curve(rng, n, sr, 0.3)
    return level * (bed + rng.uniform(0.5, 2.0) * drops / (drops.std() + 1e-9))


def wind(rng, n, sr):
    """Noise filtered by a band whose centre and level drift slowly (gusts)."""
    hop, win = 256, 512
    frames = n // hop + 2
    f = np.fft.rfftfreq(win, 1.0 / sr)
    centre = rng.uniform(250, 700) * 2.0 ** (1.2 * _slow_curve(rng, frames, sr / hop, rng.uniform(0.2, 0.5)))
    width = centre * rng.uniform(0.3, 0.8)
    gust = 0.25 + 0.75 * (0.5 + 0.5 * _slow_curve(rng, frames, sr / hop, rng.uniform(0.2, 0.6))) ** 2
    mag = _bump(f[None, :], centre[:, None], width[:, None]) * gust[:, None]
    whistle = rng.random() < 0.4
    if whistle:
        mag += 0.6 * _bump(f[None, :], 2.2 * centre[:, None], 40.0) * gust[:, None]
    spec = mag * np.exp(1j * rng.uniform(0, TWO_PI, mag.shape))
    seg = np.fft.irfft(spec, n=win, axis=1) * np.hanning(win)[None, :]
    out = np.zeros(frames * hop + win)
    for i in range(frames):
        out[i * hop:i * hop + win] += seg[i]
    return out[:n]


GENERATORS = {
    "violin": violin,
    "flute": flute,
    "trumpet": trumpet,
    "piano": piano,
    "guitar": guitar,
    "church bell": church_bell,
    "dog barking": dog_barking,
    "bird chirping": bird_chirping,
    "siren": siren,
    "engine": engine,
    "clock ticking": clock_ticking,
    "drum": drum,
    "rain": rain,
    "wind": wind,
}
