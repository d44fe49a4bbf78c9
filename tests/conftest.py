import logging
import os

import pytest
import torch

# Keep the suite reproducible and friendly to a 2-core CI machine.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """A command's setup_logging (basicConfig(force=True)) must not leak its level and rich handler
    into the next test: `cmdd info` then printed an INFO line that a real process never shows."""
    from rich.logging import RichHandler

    root = logging.getLogger()
    level = root.level
    yield
    for h in [h for h in root.handlers if isinstance(h, RichHandler)]:  # pytest's own capture handlers stay
        root.removeHandler(h)
    root.setLevel(level)


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    """A randomly initialised `tiny` CMDDNet saved as safetensors (for CLI / engine tests)."""
    from _nets import random_net

    from cmddcli.model.weights import save_weights

    net = random_net("tiny")
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(net, path, metadata={"note": "random init for tests"}, preset="tiny")
    return path
