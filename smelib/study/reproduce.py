"""``smelib reproduce``: train → evaluate the saved checkpoint → tables and figures, in one call.

>>> from smelib.config import load_config
>>> from smelib.study.reproduce import reproduce
>>> print(reproduce(load_config("configs/quick.yaml")))     # a few minutes on 2 cores

Writes into the run directory: the usual ``record.json``/``log.csv``/checkpoints, ``eval_test.json`` (metrics of the
final checkpoint re-loaded from disk), ``curves.png`` (loss and mIoU per epoch) and ``summary.csv`` (the run's row
of :func:`smelib.study.results.summarize`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["plot_curves", "reproduce"]


def plot_curves(log_csv: str | os.PathLike, out_png: str | os.PathLike, title: str | None = None) -> Path:
    """Training loss and validation mIoU (all classes and defects only) per epoch from a run's ``log.csv``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from smelib.records import read_log_csv

    rows = read_log_csv(log_csv)
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], marker="o", color="#0072B2")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    val = [(r["epoch"], r["val_miou"], r["val_miou_defects"]) for r in rows if r.get("val_miou") is not None]
    if val:
        ax_iou.plot([v[0] for v in val], [100 * v[1] for v in val], marker="o", label="mIoU (all classes)",
                    color="#E69F00")
        ax_iou.plot([v[0] for v in val], [100 * v[2] for v in val], marker="s", label="mIoU (defects only)",
                    color="#D55E00")
        ax_iou.legend(fontsize=8)
    ax_iou.set(xlabel="epoch", ylabel="validation mIoU (%)", title="validation")
    for ax in (ax_loss, ax_iou):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def reproduce(config: Mapping[str, Any], runs_dir: str | os.PathLike | None = None, quiet: bool = False,
              reference: str | None = None) -> str:
    """Train with ``config``, re-evaluate the saved checkpoint on the test subset, plot, summarise.

    Args:
        reference: a shipped release name (:mod:`smelib.checkpoint`); when given, it is scored on the same test
            images so the report shows what a fully trained model does there (for datasets with the release's
            class count).

    Returns:
        A text report (run directory, per-class test table, the summary row, the reference's table, the files
        written).
    """
    from smelib.checkpoint import load_checkpoint
    from smelib.inference import evaluate
    from smelib.training import train
    from smelib.data.loading import load_data
    from smelib.metrics import format_table
    from smelib.records import write_json
    from smelib.study.results import format_summary, summarize, write_csv

    result = train(config, runs_dir=runs_dir, quiet=quiet)
    run_dir = result.run_dir
    model, meta = load_checkpoint(result.checkpoint)
    cfg = meta["config"]
    bundle = load_data(cfg, seed=int(cfg["train"]["seed"]))
    subset = "test" if bundle.test is not None and len(bundle.test) else "val"
    dataset = bundle.test if subset == "test" else bundle.val
    from smelib.mechanisms import rule_for_checkpoint

    metrics = evaluate(model, dataset, tta=bool(cfg["eval"]["tta"]), num_classes=meta["num_classes"],
                       ignore_index=cfg["data"]["ignore_index"], size=cfg["data"]["size"],
                       batch_size=cfg["data"]["eval_batch_size"],
                       decision=rule_for_checkpoint(meta, train_dataset=bundle.train))  # eval.decision
    write_json(run_dir / f"eval_{subset}.json", {**metrics.to_dict(), "checkpoint": str(result.checkpoint),
                                                 "images": len(dataset), "tta": bool(cfg["eval"]["tta"])})
    ref_lines: list[str] = []
    if reference is not None:
        from smelib.checkpoint import load_release

        ref_model, ref_meta = load_release(reference)
        if int(ref_meta["num_classes"]) == int(meta["num_classes"]):
            ref_metrics = evaluate(ref_model, dataset, num_classes=meta["num_classes"],
                                   ignore_index=cfg["data"]["ignore_index"], size=ref_meta["config"]["data"]["size"],
                                   batch_size=cfg["data"]["eval_batch_size"])
            write_json(run_dir / f"eval_{subset}_{reference}.json", {**ref_metrics.to_dict(), "release": reference,
                                                                        "images": len(dataset)})
            fine_tuned = cfg["model"].get("init") == reference
            ref_lines = [
                "", (f"before fine-tuning: the shipped checkpoint {reference}" if fine_tuned else
                     f"for reference, the shipped checkpoint {reference}")
                + f" on the same {len(dataset)} {subset} images "
                f"(run {ref_meta.get('run_id')}, trained on NEU-Seg's official training split):",
                format_table(ref_metrics, ref_meta.get("class_names")),
                "(optimistic: NEU-Seg's official test images mostly have a rotated copy in the official training "
                "set; see the book's NEU-Seg chapter)",
            ]
    curves = plot_curves(run_dir / "log.csv", run_dir / "curves.png", title=run_dir.name)
    rows = summarize([result.record])
    summary_csv = write_csv(rows, run_dir / "summary.csv")
    lines = [
        f"run: {run_dir}",
        f"model {cfg['model']['name']} ({result.record.get('params_m', 0):.3f} M parameters, "
        f"{result.record.get('gmacs') or float('nan'):.3f} fvcore GMACs at {result.record.get('input_size')}), "
        f"{result.record.get('steps_done')} steps, {result.record.get('wall_seconds', 0):.0f} s, "
        f"{result.record.get('images_per_s') or 0:.1f} train images/s",
        "",
        *([f"started from the weights of {cfg['model']['init']} (fine-tuning), not from a random initialisation"]
          if cfg["model"].get("init") else []),
        f"{subset} metrics of {Path(result.checkpoint).name} ({len(dataset)} images, original resolution):",
        format_table(metrics, meta.get("class_names")),
        *ref_lines,
        "",
        format_summary(rows),
        "",
        "files: " + ", ".join(str(p) for p in (run_dir / "record.json", run_dir / "log.csv", curves, summary_csv,
                                                run_dir / f"eval_{subset}.json",
                                                *([run_dir / f"eval_{subset}_{reference}.json"] if ref_lines else []))),
    ]
    return "\n".join(lines)
