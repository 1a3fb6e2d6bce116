"""`swav` answers its help, its listings and argument errors without importing torch: each
takes about as long as starting Python, measured here against ``python -c pass`` in the same
run (as a ratio) and held to 0.5 s (scaled up only when the machine starts Python slowly)."""

import subprocess
import sys
import time

import pytest

from swav.cli import COMMANDS

PROBE = (
    "import sys\n"
    "from swav.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "heavy = sorted(m for m in ('torch', 'torchvision', 'sklearn', 'PIL') if m in sys.modules)\n"
    "print('HEAVY=' + ','.join(heavy))\n"
    "sys.exit(code)\n"
)
LIMIT_S = 0.5
QUICK = [
    ["--help"],
    *([c, "--help"] for c in COMMANDS),
    *(["eval", p, "--help"] for p in ("knn", "linear", "semisup", "lowshot", "cluster")),
    ["zoo"],
    ["presets"],
]
ERRORS = [
    ["pretrain", "--bogus"],
    ["pretrain", "train.epochs=-1"],
    ["pretrain", "train.epochs=abc"],
    ["pretrain", "no.such_key=1"],
    ["pretrain", "--data", "/no/such/folder"],
    ["pretrain", "--preset", "cifar10", "optim.base_lr=-1"],
    ["pretrain", "--preset", "no-such-preset"],
    ["eval", "knn", "--k", "0"],
    ["eval", "knn"],
    ["export", "--format", "onnx-or-so"],
    ["embed", "--batch-size", "-3"],
    ["nosuchcommand"],
]


def _timed(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    best, done = float("inf"), None
    for _ in range(3):  # the fastest of three: what the command costs, not the machine's load
        t0 = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        best = min(best, time.perf_counter() - t0)
    assert done is not None
    return best, done


@pytest.fixture(scope="module")
def python_start() -> float:
    return _timed([sys.executable, "-c", "pass"])[0]


def _check(argv: list[str], python_start: float, want_code: int) -> None:
    took, done = _timed([sys.executable, "-c", PROBE, *argv])
    limit = LIMIT_S * max(1.0, python_start / 0.05)
    print(f"swav {' '.join(argv)}: {took:.3f} s = {took / python_start:.1f}x python -c pass")
    assert done.returncode == want_code, done.stderr
    assert "HEAVY=\n" in done.stdout, f"imported {done.stdout.split('HEAVY=')[-1]}"
    assert took <= limit, f"{took:.2f} s ({took / python_start:.1f}x python -c pass)"


@pytest.mark.parametrize("argv", QUICK, ids=" ".join)
def test_help_and_listings_answer_without_torch(argv, python_start):
    _check(argv, python_start, 0)


@pytest.mark.parametrize("argv", ERRORS, ids=" ".join)
def test_argument_errors_answer_without_torch(argv, python_start):
    _check(argv, python_start, 2)


def test_the_startup_check_can_fail(python_start):
    """A command that imports torch fails the check."""
    slow = [sys.executable, "-c", "import torch, sys; print('HEAVY=torch'); sys.exit(0)"]
    took, done = _timed(slow)
    assert "HEAVY=\n" not in done.stdout and took > python_start
