"""Redraw committed training-curve plots from their JSON sidecars.

A grid's task-relatedness plots (`plots/relatedness_*.png`) are drawn from the runs' training
logs, which are not committed, so `mtspeech ablate --report-only` cannot draw them; their
data is committed beside them as the plot's JSON sidecar (`plots/relatedness_*.json`). To keep
`docs/results/` small the PNGs are not committed: this draws each one again from its sidecar
with the same function and title the report uses. `scripts/reaggregate_grids.sh` runs it
first, so the reports find the plots.

    python scripts/redraw_curves.py docs/results            # every missing PNG
    python scripts/redraw_curves.py docs/results --force    # every PNG, existing or not
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mtspeech.evaluation.plots import plot_training_curves

PATTERN = "relatedness_*.json"


def redraw(sidecar: Path) -> Path:
    """sidecar ({"kind": "training_curves", "ylabel", "panels": {task: {variant: points}}}) → its PNG."""
    text = sidecar.read_text(encoding="utf-8")
    data = json.loads(text)
    if data.get("kind") != "training_curves":
        raise ValueError(f"{sidecar}: kind {data.get('kind')!r}, expected 'training_curves'")
    # A line's colour is its variant's place in the grid (the order the report drew them in):
    # the grid's results.json beside plots/ has it.
    results = sidecar.parent.parent / "results.json"
    order = json.loads(results.read_text())["variants"] if results.is_file() else []
    by_variant: dict[str, dict[str, list]] = {v: {} for v in order}  # {line: {panel: points}}
    for task, lines in data["panels"].items():
        for variant, points in lines.items():
            by_variant.setdefault(variant, {})[task] = points
    by_variant = {v: panels for v, panels in by_variant.items() if panels}
    ylabel = data["ylabel"]
    png = plot_training_curves(by_variant, sidecar.with_suffix(".png"), ylabel=ylabel,
                               title=f"{ylabel} per auxiliary task, mean over seeds")
    sidecar.write_text(text, encoding="utf-8")  # the committed data stays byte for byte as it was
    return png


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="folder searched for plots/relatedness_*.json")
    ap.add_argument("--force", action="store_true", help="redraw PNGs that exist too")
    args = ap.parse_args(argv)
    drawn = [redraw(s) for s in sorted(args.root.rglob(f"plots/{PATTERN}"))
             if args.force or not s.with_suffix(".png").is_file()]
    for png in drawn:
        print(f"drew {png}")
    return drawn


if __name__ == "__main__":
    main()
