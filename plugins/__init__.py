"""Built-in plugins. Each module registers itself on import; the imports are explicit."""

from plugins.backbones import stable_diffusion, tiny  # noqa: F401
from plugins.editors import text  # noqa: F401
from plugins.editors import plug_and_play  # noqa: F401
from plugins.editors import zero_shot  # noqa: F401
from plugins.inverters import ddpm_edit_friendly  # noqa: F401
