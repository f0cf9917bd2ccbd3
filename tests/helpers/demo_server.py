"""``editfriendly demo`` in a subprocess for the tests that talk to it through ``gradio_client``.

:class:`Server` starts ``python -m framework.cli demo --backbone tiny`` on 127.0.0.1 and a free
port, in a subprocess whose working directory, HOME and TMPDIR are empty folders (so a test can
check that it writes nothing outside its ``--out`` folder), with an audit hook logging every
socket connection it opens. :func:`request` gives the ``/edit`` endpoint's arguments.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
FLOWER = ROOT / "data" / "example" / "flower.png"
RESOLUTION = 32  # the tiny backbone's image side
STEPS, SKIP = 10, 3

# The server's main: the CLI, with an audit hook logging every socket connection it opens.
SERVER_MAIN = """
import sys
log = open(sys.argv[1], "a")
def hook(event, args):
    if event == "socket.connect":
        log.write(repr(args[1]) + "\\n")
        log.flush()
sys.addaudithook(hook)
from framework.cli import main
sys.exit(main(sys.argv[2:]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """The demo in a subprocess; ``folders`` are the places it must leave untouched.

    ``args``: more ``editfriendly demo`` options; ``env``: more environment variables."""

    def __init__(self, root: Path, args: Sequence[str] = (), env: Mapping[str, str] | None = None) -> None:
        self.out = root / "out"
        self.folders = {name: root / name for name in ("cwd", "home", "tmp")}
        for folder in self.folders.values():
            folder.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = root / "server.log"
        environ = dict(os.environ)
        environ.update(
            PYTHONPATH=str(ROOT) + os.pathsep + environ.get("PYTHONPATH", ""),
            HOME=str(self.folders["home"]),
            TMPDIR=str(self.folders["tmp"]),
            OMP_NUM_THREADS="1",
            HF_HUB_OFFLINE="1",
            # the tiny model is built once per test session into this cache (tests/conftest.py)
            EDITFRIENDLY_CACHE=os.environ["EDITFRIENDLY_CACHE"],
        )
        environ.pop("GRADIO_TEMP_DIR", None)
        environ.update(env or {})
        self.connects = root / "connects.log"  # every network connection the server opens
        cmd = [
            sys.executable, "-c", SERVER_MAIN, str(self.connects), "demo", "--backbone", "tiny", "--device", "cpu",
            "--host", "127.0.0.1", "--port", str(self.port), "--out", str(self.out), *args,
        ]  # fmt: skip
        self._log = open(self.log, "w")  # closed in stop()
        self.proc = subprocess.Popen(
            cmd, cwd=self.folders["cwd"], env=environ, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the demo server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:  # local
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"the demo server did not answer in {timeout}s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


def client(server: Server, folder: Path):
    """A new browser-like session (its own inversion cache); downloads go to ``folder``."""
    import gradio_client

    folder.mkdir(parents=True, exist_ok=True)
    return gradio_client.Client(server.url, verbose=False, download_files=str(folder))


def request(**changes):
    """Arguments of the ``/edit`` endpoint: the flower, one target, 10 steps."""
    import gradio_client

    args = dict(
        image_payload=gradio_client.handle_file(str(FLOWER)),
        source_text="a pink flower with green leaves",
        targets_text="a yellow flower with green leaves",
        inv="ddpm_edit_friendly",
        inv_opts="eta: 1.0\nzero_last_noise: false\n",
        inv_guid=3.5,
        ed="text",
        ed_opts="",
        ed_guid=15.0,
        n_steps=STEPS,
        n_skip=SKIP,
        seed_value=0,
        n_outputs=1,
    )
    args.update(changes)
    return args


def unpack(result):
    """(gallery [(path, caption)], timings markdown, {file name: path})."""
    gallery, timings, files = result
    items = gallery["value"] if isinstance(gallery, dict) else gallery
    pairs = [
        (item["image"]["path"] if isinstance(item["image"], dict) else item["image"], item["caption"]) for item in items
    ]
    return pairs, timings, {Path(f).name: Path(f) for f in files}
