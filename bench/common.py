"""What the benchmarks share: the machine line, ``--scales`` lists, the growth table.

The growth table answers the issue's question for each bench: per scale the project's
time, the raw method's, their ratio and MB/s, then a least-squares fit ``t = a + b * MiB``
for both, which says whether the cost is linear in bytes (b), a flat overhead (a), and
whether the ratio grows with the scale.
"""

from __future__ import annotations

import os
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{mem_kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        mem = "? RAM"
    return f"{os.cpu_count()} cores ({cpu}), {mem}, {platform.system()} {platform.release()}"


def int_list(text: str) -> list[int]:
    """``10,50,200`` -> ``[10, 50, 200]`` (argparse ``type=``)."""
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or any(v < 1 for v in values):
        raise ValueError(f"expected positive integers separated by commas, got {text!r}")
    return values


@dataclass
class Point:
    """One scale: how many MiB were processed and the median seconds of each side."""

    scale: int
    mib: float
    project: float
    raw: float

    @property
    def ratio(self) -> float:
        return self.project / self.raw if self.raw else float("inf")


def fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares ``y = a + b x``; with one point, all of it is slope."""
    if len(xs) < 2 or len(set(xs)) < 2:
        return 0.0, (ys[0] / xs[0] if xs and xs[0] else 0.0)
    slope, intercept = statistics.linear_regression(xs, ys)
    return intercept, slope


def growth_table(title: str, project: str, raw: str, points: list[Point]) -> str:
    """The per-scale table and the growth verdict, as printed and pasted in the README."""
    lines = [
        f"{title}: {project} vs {raw}",
        f"{'scale':>6} {'MiB':>8} {'project s':>10} {'raw s':>8} {'ratio':>6} "
        f"{'project MB/s':>13} {'raw MB/s':>9}",
    ]
    for p in points:
        mbs = p.mib * 2**20 / 1e6
        lines.append(
            f"{p.scale:>6} {p.mib:>8.0f} {p.project:>10.2f} {p.raw:>8.2f} {p.ratio:>6.2f} "
            f"{mbs / p.project if p.project else 0:>13.0f} {mbs / p.raw if p.raw else 0:>9.0f}"
        )
    xs = [p.mib for p in points]
    a_p, b_p = fit(xs, [p.project for p in points])
    a_r, b_r = fit(xs, [p.raw for p in points])
    lines.append(
        f"fit t = a + b*GiB: project a={a_p:.2f} s b={b_p * 1024:.2f} s/GiB; "
        f"raw a={a_r:.2f} s b={b_r * 1024:.2f} s/GiB"
    )
    if len(points) > 1:
        first, last = points[0].ratio, points[-1].ratio
        trend = "grows" if last > first * 1.05 else "shrinks" if last < first / 1.05 else "flat"
        lines.append(f"ratio {first:.2f} -> {last:.2f} from scale {points[0].scale} to "
                     f"{points[-1].scale}: {trend}")  # fmt: skip
    return "\n".join(lines)


def load_note() -> str:
    """A warning line when other work competed for the CPU during the run, else ''."""
    load = os.getloadavg()[1]
    cores = os.cpu_count() or 1
    if load <= cores:
        return ""
    return f"note: load average {load:.1f} on {cores} cores: other work competed, timings noisy"
