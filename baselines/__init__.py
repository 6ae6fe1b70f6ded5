"""Baselines of the comparison table, each a ``models.generative.GenerativeModule``.

- ``baselines.ddpm.DiffusionBaseline``: plain (``ddpm``) and class-conditional (``ddpm_class``)
  diffusion on the hybrid's UNet family and noise process; they differ only in conditioning.
- ``baselines.vae.VAE``: convolutional VAE, samples from the prior.
- ``baselines.gan.GAN``: SNGAN with hinge loss, DiffAugment and an EMA generator.
"""
