"""``editfriendly demo`` treats what a page sends as untrusted: a running server (tiny backbone),
driven through ``gradio_client``.

The server runs with a canary environment variable (a random secret) and the tests own canary
files (a text file, an RGBA image and a YAML file, each holding another random secret). Whatever a
request sends (options naming the files, preset names pointing at them, ``${oc.env:...}`` in
options and prompts, numbers far out of range), no response, error message or download carries a
secret, and a file's existence makes no difference to the answer. Options and prompts are literal
text, the limits hold on the server with the CLI's texts, a request runs under ``--time-limit``,
and a failed request leaves no folder behind.
"""

from __future__ import annotations

import os
import secrets
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]'")
gradio_client = pytest.importorskip("gradio_client", reason="the demo tests need gradio_client (installed with Gradio)")

from tests.helpers.demo_server import ROOT, Server, client, request, unpack  # noqa: E402

TIME_LIMIT = 15  # seconds per request on this server; a 10-step request takes about one
ENV_SECRET = f"canary-env-{secrets.token_hex(12)}"
FILE_SECRET = f"canary-file-{secrets.token_hex(12)}"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def canaries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Files holding FILE_SECRET: text, RGBA image (a valid strokes file), YAML; and a missing one."""
    folder = tmp_path_factory.mktemp("canary")
    (folder / "secret.txt").write_text(f"{FILE_SECRET}\nsecond line\n")
    strokes = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    strokes.paste((255, 0, 0, 255), (8, 8, 24, 24))
    strokes.save(folder / "secret.png", pnginfo=_png_text(FILE_SECRET))
    (folder / "secret.yaml").write_text(f"name: ddpm_edit_friendly\nnote: {FILE_SECRET}\n")
    return {
        "text": folder / "secret.txt",
        "image": folder / "secret.png",
        "yaml": folder / "secret.yaml",
        "missing": folder / "missing.png",
    }


def _png_text(text: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("comment", text)
    return info


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny):  # tiny: the model is in the cache first
    srv = Server(
        tmp_path_factory.mktemp("demo-input"),
        args=["--time-limit", str(TIME_LIMIT)],
        env={"CANARY": ENV_SECRET},
    )
    try:
        srv.wait()
        yield srv
    finally:
        srv.stop()


class Answer:
    """What one request gave back: an error message, or every byte of its results."""

    def __init__(self, error: str | None = None, result=None) -> None:
        self.error = error
        self.pairs, self.timings, self.files = unpack(result) if result is not None else ([], "", {})
        self.config = yaml.safe_load(self.files["config.yaml"].read_text()) if "config.yaml" in self.files else None

    def text(self) -> str:
        """Everything the user sees or downloads, as text (zip entries included)."""
        parts = [self.error or "", self.timings, *(caption for _, caption in self.pairs)]
        for path in self.files.values():
            parts.append(path.read_bytes().decode("latin-1"))
            if path.suffix == ".zip":
                with zipfile.ZipFile(path) as zf:
                    parts.extend(zf.read(n).decode("latin-1") for n in zf.namelist())
        for path, _ in self.pairs:
            parts.append(Path(path).read_bytes().decode("latin-1"))
        return "\n".join(parts)


def ask(c, **changes) -> Answer:
    try:
        return Answer(result=c.predict(**request(**changes), api_name="/edit"))
    except gradio_client.exceptions.AppError as exc:
        return Answer(error=str(exc).strip())


def assert_no_secret(answer: Answer) -> None:
    text = answer.text()
    assert ENV_SECRET not in text and FILE_SECRET not in text, answer.error or text[:500]


def cli_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The ``error:`` line the CLI prints for ``argv`` (without the prefix)."""
    from framework.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ")
    return err[len("error: ") :]


def edit_pixels(answer: Answer) -> np.ndarray:
    found = [p for p, caption in answer.pairs if not caption.startswith(("input", "reconstruction"))]
    assert len(found) == 1, answer.pairs
    with Image.open(found[0]) as img:
        return np.asarray(img.convert("RGB")).astype(int)


# ------------------------------------------------------------------------------ 1: files


def test_options_naming_files_are_refused_whether_or_not_the_file_exists(
    server: Server, canaries: dict[str, Path], tmp_path: Path
) -> None:
    c = client(server, tmp_path)
    for editor, key in (
        ("zero_shot", "source_sentences"),
        ("zero_shot", "target_sentences"),
        ("color_strokes", "strokes"),
        ("color_strokes", "mask"),
        ("color_strokes", "colors"),
        ("sdedit", "strokes"),
    ):
        answers = {}
        for kind in ("text", "image", "missing"):
            path = str(canaries[kind])
            answer = ask(c, ed=editor, ed_opts=f"{key}: {path}", n_skip=0)
            assert_no_secret(answer)
            assert answer.error is not None, (editor, key, kind)
            answers[kind] = answer.error.replace(path, "PATH")
        assert len(set(answers.values())) == 1, answers  # existence and content make no difference
        assert f"option '{key}' names a file and is not accepted from the page" in answers["text"]
    # a list of files too
    answer = ask(c, ed="zero_shot", ed_opts=f"target_sentences: [{canaries['text']}]")
    assert answer.error is not None and "not accepted from the page" in answer.error
    assert_no_secret(answer)

    # a preset name is a menu choice, not a path: a YAML file outside configs/ is not read
    answers = {}
    for kind in ("yaml", "missing"):
        rel = os.path.relpath(canaries[kind].with_suffix(""), ROOT / "configs" / "inverter")
        answer = ask(c, inv=rel)
        assert_no_secret(answer)
        assert answer.error is not None
        answers[kind] = answer.error.replace(rel, "NAME")
    assert len(set(answers.values())) == 1, answers
    assert "unknown inverter preset" in answers["yaml"]

    # options that are not the plugin's, or that pick another plugin, are refused too
    preset = os.path.relpath(canaries["yaml"].with_suffix(""), ROOT / "configs" / "inverter")
    for text in ("name: ddim", f"preset: {preset}"):
        answer = ask(c, inv_opts=text)
        assert answer.error is not None and "choose the inverter in its menu" in answer.error, answer.error
        assert_no_secret(answer)


# ------------------------------------------------------------------------------ 2: literal text


def test_prompts_and_options_are_literal_text_in_what_runs_is_recorded_and_shown(
    server: Server, tmp_path: Path
) -> None:
    c = client(server, tmp_path)
    source = "a pink ${oc.env:CANARY} flower"
    targets = ["a ${oc.env:CANARY,x} flower", "a ${oc.env:NOPE,red} flower ???"]
    answer = ask(c, source_text=source, targets_text="\n".join(targets))
    assert answer.error is None, answer.error
    assert_no_secret(answer)
    assert answer.config["source_prompt"] == source
    assert answer.config["target_prompts"] == targets
    assert str(server.out) not in answer.timings  # the page names the run folder, not the server's path
    captions = [caption for _, caption in answer.pairs]
    assert any(caption.startswith(targets[1]) for caption in captions), captions
    with zipfile.ZipFile(answer.files["outputs.zip"]) as zf:
        assert yaml.safe_load(zf.read("config.yaml"))["target_prompts"] == targets

    # an uploaded file's name is text from the page too
    named = tmp_path / "${oc.env:CANARY}.png"
    named.write_bytes((ROOT / "data" / "example" / "flower.png").read_bytes())
    answer = ask(c, image_payload=gradio_client.handle_file(str(named)))
    assert answer.error is None, answer.error
    # Gradio's upload keeps letters, digits and a few signs of the name: the rest is not resolved
    assert answer.config["image"] in ("${oc.env:CANARY}.png", "oc.envCANARY.png"), answer.config["image"]
    assert_no_secret(answer)

    # an option's text: recorded as typed, and it is what ran (not the interpolation's value)
    literal = ask(c, ed="plug_and_play", ed_opts="negative_prompt: ${oc.env:NOPE,red}")
    assert literal.error is None, literal.error
    assert literal.config["editor"]["negative_prompt"] == "${oc.env:NOPE,red}"
    resolved = ask(c, ed="plug_and_play", ed_opts="negative_prompt: red")
    assert resolved.config["editor"]["negative_prompt"] == "red"
    assert np.abs(edit_pixels(literal) - edit_pixels(resolved)).max() > 0
    secret = ask(c, ed="plug_and_play", ed_opts="negative_prompt: ${oc.env:CANARY}")
    assert secret.config["editor"]["negative_prompt"] == "${oc.env:CANARY}"
    assert_no_secret(secret)

    # errors quote the text as typed, never what it would interpolate to
    for inv_opts, ed, ed_opts in (
        ("eta: ${oc.env:CANARY}", "text", ""),
        ("timestep_batch: ${oc.env:CANARY}", "text", ""),
        ("timestep_batch: ${oc.env:PATH}", "text", ""),
        ("eta: 1.0", "zero_shot", "negative_prompt: ${oc.env:CANARY}"),
        ("eta: 1.0", "zero_shot", "source_latents: ${oc.env:CANARY,x}"),
        ("eta: ???", "text", ""),
    ):
        answer = ask(c, inv_opts=inv_opts, ed=ed, ed_opts=ed_opts)
        assert answer.error is not None, (inv_opts, ed_opts)
        assert_no_secret(answer)
        typed = (inv_opts if ed == "text" else ed_opts).split(": ", 1)[1]
        assert typed in answer.error, answer.error
        assert "/usr/bin" not in answer.error, answer.error  # the server's PATH


# ------------------------------------------------------------------------------ 3: limits


def test_limits_hold_on_the_server_with_the_clis_texts(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    c = client(server, tmp_path)
    base = ["edit", "--image", str(ROOT / "data" / "example" / "flower.png"), "--source", "a", "--target", "b"]
    # the CLI refuses these too: the same text
    for changes, flags in (
        ({"seed_value": 2**70}, ["--seed", str(2**70)]),
        ({"seed_value": -(2**64)}, ["--seed", str(-(2**64))]),
        ({"n_steps": 0, "n_skip": 0}, ["--steps", "0", "--skip", "0"]),
        ({"n_skip": -1}, ["--steps", "10", "--skip", "-1"]),
        ({"n_skip": 10}, ["--steps", "10", "--skip", "10"]),
    ):
        answer = ask(c, **changes)
        assert answer.error == cli_error(base + flags, capsys), changes
        assert_no_secret(answer)
    # the page's own limits
    big = tmp_path / "big.png"
    Image.new("RGB", (5000, 4000)).save(big)
    for changes, expected in (
        ({"n_steps": 400}, "num_steps (--steps) must be at most 200 in the demo, got 400"),
        ({"n_steps": 10**30}, "must be at most 200 in the demo"),
        ({"n_steps": 12.5}, "steps must be a whole number"),
        ({"seed_value": 1e300}, "does not fit in 64 bits"),
        ({"seed_value": "x"}, "seed must be a whole number"),
        ({"seed_value": 2**64 - 1, "n_outputs": 2}, "the last seed (seed + outputs - 1)"),
        ({"inv_guid": 1e9}, "the source guidance (inversion) must be a number in 1..20"),
        ({"ed_guid": -3}, "the target guidance (edit) must be a number in 1..30"),
        ({"ed_guid": "lots"}, "the target guidance (edit) must be a number in 1..30"),
        ({"ed_opts": "guidance_scale: 1000.0"}, "option 'guidance_scale' must be a number in 1..30"),
        ({"inv": "null_text", "inv_opts": "num_inner_steps: 100000"}, "'num_inner_steps' must be a number in 0..50"),
        ({"ed_opts": "guidance_scale: .inf"}, "finite numbers"),
        ({"n_outputs": 5}, "the number of outputs must be in 1..4, got 5"),
        ({"n_outputs": 10**9}, "the number of outputs must be in 1..4"),
        ({"targets_text": "\n".join(f"target {k}" for k in range(9))}, "give at most 8 target prompts, got 9"),
        ({"source_text": "a" * 5000}, "the source prompt is 5000 characters long; the demo accepts at most 1000"),
        ({"ed_opts": "x: " + "y" * 5000}, "characters long; the demo accepts at most 4000"),
        ({"image_payload": gradio_client.handle_file(str(big))}, "image big.png is 5000x4000 pixels"),
    ):  # fmt: skip
        answer = ask(c, **changes)
        assert_no_secret(answer)
        assert answer.error is not None and expected in answer.error, (changes.keys(), answer.error)
    # a YAML alias bomb in an options box is refused before anything expands it
    bomb = "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
    bomb += "cross_replace_steps: [*b, *b, *b, *b, *b, *b, *b, *b]\n"
    answer = ask(c, ed="prompt_to_prompt", ed_opts=bomb)
    assert answer.error is not None and "too large" in answer.error, answer.error

    # a request that would run for minutes is stopped at the time limit, and the server serves on
    start = time.monotonic()
    answer = ask(
        c, n_steps=200, n_skip=0, n_outputs=4, targets_text="\n".join(f"a flower number {k}" for k in range(8))
    )
    seconds = time.monotonic() - start
    assert answer.error is not None and f"stopped after the demo's time limit of {TIME_LIMIT} s" in answer.error
    assert seconds < TIME_LIMIT + 30, seconds
    assert ask(c).error is None


# ------------------------------------------------------------------------------ 4: cleanup


def test_a_failed_request_leaves_nothing_behind(server: Server, tmp_path: Path) -> None:
    c = client(server, tmp_path)
    runs = server.out / "runs"

    def listing() -> set[str]:
        return {p.name for p in runs.iterdir()} if runs.exists() else set()

    before = listing()
    no_alpha, strokes = tmp_path / "no_alpha.png", tmp_path / "strokes.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(no_alpha)
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (8, 8, 24, 24))
    rgba.save(strokes)
    # each of these fails after the inversion, in the edit; the last one at the time limit
    for changes in (
        {"ed": "color_strokes", "n_skip": 0, "strokes_payload": gradio_client.handle_file(str(no_alpha))},
        {"ed": "color_strokes", "n_skip": 0, "n_outputs": 3, "ed_opts": "start_step: 50",
         "strokes_payload": gradio_client.handle_file(str(strokes))},
        {"ed": "shift", "ed_opts": "border: sideways"},
        {"n_steps": 200, "n_skip": 0, "n_outputs": 4, "targets_text": "\n".join(f"t{k}" for k in range(8))},
    ):  # fmt: skip
        answer = ask(c, **changes)
        assert answer.error is not None, changes
        assert str(server.out) not in answer.error and "gradio" not in answer.error, answer.error
    assert listing() == before
    # a request that succeeds leaves one complete folder
    answer = ask(c, n_outputs=2)
    assert answer.error is None, answer.error
    (new,) = listing() - before
    assert not new.startswith("."), new
    names = {p.name for p in (runs / new).iterdir()}
    assert {"config.yaml", "results.json", "outputs.zip", "input.png"} <= names, names
    assert len([n for n in names if n.endswith(".png")]) == 1 + 2 * 2  # input, 2 x (reconstruction, edit)


def test_strokes_come_as_an_upload_and_are_recorded_by_their_file_name(server: Server, tmp_path: Path) -> None:
    c = client(server, tmp_path)
    strokes = tmp_path / "my strokes.png"
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 16, 32))
    rgba.save(strokes)
    answer = ask(c, ed="color_strokes", n_skip=0, strokes_payload=gradio_client.handle_file(str(strokes)))
    assert answer.error is None, answer.error
    assert answer.config["editor"]["name"] == "color_strokes"
    assert answer.config["editor"]["strokes"] == "my strokes.png"  # the user's name, not the server's copy
    # without strokes the page says what to do, before any work
    answer = ask(c, ed="color_strokes", n_skip=0)
    assert answer.error is not None and "needs a strokes image: upload a transparent PNG" in answer.error
    # strokes for an editor that takes none
    answer = ask(c, ed="text", strokes_payload=gradio_client.handle_file(str(strokes)))
    assert answer.error is not None and "the strokes image is for the color_strokes and sdedit editors" in answer.error
