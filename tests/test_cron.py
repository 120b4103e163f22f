"""Cron: no TTY, no HOME, cwd `/` — the run works and its log holds no progress-bar control characters."""

from __future__ import annotations

import os
import subprocess

import pytest

from conftest import GSVR, env_for, make_batch

pytestmark = pytest.mark.slow


def test_run_from_cron_like_environment_logs_plain_lines(tmp_path, sandbox):
    server = sandbox()
    m = make_batch(tmp_path, 3)
    env = env_for(server)
    for k in ("HOME", "TERM", "COLUMNS", "LINES", "XDG_CONFIG_HOME", "PWD"):
        env.pop(k, None)
    env["PATH"] = "/usr/bin:/bin"  # cron's default PATH
    log = tmp_path / "cron.log"
    with open(log, "wb") as fh:  # crontab: `... >> run.log 2>&1`
        r = subprocess.run(GSVR + ["run", str(m)], env=env, cwd="/", stdout=fh, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=120, start_new_session=True)  # no controlling TTY
    text = log.read_bytes()
    assert r.returncode == 0, text.decode(errors="replace")
    assert b"\r" not in text and b"\x1b" not in text  # no progress bar, no colours
    assert b"all tasks done" in text and b"Journal:" in text
    assert len(list((tmp_path / "out").glob("*.md"))) == 3
    # a second firing (nothing left) is a quiet no-op with exit 0
    with open(log, "ab") as fh:
        r2 = subprocess.run(GSVR + ["run", str(m)], env=env, cwd="/", stdout=fh, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, timeout=120, start_new_session=True)
    assert r2.returncode == 0 and b"Nothing to do" in log.read_bytes()
    assert not os.path.exists("/out") and not os.path.exists("/.gsvr")  # nothing written relative to cwd /
    # A firing with nothing to do neither builds the manifest again (the cache holds it) nor imports
    # the SDK (~0.4 s): it reads the manifest, the journal, and stops.
    probe = ("import sys\n"
             "sys.argv = ['gsvr-batch', 'run', sys.argv[1]]\n"
             "import gsvr_batch.manifest as m\n"
             "def no_parse(*a, **k):\n"
             "    raise SystemExit('the manifest was parsed again')\n"
             "m._read = no_parse\n"
             "from gsvr_batch.cli import main\n"
             "try:\n"
             "    main()\n"
             "except SystemExit as exc:\n"
             "    print('exit', exc.code)\n"
             "print('SDK imported:', 'google.genai' in sys.modules)\n")
    r3 = subprocess.run([GSVR[0], "-c", probe, str(m)], env=env, cwd="/", capture_output=True, text=True,
                        stdin=subprocess.DEVNULL, timeout=120)
    assert "Nothing to do" in r3.stdout + r3.stderr, r3.stdout + r3.stderr
    assert r3.stdout.splitlines()[-2:] == ["exit 0", "SDK imported: False"], r3.stdout + r3.stderr
