"""How long `swav` takes to answer its help, its listings and argument errors, against starting
Python itself (`python -c pass`), in the same run; and whether the answer imported torch.

    python benchmarks/startup.py        # writes results/startup.json

The commands are the ones `tests/test_startup.py` holds to 0.5 s.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tests.test_startup import ERRORS, PROBE, QUICK  # noqa: E402


def timed(args: list[str], rounds: int = 5) -> tuple[float, str]:
    """The median of ``rounds`` runs (seconds) and the last run's output."""
    times, out = [], ""
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = subprocess.run(args, capture_output=True, text=True, timeout=120).stdout
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    base, _ = timed([sys.executable, "-c", "pass"])
    rows = []
    for argv in [*QUICK, *ERRORS]:
        took, out = timed([sys.executable, "-c", PROBE, *argv])
        heavy = out.split("HEAVY=")[-1].strip()
        rows.append(
            {
                "command": "swav " + " ".join(argv),
                "seconds": round(took, 3),
                "ratio_to_python": round(took / base, 1),
                "imported": heavy or "nothing heavy",
            }
        )
        print(rows[-1], flush=True)
    record = {
        "python_c_pass_s": round(base, 4),
        "cpu": platform.processor() or platform.machine(),
        "cores": len(os.sched_getaffinity(0)),
        "load_1min": round(os.getloadavg()[0], 2),
        "slowest_s": max(r["seconds"] for r in rows),
        "commands": rows,
        "command": "python benchmarks/startup.py",
    }
    out_path = HERE / "results" / "startup.json"
    out_path.write_text(json.dumps(record, indent=2))
    print(f"written {out_path}")


if __name__ == "__main__":
    main()
