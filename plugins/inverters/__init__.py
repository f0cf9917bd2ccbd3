"""Inverters: x0 -> Inversion (noise maps and auxiliary sequence)."""
