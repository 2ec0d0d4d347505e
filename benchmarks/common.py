"""Shared by the benchmark scripts: the machine's description, timing windows, memory
readings, and appending dated rows to benchmarks/RESULTS.md.

These machines are shared and noisy: every script measures the quantities it compares in
the same run, reports the median over several timed windows, and records ratios.
"""

import datetime
import os
import platform
import statistics
import time
from typing import Callable, Optional, Sequence

import jax

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def machine() -> str:
    """`cpu model (N cores)` or the accelerator's name, plus the JAX version."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        model = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as handle:
                names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
            model = names[0] if names else model
        except OSError:
            pass
        return f"{model}, {os.cpu_count()} cores, jax {jax.__version__}"
    return f"{device.device_kind} ({device.platform}), jax {jax.__version__}"


def rss_mib() -> float:
    """Resident memory of this process now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def peak_memory_mib() -> float:
    """Peak device memory on an accelerator, else the process's peak resident memory."""
    device = jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" and hasattr(device, "memory_stats") else None
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median_rate(run: Callable[[], None], work: float, windows: int = 5) -> float:
    """Median of `work / seconds` over `windows` timed calls of `run` (which must block)."""
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        run()
        rates.append(work / (time.perf_counter() - start))
    return statistics.median(rates)


def append_rows(section: str, header: Sequence[str], rows: Sequence[Sequence], note: Optional[str] = None) -> None:
    """Appends rows (each prefixed with the date and machine) to `section` of RESULTS.md,
    creating the section and its header the first time."""
    header = ["date", "machine", *header]
    stamp = datetime.date.today().isoformat()
    lines = [f"| {stamp} | {machine()} | " + " | ".join(str(c) for c in row) + " |" for row in rows]
    text = open(RESULTS).read() if os.path.exists(RESULTS) else "# Benchmark results\n\nRows are appended by the scripts in this folder (`python benchmarks/<script>.py`); each gives the date, the machine and medians over timed windows.\n"
    title = f"\n## {section}\n"
    if title not in text:
        text += title + (f"\n{note}\n" if note else "") + "\n| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
        text += "\n".join(lines) + "\n"
    else:
        start = text.index(title)
        end = text.find("\n## ", start + len(title))
        end = len(text) if end < 0 else end
        block = text[start:end].rstrip("\n") + "\n" + "\n".join(lines) + "\n"
        text = text[:start] + block + text[end:]
    with open(RESULTS, "w") as handle:
        handle.write(text)
