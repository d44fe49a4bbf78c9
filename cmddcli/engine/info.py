"""Facts about this installation for ``cmdd info``: versions, device, scan backends, a preset's cost, the
shipped weights' model card."""

from __future__ import annotations

import os
from typing import Optional

import torch

from .. import __version__
from ..model import CMDDNet, model_config, ssm
from ..model.complexity import count_macs, count_params
from ..model.weights import default_weights_path, packaged_weights, read_metadata

__all__ = ["collect_info"]


def collect_info(preset: Optional[str] = None) -> dict:
    """What ``cmdd info`` shows, as a JSON-ready dict: versions, the device, every scan backend
    (available or why not) and the active ones, ``preset``'s parameters and MACs at 256x256 (thop
    style and with the scan; default: the shipped weights' preset, else ``paper``), and the shipped
    weights' metadata. Raises CmddError for an unknown preset."""

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    backends = [
        {"name": n, "available": ok, "differentiable": d, "devices": list(devs), "reason": why}
        for (n, ok, d, devs, why) in ssm.backend_status()
    ]
    active_infer = ssm.choose_backend(device, needs_grad=False).name
    active_train = ssm.choose_backend(device, needs_grad=True).name
    wpath = default_weights_path()
    weights = {"path": str(wpath), "installed": wpath.is_file()}
    if wpath.is_file():
        weights["metadata"] = read_metadata(wpath)
    if preset is None:
        preset = str(weights.get("metadata", {}).get("preset") or "paper")
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
        "default_weights": weights,
        "packaged_weights": {name: str(path) for name, path in packaged_weights().items()},
    }
