"""Make docs/report.png: run a small real batch against a local sandbox server, render its HTML report, screenshot it.

    python scripts/screenshot_report.py [--keep]

Twelve copies of the sample lecture (one named ``sandbox-block`` so the sandbox answers it with a
safety block and the task fails) are run with 3 workers against a sandbox server started here
with a ``fail_rate`` and ``max_call_retries: 0`` (so a 500/503/dropped connection ends the
attempt and the runner journals a retry) and a
little latency (so the timeline has some width); the report is then rendered from the journal
and photographed with headless Chromium. The run is real: the CLI in a subprocess, the SDK over
HTTP to 127.0.0.1, so the journal is exactly what a user would get.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SAMPLE = REPO / "jobs" / "videos" / "lecture-01-introduction.mp4"
TITLES = ["Lecture 1: Introduction", "Lecture 2: Photosynthesis", "讲座 3：函数", "Cells & <script>alert(1)</script>",
          "Lecture 5: Genetics 🧬", "Lecture 6: Evolution", "Lecture 7: Ecology", "Lecture 8: Review",
          "Blocked lecture", "Lecture 10: Statistics", "Lecture 11: Probability", "Lecture 12: Final exam prep"]


def make_journal(work: Path) -> Path:
    from gsvr_batch.sandbox import SandboxConfig, SandboxServer

    vids = work / "videos"
    vids.mkdir(parents=True)
    jobs = []
    for i, title in enumerate(TITLES, 1):
        name = f"lecture-{i:02d}{'-sandbox-block' if title == 'Blocked lecture' else ''}.mp4"
        shutil.copyfile(SAMPLE, vids / name)
        safe = title.replace('"', '\\"')
        extra = ("\n    template: chinese_transcript" if "讲座" in title else
                 "\n    model: gemini-2.5-pro" if i in (4, 7, 11) else "")
        jobs.append(f'  - source: videos/{name}\n    title: "{safe}"' + extra)
    (work / "manifest.yaml").write_text(
        "defaults:\n  template: summary_report\n  output_dir: out\n"
        "settings:\n  workers: 3\n  max_attempts: 4\n  max_call_retries: 0\n  rpm: 1000\n  rpd: 100000\njobs:\n" + "\n".join(jobs) + "\n",
        encoding="utf-8")
    # seed: the same faults every time, so the screenshot is reproducible in shape.
    server = SandboxServer(SandboxConfig(fail_rate=0.12, seed=7, latency=0.6, processing_delay=0.4))
    server.start()
    env = dict(os.environ, GOOGLE_GEMINI_BASE_URL=server.base_url, GEMINI_API_KEY="sandbox-key",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("GOOGLE_API_KEY", None)
    try:
        proc = subprocess.run([sys.executable, "-m", "gsvr_batch", "run", "manifest.yaml", "--progress", "quiet"],
                              cwd=work, env=env, capture_output=True, text=True, timeout=300, check=False)
    finally:
        server.stop()
    print(proc.stdout.strip(), proc.stderr.strip()[-2000:], sep="\n")
    journal = work / "out" / ".gsvr" / "journal.jsonl"
    if not journal.exists():
        raise SystemExit(f"the batch wrote no journal (exit {proc.returncode})")
    return journal


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary batch folder")
    ap.add_argument("--out", default=str(REPO / "docs" / "report.png"))
    args = ap.parse_args()
    from gsvr_batch.report import write_report

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        raise SystemExit("chromium not found (apt-get install chromium)")
    work = Path(tempfile.mkdtemp(prefix="gsvr-report-"))
    profile = Path(tempfile.mkdtemp(prefix="gsvr-chromium-"))
    try:
        journal = make_journal(work)
        html_path = write_report(journal, "html", journal.parent / "report.html")
        print(f"report: {html_path}")
        out = Path(args.out).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={profile}", "--hide-scrollbars", f"--screenshot={out}",
                        "--window-size=1280,1800", html_path.resolve().as_uri()],
                       check=True, timeout=120, capture_output=True)
        print(f"screenshot: {out}")
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
