"""``editfriendly demo``: the page in a real headless Chromium, its API through ``gradio_client``,
errors, the per-session inversion cache, two concurrent users, and where it writes.

One server (``python -m framework.cli demo --backbone tiny``, :mod:`tests.helpers.demo_server`) is
started for the module on 127.0.0.1 and a free port, in a subprocess whose working directory, HOME
and TMPDIR are empty folders, so that the test can check that it writes nothing outside its
``--out`` folder.
Requests use 10 steps on the tiny model (about a second each on 2 CPU cores).
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

pytest.importorskip("gradio", reason="the demo needs Gradio: pip install -e '.[demo]'")
gradio_client = pytest.importorskip("gradio_client", reason="the demo tests need gradio_client (installed with Gradio)")

from tests.helpers.browser import chromium  # noqa: E402
from tests.helpers.demo_server import FLOWER, RESOLUTION, SKIP, STEPS, Server, client, request, unpack  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = Server(tmp_path_factory.mktemp("demo"))
    try:
        srv.wait()
        yield srv
    finally:
        srv.stop()


def pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def edit_of(pairs, target: str) -> np.ndarray:
    found = [p for p, caption in pairs if caption.startswith(target)]
    assert len(found) == 1, pairs
    return pixels(found[0])


def cli_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """The ``error:`` line the CLI prints for ``argv`` (without the prefix)."""
    from framework.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ")
    return err[len("error: "):]


# ------------------------------------------------------------------------------ the page


@pytest.mark.slow
def test_page_in_chromium_uploads_edits_and_reuses_the_inversion(server: Server, tmp_path: Path) -> None:
    """A real Chromium uploads the example, types prompts, clicks Edit and sees 32x32 results."""
    requests: list[str] = []
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.on("request", lambda r: requests.append(r.url))
        page.goto(server.url, wait_until="load")
        page.wait_for_selector("#ef-run", timeout=60_000)

        page.locator("#ef-image input[type=file]").set_input_files(str(FLOWER))
        page.wait_for_selector("#ef-image img", timeout=30_000)
        page.locator("#ef-source textarea").fill("a pink flower with green leaves")
        page.locator("#ef-targets textarea").fill("a yellow flower with green leaves\na pink flower made of paper")
        for elem, value in (("#ef-steps", STEPS), ("#ef-skip", SKIP)):
            box = page.locator(f"{elem} input[type=number]")
            box.fill(str(value))
            box.press("Enter")
        page.locator("#ef-run").click()
        page.wait_for_function(
            "document.querySelectorAll('#ef-gallery img').length >= 4", timeout=120_000
        )
        page.wait_for_function(  # every image decoded
            "[...document.querySelectorAll('#ef-gallery img')].every(i => i.complete && i.naturalWidth > 0)",
            timeout=30_000,
        )
        images = page.evaluate(
            "[...document.querySelectorAll('#ef-gallery img')].map(i => [i.naturalWidth, i.naturalHeight, i.alt])"
        )
        timings = page.locator("#ef-timings").inner_text()
        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)

        # the same settings again: the inversion comes from the session's cache
        page.locator("#ef-run").click()
        page.wait_for_function(
            "document.querySelector('#ef-timings').innerText.includes('Inversion reused')", timeout=120_000
        )
        timings_again = page.locator("#ef-timings").inner_text()

        # bad input: the CLI's message in the page, and the page keeps working
        box = page.locator("#ef-skip input[type=number]")
        box.fill(str(STEPS))
        box.press("Enter")
        page.locator("#ef-run").click()
        message = page.get_by_text("must be smaller than the number of steps")
        message.first.wait_for(timeout=60_000)
        page.wait_for_timeout(1000)  # the toast slides in
        page.screenshot(path=str(tmp_path / "demo-error.png"))  # the toast is in the viewport

    # input, reconstruction, two edits; all at the model's size
    assert len(images) == 4, images
    assert all((w, h) == (RESOLUTION, RESOLUTION) for w, h, _ in images), images
    assert any("a pink flower made of paper" in alt for _, _, alt in images), images
    assert "network evaluations" in timings and "Inversion reused" not in timings
    for phase in ("inversion", "edit", "reconstruction"):
        assert re.search(rf"^{phase}\t0\t[0-9.]+\t[1-9][0-9]*\t", timings, re.M), timings  # a table row
    assert "reused from this session's cache" in timings_again
    assert (tmp_path / "demo.png").stat().st_size > 10_000
    # the front end came from the server (the wheel), nothing from elsewhere
    outside = [u for u in requests if not u.startswith(server.url) and not u.startswith(("data:", "blob:"))]
    assert not outside, outside
    import gradio

    frontend = {f.name for f in (Path(gradio.__file__).parent / "templates" / "frontend").rglob("*.js")}
    scripts = [u.split("?")[0].rsplit("/", 1)[-1] for u in requests if u.split("?")[0].endswith(".js")]
    assert scripts and all(name in frontend for name in scripts), scripts  # the wheel's own files


# ------------------------------------------------------------------------------ the API


@pytest.mark.slow
def test_client_gets_images_errors_read_like_the_cli_and_the_server_keeps_serving(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture, tiny
) -> None:
    import torch

    from framework.images import pil_to_tensor, tensor_to_pil

    c = client(server, tmp_path / "a")
    pairs, timings, files = unpack(c.predict(**request(n_outputs=2), api_name="/edit"))
    # 2 seeds x (input, reconstruction, 1 edit), all at the model's size
    assert len(pairs) == 6
    assert all(pixels(p).shape == (RESOLUTION, RESOLUTION, 3) for p, _ in pairs)
    # the page's reconstruction of an edit-friendly inversion is exact: decode(encode(input)) up
    # to the 8-bit rounding of the PNGs (the tiny VAE itself is lossy)
    with torch.no_grad():
        x = pil_to_tensor(Image.open(pairs[0][0]).convert("RGB"))
        expected = np.asarray(tensor_to_pil(tiny.decode(tiny.encode_image(x)))[0]).astype(int)
    for p, caption in (pairs[1], pairs[4]):
        assert caption.startswith("reconstruction (source prompt, guidance 3.5)")
        assert np.abs(pixels(p).astype(int) - expected).max() <= 1
    assert "Inversion reused" not in timings
    seeds = {0: edit_of(pairs[:3], "a yellow flower"), 1: edit_of(pairs[3:], "a yellow flower")}
    assert np.abs(seeds[0].astype(int) - seeds[1].astype(int)).max() > 0  # diverse outputs differ

    cfg = yaml.safe_load(files["config.yaml"].read_text())
    assert cfg["backbone"]["name"] == "tiny" and cfg["inverter"]["name"] == "ddpm_edit_friendly"
    assert (cfg["num_steps"], cfg["skip"], cfg["seeds"]) == (STEPS, SKIP, [0, 1])
    assert cfg["target_prompts"] == ["a yellow flower with green leaves"]
    assert cfg["editor"] == {"name": "text", "guidance_scale": 15.0}
    with zipfile.ZipFile(files["outputs.zip"]) as zf:
        names = set(zf.namelist())
        assert {"config.yaml", "input.png", "results.json", "flower_seed1_reconstruction.png"} <= names
        results = json.loads(zf.read("results.json"))
        zipped = np.asarray(
            Image.open(io.BytesIO(zf.read("flower_seed0_00_a-yellow-flower-with-green-leaves.png"))).convert("RGB")
        )
    assert np.array_equal(zipped, seeds[0])
    assert [t["phase"] for t in results["timings"]] == ["inversion", "edit", "reconstruction"] * 2
    assert all(t["nfe"] > 0 and t["seconds"] > 0 for t in results["timings"])

    # a text file: the CLI's InputError text, naming the file the user gave
    bad = tmp_path / "notes.txt"
    bad.write_text("not an image\n")
    with pytest.raises(gradio_client.exceptions.AppError) as info:
        c.predict(**request(image_payload=gradio_client.handle_file(str(bad))), api_name="/edit")
    expected = cli_error(["edit", "--image", str(bad), "--source", "a", "--target", "b"], capsys)
    assert str(info.value).strip() == expected.replace(str(bad), "notes.txt")

    # a bad option: the CLI's ConfigError text for the same value
    with pytest.raises(gradio_client.exceptions.AppError) as info:
        c.predict(**request(inv_opts="eta: lots"), api_name="/edit")
    expected = cli_error(
        [
            "edit",
            "--image",
            str(FLOWER),
            "--source",
            "a",
            "--target",
            "b",
            "inverter=ddpm_edit_friendly",
            "inverter.eta=lots",
        ],
        capsys,
    )
    assert str(info.value).strip() == expected
    # skip >= steps: the CLI's check
    with pytest.raises(gradio_client.exceptions.AppError, match="skip"):
        c.predict(**request(n_skip=STEPS), api_name="/edit")

    # the server keeps serving: the next good request works, reuses seed 0's inversion from this
    # session, and gives the same edit as the first request
    pairs, timings, files = unpack(c.predict(**request(), api_name="/edit"))
    assert "Inversion reused" in timings
    assert np.array_equal(edit_of(pairs, "a yellow flower"), seeds[0])
    # only the editor ran: the inversion and its reconstruction came from the cache
    timings = json.loads(zipfile.ZipFile(files["outputs.zip"]).read("results.json"))["timings"]
    assert [(t["phase"], t["reused"], t["nfe"] > 0) for t in timings] == [
        ("inversion", True, False), ("edit", False, True), ("reconstruction", True, False)
    ]
    # a different source prompt is another inversion
    _, timings, _ = unpack(c.predict(**request(source_text="a flower"), api_name="/edit"))
    assert "Inversion reused" not in timings


@pytest.mark.slow
def test_progress_is_reported_for_inversion_and_editing(server: Server, tmp_path: Path) -> None:
    c = client(server, tmp_path)
    job = c.submit(**request(n_steps=50, n_skip=0, seed_value=5), api_name="/edit")
    seen: set[str] = set()
    while not job.done():
        status = job.status()
        for p in status.progress_data or []:
            if p.desc and p.index is not None and p.length:
                seen.add(p.desc)
        time.sleep(0.02)
    job.result()
    assert {"invert", "edit"} <= seen, seen


@pytest.mark.slow
def test_two_concurrent_clients_get_their_own_results(server: Server, tmp_path: Path) -> None:
    settings = {
        "a": request(targets_text="a yellow flower with green leaves", seed_value=11),
        "b": request(targets_text="a blue flower made of glass", seed_value=12, ed_guid=7.5),
    }
    clients = {k: client(server, tmp_path / k) for k in settings}
    results: dict[str, object] = {}
    errors: list[BaseException] = []

    def go(k: str) -> None:
        try:
            results[k] = unpack(clients[k].predict(**settings[k], api_name="/edit"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(k,)) for k in settings]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for k, target in (("a", "a yellow flower"), ("b", "a blue flower")):
        pairs, timings, files = results[k]
        cfg = yaml.safe_load(files["config.yaml"].read_text())
        assert cfg["target_prompts"] == [settings[k]["targets_text"]]
        assert cfg["seeds"] == [settings[k]["seed_value"]]
        assert cfg["editor"]["guidance_scale"] == settings[k]["ed_guid"]
        assert "Inversion reused" not in timings
        edit_of(pairs, target)
    a, b = edit_of(results["a"][0], "a yellow"), edit_of(results["b"][0], "a blue")
    assert np.abs(a.astype(int) - b.astype(int)).max() > 0

    # each result is what its own settings give when run alone (nothing mixed in): client a again
    # (its own session: the inversion is reused) and a fresh session with b's settings
    again, timings, _ = unpack(clients["a"].predict(**settings["a"], api_name="/edit"))
    assert "Inversion reused" in timings
    assert np.array_equal(edit_of(again, "a yellow"), a)
    alone, timings, _ = unpack(client(server, tmp_path / "c").predict(**settings["b"], api_name="/edit"))
    assert "Inversion reused" not in timings  # another session: its own cache
    assert np.array_equal(edit_of(alone, "a blue"), b)


@pytest.mark.slow
def test_writes_only_under_the_output_folder(server: Server) -> None:
    """Runs last in this module (by file order): after every request above."""
    runs = list((server.out / "runs").iterdir()) if (server.out / "runs").exists() else []
    for name, folder in server.folders.items():
        left = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
        assert not left, f"the demo wrote into its {name} folder: {left}"
    if runs:  # uploads and served files live under out/gradio
        assert (server.out / "gradio").is_dir()


@pytest.mark.slow
def test_fetches_nothing_from_the_network(server: Server) -> None:
    """The server connected only to itself (Gradio's start-up check), after every request above."""
    import ast

    addresses = [ast.literal_eval(line) for line in server.connects.read_text().splitlines()]
    remote = [a for a in addresses if not (isinstance(a, tuple) and a[0] in ("127.0.0.1", "::1", "localhost"))]
    assert not remote, remote
