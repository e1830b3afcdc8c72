"""A small 3D U-Net for volume denoising (torch; imported only by `noise2noise` when needed).

Architecture: `levels` encoder stages of two 3x3x3 convolutions (LeakyReLU) each followed by a 2x
max-pooling, a bottleneck, and a mirrored decoder (trilinear 2x upsampling, concatenation with the
encoder features, two convolutions); a final 1x1x1 convolution gives one channel. Stage i has
`channels * 2**i` feature maps. No normalisation layers: the output of a voxel depends on its
neighbourhood only, never on the statistics of the tile it was computed in, so tiles stitch
without seams. Input edges must be multiples of 2**levels.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1), nn.LeakyReLU(0.1),
        nn.Conv3d(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.1),
    )


class UNet3D(nn.Module):
    """U-Net (batch, 1, z, y, x) -> (batch, 1, z, y, x); see the module docstring."""

    def __init__(self, channels: int = 8, levels: int = 2):
        super().__init__()
        widths = [channels * 2**i for i in range(levels + 1)]
        self.down = nn.ModuleList(_block(c_in, c_out) for c_in, c_out in zip([1] + widths[:-2], widths[:-1]))
        self.bottom = _block(widths[-2], widths[-1])
        self.up = nn.ModuleList(_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(levels)))
        self.out = nn.Conv3d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool3d(x, 2)
        x = self.bottom(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = nn.functional.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.out(x)
