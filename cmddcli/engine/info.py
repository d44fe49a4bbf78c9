"""Facts about this installation for ``cmdd info``: versions, device, scan backends, a preset's cost, the
shipped weights' model card."""

from __future__ import annotations

import os
from typing import Optional

import torch

from .. import __version__
from ..errors import WeightsError
from ..model import CMDDNet, model_config, ssm
from ..model.complexity import count_macs, count_params
from ..model.weights import default_weights_path, packaged_weights, read_metadata, resolve_weights

__all__ = ["collect_info"]


def _weights_entry(path) -> dict:
    entry = {"path": str(path), "installed": path.is_file()}
    if path.is_file():
        entry["metadata"] = read_metadata(path)
    return entry


def collect_info(preset: Optional[str] = None, weights: Optional[str] = None) -> dict:
    """What ``cmdd info`` shows, as a JSON-ready dict: versions, the device, every scan backend
    (available or why not) and the active ones, ``preset``'s parameters and MACs at 256x256 (thop
    style and with the scan; default: the shipped weights' preset, else ``paper``), and the shipped
    weights' metadata; with ``weights`` (a file or a packaged name, :func:`resolve_weights`) also that
    file's, under ``"weights"``, and its preset is the default one. Raises CmddError for an unknown
    preset, WeightsError for weights that cannot be found or read."""

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    backends = [
        {"name": n, "available": ok, "differentiable": d, "devices": list(devs), "reason": why}
        for (n, ok, d, devs, why) in ssm.backend_status()
    ]
    active_infer = ssm.choose_backend(device, needs_grad=False).name
    active_train = ssm.choose_backend(device, needs_grad=True).name
    default = _weights_entry(default_weights_path())
    chosen = None
    if weights is not None:
        chosen = _weights_entry(resolve_weights(weights))
        if not chosen["installed"]:
            raise WeightsError(f"{chosen['path']}: no such weights file")
    if preset is None:
        preset = str((chosen or default).get("metadata", {}).get("preset") or "paper")
    net = CMDDNet(model_config(preset))
    macs = count_macs(net, 256, 256)
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
        "default_weights": default,
        **({"weights": chosen} if chosen else {}),
        "packaged_weights": {name: str(path) for name, path in packaged_weights().items()},
    }
