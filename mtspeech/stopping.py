"""When training stops and what it keeps: the dev-plateau rule, the N best epoch checkpoints
(averaged into `final.pt`), and `stopping.json`, the record of why a run ended.

A grid is "converged" only if every run stopped on its dev plateau, not because the cap (a
time budget) ran out; `ablation/report.py` reads `stopping.json` to say which.
"""

from __future__ import annotations

import json
from pathlib import Path


def plateaued(scores: list[float], patience: int) -> bool:
    """The last `patience` dev scores (lower is better) are no better than the best before them,
    and that best had improved on the first epoch's value: CTC's blank plateau at the start
    (CER 1.0 for several epochs) is flat too, but it is not the end of learning."""
    if not patience or len(scores) <= patience:
        return False
    earlier = min(scores[:-patience])
    return earlier < scores[0] and min(scores[-patience:]) >= earlier


class BestCheckpoints:
    """The `keep` best epochs by a dev score (lower is better), listed in `exp_dir/best.json`;
    an epoch's checkpoint file is written only while it ranks among them."""

    def __init__(self, exp_dir: Path, keep: int):
        self.exp_dir, self.keep = Path(exp_dir), keep
        self.file = self.exp_dir / "best.json"

    def entries(self) -> list[dict]:
        return json.loads(self.file.read_text()) if self.file.exists() else []

    def offer(self, epoch: int, score: float, save) -> None:
        """Rank `epoch`; `save(name)` writes its checkpoint if it makes the list, and the
        checkpoints that fall off the list are deleted."""
        if self.keep <= 0:
            return
        best = self.entries()
        name = f"epoch{epoch}.pt"
        best.append({"file": name, "score": score, "epoch": epoch})
        best.sort(key=lambda b: b["score"])
        kept, dropped = best[: self.keep], best[self.keep:]
        if any(b["file"] == name for b in kept):
            save(name)
        for b in dropped:
            (self.exp_dir / b["file"]).unlink(missing_ok=True)
        self.file.write_text(json.dumps(kept, indent=1))

    def clear(self) -> None:
        """Forget every kept epoch (files deleted): after branching's split their weights no
        longer fit the model, so they cannot be averaged with the epochs that follow."""
        for f in self.files():
            f.unlink()
        self.file.unlink(missing_ok=True)

    def files(self) -> list[Path]:
        """The kept checkpoints that exist, best first (to average into `final.pt`)."""
        return [f for f in (self.exp_dir / b["file"] for b in self.entries()) if f.exists()]


def write_stopping_record(exp_dir: Path, *, stopped_by: str, epochs: int, updates: int, cap_epochs: int,
                          cap_updates: int, patience: int, metric: str, dev_curve: list[dict]) -> Path:
    """`stopping.json`: how the run ended (`plateau` or `cap`) beside its per-epoch dev curve."""
    path = Path(exp_dir) / "stopping.json"
    path.write_text(json.dumps({
        "stopped_by": stopped_by, "epochs": epochs, "updates": updates,
        "cap": {"epochs": cap_epochs, "updates": cap_updates},
        "patience": patience, "metric": metric, "dev_curve": dev_curve}, indent=1))
    return path
