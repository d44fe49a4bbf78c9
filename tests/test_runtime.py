"""cmddcli.runtime: one meaning for device names, one DistInfo for torchrun."""

import pytest
import torch

from cmddcli.errors import CmddError
from cmddcli.runtime import DistInfo, device_for_rank, gather_objects, join_group, resolve_device


def test_resolve_device_names():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu0", "mps", "cuda:x"):
        with pytest.raises(CmddError):
            resolve_device(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_without_cuda_is_a_domain_error():
    with pytest.raises(CmddError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(CmddError):
        resolve_device("cuda:0", local_rank=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_follows_the_local_rank():
    n = torch.cuda.device_count()
    assert resolve_device("cuda", local_rank=n - 1) == torch.device("cuda", n - 1)
    assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
    with pytest.raises(CmddError, match="does not exist"):
        resolve_device(f"cuda:{n}")


def test_single_process_is_rank_zero_of_one():
    info = DistInfo.from_env({})
    assert info == DistInfo() and info.is_main and not info.distributed
    assert device_for_rank("cpu", info) == torch.device("cpu")
    assert join_group(info) is info  # nothing to join
    assert gather_objects({"a": 1}, info) == [{"a": 1}]
    with pytest.raises(CmddError):
        DistInfo.from_env({"WORLD_SIZE": "two"})


@pytest.mark.parametrize("exc, line", [
    (CmddError("bad.png: not an image"), "error: bad.png: not an image"),
    (FileNotFoundError(2, "No such file or directory", "w.safetensors"), "error: w.safetensors: No such file or directory"),
    (OSError(28, "No space left on device"), "error: No space left on device"),
])
def test_run_script_prints_one_error_line_and_exits_1(exc, line, capsys):
    """scripts/*.py exit through run_script: one ``error:`` line (a file name only when the error has
    one: no empty ``: `` prefix) and exit code 1; a normal return passes its code on."""
    from cmddcli.errors import run_script

    def main():
        raise exc

    with pytest.raises(SystemExit) as stop:
        run_script(main)
    assert stop.value.code == 1 and capsys.readouterr().err.strip() == line
    with pytest.raises(SystemExit) as stop:
        run_script(lambda: 3)
    assert stop.value.code == 3
