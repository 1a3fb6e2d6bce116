"""The loss curve of a run, drawn to ``loss.png`` when training ends (with ln K, the loss of
uniform codes, for reference)."""

from __future__ import annotations

import math
from pathlib import Path

from swav.engine.run_dir import RunDir


def training_rows(run: RunDir) -> list[dict]:
    """The per-iteration records, once per iteration in order: after a resume or a recovery
    that rewound the run, the records written last replace those of the same iterations."""
    latest = {r["iteration"]: r for r in run.read_metrics() if "kind" not in r and "loss" in r}
    return [latest[i] for i in sorted(latest)]


def plot_loss_curve(run_dir: str | Path, out: str | Path | None = None) -> Path | None:
    """Draw loss per iteration (and its running mean) to ``run_dir/loss.png``; None (and no
    file) when nothing has been trained yet."""
    run = RunDir.of(run_dir)
    rows = training_rows(run)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out) if out else run.loss_plot
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    its = [r["iteration"] for r in rows]
    losses = [r["loss"] for r in rows]
    ax.plot(its, losses, lw=0.6, alpha=0.4, label="loss per iteration")
    w = max(1, len(losses) // 50)
    mean = [
        sum(losses[max(0, i - w + 1) : i + 1]) / len(losses[max(0, i - w + 1) : i + 1])
        for i in range(len(losses))
    ]
    ax.plot(its, mean, lw=1.5, label=f"running mean ({w} it)")
    ks = (run.read_config() or {}).get("model", {}).get("n_prototypes")
    if ks:
        ln_k = sum(math.log(k) for k in ks) / len(ks)
        ax.axhline(ln_k, color="gray", ls="--", lw=1, label=f"ln K = {ln_k:.2f} (uniform codes)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("swapped prediction loss")
    ax.set_title(f"SwAV pretraining: {run.path.name}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
