"""Render benchmarks/results/*.json into benchmarks/RESULTS.md."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _cell(m: dict, key: str, fmt: str = "{:.1f}") -> str:
    return fmt.format(m[key]) if key in m and m[key] is not None else "-"


def quality_table(records: list[dict]) -> list[str]:
    """Final figures of each run: ours, lightly's SwAV and the random network."""
    lines = [
        "| run | model | epochs (iterations) | train time | kNN k=20 | kNN k=200 | linear (fast) "
        "| cluster NMI | after warm-up near ln K |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"swav": "SwAV", "deepclusterv2": "DeepCluster-v2", "selav2": "SeLa-v2"}
    for r in records:
        given = [s.split("=", 1)[1] for s in r.get("settings", []) if s.startswith("method=")]
        method = names.get(given[-1] if given else "swav", "SwAV")
        sides = [("ours", f"{method} (this project)"), ("lightly", "lightly SwAV")]
        for key, label in sides:
            if key not in r:
                continue
            f, loss = r[key]["final"], r[key].get("loss", {})
            near = loss.get("after_warmup_near_ln_k")
            lines.append(
                f"| {r['name']} | {label} | {f['epoch']} ({r[key]['iterations']}) | "
                f"{f['train_seconds'] / 60:.1f} min | {_cell(f, 'knn_k20')} | "
                f"{_cell(f, 'knn_k200')} | {_cell(f, 'linear_fast')} | "
                f"{_cell(f, 'nmi', '{:.3f}')} | {'-' if near is None else f'{near:.0%}'} |"
            )
        for key, label in (
            ("init_weights", "starting weights alone"),
            ("random_init", "random init"),
        ):
            if key not in r:
                continue
            m = r[key]
            lines.append(
                f"| {r['name']} | {label} | | | {_cell(m, 'knn_k20')} | {_cell(m, 'knn_k200')} | "
                f"{_cell(m, 'linear_fast')} | {_cell(m, 'nmi', '{:.3f}')} | |"
            )
    return lines


ROLES = {
    "tune": "tuning",
    "diag": "tuning",
    "val": "validation",
    "warm": "warm start",
    "budget": "regression (tuned on)",
}
"""Name prefixes of the time-budget runs and the role of their data."""


def _setting(r: dict, key: str) -> str:
    given = [s.split("=", 1)[1] for s in r.get("settings", []) if s.startswith(key + "=")]
    return given[-1] if given else "-"


def _after_first_quarter(r: dict, key: str, base: float) -> str:
    """Whether every measured epoch after the first quarter is above ``base``."""
    curve = r["ours"]["curve"]
    epochs = max(c["epoch"] for c in curve)
    late = [c[key] for c in curve if c["epoch"] > epochs / 4 and key in c]
    return "-" if not late else ("yes" if min(late) > base else f"no (min {min(late):.1f})")


def budget_section(records: list[dict], colour: list[dict]) -> list[str]:
    """Runs given a time budget: the data's role, the network the recipe chose, the final
    kNN / linear against random init (and the starting weights of a warm start), whether every
    epoch after the first quarter was above random init, and the minutes to +5 / +10."""
    out = [
        "## Learning within a time budget, on data the recipe was and was not tuned on",
        "",
        "The `--data` recipe alone with a time budget (`train.time_budget`), trained in one go; "
        "the checkpoint of every epoch measured afterwards (kNN k = 20 and the fast linear "
        "probe on held-out images, against the same network randomly initialised). Rules were "
        "decided on the tuning data only; the validation data was not looked at until the "
        "rules were fixed. The learning rate was decided later, on the vehicles and on "
        "Imagenette-32 (a validation set of the first rules, then tuning data for this one): "
        "the runs at 2.4 are the recipe before that change, those at 1.2 the recipe now. "
        "'After 1/4' says whether every epoch after the first quarter of the "
        "run was above random init; 'minutes to' is the training time until kNN first reached "
        "random init + 5 / + 10 (interpolated between the measured epochs). The tuning runs "
        "were made before the plan was corrected from the first real steps, so some have "
        "fewer, longer epochs.",
        "",
        "| run | data's role | CPU | network | LARS rate | budget | steps | kNN k=20 (random) | "
        "linear (random) | after 1/4: kNN / linear | minutes to +5 / +10 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        o, m = r["ours"], r["random_init"]
        f = o["final"]
        role = ROLES.get(r["name"].split("_")[0], "-")
        start = r.get("init_weights")
        base_knn = max(m["knn_k20"], start["knn_k20"]) if start else m["knn_k20"]
        base_lin = max(m["linear_fast"], start["linear_fast"]) if start else m["linear_fast"]
        vs = f" / start {start['knn_k20']:.1f}" if start else ""
        vs_lin = f" / start {start['linear_fast']:.1f}" if start else ""
        to = _minutes_to(o).replace("never", "-")
        out.append(
            f"| {r['name']} | {role} | {r.get('cpu', '?')} | {_setting(r, 'model.arch')} | "
            f"{_setting(r, 'optim.base_lr')} | "
            f"{o.get('budget_seconds', 0) / 60:.0f} min | {o['iterations']} | "
            f"**{f['knn_k20']:.1f}** ({m['knn_k20']:.1f}{vs}) | "
            f"**{f['linear_fast']:.1f}** ({m['linear_fast']:.1f}{vs_lin}) | "
            f"{_after_first_quarter(r, 'knn_k20', base_knn)} / "
            f"{_after_first_quarter(r, 'linear_fast', base_lin)} | {to} |"
        )
    out += time_to_accuracy([r for r in records if "lightly" in r])
    out += ["", "Commands (the data folders are written by `benchmarks/subsets.py`):", ""]
    out += [f"- `{r['command']}`" for r in records]
    out += [f"- `{r['peer_command']}`" for r in records if r.get("peer_command")] + [""]
    notes = [f"- `{r['name']}`: {r['note']}" for r in records if r.get("note")]
    out += ["Notes:", "", *notes, ""] if notes else []
    if colour:
        out += [
            "What a random network's kNN rests on (`benchmarks/colour_baseline.py`): a colour "
            "histogram alone (no network), the random network, and the same network given the "
            "images in grey, on the same held-out images and kNN bank (kNN k = 20 / fast linear):",
            "",
            "| data | network | colour histogram | random network | random network, grey | "
            "trained | trained, grey |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in colour:
            cells = [
                f"{c[k]['knn_k20']:.1f} / {c[k]['linear_fast']:.1f}" if k in c else "-"
                for k in (
                    "colour_histogram",
                    "random_network",
                    "random_network_grey",
                    "trained",
                    "trained_grey",
                )
            ]
            out.append(f"| {c['name']} | {c['arch']} | " + " | ".join(cells) + " |")
        out += ["", "Commands:", ""] + [f"- `{c['command']}`" for c in colour] + [""]
    return out


def _minutes_to(side: dict) -> str:
    minutes = side.get("minutes_to", {})
    return " / ".join(
        "never" if minutes.get(k) is None else f"{minutes[k]:.1f}"
        for k in ("random+5", "random+10")
    )


def time_to_accuracy(records: list[dict]) -> list[str]:
    """Minutes each side trained until its kNN reached random init + 5 / + 10, at equal
    settings (the same network, crops, batches and epochs as our budget run planned)."""
    if not records:
        return []
    out = [
        "",
        "Time to accuracy, ours against lightly's SwAV at equal settings: lightly trains the "
        "same network on the same crops and batches for as many epochs as our run planned "
        "for its budget, with its own hyper-parameters (`benchmarks/lightly_swav.py`), and "
        "is measured at the same epochs. Minutes of training (measurements excluded) until "
        "kNN k = 20 first reached random init + 5 / + 10:",
        "",
        "| run | epochs | ours: minutes to +5 / +10 | lightly: minutes to +5 / +10 | "
        "ours: kNN at the end (minutes) | lightly: kNN at the end (minutes) |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        o, p = r["ours"], r["lightly"]

        def end(side: dict) -> str:
            f = side["final"]
            return f"{f['knn_k20']:.1f} ({(f.get('train_seconds') or 0) / 60:.1f})"

        out.append(
            f"| {r['name']} | {o['final']['epoch']} | {_minutes_to(o)} | {_minutes_to(p)} | "
            f"{end(o)} | {end(p)} |"
        )
    return out


def quality_curves(records: list[dict]) -> list[str]:
    """kNN (k = 20) at each measured epoch, and the mean loss of that epoch."""
    out = []
    for r in records:
        out += [f"`{r['name']}` (random init kNN k=20: {r['random_init']['knn_k20']:.1f}):", ""]
        out += ["| epoch | ours kNN k=20 | ours loss | lightly kNN k=20 | lightly loss |"]
        out += ["|---|---|---|---|---|"]
        sides = [r.get("ours", {}), r.get("lightly", {})]
        epochs = sorted({c["epoch"] for side in sides for c in side.get("curve", [])})
        for epoch in epochs:
            cells = []
            for side in sides:
                knn = {c["epoch"]: c["knn_k20"] for c in side.get("curve", [])}.get(epoch)
                loss = side.get("loss", {}).get("epoch_loss", {}).get(str(epoch))
                cells += [
                    "-" if knn is None else f"{knn:.1f}",
                    "-" if loss is None else f"{loss:.3f}",
                ]
            out.append(f"| {epoch} | " + " | ".join(cells) + " |")
        out.append("")
    return out


def _rss(r: dict) -> str:
    if "peak_rss_mb_ours" not in r:
        return ""
    return f"; peak RSS ours / peer {r['peak_rss_mb_ours']:.0f} / {r['peak_rss_mb_peer']:.0f} MB"


def _peer_row(label: str, ours: float, peer: str, r: dict, notes: str) -> str:
    """One row of a speed table: ours, the peer, their ratio, notes, the command."""
    return f"| {label} | {ours} | {peer} | {r['speedup']}x | {notes}{_rss(r)} | `{r['command']}` |"


def _precisions(r: dict) -> str:
    ours, peer = r["precision_ours"], r.get("precision_lightly", "fp32")
    return ours if ours == peer else f"ours {ours}, lightly {peer}"


def data_section(d: dict) -> list[str]:
    """Listing a dataset (cached or not), loader images/s per worker, cores split."""
    m = d.get("machine", {})
    out = [
        "## Data at scale",
        "",
        f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
        f"{m.get('cpu_capability', '?')}, torch {m.get('torch', '?')}. GPU: {m.get('gpu', '?')}.",
        "",
    ]
    if "listing" in d:
        out += [
            "Opening a dataset in a fresh process (`swav.data.sources.open_source`): time and "
            f"resident memory added (`{d['listing']['command']}`).",
            "",
            "| dataset | images | uncached | first open, cache on | cached | cached vs uncached |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in d["listing"].items():
            if not isinstance(r, dict):
                continue
            cells = [
                f"{r[k]['seconds']:.3g} s, "
                + (f"{r[k]['rss_mb']:.0f}" if r[k]["rss_mb"] >= 10 else f"{r[k]['rss_mb']:.2g}")
                + " MB"
                for k in ("uncached", "first_open_with_cache", "cached")
            ]
            out.append(
                f"| {name} | {r['cached']['images']:,} | " + " | ".join(cells) + " | "
                f"{r['speedup_cached_vs_uncached']}x faster, "
                f"{r['memory_ratio_uncached_vs_cached']}x less memory |"
            )
        out.append("")
    if "loader" in d:
        r = d["loader"]
        out += [
            "Loader: 2 x 224 + 6 x 96 crops of a 500 x 375 JPEG, decode included, the main "
            f"process only receiving batches (`{r['command']}`).",
            "",
            "| workers | crops as | images/s | per worker | MB per image |",
            "|---|---|---|---|---|",
        ]
        for key, v in r.items():
            if isinstance(v, dict):
                workers, _, transfer = key.split("_", 2)
                out.append(
                    f"| {workers} | {transfer.replace('workers_', '')} | {v['images_per_s']} | "
                    f"{v['images_per_s_per_worker']} | {v['mb_per_image']} |"
                )
        out += [
            "",
            f"One GPU fed at 1,000 / 2,500 images/s needs about {r['workers_for_1000_img_s']} / "
            f"{r['workers_for_2500_img_s']} such workers (cores), or `multicrop.on_device`.",
            "",
        ]
    if "cores" in d:
        r = d["cores"]
        out += [
            "Training images/s of the Imagenette recipe (ResNet-18, 2 x 64 + 4 x 32, batch 64) "
            f"by split of the cores (`{r['command']}`):",
            "",
            "| split | images/s | printed at start |",
            "|---|---|---|",
        ]
        out += [
            f"| {k} | {v['images_per_s']} | {v['split']} |"
            for k, v in r.items()
            if isinstance(v, dict)
        ]
        out.append("")
    return out


def perf_section(p: dict) -> list[str]:
    """The speed tables of one machine's `perf.py` record."""
    m, peak = p["machine"], p["peak"]
    bf16 = m.get("bf16_instructions") or m["cpu_capability"]
    emulated = " (emulated)" if peak["bf16"] < peak["fp32"] else ""
    out = [
        f"## Speed on {bf16}, side by side in one run (alternating)",
        "",
        f"Machine: {m['cpu']}, {m['threads']} threads, {m['cpu_capability']}, "
        f"torch {m['torch']}. Matmul peak: fp32 {peak['fp32']} GFLOP/s, "
        f"bf16 {peak['bf16']} GFLOP/s{emulated}." + (f" {p['note']}" if p.get("note") else ""),
        "",
        "| benchmark | ours | peer | ratio | notes | command |",
        "|---|---|---|---|---|---|",
    ]
    for key in ("resnet18", "resnet50"):
        if key in p:
            r = p[key]
            notes = (
                f"{r['crops']}, batch {r['batch']}, {_precisions(r)}; "
                f"{r['flops_per_step_G']} GFLOP performed per step "
                f"({r.get('nominal_flops_per_step_G', '?')} counted the usual way), "
                f"{r['achieved_GFLOPs']} GFLOP/s = {r['fraction_of_peak']:.0%} of peak"
            )
            if len(r.get("speedup_per_round", [])) > 1:
                rounds = r["speedup_per_round"]
                notes += (
                    f"; ratio per round {min(rounds)}x to {max(rounds)}x over {len(rounds)} rounds"
                )
            if "lightly_kept_images_per_s" in r:
                notes += (
                    "; each side in its own process; lightly with our freed-memory setting "
                    f"{r['lightly_kept_images_per_s']} images/s, ours "
                    f"{r['speedup_vs_lightly_kept']}x that"
                )
            label, peer = (
                f"training step {r['arch']} (images/s)",
                f"lightly {r['lightly_images_per_s']}",
            )
            out.append(_peer_row(label, r["ours_images_per_s"], peer, r, notes))
    if "multicrop" in p:
        r = p["multicrop"]
        peer = f"lightly SwaVTransform {r['lightly_images_per_s']}"
        notes = f"{r['crops']} from a {r['image']}, 1 thread"
        out.append(
            _peer_row("multi-crop (images/s per core)", r["ours_images_per_s"], peer, r, notes)
        )
    if "sinkhorn" in p:
        r = p["sinkhorn"]
        notes = f"B={r['B']}, K={r['K']}, {r['iterations']} iterations, {r['dtype']}"
        for load in (1, 2):
            if f"ours_ms_busy{load}" in r:
                notes += (
                    f"; beside {load} busy process(es): {r[f'ours_ms_busy{load}']} vs "
                    f"{r[f'naive_ms_busy{load}']} ms = {r[f'speedup_busy{load}']}x"
                )
        out.append(
            _peer_row("Sinkhorn (ms)", r["ours_ms"], f"naive formula {r['naive_ms']}", r, notes)
        )
    out.append("")
    if "contention" in p:
        out += contention_section(p["contention"])
    if "contention" in p and "contention_omp_passive" in p:
        out += passive_line(p["contention"], p["contention_omp_passive"])
    if "conv" in p:
        r = p["conv"]
        out += [
            "Small feature maps: one convolution, forward + backward (input and weight "
            f"gradients), fp32, channels-last; tap-by-tap matrix products against oneDNN "
            f"(`{r['command']}`). The tap path is used where the output map has at most "
            "3 x 3 pixels.",
            "",
            "| convolution | tap products (ms) | oneDNN (ms) | ratio | used |",
            "|---|---|---|---|---|",
        ]
        for c in r["shapes"]:
            used = "yes" if c["tap_path_used"] else "no"
            out.append(
                f"| {c['shape']} | {c['tap_ms']} | {c['onednn_ms']} | {c['speedup']}x | {used} |"
            )
        out.append("")
    return out


def passive_line(spin: dict, passive: dict) -> list[str]:
    """The same comparison with OpenMP threads that sleep instead of spinning while they wait."""
    loads = [k for k in spin["loads"] if k in passive["loads"]]
    rates = "; ".join(
        f"{k.split('_')[0]} busy: {passive['loads'][k]['ours_default_10min']} against "
        f"{spin['loads'][k]['ours_default_10min']}"
        for k in loads
    )
    return [
        "OpenMP's wait policy: the same run with `OMP_WAIT_POLICY=PASSIVE` (threads sleep "
        "instead of spinning while they wait; `" + passive["command"] + "`), the default "
        f"budget's images/s over 10 minutes against the default (spinning) policy: {rates}.",
        "",
    ]


def contention_section(c: dict) -> list[str]:
    """The step beside busy processes: the default thread budget against each fixed count."""
    fixed = sorted(
        {
            int(k.split("_")[1])
            for row in c["loads"].values()
            for k in row
            if k.endswith("_threads")
        },
        reverse=True,
    )
    head = " | ".join(f"ours {n} thread(s)" for n in fixed)
    peer = " | ".join(f"lightly {n} thread(s)" for n in fixed)
    out = [
        f"The training step on a machine that is not empty ({c['setup']}, images/s; "
        f"`{c.get('command', 'python benchmarks/perf.py --only contention')}`). The default "
        "budget starts with every core and keeps the count its timed steps found fastest "
        "(`swav.engine.threads`); its trial is timed, and since a run makes one every 10 "
        "minutes at most, its rate over 10 minutes is the trial's images plus the kept "
        "count's rate for the rest." + (f" {c['peer_note']}" if c.get("peer_note") else ""),
        "",
        f"| busy processes | default: trial (s) | default: kept | default over 10 min | {head} "
        f"| best fixed / default | {peer} | default / lightly's default |",
        "|---|---|---|---|" + "---|" * len(fixed) + "---|" + "---|" * len(fixed) + "---|",
    ]
    for load, r in c["loads"].items():
        ours = " | ".join(str(r[f"ours_{n}_threads"]) for n in fixed)
        theirs = " | ".join(str(r[f"lightly_{n}_threads"]) for n in fixed)
        out.append(
            f"| {load.split('_')[0]} | {r['ours_default_trial_s']} | {r['ours_default_kept']} "
            f"| {r['ours_default_10min']} | {ours} | {r['best_fixed_vs_default']}x | {theirs} "
            f"| {r['ours_default_vs_lightly_default']}x |"
        )
    return [*out, ""]


def startup_section(r: dict) -> list[str]:
    """How fast the command answers without doing work."""
    out = [
        "## Start-up: help, listings and argument errors",
        "",
        f"`{r['command']}`: each command's median of 5 runs against `python -c pass` "
        f"({r['python_c_pass_s']} s) in the same run, on {r['cores']} core(s) "
        f"(load average {r['load_1min']} while measured). Slowest: {r['slowest_s']} s. None "
        "imports torch; `tests/test_startup.py` holds each to 0.5 s.",
        "",
        "| command | seconds | x python -c pass | imported |",
        "|---|---|---|---|",
    ]
    out += [
        f"| `{c['command']}` | {c['seconds']} | {c['ratio_to_python']} | {c['imported']} |"
        for c in r["commands"]
    ]
    return [*out, ""]


def main() -> None:
    out = [
        "# Recorded benchmark results",
        "",
        "Produced by the commands below on 2-core CPU machines of three kinds: AVX2 only "
        "(fp32), AVX-512 BF16 without AMX (bf16) and AMX (bf16). Each speed section names its "
        "kind and each quality record its CPU. Regenerate this page with "
        "`python benchmarks/report.py`.",
        "",
    ]
    quality = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("quality_*.json"))]
    quality = [q for q in quality if "random_init" in q and ("ours" in q or "lightly" in q)]
    budgeted = [q for q in quality if q["name"].split("_")[0] in ROLES and "ours" in q]
    quality = [q for q in quality if q not in budgeted]
    colour = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("colour_*.json"))]
    if budgeted:
        out += budget_section(budgeted, colour)
    if quality:
        out += ["## Pretraining quality (trained vs random init vs lightly, same budget)", ""]
        out += quality_table(quality)
        out += ["", "Per epoch:", ""]
        out += quality_curves(quality)
        out += [
            "Each run trains one configuration epoch by epoch and measures the backbone after "
            "every epoch (kNN on held-out images); lightly's SwAV trains the same network on "
            "the same crops, batches and number of steps with the hyper-parameters of lightly's "
            "own benchmark script (`benchmarks/lightly_swav.py`). 'After warm-up near ln K' is "
            "the share of iterations after the warm-up whose loss sat within 1 % of ln K. "
            f"CPU: {quality[0].get('cpu', '?')}.",
            "",
            "Commands:",
            "",
        ]
        for r in quality:
            out.append(f"- `{r['command']}`")
            if r.get("peer_command"):
                out.append(f"  (lightly's side, measured separately: `{r['peer_command']}`)")
        out += [""]
        notes = [f"- `{r['name']}`: {r['note']}" for r in quality if r.get("note")]
        out += ["Notes:", "", *notes, ""] if notes else []
    data_path = HERE / "results" / "data.json"
    if data_path.exists():
        out += data_section(json.loads(data_path.read_text()))
    for perf_path in sorted((HERE / "results").glob("perf_*.json")):
        out += perf_section(json.loads(perf_path.read_text()))
    startup_path = HERE / "results" / "startup.json"
    if startup_path.exists():
        out += startup_section(json.loads(startup_path.read_text()))
    prec_path = HERE / "results" / "precision.json"
    if prec_path.exists():
        r = json.loads(prec_path.read_text())
        out += [
            "## bf16 autocast against fp32",
            "",
            f"{r['steps']} iterations of the `{r['preset']}` preset with the training engine on "
            f"this CPU ({r['cpu_capability']}: bf16 is emulated, hence the time); distances "
            f"between moving averages of the loss over {r['window']} iterations (plot: "
            "[`results/precision.png`](results/precision.png)).",
            "",
            "| runs compared | mean distance | max distance |",
            "|---|---|---|",
            f"| bf16 seed 0 vs fp32 seed 0 | {r['gap_bf16_vs_fp32']['mean']} | "
            f"{r['gap_bf16_vs_fp32']['max']} |",
        ]
        for pair, g in r["gaps_between_fp32_seeds"].items():
            out.append(f"| {pair} (noise) | {g['mean']} | {g['max']} |")
        finals = ", ".join(f"{k} {v}" for k, v in r["final_loss"].items())
        times = ", ".join(f"{k} {v} s" for k, v in r["seconds"].items())
        out += [
            "",
            f"Final loss (mean of the last {r['window']} iterations): {finals}. Time: {times}.",
            f"bf16 within noise: {'yes' if r['within_noise'] else 'no'}. Command: `{r['command']}`",
            "",
        ]
    (HERE / "RESULTS.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))


if __name__ == "__main__":
    main()
