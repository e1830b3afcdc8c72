"""Preprocessing stages: motion correction, tilt-series assembly, dose weighting, CTF estimation and correction."""
