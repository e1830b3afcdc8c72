"""Denoising of tomograms (z, y, x).

- `deconv`: the CTF deconvolution filter of Warp (SNR falloff, strength, high-pass), tiled with overlap;
- `noise2noise`: a learned even/odd (Noise2Noise, cryoCARE-style) 3D U-Net (torch, the `denoise`
  extra), trained on sub-volume pairs of the even- and odd-frame reconstructions, applied in tiles;
- `tiling`: overlapping tiles through Dask (periodic at the volume faces), the seam and face metrics;
- `evaluate`: correlation and FSC with a ground-truth volume;
- `simulated`: the digital twin's even/odd reconstructions and truth, for evaluation;
- `figures`: before/after slice PNGs.

Stages take and return lazy `Tomogram`s and never read storage themselves; only `figures` and the
model folder functions (`noise2noise.save_model` / `load_model`) write, through `cryocloud.store`.
`noise2noise` is not imported here, so `import cryocloud.denoise` works without torch.
"""

from cryocloud.denoise.deconv import DeconvSettings, deconvolve, tomogram_defocus, wiener_response
from cryocloud.denoise.tiling import face_std, map_tiles, seam_jump

__all__ = ["DeconvSettings", "deconvolve", "face_std", "map_tiles", "seam_jump", "tomogram_defocus", "wiener_response"]
