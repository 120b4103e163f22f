"""Rate-limit benchmark: is the shared token bucket exact under 8 workers? (issue 4)

    python scripts/bench_ratelimit.py                    # all three scenarios, ~4 minutes
    python scripts/bench_ratelimit.py --rpm 120 --seconds 65 --scenario matched

Scenarios, each against the sandbox server (in this process, real HTTP on 127.0.0.1) enforcing a
per-minute limit with real 429 bodies:

* ``matched``  — ``gsvr-batch run`` with 8 workers, client ``--rpm R``, server limit R.
* ``tighter``  — the same, but the server's limit is 30 % below the client's (0.7 R): how many
  429s until the adaptive rate settles, and the settled rate / server limit.
* ``naive``    — baseline: 8 processes, each with its *own* bucket of R (what a per-process
  limiter does), calling the SDK directly; server limit R.

Jobs are YouTube links, so every task is exactly one generate request and nothing else
(``--tpm`` is set huge: the sandbox assumes 600 s per YouTube video = 180k tokens). Figures are
read from the sandbox's request log: achieved rate, 429s, and the most requests the server saw
in any sliding 60 s and 1 s window.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gsvr_batch.sandbox import SandboxConfig, SandboxServer  # noqa: E402

MODEL = "gemini-2.5-flash"
KEY = "bench-key-not-real"


def max_in_window(ts: list[float], width: float) -> int:
    ts = sorted(ts)
    best, j = 0, 0
    for i, t in enumerate(ts):
        while ts[j] <= t - width:
            j += 1
        best = max(best, i - j + 1)
    return best


def write_manifest(root: Path, n: int) -> Path:
    jobs = "\n".join(f"  - source: https://www.youtube.com/watch?v=bench{i:06d}" for i in range(n))
    m = root / "manifest.yaml"
    m.write_text(f"defaults:\n  template: summary_report\n  output_dir: out\njobs:\n{jobs}\n", encoding="utf-8")
    return m


def generate_entries(server: SandboxServer) -> list[dict]:
    return [r for r in server.requests if r.get("kind") == "generate"]


def summarise(name: str, entries: list[dict], client_rpm: float, server_rpm: float) -> dict:
    ok = sorted(r["ts"] for r in entries if r.get("status") == 200)
    all_ts = [r["ts"] for r in entries]
    n429 = [r["ts"] for r in entries if r.get("status") == 429]
    span = (ok[-1] - ok[0]) if len(ok) > 1 else 0.0
    rate = (len(ok) - 1) / span * 60 if span else 0.0
    out = {
        "scenario": name, "client_rpm": client_rpm, "server_rpm": server_rpm, "requests": len(all_ts),
        "ok": len(ok), "429s": len(n429), "span_s": round(span, 1), "achieved_rpm": round(rate, 2),
        "achieved_over_client_rpm": round(rate / client_rpm, 3),
        "max_in_60s_window": max_in_window(all_ts, 60.0), "max_in_1s_window": max_in_window(all_ts, 1.0),
    }
    if n429:
        last = max(n429)
        after = [t for t in ok if t > last]
        out["last_429_at_s"] = round(last - min(all_ts), 1)
        if len(after) > 1:
            settled = (len(after) - 1) / (after[-1] - after[0]) * 60
            out["settled_rpm"] = round(settled, 2)
            out["settled_over_server_rpm"] = round(settled / server_rpm, 3)
    return out


def run_gsvr(server: SandboxServer, rpm: float, seconds: float, workers: int) -> None:
    n = int(rpm * seconds / 60) + 1
    with tempfile.TemporaryDirectory() as d:
        m = write_manifest(Path(d), n)
        env = dict(os.environ, GOOGLE_GEMINI_BASE_URL=server.base_url, GEMINI_API_KEY=KEY,
                   PYTHONPATH=str(REPO))
        env.pop("GOOGLE_API_KEY", None)
        subprocess.run([sys.executable, "-m", "gsvr_batch", "run", str(m), "--no-sandbox", "--workers", str(workers),
                        "--rpm", str(rpm), "--tpm", "1000000000", "--rpd", "1000000", "--max-attempts", "10",
                        "--progress", "quiet"], env=env, check=False, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)


def _naive_worker(base_url: str, rpm: float, until: float, idx: int) -> None:
    from google import genai
    from google.genai import errors, types

    from gsvr_batch.quota import Limits
    from gsvr_batch.ratelimit import RateLimiter

    path = os.path.join(tempfile.gettempdir(), f"naive-bucket-{os.getpid()}")
    lim = RateLimiter.create(path, {MODEL: Limits(rpm=rpm, tpm=None, rpd=None, file_rpm=None)})
    client = genai.Client(api_key=KEY, http_options=types.HttpOptions(base_url=base_url))
    i = 0
    while time.time() < until:
        lim.acquire("generate", MODEL)
        try:
            client.models.generate_content(model=MODEL, contents=[
                types.Part.from_uri(file_uri=f"https://www.youtube.com/watch?v=naive{idx:02d}{i:04d}",
                                    mime_type="video/mp4"), "Summarise."])
            lim.record_success("generate", MODEL)
        except errors.APIError as exc:
            if exc.code == 429:
                lim.record_rate_limited("generate", MODEL, 1.0)  # per-process backoff only
        i += 1
    lim.close()
    os.unlink(path)


def run_naive(server: SandboxServer, rpm: float, seconds: float, workers: int) -> None:
    until = time.time() + seconds
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_naive_worker, args=(server.base_url, rpm, until, i)) for i in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()


def scenario(name: str, rpm: float, seconds: float, workers: int) -> dict:
    server_rpm = rpm * 0.7 if name == "tighter" else rpm
    with SandboxServer(SandboxConfig(rpm=server_rpm, processing_delay=0)) as server:
        t0 = time.monotonic()
        if name == "naive":
            run_naive(server, rpm, seconds, workers)
        else:
            run_gsvr(server, rpm, seconds, workers)
        res = summarise(name, generate_entries(server), rpm, server_rpm)
        res["wall_s"] = round(time.monotonic() - t0, 1)
        res["workers"] = workers
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description="shared rate limiter benchmark against the sandbox")
    ap.add_argument("--rpm", type=float, default=120)
    ap.add_argument("--seconds", type=float, default=65)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--scenario", choices=["matched", "tighter", "naive", "all"], default="all")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    names = ["matched", "tighter", "naive"] if args.scenario == "all" else [args.scenario]
    results = [scenario(n, args.rpm, args.seconds, args.workers) for n in names]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
