"""Spectral front end: STFT/iSTFT, log-frequency warp and its inverse, targets, reconstruction.

Shapes (B batch, C channels or sources, T samples, F = n_fft // 2 + 1 linear bins,
W = warp_bins warped rows, N = frames):
    waveform (B, T) -> complex spectrum (B, F, N) -> magnitude (B, 1, F, N)
    -> warped magnitude (B, 1, W, N) -> network input log(mag + 1e-10) (B, 1, W, N).
Masks come back as (B, C, W, N), are unwarped to (B, C, F, N), multiply |X| and take
the mixture's phase, and the iSTFT gives (B, C, T).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipsep_ray.config import AudioConfig

LOG_EPS = 1e-10


def _warp_grid(out_rows: int, frames: int, inverse: bool, warp_bins: int, freq_bins: int) -> Tensor:
    """Sampling grid (1, rows, frames, 2) for ``grid_sample`` with align_corners=True.

    Forward (linear -> log): warped row y_out in [-1, 1] reads linear coordinate
    (21 ** ((y_out + 1) / 2) - 11) / 10. Inverse: linear row x reads warped coordinate
    log(10 x + 11) / log(21) * 2 - 1. Both map -1 -> -1 and 1 -> 1.
    """
    rows = torch.linspace(-1.0, 1.0, out_rows, dtype=torch.float64)
    if inverse:
        src = torch.log(10.0 * rows + 11.0) / math.log(21.0) * 2.0 - 1.0
    else:
        src = (torch.pow(21.0, (rows + 1.0) / 2.0) - 11.0) / 10.0
    cols = torch.linspace(-1.0, 1.0, frames, dtype=torch.float64)
    grid = torch.stack(torch.broadcast_tensors(cols[None, :], src[:, None]), dim=-1)
    return grid[None].float()


class SpectralFrontEnd(nn.Module):
    """The STFT, warp and reconstruction of one :class:`AudioConfig`.

    Holds no learned parameters; buffers (window, warp grids) follow ``.to(device)``.
    """

    def __init__(self, sample_rate: int = 16000, n_fft: int = 1024, hop_length: int = 256,
                 win_length: int = 1024, clip_samples: int = 65535, warp_bins: int = 256):
        super().__init__()
        self.sample_rate, self.n_fft, self.hop_length = sample_rate, n_fft, hop_length
        self.win_length, self.clip_samples, self.warp_bins = win_length, clip_samples, warp_bins
        self.freq_bins = n_fft // 2 + 1
        self.num_frames = 1 + clip_samples // hop_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        if warp_bins:
            fwd = _warp_grid(warp_bins, self.num_frames, False, warp_bins, self.freq_bins)
            inv = _warp_grid(self.freq_bins, self.num_frames, True, warp_bins, self.freq_bins)
            self.register_buffer("grid_fwd", fwd, persistent=False)
            self.register_buffer("grid_inv", inv, persistent=False)

    @classmethod
    def from_config(cls, cfg: AudioConfig) -> "SpectralFrontEnd":
        return cls(cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.win_length, cfg.clip_samples, cfg.warp_bins)

    # -- transforms -----------------------------------------------------------------
    def stft(self, wave: Tensor) -> Tensor:
        """(B, T) float -> (B, F, N) complex; centred, Hann window. Always float32."""
        return torch.stft(wave.float(), self.n_fft, self.hop_length, self.win_length, self.window,
                          center=True, return_complex=True)

    def istft(self, spec: Tensor, length: int) -> Tensor:
        """(..., F, N) complex -> (..., length) float32."""
        lead = spec.shape[:-2]
        out = torch.istft(spec.reshape(-1, *spec.shape[-2:]), self.n_fft, self.hop_length,
                          self.win_length, self.window, center=True, length=length)
        return out.reshape(*lead, length)

    def _grid(self, grid: Tensor, frames: int) -> Tensor:
        if grid.shape[2] == frames:
            return grid
        # A different frame count (e.g. a short test input) gets its own time axis.
        rows = grid[0, :, 0, 1]
        cols = torch.linspace(-1.0, 1.0, frames, device=grid.device)
        return torch.stack(torch.broadcast_tensors(cols[None, :], rows[:, None]), dim=-1)[None]

    def _sample(self, x: Tensor, grid: Tensor) -> Tensor:
        b, c, _, n = x.shape
        g = self._grid(grid, n).to(x.dtype).expand(b * c, -1, -1, -1)
        out = F.grid_sample(x.reshape(b * c, 1, x.shape[2], n), g, mode="bilinear", align_corners=True)
        return out.reshape(b, c, out.shape[2], n)

    def warp(self, mag: Tensor) -> Tensor:
        """Linear to log frequency: (B, C, F, N) -> (B, C, W, N). Identity when warp_bins == 0."""
        return self._sample(mag, self.grid_fwd) if self.warp_bins else mag

    def unwarp(self, mask: Tensor) -> Tensor:
        """Log to linear frequency: (B, C, W, N) -> (B, C, F, N). Identity when warp_bins == 0."""
        return self._sample(mask, self.grid_inv) if self.warp_bins else mask

    # -- model input, targets, reconstruction --------------------------------------
    def analyse(self, wave: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(B, T) -> (spec (B, F, N) complex, linear |X| (B, 1, F, N), log warped |X| (B, 1, W, N))."""
        spec = self.stft(wave)
        mag = spec.abs().unsqueeze(1)
        return spec, mag, torch.log(self.warp(mag) + LOG_EPS)

    def targets(self, source_mags: Tensor, mix_mag: Tensor, binary: bool = True) -> Tensor:
        """Target masks on the warped grid: (B, S, F, N) sources, (B, 1, F, N) mixture -> (B, S, W, N).

        Binary: 1[|S_n| > 0.5 |X|]. Ratio: |S_n| / |X| clamped to [0, 1], each bin
        normalised by its own mixture magnitude (not a sum over the batch).
        """
        ws, wm = self.warp(source_mags), self.warp(mix_mag)
        if binary:
            return (ws > 0.5 * wm).float()
        return (ws / wm.clamp_min(1e-8)).clamp(0.0, 1.0)

    def reconstruct(self, mask: Tensor, spec: Tensor, length: int) -> Tensor:
        """Masks (B, C, W, N) in [0, 1] on the warped grid + mixture spectrum (B, F, N) -> (B, C, length).

        Unwarp, multiply the linear mixture spectrum (keeps the mixture's phase), iSTFT, clip to [-1, 1].
        """
        # Bilinear interpolation of values in [0, 1] stays in [0, 1]: no clamp needed.
        lin = self.unwarp(mask.float())
        return self.istft(lin * spec.unsqueeze(1), length).clamp_(-1.0, 1.0)
