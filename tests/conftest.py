"""Shared fixtures: a real sandbox server on 127.0.0.1 and small real batches on disk."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# The manifest cache (gsvr_batch.manifest_cache) of this test process and the runs it starts: not
# the user's ~/.cache, and empty at the start of every session (tests that test the cache itself
# point it at their own folder).
_CACHE = tempfile.mkdtemp(prefix="gsvr-test-cache-")
os.environ["GSVR_BATCH_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, True)
SAMPLE = REPO / "jobs" / "videos" / "lecture-01-introduction.mp4"
GSVR = [sys.executable, "-m", "gsvr_batch"]
TEST_KEY = "test-key-not-real-0123456789"


@pytest.fixture
def sandbox():
    """A sandbox server in this process; tests point subprocesses at it via env."""
    from gsvr_batch.sandbox import SandboxConfig, SandboxServer

    servers = []

    def start(**cfg):
        cfg.setdefault("processing_delay", 0.05)
        s = SandboxServer(SandboxConfig(**cfg))
        s.start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def make_batch(root: Path, n: int, *, sandbox: bool = False, extra_settings: str = "", names=None,
               sample: Path = SAMPLE, distinct: bool = False) -> Path:
    """n real (copied) videos under root/videos and a YAML manifest root/manifest.yaml.

    The copies have the same bytes, so they share one upload where they can (a copy waits while
    another video of its size is still uploading). ``distinct``: each video gets bytes and a size
    of its own (an MP4 "free" box holding its name, padded by its index, after the last box: still
    a valid video), for tests that need every task to upload at once, or a sandbox fault that
    follows a file's name to reach its task."""
    vids = root / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    names = names or [f"lecture-{i:03d}.mp4" for i in range(n)]
    for i, name in enumerate(names):
        shutil.copyfile(sample, vids / name)
        if distinct:
            body = name.encode() + b"." * i
            with open(vids / name, "ab") as fh:
                fh.write((8 + len(body)).to_bytes(4, "big") + b"free" + body)
    jobs = "\n".join(f"  - source: videos/{name}" for name in names)
    settings = textwrap.indent(extra_settings.strip(), "  ") if extra_settings.strip() else ""
    given = {line.split(":", 1)[0].strip() for line in extra_settings.splitlines()
             if line.strip() and not line.startswith((" ", "\t", "-"))}
    defaults = "".join(f"  {k}: {v}\n" for k, v in (("workers", 2), ("max_attempts", 3), ("rpm", 1000),
                                                            ("rpd", 100000))
                       if k not in given)
    text = (f"{'sandbox: true' if sandbox else ''}\n"
            f"defaults:\n  template: summary_report\n  output_dir: out\n"
            f"settings:\n{defaults}{settings}\n"
            f"jobs:\n{jobs}\n")
    m = root / "manifest.yaml"
    m.write_text(text, encoding="utf-8")
    return m


def env_for(server=None, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY",
                                                             "GOOGLE_GEMINI_BASE_URL")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    if server is not None:
        env["GOOGLE_GEMINI_BASE_URL"] = server.base_url
        env["GEMINI_API_KEY"] = TEST_KEY
    env.update(extra)
    return env


def run_cli(args, *, env=None, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(GSVR + [str(a) for a in args], env=env or env_for(), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def journal_of(root: Path) -> Path:
    """Where make_batch's runs keep their journal."""
    return root / "out" / ".gsvr" / "journal.jsonl"


def records(journal: Path) -> list[dict]:
    """Every record of a journal that parses (a live run may be writing the last line)."""
    out = []
    if journal.exists():
        for line in journal.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def wait_for(cond, timeout: float = 60.0, step: float = 0.02):
    """Poll ``cond`` until it returns something truthy (returned) or ``timeout`` passes (None)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = cond()
        if found:
            return found
        time.sleep(step)
    return None


class Clock:
    """An injected wall clock for ``RunOptions.now`` that starts at ``start`` and then runs like a real
    one (a frozen clock would keep a retry scheduled a few seconds ahead waiting for ever); ``jump``
    moves it, e.g. to the next Pacific day."""

    def __init__(self, start: float) -> None:
        self._offset = start - time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() + self._offset

    def jump(self, seconds: float) -> None:
        self._offset += seconds
