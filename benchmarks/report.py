"""Render benchmarks/results/*.json into benchmarks/RESULTS.md."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def quality_table(records: list[dict]) -> list[str]:
    lines = [
        "| run | epochs (iterations) | train time | peak RSS | model | kNN k=20 | kNN k=200 "
        "| linear (fast) | cluster NMI |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        for side in ("trained", "random_init"):
            m = r[side]
            name = f"{r['name']}" if side == "trained" else ""
            ep = f"{r['epochs']} ({r['iterations']})" if side == "trained" else ""
            tt = f"{r['train_seconds'] / 60:.1f} min" if side == "trained" else ""
            mem = f"{r['peak_rss_mb'] / 1024:.1f} GB" if side == "trained" else ""
            label = "SwAV" if side == "trained" else "random init"
            lines.append(
                f"| {name} | {ep} | {tt} | {mem} | {label} | {m['knn_k20']:.1f} | "
                f"{m['knn_k200']:.1f} | {m['linear_fast']:.1f} | {m.get('nmi', float('nan')):.3f} |"
            )
    return lines


def _rss(r: dict) -> str:
    if "peak_rss_mb_ours" not in r:
        return ""
    return f"; peak RSS ours / peer {r['peak_rss_mb_ours']:.0f} / {r['peak_rss_mb_peer']:.0f} MB"


def main() -> None:
    out = [
        "# Recorded benchmark results",
        "",
        "Produced by the commands below on a 2-core CPU machine (AMD EPYC, AVX2, no AVX-512 / "
        "bf16 instructions, so the speed figures are fp32). Regenerate this page with "
        "`python benchmarks/report.py`.",
        "",
    ]
    quality = [json.loads(p.read_text()) for p in sorted((HERE / "results").glob("quality_*.json"))]
    if quality:
        out += ["## Pretraining quality (trained vs randomly initialised backbone)", ""]
        out += quality_table(quality)
        out += [
            "",
            "The quality runs use the presets with the overrides in their commands so that they "
            "fit a 2-core CPU: ResNet-18 at half width, a 32-d embedding with 100 prototypes and "
            "temperature 0.2, no queue, 3 epochs on a subset. The two runs ran at the same time, "
            "one thread and one loader worker each (`OMP_NUM_THREADS=1`, `data.workers=1`), so "
            "their times are those of one core. A queue started this early (epoch 1) made the "
            "codes of each batch concentrate on a few prototypes and the loss return to ln K in "
            "an earlier attempt; the engine now warns about that.",
            "",
            "Commands:",
            "",
        ]
        out += [f"- `OMP_NUM_THREADS=1 {r['command']}`" for r in quality]
        out += [""]
    perf_path = HERE / "results" / "perf.json"
    if perf_path.exists():
        p = json.loads(perf_path.read_text())
        out += [
            "## Speed, side by side in one process (alternating)",
            "",
            f"Machine: {p['machine']['cpu']}, {p['machine']['threads']} threads, "
            f"{p['machine']['cpu_capability']}, torch {p['machine']['torch']}. Matmul peak: "
            f"fp32 {p['peak']['fp32']} GFLOP/s, bf16 {p['peak']['bf16']} GFLOP/s (emulated).",
            "",
        ]
        out += [
            "| benchmark | ours | peer | ratio | notes | command |",
            "|---|---|---|---|---|---|",
        ]
        for key in ("resnet18", "resnet50"):
            if key in p:
                r = p[key]
                notes = (
                    f"{r['crops']}, batch {r['batch']}, {r['precision_ours']}; "
                    f"{r['flops_per_step_G']} GFLOP performed per step "
                    f"({r.get('nominal_flops_per_step_G', '?')} counted the usual way), "
                    f"{r['achieved_GFLOPs']} GFLOP/s = {r['fraction_of_peak']:.0%} of peak"
                )
                if len(r.get("speedup_per_round", [])) > 1:
                    rounds = r["speedup_per_round"]
                    notes += (
                        f"; ratio per round {min(rounds)}x to {max(rounds)}x "
                        f"over {len(rounds)} rounds"
                    )
                notes += _rss(r)
                out.append(
                    f"| training step {r['arch']} (images/s) | {r['ours_images_per_s']} | "
                    f"lightly {r['lightly_images_per_s']} | {r['speedup']}x | {notes} | "
                    f"`{r['command']}` |"
                )
        if "multicrop" in p:
            r = p["multicrop"]
            notes = f"{r['crops']} from a {r['image']}, 1 thread"
            notes += _rss(r)
            out.append(
                f"| multi-crop (images/s per core) | {r['ours_images_per_s']} | lightly "
                f"SwaVTransform {r['lightly_images_per_s']} | {r['speedup']}x | {notes} | "
                f"`{r['command']}` |"
            )
        if "sinkhorn" in p:
            r = p["sinkhorn"]
            notes = f"B={r['B']}, K={r['K']}, {r['iterations']} iterations, {r['dtype']}"
            notes += _rss(r)
            out.append(
                f"| Sinkhorn (ms) | {r['ours_ms']} | naive formula {r['naive_ms']} | "
                f"{r['speedup']}x | {notes} | `{r['command']}` |"
            )
        out.append("")
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
                    f"| {c['shape']} | {c['tap_ms']} | {c['onednn_ms']} | {c['speedup']}x | "
                    f"{used} |"
                )
            out.append("")
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
