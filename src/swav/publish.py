"""Models on the Hugging Face Hub: the folder a push uploads (``swav.interop.model_folder``
plus a model card generated from the run), and the upload.

The model card (``README.md``) says what the model is and how to load it (timm, swav), and for
a run: its data, recipe, curves (``loss.png`` and a table of epochs), evaluation results and the
command that reproduces it. Uploading needs ``huggingface_hub`` (``pip install 'swav[hub]'``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from swav.engine.run_dir import RunDir
from swav.interop.model_folder import HubError, require_hub, timm_architecture, write_model_folder


def write_hub_folder(
    source: str | Path,
    folder: str | Path,
    *,
    repo_id: str,
    license: str | None = None,
    download: bool = False,
) -> list[Path]:
    """The folder a push uploads: a run directory, a checkpoint file (any known layout) or a
    released name, with its model card. Nothing is uploaded here."""
    from swav.interop.checkpoints import load_checkpoint

    loaded = load_checkpoint(source, download=download)
    run = _run_of(source)
    folder = Path(folder)
    timm_arch = timm_architecture(loaded.model, loaded.arch)
    card = model_card(
        repo_id,
        arch=loaded.arch,
        timm=timm_arch is not None,
        pretraining=loaded.pretraining,
        run=run,
        license=license,
        layout=loaded.layout,
    )
    written = write_model_folder(
        loaded.model,
        folder,
        arch=loaded.arch,
        timm_arch=timm_arch,
        pretraining=loaded.pretraining or None,
        classifier=loaded.classifier.linear if loaded.classifier is not None else None,
        card=card,
        extra={"source": loaded.meta.get("source"), "layout": loaded.layout},
    )
    if run is not None and run.loss_plot.is_file():
        shutil.copyfile(run.loss_plot, folder / "loss.png")
        written.append(folder / "loss.png")
    return written


def _run_of(source: str | Path) -> RunDir | None:
    """The run directory ``source`` is, or whose checkpoint it is; None for other files."""
    p = Path(source).expanduser()
    if p.is_file() and p.name in ("checkpoint.pt", "checkpoint_healthy.pt"):
        p = p.parent
    elif p.is_file() and p.parent.name == "checkpoints":
        p = p.parent.parent
    if p.is_dir() and (p / "config.yaml").is_file():
        return RunDir(p)
    return None


def reproduce_command(pretraining: dict[str, Any]) -> str:
    """``swav pretrain --preset defaults`` with every setting that differs from the defaults
    (run-length and logistics included, so that the same run is made)."""
    from swav.config import Config

    defaults = Config().to_dict()
    args = []
    for section, values in pretraining.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if section == "data" and key == "root":
                    continue  # where this machine caches datasets
                if section == "data" and key == "source" and "/" in str(value):
                    value = Path(str(value)).name  # the data by name: no local path
                if defaults.get(section, {}).get(key) != value:
                    args.append(f"{section}.{key}={_arg(value)}")
        elif section != "run_dir" and defaults.get(section) != values:
            args.append(f"{section}={_arg(values)}")
    return " \\\n    ".join(["swav pretrain --preset defaults", *args])


def _arg(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict | bool) else str(value)
    text = text.replace(" ", "")
    return f"'{text}'" if any(c in text for c in "[]{}\"'*?") else text


def model_card(
    repo_id: str,
    *,
    arch: str,
    timm: bool,
    pretraining: dict[str, Any],
    run: RunDir | None,
    license: str | None = None,
    layout: str = "",
) -> str:
    """The model card (``README.md``): front matter, what the model is, how to load it, and,
    for a run, its data, recipe, curves, evaluation results and the command that made it."""
    from swav.eval.protocols import format_result

    front = ["---", "library_name: " + ("timm" if timm else "swav"), "tags:"]
    front += ["- swav", "- self-supervised-learning", "- image-feature-extraction"]
    front += ["- timm"] if timm else []
    front += ["pipeline_tag: image-feature-extraction"]
    if license:
        front.append(f"license: {license}")
    front.append("---")
    lines = [*front, "", f"# {repo_id}", ""]
    what = f"A {arch} backbone trained with SwAV (swapped prediction of online cluster codes)"
    data = (pretraining.get("data") or {}).get("source")
    lines.append(f"{what}{f' on `{Path(str(data)).name}`' if data else ''}.")
    if layout and layout != "swav-run":
        lines.append(f"Converted from a checkpoint of the `{layout}` layout.")
    lines += ["", "## Use", "", "```python"]
    if timm:
        lines += [
            "import timm",
            f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True)  # pooled features',
        ]
    lines += [
        "import swav",
        f'loaded = swav.load_checkpoint("hf-hub:{repo_id}", download=True)',
        "```",
        "",
        "```bash",
        f"swav embed IMAGES --checkpoint hf-hub:{repo_id} --download --out features.npy",
        "```",
    ]
    if not timm:
        lines += ["", "timm has no model with this backbone's shape; load it with `swav`."]
    if pretraining:
        lines += ["", *_recipe_lines(pretraining)]
    if run is not None:
        lines += _curve_lines(run)
        results = run.eval_results()
        if results:
            lines += ["", "## Evaluation", ""]
            for r in results:
                lines += ["```", format_result(json.loads(r.read_text())), "```", ""]
    if pretraining:
        lines += ["", "## Reproduce", "", "```bash", reproduce_command(pretraining), "```"]
    return "\n".join(lines).rstrip() + "\n"


def _recipe_lines(c: dict[str, Any]) -> list[str]:
    mc, tr, op, sw = c["multicrop"], c["train"], c["optim"], c.get("swav", {})
    source = Path(str(c["data"]["source"])).name
    return [
        "## Training",
        "",
        f"- method: {c.get('method', 'swav')}",
        f"- data: `{source}`"
        + (f" (split `{c['data']['split']}`)" if c["data"].get("split") else ""),
        f"- model: {c['model']['arch']}, projection {c['model'].get('hidden_mlp')} -> "
        f"{c['model'].get('output_dim')}, prototypes {c['model']['n_prototypes']}",
        f"- crops: {mc['n_crops']} x {mc['sizes']} px",
        f"- optimiser: {op['optimizer']}, base lr {op['base_lr']}, weight decay "
        f"{op.get('weight_decay')}, warm-up {_share(op.get('warmup_epochs'))}",
        f"- batch {tr['batch_size']} per process, {tr['epochs']} epochs, precision "
        f"{tr['precision']}",
        f"- Sinkhorn: epsilon {sw.get('epsilon')}, {sw.get('sinkhorn_iterations')} iterations, "
        f"queue {sw.get('queue_length')}",
    ]


def _share(value: Any) -> str:
    """``7%`` -> ``7% of the run``; ``10`` -> ``10 epochs``."""
    return f"{value} of the run" if str(value).endswith("%") else f"{value} epochs"


def _curve_lines(run: RunDir) -> list[str]:
    epochs = [m for m in run.read_metrics() if m.get("kind") == "epoch"]
    if not epochs:
        return []
    lines = ["", "## Curves", ""]
    if run.loss_plot.is_file():
        lines += ["![loss](loss.png)", ""]
    lines += ["| epoch | mean loss | prototypes used | minutes |", "|---:|---:|---:|---:|"]
    step = max(1, len(epochs) // 20)  # at most about 20 rows
    shown = epochs[::step] + ([epochs[-1]] if (len(epochs) - 1) % step else [])
    for e in shown:
        minutes = f"{e['seconds'] / 60:.1f}" if "seconds" in e else ""
        lines.append(f"| {e['epoch']} | {e['loss']:.4f} | {e['prototypes_used']} | {minutes} |")
    return lines


def push(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    message: str = "swav model",
) -> str:
    """Upload ``folder`` to the hub repository ``repo_id`` (created when missing); returns the
    commit's address."""
    hub = require_hub()
    api = hub.HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=message)
    except Exception as e:  # no network, no token, refused: the hub's own words
        raise HubError(
            f"push to {repo_id} failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
            f"the folder is complete at {folder}: upload it later with the same command or "
            "`huggingface-cli upload`"
        ) from e
    return str(getattr(info, "commit_url", info))
