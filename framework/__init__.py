"""editfriendly: edit-friendly DDPM inversion and the methods it is compared with.

Import packages: :mod:`framework` (the engine) and :mod:`plugins` (methods, registered by name).
"""

__version__ = "0.1.0"
