"""Access to a diffusion model: the networks, the noise schedule, and prompt encoding.

A backbone owns its model parts and its scheduler configuration. Everything an inverter or
editor needs from a model goes through this interface, so the methods run unchanged on
Stable Diffusion, on the tiny random model of the tests, and on the analytic Gaussian model.
"""

from __future__ import annotations

import abc
import json
import os
import re
import string
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from framework.conditioning import Cond, broadcast_rows, cat_rows
from framework.errors import EditFriendlyError, InputError
from framework.process import DDPMProcess, FlowMatchProcess, NoiseProcess, ProcessSchedule
from framework.prompts import PromptRules, short_prompt  # noqa: F401 (short_prompt: for the backbones)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class PrecisionError(EditFriendlyError, FloatingPointError):
    """A network in half precision produced NaN/inf (or an all-black decode); the message says
    which option to change (``backbone.dtype`` or ``backbone.vae_dtype``)."""


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``."""
    return str(dtype).replace("torch.", "")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None picks CUDA, then Apple MPS, then the CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {device!r}; accepted: auto, cpu, cuda, cuda:N, mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but no CUDA GPU is available here; use --device cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r}: there are only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (
        getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    ):
        raise InputError(
            f"device {device!r} was asked for but Apple MPS is not available here; use --device cpu or auto"
        )
    return dev


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map ``float32|float16|bfloat16`` (or a torch dtype) to a torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise InputError(f"unknown dtype {dtype!r}; accepted: {', '.join(DTYPES)}") from None


def prompt_list(prompts: Sequence[str] | str) -> list[str]:
    """``encode_prompt``'s argument as a non-empty list of strings (one string is one prompt)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise InputError(f"prompts must be a non-empty list of strings, got {prompts!r}")
    return prompts


class Backbone(abc.ABC):
    """A diffusion model seen through the operations the methods need.

    Subclasses set ``alphas_cumprod`` (float32, (T,)), ``final_alpha_cumprod``,
    ``prediction_type`` and implement the abstract methods. ``nfe`` counts network
    evaluations: one batched forward pass, whatever its batch size, counts one.
    """

    #: whether prompts condition the model (False: prompts are ignored)
    conditional: bool = True
    #: "epsilon", "v_prediction" or "sample"; ``predict_noise`` always returns epsilon
    prediction_type: str = "epsilon"
    #: default image side in pixels, and the multiple every image side must be
    resolution: int = 512
    size_multiple: int = 64

    def __init__(self) -> None:
        self.nfe = 0
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.alphas_cumprod = torch.ones(1)
        self.final_alpha_cumprod = 1.0

    # ----------------------------------------------------------------- schedule
    def set_scheduler(self, scheduler: Any) -> None:
        """Take the noise schedule from a diffusers scheduler (a ``DDIMScheduler`` with "leading"
        spacing, as the paper's code): ᾱ, the final ᾱ, the prediction type and the timesteps."""
        self.scheduler = scheduler
        self.prediction_type = scheduler.config.prediction_type
        self.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float32).clone()
        self.final_alpha_cumprod = float(scheduler.final_alpha_cumprod)
        self._timesteps: dict[int, Tensor] = {}

    def scheduler_timesteps(self, num_steps: int) -> Tensor:
        """The model scheduler's timesteps for ``num_steps`` steps, descending (diffusers order)."""
        limit = int(self.scheduler.config.num_train_timesteps)
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= limit:
            raise InputError(f"num_steps must be an integer in 1..{limit} for this model, got {num_steps!r}")
        if num_steps not in self._timesteps:
            self.scheduler.set_timesteps(num_steps)
            timesteps = self.scheduler.timesteps.to("cpu", torch.int64).clone()
            if int(timesteps.max()) >= limit:
                offset = self.scheduler.config.steps_offset
                raise InputError(
                    f"num_steps={num_steps} puts the last timestep at {int(timesteps.max())} >= "
                    f"num_train_timesteps={limit} with steps_offset={offset}; use at most {limit - offset} steps"
                )
            self._timesteps[num_steps] = timesteps
        return self._timesteps[num_steps]

    def timesteps(self, num_steps: int) -> Tensor:
        """(N,) int64 model timesteps in paper order: ``timesteps(N)[i-1]`` is step i's."""
        return self.scheduler_timesteps(num_steps).to("cpu", torch.int64).flip(0)

    @property
    def process(self) -> NoiseProcess:
        """The model's noise process (DDPM/DDIM from ``alphas_cumprod``, ``final_alpha_cumprod``
        and ``prediction_type``); a family with another process overrides this."""
        return DDPMProcess(self.alphas_cumprod, self.final_alpha_cumprod, self.prediction_type)

    def schedule(self, num_steps: int, eta: float) -> ProcessSchedule:
        """The noise process at ``num_steps`` steps and stochasticity ``eta`` (float32)."""
        return self.process.discretize(self.scheduler_timesteps(num_steps), eta)

    # ----------------------------------------------------------------- images and prompts
    @abc.abstractmethod
    def encode_image(self, images: Tensor) -> Tensor:
        """Images in [-1, 1], (B, 3, H, W) -> x0 (B, C, h, w) float32 on ``self.device``."""

    @abc.abstractmethod
    def decode(self, x0: Tensor) -> Tensor:
        """x0 (B, C, h, w) -> images in [-1, 1], (B, 3, H, W) float32."""

    @abc.abstractmethod
    def encode_prompt(self, prompts: Sequence[str]) -> Cond:
        """Prompts (K,) -> conditioning (K, ...), or None for an unconditional model."""

    def null_condition(self) -> Cond:
        """The unconditional ("") conditioning used as classifier-free guidance's other branch."""
        return self.encode_prompt([""])

    @property
    def max_prompt_tokens(self) -> int:
        """The longest prompt the text encoder reads, in tokens (start and end included): the
        length of the token axis of the conditioning and of the cross-attention maps."""
        return int(getattr(self, "max_tokens", 77))

    @property
    def prompt_tokenizer(self) -> Any:
        """The tokenizer whose token positions the cross-attention maps index (a transformers
        tokenizer: ``tokenizer(text, add_special_tokens=...).input_ids``), or None."""
        return getattr(self, "tokenizer", None)

    def token_positions(self, prompt: str, word: str) -> list[int]:
        """Token positions (start token = 0) of every occurrence of ``word`` in ``prompt``, as the
        cross-attention maps index them (:func:`word_positions` with ``prompt_tokenizer``)."""
        tokenizer = self.prompt_tokenizer
        if tokenizer is None:
            raise InputError(f"{type(self).__name__} has no prompt tokenizer, so words cannot be located in prompts")
        return word_positions(tokenizer, prompt, word)

    def attention_network(self) -> torch.nn.Module | None:
        """The denoising network whose attention modules editors may hook (a diffusers UNet:
        ``attn_processors``, ``attn1``/``attn2`` modules), or None."""
        net = getattr(self, "unet", None)
        return net if isinstance(net, torch.nn.Module) else None

    def prompt_rules(self) -> PromptRules:
        """What this model's text encoder accepts (token limit, closed vocabulary). The default
        accepts every prompt; text-conditional backbones override it."""
        return PromptRules()

    def check_prompts(self, prompts: Sequence[str] | str) -> list[str]:
        """One message per prompt this model's text encoder cannot take (empty: all fine)."""
        return self.prompt_rules().problems(prompt_list(prompts))

    @classmethod
    def load_prompt_rules(cls, options: Any) -> PromptRules | None:
        """:meth:`prompt_rules` without loading the networks (the tokenizer and the text
        encoder's config only), so that a run checks its prompts before it starts; None when
        they are known only once the model is loaded. An unconditional model takes any prompt."""
        return None if cls.conditional else PromptRules()

    # ----------------------------------------------------------------- the network
    @abc.abstractmethod
    def model_output(self, x_t: Tensor, t: int | Tensor, cond: Cond) -> Tensor:
        """One batched forward pass of the raw network (its own prediction type), float32.

        ``t`` is one timestep for every row (an int), or a (B,) int64 tensor with one timestep
        per row (batched inversion evaluates several timesteps in one pass)."""

    def predict_noise(
        self,
        x_t: Tensor,
        t: int | Tensor,
        cond: Cond,
        uncond: Cond = None,
        guidance_scale: float | Tensor = 1.0,
        x_cond: Tensor | None = None,
    ) -> Tensor:
        """ε̂(x_t, t) with classifier-free guidance, (B, C, h, w) float32.

        ``t`` is an int (or a 0-d tensor) for all rows, or a (B,) tensor: one timestep per row,
        so one forward pass can evaluate several steps of a trajectory (x_t's rows then belong
        to different noise levels). ``cond`` has 1 or B rows (one row is broadcast), as has
        ``uncond``. With ``uncond`` given and a guidance scale other than 1 the unconditional and
        conditional branches run as one batched forward pass (2B rows, the timesteps repeated):
        ε̂ = ε_u + w (ε_c - ε_u). ``guidance_scale`` may be a (B,) tensor, one scale per row
        (e.g. the source row of Prompt-to-Prompt keeps the inversion's scale). v- and
        sample-prediction outputs are converted to epsilon here. ``x_cond`` (B, C, h, w), if
        given, is what the conditional branch sees instead of x_t (Zero-Shot's cross-attention
        guidance moves the conditional branch's latent); the pass is still one evaluation.
        """
        b = x_t.shape[0]
        t = timestep_rows(t, b, floating=self.process.float_timesteps)
        x_t = x_t.float()
        if isinstance(guidance_scale, Tensor):
            use_cfg = bool((guidance_scale.to(torch.float32) != 1).any())
        else:
            use_cfg = float(guidance_scale) != 1.0
        use_cfg = use_cfg and self.conditional and uncond is not None
        if use_cfg:
            assert cond is not None and uncond is not None
            emb = cat_rows([broadcast_rows(uncond, b), broadcast_rows(cond, b)])
            x_in = torch.cat([x_t, x_t if x_cond is None else x_cond.float()])
            t_in = t if isinstance(t, (int, float)) else torch.cat([t, t])
            out = self.to_epsilon(self.model_output(x_in, t_in, emb), x_in, t_in)
            self.nfe += 1
            eps_u, eps_c = out.chunk(2)
            return guide(eps_u, eps_c, guidance_scale)
        emb = broadcast_rows(cond, b) if (self.conditional and cond is not None) else cond
        if x_cond is not None:
            x_t = x_cond.float()
        out = self.model_output(x_t, t, emb)
        self.nfe += 1
        return self.to_epsilon(out, x_t, t)

    def to_epsilon(self, out: Tensor, x_t: Tensor, t: int | Tensor) -> Tensor:
        """Convert the network's output at timestep(s) t to the prediction the process' schedule
        takes (float32): the noise ε for DDPM/DDIM, the velocity for a flow process
        (:meth:`framework.process.NoiseProcess.to_prediction`)."""
        return self.process.to_prediction(out, x_t, t)

    # ----------------------------------------------------------------- helpers
    def resolved_options(self) -> dict[str, Any]:
        """Options left to the model (None in the config) with the values the loaded model
        resolved them to, e.g. ``{"clip_sample": True}`` from its scheduler config: what the
        saved config records, so that it says what ran. The default: none."""
        return {}

    def describe(self) -> dict[str, Any]:
        """A short JSON-able description, for logs and result rows."""
        return {"class": type(self).__name__, "prediction_type": self.prediction_type}


class FlowMatchBackbone(Backbone):
    """A flow-matching model (:class:`framework.process.FlowMatchProcess`): its scheduler is a
    diffusers ``FlowMatchEulerDiscreteScheduler``, whose sigmas for N steps (shifted, then a
    final 0) are the step times t_i and whose timesteps 1000·t_i (floats) are the network's
    timestep input. ``model_output`` returns the velocity v = ε − x0; ``predict_noise`` returns
    the guided velocity, which the flow schedule takes in ε's place."""

    prediction_type = "velocity"

    def set_scheduler(self, scheduler: Any) -> None:
        """Take the step times from a ``FlowMatchEulerDiscreteScheduler`` (its config: ``shift``,
        ``num_train_timesteps``)."""
        self.scheduler = scheduler
        self._timesteps: dict[int, Tensor] = {}
        self._times: dict[int, Tensor] = {}

    def scheduler_timesteps(self, num_steps: int) -> Tensor:
        """The scheduler's timesteps (1000·t, float32) for ``num_steps`` steps, descending."""
        limit = int(self.scheduler.config.num_train_timesteps)
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= limit:
            raise InputError(f"num_steps must be an integer in 1..{limit} for this model, got {num_steps!r}")
        if num_steps not in self._timesteps:
            self.scheduler.set_timesteps(num_steps)
            self._timesteps[num_steps] = self.scheduler.timesteps.to("cpu", torch.float32).clone()
            self._times[num_steps] = self.scheduler.sigmas.to("cpu", torch.float32).clone()
        return self._timesteps[num_steps]

    def step_times(self, num_steps: int) -> Tensor:
        """The scheduler's sigmas t for ``num_steps`` steps: N + 1 values, descending, ending at 0."""
        self.scheduler_timesteps(num_steps)
        return self._times[num_steps]

    def timesteps(self, num_steps: int) -> Tensor:
        """(N,) float32 model timesteps in paper order: ``timesteps(N)[i-1]`` is step i's."""
        return self.scheduler_timesteps(num_steps).flip(0)

    @property
    def process(self) -> NoiseProcess:
        """The flow-matching process over the scheduler's ``num_train_timesteps``."""
        return FlowMatchProcess(int(self.scheduler.config.num_train_timesteps))

    def schedule(self, num_steps: int, eta: float) -> ProcessSchedule:
        """The flow at the scheduler's sigmas for ``num_steps`` steps and stochasticity ``eta``."""
        timesteps = self.scheduler_timesteps(num_steps)
        return self.process.discretize_times(self.step_times(num_steps), eta, timesteps_desc=timesteps)


def guide(eps_u: Tensor, eps_c: Tensor, scale: float | Tensor) -> Tensor:
    """Classifier-free guidance, the one place it is written: ε̂ = ε_u + w (ε_c - ε_u).

    ``scale`` w is a number, or a (B,) tensor with one scale per row of the (B, ...) predictions.
    """
    if isinstance(scale, Tensor):
        w: float | Tensor = scale.to(eps_u.device, torch.float32).reshape(-1, *([1] * (eps_u.dim() - 1)))
    else:
        w = float(scale)
    return eps_u + w * (eps_c - eps_u)


def _norm_word(word: str) -> str:
    return word.strip().strip(string.punctuation).lower()


def word_positions(tokenizer: Any, prompt: str, word: str) -> list[int]:
    """Token positions (start token = position 0) of every occurrence of ``word`` in ``prompt``.

    Words are split on whitespace; a word of several tokens gives all its positions.
    """
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    pos, out = 1, []
    for w in prompt.split():
        w_ids = tokenizer(w, add_special_tokens=False).input_ids
        if _norm_word(w) == _norm_word(word) and _norm_word(word):
            # leave out punctuation tokens ("cat," -> the tokens of "cat" only)
            core = tokenizer(_norm_word(w), add_special_tokens=False).input_ids
            first = next(
                (s for s in range(len(w_ids) - len(core) + 1) if w_ids[s : s + len(core)] == core), None
            )
            if core and first is not None:
                out.extend(range(pos + first, pos + first + len(core)))
            else:
                out.extend(range(pos, pos + len(w_ids)))
        pos += len(w_ids)
    if pos - 1 != len(ids):
        raise InputError(
            f"could not locate the words of prompt {prompt!r} in its tokens; write the prompt's "
            "words separated by spaces"
        )
    return out


def timestep_rows(t: int | float | Tensor, b: int, floating: bool = False) -> int | float | Tensor:
    """An int for one timestep shared by all rows, else a (b,) int64 tensor of per-row ones;
    with ``floating`` (a flow's timesteps 1000·t) a float and a float32 tensor instead."""
    if isinstance(t, Tensor) and t.dim() > 0:
        if t.dim() != 1 or t.shape[0] != b:
            raise InputError(f"per-row timesteps must have shape ({b},), got {tuple(t.shape)}")
        return t.to(torch.float32) if floating else t.to(torch.int64)
    return float(t) if floating else int(t)


def check_finite(x: Tensor, what: str, dtype: torch.dtype, option: str) -> None:
    """Raise :class:`PrecisionError` if ``x`` holds NaN/inf, naming ``option`` to change when
    ``dtype`` is a half precision (else the model itself is broken)."""
    if bool(torch.isfinite(x).all()):
        return
    if dtype in (torch.float16, torch.bfloat16):
        raise PrecisionError(
            f"{what} has NaN/inf with {option}={dtype_name(dtype)} (half precision overflowed); "
            f"set {option}=float32" + (" or bfloat16" if dtype == torch.float16 else "")
        )
    raise PrecisionError(f"{what} has NaN/inf in float32: the model's weights or inputs are broken")


#: seconds to wait for the model hub before calling it unreachable
HUB_PROBE_TIMEOUT = float(os.environ.get("EDITFRIENDLY_HUB_TIMEOUT", "3"))


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) is set."""
    return os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", "")).strip().upper() in (
        "1", "ON", "YES", "TRUE",
    )


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT) -> str | None:
    """Probe the model hub once (``HF_ENDPOINT``, default huggingface.co) with one short request.

    Returns None when it answers (any HTTP status), else why not (``"ConnectError: ..."``).
    huggingface_hub itself retries every file five times with back-off, which offline took
    4-5 minutes and printed hundreds of warnings before failing; this takes ``timeout`` seconds.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    endpoint = os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")
    try:
        get_session().head(endpoint + "/api/models", timeout=timeout)
    except Exception as exc:  # any transport failure means "unreachable"
        text = str(exc).splitlines()[0] if str(exc) else ""
        return f"{endpoint} cannot be reached ({type(exc).__name__}: {text})"[:300]
    return None


def weights_hint(option: str = "--backbone PATH, or backbone.model=PATH in a run config") -> str:
    """What to do when weights are neither local nor downloadable (one sentence per way out)."""
    cache = "the local cache (~/.cache/huggingface, or $HF_HOME)"
    first = (
        f"HF_HUB_OFFLINE=1 is set, so only {cache} was searched"
        if hub_offline()
        else f"offline, set HF_HUB_OFFLINE=1 to use only {cache} without waiting for the network"
    )
    return (
        f"{first}; give a local diffusers folder ({option}); let the hub download the weights once "
        "(network access); or use --backbone digits, the trained model that ships with the project "
        "(no download)"
    )


#: an id on the model hub: owner/name
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


def looks_like_hub_id(model: str) -> bool:
    """Whether ``model`` has the form of a hub id (``owner/name``) rather than of a path."""
    return bool(HUB_ID_RE.match(model)) and ".." not in model and not model.startswith(".")


def check_model_folder(model: str, components: Sequence[str], what: str) -> None:
    """Refuse a ``model`` that is meant as a local folder but cannot be one, naming what is wrong:
    a folder that does not exist (anything that is not an ``owner/name`` hub id), a file, an
    empty folder, or a folder without some of ``components`` (the sub-folders the model is
    loaded from; of those, the ones its ``model_index.json`` lists, where it lists any). A hub
    id that is not a folder here is left to the loader. Raises :class:`~framework.errors.WeightsNotFoundError`."""
    from framework.errors import WeightsNotFoundError

    layout = "model_index.json and " + ", ".join(f"{c}/" for c in components)
    path = Path(model).expanduser()
    if path.is_file():
        raise WeightsNotFoundError(f"{model} is a file, not a model folder (a {what} folder holds {layout})")
    if not path.exists():
        if looks_like_hub_id(model):
            return
        from framework.config import preset_names

        raise WeightsNotFoundError(
            f"folder not found: {model} (--backbone takes a preset ({', '.join(preset_names('backbone'))}), "
            "a hub id owner/name, or a local diffusers folder)"
        )
    if not path.is_dir():
        return
    if not any(path.iterdir()):
        raise WeightsNotFoundError(f"the model folder {model} is empty (a {what} folder holds {layout})")
    index = path / "model_index.json"
    listed: list[str] = []
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        if isinstance(data, dict):
            listed = [k for k, v in data.items() if isinstance(v, list) and len(v) == 2 and None not in v]
    # the components the folder itself lists, where it lists any of those the model is loaded from
    wanted = [c for c in components if c in listed] or list(components)
    missing = [c for c in wanted if not (path / c).is_dir() or not any((path / c).iterdir())]
    if missing:
        names = " and ".join(", ".join(f"{c}/" for c in missing).rsplit(", ", 1))
        why = f"model_index.json lists {', '.join(listed)}" if listed else f"a {what} folder holds {layout}"
        raise WeightsNotFoundError(
            f"the model folder {model} is incomplete: {names} {'is' if len(missing) == 1 else 'are'} "
            f"missing or empty ({why})"
        )


def prepare_loading(
    model: str, components: Sequence[str], what: str, revision: str | None, local_files_only: bool
) -> tuple[dict[str, Any], str | None]:
    """Before loading ``model`` (a hub id or a local diffusers folder) with ``from_pretrained``:
    refuse a folder that cannot be the model (:func:`check_model_folder`, before any hub look-up),
    and return the keyword arguments of the loading calls (``revision``, ``local_files_only``)
    with why the hub cannot be reached (None where it can or was not asked). Where the weights
    may come from the hub, one short probe replaces huggingface_hub's minutes of retries per
    file: unreachable, only the local cache is tried."""
    kw: dict[str, Any] = {"revision": revision, "local_files_only": local_files_only}
    check_model_folder(model, components, what)
    unreachable = None
    if not (local_files_only or hub_offline() or Path(model).is_dir()):
        unreachable = hub_unreachable()
        if unreachable:
            kw["local_files_only"] = True
    return kw, unreachable


@contextmanager
def weights_not_found(model: str, what: str, unreachable: str | None) -> Iterator[None]:
    """Turn an ``OSError``/``ValueError`` from loading ``model``'s weights into one
    :class:`~framework.errors.WeightsNotFoundError` saying why (the hub ``unreachable``, the
    loader's first line, or a path that does not exist) and what to do (:func:`weights_hint`)."""
    from framework.errors import WeightsNotFoundError

    try:
        yield
    except (OSError, ValueError) as exc:
        if unreachable:
            why = f"the hub {unreachable} and they are not in the local cache"
        else:
            why = (str(exc).splitlines() or [type(exc).__name__])[0].rstrip(".")
        local = Path(model).expanduser()
        if not local.exists() and local.parent.is_dir():  # owner/ is a folder here: a path was meant?
            why = f"there is no folder {model} here, and as a hub id: {why}"
        raise WeightsNotFoundError(f"could not load {what} weights from {model!r}: {why}. {weights_hint()}") from None


def load_backbone(
    name_or_path: str | Mapping[str, Any] = "sd14",
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype | None = None,
    **options: Any,
) -> Backbone:
    """Load a backbone by registered name (``tiny``, ``gaussian``, ``stable_diffusion``), by a
    preset in ``configs/backbone`` (``sd14``, ``sd15``, ``sd21``), by a hub id, or from a local
    diffusers folder; or from a config mapping ``{"name": ..., **options}``.
    """
    from framework.config import backbone_config
    from framework.registry import BACKBONES

    cfg = dict(backbone_config(name_or_path)) if not isinstance(name_or_path, Mapping) else dict(name_or_path)
    cfg.update(options)
    cls, opts = BACKBONES.options(cfg)
    if device is not None and hasattr(opts, "device"):
        opts.device = str(device)
    if dtype is not None and hasattr(opts, "dtype"):
        opts.dtype = str(dtype).replace("torch.", "")
    return cls(opts)


def load_prompt_rules(name_or_path: str | Mapping[str, Any]) -> PromptRules | None:
    """The :class:`PromptRules` of a backbone config without loading its networks (see
    :meth:`Backbone.load_prompt_rules`), or None when only the loaded model can tell."""
    from framework.config import backbone_config
    from framework.registry import BACKBONES

    cfg = dict(backbone_config(name_or_path)) if not isinstance(name_or_path, Mapping) else dict(name_or_path)
    cls, opts = BACKBONES.options(cfg)
    return cls.load_prompt_rules(opts)
