"""Windows with overlap and cross-fade, and a streaming overlap-add.

A long signal is cut into windows of ``window`` samples starting every ``hop``
samples (``hop = window - overlap``); the tail is zero-padded to a full window.
Each processed window is weighted by a cross-fade (raised-cosine ramps over the
overlap, flat in between, never zero) and the sum is divided by the summed weights,
so overlap-add of unprocessed windows gives back the signal exactly, and memory is
bounded by one batch of windows, not by the signal's length.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def crossfade(window: int, overlap: int) -> Tensor:
    """(window,) weights: ramps of ``overlap`` samples at both ends, ones in between."""
    w = torch.ones(window, dtype=torch.float64)
    if overlap > 0:
        ramp = torch.sin(0.5 * math.pi * (torch.arange(overlap, dtype=torch.float64) + 0.5) / overlap) ** 2
        w[:overlap] = ramp
        w[window - overlap:] = torch.minimum(w[window - overlap:], ramp.flip(0))
    return w.float()


def num_windows(length: int, window: int, hop: int) -> int:
    """Windows needed to cover ``length`` samples (at least one)."""
    return 1 if length <= window else 1 + math.ceil((length - window) / hop)


def frame(signal: Tensor, window: int, hop: int) -> Tensor:
    """(..., T) -> (..., n, window): all windows of a signal, the tail zero-padded."""
    n = num_windows(signal.shape[-1], window, hop)
    total = (n - 1) * hop + window
    padded = torch.nn.functional.pad(signal, (0, total - signal.shape[-1]))
    return padded.unfold(-1, window, hop)


class OverlapAdd:
    """Streaming overlap-add of processed windows, in order.

    ``add(chunks)`` takes (n, C, window) windows (the next n of the stream) and returns
    the (C, M) samples that no later window can touch any more; ``finish(length)``
    returns the rest, cut so that the total is ``length`` samples.
    """

    def __init__(self, window: int, hop: int, channels: int, weights: Tensor):
        self.window, self.hop, self.channels = window, hop, channels
        self.weights = weights
        self.acc = torch.zeros(channels, window)
        self.norm = torch.zeros(window)
        self.emitted = 0  # samples returned so far
        self.next_start = 0  # start of the next window, in stream samples

    def add(self, chunks: Tensor) -> Tensor:
        out = []
        for chunk in chunks:
            offset = self.next_start - self.emitted
            need = offset + self.window
            if need > self.acc.shape[1]:
                self.acc = torch.nn.functional.pad(self.acc, (0, need - self.acc.shape[1]))
                self.norm = torch.nn.functional.pad(self.norm, (0, need - self.norm.shape[0]))
            self.acc[:, offset:need] += chunk.float() * self.weights
            self.norm[offset:need] += self.weights
            self.next_start += self.hop
            ready = self.next_start - self.emitted  # samples before the next window's start
            out.append(self._pop(ready))
        return torch.cat(out, dim=1) if out else torch.zeros(self.channels, 0)

    def _pop(self, count: int) -> Tensor:
        done = self.acc[:, :count] / self.norm[:count]
        self.acc, self.norm = self.acc[:, count:], self.norm[count:]
        self.emitted += count
        return done

    def finish(self, length: int) -> Tensor:
        """Everything left, truncated so that the stream totals at most ``length`` samples."""
        remaining = max(0, min(length - self.emitted, self.acc.shape[1]))
        return self._pop(self.acc.shape[1])[:, :remaining]
