"""Summaries of py-spy's raw (collapsed) stacks: where a process spends its CPU.

py-spy ``--format raw`` writes one line per distinct stack: frames from the
root to the leaf separated by ``;``, then a space and the sample count. Idle
samples are not recorded, so the counts are CPU time. Two views:

- *self* time by function (the leaf frame): what to make cheaper;
- time by *layer* (the innermost frame that belongs to a known layer): which
  part of the system the CPU goes to — the Kafka client, the codec, the decider.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+)(?::(?P<line>\d+))?\)$")

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("codec (apex.codec, fastavro)", ("apex/codec.py", "fastavro/", "apex/jsonvalue.py")),
    ("decider (apex.domain)", ("apex/domain/",)),
    ("chain hash (apex.chain)", ("apex/chain.py",)),
    ("orchestrator loop (streams/orchestrator.py)", ("streams/orchestrator.py",)),
    ("worker SDK (apex/worker)", ("apex/worker/",)),
    ("Kafka client (aiokafka)", ("aiokafka/",)),
    ("compression/crc", ("crc", "zlib", "gzip")),
    ("asyncio event loop", ("asyncio/",)),
)


def _file_of(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    return match.group("file") if match else frame


def _short(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{match.group('func')} ({path})"


def _layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        path = _file_of(frame)
        for name, markers in LAYERS:
            if any(marker in path for marker in markers):
                return name
    return "other (interpreter, stdlib)"


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    """Self time of the top functions and time by layer, in % of all samples."""
    self_time: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        self_time[_short(frames[-1])] += count
        layers[_layer(frames)] += count
    if total == 0:
        return {"samples": 0}

    def pct(n: int) -> float:
        return round(100 * n / total, 1)

    return {
        "samples": total,
        "by_layer_pct": {name: pct(n) for name, n in layers.most_common()},
        "top_self_pct": [[name, pct(n)] for name, n in self_time.most_common(top)],
    }
