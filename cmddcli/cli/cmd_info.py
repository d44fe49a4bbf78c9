"""`cmdd info`: version, device, scan backends, preset sizes and the shipped weights' model card."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import handle_errors, json_option, out_console, print_json, scan_option, weights_option


def register(app: typer.Typer) -> None:
    """Add ``cmdd info`` to ``app``."""

    @app.command("info")
    @handle_errors
    def info(
        preset: Optional[str] = typer.Option(
            None, "--preset", "-p", help="Preset whose size and cost to show (default: the shipped weights')."),
        weights: Optional[str] = weights_option("Show this weights file's model card (a path or a packaged name: v1, v2)."),
        json_out: bool = json_option("Print JSON only."),
        scan: Optional[str] = scan_option(),
    ):
        """Show the version, device, selective-scan backends and the chosen preset's size and cost."""
        from ..engine.info import collect_info

        data = collect_info(preset, weights)
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
        others = [n for n in data["packaged_weights"] if n != "default"]
        if not w["installed"]:
            c.print(f"default weights: [yellow]not installed[/] ({w['path']})")
        else:
            c.print(f"default weights: {w['path']}")
        if others:
            c.print(f"packaged weights (--weights NAME): {', '.join(others)}")
        if "weights" in data:
            w = data["weights"]
            c.print(f"weights: {w['path']}")
        if w["installed"]:
            m = w["metadata"]
            card = Table(title="model card", show_header=False)
            card.add_column("field")
            card.add_column("value")
            for k, v in m.items():
                if k == "config":
                    continue
                card.add_row(str(k), str(v))
            c.print(card)
