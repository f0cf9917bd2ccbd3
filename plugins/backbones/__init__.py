"""Backbones: model access (Stable Diffusion via diffusers, the tiny random model, ...)."""
