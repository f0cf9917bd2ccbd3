"""Editors: Inversion + target prompts -> edited latents."""
