"""Plain text editing (section 4): fix the inversion's noise maps, change the prompt.

The reverse process starts at step N - skip from the inverted x_{N-skip} and runs with the
target prompt(s) and the inversion's own step rule (eq. 3 with its z_i and η; EDICT's coupled
update) and unconditional embeddings (null-text, negative-prompt inversion). All targets form
one batch: one forward pass per step for both guidance branches of every target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from framework.inversion import Inversion
from framework.registry import EDITORS
from framework.sampling import Editor, denoise, inversion_guidance
from framework.schema import DEFAULT_SKIP

if TYPE_CHECKING:
    from framework.backbone import Backbone


@dataclass
class TextEditorOptions:
    """Options of the ``text`` editor (defaults: the paper's)."""

    guidance_scale: float = 15.0  # classifier-free guidance on the target prompt


@EDITORS.register("text")
class TextEditor(Editor):
    """Edit by regenerating from fixed noise maps under the target prompt."""

    Options = TextEditorOptions

    @torch.no_grad()
    def edit(
        self,
        backbone: Backbone,
        inversion: Inversion,
        source_prompt: str,
        target_prompts: Sequence[str],
        *,
        skip: int = DEFAULT_SKIP,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        targets = self.check_inputs(backbone, inversion, target_prompts)
        start = inversion.check_skip(skip)
        cond = backbone.encode_prompt(targets)
        guidance = inversion_guidance(backbone, inversion, cond, self.options.guidance_scale)
        rule = inversion.regeneration(backbone, start, len(targets), generator=generator)
        return denoise(backbone, rule, start, guidance, desc="edit")
