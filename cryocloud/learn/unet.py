"""A small 3D U-Net for voxel classification of tomograms (z, y, x).

`depth` poolings by 2 (inputs must be multiples of 2**depth voxels per axis), two 3x3x3
convolutions with batch normalisation and ReLU per level, `base_channels` doubling per level,
transposed-convolution upsampling and skip concatenation, a 1x1x1 head with one logit per class.
In eval mode every layer acts voxel-locally within the receptive field (batch norm uses its
running statistics), so tiled inference with an overlap of `receptive_radius` voxels reproduces
whole-volume inference (see `predict`).
"""

from __future__ import annotations

import pydantic

from cryocloud.learn.torch_import import import_torch


class UNetConfig(pydantic.BaseModel):
    """Architecture of the picker network."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    n_classes: int = pydantic.Field(2, ge=2, description="output classes (0 = background)")
    base_channels: int = pydantic.Field(8, ge=1, description="feature channels at full resolution")
    depth: int = pydantic.Field(2, ge=1, le=4, description="number of 2x poolings")

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this (voxels per axis)."""
        return 2**self.depth

    @property
    def receptive_radius(self) -> int:
        """Voxels on each side that influence one output voxel (rounded up to `multiple`).

        Level l (0 = full resolution) has two 3x3x3 convolutions on the way down and up (2 x 2^l
        voxels each, the bottleneck only once), a pooling (2^l) and an upsampling (2^l).
        """
        radius = 2 * 2**self.depth
        for level in range(self.depth):
            radius += 2 * 2 * 2**level + 2 * 2**level
        return -(-radius // self.multiple) * self.multiple


def build_unet(config: UNetConfig):
    """A torch.nn.Module (N, 1, z, y, x) -> logits (N, n_classes, z, y, x)."""
    torch = import_torch()
    nn = torch.nn

    def block(c_in: int, c_out: int):
        return nn.Sequential(
            nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
            nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
        )

    class UNet3D(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = [config.base_channels * 2**level for level in range(config.depth + 1)]
            self.down = nn.ModuleList([block(1 if i == 0 else widths[i - 1], widths[i]) for i in range(config.depth)])
            self.pool = nn.MaxPool3d(2)
            self.bottom = block(widths[-2], widths[-1])
            self.up = nn.ModuleList([nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(config.depth))])
            self.merge = nn.ModuleList([block(2 * widths[i], widths[i]) for i in reversed(range(config.depth))])
            self.head = nn.Conv3d(widths[0], config.n_classes, 1)

        def forward(self, x):
            skips = []
            for down in self.down:
                x = down(x)
                skips.append(x)
                x = self.pool(x)
            x = self.bottom(x)
            for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
                x = merge(torch.cat([up(x), skip], dim=1))
            return self.head(x)

    return UNet3D()
