"""Denoising Diffusion Probabilistic Models (Ho et al. 2020), from scratch in PyTorch."""

__version__ = "0.1.0"
