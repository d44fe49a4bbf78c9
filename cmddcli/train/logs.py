"""The run's logs: append-only CSV files that survive a resume, and optional TensorBoard."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import List, Optional

log = logging.getLogger(__name__)

__all__ = ["CsvLog", "tensorboard_writer"]


class CsvLog:
    """Append-only CSV that, on resume, first drops rows past the resumed step."""

    def __init__(self, path: Path, columns: List[str], resume_step: Optional[int]):
        self.path, self.columns = path, columns
        rows: List[dict] = []
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def write(self, row: dict) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def tensorboard_writer(folder: Path):
    """A TensorBoard ``SummaryWriter`` on ``folder``, or None when TensorBoard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - TensorBoard is optional; CSV logs are always written
        log.debug("tensorboard not importable: CSV logs only")
        return None
    return SummaryWriter(log_dir=str(folder))
