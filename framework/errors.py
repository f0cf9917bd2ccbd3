"""Errors that are the user's to fix (bad input, bad config), as opposed to bugs.

The CLI prints these as one clean ``error: ...`` line and exits non-zero, without a traceback.
"""


class EditFriendlyError(Exception):
    """Base class of every error caused by user input or configuration."""


class ConfigError(EditFriendlyError, ValueError):
    """A configuration value, plugin name or option is not accepted."""


class InputError(EditFriendlyError, ValueError):
    """An input (image file, prompt, step count, ...) is not accepted."""


class WeightsNotFoundError(EditFriendlyError, OSError):
    """Model weights could not be found locally and could not be downloaded."""
