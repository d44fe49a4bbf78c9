"""`cmdd train`: train CMDDNet with the paper's recipe (or any config), resumable, single or multi-GPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from ..errors import CmddError
from .common import err_console, handle_errors, print_json, setup_logging


def _count(text: str) -> int:
    """'300k' -> 300000, '1.5M' -> 1500000, '2000' -> 2000."""
    t = text.strip().lower().replace("_", "")
    mult = 1
    if t.endswith("k"):
        t, mult = t[:-1], 1000
    elif t.endswith("m"):
        t, mult = t[:-1], 1_000_000
    try:
        v = float(t) * mult
    except ValueError:
        raise CmddError(f"not an iteration count: {text!r} (e.g. 300000, 300k)") from None
    if v != int(v) or v < 1:
        raise CmddError(f"not an iteration count: {text!r}")
    return int(v)


def _toml_str(s: str) -> str:
    import json

    return json.dumps(s)


def build_config(config: Optional[Path], preset: Optional[str], resume: Optional[str], sets: List[str],
                 iters: Optional[str], out: Optional[Path], data: Optional[str], val_data: Optional[str],
                 device: Optional[str], precision: Optional[str], ema: Optional[float], compile_: Optional[bool],
                 seed: Optional[int], workers: Optional[int]):
    """Preset / file / checkpoint config, then the flags, then --set overrides (last wins)."""
    from ..train import config as C
    from ..train.data import parse_data_arg
    from ..train.loop import resume_config

    if resume:
        if config is not None or preset is not None:
            raise CmddError("--resume takes the run's configuration from its checkpoint; change it with --set")
        cfg = resume_config(resume)
    elif config is not None:
        cfg = C.load_config(config, base=C.train_preset(preset) if preset else None)
    else:
        cfg = C.train_preset(preset or "paper")
    kind, path = parse_data_arg(data) if data is not None else (None, None)
    given = (  # (config key, flag value or None when not given, value -> TOML text)
        ("iters", iters, _count),
        ("out", out, lambda v: _toml_str(str(v))),
        ("data.kind", kind, _toml_str),
        ("data.path", path, _toml_str),
        ("data.val_path", val_data, _toml_str),
        ("device", device, _toml_str),
        ("precision", precision, _toml_str),
        ("ema_decay", ema, str),
        ("compile", compile_, lambda v: "true" if v else "false"),
        ("seed", seed, str),
        ("data.workers", workers, str),
    )
    flags: List[str] = [f"{key}={fmt(value)}" for key, value, fmt in given if value is not None]
    cfg = C.apply_overrides(cfg, flags + list(sets))
    return cfg.validate()


def _plan(cfg) -> dict:
    from ..train.schedule import LRSchedule, stages_of

    sched = LRSchedule.from_config(cfg)
    return {
        "stages": [{"stage": s.index + 1, "patch": s.patch, "batch": s.batch, "iterations": [s.start + 1, s.end]}
                   for s in stages_of(cfg)],
        "lr_periods": list(sched.periods),
        "lr_at": {str(i): sched(i) for i in sorted({1, sched.periods[0], sched.periods[0] + 1, cfg.iters // 2,
                                                    cfg.iters})},
    }


def register(app: typer.Typer) -> None:
    @app.command("train")
    @handle_errors
    def train_cmd(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML (or JSON) training config."),
        preset: Optional[str] = typer.Option(None, "--preset", help="Training preset: paper (default) or tiny."),
        sets: List[str] = typer.Option([], "--set", "-s", help="Override: section.key=value (typed; repeatable)."),
        iters: Optional[str] = typer.Option(None, "--iters", help="Total iterations (e.g. 300000 or 300k)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (config, checkpoints, logs, weights)."),
        data: Optional[str] = typer.Option(
            None, "--data", "-d", help="Manifest JSON / folder of pairs / synth[:DIR of sharp images]."),
        val_data: Optional[str] = typer.Option(None, "--val-data", help="Validation data (default: the val split)."),
        resume: Optional[str] = typer.Option(None, "--resume", help="Continue from a checkpoint or a run folder."),
        stop_at: Optional[str] = typer.Option(
            None, "--stop-at", help="Stop (with a checkpoint) after this many total iterations, e.g. for job limits."),
        device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N."),
        precision: Optional[str] = typer.Option(None, "--precision", help="fp32, bf16 or fp16 (autocast)."),
        ema: Optional[float] = typer.Option(None, "--ema", help="EMA decay of the weights (e.g. 0.999; 0 = off)."),
        compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed."),
        workers: Optional[int] = typer.Option(None, "--workers", help="Data loader worker processes."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and plan, then exit."),
        json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    ):
        """Train CMDDNet. Multi-GPU: torchrun --nproc_per_node N -m cmddcli.cli.main train ...

        Examples:

          cmdd train --data data/dpdd/manifest.json --out runs/paper          (the paper's recipe)

          cmdd train --preset tiny --out runs/tiny                            (a CPU smoke run)

          cmdd train --resume runs/paper
        """
        rank = int(os.environ.get("RANK", "0"))
        setup_logging(quiet=json_out or rank != 0)
        from ..train import config as C

        cfg = build_config(config, preset, resume, sets, iters, out, data, val_data, device, precision, ema,
                           compile_, seed, workers)
        if dry_run:
            if json_out:
                print_json({"config": cfg.to_dict(), "plan": _plan(cfg)})
            else:
                typer.echo(C.to_toml(cfg), nl=False)
                err_console.print(_plan(cfg))
            return
        from ..train.loop import TrainEvent, train

        show = rank == 0 and not json_out
        columns = [TextColumn("[bold]train[/] {task.fields[stage]}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]} it/s  loss {task.fields[loss]}  lr {task.fields[lr]}"),
                   TimeRemainingColumn()]
        bar = Progress(*columns, console=err_console, disable=not show, transient=False)
        task = None

        def on_event(ev: TrainEvent) -> None:
            nonlocal task
            if task is None:  # start drawing only once the run is under way
                bar.start()
                task = bar.add_task("", total=ev.total, completed=ev.step, stage="", rate="-", loss="-", lr="-")
            if ev.kind == "step":
                bar.update(task, completed=ev.step, stage=f"{ev.patch}²x{ev.batch}", rate=f"{ev.it_per_s:.2f}",
                           loss=f"{ev.loss:.4f}", lr=f"{ev.lr:.3g}")
            elif ev.kind == "stage":
                bar.update(task, completed=ev.step, stage=f"{ev.patch}²x{ev.batch}")
            elif ev.kind == "val" and show:
                bar.console.print(f"step {ev.step}: val PSNR {ev.values['psnr']:.3f} dB, SSIM {ev.values['ssim']:.4f}")

        try:
            result = train(cfg, resume=resume, callback=on_event,
                           stop_at=_count(stop_at) if stop_at is not None else None)
        finally:
            bar.stop()
        if rank != 0:
            return
        summary = {
            "step": result.step,
            "iters": cfg.iters,
            "out": str(result.out),
            "config": str(Path(cfg.out) / "config.toml"),
            "last_checkpoint": str(result.last_checkpoint) if result.last_checkpoint else None,
            "weights": str(result.weights) if result.weights else None,
            "ema_weights": str(result.ema_weights) if result.ema_weights else None,
            "best": result.best,
        }
        if json_out:
            print_json(summary)
        else:
            done = "finished" if result.step >= cfg.iters else f"stopped at step {result.step}"
            err_console.print(f"[green]{done}[/]: {summary['weights'] or summary['last_checkpoint']}")
