"""`cmdd info`: version, device, scan backends, preset sizes and the shipped weights' model card."""

from __future__ import annotations

import os

import typer
from rich.markup import escape
from rich.table import Table

from .common import handle_errors, out_console, print_json


def collect_info(preset: str) -> dict:
    import torch

    from .. import __version__
    from ..model import CMDDNet, model_config
    from ..model import ssm
    from ..model.complexity import count_macs, count_params
    from ..model.weights import default_weights_path, read_metadata

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    backends = [
        {"name": n, "available": ok, "differentiable": d, "devices": list(devs), "reason": why}
        for (n, ok, d, devs, why) in ssm.backend_status()
    ]
    active_infer = ssm.choose_backend(device, needs_grad=False).name
    active_train = ssm.choose_backend(device, needs_grad=True).name
    net = CMDDNet(model_config(preset))
    macs = count_macs(net, 256, 256)
    wpath = default_weights_path()
    weights = {"path": str(wpath), "installed": wpath.is_file()}
    if wpath.is_file():
        weights["metadata"] = read_metadata(wpath)
    return {
        "version": __version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} threads)",
        "scan_override": os.environ.get("CMDD_SCAN"),
        "scan_backends": backends,
        "active_backend": {"inference": active_infer, "training": active_train},
        "preset": {
            "name": preset,
            "config": net.config.to_dict(),
            "params": count_params(net),
            "macs_thop_256": macs["thop"],
            "macs_full_256": macs["full"],
        },
        "default_weights": weights,
    }


def register(app: typer.Typer) -> None:
    @app.command("info")
    @handle_errors
    def info(
        preset: str = typer.Option("paper", "--preset", "-p", help="Preset whose size and cost to show."),
        json_out: bool = typer.Option(False, "--json", help="Print JSON only."),
    ):
        """Show the version, device, selective-scan backends and the chosen preset's size and cost."""
        data = collect_info(preset)
        if json_out:
            print_json(data)
            return
        c = out_console
        c.print(f"[bold]cmdd[/] {data['version']}  torch {data['torch']}  device: {data['device']}")
        t = Table(title="selective-scan backends", show_lines=False)
        for col in ("backend", "available", "autograd", "devices", "note"):
            t.add_column(col)
        act = data["active_backend"]
        for b in data["scan_backends"]:
            mark = []
            if b["name"] == act["inference"]:
                mark.append("active: inference")
            if b["name"] == act["training"]:
                mark.append("active: training")
            note = ", ".join(mark) or b["reason"]
            t.add_row(b["name"], "yes" if b["available"] else "no", "yes" if b["differentiable"] else "no", ",".join(b["devices"]), escape(note))
        c.print(t)
        if data["scan_override"]:
            c.print(f"CMDD_SCAN={data['scan_override']} overrides the automatic choice")
        p = data["preset"]
        c.print(
            f"preset [bold]{p['name']}[/]: {p['params'] / 1e6:.2f} M parameters, "
            f"{p['macs_thop_256'] / 1e9:.2f} G MACs at 256x256 (thop-style; "
            f"{p['macs_full_256'] / 1e9:.2f} G with the SSM einsums and scan)"
        )
        w = data["default_weights"]
        if not w["installed"]:
            c.print(f"default weights: [yellow]not installed[/] ({w['path']})")
        else:
            m = w["metadata"]
            c.print(f"default weights: {w['path']}")
            card = Table(title="model card", show_header=False)
            card.add_column("field")
            card.add_column("value")
            for k, v in m.items():
                if k == "config":
                    continue
                card.add_row(str(k), str(v))
            c.print(card)
