"""`cmdd train`: train CMDDNet with the paper's recipe (or any config), resumable, single or multi-GPU."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from .common import (
    device_option, err_console, handle_errors, json_option, precision_option, print_json, scan_option, setup_logging)


def register(app: typer.Typer) -> None:
    """Add ``cmdd train`` to ``app``."""

    @app.command("train")
    @handle_errors
    def train_cmd(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="TOML (or JSON) training config."),
        preset: Optional[str] = typer.Option(
            None, "--preset", help="Training preset: paper (default) or tiny; another model: --set model.preset=small."),
        sets: List[str] = typer.Option([], "--set", help="Override: section.key=value (typed; repeatable)."),
        iters: Optional[str] = typer.Option(
            None, "--iters", help="Total iterations (e.g. 300000 or 300k; default: the config's)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (config, checkpoints, logs, weights); default: the config's out, runs/<preset>."),
        data: Optional[str] = typer.Option(
            None, "--data", "-d", help="Manifest JSON / folder of pairs / synth[:DIR of sharp images]."),
        val_data: Optional[str] = typer.Option(None, "--val-data", help="Validation data (default: the val split)."),
        resume: Optional[str] = typer.Option(None, "--resume", help="Continue from a checkpoint or a run folder."),
        stop_at: Optional[str] = typer.Option(
            None, "--stop-at", help="Stop (with a checkpoint) after this many total iterations, e.g. for job limits."),
        device: Optional[str] = device_option(None, "auto, cpu, cuda, cuda:N."),
        precision: Optional[str] = precision_option(None, "fp32, bf16 or fp16 (autocast)."),
        ema: Optional[float] = typer.Option(
            None, "--ema", help="EMA decay of the weights (e.g. 0.999; 0 = off; default: the config's)."),
        compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model."),
        seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default: the config's)."),
        workers: Optional[int] = typer.Option(
            None, "--workers", "-j", help="Data loader worker processes (default: the config's)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and plan, then exit."),
        json_out: bool = json_option("Print the result as JSON on stdout."),
        scan: Optional[str] = scan_option(),
    ):
        """Train CMDDNet. Multi-GPU: torchrun --nproc_per_node N -m cmddcli.cli.main train ...

        Examples:

          cmdd train --data data/dpdd/manifest.json --out runs/paper          (the paper's recipe)

          cmdd train --preset tiny --out runs/tiny                            (a CPU smoke run)

          cmdd train --resume runs/paper
        """
        from ..runtime import DistInfo

        rank = DistInfo.from_env().rank
        setup_logging(quiet=json_out or rank != 0)
        from ..train.checkpoint import ResumePoint
        from ..train.overrides import build_config, parse_count, to_toml
        from ..train.schedule import plan_of

        point = ResumePoint.find(resume) if resume else None  # read once: config here, state in train()
        cfg = build_config(config=config, preset=preset, resume=point, overrides=sets, flags={
            "iters": iters, "out": out, "data": data, "data.val_path": val_data, "device": device,
            "precision": precision, "ema_decay": ema, "compile": compile_, "seed": seed, "data.workers": workers})
        if dry_run:
            from ..runtime import check_device_name

            check_device_name(cfg.device)  # a name the real run would refuse; CUDA need not be here
            if json_out:
                print_json({"config": cfg.to_dict(), "plan": plan_of(cfg)})
            else:
                typer.echo(to_toml(cfg), nl=False)
                err_console.print(plan_of(cfg))
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
            # validation results: the trainer's own log line (weights used, best so far) says them once

        try:
            result = train(cfg, resume=point, callback=on_event,
                           stop_at=parse_count(stop_at) if stop_at is not None else None)
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
            "stopped_by": result.stopped_by,
        }
        if json_out:
            print_json(summary)
        else:
            done = "finished" if result.step >= cfg.iters else f"stopped at step {result.step}"
            if result.stopped_by:
                done += f" by {result.stopped_by}"
            err_console.print(f"[green]{done}[/]: {escape(str(summary['weights'] or summary['last_checkpoint']))}")
            if result.step < cfg.iters:
                err_console.print(f"continue with: cmdd train --resume {escape(str(result.out))}", highlight=False)
        if result.stopped_by:  # the shell's convention for a process ended by a signal: 128 + its number
            raise typer.Exit(128 + int(signal.Signals[result.stopped_by]))
