"""Stable Diffusion XL on the tiny random SDXL (``tiny_xl``): parity of the conditioning and of
DDIM sampling with diffusers' ``StableDiffusionXLPipeline`` loaded from the same folder, exact
reconstruction by the noise-map and coupled inversions, the attention editors' identities, and
every inverter with every editor."""

from __future__ import annotations

import pytest
import torch

from framework.backbone import load_backbone, load_prompt_rules
from framework.conditioning import Conditioning
from framework.errors import InputError, WeightsNotFoundError
from framework.random import make_generator
from framework.registry import EDITORS, INVERTERS
from framework.sampling import reverse_process
from plugins.editors.unet_hooks import hook_state

SOURCE = "a photo of a cat"
TARGETS = ["a photo of a dog", "a painting of a tiger"]
N, SKIP = 6, 1


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def xl(_tiny_cache):
    return load_backbone("tiny_xl", device="cpu")


@pytest.fixture(scope="module")
def pipe(xl):
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging

    from plugins.backbones.tiny_xl import TinyXLOptions, tiny_xl_model_path

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        p = StableDiffusionXLPipeline.from_pretrained(str(tiny_xl_model_path(TinyXLOptions())))
    finally:
        diffusers_logging.set_verbosity(verbosity)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def x0(xl):
    r = xl.resolution
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, r), torch.linspace(-1, 1, r), indexing="ij")
    image = torch.stack([torch.sin(3 * xx), torch.cos(2 * yy), xx * yy])[None]
    return xl.encode_image(image)


# ----------------------------------------------------------------------------- parity
def test_conditioning_equals_the_pipelines_encode_prompt(xl, pipe):
    prompts = [SOURCE, "a red car on a road"]
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
        prompts, device="cpu", do_classifier_free_guidance=True
    )
    c = xl.encode_prompt(prompts)
    assert isinstance(c, Conditioning) and c.embeds.shape == (2, 77, 80) and c.pooled.shape == (2, 24)
    # the same networks on the same token ids: equal to the bit
    assert torch.equal(c.embeds, embeds) and torch.equal(c.pooled, pooled)
    # no negative prompt and force_zeros_for_empty_prompt: the unconditional branch is zeros
    assert pipe.config.force_zeros_for_empty_prompt and xl.force_zeros
    null = xl.null_condition()
    assert torch.equal(null.embeds.expand_as(negative), negative) and not bool(negative.any())
    assert torch.equal(null.pooled.expand_as(negative_pooled), negative_pooled)
    # an explicit empty negative prompt is the encoding of "" (two rows against one: allclose)
    _, negative, _, negative_pooled = pipe.encode_prompt(
        prompts, device="cpu", do_classifier_free_guidance=True, negative_prompt=""
    )
    empty = xl.encode_prompt([""])
    torch.testing.assert_close(empty.embeds, negative[:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(empty.pooled, negative_pooled[:1], rtol=0, atol=1e-6)
    # a model without force_zeros_for_empty_prompt: the encoding of "" on both sides
    pipe.register_to_config(force_zeros_for_empty_prompt=False)
    xl.force_zeros = False
    try:
        _, negative, _, negative_pooled = pipe.encode_prompt(prompts, device="cpu", do_classifier_free_guidance=True)
        null = xl.null_condition()
    finally:
        pipe.register_to_config(force_zeros_for_empty_prompt=True)
        xl.force_zeros = True
    torch.testing.assert_close(null.embeds, negative[:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(null.pooled, negative_pooled[:1], rtol=0, atol=1e-6)
    # the added time ids of a 32x24 image, from a latent of 16x12
    ids = pipe._get_add_time_ids((32, 24), (0, 0), (32, 24), torch.float32, text_encoder_projection_dim=24)
    assert torch.equal(xl.add_time_ids(16 * xl.vae_scale, 12 * xl.vae_scale), ids)


def test_ddim_sampling_equals_the_pipeline_at_guidance(xl, pipe):
    """DDIM (eta 0) from one latent at guidance 3: our reverse loop (eq. 3 through the process'
    float32 coefficients) against the pipeline's DDIMScheduler.step. Both run the same network
    on the same inputs; the steps compute the same formula in another order, so they differ by
    a few float32 ulps of the latents' magnitude: tolerance 1e-6 x max|x| (about 10 ulps)."""
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 4, 16, 16, generator=g)
    prompts = [SOURCE, TARGETS[1]]
    ref = pipe(
        prompt=prompts, latents=x_t.clone(), num_inference_steps=N, guidance_scale=3.0, eta=0.0,
        output_type="latent", height=32, width=32,
    ).images
    ours = reverse_process(xl, x_t, xl.schedule(N, 0.0), N, xl.encode_prompt(prompts), xl.null_condition(), 3.0)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6 * float(ref.abs().max()))


def test_vae_upcast_and_prompt_rules(xl):
    from plugins.backbones.sdxl import vae_upcast

    assert vae_upcast(torch.float16, None, {"force_upcast": True}) == torch.float32
    assert vae_upcast(torch.float16, "float16", {"force_upcast": True}) == torch.float16
    assert vae_upcast(torch.bfloat16, None, {"force_upcast": True}) == torch.bfloat16
    assert vae_upcast(torch.float16, None, {}) == torch.float16
    half = load_backbone("tiny_xl", device="cpu", dtype="float16")  # the tiny VAE says force_upcast
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32
    rules = xl.prompt_rules()
    assert rules.problems([SOURCE]) == []
    long = " ".join(["cat"] * 80)
    assert "takes 77" in rules.problems([long])[0]
    with pytest.raises(InputError, match="77"):
        xl.encode_prompt([long])
    assert xl.token_positions(SOURCE, "cat") == [5]


def test_sdxl_random_has_the_published_sizes():
    """The full-size backbone on the meta device (shapes only: no memory, no weights)."""
    from plugins.backbones.sdxl_random import SDXL_PARAMETERS

    bb = load_backbone("sdxl_random", device="meta", dtype="float16")
    assert bb.parameter_counts() == SDXL_PARAMETERS
    assert (bb.resolution, bb.size_multiple, bb.max_tokens, bb.embed_dim, bb.pooled_dim) == (1024, 32, 77, 2048, 1280)
    assert bb.unet.dtype == torch.float16 and bb.vae.dtype == torch.float32  # force_upcast
    assert bb.force_zeros and bb.describe()["random_weights"]


def test_config_picks_sdxl_for_an_sdxl_folder(xl, tmp_path):
    from framework.config import backbone_config
    from plugins.backbones.tiny_xl import TinyXLOptions, tiny_xl_model_path

    folder = str(tiny_xl_model_path(TinyXLOptions()))
    assert backbone_config(folder) == {"name": "sdxl", "model": folder}
    assert backbone_config("sdxl")["name"] == "sdxl" and backbone_config("sdxl_random")["name"] == "sdxl_random"
    rules = load_prompt_rules(folder)  # the tokenizers alone, before any network loads
    assert rules is not None and rules.max_tokens == 77 and rules.tokenizer_2 is not None
    partial = tmp_path / "partial"
    (partial / "unet").mkdir(parents=True)
    (partial / "unet" / "config.json").write_text("{}")
    with pytest.raises(WeightsNotFoundError, match="incomplete: vae/, .*text_encoder_2/.* are missing"):
        load_backbone({"name": "sdxl", "model": str(partial)}, device="cpu")


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("name", ["ddpm_edit_friendly", "cycle_diffusion", "edict"])
def test_exact_inversions_reconstruct(xl, x0, name):
    inv = INVERTERS.build({"name": name}).invert(xl, x0, SOURCE, num_steps=N, skip=SKIP, generator=make_generator(0))
    back = EDITORS.build({"name": "text", "guidance_scale": inv.guidance_scale}).edit(
        xl, inv, SOURCE, [SOURCE], skip=SKIP, generator=make_generator(1)
    )
    assert (back - x0).abs().max() <= 1e-5


# ----------------------------------------------------------------------------- attention editors
@pytest.fixture(scope="module")
def ef(xl, x0):
    return INVERTERS.build({"name": "ddpm_edit_friendly"}).invert(
        xl, x0, SOURCE, num_steps=N, skip=SKIP, generator=make_generator(0)
    )


def test_p2p_without_replacement_and_pnp_without_injection_equal_the_text_edit(xl, ef):
    p2p = EDITORS.build({"name": "prompt_to_prompt", "cross_replace_steps": 0.0, "self_replace_steps": 0.0})
    res = p2p.run(xl, ef, SOURCE, TARGETS, skip=SKIP, generator=make_generator(1))
    # the text edit of the same rows (the source row first, as P2P batches them): equal to the bit
    text = EDITORS.build({"name": "text", "guidance_scale": 9.0}).edit(
        xl, ef, SOURCE, [SOURCE, *TARGETS], skip=SKIP
    )
    assert torch.equal(res.targets, text[1:])
    # PnP's batch has other rows beside the targets (the empty-prompt source row, the
    # unconditional rows), and the network's float32 results move by ulps with the batch's
    # composition; at guidance 7.5 over 5 steps that is < 1e-4 here (P2P's targets move by
    # 4e-5 between a batch of 2 and of 3 rows), so 1e-4, as the SD 1.x tests
    pnp = EDITORS.build({"name": "plug_and_play", "feature_injection": 0.0, "attention_injection": 0.0,
                         "negative_prompt": ""})
    out = pnp.edit(xl, ef, SOURCE, TARGETS, skip=SKIP)
    text = EDITORS.build({"name": "text", "guidance_scale": 7.5}).edit(xl, ef, SOURCE, TARGETS, skip=SKIP)
    torch.testing.assert_close(out, text, rtol=0, atol=1e-4)


def test_attention_editors_control_sdxl_layers(xl, ef, x0):
    longer = "a red photo of a cat"  # one more word: refine
    res = EDITORS.build({"name": "prompt_to_prompt"}).run(xl, ef, SOURCE, [TARGETS[0], longer], skip=SKIP)
    assert res.modes == ["replace", "refine"] and res.controlled_calls > 0
    # the source row still reconstructs x0, to the float32 rounding of a batch of 3 rows through
    # the explicit attention of the controlled layers (the inversion ran 1 row through SDPA)
    assert (res.source - x0).abs().max() <= 1e-4
    uncontrolled = EDITORS.build({"name": "prompt_to_prompt", "cross_replace_steps": 0.0, "self_replace_steps": 0.0})
    plain = uncontrolled.run(xl, ef, SOURCE, [TARGETS[0], longer], skip=SKIP).targets
    assert (res.targets - plain).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # the control acts on both
    # Plug-and-Play's injection acts too
    pnp = {"name": "plug_and_play", "negative_prompt": ""}
    injected = EDITORS.build(pnp).edit(xl, ef, SOURCE, TARGETS, skip=SKIP)
    none = EDITORS.build({**pnp, "feature_injection": 0.0, "attention_injection": 0.0}).edit(
        xl, ef, SOURCE, TARGETS, skip=SKIP
    )
    assert (injected - none).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    # cross-attention in both attention levels; self-attention only at the coarser one
    # (side <= 0.25 x the latent side: 4 of 16, as 16 of 64 in SD and 32 of 128 in SDXL)
    layers = res.controlled_layers
    assert any(n.startswith("up_blocks.1") and "attn2" in n for n in layers)
    assert all(n.startswith(("down_blocks.2", "mid_block", "up_blocks.0")) for n in layers if "attn1" in n)
    assert any("attn1" in n for n in layers)
    # Plug-and-Play's layers: the decoder's second level (as SD 1.x's up_blocks.1), every
    # attention layer of it (the finer level has none)
    from plugins.editors.unet_hooks import resolve_layers

    opts = EDITORS.build({"name": "plug_and_play"}).options
    assert resolve_layers(xl.unet, opts.feature_layers, "f") == ["up_blocks.1.resnets.1"]
    assert resolve_layers(xl.unet, opts.attention_layers, "a") == [
        "up_blocks.1.attentions.1",
        "up_blocks.1.attentions.0",
    ]


def test_null_text_optimises_both_text_fields(xl, inversions):
    """Null-text inversion learns SDXL's ``learnable`` fields (both encoders' hidden states and
    the pooled embedding) of the unconditional conditioning, which starts at zeros here."""
    per_step = inversions["null_text"].uncond_embeddings
    assert type(per_step).__name__ == "SDXLConditioning" and type(per_step).learnable == ("embeds", "pooled")
    assert per_step.embeds.abs().amax() > 0 and per_step.pooled.abs().amax() > 0


# ----------------------------------------------------------------------------- the matrix
INVERTER_NAMES = ["ddpm_edit_friendly", "cycle_diffusion", "ddim", "null_text", "negative_prompt", "edict"]
INVERTER_OPTIONS = {"null_text": {"num_inner_steps": 2}}
EDITOR_CONFIGS = {
    "text": {"name": "text"},
    "prompt_to_prompt": {"name": "prompt_to_prompt", "blend_words": ["cat"], "equalizer_words": ["dog"],
                         "equalizer_weights": [2.0]},
    "plug_and_play": {"name": "plug_and_play"},
    "zero_shot": {"name": "zero_shot", "cross_attention_guidance": 0.1},
}


class _Inversions(dict):
    """Each inverter's inversion of x0, made on first use."""

    def __init__(self, xl, x0) -> None:
        super().__init__()
        self.xl, self.x0 = xl, x0

    def __missing__(self, name: str):
        self[name] = INVERTERS.build({"name": name, **INVERTER_OPTIONS.get(name, {})}).invert(
            self.xl, self.x0, SOURCE, num_steps=4, skip=1, generator=make_generator(0)
        )
        return self[name]


@pytest.fixture(scope="module")
def inversions(xl, x0):
    return _Inversions(xl, x0)


#: the editors that change no attention (noise-space manipulations and SDEdit)
PROMPT_FREE_CONFIGS = {
    "shift": {"name": "shift", "dx": 1, "dy": -1},
    "color_strokes": {"name": "color_strokes", "start_step": 1, "end_step": 3},
    "sdedit": {"name": "sdedit", "strength": 0.5},
}


@pytest.fixture(scope="module")
def strokes(tmp_path_factory, xl) -> str:
    """An RGBA strokes image at the model's resolution: a blue square in the upper left."""
    import numpy as np
    from PIL import Image

    size = xl.resolution
    arr = np.zeros((size, size, 4), dtype=np.uint8)
    arr[size // 8 : size // 2, size // 8 : size // 2] = (20, 40, 230, 255)
    path = tmp_path_factory.mktemp("strokes") / "strokes.png"
    Image.fromarray(arr, "RGBA").save(path)
    return str(path)


@pytest.mark.parametrize("editor_name", [*EDITOR_CONFIGS, *PROMPT_FREE_CONFIGS])
@pytest.mark.parametrize("inverter_name", INVERTER_NAMES)
def test_every_inverter_with_every_editor(xl, inversions, strokes, inverter_name, editor_name):
    inversion = inversions[inverter_name]
    config = {**EDITOR_CONFIGS, **PROMPT_FREE_CONFIGS}[editor_name]
    if editor_name in ("color_strokes", "sdedit"):
        config = {**config, "strokes": strokes}
    editor = EDITORS.build(config)
    if editor_name == "color_strokes" and inversion.zs is None:
        # colour strokes change noise maps: an inversion without them is refused in one line
        with pytest.raises(InputError, match="color strokes modify noise maps"):
            editor.edit(xl, inversion, SOURCE, TARGETS, skip=1, generator=make_generator(1))
        return
    before = dict(xl.unet.attn_processors)
    state = hook_state(xl.unet)
    out = editor.edit(xl, inversion, SOURCE, TARGETS, skip=1, generator=make_generator(1))
    assert out.shape[1:] == (4, 16, 16) and out.shape[0] in (1, 2) and torch.isfinite(out).all()
    images = xl.decode(out)
    assert images.shape[1:] == (3, 32, 32) and torch.isfinite(images).all()
    assert all(xl.unet.attn_processors[k] is v for k, v in before.items())
    assert hook_state(xl.unet) == state
