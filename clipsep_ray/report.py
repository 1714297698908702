"""A report folder a person can open: spectrogram pictures, playable stems, the SDR table.

Pictures are drawn with PIL alone (no plotting library): log-magnitude spectrograms
with a perceptual-ish colour map, low frequencies at the bottom.
"""
from __future__ import annotations

import html
import math
import os

import numpy as np
import torch

# Anchor colours of a dark-blue -> purple -> orange -> yellow map (a "magma"-like ramp).
_ANCHORS = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
                     [250, 193, 39], [252, 255, 164]], dtype=np.float32)


def colormap(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) -> uint8 RGB (H, W, 3)."""
    pos = np.clip(x, 0, 1) * (len(_ANCHORS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_ANCHORS) - 2)
    frac = (pos - lo)[..., None]
    return (_ANCHORS[lo] * (1 - frac) + _ANCHORS[lo + 1] * frac).astype(np.uint8)


def spectrogram_png(wave: np.ndarray, sample_rate: int, path: str, n_fft: int = 512, top_db: float = 80.0,
                    ref: float | None = None, height: int = 160, title: str | None = None) -> float:
    """Write a spectrogram picture of ``wave`` (T,); returns the reference level used (share it across
    pictures of one example so that their colours compare)."""
    from PIL import Image, ImageDraw

    x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
    spec = torch.stft(x, n_fft, n_fft // 4, window=torch.hann_window(n_fft), return_complex=True).abs()
    db = 20 * torch.log10(spec + 1e-8)
    ref = float(db.max()) if ref is None else ref
    img = colormap(((db - (ref - top_db)) / top_db).numpy()[::-1])
    pic = Image.fromarray(img).resize((max(200, min(800, img.shape[1] * 2)), height))
    if title:
        ImageDraw.Draw(pic).text((4, 2), title, fill=(255, 255, 255))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    pic.save(path)
    return ref


def near_median(records: list[dict], count: int, key: str = "sdri", distinct: str = "label") -> list[dict]:
    """``count`` records whose ``key`` lies nearest the median of all, one per ``distinct`` value
    where there are enough: examples that show the model as the table does, not its best or worst."""
    scored = [r for r in records if r.get(key) is not None and math.isfinite(float(r[key]))]
    if not scored:
        return []
    median = float(np.median([float(r[key]) for r in scored]))
    ranked = sorted(scored, key=lambda r: abs(float(r[key]) - median))
    picked, seen = [], set()
    for r in ranked:
        if r.get(distinct) not in seen:
            picked.append(r)
            seen.add(r.get(distinct))
    picked += [r for r in ranked if r not in picked]
    return picked[:count]


def html_page(title: str, table_md: str, examples: list[dict], notes: list[str] | None = None,
              timings: dict[str, float] | None = None) -> str:
    """examples: [{"name", "query", "rows": [{"caption", "audio", "picture"}...]}, optional "sdri"
    and "median_sdri"] with paths relative to the page; ``timings``: stage -> seconds."""
    def md_to_html(md: str) -> str:
        lines = [l for l in md.strip().splitlines() if not set(l.replace("|", "").strip()) <= {"-"}]
        out = ["<table>"]
        for i, line in enumerate(lines):
            cells = [html.escape(c.strip()) for c in line.strip().strip("|").split("|")]
            tag = "th" if i == 0 else "td"
            out.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
        return "\n".join(out + ["</table>"])

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}figure{display:inline-block;margin:6px}"
             "img{display:block}</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    for n in notes or []:
        parts.append(f"<p>{html.escape(n)}</p>")
    if timings:
        parts.append("<h2>Stage timings</h2><table><tr><th>stage</th><th>seconds</th></tr>"
                     + "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.1f}</td></tr>" for k, v in timings.items())
                     + "</table>")
    parts += ["<h2>Separation quality (SDR, dB)</h2>", md_to_html(table_md), "<h2>Examples</h2>"]
    for ex in examples:
        score = ""
        if ex.get("sdri") is not None:
            score = f" &mdash; SDRi {ex['sdri']:.2f} dB"
            if ex.get("median_sdri") is not None:
                score += f" (median over the test mixtures: {ex['median_sdri']:.2f} dB)"
        parts.append(f"<h3>{html.escape(ex['name'])}: query &ldquo;{html.escape(ex['query'])}&rdquo;{score}</h3><div>")
        for row in ex["rows"]:
            parts.append(f"<figure><img src='{html.escape(row['picture'])}' alt='{html.escape(row['caption'])}'>"
                         f"<figcaption>{html.escape(row['caption'])}<br><audio controls preload='none' "
                         f"src='{html.escape(row['audio'])}'></audio></figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)
