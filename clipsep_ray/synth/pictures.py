"""Procedural pictures: one recognisable icon per class, placed in a random scene.

An icon is drawn in unit coordinates ([-1, 1]^2, y down) on a transparent layer by a
``draw_<class>(pen, rng)`` function that also draws its own variation (proportions,
parts present, colours). ``Scene`` then places it with a random pose (scale, rotation,
mirror, position) over a random background with clutter shapes, and renders frames at
times t with small motion (drift and wobble), as a camera would see an object move.
Colours are jittered and overlap between classes, so the shape is what identifies one.
"""

from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw


def hsv(rng, h, s, v, jit=(0.04, 0.15, 0.15), alpha=255):
    """RGBA colour from HSV in [0, 1] (hue in turns), jittered by ``jit``."""
    h = (h + rng.uniform(-jit[0], jit[0])) % 1.0
    s = float(np.clip(s + rng.uniform(-jit[1], jit[1]), 0, 1))
    v = float(np.clip(v + rng.uniform(-jit[2], jit[2]), 0, 1))
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (int(r * 255), int(g * 255), int(b * 255), alpha)


def any_colour(rng, s=(0.5, 1.0), v=(0.4, 1.0)):
    return hsv(rng, rng.uniform(), rng.uniform(*s), rng.uniform(*v), jit=(0, 0, 0))


CLEAR = (0, 0, 0, 0)


class Pen:
    """Draws on a square RGBA layer in unit coordinates; widths are in units too."""

    def __init__(self, img):
        self.img, self.d, self.n = img, ImageDraw.Draw(img), img.size[0]

    def p(self, x, y):
        return ((x + 1) * 0.5 * self.n, (y + 1) * 0.5 * self.n)

    def w(self, u):
        return max(1, int(round(u * 0.5 * self.n)))

    def ellipse(self, cx, cy, rx, ry, fill=None, outline=None, width=0.0):
        self.d.ellipse([self.p(cx - rx, cy - ry), self.p(cx + rx, cy + ry)], fill=fill,
                       outline=outline, width=self.w(width) if outline else 0)

    def rect(self, x0, y0, x1, y1, fill=None, outline=None, width=0.0):
        self.d.rectangle([self.p(x0, y0), self.p(x1, y1)], fill=fill, outline=outline,
                         width=self.w(width) if outline else 0)

    def poly(self, pts, fill):
        self.d.polygon([self.p(x, y) for x, y in pts], fill=fill)

    def line(self, pts, fill, width):
        self.d.line([self.p(x, y) for x, y in pts], fill=fill, width=self.w(width), joint="curve")

    def arc(self, cx, cy, r, a0, a1, fill, width):
        self.d.arc([self.p(cx - r, cy - r), self.p(cx + r, cy + r)], a0, a1, fill=fill, width=self.w(width))


# ----------------------------------------------------------------------------- icons
def draw_violin(pen, rng):
    wood = hsv(rng, 0.05, 0.8, 0.55)
    dark = (25, 15, 10, 255)
    if rng.random() < 0.7:  # the bow, behind the violin
        a = rng.uniform(-0.6, 0.6)
        x0, y0, x1, y1 = -0.95, 0.75 + 0.2 * a, 0.95, -0.1 + 0.3 * a
        pen.line([(x0, y0), (x1, y1)], hsv(rng, 0.07, 0.6, 0.35), 0.03)
        pen.line([(x0, y0 + 0.05), (x1, y1 + 0.05)], (235, 230, 210, 255), 0.015)
    pen.ellipse(0, 0.38, 0.34, 0.3, wood)
    pen.ellipse(0, -0.12, 0.27, 0.24, wood)
    pen.rect(-0.2, -0.05, 0.2, 0.3, wood)
    for s in (-1, 1):  # C-shaped waist
        pen.ellipse(s * 0.27, 0.12, 0.09, 0.12, CLEAR)
        pen.arc(s * 0.16, 0.28, 0.08, 180 if s < 0 else 270, 90 if s < 0 else 180, dark, 0.015)
    pen.rect(-0.05, -0.85, 0.05, 0.3, dark)  # neck and fingerboard
    pen.ellipse(0, -0.9, 0.06, 0.07, wood, outline=dark, width=0.02)  # scroll
    pen.rect(-0.1, 0.33, 0.1, 0.37, (220, 200, 160, 255))  # bridge
    for i in range(4):
        x = -0.03 + 0.02 * i
        pen.line([(x, -0.82), (x, 0.62)], (230, 230, 230, 255), 0.006)
    pen.rect(-0.06, 0.62, 0.06, 0.7, dark)  # tailpiece


def draw_guitar(pen, rng):
    wood = hsv(rng, 0.09, 0.6, 0.8) if rng.random() < 0.7 else any_colour(rng)
    neck = hsv(rng, 0.07, 0.6, 0.4)
    pen.ellipse(0, 0.5, 0.44, 0.4, wood)
    pen.ellipse(0, 0.02, 0.34, 0.3, wood)
    pen.rect(-0.3, 0.0, 0.3, 0.5, wood)
    pen.ellipse(0, 0.18, 0.15, 0.15, (20, 15, 10, 255), outline=(240, 230, 200, 255), width=0.03)
    pen.rect(-0.07, -0.9, 0.07, 0.05, neck)
    pen.rect(-0.1, -1.0, 0.1, -0.82, neck)
    for i in range(3):  # tuning pegs
        for s in (-1, 1):
            pen.ellipse(s * 0.14, -0.96 + 0.06 * i, 0.03, 0.025, (200, 200, 200, 255))
    for i in range(10):  # frets
        y = -0.82 + 0.085 * i
        pen.line([(-0.07, y), (0.07, y)], (210, 210, 210, 255), 0.01)
    pen.rect(-0.16, 0.6, 0.16, 0.66, (30, 20, 15, 255))  # bridge
    for i in range(6):
        x = -0.05 + 0.02 * i
        pen.line([(x, -0.86), (x, 0.63)], (235, 235, 235, 255), 0.005)


def draw_flute(pen, rng):
    metal = hsv(rng, 0.6, 0.05, 0.82) if rng.random() < 0.8 else hsv(rng, 0.12, 0.5, 0.85)
    dark = (60, 60, 70, 255)
    pen.rect(-0.95, -0.09, 0.95, 0.09, metal, outline=dark, width=0.015)
    pen.ellipse(-0.72, -0.1, 0.08, 0.045, dark)  # embouchure plate
    for x in (-0.5, 0.4):
        pen.line([(x, -0.09), (x, 0.09)], dark, 0.025)
    nkeys = int(rng.integers(7, 12))
    for i, x in enumerate(np.linspace(-0.35, 0.85, nkeys)):
        pen.ellipse(x, 0.0, 0.06, 0.06, metal, outline=dark, width=0.015)
        if i % 3 == 1:
            pen.line([(x, -0.06), (x + 0.08, -0.06)], dark, 0.012)


def draw_trumpet(pen, rng):
    brass = hsv(rng, 0.13, 0.75, 0.9) if rng.random() < 0.85 else hsv(rng, 0.6, 0.05, 0.8)
    dark = hsv(rng, 0.1, 0.7, 0.4, jit=(0.02, 0.1, 0.1))
    bell = rng.uniform(0.28, 0.4)
    pen.poly([(0.25, -0.06), (0.9, -bell), (0.9, bell), (0.25, 0.06)], brass)
    pen.ellipse(0.9, 0, 0.06, bell, dark)
    pen.rect(-0.85, -0.05, 0.3, 0.05, brass)  # lead pipe
    pen.ellipse(-0.9, 0, 0.05, 0.08, brass)  # mouthpiece
    pen.d.rounded_rectangle([pen.p(-0.45, 0.02), pen.p(0.3, 0.4)], radius=pen.w(0.15),
                            outline=brass, width=pen.w(0.07))
    for x in (-0.25, -0.1, 0.05):
        pen.rect(x - 0.045, -0.35, x + 0.045, 0.1, brass, outline=dark, width=0.012)
        pen.ellipse(x, -0.4, 0.055, 0.04, dark)


def draw_piano(pen, rng):
    case = hsv(rng, 0.0, 0.0, 0.12, jit=(0, 0.05, 0.1)) if rng.random() < 0.6 else hsv(rng, 0.07, 0.6, 0.45)
    pen.rect(-0.95, -0.8, 0.95, -0.1, case)
    pen.rect(-0.95, -0.1, 0.95, 0.5, case)
    for x in (-0.88, 0.88):
        pen.rect(x - 0.05, 0.5, x + 0.05, 0.9, case)
    nwhite = int(rng.integers(10, 16))
    x0, x1, y0, y1 = -0.85, 0.85, -0.1, 0.45
    pen.rect(x0, y0, x1, y1, (245, 245, 240, 255))
    kw = (x1 - x0) / nwhite
    for i in range(1, nwhite):
        pen.line([(x0 + i * kw, y0), (x0 + i * kw, y1)], (60, 60, 60, 255), 0.008)
    start = int(rng.integers(0, 7))
    for i in range(nwhite - 1):
        if (start + i) % 7 not in (2, 6):  # no black key between E-F and B-C
            cx = x0 + (i + 1) * kw
            pen.rect(cx - kw * 0.3, y0, cx + kw * 0.3, y0 + 0.6 * (y1 - y0), (15, 15, 15, 255))
    pen.rect(-0.3, -0.65, 0.3, -0.3, hsv(rng, 0.12, 0.2, 0.9))  # music stand / sheet


def draw_church_bell(pen, rng):
    metal = hsv(rng, 0.1, 0.75, 0.75)
    dark = (40, 30, 20, 255)
    if rng.random() < 0.6:  # yoke
        pen.rect(-0.5, -0.85, 0.5, -0.72, hsv(rng, 0.07, 0.6, 0.35))
    pen.ellipse(0, -0.66, 0.08, 0.08, None, outline=dark, width=0.04)
    pen.ellipse(0, -0.4, 0.27, 0.2, metal)
    flare = rng.uniform(0.5, 0.62)
    pts = [(-0.27, -0.4)] + [(-0.27 - (flare - 0.27) * u ** 2.2, -0.4 + 0.8 * u) for u in np.linspace(0, 1, 8)]
    pen.poly(pts + [(-x, y) for x, y in reversed(pts)], metal)
    pen.ellipse(0, 0.42, flare + 0.02, 0.1, metal, outline=dark, width=0.02)
    pen.line([(0, 0.2), (0, 0.5)], dark, 0.03)
    pen.ellipse(0, 0.55, 0.09, 0.09, dark)  # clapper
    pen.line([(-0.2, -0.1), (-0.35, 0.3)], hsv(rng, 0.12, 0.3, 0.95), 0.03)  # highlight
    if rng.random() < 0.5:  # ringing marks
        for s in (-1, 1):
            for r in (0.75, 0.9):
                pen.arc(0, 0.0, r, 300 if s > 0 else 150, 30 if s > 0 else 210, dark, 0.02)


def draw_dog_barking(pen, rng):
    fur = hsv(rng, 0.08, 0.55, 0.55, jit=(0.03, 0.3, 0.35))
    dark = (30, 25, 20, 255)
    pen.ellipse(0.1, 0.1, 0.45, 0.22, fur)  # body
    for x in (-0.2, -0.05, 0.25, 0.4):  # legs
        pen.rect(x - 0.05, 0.15, x + 0.05, 0.62, fur)
    pen.line([(0.5, 0.0), (0.72, -0.3 - 0.2 * rng.random())], fur, 0.07)  # tail
    pen.ellipse(-0.45, -0.22, 0.22, 0.2, fur)  # head
    pen.ellipse(-0.68, -0.14, 0.16, 0.09, fur)  # snout
    pen.ellipse(-0.82, -0.18, 0.04, 0.035, dark)  # nose
    pen.poly([(-0.84, -0.08), (-0.56, -0.08), (-0.8, 0.05)], (150, 30, 40, 255))  # open mouth
    pen.poly([(-0.4, -0.38), (-0.22, -0.36), (-0.25, 0.0)], hsv(rng, 0.07, 0.6, 0.3))  # ear
    pen.ellipse(-0.52, -0.28, 0.035, 0.035, dark)  # eye
    if rng.random() < 0.5:  # collar
        pen.line([(-0.3, -0.15), (-0.32, 0.05)], any_colour(rng), 0.05)
    for i in range(int(rng.integers(2, 4))):  # bark lines
        a = -0.35 + 0.35 * i
        pen.line([(-0.9, -0.1 + a * 0.3), (-0.99, -0.1 + a * 0.6)], dark, 0.03)


def draw_bird_chirping(pen, rng):
    body = any_colour(rng, s=(0.6, 1.0), v=(0.6, 1.0))
    wing = hsv(rng, 0, 0, 0.2, jit=(0, 0, 0.15)) if rng.random() < 0.5 else any_colour(rng)
    pen.line([(-0.95, 0.45), (0.95, 0.38)], hsv(rng, 0.07, 0.6, 0.35), 0.07)  # branch
    pen.ellipse(0.75, 0.28, 0.1, 0.05, hsv(rng, 0.3, 0.7, 0.6))  # leaf
    for x in (-0.05, 0.1):
        pen.line([(x, 0.15), (x, 0.42)], (200, 120, 40, 255), 0.025)
    pen.poly([(0.25, -0.05), (0.75, -0.3), (0.7, 0.05)], wing)  # tail
    pen.ellipse(0.0, 0.0, 0.32, 0.22, body)
    pen.ellipse(-0.3, -0.28, 0.17, 0.16, body)  # head
    pen.ellipse(0.05, -0.02, 0.2, 0.1, wing)  # wing
    pen.poly([(-0.44, -0.33), (-0.66, -0.36), (-0.44, -0.27)], (240, 180, 30, 255))  # open beak
    pen.poly([(-0.44, -0.26), (-0.62, -0.2), (-0.44, -0.22)], (240, 180, 30, 255))
    pen.ellipse(-0.33, -0.32, 0.035, 0.035, (10, 10, 10, 255))
    for i in range(int(rng.integers(1, 4))):  # notes of the song
        x, y = -0.8 + 0.25 * i, -0.6 - 0.12 * (i % 2)
        pen.ellipse(x, y, 0.05, 0.04, (20, 20, 20, 255))
        pen.line([(x + 0.045, y), (x + 0.045, y - 0.2)], (20, 20, 20, 255), 0.02)


def draw_siren(pen, rng):
    col = hsv(rng, 0.0, 0.85, 0.9) if rng.random() < 0.5 else hsv(rng, 0.62, 0.85, 0.9)
    pen.rect(-0.5, 0.2, 0.5, 0.45, hsv(rng, 0.0, 0.0, 0.25, jit=(0, 0.05, 0.15)))
    pen.d.pieslice([pen.p(-0.36, -0.5), pen.p(0.36, 0.9)], 180, 360, fill=col)
    pen.ellipse(-0.12, -0.22, 0.06, 0.13, (255, 255, 255, 200))
    ray = col if rng.random() < 0.5 else (255, 220, 60, 255)
    for k in range(int(rng.integers(5, 9))):
        a = math.pi * (1.05 + 0.9 * k / 6)
        c, s = math.cos(a), math.sin(a)
        pen.line([(0.5 * c, 0.1 + 0.55 * s), (0.85 * c, 0.1 + 0.9 * s)], ray, 0.05)


def draw_engine(pen, rng):
    paint = any_colour(rng)
    pen.poly([(-0.42, 0.0), (-0.3, -0.38), (0.3, -0.38), (0.5, 0.0)], paint)  # cabin
    pen.poly([(-0.33, -0.02), (-0.24, -0.3), (-0.02, -0.3), (-0.02, -0.02)], (170, 210, 235, 255))
    pen.poly([(0.04, -0.02), (0.04, -0.3), (0.26, -0.3), (0.4, -0.02)], (170, 210, 235, 255))
    pen.d.rounded_rectangle([pen.p(-0.9, -0.05), pen.p(0.9, 0.32)], radius=pen.w(0.08), fill=paint)
    pen.ellipse(-0.86, 0.07, 0.05, 0.05, (255, 230, 120, 255))  # headlight
    for x in (-0.5, 0.5):
        pen.ellipse(x, 0.33, 0.2, 0.2, (20, 20, 20, 255))
        pen.ellipse(x, 0.33, 0.09, 0.09, (170, 170, 170, 255))
    pen.rect(0.85, 0.22, 0.97, 0.27, (80, 80, 80, 255))  # exhaust pipe
    for i in range(int(rng.integers(1, 4))):
        r = 0.05 + 0.03 * i
        pen.ellipse(0.97 + 0.0 * i, 0.15 - 0.15 * i, r, r, (150, 150, 150, 220))


def draw_clock_ticking(pen, rng):
    rim = any_colour(rng, s=(0.3, 0.9), v=(0.2, 0.8))
    face = hsv(rng, 0.12, 0.1, 0.97, jit=(0.05, 0.1, 0.05))
    dark = (20, 20, 20, 255)
    if rng.random() < 0.4:  # alarm clock bells and legs
        for s in (-1, 1):
            pen.ellipse(s * 0.5, -0.72, 0.2, 0.14, rim)
            pen.line([(s * 0.4, 0.6), (s * 0.55, 0.85)], rim, 0.05)
    pen.ellipse(0, 0, 0.75, 0.75, face, outline=rim, width=0.1)
    for k in range(12):
        a = k * math.pi / 6
        r0 = 0.5 if k % 3 else 0.45
        pen.line([(r0 * math.cos(a), r0 * math.sin(a)), (0.6 * math.cos(a), 0.6 * math.sin(a))], dark, 0.03)
    ah, am = rng.uniform(0, 2 * math.pi, 2)
    pen.line([(0, 0), (0.32 * math.cos(ah), 0.32 * math.sin(ah))], dark, 0.06)
    pen.line([(0, 0), (0.5 * math.cos(am), 0.5 * math.sin(am))], dark, 0.035)
    pen.ellipse(0, 0, 0.05, 0.05, (200, 30, 30, 255))


def draw_drum(pen, rng):
    shell = any_colour(rng)
    head = hsv(rng, 0.12, 0.08, 0.95, jit=(0.05, 0.08, 0.05))
    rim = (200, 200, 205, 255)
    pen.rect(-0.62, -0.15, 0.62, 0.5, shell)
    pen.ellipse(0, 0.5, 0.62, 0.14, shell)
    pen.ellipse(0, -0.15, 0.62, 0.14, head, outline=rim, width=0.04)
    if rng.random() < 0.5:  # zig-zag lacing
        xs = np.linspace(-0.55, 0.55, 9)
        pts = [(x, -0.05 if i % 2 == 0 else 0.5) for i, x in enumerate(xs)]
        pen.line(pts, (240, 240, 240, 255), 0.025)
    else:  # lugs
        for x in np.linspace(-0.45, 0.45, 5):
            pen.rect(x - 0.04, 0.05, x + 0.04, 0.3, rim)
    stick = hsv(rng, 0.1, 0.45, 0.85)
    for s in (-1, 1):
        pen.line([(s * 0.85, -0.95), (-s * 0.05, -0.3)], stick, 0.05)
        pen.ellipse(-s * 0.06, -0.28, 0.04, 0.04, stick)


def draw_rain(pen, rng):
    cloud = hsv(rng, 0.6, 0.1, 0.55, jit=(0.05, 0.1, 0.2))
    slant = rng.uniform(-0.25, 0.25)
    blue = hsv(rng, 0.58, 0.7, 0.85)
    for _ in range(int(rng.integers(14, 26))):
        x, y = rng.uniform(-0.75, 0.75), rng.uniform(-0.05, 0.8)
        pen.line([(x, y), (x + slant * 0.2, y + 0.2)], blue, 0.04)
    for cx, cy, r in ((-0.4, -0.35, 0.28), (0.0, -0.5, 0.35), (0.38, -0.35, 0.3), (0.0, -0.25, 0.3)):
        pen.ellipse(cx, cy, r * 1.1, r, cloud)
    pen.rect(-0.6, -0.35, 0.6, -0.05, cloud)
    if rng.random() < 0.5:  # puddle
        pen.ellipse(0, 0.88, 0.6, 0.07, blue)


def draw_wind(pen, rng):
    col = hsv(rng, 0.55, 0.15, 0.95, jit=(0.1, 0.15, 0.05))
    for i in range(int(rng.integers(3, 6))):
        y = -0.6 + 0.3 * i + rng.uniform(-0.05, 0.05)
        x0, x1 = rng.uniform(-0.95, -0.6), rng.uniform(0.1, 0.6)
        pen.line([(x0, y), (x1, y)], col, 0.05)
        r = rng.uniform(0.1, 0.18)
        pen.arc(x1, y - r, r, 270, 180, col, 0.05)  # curl at the end
    for _ in range(int(rng.integers(1, 4))):  # leaves carried by the wind
        x, y = rng.uniform(0.3, 0.9), rng.uniform(-0.8, 0.8)
        pen.ellipse(x, y, 0.08, 0.04, hsv(rng, rng.choice([0.08, 0.3]), 0.8, 0.7))


ICONS = {
    "violin": draw_violin,
    "flute": draw_flute,
    "trumpet": draw_trumpet,
    "piano": draw_piano,
    "guitar": draw_guitar,
    "church bell": draw_church_bell,
    "dog barking": draw_dog_barking,
    "bird chirping": draw_bird_chirping,
    "siren": draw_siren,
    "engine": draw_engine,
    "clock ticking": draw_clock_ticking,
    "drum": draw_drum,
    "rain": draw_rain,
    "wind": draw_wind,
}


# ----------------------------------------------------------------------------- scenes
def _background(rng, size):
    a, b = any_colour(rng, s=(0.0, 0.6), v=(0.2, 1.0)), any_colour(rng, s=(0.0, 0.6), v=(0.2, 1.0))
    kind = int(rng.integers(5))
    y, x = np.mgrid[0:size, 0:size] / size
    if kind == 0:
        w = np.zeros((size, size))
    elif kind == 1:  # gradient
        ang = rng.uniform(0, 2 * np.pi)
        w = np.clip(0.5 + (x - 0.5) * np.cos(ang) + (y - 0.5) * np.sin(ang), 0, 1)
    elif kind == 2:  # stripes
        w = (np.sin(2 * np.pi * (x * rng.uniform(-6, 6) + y * rng.uniform(-6, 6))) > 0) * rng.uniform(0.2, 0.6)
    elif kind == 3:  # horizon
        w = (y > rng.uniform(0.4, 0.8)).astype(float)
    else:  # blotches
        k = int(rng.integers(3, 8))
        small = rng.uniform(0, 1, (k, k))
        w = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)) / 255.0
    img = (1 - w[..., None]) * np.array(a[:3]) + w[..., None] * np.array(b[:3])
    img += rng.normal(0, rng.uniform(0, 6), img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _clutter(rng, img, count, max_frac):
    d = ImageDraw.Draw(img)
    n = img.size[0]
    for _ in range(count):
        r = rng.uniform(0.03, max_frac) * n
        cx, cy = rng.uniform(0, n, 2)
        col = any_colour(rng, s=(0.0, 0.9), v=(0.2, 1.0))
        kind = int(rng.integers(4))
        box = [cx - r, cy - r * rng.uniform(0.4, 1.0), cx + r, cy + r * rng.uniform(0.4, 1.0)]
        if kind == 0:
            d.ellipse(box, fill=col)
        elif kind == 1:
            d.rectangle(box, fill=col)
        elif kind == 2:
            d.polygon([(cx + r * math.cos(a), cy + r * math.sin(a)) for a in rng.uniform(0, 2 * np.pi, 3)], fill=col)
        else:
            d.line([(cx - r, cy - r * rng.uniform(-1, 1)), (cx + r, cy + r * rng.uniform(-1, 1))], fill=col,
                   width=max(1, int(r * 0.15)))


class Scene:
    """One on-screen object in a random scene; ``frame(t)`` renders it at time t (s).

    Pose: scale 0.5-0.85 of the frame, rotation +-30 degrees, random mirror, offset up
    to 15% of the frame; motion: drift up to about 1% of the frame per second and a
    wobble of a few degrees. Clutter: primitive shapes behind the object and a few
    small ones in front of it (partial occlusion).
    """

    def __init__(self, label, rng, size=224):
        self.size = size
        layer_n = int(size * rng.uniform(0.5, 0.85))
        layer = Image.new("RGBA", (layer_n, layer_n), CLEAR)
        ICONS[label](Pen(layer), rng)
        if rng.random() < 0.5:
            layer = layer.transpose(Image.FLIP_LEFT_RIGHT)
        self.layer = layer
        self.angle = rng.uniform(-30, 30)
        self.centre = size / 2 + rng.uniform(-0.15, 0.15, 2) * size
        self.drift = rng.uniform(-0.01, 0.01, 2) * size
        self.wobble = (rng.uniform(1, 5), rng.uniform(1.5, 4.0), rng.uniform(0, 2 * np.pi))
        self.background = _background(rng, size)
        _clutter(rng, self.background, int(rng.integers(2, 9)), 0.2)
        self.front = Image.new("RGBA", (size, size), CLEAR)
        _clutter(rng, self.front, int(rng.integers(0, 3)), 0.06)

    def frame(self, t=0.0):
        amp, period, phase = self.wobble
        angle = self.angle + amp * math.sin(2 * math.pi * t / period + phase)
        obj = self.layer.rotate(angle, resample=Image.BILINEAR, expand=True)
        cx, cy = self.centre + self.drift * t
        img = self.background.copy()
        img.paste(obj, (int(round(cx - obj.size[0] / 2)), int(round(cy - obj.size[1] / 2))), obj)
        img.paste(self.front, (0, 0), self.front)
        return img
