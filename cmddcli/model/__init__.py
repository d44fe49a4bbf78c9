"""The CMDDNet model: config and presets, network, selective scan, weights."""

from .cmddnet import CMDDNet
from .config import PRESETS, ModelConfig, model_config

__all__ = ["CMDDNet", "ModelConfig", "PRESETS", "model_config"]
