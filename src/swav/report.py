"""A run's results in one page: ``RUN_DIR/REPORT.md`` from the configuration, the last epoch's
metrics, the evaluation results and the demo's comparison."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from swav.engine.run_dir import RunDir
from swav.eval.protocols import format_result

DEMO_ROWS = [
    ("kNN top-1, k=10 (%)", "knn_top1_k10", "{:.1f}"),
    ("kNN top-1, k=20 (%)", "knn_top1_k20", "{:.1f}"),
    ("prototype clusters: NMI", "nmi", "{:.3f}"),
    ("prototype clusters: ARI", "ari", "{:.3f}"),
    ("prototype clusters: Hungarian acc. (%)", "hungarian_acc", "{:.1f}"),
    ("prototypes in use", "prototypes_used", "{}"),
]


def format_demo_report(report: dict[str, Any]) -> str:
    """The demo's table: the trained model next to the randomly initialised one."""
    tr, rd = report["trained"], report["random"]
    w = max(len(r[0]) for r in DEMO_ROWS)
    title = f"held-out digits ({tr['n_test']} images)"
    lines = [f"{title:<{w}}  {'SwAV':>8}  {'random init':>11}"]
    for name, key, fmt in DEMO_ROWS:
        if key in tr:
            lines.append(f"{name:<{w}}  {fmt.format(tr[key]):>8}  {fmt.format(rd[key]):>11}")
    return "\n".join(lines)


def _pretraining_lines(run: RunDir) -> list[str]:
    c = run.read_config()
    if c is None:
        return []
    return [
        "## Pretraining",
        "",
        f"- data: `{c['data']['source']}` (split `{c['data']['split']}`)",
        f"- model: {c['model']['arch']}, prototypes {c['model']['n_prototypes']}",
        f"- crops: {c['multicrop']['n_crops']} x {c['multicrop']['sizes']} px",
        f"- optimiser: {c['optim']['optimizer']} lr {c['optim']['base_lr']}, "
        f"batch {c['train']['batch_size']}, epochs {c['train']['epochs']}",
    ]


def write_report(run_dir: str | Path) -> Path:
    """Gather a run's results (eval/*.json, demo_results.json, the last epoch's metrics) into
    ``run_dir/REPORT.md``."""
    run = RunDir.of(run_dir)
    parts = [f"# Report: {run.path.name}", "", *_pretraining_lines(run)]
    epochs = [m for m in run.read_metrics() if m.get("kind") == "epoch"]
    if epochs:
        e = epochs[-1]
        parts.append(
            f"- last epoch {e['epoch']}: loss {e['loss']:.4f}, prototypes used "
            f"{e['prototypes_used']}"
        )
    if run.loss_plot.exists():
        parts += ["", f"![loss]({run.loss_plot.name})"]
    results = run.eval_results()
    if results:
        parts += ["", "## Evaluation", ""]
        for r in results:
            parts += ["```", format_result(json.loads(r.read_text())), "```", ""]
    if run.demo_results.exists():
        demo = json.loads(run.demo_results.read_text())
        parts += ["## Demo", "", "```", format_demo_report(demo), "```"]
    run.report.write_text("\n".join(parts) + "\n")
    return run.report
