"""Latent Pollution Model: energy and CO2e of 2D/3D latent diffusion models."""
