"""Metrics: scores of edits (structure preservation, prompt adherence, time, ...)."""
