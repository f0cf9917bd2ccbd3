"""Built-in plugins. Each module registers itself on import; the imports are explicit."""

from plugins.backbones import digits  # noqa: F401
from plugins.backbones import gaussian  # noqa: F401
from plugins.backbones import pixel_ddpm  # noqa: F401
from plugins.backbones import sd14_random  # noqa: F401
from plugins.backbones import stable_diffusion  # noqa: F401
from plugins.backbones import tiny  # noqa: F401
from plugins.inverters import cycle_diffusion  # noqa: F401
from plugins.inverters import ddim  # noqa: F401
from plugins.inverters import ddpm_edit_friendly  # noqa: F401
from plugins.inverters import edict  # noqa: F401
from plugins.inverters import negative_prompt  # noqa: F401
from plugins.inverters import null_text  # noqa: F401
from plugins.editors import color_strokes  # noqa: F401
from plugins.editors import plug_and_play  # noqa: F401
from plugins.editors import prompt_to_prompt  # noqa: F401
from plugins.editors import sdedit  # noqa: F401
from plugins.editors import shift  # noqa: F401
from plugins.editors import text  # noqa: F401
from plugins.editors import zero_shot  # noqa: F401
from plugins.metrics import clip_score  # noqa: F401
from plugins.metrics import digit_attributes  # noqa: F401
from plugins.metrics import diversity  # noqa: F401
from plugins.metrics import lpips_distance  # noqa: F401
from plugins.metrics import pixel  # noqa: F401
from plugins.metrics import pie_bench as pie_bench_metric  # noqa: F401
from plugins.metrics import reconstruction  # noqa: F401
from plugins.metrics import shape_iou  # noqa: F401
from plugins.metrics import structure_distance  # noqa: F401
from plugins.metrics import time  # noqa: F401
from plugins.datasets import digits as digits_data  # noqa: F401
from plugins.datasets import folder  # noqa: F401
from plugins.datasets import pie_bench  # noqa: F401
from plugins.datasets import yaml_list  # noqa: F401
