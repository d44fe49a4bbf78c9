"""Randomly initialised networks for tests.

A fresh CMDDNet is exactly the identity (its residual output conv starts at zero), which would make
many tests unable to fail; `random_net` gives the output conv PyTorch's default init instead."""

import torch

from cmddcli.model import CMDDNet, model_config


def random_net(preset: str = "tiny", seed: int = 0, **overrides) -> CMDDNet:
    torch.manual_seed(seed)
    net = CMDDNet(model_config(preset, **overrides))
    net.output.reset_parameters()
    return net
