#!/usr/bin/env python3
"""A 3-hour lecture through gsvr-batch, offline: the figures quoted in README "Long videos".

    python scripts/long_lecture_demo.py            # about 15 s; prints a Markdown table
    python scripts/long_lecture_demo.py --hours 4 --keep /tmp/demo

What it does, all real: makes a real 3-hour MP4 (a sparse one, ~0.4 MB: tests/videos.py), starts
the sandbox server (the real 1,048,576-token input window, Google's token rules for video), and
runs ``python -m gsvr_batch run`` twice on it:

* **auto** — the built-in ``summary_report`` template as it is (default media resolution): the
  manager plans clips + merge by itself;
* **low-res template** — the same template with ``model_config: {media_resolution: low}``: the
  clips are sent at MEDIA_RESOLUTION_LOW (66 instead of 258 tokens a frame).

Reported per run, from the sandbox's request log and the journal: the plan, generate requests,
input and output tokens as the server counted them, and the cost as the real API would bill it
(gsvr-batch's price table; the sandbox bills nothing). For comparison: what ONE call at low
resolution would cost — the cheapest conceivable request, which the API refuses for a 3-hour
video because it is over the input window. The runs use ``--tier 1 --tpm 50000000``: the plan is
the one tier 1 gets (its 1,000,000 TPM ceiling allows 45-minute clips), and the limiter does not
make the demo wait the ~4 minutes tier 1's quota would really take for ~3 M tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # videos.make_video: hours of real MP4 in a second

def low_template(path: Path) -> str:
    """The built-in summary_report, renamed summary_report_low, at MEDIA_RESOLUTION_LOW; its prompt."""
    import yaml

    from gsvr_batch import templates

    t = templates.get_template("summary_report")
    body = {"version": t.version, "description": "summary_report at MEDIA_RESOLUTION_LOW",
            "parameters": [{k: v for k, v in p.items() if v is not None} for p in t.to_dict().get("parameters") or []],
            "model_config": {**(t.model_config or {}), "media_resolution": "low"}, "prompt": t.prompt}
    path.write_text(yaml.safe_dump({"templates": {"summary_report_low": body}}, allow_unicode=True, sort_keys=False),
                    encoding="utf-8")
    return t.prompt


def manifest(root: Path, video: Path, template: str, templates_dir: Path | None) -> Path:
    lines = ["defaults:", f"  template: {template}", "  output_dir: out", "settings:", "  workers: 1",
             "  rpm: 1000", "  rpd: 100000"]
    if templates_dir is not None:
        lines.append(f"  templates_dir: {templates_dir}")
    lines += ["jobs:", f"  - source: {video}", "    title: Three-hour lecture"]
    path = root / "manifest.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_once(name: str, root: Path, video: Path, server, template: str, templates_dir: Path | None) -> dict:
    from gsvr_batch.lifecycle import replay

    root.mkdir(parents=True, exist_ok=True)
    m = manifest(root, video, template, templates_dir)
    env = dict(os.environ, GOOGLE_GEMINI_BASE_URL=server.base_url, GEMINI_API_KEY="demo-key-not-real",
               PYTHONPATH=str(REPO))
    seen = len(server.requests)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "gsvr_batch", "run", str(m), "--progress", "quiet", "--tier", "1",
                        "--tpm", "50000000"], env=env, capture_output=True, text=True, timeout=600)
    wall = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"{name}: exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    gens = [e for e in server.requests[seen:] if e["kind"] == "generate" and e["status"] == 200]
    state = replay(root / "out" / ".gsvr" / "journal.jsonl").state
    task = next(iter(state.tasks.values()))
    from gsvr_batch.summary import plan_view

    plan = task.plan or {}
    return {
        "name": name,
        "plan": plan,
        "label": plan_view(task)["strategy"],
        "requests": len(gens),
        "clips": sum(1 for g in gens if g.get("clip")),
        "input_tokens": sum(g["tokens"]["prompt"] for g in gens),
        "largest_request": max(g["tokens"]["prompt"] for g in gens),
        "output_tokens": sum(g["tokens"]["candidates"] for g in gens),
        "merge_output": next((g["tokens"]["candidates"] for g in gens if g.get("merge")), 0),
        "cost": state.total_cost_usd,
        "refused": sum(1 for e in server.requests[seen:] if e["kind"] == "generate" and e["status"] == 400),
        "wall": wall,
        "resolution": gens[0].get("media_resolution") or "default",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hours", type=float, default=3.0)
    ap.add_argument("--keep", help="folder to keep the runs in (default: a temporary one, removed)")
    args = ap.parse_args()

    from videos import make_video

    from gsvr_batch import context, templates
    from gsvr_batch.pricing import load_pricing
    from gsvr_batch.sandbox import SandboxConfig, SandboxServer

    seconds = args.hours * 3600
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="gsvr-long-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        video = make_video(base / "lecture-3h.mp4", seconds)
        tdir = base / "templates"
        tdir.mkdir(exist_ok=True)
        prompt = low_template(tdir / "low.yaml")
        with SandboxServer(SandboxConfig(processing_delay=0.05, api_key=None)) as server:
            auto = run_once("auto", base / "auto", video, server, "summary_report", None)
            low = run_once("low-res template", base / "low", video, server, "summary_report_low", tdir)

        # One call at low resolution: the sandbox's (Google's) rule for the whole video, the same prompt.
        table = load_pricing(None)
        frames = int(-(-seconds // 1))
        audio = int(-(-seconds * 32 // 1))
        prompt_tok = context.prompt_tokens(len(prompt))
        one_in = frames * 66 + audio + prompt_tok
        one_out = low["merge_output"]
        one_cost = table.estimate_cost("gemini-2.5-flash", one_in, one_out, "online", audio_tokens=audio)
        print(f"A {context.hms(seconds)} lecture, gemini-2.5-flash, sandbox with the real 1,048,576-token window "
              f"(python scripts/long_lecture_demo.py):\n")
        print("| Run | Plan | Requests | Largest request | Input tokens | Output tokens | Cost (online) |")
        print("|---|---|---|---|---|---|---|")
        for r in (auto, low):
            print(f"| {r['name']} | {r['label']} at {r['resolution']} | {r['requests']} ({r['clips']} clips + 1 merge) "
                  f"| {r['largest_request']:,} | {r['input_tokens']:,} | {r['output_tokens']:,} | ${r['cost']:.4f} |")
        print(f"| one call at low resolution (for comparison) | refused: {one_in:,} > 1,048,576 | 1 | {one_in:,} "
              f"| {one_in:,} | {one_out:,} | ${one_cost:.4f} |")
        print()
        for r in (auto, low):
            print(f"{r['name']}: {r['refused']} request(s) refused for size; plan: {r['plan'].get('reason')}; "
                  f"{r['wall']:.1f} s")
        print(f"\nlow-res clips cost {low['cost'] / one_cost:.2f}× the one-call price at low resolution; "
              f"auto (default resolution) {auto['cost'] / one_cost:.2f}×.")
        print(json.dumps({"auto": {k: v for k, v in auto.items() if k != "plan"},
                          "low": {k: v for k, v in low.items() if k != "plan"},
                          "one_call_low": {"input_tokens": one_in, "output_tokens": one_out, "cost": one_cost}}))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
