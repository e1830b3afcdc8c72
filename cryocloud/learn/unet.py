"""The 3D U-Net of cryocloud (torch, imported lazily): the learned picker and Noise2Noise build it.

`build_unet3d` makes a network (N, 1, z, y, x) -> (N, out_channels, z, y, x): `levels` poolings by
2 (inputs must be multiples of 2**levels voxels per axis), two 3x3x3 convolutions per level, each
followed by the normalisation (if any) and the activation, `channels * 2**level` feature maps at
level `level`, upsampling (trilinear or a transposed convolution) and skip concatenation, and a
1x1x1 head. Its options are the two styles in use:

- picker (`UNetConfig` / `build_unet`): batch normalisation (convolutions without bias), ReLU,
  transposed-convolution upsampling, one logit per class. In eval mode batch norm uses its running
  statistics, so every layer acts voxel-locally within the receptive field and tiled inference with
  an overlap of `receptive_radius` voxels reproduces whole-volume inference (see `predict`).
- Noise2Noise: no normalisation (a voxel's output never depends on the statistics of the tile it
  was computed in, so tiles stitch without seams), LeakyReLU(0.1), trilinear upsampling, one output.

Parameter names (state-dict keys) are `down.<level>.<layer>`, `bottom.<layer>`, `up.<i>` (transposed
convolutions only), `merge.<i>.<layer>` and `head`; `<layer>` counts the Sequential's modules
(convolution, [batch norm], activation, ...), as the picker has always written them.
"""

from __future__ import annotations

from typing import Any, Literal

import pydantic

from cryocloud.learn.torch_import import import_torch

Norm = Literal["none", "batch"]
Upsample = Literal["trilinear", "transposed"]
Activation = Literal["relu", "leaky_relu"]


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


def build_unet(config: UNetConfig) -> Any:
    """The picker's network (N, 1, z, y, x) -> logits (N, n_classes, z, y, x)."""
    return build_unet3d(
        out_channels=config.n_classes, channels=config.base_channels, levels=config.depth,
        norm="batch", activation="relu", upsample="transposed",
    )


def build_unet3d(
    *, out_channels: int, channels: int, levels: int, norm: Norm, activation: Activation, upsample: Upsample
) -> Any:
    """A torch.nn.Module U-Net (N, 1, z, y, x) -> (N, out_channels, z, y, x); see the module docstring.

    `channels`: feature maps at full resolution; `levels`: 2x poolings (>= 1).
    """
    torch = import_torch()
    nn = torch.nn
    if levels < 1 or channels < 1 or out_channels < 1:
        raise ValueError(f"U-Net needs levels, channels and out_channels >= 1, got {levels}, {channels}, {out_channels}")

    def block(c_in: int, c_out: int):
        layers = []
        for c in (c_in, c_out):
            layers.append(nn.Conv3d(c, c_out, 3, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm3d(c_out))
            layers.append(nn.ReLU(inplace=True) if activation == "relu" else nn.LeakyReLU(0.1))
        return nn.Sequential(*layers)

    class UNet3D(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            widths = [channels * 2**level for level in range(levels + 1)]
            self.down = nn.ModuleList([block(1 if i == 0 else widths[i - 1], widths[i]) for i in range(levels)])
            self.pool = nn.MaxPool3d(2)
            self.bottom = block(widths[-2], widths[-1])
            if upsample == "transposed":
                self.up = nn.ModuleList([nn.ConvTranspose3d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(levels))])
                merged = [2 * widths[i] for i in reversed(range(levels))]
            else:
                self.up = None
                merged = [widths[i + 1] + widths[i] for i in reversed(range(levels))]
            self.merge = nn.ModuleList([block(c, widths[i]) for c, i in zip(merged, reversed(range(levels)))])
            self.head = nn.Conv3d(widths[0], out_channels, 1)

        def forward(self, x):
            skips = []
            for down in self.down:
                x = down(x)
                skips.append(x)
                x = self.pool(x)
            x = self.bottom(x)
            for i, (merge, skip) in enumerate(zip(self.merge, reversed(skips))):
                if self.up is None:
                    x = nn.functional.interpolate(x, size=skip.shape[2:], mode="trilinear", align_corners=False)
                else:
                    x = self.up[i](x)
                x = merge(torch.cat([x, skip], dim=1))
            return self.head(x)

    return UNet3D()
