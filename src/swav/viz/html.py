"""One self-contained HTML page per run (``RUN_DIR/report.html``): configuration, curves,
evaluation tables, prototype galleries, the embedding map and the run's health warnings. Every
picture is embedded in the page (it opens from disk, without a server); the links point only
at files of the run directory that exist."""

from __future__ import annotations

import base64
import html
import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from swav.engine.run_dir import RunDir
from swav.errors import SwAVError
from swav.viz.clusters import draw_gallery, draw_usage, prototype_groups
from swav.viz.curves import flat_results, plot_run_curves
from swav.viz.data import ViewData, load_view
from swav.viz.embedding import draw_embedding, project_2d

log = logging.getLogger(__name__)

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222;
       line-height: 1.45; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; font-size: .92em; }
th { background: #f3f3f3; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
.warn { background: #fff3cd; border-left: 4px solid #d39e00; padding: .5em 1em; }
.ok { background: #e8f5e9; border-left: 4px solid #2e7d32; padding: .5em 1em; }
pre { background: #f7f7f7; padding: .8em; overflow-x: auto; font-size: .85em; }
"""

# Marks the page once every picture has loaded (read by tests from the rendered page).
SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
"""


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _table(rows: list[tuple[str, Any]], head: tuple[str, str] | None = None) -> str:
    out = ["<table>"]
    if head:
        out.append(f"<tr><th>{html.escape(head[0])}</th><th>{html.escape(head[1])}</th></tr>")
    for k, v in rows:
        out.append(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def _health(run: RunDir) -> str:
    records = run.read_metrics()
    unhealthy = [r for r in records if r.get("kind") == "health" and not r.get("healthy", True)]
    events = [r for r in records if r.get("kind") in ("collapse", "recovery")]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    corrupt = epochs[-1].get("corrupt_images", 0) if epochs else 0
    items = []
    if unhealthy:
        first, last = unhealthy[0], unhealthy[-1]
        items.append(
            f"health signals out of range at {len(unhealthy)} log points, iterations "
            f"{first['iteration']} to {last['iteration']} (code entropy "
            f"{last.get('code_entropy', float('nan')):.3f}, prototypes in the batch "
            f"{last.get('prototypes_in_batch')})"
        )
    items += [
        f"{e['kind']} at iteration {e.get('iteration')}: "
        f"{html.escape(json.dumps({k: v for k, v in e.items() if k != 'kind'}))}"
        for e in events
    ]
    if corrupt:
        items.append(f"{corrupt} unreadable images were skipped")
    if epochs and not epochs[-1].get("healthy", True):
        items.append("the last epoch ended COLLAPSED: see the README on what to change")
    if not items:
        return '<p class="ok">No health warning: the codes stayed spread over the prototypes.</p>'
    return '<div class="warn"><ul>' + "".join(f"<li>{i}</li>" for i in items) + "</ul></div>"


def _config(run: RunDir) -> str:
    c = run.read_config()
    if not c:
        return "<p>No configuration recorded.</p>"
    rows = [
        ("data", f"{c['data']['source']} (split '{c['data']['split']}')"),
        ("backbone", c["model"]["arch"]),
        ("prototypes", c["model"]["n_prototypes"]),
        ("crops", f"{c['multicrop']['n_crops']} x {c['multicrop']['sizes']} px"),
        ("optimiser", f"{c['optim']['optimizer']}, base lr {c['optim']['base_lr']}"),
        ("batch", f"{c['train']['batch_size']} per process"),
        ("epochs", c["train"]["epochs"]),
        ("queue", f"{c['swav']['queue_length']} from epoch {c['swav']['epoch_queue_starts']}"),
    ]
    full = html.escape(yaml.safe_dump(c, sort_keys=False))
    return _table(rows) + f"<details><summary>every setting</summary><pre>{full}</pre></details>"


def _evaluations(run: RunDir) -> str:
    parts = []
    demo = run.demo_results
    if demo.exists():
        d = json.loads(demo.read_text())
        keys = [k for k in d.get("trained", {}) if isinstance(d["trained"][k], int | float)]
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{d['trained'][k]:.3g}</td>"
            f"<td>{d['random'].get(k, float('nan')):.3g}</td></tr>"
            for k in keys
        )
        parts.append(
            "<h3>Demo: trained vs random init</h3><table><tr><th>metric</th>"
            f"<th>SwAV</th><th>random init</th></tr>{rows}</table>"
        )
    for path in run.eval_results():
        rec = json.loads(path.read_text())
        flat = {
            k: f"{v:.4g}" if isinstance(v, float) else v
            for k, v in flat_results(rec.get("results", {})).items()
        }
        split = rec.get("test_split", "")
        title = f"{rec.get('protocol', path.stem)} on {rec.get('data', '?')} ({split})"
        parts.append(f"<h3>{html.escape(title)}</h3>" + _table(list(flat.items()), ("", "")))
    return (
        "\n".join(parts)
        or "<p>No evaluation yet: <code>swav eval knn --checkpoint RUN_DIR</code>.</p>"
    )


def _pictures(run: RunDir, folder: Path, view: ViewData | str | None) -> str:
    """Galleries, usage and embedding of ``view`` (or the reason there are none)."""
    if view is None:
        return "<p>No checkpoint yet: galleries appear once an epoch has finished.</p>"
    if isinstance(view, str):
        return f"<p>Galleries not drawn: {html.escape(view)}</p>"
    parts = []
    if view.scores is not None:
        groups = prototype_groups(view.scores, view.source, top=8, count=8)
        parts.append("<h3>Most used prototypes</h3>")
        parts.append(_img(draw_gallery(groups, view.source, folder / "gallery.png"), "gallery"))
        parts.append(_img(draw_usage(view.scores, folder / "usage.png"), "prototype usage"))
    xy, method = project_2d(view.features)
    protos = view.assignments().numpy() if view.scores is not None else None
    emb = draw_embedding(xy, method, view.source, folder / "embedding.png", protos)
    parts += ["<h3>Embedding map</h3>", _img(emb, "embedding")]
    note = f" ({view.skipped} unreadable images left out)" if view.skipped else ""
    parts.insert(0, f"<p>{len(view.source)} images of {html.escape(view.source.origin)}{note}.</p>")
    return "\n".join(parts)


def write_html_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    data: str | None = None,
    limit: int = 1000,
    pictures: bool = True,
    progress: bool = True,
) -> Path:
    """Write ``RUN_DIR/report.html`` (or ``out``) and return its path."""
    run = RunDir.of(run_dir)
    if not run.path.is_dir():
        raise SwAVError(f"{run.path} is not a run directory")
    view: ViewData | str | None = None
    if pictures and run.checkpoint.exists():
        try:  # before anything is written
            view = load_view(str(run.path), data, None, limit, progress=progress)
        except SwAVError as e:
            if data is not None:  # the images asked for: refused, not left out in silence
                raise
            view = str(e)  # the run's own data, moved or gone: the page says so
    folder = run.path / "report"
    out = Path(out) if out else run.path / "report.html"
    body = [f"<h1>SwAV run: {html.escape(run.path.name)}</h1>", "<h2>Health</h2>", _health(run)]
    body += ["<h2>Configuration</h2>", _config(run), "<h2>Curves</h2>"]
    if run.read_metrics():
        body.append(_img(plot_run_curves(run.path, folder / "curves.png"), "curves"))
    else:
        body.append("<p>No training record yet.</p>")
    body += ["<h2>Evaluation</h2>", _evaluations(run)]
    if pictures:
        body += [
            "<h2>What the prototypes learned</h2>",
            _pictures(run, folder, view),
        ]
    files = [p for p in (run.checkpoint, run.config, run.metrics, run.loss_plot) if p.exists()]
    links = " · ".join(f'<a href="{html.escape(_rel(p, out))}">{p.name}</a>' for p in files)
    body += ["<h2>Files</h2>", f"<p>{links}</p>"]
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>SwAV run {html.escape(run.path.name)}</title><style>{CSS}</style>"
        f"<script>{SCRIPT}</script></head><body>{''.join(body)}</body></html>"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out


def _rel(path: Path, page: Path) -> str:
    """``path`` relative to the folder of ``page`` (links that work wherever the run is)."""
    return Path(os.path.relpath(path.resolve(), page.parent.resolve())).as_posix()
