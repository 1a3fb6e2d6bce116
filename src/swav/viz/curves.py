"""The curves of a run, from its ``metrics.jsonl``, in one figure: loss (with ln K, the loss of
uniform codes), learning rate, code entropy, prototypes in use, images/s, and the evaluation
results of the run directory. Works on a run in progress, a stopped one or a finished one; each
iteration is drawn once (after a resume or a rewind the records written last count)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from swav.engine.curves import training_rows
from swav.engine.run_dir import RunDir
from swav.errors import UsageError
from swav.viz.images import pyplot, save_figure


def _health_rows(run: RunDir) -> list[dict[str, Any]]:
    latest = {r["iteration"]: r for r in run.read_metrics() if r.get("kind") == "health"}
    return [latest[i] for i in sorted(latest)]


def _epoch_axis(ax: Any, iters_per_epoch: float, epochs: int) -> None:
    """A second x axis on top, in epochs."""
    if iters_per_epoch <= 0:
        return
    top = ax.secondary_xaxis(
        "top", functions=(lambda it: it / iters_per_epoch, lambda ep: ep * iters_per_epoch)
    )
    top.set_xlabel("epoch")
    if epochs <= 20:
        top.set_xticks(range(0, epochs + 1))


def _ln_k(run: RunDir) -> float | None:
    ks = (run.read_config() or {}).get("model", {}).get("n_prototypes")
    return sum(math.log(k) for k in ks) / len(ks) if ks else None


def _evaluations(run: RunDir) -> list[str]:
    lines = []
    if run.demo_results.exists():
        d = json.loads(run.demo_results.read_text())
        tr, rd = d.get("trained", {}), d.get("random", {})
        for key in ("knn_top1_k20", "nmi"):
            if key in tr:
                lines.append(f"demo {key}: {tr[key]:.3g} (random init {rd.get(key, 0):.3g})")
    for path in run.eval_results():
        rec = json.loads(path.read_text())
        res = rec.get("results", {})
        figures = [f"{k} {v:.1f}" for k, v in flat_results(res).items() if isinstance(v, float)][:4]
        lines.append(f"{rec.get('protocol', path.stem)}: {', '.join(figures)}")
    return lines


def flat_results(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested result mapping as one level: {'k=20 top1': 51.2, ...}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_results(v, f"{prefix}{k} "))
        else:
            out[f"{prefix}{k}"] = v
    return out


def plot_run_curves(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run's curves to ``out`` (default ``RUN_DIR/curves.png``)."""
    run = RunDir.of(run_dir)
    rows = training_rows(run)
    if not rows:
        raise UsageError(f"{run.path} has no training records yet (metrics.jsonl): nothing to draw")
    health = _health_rows(run)
    epochs = [r for r in run.read_metrics() if r.get("kind") == "epoch"]
    its = [r["iteration"] for r in rows]
    per_epoch = epochs[-1]["iteration"] / epochs[-1]["epoch"] if epochs else 0.0
    n_epochs = int(math.ceil(its[-1] / per_epoch)) if per_epoch else 0
    plt = pyplot()
    fig, axes = plt.subplots(3, 2, figsize=(12, 10))
    ax = axes[0][0]
    ax.plot(its, [r["loss"] for r in rows], lw=0.5, alpha=0.5, label="loss per iteration")
    if epochs:
        ax.plot(
            [e["iteration"] for e in epochs],
            [e["loss"] for e in epochs],
            "o-",
            ms=3,
            label="epoch mean",
        )
    ln_k = _ln_k(run)
    if ln_k is not None:
        ax.axhline(ln_k, color="crimson", ls="--", lw=1, label=f"ln K = {ln_k:.2f}: uniform codes")
    ax.set(title="Swapped-prediction loss", xlabel="iteration", ylabel="loss")
    ax.legend()
    _epoch_axis(ax, per_epoch, n_epochs)
    _line(axes[0][1], its, [r["lr"] for r in rows], "Learning rate", "lr")
    _health_panel(axes[1][0], health, "code_entropy", "Code entropy of the batch (nats)", ln_k)
    _health_panel(axes[1][1], health, "prototypes_in_batch", "Prototypes in use in the batch", None)
    _health_panel(axes[2][0], health, "images_per_s", "Throughput (images/s)", None)
    _text_panel(axes[2][1], run, epochs)
    for a in (axes[0][1], axes[1][0], axes[1][1], axes[2][0]):
        _epoch_axis(a, per_epoch, n_epochs)
    fig.suptitle(f"SwAV pretraining: {run.path.name}", fontsize=13)
    fig.tight_layout()
    return save_figure(fig, out or run.path / "curves.png")


def _line(ax: Any, x: list[int], y: list[float], title: str, ylabel: str) -> None:
    ax.plot(x, y, lw=1.2)
    ax.set(title=title, xlabel="iteration", ylabel=ylabel)


def _health_panel(ax: Any, rows: list[dict], key: str, title: str, ln_k: float | None) -> None:
    pts = [(r["iteration"], r[key]) for r in rows if r.get(key) is not None]
    ax.set(title=title, xlabel="iteration")
    if not pts:
        ax.text(0.5, 0.5, "not recorded yet", ha="center", va="center", transform=ax.transAxes)
        return
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", lw=1.2)
    if ln_k is not None:
        ax.axhline(ln_k, color="crimson", ls="--", lw=1, label="ln K (uniform)")
        ax.legend()


def _text_panel(ax: Any, run: RunDir, epochs: list[dict]) -> None:
    ax.axis("off")
    lines = ["Health and evaluation", ""]
    bad = [r for r in run.read_metrics() if r.get("kind") in ("collapse", "recovery")]
    if epochs:
        last = epochs[-1]
        state = "healthy" if last.get("healthy", True) else "COLLAPSED"
        lines.append(f"epoch {last['epoch']}: loss {last['loss']:.3f}, {state}")
        lines.append(f"prototypes used in the epoch: {last.get('prototypes_used', '?')}")
    lines += [f"{r['kind']} at iteration {r.get('iteration')}" for r in bad[:4]]
    lines += _evaluations(run) or ["no evaluation yet (swav eval ... --checkpoint RUN_DIR)"]
    ax.text(
        0.0,
        1.0,
        "\n".join(lines),
        va="top",
        ha="left",
        fontsize=9,
        family="monospace",
        transform=ax.transAxes,
    )
