"""The LightningModule of a run: one item in, its result rows out.

``predict_step`` takes one item, inverts it once per shared inversion
(:func:`framework.experiment.plan.inversion_groups`), runs every method and sweep point and
every target from it, decodes, scores with the configured metrics, and returns rows (dicts;
``_image``/``_input``/``_reconstruction`` hold PIL images for the
:class:`~framework.experiment.writer.ResultsWriter` to save).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from PIL import Image
from torch import Tensor

from framework.dataset import Item, fit_mask, item_seed
from framework.errors import ConfigError
from framework.experiment.plan import InversionGroup, Variant, build_metrics, inversion_groups, item_dir

log = logging.getLogger(__name__)


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").strip()
    return text[:500]


@dataclass
class Loaded:
    """An item's image, loaded and sized for the backbone."""

    source: Tensor  # (1, 3, H, W) in [-1, 1], on the CPU: what the metrics compare with
    x0: Tensor | None  # the backbone's encoding of it (latents for latent models), on the device
    mask: Tensor | None  # (1, 1, H, W) in {0, 1}, or None
    input_image: Image.Image  # the sized input, saved as input_rel
    idir: str  # the item's folder under images/<variant>/
    input_rel: str  # images/inputs/<idir>__<hash of the image bytes and the sizing>.png


@dataclass
class Edits:
    """What one variant made of one item at one seed index."""

    images: Tensor  # (K, 3, H, W) on the CPU, one per target prompt
    recon: Tensor | None  # (1, 3, H, W): the edit with the source prompt, when needed
    timing: dict[str, Any]  # inversion/edit seconds and network evaluations, num_targets


class EditModule(pl.LightningModule):
    """predict_step(item) -> rows (dicts; ``_image``/``_input`` hold PIL images to save)."""

    def __init__(
        self,
        backbone_cfg: dict[str, Any],
        variants: Sequence[Variant],
        metric_cfgs: Sequence[dict[str, Any]],
        output_dir: str,
        seed: int,
        image_size: Any = None,
        save_reconstructions: bool = False,
        show_steps: bool = False,
        threads: int | None = None,
        prompt_problems: dict[str, str] | None = None,
        done: set[tuple] | None = None,
        digests: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone_cfg = dict(backbone_cfg)
        self.variants = list(variants)
        self.groups = inversion_groups(self.variants)
        self.metric_cfgs = list(metric_cfgs)
        self.output_dir = str(output_dir)
        self.run_seed = int(seed)
        self.image_size = image_size
        self.save_reconstructions = bool(save_reconstructions)
        self.show_steps = bool(show_steps)
        self.threads = threads
        # {item id: error} of the items whose prompts the text encoder cannot take, found at
        # planning; None: not checked there, so checked here with the loaded model
        self.prompt_problems = prompt_problems
        self.prompt_rules: Any = None
        #: keys of the rows to reuse (framework.experiment.resume.plan_resume), not computed again
        self.done = set(done or ())
        #: item id -> ItemDigest (framework.experiment.resume), recorded in every row
        self.digests = dict(digests or {})
        self.backbone: Any = None

    # Lightning moves the (parameter-free) module to its device before this hook.
    def on_predict_start(self) -> None:
        from framework.backbone import load_backbone
        from framework.experiment.loggers import quiet_libraries
        from framework.registry import EDITORS, INVERTERS

        quiet_libraries()  # also in processes that Lightning spawns rather than starts anew
        device = self.device
        if self.threads:
            # after Lightning's own choice (DDP on CPUs: cores // processes): float sums depend
            # on the thread count, so 1 and N processes agree only with the same count
            torch.set_num_threads(self.threads)
        self.backbone = load_backbone(self.backbone_cfg, device=device)
        self.inverters = {json.dumps(v.inverter, sort_keys=True): INVERTERS.build(v.inverter) for v in self.variants}
        self.editors = {json.dumps(v.editor, sort_keys=True): EDITORS.build(v.editor) for v in self.variants}
        if self.prompt_problems is None:  # before the first item: a bad option fails the run
            from framework.prompts import check_run_prompts

            self.prompt_rules = self.backbone.prompt_rules()
            methods = [
                (v.label, (self.inverters[json.dumps(v.inverter, sort_keys=True)],
                           self.editors[json.dumps(v.editor, sort_keys=True)]))
                for v in self.variants
            ]
            check_run_prompts(self.prompt_rules, methods, [])
        self.metrics = build_metrics(self.metric_cfgs)
        for m in self.metrics:
            m.setup(device)
        self.needs_reconstruction = self.save_reconstructions or any(m.needs_reconstruction for m in self.metrics)

    def predict_step(self, item: Item | None, batch_idx: int = 0) -> list[dict[str, Any]]:
        if item is None:  # an idle rank's placeholder (more devices than items)
            return []
        from framework.experiment.writer import ResultsWriter

        if ResultsWriter.stopped(self._trainer):  # a write failed (a full disk): compute nothing more
            return []
        from framework.progress import progress_bars

        # rank 0 shows the denoising steps of the current item under the items bar
        with torch.no_grad(), progress_bars(self.show_steps and self.global_rank == 0):
            return self.process(item)

    # -- one item
    def _missing(self, item: Item) -> list[Variant]:
        """Variants with any row of this item not yet done (they are redone as a whole)."""
        out = []
        for v in self.variants:
            keys = [
                (item.id, v.label, v.setting, k, s) for k in range(len(item.target_prompts)) for s in range(v.seeds)
            ]
            if any(key not in self.done for key in keys):
                out.append(v)
        return out

    def _row(self, item: Item, v: Variant, k: int, s: int) -> dict[str, Any]:
        row: dict[str, Any] = {
            "item_id": item.id,
            "method": v.method,
            "variant": v.label,
            "setting": v.setting,
            "target_index": k,
            "target_prompt": item.target_prompts[k],
            "source_prompt": item.source_prompt,
            "seed_index": s,
            "seed": item_seed(self.run_seed, item.id, s),
            "num_steps": v.num_steps,
            "skip": v.skip,
            "status": "ok",
            "error": "",
            "input_path": "",
            "output_path": "",
        }
        digest = self.digests.get(item.id)
        if digest is not None:
            row["item_sha256"], row["image_sha256"] = digest.item, digest.image
        row.update(v.sweep)
        # which rows share one inversion, and whether the editor uses the inversion at all
        row["inversion_group"] = v.inversion_group
        editor = self.editors.get(json.dumps(v.editor, sort_keys=True)) if hasattr(self, "editors") else None
        row["inversion_needed"] = bool(getattr(editor, "needs_inversion", True))
        for key, value in item.extras.items():
            if isinstance(value, (str, int, float, bool)) or value is None:
                row[f"data.{key}"] = value
        return row

    def process(self, item: Item) -> list[dict[str, Any]]:
        """Every missing row of ``item``: load it, invert it once per inversion group, edit it
        with every variant of the group, score the edits, and make the rows. A failure fails
        only what it touches: a bad image or mask the whole item, an inversion its group, an
        edit its variant (at that seed index), a metric its columns (noted in ``error``)."""
        todo = self._missing(item)
        if not todo:
            return []
        bad = self._prompt_problem(item)
        if bad:  # nothing runs; the input image is still saved beside the failed rows
            log.warning("item %s failed: %s", item.id, bad)
            try:
                loaded = self._load(item, encode=False)
            except Exception:
                return self._failed_rows(item, todo, bad)
            rows = self._failed_rows(item, todo, bad, loaded.input_rel)
            if rows:
                rows[0]["_input"] = loaded.input_image
            return rows
        try:
            loaded = self._load(item)
        except Exception as exc:
            log.warning("item %s failed: %s", item.id, _error_text(exc))
            return self._failed_rows(item, todo, _error_text(exc))
        edits: dict[tuple[str, int], Edits] = {}
        errors: dict[tuple[str, int], str] = {}
        for group in self.groups:
            members = [v for v in group.members if v in todo]
            if members:
                made, failed = self._invert_and_edit(item, loaded, group, members)
                edits.update(made)
                errors.update(failed)
        rows: list[dict[str, Any]] = []
        for v in todo:
            outs = [edits[(v.label, s)] for s in range(v.seeds) if (v.label, s) in edits]
            if len(outs) < v.seeds:  # a variant fails as a whole
                err = next(errors[(v.label, s)] for s in range(v.seeds) if (v.label, s) in errors)
                rows += self._failed_rows(item, [v], err, loaded.input_rel)
                continue
            values, metric_errors = self._score(item, loaded, v, outs)
            rows += self._variant_rows(item, loaded, v, outs, values, metric_errors)
        if rows:
            rows[0]["_input"] = loaded.input_image
        return rows

    def _prompt_problem(self, item: Item) -> str:
        """Why the text encoder cannot take the item's prompts ("" when it can)."""
        if self.prompt_problems is not None:
            return self.prompt_problems.get(item.id, "")
        from framework.prompts import item_problems

        why = item_problems(self.prompt_rules, item.source_prompt, item.target_prompts)
        return "InputError: " + "; ".join(why) if why else ""

    # -- the steps of one item
    def _load(self, item: Item, encode: bool = True) -> Loaded:
        """Read, size and encode the item's image (and its mask), lazily: a bad file fails this item.
        ``encode=False``: read and size only (x0 is then None)."""
        from framework.images import fit_image, load_image, parse_size, pil_to_tensor, tensor_to_pil

        backbone = self.backbone
        pil = load_image(item.image_path)
        fitted = fit_image(pil, parse_size(self.image_size), backbone.resolution, backbone.size_multiple)
        image = pil_to_tensor(fitted)
        mask = fit_mask(item.mask(), pil.size, fitted.size) if item.mask is not None else None
        if not item.target_prompts:
            raise ConfigError("the item has no target prompts")
        x0 = backbone.encode_image(image.to(backbone.device)) if encode else None
        idir = item_dir(item.id)
        # the sized input depends on the image and on the sizing (backbone, image_size): runs of
        # other sizes into one folder keep their own inputs
        digest = self.digests.get(item.id)
        sizing = json.dumps([digest.image if digest else item.image_path, self.backbone_cfg, self.image_size],
                            sort_keys=True, default=str)
        return Loaded(
            source=image.float().cpu(),
            x0=x0,
            mask=mask,
            input_image=tensor_to_pil(image)[0],
            idir=idir,
            input_rel=f"images/inputs/{idir}__{hashlib.sha256(sizing.encode()).hexdigest()[:12]}.png",
        )

    def _invert_and_edit(
        self,
        item: Item,
        loaded: Loaded,
        group: InversionGroup,
        members: Sequence[Variant],
    ) -> tuple[dict[tuple[str, int], Edits], dict[tuple[str, int], str]]:
        """Invert the item once for ``group`` and edit it with each of ``members`` -> the edits
        and the error messages, keyed by (variant label, seed index)."""
        from framework.edit import invert_latent

        edits: dict[tuple[str, int], Edits] = {}
        errors: dict[tuple[str, int], str] = {}
        s = group.seed_index
        inverter = self.inverters[json.dumps(group.inverter, sort_keys=True)]
        try:
            run = invert_latent(
                self.backbone, inverter, loaded.x0, item.source_prompt,
                num_steps=group.num_steps, skip=group.skip, seed=item_seed(self.run_seed, item.id, s),
            )
            inversion, inv_seconds, inv_nfe = run.inversion, run.seconds, run.nfe
        except Exception as exc:
            log.warning("inversion of %s failed: %s", item.id, _error_text(exc))
            return edits, {(v.label, s): _error_text(exc) for v in members}
        for v in members:
            try:
                images, recon, edit_seconds, edit_nfe = self._edit(item, v, inversion, s)
            except Exception as exc:
                log.warning("edit of %s by %s failed: %s", item.id, v.label, _error_text(exc))
                errors[(v.label, s)] = _error_text(exc)
                continue
            timing = {
                "inversion_seconds": inv_seconds,
                "inversion_nfe": inv_nfe,
                "edit_seconds": edit_seconds,
                "edit_nfe": edit_nfe,
                "num_targets": len(item.target_prompts),
            }
            edits[(v.label, s)] = Edits(images, recon, timing)
        return edits, errors

    def _edit(self, item: Item, v: Variant, inversion: Any, s: int) -> tuple[Tensor, Tensor | None, float, int]:
        """Edit one inversion with variant ``v`` toward every target -> decoded images
        (K, 3, H, W) on the CPU, the reconstruction (1, 3, H, W) when one is needed, and the
        edit's seconds and network evaluations."""
        from framework.edit import edit_inversion, seeds_for

        backbone = self.backbone
        editor = self.editors[json.dumps(v.editor, sort_keys=True)]
        seed = item_seed(self.run_seed, item.id, s)
        run = edit_inversion(
            backbone, editor, inversion, item.source_prompt, item.target_prompts, skip=v.skip, seed=seed
        )
        images = run.images.float().cpu()
        edit_seconds, edit_nfe = run.seconds, run.nfe
        recon = None
        if self.needs_reconstruction:  # the edit with the source prompt, from the same inversion
            _, rec_gen = seeds_for(seed)
            rec = editor.edit(
                backbone, inversion, item.source_prompt, [item.source_prompt], skip=v.skip, generator=rec_gen
            )
            recon = backbone.decode(rec).float().cpu()
        return images, recon, edit_seconds, edit_nfe

    def _score(
        self, item: Item, loaded: Loaded, v: Variant, outs: Sequence[Edits]
    ) -> tuple[dict[int, list[dict[str, Any]]], list[str]]:
        """Every metric on the edits of variant ``v`` (``outs[s]``: seed index s) -> the values
        per seed index and target, and one message per metric call that failed. A metric that
        ``needs_samples`` sees every seed's edits at once (when ``v.seeds > 1``) and its values
        go to every seed index."""
        from framework.metrics import MetricInput

        samples = torch.stack([o.images for o in outs], dim=1) if v.seeds > 1 else None  # (K, S, 3, H, W)
        values: dict[int, list[dict[str, Any]]] = {s: [{} for _ in item.target_prompts] for s in range(v.seeds)}
        metric_errors: list[str] = []
        for metric in self.metrics:
            wants_samples = metric.needs_samples and samples is not None
            for s in range(1 if wants_samples else v.seeds):
                batch = MetricInput(
                    source_image=loaded.source,
                    edited_images=outs[s].images,
                    source_prompt=item.source_prompt,
                    target_prompts=list(item.target_prompts),
                    mask=loaded.mask,
                    reconstruction=outs[s].recon,
                    timing=dict(outs[s].timing),
                    samples=samples if metric.needs_samples else None,
                    extras={"item_id": item.id, "seed": item_seed(self.run_seed, item.id, s), **item.extras},
                )
                try:
                    got = metric.compute(batch)
                    if len(got) != len(item.target_prompts):
                        raise RuntimeError(f"returned {len(got)} rows for {len(item.target_prompts)} edits")
                except Exception as exc:
                    name = getattr(metric, "registered_name", type(metric).__name__)
                    metric_errors.append(f"metric {name}: {_error_text(exc)}")
                    continue
                for target_s in range(v.seeds) if wants_samples else [s]:
                    for k, d in enumerate(got):
                        values[target_s][k].update(d)
        return values, metric_errors

    def _variant_rows(
        self,
        item: Item,
        loaded: Loaded,
        v: Variant,
        outs: Sequence[Edits],
        values: dict[int, list[dict[str, Any]]],
        metric_errors: list[str],
    ) -> list[dict[str, Any]]:
        """The ok rows of variant ``v`` (one per seed index and target not yet done), with
        their images (``_image``, ``_reconstruction``) and image paths."""
        from framework.images import tensor_to_pil
        from framework.naming import slug

        rows = []
        for s in range(v.seeds):
            pils = tensor_to_pil(outs[s].images)
            # unique per item, method setting and seed (and target): no run into this folder,
            # --force with another seed or setting included, writes over a file a row names
            suffix = f"__{v.setting}_seed{item_seed(self.run_seed, item.id, s)}"
            recon_rel, recon_pil = "", None
            if outs[s].recon is not None and self.save_reconstructions:
                recon_rel = f"images/{v.dirname}/{loaded.idir}/reconstruction{suffix}.png"
                recon_pil = tensor_to_pil(outs[s].recon)[0]
            for k, target in enumerate(item.target_prompts):
                if (item.id, v.label, v.setting, k, s) in self.done:
                    continue
                row = self._row(item, v, k, s)
                row["output_path"] = f"images/{v.dirname}/{loaded.idir}/{k:02d}_{slug(target)}{suffix}.png"
                row["input_path"] = loaded.input_rel
                row["error"] = "; ".join(metric_errors)
                row.update({c: _plain_number(x) for c, x in values[s][k].items()})
                row["_image"] = pils[k]
                if recon_rel:
                    row["reconstruction_path"] = recon_rel
                    row["_reconstruction"] = recon_pil
                rows.append(row)
        return rows

    def _failed_rows(
        self, item: Item, variants: Sequence[Variant], error: str, input_path: str = ""
    ) -> list[dict[str, Any]]:
        """Rows with ``status=failed`` for every seed index and target of ``variants``."""
        rows = []
        for v in variants:
            for s in range(v.seeds):
                for k in range(len(item.target_prompts)):
                    row = self._row(item, v, k, s)
                    row.update(status="failed", error=error, input_path=input_path)
                    rows.append(row)
        return rows

def _plain_number(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value
