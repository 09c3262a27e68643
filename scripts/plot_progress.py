"""Plot held-out Dice against training hours, one line per run and structure.

    python scripts/plot_progress.py -o docs/images/hippocampus_progress.png \\
        --reference Anterior=0.8975 --reference Posterior=0.8807 \\
        "dice_ce=results/hippocampus_dice_ce/epoch_020" "dice_ce=results/hippocampus_dice_ce/epoch_040" ...

Each point is a ``volseg evaluate-run`` output folder (its summary.json): the mean Dice over the
held-out cases with its 95 % confidence interval, at the training hours of the evaluated
checkpoint (the sum of ``epoch_seconds`` up to its epoch, from the run's metrics.csv). Points
of the same name are joined in order of hours. ``--reference NAME=DICE`` draws a dashed line
(e.g. nnU-Net's published Dice).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script, not the library: it may choose the process's backend
import matplotlib.pyplot as plt  # noqa: E402


def read_point(folder: Path) -> tuple[float, dict[str, dict[str, float]]]:
    """(training hours, {structure: dice statistics}) of one evaluation folder."""
    summary = json.loads((folder / "summary.json").read_text())
    seconds = [entry["seconds"] for entry in summary["trained"].values()]
    if any(s is None for s in seconds):
        raise SystemExit(f"{folder}: the evaluated checkpoint does not say its epoch; evaluate last.pt or a newer run")
    return sum(seconds) / 3600, {name: metrics["dice"] for name, metrics in summary["summary"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("points", nargs="+", metavar="NAME=FOLDER")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--reference", action="append", default=[], metavar="STRUCTURE=DICE")
    parser.add_argument("--title", default="Held-out Dice against training time")
    args = parser.parse_args()

    series: dict[tuple[str, str], list[tuple[float, float, float, float]]] = defaultdict(list)
    for point in args.points:
        name, _, folder = point.partition("=")
        hours, structures = read_point(Path(folder))
        for structure, dice in structures.items():
            series[(name, structure)].append((hours, dice["mean"], dice["ci95_low"], dice["ci95_high"]))
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for (name, structure), values in sorted(series.items()):
        hours, mean, low, high = zip(*sorted(values))
        errors = [[m - lo for m, lo in zip(mean, low)], [hi - m for m, hi in zip(mean, high)]]
        axis.errorbar(hours, mean, yerr=errors, marker="o", capsize=3, label=f"{name}: {structure}")
    for reference in args.reference:
        structure, _, dice = reference.partition("=")
        axis.axhline(float(dice), linestyle="--", linewidth=1, color="grey")
        axis.annotate(
            f"nnU-Net {structure} {float(dice):.4f}",
            (0, float(dice)),
            fontsize=8,
            color="grey",
            xytext=(2, 2),
            textcoords="offset points",
        )
    axis.set_xlabel("training hours (2-core CPU; validation not counted)")
    axis.set_ylabel("held-out Dice (mean, 95 % CI)")
    axis.set_title(args.title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=110)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
