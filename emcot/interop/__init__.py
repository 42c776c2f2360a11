"""Other projects' checkpoints: Qwen/SigLIP/FLUX component initialisation, HALO and FLUX-VAE converters."""
