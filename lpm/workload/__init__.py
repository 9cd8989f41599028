"""The measured workload: data, models and training of the latent diffusion model."""
