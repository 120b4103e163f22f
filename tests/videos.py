"""Long test videos made in a blink: tiny real MP4 files of any duration, for sandbox tests.

``make_video(path, seconds)`` writes a real, playable MP4 (32×32 black frames, MPEG-4 Part 2,
plus a silent AAC track unless ``audio=False``) whose duration, as PyAV and the sandbox measure it,
is ``seconds`` (to the millisecond). Frames are sparse (``fps=0.25``: one every 4 s), so a
4-hour lecture is about 0.5 MB and takes well under a second to build; without audio it is ~70 KB.
The sandbox counts tokens from the *duration* (and the request's fps / resolution / clip), not
from the frames stored in the file, so sparse frames do not change any token number::

    from videos import make_video          # tests/ is on sys.path under pytest

    lecture = make_video(tmp_path / "lecture.mp4", 4 * 3600)   # 4 h, with a silent audio track
    client.files.upload(file=lecture, config={"display_name": "long lecture"})

Files are generated once per (seconds, fps, audio) and cached in a temporary folder for the
whole test session (removed at exit); each call copies the cached file to ``path``, so tests may
rename, touch or delete their copy freely. ``make_video(None, seconds)`` returns the cached file
itself (do not modify it). Every video of the same parameters has the same bytes and sha256: make
``seconds`` differ slightly (e.g. 3600.25) if a test needs two distinct files.

Sandbox token arithmetic for such a file (see ``gsvr_batch/sandbox/__init__.py``):
``ceil(seconds × fps_requested) × 258`` (66 at MEDIA_RESOLUTION_LOW) ``+ ceil(seconds × 32)``
audio tokens when the file has an audio track (``audio=True``, the default) ``+ ceil(chars / 4)``.
"""

from __future__ import annotations

import atexit
import math
import shutil
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

__all__ = ["make_video"]

_SIZE = 32  # pixels: the smallest size every encoder here accepts, and tiny files
_AUDIO_RATE = 8000  # Hz: low, so a 4-hour track is only ~112k AAC packets
_AAC_SAMPLES = 1024  # samples per AAC frame
_MS = Fraction(1, 1000)

_lock = threading.Lock()
_cache_dir: Path | None = None


def _cache() -> Path:
    global _cache_dir
    if _cache_dir is None:
        _cache_dir = Path(tempfile.mkdtemp(prefix="gsvr-test-videos-"))
        atexit.register(shutil.rmtree, _cache_dir, True)
    return _cache_dir


def make_video(path: str | Path | None, seconds: float, *, fps: float = 0.25, audio: bool = True) -> Path:
    """A real MP4 of ``seconds`` seconds at ``path`` (a copy of a cached file); returns the path.

    ``fps``: frames stored per second (sparse by default; it only affects the file size and build
    time, not the sandbox's token count). ``audio``: add a silent AAC track (the sandbox then
    counts 32 audio tokens per second, as for a real lecture). ``path=None`` returns the cached
    file itself.
    """
    if seconds <= 0:
        raise ValueError("seconds must be > 0")
    if fps <= 0:
        raise ValueError("fps must be > 0")
    with _lock:  # one build per parameter set even if tests run threads
        cached = _cache() / f"video-{seconds:.3f}s-{fps:g}fps-{'a' if audio else 'na'}.mp4"
        if not cached.exists():
            tmp = cached.with_suffix(".part")
            _write(tmp, seconds, fps, audio)
            tmp.rename(cached)  # a half-written file never sits under the cached name
    if path is None:
        return cached
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, out)
    return out


def _write(path: Path, seconds: float, fps: float, audio: bool) -> None:
    import av  # imported here so importing this module costs nothing for tests that do not use it

    total_ms = round(seconds * 1000)
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("mpeg4", rate=Fraction(fps).limit_denominator(1000))
        video.width = video.height = _SIZE
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = _MS
        video.time_base = _MS
        # Every stream must exist before the first packet is muxed (that writes the header).
        sound = container.add_stream("aac", rate=_AUDIO_RATE, layout="mono") if audio else None
        frame = av.VideoFrame(_SIZE, _SIZE, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        n = max(1, math.ceil(seconds * fps - 1e-9))
        packets = []
        for i in range(n):
            frame.pts = min(round(i * 1000 / fps), max(0, total_ms - 1))
            frame.time_base = _MS
            packets.extend(video.encode(frame))
        packets.extend(video.encode())
        # The file's duration is the last frame's end: stretch or cut it to exactly ``seconds``.
        last = max(packets, key=lambda p: p.pts)
        last.duration = max(1, total_ms - last.pts)
        for p in packets:
            container.mux(p)
        if sound is not None:
            _silent_track(container, sound, seconds)


def _silent_track(container, stream, seconds: float) -> None:
    """A silent AAC track of ``seconds``: one encoded silent frame, muxed again and again.

    Encoding hours of silence would take seconds; repeating one packet (with its own timestamps)
    takes a fraction of that and is still a valid, playable track.
    """
    import av

    frame = av.AudioFrame(format="fltp", layout="mono", samples=_AAC_SAMPLES)
    for plane in frame.planes:
        plane.update(bytes(plane.buffer_size))
    frame.sample_rate = _AUDIO_RATE
    encoded = []
    for k in range(3):
        frame.pts = k * _AAC_SAMPLES
        encoded.extend(stream.encode(frame))
    silent = bytes(encoded[-1])  # a steady-state frame (the first one carries encoder priming)
    total = round(seconds * _AUDIO_RATE)
    tb = Fraction(1, _AUDIO_RATE)
    for start in range(0, total, _AAC_SAMPLES):
        packet = av.Packet(silent)
        packet.stream = stream
        packet.pts = packet.dts = start
        packet.duration = min(_AAC_SAMPLES, total - start)
        packet.time_base = tb
        container.mux(packet)
