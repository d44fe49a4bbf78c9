"""What a `cmdd deblur` batch is made of and reports: jobs, per-file results, the batch report
(the summary JSON), the interruption that keeps finished outputs, and the progress hooks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class Job:
    """One input file and where its output goes. ``error`` is set when planning already failed it."""

    input: Path
    output: Optional[Path]
    error: Optional[str] = None


@dataclass
class FileResult:
    """What happened to one input file: status (done / skipped / failed / planned), output, seconds, reason, warnings, rank."""
    input: str
    output: Optional[str]
    status: str  # "done" | "skipped" | "failed" | "planned"
    reason: str = ""
    seconds: float = 0.0
    width: int = 0
    height: int = 0
    rank: int = 0
    warnings: list = field(default_factory=list)  # what could not be kept (pages, range, metadata...)
    restore: dict = field(default_factory=dict)  # strength, restored region and share (RestoreOptions)
    raw: Optional[dict] = None  # RAW inputs: the development as applied (settings + half_size_applied)
    side_files: list = field(default_factory=list)  # --save-blur-map files written beside the output


@dataclass
class BatchReport:
    """Every file's :class:`FileResult`, the run's settings and world size; ``to_dict`` is the summary JSON."""
    results: list[FileResult]
    settings: dict = field(default_factory=dict)
    world_size: int = 1
    summary_error: Optional[str] = None  # why OUT/.cmdd/summary.json could not be written

    def counts(self) -> dict:
        c = {"done": 0, "skipped": 0, "failed": 0, "planned": 0}
        for r in self.results:
            c[r.status] = c.get(r.status, 0) + 1
        return c

    @property
    def failed(self) -> list[FileResult]:
        return [r for r in self.results if r.status == "failed"]

    def to_dict(self) -> dict:
        d = {
            "counts": self.counts(),
            "world_size": self.world_size,
            "settings": self.settings,
            "files": [asdict(r) for r in self.results],
        }
        if self.summary_error:
            d["summary_error"] = self.summary_error
        return d


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, which the CLI turns into it) during a batch: the outputs finished so far
    are complete and recorded, so rerunning the same command resumes. ``results``: every file's
    result so far (the files not reached are absent); ``left``: how many were still to be made."""

    def __init__(self, results: list, left: int):
        super().__init__(f"interrupted with {left} file(s) left")
        self.results, self.left = results, left


class BatchProgress:
    """Progress hooks (no-ops here; the CLI draws rich bars from them)."""

    def start(self, total_files: int) -> None: ...

    def file_started(self, job: Job) -> None: ...

    def tiles(self, done: int, total: int) -> None: ...

    def file_finished(self, result: FileResult) -> None: ...
