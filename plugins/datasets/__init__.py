"""Datasets: items of (image, source prompt, target prompts)."""
