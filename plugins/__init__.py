"""Built-in plugins. Each module registers itself on import; the imports are explicit."""

from plugins.backbones import stable_diffusion, tiny  # noqa: F401
from plugins.backbones import pixel_ddpm  # noqa: F401
from plugins.editors import text  # noqa: F401
from plugins.editors import color_strokes, sdedit, shift  # noqa: F401
from plugins.inverters import ddpm_edit_friendly  # noqa: F401
