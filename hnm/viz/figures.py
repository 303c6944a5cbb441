"""Curves and tables of a finished run as matplotlib figures, each written as PNG and SVG: ROC
curves with the val-chosen operating point, per-round metrics, the confusion matrix, and the
training curves of fine-tuning and MIL."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix, roc_curve  # noqa: E402

from hnm.core.atomic import atomic_path  # noqa: E402
from hnm.evaluate.metrics import roc_auc  # noqa: E402

plt.rcParams["svg.hashsalt"] = "hnm"  # SVG ids stable from run to run
SPLIT_COLOURS = {"val": "#1f77b4", "test": "#d62728"}


def save(fig: plt.Figure, out: str | os.PathLike[str], svg: bool = True) -> None:
    """`out` (PNG) and, with `svg`, the same figure beside it as .svg; atomically; closes `fig`."""
    out = Path(out)
    with atomic_path(out) as temporary:
        fig.savefig(temporary, format="png", bbox_inches="tight", metadata={"Software": None})
    if svg:
        with atomic_path(out.with_suffix(".svg")) as temporary:
            fig.savefig(temporary, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)


def _empty(ax: plt.Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _roc_panel(
    ax: plt.Axes, truth: np.ndarray, scores: np.ndarray, what: str, threshold: float | None
) -> None:
    truth = np.asarray(truth, dtype=int)
    scores = np.asarray(scores, dtype=np.float64)
    ax.set_title(what, fontsize=10)
    if len(np.unique(truth)) < 2:
        _empty(ax, f"{what}: one class only, no ROC curve")
        return
    fpr, tpr, _ = roc_curve(truth, scores)
    auc = roc_auc(truth, scores)
    ax.plot(fpr, tpr, color="#d62728", drawstyle="steps-post", label=f"AUC {auc:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=0.8)
    if threshold is not None:
        called = scores >= threshold
        point = (called[truth == 0].mean(), called[truth == 1].mean())
        ax.plot(*point, "o", color="black", label=f"val threshold {threshold:.3f}")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize=8)


def roc_figure(
    out: str | os.PathLike[str],
    slide_truth: np.ndarray,
    slide_prob: np.ndarray,
    threshold: float,
    patch_truth: np.ndarray | None = None,
    patch_scores: np.ndarray | None = None,
    split: str = "test",
    dpi: int = 100,
) -> None:
    """Slide-level ROC with the val-chosen threshold marked; patch-level beside it where patch
    truth exists (patch scores have no chosen threshold, so no point is marked there)."""
    panels = 2 if patch_truth is not None and len(patch_truth) else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.6), dpi=dpi, squeeze=False)
    _roc_panel(
        axes[0, 0], slide_truth, slide_prob, f"{split} slides (n={len(slide_truth)})", threshold
    )
    if panels == 2:
        _roc_panel(
            axes[0, 1], patch_truth, patch_scores, f"{split} patches (n={len(patch_truth)})", None
        )
    save(fig, out)


def confusion_figure(
    out: str | os.PathLike[str],
    labels: np.ndarray,
    predicted: np.ndarray,
    threshold: float,
    split: str = "test",
    dpi: int = 100,
) -> None:
    matrix = confusion_matrix(np.asarray(labels, int), np.asarray(predicted, int), labels=[0, 1])
    fig, ax = plt.subplots(figsize=(4.2, 3.8), dpi=dpi)
    ConfusionMatrixDisplay(matrix, display_labels=["normal", "tumor"]).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d"
    )
    ax.set_title(f"{split} slides at the val threshold {threshold:.3f}", fontsize=10)
    save(fig, out)


def round_table(mil_metrics: list[dict], eval_metrics: list[dict]) -> pd.DataFrame:
    """Per round and split (val, test): slide AUC, accuracy at the val threshold, patch AUC."""
    rows = []
    for round_, (mil, evaluation) in enumerate(zip(mil_metrics, eval_metrics)):
        patch = evaluation.get("patch") or {}
        val = mil.get("val") or {}
        slide = evaluation.get("slide") or {}
        for split, auc, accuracy in (
            ("val", val.get("auc"), val.get("accuracy")),
            ("test", slide.get("auc"), slide.get("accuracy")),
        ):
            overall = (patch.get(split) or {}).get("overall") or {}
            rows.append(
                {
                    "round": round_,
                    "split": split,
                    "slide_auc": auc,
                    "accuracy": accuracy,
                    "patch_auc": overall.get("auc"),
                }
            )
    return pd.DataFrame(rows, columns=["round", "split", "slide_auc", "accuracy", "patch_auc"])


def rounds_figure(out: str | os.PathLike[str], table: pd.DataFrame, dpi: int = 100) -> None:
    columns = [
        ("slide_auc", "slide AUC"),
        ("accuracy", "slide accuracy"),
        ("patch_auc", "patch AUC"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=dpi, sharex=True)
    rounds = sorted(table["round"].unique()) if len(table) else [0]
    for ax, (column, name) in zip(axes, columns):
        drawn = False
        for split, group in table.groupby("split", sort=False):
            values = pd.to_numeric(group[column], errors="coerce")
            if values.notna().any():
                ax.plot(group["round"], values, "o-", color=SPLIT_COLOURS.get(split), label=split)
                drawn = True
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("round")
        ax.set_xticks(rounds)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not available", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("metrics per round (round 0: the initial encoder)", fontsize=11)
    save(fig, out)


def finetune_figure(out: str | os.PathLike[str], epochs: pd.DataFrame, dpi: int = 100) -> None:
    """SupCon loss per epoch of every fine-tuning round (global epoch on x)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=dpi)
    if len(epochs) == 0:
        _empty(ax, "no fine-tuning (rounds: 0)")
    else:
        for column, name, style in (
            ("loss_negative", "negative-anchor update", "o-"),
            ("loss_positive", "positive-anchor update", "s--"),
        ):
            values = pd.to_numeric(epochs[column], errors="coerce")
            if column == "loss_positive":
                values = values.where(values != 0)  # 0: no positive update (warm-up epochs)
            if values.notna().any():
                ax.plot(epochs["global_epoch"], values, style, label=name, markersize=4)
        for round_, group in epochs.groupby("round"):
            ax.axvline(
                group["global_epoch"].min() - 0.5, color="grey", linewidth=0.6, linestyle=":"
            )
            ax.text(
                group["global_epoch"].min() - 0.4,
                1.0,
                f"r{round_ - 1}→r{round_}",
                fontsize=7,
                transform=ax.get_xaxis_transform(),
                va="top",
            )
        ax.set_xlabel("encoder epoch")
        ax.set_ylabel("SupCon loss (mean per epoch)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax.set_title("fine-tuning loss", fontsize=10)
    save(fig, out)


def mil_figure(
    out: str | os.PathLike[str],
    epochs: list[pd.DataFrame],
    selected: list[int | None],
    dpi: int = 100,
) -> None:
    """Per round: MIL train and val loss, and val AUC, per epoch; the selected epoch marked."""
    fig, (loss_ax, auc_ax) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=dpi)
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(epochs), 1)))
    for round_, (table, chosen, colour) in enumerate(zip(epochs, selected, colours)):
        loss_ax.plot(
            table["epoch"], table["train_loss"], "-", color=colour, label=f"r{round_} train"
        )
        loss_ax.plot(table["epoch"], table["val_loss"], "--", color=colour, label=f"r{round_} val")
        auc = pd.to_numeric(table["val_auc"], errors="coerce")
        auc_ax.plot(table["epoch"], auc, "o-", color=colour, markersize=3, label=f"r{round_}")
        if chosen is not None and (table["epoch"] == chosen).any():
            row = table[table["epoch"] == chosen].iloc[0]
            loss_ax.plot(chosen, row["val_loss"], "*", color=colour, markersize=11)
            auc_ax.plot(
                chosen,
                pd.to_numeric(row["val_auc"], errors="coerce"),
                "*",
                color=colour,
                markersize=11,
            )
    loss_ax.set_title("MIL loss per epoch (★ selected epoch)", fontsize=10)
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    auc_ax.set_title("MIL validation slide AUC per epoch", fontsize=10)
    auc_ax.set_xlabel("epoch")
    auc_ax.set_ylim(-0.02, 1.02)
    for ax in (loss_ax, auc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    save(fig, out)
