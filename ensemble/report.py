"""A Markdown report with PNG plots beside the submission: people look before they read."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import confusion_matrix, f1_score  # noqa: E402

from common import atomic_write, write_csv, write_text  # noqa: E402
from common.metrics import get_metric, shown_beside  # noqa: E402

ERRORS_SHOWN = 15


def _save(fig, path: Path) -> str:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


def _short(names, n=18):
    return [s if len(s) <= n else s[: n - 1] + "…" for s in names]


def per_class_f1_plot(y, pred, classes, path: Path) -> str:
    f1 = f1_score(y, pred, average=None, labels=np.arange(len(classes)), zero_division=0)
    order = np.argsort(f1)
    fig, ax = plt.subplots(figsize=(8, max(3, 0.22 * len(classes))))
    ax.barh(np.arange(len(classes)), f1[order], color="tab:blue")
    ax.set_yticks(np.arange(len(classes)), _short(np.asarray(classes)[order]), fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_xlabel("F1 (OOF, out of sample)")
    ax.set_title(f"Per-class F1 (macro {f1.mean():.3f})")
    return _save(fig, path)


def class_codes(classes) -> list[str]:
    """Short axis labels: the names themselves when few, else C01, C02, ... (the report lists them)."""
    return list(classes) if len(classes) <= 12 else [f"C{i + 1:02d}" for i in range(len(classes))]


def confusion_plot(y, pred, classes, path: Path, oof_kind: str = "OOF") -> str:
    cm = confusion_matrix(y, pred, labels=np.arange(len(classes))).astype(float)
    cm /= np.maximum(cm.sum(axis=1, keepdims=True), 1)  # each true class's row sums to 1: one colour scale
    size = max(6, 0.24 * len(classes))
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(cm, cmap="viridis", vmin=0, vmax=1)
    ticks = np.arange(len(classes))
    codes = class_codes(classes)
    ax.set_xticks(ticks, codes, rotation=90, fontsize=8)
    ax.set_yticks(ticks, codes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"Confusion matrix on the {oof_kind} (rows normalised to 1)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def distribution_plot(train_labels, sub_labels, classes, path: Path) -> str:
    tr = np.array([np.mean(np.asarray(train_labels) == c) for c in classes])
    sb = np.array([np.mean(np.asarray(sub_labels) == c) for c in classes])
    order = np.argsort(-tr)
    x = np.arange(len(classes))
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(classes)), 4))
    ax.bar(x - 0.2, tr[order], 0.4, label="train")
    ax.bar(x + 0.2, sb[order], 0.4, label="submission")
    ax.set_xticks(x, _short(np.asarray(classes)[order], 12), rotation=90, fontsize=6)
    ax.set_ylabel("share of rows")
    ax.set_title("Class distribution: submission vs train")
    ax.legend()
    return _save(fig, path)


def confident_errors(ids, y, probs, classes, paths: dict | None = None) -> pd.DataFrame:
    """The OOF paintings the final method gets wrong, the most confident first, one row a painting (its
    crops' probabilities averaged). A painting predicted out of fold as another artist with high confidence
    is the first place to look for a mislabelled training image (fix it with --corrections) or a copy filed
    under two artists (benchmarks/duplicates.py). For looking at only: nothing is chosen by it."""
    names = np.asarray(classes)
    cols = list(range(len(classes)))
    df = pd.DataFrame(np.asarray(probs, dtype=np.float64), columns=cols).assign(id=np.asarray(ids), y=np.asarray(y))
    per = df.groupby("id", sort=False).agg({**{c: "mean" for c in cols}, "y": "first"})
    p, true = per[cols].to_numpy(), per["y"].to_numpy().astype(int)
    pred = p.argmax(axis=1)
    wrong = np.flatnonzero(pred != true)
    out = pd.DataFrame({"id": per.index[wrong].astype(str), "true": names[true[wrong]],
                        "predicted": names[pred[wrong]], "p_predicted": p[wrong, pred[wrong]].round(4),
                        "p_true": p[wrong, true[wrong]].round(4)})
    if paths is not None:
        out.insert(1, "img_path", out["id"].map(paths))
    return out.sort_values(["p_predicted", "id"], ascending=[False, True]).reset_index(drop=True)


def errors_section(errors: pd.DataFrame, csv_name: str, oof_kind: str) -> list[str]:
    lines = ["## The most confident mistakes on the OOF", "",
             f"{len(errors):,} paintings are predicted as another artist on the {oof_kind} (a painting's crops "
             "averaged); the most confident first. Look at these images before anything else: a label that is "
             "wrong in train.csv is fixed with `--corrections`, and `benchmarks/duplicates.py` finds copies filed "
             f"under two artists. All of them: `{csv_name}`.", ""]
    shown = errors.head(ERRORS_SHOWN)
    lines += ["| " + " | ".join(shown.columns) + " |", "|" + " --- |" * len(shown.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return lines + [""]


def write_report(csv_path: Path, *, table: list[dict], chosen: str, run_rows: list[dict], y, pred, classes,
                 train_labels, sub_labels, notes: list[str], oof_kind: str = "crop-OOF",
                 errors: pd.DataFrame | None = None, metric: str | None = None) -> Path:
    """``<csv stem>_report.md`` beside the CSV, with its plots in ``<csv stem>_report/``, and there the
    ``confident_errors`` as ``oof_errors.csv`` when given. The tables lead with ``metric`` (the competition's:
    the methods' rows hold every metric by key, the run rows that one as val, oof and crop)."""
    lead = get_metric(metric)
    shown = [lead, *shown_beside(lead)]
    csv_path = Path(csv_path)
    fig_dir = csv_path.with_name(csv_path.stem + "_report")
    md = csv_path.with_name(csv_path.stem + "_report.md")
    figs = {
        "Per-class F1": per_class_f1_plot(y, pred, classes, fig_dir / "per_class_f1.png"),
        "Confusion matrix": confusion_plot(y, pred, classes, fig_dir / "confusion.png", oof_kind),
        "Class distribution": distribution_plot(train_labels, sub_labels, classes, fig_dir / "distribution.png"),
    }
    lines = [f"# Ensemble report: {csv_path.name}", "", f"Final method: **{chosen}**.", "",
             f"## Methods compared ({oof_kind} {lead.label}; learning methods scored in an inner cross-validation)",
             "", "| method | " + " | ".join(f"{oof_kind} {m.label}" for m in shown) + " | note |",
             "| --- |" + " --- |" * len(shown) + " --- |"]
    for r in table:
        lines.append(f"| {r['method']}{' (chosen)' if r['method'] == chosen else ''} | "
                     + " | ".join(f"{r[m.key]:.4f}" for m in shown) + f" | {r.get('note', '')} |")
    lines += ["", "## Runs and folds", "",
              f"| run | fold | val {lead.label} | validated on | OOF {lead.label} | crop-OOF {lead.label} |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in run_rows:  # val: the best epoch's, on the paintings its monitor chose it on
        lines.append(f"| {r['run']} | {r['fold']} | {r['val']:.4f} | {r.get('on', '')} | {r['oof']:.4f} | "
                     f"{r['crop']:.4f} |")
    lines += [""] + [f"- {n}" for n in notes] + [""]
    for title, name in figs.items():
        lines += [f"## {title}", "", f"![{title}]({fig_dir.name}/{name})", ""]
    if errors is not None:
        write_csv(fig_dir / "oof_errors.csv", errors)
        lines += errors_section(errors, f"{fig_dir.name}/oof_errors.csv", oof_kind)
    if class_codes(classes) != list(classes):
        lines += ["## Class codes in the plots", "", "| code | class |", "| --- | --- |"]
        lines += [f"| {c} | {name} |" for c, name in zip(class_codes(classes), classes)] + [""]
    return write_text(md, "\n".join(lines))
