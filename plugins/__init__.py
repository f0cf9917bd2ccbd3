"""Built-in plugins. Each module registers itself on import; the imports are explicit."""

from plugins.backbones import (
    digits,
    digits_flow,
    gaussian,
    pixel_ddpm,
    sd3,
    sd14_random,
    sdxl,
    sdxl_random,
    stable_diffusion,
    tiny,
    tiny_sd3,
    tiny_xl,
)
from plugins.datasets import digits as digits_data
from plugins.datasets import folder, pie_bench, yaml_list
from plugins.editors import color_strokes, flowedit, plug_and_play, prompt_to_prompt, sdedit, shift, text, zero_shot
from plugins.inverters import cycle_diffusion, ddim, ddpm_edit_friendly, edict, negative_prompt, none, null_text
from plugins.metrics import (
    clip_score,
    digit_attributes,
    diversity,
    lpips_distance,
    pixel,
    reconstruction,
    shape_iou,
    structure_distance,
    time,
)
from plugins.metrics import pie_bench as pie_bench_metric
