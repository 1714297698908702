"""The audio U-Net of Sound of Pixels ("unet7"), with configurable depth and width.

    input  (B, 1, F, N)  log magnitude on the warped grid (already batch-normalised)
    output (B, k, F, N)  k intermediate masks, no activation

Level i (0 = outermost) has width * min(2**i, 8) channels; a depth-d U-Net halves
F and N d times, so both must be multiples of 2**d (256 x 256 -> 2 x 2 for d = 7).
Down: LeakyReLU(0.2) (not outermost) -> Conv 4x4 stride 2 (no bias) -> BatchNorm (not
outermost/innermost). Up: ReLU -> bilinear x2 -> Conv 3x3 -> BatchNorm, then the skip
is concatenated; the outermost up-conv has a bias and no norm and returns k channels.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class _Level(nn.Module):
    def __init__(self, outer: int, inner: int, sub: nn.Module | None, *, in_channels: int | None = None,
                 out_channels: int | None = None):
        super().__init__()
        outermost, innermost = in_channels is not None, sub is None
        down: list[nn.Module] = [] if outermost else [nn.LeakyReLU(0.2, inplace=False)]
        down.append(nn.Conv2d(in_channels if outermost else outer, inner, 4, 2, 1, bias=False))
        if not (outermost or innermost):
            down.append(nn.BatchNorm2d(inner))
        up_in = inner if innermost else inner * 2
        up: list[nn.Module] = [nn.ReLU(), nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)]
        if outermost:
            up.append(nn.Conv2d(up_in, out_channels, 3, 1, 1, bias=True))
        else:
            up += [nn.Conv2d(up_in, outer, 3, 1, 1, bias=False), nn.BatchNorm2d(outer)]
        self.down, self.sub, self.up = nn.Sequential(*down), sub, nn.Sequential(*up)
        self.outermost = outermost

    def forward(self, x: Tensor) -> Tensor:
        y = self.down(x)
        if self.sub is not None:
            y = self.sub(y)
        y = self.up(y)
        return y if self.outermost else torch.cat([x, y], dim=1)


class AudioUNet(nn.Module):
    """(B, in_channels, F, N) -> (B, out_channels, F, N)."""

    def __init__(self, depth: int = 7, width: int = 64, out_channels: int = 32, in_channels: int = 1):
        super().__init__()
        if depth < 2:
            raise ValueError(f"U-Net depth must be >= 2, got {depth}")
        self.depth = depth
        chans = [width * min(2 ** i, 8) for i in range(depth)]
        block: nn.Module | None = None
        for i in range(depth - 1, 0, -1):
            block = _Level(chans[i - 1], chans[i], block)
        self.net = _Level(0, chans[0], block, in_channels=in_channels, out_channels=out_channels)

    def forward(self, x: Tensor) -> Tensor:
        step = 2 ** self.depth
        if x.shape[-1] % step or x.shape[-2] % step:
            raise ValueError(f"U-Net input {tuple(x.shape[-2:])} must be multiples of 2**depth = {step}")
        return self.net(x)
