"""Two-process DDP training on CPU (gloo): every rank ends with the same weights; rank 0 writes."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cmddcli.train.config import train_preset
from cmddcli.train.overrides import apply_overrides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    """What torchrun sets up for a rank: one thread, the rendezvous variables."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))


def _spawn(worker, tmp_path) -> tuple:
    """Run ``worker(rank, 2, port, out)`` on two ranks; returns (out, rank 0's and rank 1's saved dicts)."""
    out = str(tmp_path / "run")
    os.makedirs(out)
    mp.spawn(worker, args=(2, _free_port(), out), nprocs=2, join=True)
    return out, torch.load(f"{out}/rank0.pt", weights_only=True), torch.load(f"{out}/rank1.pt", weights_only=True)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    _join(rank, world, port)
    from cmddcli.train.loop import train

    cfg = apply_overrides(train_preset("tiny"), [
        f'out="{out}"', "iters=4", "stages.patch=[16]", "stages.batch=[2]", "stages.ratio=[1]", "val_every=2",
        "data.val_images=1", "data.val_crop=16", "ckpt_every=2", "device=\"cpu\""])
    result = train(cfg)
    torch.save({"state": result.model.state_dict(), "losses": result.losses}, f"{out}/rank{rank}.pt")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_two_ranks_hold_identical_weights(tmp_path):
    out, r0, r1 = _spawn(_worker, tmp_path)
    assert r0["losses"] == r1["losses"]  # the logged loss is the mean over ranks
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k
    # rank 0 wrote the checkpoint with every rank's RNG state, and the exported weights
    ck = torch.load(f"{out}/checkpoints/step_00000004.pt", weights_only=True)
    assert ck["data"]["world_size"] == 2 and len(ck["rng"]) == 2
    assert os.path.isfile(f"{out}/weights/final.safetensors")


def _signalled_worker(rank: int, world: int, port: int, out: str) -> None:
    import signal

    _join(rank, world, port)
    from cmddcli.train import loop as L

    plain = L.Trainer.iteration

    def iteration(self, x, y, it):
        res = plain(self, x, y, it)
        if it == 2 and rank == 1:  # only rank 1 is told to stop (one node of a job preempted)
            os.kill(os.getpid(), signal.SIGTERM)
        return res

    L.Trainer.iteration = iteration
    cfg = apply_overrides(train_preset("tiny"), [
        f'out="{out}"', "iters=10", "stages.patch=[16]", "stages.batch=[2]", "stages.ratio=[1]", "val_every=0",
        "ckpt_every=5", "device=\"cpu\""])
    result = L.train(cfg)
    torch.save({"step": result.step, "stopped_by": result.stopped_by,
                "ckpt": str(result.last_checkpoint)}, f"{out}/rank{rank}.pt")


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo")
def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    out, r0, r1 = _spawn(_signalled_worker, tmp_path)
    assert r0["step"] == r1["step"] == 2 and r0["stopped_by"] == r1["stopped_by"] == "SIGTERM"
    assert r0["ckpt"].endswith("step_00000002.pt") and os.path.isfile(r0["ckpt"])
