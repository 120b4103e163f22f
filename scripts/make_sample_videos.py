"""Make the small real video files that the example manifests process.

    python scripts/make_sample_videos.py            # writes jobs/videos/*.mp4

Each is a few seconds of synthetic frames (a moving bar over a coloured background, with a
sine-tone audio track) encoded with PyAV, a few tens of KB. Deterministic: same bytes every run
for a given PyAV/FFmpeg build.
"""

from __future__ import annotations

import argparse
import math
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

SAMPLES = [
    # (file name, seconds, rgb)
    ("lecture-01-introduction.mp4", 6, (30, 60, 120)),
    ("lecture-02-photosynthesis.mp4", 8, (20, 110, 40)),
    ("讲座-03-函数.mp4", 5, (120, 40, 40)),
]


def make_video(path: Path, seconds: int, rgb: tuple[int, int, int], fps: int = 10, size=(160, 90)) -> None:
    w, h = size
    with av.open(str(path), mode="w", format="mp4") as container:
        vs = container.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.bit_rate = 60_000
        rate = 16000
        aus = container.add_stream("aac", rate=rate)
        aus.layout = "mono"
        for i in range(seconds * fps):
            img = np.zeros((h, w, 3), dtype=np.uint8)
            img[:, :] = rgb
            x = int((i / (seconds * fps)) * (w - 10))
            img[:, x : x + 10] = (240, 240, 240)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for pkt in vs.encode(frame):
                container.mux(pkt)
        for pkt in vs.encode():
            container.mux(pkt)
        samples_per_frame = 1024
        total = seconds * rate
        pts = 0
        while pts < total:
            n = min(samples_per_frame, total - pts)
            t = (np.arange(pts, pts + n) / rate).astype(np.float32)
            tone = (0.1 * np.sin(2 * math.pi * 440 * t)).astype(np.float32).reshape(1, -1)
            af = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            af.sample_rate = rate
            af.pts = pts
            af.time_base = Fraction(1, rate)
            for pkt in aus.encode(af):
                container.mux(pkt)
            pts += n
        for pkt in aus.encode():
            container.mux(pkt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "jobs" / "videos"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, secs, rgb in SAMPLES:
        p = out / name
        make_video(p, secs, rgb)
        print(f"{p}  {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
