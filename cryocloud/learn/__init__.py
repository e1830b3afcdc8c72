"""Learned particle picking (optional extra `learn`: torch, CPU by default, GPU when present).

- `targets`: training labels from picks (spheres of the particle radius) and membrane labels;
- `unet`: a small 3D U-Net (`UNetConfig`, `build_unet`);
- `train`: class-balanced training on sub-volumes sampled from annotated tomograms, model folders;
- `predict`: the class-probability map of a tomogram through Dask tiles with overlap;
- `picks`: connected components of the probability map -> Particles;
- `figures`: training curve and prediction overlay.

Only `unet`, `train` and `predict` import torch; without it they raise a CryocloudError naming
the extra (``pip install "cryocloud[learn]"``).
"""
