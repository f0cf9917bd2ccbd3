"""Which prompts a backbone's text encoder takes, checked before any network runs.

A backbone describes what its text side accepts with :class:`PromptRules`: its tokenizer and
token limit (a longer prompt is refused), and, for a model trained on a closed vocabulary (the
``digits`` model: 19 words), the words it has seen (any other word is named in a warning).
``editfriendly edit`` (:func:`framework.edit.invert_and_edit`) and ``editfriendly run`` (at
planning, before the trainer starts) check every prompt with them: the source and target
prompts, and the plugin options that are prompts (:class:`PromptOption`, e.g.
``plug_and_play.negative_prompt`` or ``zero_shot``'s sentence files).

Lightning-free and cheap: tokenizing a prompt is the whole cost.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: the words of a prompt, as a closed vocabulary is checked (case-insensitive, punctuation apart)
WORD_RE = re.compile(r"[^\W_]+")


def short_prompt(text: str, limit: int = 60) -> str:
    """A long prompt shortened for messages: its start, an ellipsis and its character count."""
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} characters)"


@dataclass
class PromptOption:
    """A plugin option whose value is one or more prompts (they are checked like the prompts)."""

    option: str  # e.g. "plug_and_play.negative_prompt"
    prompts: list[str]
    hint: str = ""  # how to fix a prompt of it that the backbone refuses


@dataclass
class PromptRules:
    """What a backbone's text encoder accepts.

    ``tokenizer``: a Hugging Face tokenizer (None: prompts are not tokenized, any is taken).
    ``max_tokens``: tokens per prompt, start and end included (None: no limit).
    ``known_words``: for a closed vocabulary, every word the model was trained on (None: an
    open vocabulary such as CLIP's, whose unseen words cannot be told).
    ``truncate``: a too-long prompt is cut (with a warning when encoded) instead of refused.
    """

    tokenizer: Any = None
    max_tokens: int | None = None
    known_words: frozenset[str] | None = None
    truncate: bool = False
    _counts: dict[str, int] = field(default_factory=dict, repr=False)

    def token_count(self, prompt: str) -> int:
        """Tokens of ``prompt``, start and end included."""
        if prompt not in self._counts:
            ids = self.tokenizer(prompt, truncation=False, verbose=False).input_ids
            self._counts[prompt] = len(ids)
        return self._counts[prompt]

    def problem(self, prompt: str) -> str | None:
        """Why the text encoder cannot take ``prompt``, or None when it can."""
        if not isinstance(prompt, str):
            return f"prompt {prompt!r} is not a string"
        if self.tokenizer is None or self.max_tokens is None or self.truncate:
            return None
        n = self.token_count(prompt)
        if n <= self.max_tokens:
            return None
        return (
            f"prompt {short_prompt(prompt)!r} has {n} tokens but this model's text encoder takes "
            f"{self.max_tokens} (start and end included)"
        )

    def problems(self, prompts: Iterable[str]) -> list[str]:
        """One message per distinct prompt the text encoder cannot take (empty: all fine)."""
        out = []
        for prompt in dict.fromkeys(prompts):
            why = self.problem(prompt)
            if why:
                out.append(why)
        return out

    def unknown_words(self, prompts: Iterable[str]) -> list[str]:
        """Words of ``prompts`` outside a closed vocabulary, in order of appearance (always
        empty for an open vocabulary)."""
        if self.known_words is None:
            return []
        seen: dict[str, None] = {}
        for prompt in prompts:
            for word in WORD_RE.findall(str(prompt).lower()):
                if word not in self.known_words:
                    seen.setdefault(word)
        return list(seen)


def plugin_prompt_options(*plugins: Any) -> list[PromptOption]:
    """The options of ``plugins`` (inverters, editors) that are prompts."""
    out: list[PromptOption] = []
    for plugin in plugins:
        get = getattr(plugin, "prompt_options", None)
        if callable(get):
            out.extend(get())
    return out


def option_problems(rules: PromptRules, options: Sequence[PromptOption]) -> list[str]:
    """One message per prompt of an option that the text encoder cannot take."""
    out = []
    for opt in options:
        for why in rules.problems(opt.prompts):
            out.append(f"{opt.option}: {why}" + (f"; {opt.hint}" if opt.hint else "; shorten it"))
    return out


def item_problems(rules: PromptRules, source_prompt: str, target_prompts: Sequence[str]) -> list[str]:
    """One message per source or target prompt that the text encoder cannot take."""
    out = []
    for why in rules.problems([source_prompt]):
        out.append(f"source {why}; shorten it")
    for why in rules.problems(t for t in target_prompts if t != source_prompt):
        out.append(f"target {why}; shorten it")
    return out


def warn_unknown_words(rules: PromptRules, prompts: Iterable[str], where: str = "") -> list[str]:
    """Log one warning naming the words the model has never seen (closed vocabularies only);
    returns them."""
    words = rules.unknown_words(prompts)
    if words:
        known = ", ".join(sorted(rules.known_words or ()))
        log.warning(
            "%sthe model has never seen the word%s %s (it was trained on: %s); the edit will not follow %s",
            f"{where}: " if where else "",
            "" if len(words) == 1 else "s",
            ", ".join(repr(w) for w in words),
            known,
            "it" if len(words) == 1 else "them",
        )
    return words


def check_edit_prompts(
    rules: PromptRules | None,
    source_prompt: str,
    target_prompts: Sequence[str],
    plugins: Sequence[Any] = (),
    warn: bool = True,
) -> None:
    """Refuse an edit whose prompts the text encoder cannot take, before anything runs: a plugin
    option (:class:`~framework.errors.ConfigError`) or the source or a target prompt
    (:class:`~framework.errors.InputError`); with ``warn``, name the words a closed vocabulary
    has never seen. ``rules`` None (not known yet) checks nothing."""
    from framework.errors import ConfigError, InputError

    if rules is None:
        return
    options = plugin_prompt_options(*plugins)
    problems = option_problems(rules, options)
    if problems:
        raise ConfigError("; ".join(problems))
    problems = item_problems(rules, source_prompt, target_prompts)
    if problems:
        raise InputError("; ".join(problems))
    if warn:
        warn_unknown_words(rules, [source_prompt, *target_prompts, *(p for o in options for p in o.prompts)])


def check_run_prompts(
    rules: PromptRules, methods: Sequence[tuple[str, Sequence[Any]]], items: Sequence[Any]
) -> dict[str, str]:
    """The prompt check of a run, at planning: ``methods`` are (name, its inverter and editor)
    pairs, ``items`` have ``id``, ``source_prompt`` and ``target_prompts``.

    A method option the text encoder cannot take fails every item, so it is a config error
    (:class:`~framework.errors.ConfigError`); a bad item is returned as ``{item id: error}`` for
    the runner to record as failed. Words a closed vocabulary has never seen are named in one
    warning."""
    from framework.errors import ConfigError

    problems: list[str] = []
    option_prompts: list[str] = []
    seen: set[str] = set()
    for name, plugins in methods:
        options = plugin_prompt_options(*plugins)
        option_prompts += [p for o in options for p in o.prompts]
        for why in option_problems(rules, options):
            if why not in seen:
                seen.add(why)
                problems.append(f"method {name!r}: {why}")
    if problems:
        raise ConfigError("; ".join(problems))
    bad: dict[str, str] = {}
    prompts: list[str] = []
    for item in items:
        prompts += [item.source_prompt, *item.target_prompts]
        why = item_problems(rules, item.source_prompt, item.target_prompts)
        if why:
            bad[item.id] = "InputError: " + "; ".join(why)
    warn_unknown_words(rules, [*prompts, *option_prompts])
    return bad
