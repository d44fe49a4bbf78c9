"""The training loop on CPU with the real `tiny` CMDDNet: overfitting, exact resume, NaN stop, CLI."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset
from typer.testing import CliRunner

from cmddcli.cli.main import app
from cmddcli.data.datasets import SynthDataset
from cmddcli.model.weights import load_weights
from cmddcli.train.checkpoint import load_checkpoint
from cmddcli.train.config import train_preset
from cmddcli.train.overrides import apply_overrides
from cmddcli.train.data import procedural_sharp, synth_config_for
from cmddcli.train.collate import collate_pairs
from cmddcli.train.loop import TrainingDiverged, train
from cmddcli.train.sampling import SampleStream, SeededDataset


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine lose a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synth_pairs(n, patch=16, seed=3, flips=False):
    """n fixed synthetic (blurred, sharp) pairs from procedural sharp images."""
    rng = np.random.default_rng(seed)
    ds = SynthDataset([procedural_sharp(64, rng) for _ in range(4)], patch_size=patch, config=synth_config_for(patch),
                      seed=seed, length=n, flips=flips)
    return ds


def tiny_cfg(out, *overrides):
    """The tiny preset with 16-24 px patches: a few hundred ms per step on one CPU core."""
    return apply_overrides(train_preset("tiny"), [
        f'out="{out}"', "stages.patch=[16, 24]", "stages.batch=[2, 1]", "stages.ratio=[3, 2]",
        "data.val_images=2", "data.val_crop=16", "log_every=5", *overrides])


class FixedSource:
    """A DataSource with a fixed list of training items and no validation."""

    def __init__(self, items):
        self.items = items

    def train_dataset(self, patch, stage):
        items = self.items

        class _D(Dataset):
            def __len__(self):
                return len(items)

            def __getitem__(self, i):
                return items[i]

        return _D()

    def val_dataset(self):
        return None


def test_tiny_overfits_a_fixed_batch(tmp_path):
    """The paper's optimiser (Adam 3e-4, clip 0.01, L1) on one fixed batch of two 16x16 synthetic
    pairs. A fresh CMDDNet is the identity (zero-initialised residual output), so the first loss is
    the identity's; within 60 steps the network must get at least 1.5x below it."""
    fixed = synth_pairs(2)
    cfg = tiny_cfg(tmp_path / "run", "iters=60", "stages.patch=[16]", "stages.batch=[2]", "stages.ratio=[1]",
                   'schedule.kind="constant"', "val_every=0", "ckpt_every=0")
    pairs = [fixed[0], fixed[1]]
    result = train(cfg, data=FixedSource(pairs))
    identity = float(np.mean([np.abs(b.numpy() - s.numpy()).mean() for b, s in pairs]))
    first, last = result.losses[0], float(np.mean(result.losses[-3:]))
    assert abs(first - identity) < 1e-4 * max(identity, 1.0), (first, identity)
    assert first / last >= 1.5, result.losses


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_a_resume_needs_no_init_weights_file(tmp_path):
    """A run started from ``init_weights`` resumes where that file is gone (a slim checkpoint carried to
    a fresh clone): the checkpoint's weights replace the init anyway, and the result is the same."""
    from cmddcli.model.weights import save_weights
    from _nets import random_net

    init = tmp_path / "init.safetensors"
    save_weights(random_net("tiny", seed=7), init, preset="tiny")
    common = ["iters=6", "ema_decay=0", "val_every=0", "ckpt_every=3", f'init_weights="{init}"']
    straight = train(tiny_cfg(tmp_path / "a", *common))
    cfg_b = tiny_cfg(tmp_path / "b", *common)
    part1 = train(cfg_b, stop_at=3)
    init.unlink()
    part2 = train(cfg_b, resume=str(tmp_path / "b"))
    assert part2.step == 6 and part1.losses + part2.losses == straight.losses
    with pytest.raises(Exception, match="init.safetensors"):  # a fresh start still needs it
        train(tiny_cfg(tmp_path / "c", *common))


def test_the_anchor_starts_at_zero_and_resumes_exactly(tmp_path):
    """anchor_weight > 0: the frozen start's output equals the network's at step 1 (both in train mode),
    so the first loss is the plain loss's; later it differs; a resumed run (the anchor rebuilt from
    init_weights) repeats the straight run's losses bit for bit."""
    from cmddcli.model.weights import save_weights
    from _nets import random_net

    init = tmp_path / "init.safetensors"
    net = random_net("tiny", seed=7)
    with torch.no_grad():
        net.output.weight.mul_(1e-3)  # a small correction: few rims, so the anchor holds most pixels
    save_weights(net, init, preset="tiny")
    common = ["iters=6", "ema_decay=0", "val_every=0", "ckpt_every=3", f'init_weights="{init}"', "loss=l2_halo",
              "halo_weight=0.5", "optim.lr=0.01"]
    plain = train(tiny_cfg(tmp_path / "p", *common))
    straight = train(tiny_cfg(tmp_path / "a", *common, "anchor_weight=50"))
    assert straight.losses[0] == pytest.approx(plain.losses[0], rel=1e-6)
    assert straight.losses[1:] != pytest.approx(plain.losses[1:], rel=1e-4)
    cfg_b = tiny_cfg(tmp_path / "b", *common, "anchor_weight=50")
    part1 = train(cfg_b, stop_at=3)
    part2 = train(cfg_b, resume=str(tmp_path / "b"))
    assert part1.losses + part2.losses == straight.losses


def test_resume_is_exact_and_stages_change_on_time(tmp_path):
    """10 steps + resume + 10 steps == 20 straight steps, bit for bit (weights, EMA, losses)."""
    common = ["iters=20", "ema_decay=0.9", "val_every=5", "ckpt_every=5", "keep_last=2"]
    events = []
    straight = train(tiny_cfg(tmp_path / "a", *common), callback=events.append)
    assert [(e.step, e.stage, e.patch) for e in events if e.kind == "stage"] == [(0, 0, 16), (12, 1, 24)]
    assert [e.step for e in events if e.kind == "step"] == list(range(1, 21))
    assert [e.batch for e in events if e.kind == "step"] == [2] * 12 + [1] * 8

    cfg_b = tiny_cfg(tmp_path / "b", *common)
    part1 = train(cfg_b, stop_at=10)
    assert part1.step == 10 and part1.weights is None
    part2 = train(cfg_b, resume=str(tmp_path / "b"))
    assert part2.step == 20
    assert part1.losses + part2.losses == straight.losses
    sa, sb = _state(straight.model), _state(part2.model)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ema_a, _ = load_weights(straight.ema_weights)
    ema_b, _ = load_weights(part2.ema_weights)
    for (k, va), vb in zip(ema_a.state_dict().items(), ema_b.state_dict().values()):
        assert torch.equal(va, vb), k

    # checkpoints: last two kept + best, weights_only-loadable, complete
    ckdir = tmp_path / "b" / "checkpoints"
    assert sorted(p.name for p in ckdir.iterdir()) == ["best.pt", "step_00000015.pt", "step_00000020.pt"]
    raw = torch.load(ckdir / "step_00000020.pt", weights_only=True)
    for key in ("model", "model_config", "train_config", "optimizer", "ema", "rng", "data", "schedule", "best"):
        assert key in raw
    assert raw["data"]["stage"] == 1 and raw["data"]["samples"] == 8
    assert load_checkpoint(ckdir / "best.pt")["step"] == part2.best["step"]
    assert not list(ckdir.glob("*.tmp"))

    # exported weights load with the model contract; logs have no duplicated steps after the resume
    net, meta = load_weights(part2.weights)
    assert meta["train"]["step"] == 20 and meta["train"]["ema"] is False
    assert torch.equal(net.state_dict()["embed.weight"], sb["embed.weight"])
    log_rows = csv.DictReader((tmp_path / "b" / "train_log.csv").read_text().splitlines())
    steps = [int(r["step"]) for r in log_rows]
    assert steps == [5, 10, 15, 20]
    assert (tmp_path / "b" / "config.toml").is_file()


class _NanAfter(Dataset):
    def __init__(self, good, calls_ok):
        self.good, self.calls_ok, self.calls = good, calls_ok, 0

    def __len__(self):
        return len(self.good)

    def __getitem__(self, i):
        self.calls += 1
        x, y = self.good[i]
        if self.calls > self.calls_ok:
            x = x.clone()
            x[:, 0, 0] = float("nan")
        return x, y


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    good = synth_pairs(4, seed=5)
    ds = _NanAfter([good[i] for i in range(4)], calls_ok=8)  # batch 2: iterations 1-4 are clean

    class Src(FixedSource):
        def train_dataset(self, patch, stage):
            return ds

    cfg = tiny_cfg(tmp_path / "run", "iters=10", "stages.patch=[16]", "stages.batch=[2]", "stages.ratio=[1]",
                   "ckpt_every=3", "val_every=0")
    with pytest.raises(TrainingDiverged, match=r"loss is nan at iteration 5.*last good checkpoint: .*step_00000003"):
        train(cfg, data=Src([]))
    ckdir = tmp_path / "run" / "checkpoints"
    assert [p.name for p in ckdir.iterdir()] == ["step_00000003.pt"]
    ck = load_checkpoint(ckdir / "step_00000003.pt")
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / "weights" / "final.safetensors").exists()


def test_sample_stream_is_resumable_and_splits_ranks():
    full = SampleStream(10, 3, seed=1, stage=0)
    batches = [b for _, b in zip(range(8), full)]  # 24 samples: crosses two epoch boundaries
    flat = [s for b in batches for s in b]
    assert sorted(i for i, _ in flat[:10]) == list(range(10))  # an epoch is a permutation
    resumed = SampleStream(10, 3, seed=1, stage=0, start=7)
    assert [s for b, _ in zip(resumed, range(3)) for s in b] == flat[7:16]
    # two ranks: one epoch of 7 samples is padded to 8 and split 4 + 4, covering every sample
    ranks = [list(zip(range(4), SampleStream(7, 1, seed=1, stage=0, rank=r, world=2).samples())) for r in (0, 1)]
    idx = [[i for _, (i, _) in r] for r in ranks]
    assert set(idx[0] + idx[1]) == set(range(7)) and len(idx[0]) == len(idx[1]) == 4
    seeds = [seed for r in ranks for _, (_, seed) in r]
    assert len(set(seeds)) == 8  # every draw has its own seed


def test_data_loader_workers_do_not_change_the_samples():
    ds = synth_pairs(6, flips=True)

    def first_batches(workers):
        dl = DataLoader(SeededDataset(ds, in_worker=workers > 0), batch_sampler=SampleStream(6, 2, 0, 0),
                        num_workers=workers, collate_fn=collate_pairs)
        return [b for b, _ in zip(dl, range(3))]

    for (xa, ya), (xb, yb) in zip(first_batches(0), first_batches(2)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_cli_train_stop_resume_and_export(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--iters", "4", "--out", str(out), "--set", "stages.patch=[16, 16, 16]",
            "--set", "val_every=0", "--json"]
    res = runner.invoke(app, args + ["--stop-at", "2"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["step"] == 2
    res = runner.invoke(app, args)  # same folder without --resume: refused, nothing overwritten
    assert res.exit_code == 1 and "--resume" in res.output
    res = runner.invoke(app, ["train", "--resume", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["step"] == 4 and summary["weights"].endswith("final.safetensors")
    _, meta = load_weights(summary["weights"])
    assert meta["config"]["width"] == 8
    res = runner.invoke(app, ["train", "--config", str(out / "config.toml"), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert plan["config"]["iters"] == 4 and plan["config"]["stages"]["patch"] == [16, 16, 16]
    res = runner.invoke(app, ["train", "--preset", "tiny", "--set", "optim.lrr=1", "--dry-run"])
    assert res.exit_code == 1 and "unknown config key 'optim.lrr'" in " ".join(res.output.split())
    # A dry run refuses a device name the real run would refuse, but plans for CUDA without CUDA here.
    res = runner.invoke(app, ["train", "--preset", "tiny", "--device", "gpu", "--dry-run"])
    assert res.exit_code == 1 and "unknown device 'gpu'" in res.output
    res = runner.invoke(app, ["train", "--preset", "tiny", "--device", "cuda:1", "--dry-run", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["config"]["device"] == "cuda:1"


@pytest.mark.parametrize("kind", ["pairs", "manifest"])
def test_trains_from_a_pairs_folder_or_a_prepared_manifest(tmp_path, kind):
    from cmddcli.photo.arrays import write_png
    from cmddcli.data.prepare import prepare_pairs

    rng = np.random.default_rng(0)
    root = tmp_path / "pairs"
    for split in ("train", "val"):
        for name in ("p1", "p2"):
            sharp = (procedural_sharp(40, rng) * 255).round().astype(np.uint8)
            write_png(root / split / "target" / f"{name}.png", sharp)
            write_png(root / split / "source" / f"{name}.png", (sharp // 2 + 60).astype(np.uint8))
    path = root
    if kind == "manifest":
        prepare_pairs(root, tmp_path / "prepared")
        path = tmp_path / "prepared" / "manifest.json"
    cfg = tiny_cfg(tmp_path / "run", "iters=2", "stages.patch=[16]", "stages.batch=[2]", "stages.ratio=[1]",
                   f'data.kind="{kind}"', f'data.path="{path}"', "val_every=2", "data.val_crop=32")
    result = train(cfg)
    assert result.step == 2 and result.best is not None and result.best["step"] == 2
    val = list(csv.DictReader((tmp_path / "run" / "val_log.csv").read_text().splitlines()))
    assert len(val) == 1 and float(val[0]["psnr"]) > 0


def test_bf16_autocast_runs_on_cpu_and_fp16_needs_cuda(tmp_path):
    fixed = synth_pairs(2)
    cfg = tiny_cfg(tmp_path / "bf16", "iters=2", "stages.patch=[16]", "stages.batch=[2]", "stages.ratio=[1]",
                   'precision="bf16"', "val_every=0", "ckpt_every=0")
    result = train(cfg, data=FixedSource([fixed[0], fixed[1]]))
    assert all(np.isfinite(result.losses)) and next(result.model.parameters()).dtype == torch.float32
    if not torch.cuda.is_available():
        from cmddcli.errors import CmddError

        with pytest.raises(CmddError, match="fp16 needs CUDA"):
            train(apply_overrides(cfg, ['precision="fp16"', f'out="{tmp_path / "fp16"}"']),
                  data=FixedSource([fixed[0], fixed[1]]))


def test_decoupled_weight_decay_uses_adamw(tmp_path):
    """optim.decoupled switches Adam (L2 in the gradient, the paper) to AdamW (decay on the weights)."""
    from cmddcli.runtime import DistInfo
    from cmddcli.train.loop import Trainer

    fixed = synth_pairs(2)
    for decoupled, cls in ((False, torch.optim.Adam), (True, torch.optim.AdamW)):
        cfg = tiny_cfg(tmp_path / f"run{decoupled}", "iters=1", f"optim.decoupled={str(decoupled).lower()}")
        trainer = Trainer(cfg, DistInfo(), data=FixedSource([fixed[0], fixed[1]]))
        assert type(trainer.opt) is cls


def test_resume_from_slim_checkpoint(tmp_path, caplog):
    """A slimmed checkpoint (fp16 weights + EMA, no optimizer state) resumes at its step with its
    weights (to fp16 rounding) and a fresh optimizer; the run then finishes."""
    from cmddcli.train.checkpoint import find_checkpoint, load_checkpoint, slim_checkpoint

    common = ["iters=8", "ema_decay=0.9", "val_every=0", "ckpt_every=4", "keep_last=2"]
    cfg = tiny_cfg(tmp_path / "a", *common)
    part1 = train(cfg, stop_at=4)
    full = find_checkpoint(tmp_path / "a")
    slim = tmp_path / "slim.pt"
    ck = slim_checkpoint(tmp_path / "a", slim)
    assert ck["optimizer"] is None and ck["step"] == 4
    assert slim.stat().st_size < 0.5 * full.stat().st_size
    loaded = load_checkpoint(slim)
    w = part1.model.state_dict()
    for k, v in loaded["model"].items():
        if torch.is_floating_point(v):
            assert v.dtype == torch.float16
            assert torch.allclose(v.float(), w[k].float(), rtol=1e-3, atol=1e-4), k
    with caplog.at_level("WARNING"):
        part2 = train(tiny_cfg(tmp_path / "b", *common), resume=str(slim))
    assert part2.step == 8
    assert "no optimizer state" in caplog.text
    # without the EMA: half the size again; the EMA restarts from the weights, the run still finishes
    lean = tmp_path / "lean.pt"
    ck = slim_checkpoint(tmp_path / "a", lean, keep_ema=False)
    assert ck["ema"] is None and ck["slim"]["dropped"] == ["optimizer", "ema"]
    assert lean.stat().st_size < 0.6 * slim.stat().st_size
    caplog.clear()
    with caplog.at_level("WARNING"):
        part3 = train(tiny_cfg(tmp_path / "c", *common), resume=str(lean))
    assert part3.step == 8 and "EMA restarts from the current weights" in caplog.text


def test_signal_stops_after_the_step_with_a_checkpoint(tmp_path, monkeypatch):
    """SIGTERM (or Ctrl-C) mid-run: the step finishes, a checkpoint of it is written, the CLI says how to
    continue and exits 128 + the signal's number; the run resumes from there. A second signal stops at once."""
    import os
    import signal

    from cmddcli.train import loop as L

    plain = L.Trainer.iteration

    def iteration(self, x, y, it):
        out = plain(self, x, y, it)
        if it == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # delivered to the handler before the step's bookkeeping ends
        return out

    monkeypatch.setattr(L.Trainer, "iteration", iteration)
    out = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--iters", "50", "--out", str(out), "--set", "stages.patch=[16]",
            "--set", "stages.batch=[1]", "--set", "stages.ratio=[1]", "--set", "val_every=0",
            "--set", "ckpt_every=0"]
    res = CliRunner().invoke(app, args + ["--json"])
    assert res.exit_code == 128 + signal.SIGTERM, res.output
    summary = json.loads(res.stdout)
    assert summary["step"] == 3 and summary["stopped_by"] == "SIGTERM" and summary["weights"] is None
    assert summary["last_checkpoint"].endswith("step_00000003.pt")
    assert load_checkpoint(summary["last_checkpoint"])["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the CLI's handlers are gone again
    res = CliRunner().invoke(app, ["train", "--resume", str(out), "--stop-at", "5"])
    assert res.exit_code == 0, res.output
    assert "stopped at step 5" in res.output

    def twice(self, x, y, it):
        out = plain(self, x, y, it)
        if it == 7:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(L.Trainer, "iteration", twice)
    res = CliRunner().invoke(app, ["train", "--resume", str(out)])
    assert res.exit_code == 130 and "interrupted" in res.output
    assert not (out / "checkpoints" / "step_00000007.pt").exists()


def test_a_signal_during_the_last_step_lets_the_run_finish(tmp_path, monkeypatch):
    import os
    import signal

    from cmddcli.train import loop as L

    plain = L.Trainer.iteration

    def iteration(self, x, y, it):
        out = plain(self, x, y, it)
        if it == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(L.Trainer, "iteration", iteration)
    res = train(tiny_cfg(tmp_path / "run", "iters=4", "val_every=0", "ckpt_every=0"))
    assert res.step == 4 and res.stopped_by is None and res.weights is not None


def test_off_period_checkpoints_do_not_push_periodic_ones_out(tmp_path):
    from cmddcli.train.checkpoint import CheckpointManager

    def names(folder):
        return sorted(p.name for p in folder.glob("step_*.pt"))

    mgr = CheckpointManager(tmp_path, keep_last=2, period=5)
    for step in (5, 7, 10, 12):  # 7 and 12: stops by signal or --stop-at between periodic checkpoints
        mgr.save(step, {"step": step})
        if step == 7:
            assert names(tmp_path) == ["step_00000005.pt", "step_00000007.pt"]  # the newest: the resume point
    assert names(tmp_path) == ["step_00000005.pt", "step_00000010.pt", "step_00000012.pt"]
    (tmp_path / ".cmdd-abc.pt.tmp").write_bytes(b"x")  # a write killed half-way
    mgr.save(15, {"step": 15})
    assert names(tmp_path) == ["step_00000010.pt", "step_00000015.pt"] and not list(tmp_path.glob("*.tmp"))
    plain = CheckpointManager(tmp_path / "p", keep_last=2)
    (tmp_path / "p").mkdir()
    for step in (5, 7, 10):
        plain.save(step, {"step": step})
    assert names(tmp_path / "p") == ["step_00000007.pt", "step_00000010.pt"]


def test_resume_continues_in_the_folder_that_holds_the_checkpoint(tmp_path, monkeypatch):
    """A copied run folder, or a relative --out resumed from another directory, continues where the
    checkpoint lies; the original run is left alone."""
    import shutil

    runner = CliRunner()
    monkeypatch.chdir(tmp_path)
    args = ["train", "--preset", "tiny", "--iters", "6", "--out", "rel", "--set", "stages.patch=[16]",
            "--set", "stages.batch=[1]", "--set", "stages.ratio=[1]", "--set", "val_every=0",
            "--set", "ckpt_every=2"]
    res = runner.invoke(app, args + ["--stop-at", "2"])
    assert res.exit_code == 0, res.output
    assert "continue with: cmdd train --resume rel" in " ".join(res.output.split())
    shutil.copytree(tmp_path / "rel", tmp_path / "copy")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    res = runner.invoke(app, ["train", "--resume", "../copy", "--stop-at", "4", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["last_checkpoint"] == str(Path("../copy/checkpoints/step_00000004.pt"))
    assert "changed settings" not in res.output  # out is where the files go, not a training setting
    assert not (tmp_path / "sub" / "rel").exists() and not (tmp_path / "sub" / "copy").exists()
    assert sorted(p.name for p in (tmp_path / "rel" / "checkpoints").glob("step_*")) == ["step_00000002.pt"]
    rows = list(csv.DictReader(open(tmp_path / "copy" / "train_log.csv")))
    assert [int(r["step"]) for r in rows] == sorted({int(r["step"]) for r in rows}) and rows[-1]["step"] == "4"
    # a checkpoint file kept outside a run's checkpoints/ (like training/default_v2/checkpoint.pt) goes on
    # in the run folder stored in it, not beside the file
    monkeypatch.chdir(tmp_path)
    shutil.copy(tmp_path / "rel" / "checkpoints" / "step_00000002.pt", tmp_path / "sub" / "loose.pt")
    res = runner.invoke(app, ["train", "--resume", "sub/loose.pt", "--stop-at", "3", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["last_checkpoint"] == str(Path("rel/checkpoints/step_00000003.pt"))
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["loose.pt"]


def test_resume_from_an_older_checkpoint_sets_the_newer_ones_aside(tmp_path, caplog):
    cfg = tiny_cfg(tmp_path / "run", "iters=8", "val_every=0", "ckpt_every=2", "keep_last=0")
    train(cfg, stop_at=6)
    ck = tmp_path / "run" / "checkpoints"
    with caplog.at_level("WARNING"):
        res = train(cfg, resume=ck / "step_00000002.pt", stop_at=3)
    assert "step_00000004.pt, step_00000006.pt" in caplog.text and "replaced_after_00000002" in caplog.text
    assert res.last_checkpoint == ck / "step_00000003.pt" and res.last_checkpoint.is_file()
    assert sorted(p.name for p in ck.glob("step_*")) == ["step_00000002.pt", "step_00000003.pt"]
    assert sorted(p.name for p in (ck / "replaced_after_00000002").iterdir()) == ["step_00000004.pt",
                                                                                  "step_00000006.pt"]
    caplog.clear()
    with caplog.at_level("WARNING"):
        res = train(cfg, resume=tmp_path / "run", stop_at=2)
    assert res.step == 3 and "--stop-at 2 is not past the checkpoint's step 3" in caplog.text


def test_resuming_a_checkpoint_made_before_new_config_keys_warns_of_nothing(tmp_path, caplog):
    """A key added to TrainConfig later (e.g. halo_weight) takes its default on resume: not a change."""
    cfg = tiny_cfg(tmp_path / "run", "iters=2", "val_every=0")
    res = train(cfg, stop_at=1)
    ck = torch.load(res.last_checkpoint, weights_only=False)
    for key in ("halo_weight", "halo_window"):
        del ck["train_config"][key]
    torch.save(ck, res.last_checkpoint)
    with caplog.at_level("WARNING"):
        train(cfg, resume=res.last_checkpoint)
    assert "changed settings" not in caplog.text


_PROC_CHILDREN = Path(f"/proc/self/task/{os.getpid()}/children").exists()


def _start_run_with_a_worker(tmp_path):
    """A `cmdd train` subprocess (own session) with one data-loader worker, once it has logged 2 steps."""
    import os
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cmddcli", "train", "--preset", "tiny", "--iters", "100000", "--out", str(out),
           "--set", "stages.patch=[16]", "--set", "stages.batch=[1]", "--set", "stages.ratio=[1]",
           "--set", "val_every=0", "--set", "ckpt_every=0", "--set", "log_every=1", "--set", "data.workers=1",
           "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    log = out / "train_log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    if not log.exists():
        p.kill()
        raise AssertionError(p.stderr.read() if p.poll() is not None else "no training log")
    return p


def _children(pid):
    from pathlib import Path

    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def _alive(pid):
    """True while ``pid`` runs (a zombie has exited: it only waits to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _still_running(pids, within: float):
    """The pids of ``pids`` still running after waiting up to ``within`` seconds for them to end."""
    import time

    deadline = time.time() + within
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


def _assert_clean_stop(p, sig, stdout, stderr):
    import signal

    assert p.returncode == 128 + getattr(signal, sig), stderr
    summary = json.loads(stdout)
    assert summary["stopped_by"] == sig and summary["step"] >= 2
    assert load_checkpoint(summary["last_checkpoint"])["step"] == summary["step"]
    assert "Traceback" not in stderr


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_stop_signal_to_the_process_group_with_data_workers(tmp_path, sig):
    """A terminal's Ctrl-C, or a SIGTERM to the job's process group, reaches the loader workers too:
    they must not die of it before the main process has written its checkpoint."""
    import os
    import signal

    p = _start_run_with_a_worker(tmp_path)
    try:
        os.killpg(p.pid, getattr(signal, sig))
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    _assert_clean_stop(p, sig, stdout, stderr)


@pytest.mark.skipif(not _PROC_CHILDREN, reason="needs /proc/PID/task/TID/children (Linux)")
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_stop_signal_sent_to_each_process_by_name(tmp_path, sig):
    """`pkill -f "cmdd train"` signals every process with the run's command line, the loader worker
    (outside the process group) first among them: the run must still stop cleanly with its checkpoint
    (before, the worker died of the SIGTERM and the run failed with a traceback), and the worker must
    not outlive it."""
    import os
    import signal

    p = _start_run_with_a_worker(tmp_path)
    workers = _children(p.pid)
    try:
        assert workers, "no data-loader worker"
        for pid in workers + [p.pid]:
            os.kill(pid, getattr(signal, sig))
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    _assert_clean_stop(p, sig, stdout, stderr)
    assert not _still_running(workers, within=1.0)  # torch's watchdog alone would take up to 5 s


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_a_loader_worker_dies_with_its_parent():
    """Workers ignore SIGTERM, so torch's terminate() of a hung worker no longer ends it: the kernel
    kills it when the run exits (PR_SET_PDEATHSIG). Here a child that ignores SIGTERM and sleeps must
    be gone right after its parent exits."""
    import subprocess
    import sys

    code = ("import os, signal, time\n"
            "from cmddcli.train.stopping import _die_with_parent\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    signal.signal(signal.SIGTERM, signal.SIG_IGN); _die_with_parent(); time.sleep(60); os._exit(0)\n"
            "print(pid, flush=True); time.sleep(0.5); os._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    child = int(out.stdout.split()[0])
    assert not _still_running([child], within=3.0)  # without PR_SET_PDEATHSIG it sleeps on for 60 s


def test_ema_update_averages_parameters_and_batchnorm_statistics():
    """ema_update: parameters and float buffers (BatchNorm running mean / variance) move by
    (1 - decay) toward the model's (reference: the formula on copies, within 1e-6); the integer
    batch count is copied; decay 0 copies everything."""
    import copy

    from _nets import random_net
    from cmddcli.train.loop import ema_update

    model, ema = random_net("tiny", seed=1), random_net("tiny", seed=2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(), m.running_var.uniform_(0.5, 2.0), m.num_batches_tracked.fill_(7)
    before = copy.deepcopy(ema.state_dict())
    ema_update(ema, model, 0.9)
    target = model.state_dict()
    for k, v in ema.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * before[k] + 0.1 * target[k], atol=1e-6, rtol=0)
        else:
            assert torch.equal(v, target[k]), k
    assert any("running_var" in k and not torch.equal(v, target[k]) for k, v in ema.state_dict().items())
    ema_update(ema, model, 0.0)
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(v, target[k], atol=0, rtol=0)


def test_checkpoints_average_weight_by_weight(tmp_path):
    """average_states: the float64 mean of float tensors (BatchNorm statistics included), integer
    buffers from the last; scripts/export_checkpoint.py with several checkpoints writes that mean and
    names them; mismatched states and mixed EMA / raw checkpoints are one-line errors."""
    import importlib.util
    import subprocess
    import sys

    from cmddcli.errors import CmddError
    from cmddcli.train.checkpoint import average_states, save_checkpoint

    a = {"w": torch.tensor([1.0, 2.0]), "bn.running_var": torch.tensor([0.5]), "bn.num_batches_tracked": torch.tensor(3)}
    b = {"w": torch.tensor([3.0, 5.0]), "bn.running_var": torch.tensor([1.5]), "bn.num_batches_tracked": torch.tensor(7)}
    avg = average_states([a, b])
    assert torch.equal(avg["w"], torch.tensor([2.0, 3.5])) and torch.equal(avg["bn.running_var"], torch.tensor([1.0]))
    assert int(avg["bn.num_batches_tracked"]) == 7 and avg["w"].dtype == torch.float32
    with pytest.raises(CmddError, match="not the same network"):
        average_states([a, {"w": torch.zeros(3), **{k: v for k, v in b.items() if k != "w"}}])
    with pytest.raises(CmddError, match="nothing to average"):
        average_states([])

    cfg = tiny_cfg(tmp_path / "run", "iters=4", "stages.patch=[16]", "stages.batch=[2]", "stages.ratio=[1]",
                   "val_every=0", "ckpt_every=2", "keep_last=5", "ema_decay=0.9")
    fixed = synth_pairs(2)
    train(cfg, data=FixedSource([fixed[0], fixed[1]]))
    cks = sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt"))
    assert len(cks) == 2
    script = Path(__file__).resolve().parents[1] / "scripts" / "export_checkpoint.py"
    out = tmp_path / "avg.safetensors"
    r = subprocess.run([sys.executable, str(script), *map(str, cks), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    net, meta = load_weights(out)
    emas = [load_checkpoint(c)["ema"] for c in cks]
    for k, v in net.state_dict().items():
        if torch.is_floating_point(v):
            torch.testing.assert_close(v, (emas[0][k].double() + emas[1][k].double()).div(2).float(), rtol=0, atol=0)
    assert meta["train"]["averaged"] == [str(c) for c in cks] and meta["train"]["step"] == 4
    raw = load_checkpoint(cks[0])
    raw["ema"] = None
    save_checkpoint(tmp_path / "noema.pt", raw)
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "noema.pt"), str(cks[1]), str(tmp_path / "x.safetensors")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_antiring_in_training_scores_the_clamped_output(tmp_path):
    """antiring = "W,M": the loss of a step is the loss of the engine's clamp of the network's output
    (not of the raw output), validation scores the clamped output too, and "card" (a training run has
    no card) or a bad setting is refused."""
    from cmddcli.engine.antiring import AntiRing
    from cmddcli.errors import CmddError
    from cmddcli.runtime import DistInfo
    from cmddcli.train.loop import Trainer
    from _nets import random_net
    from cmddcli.model.weights import save_weights

    init = tmp_path / "init.safetensors"
    save_weights(random_net("tiny", seed=3), init, preset="tiny")  # rings: its output leaves the input's range
    fixed = synth_pairs(2)
    x, y = collate_pairs([fixed[0], fixed[1]])
    losses = {}
    for setting in ("off", "3,0"):
        cfg = tiny_cfg(tmp_path / setting.replace(",", "_"), "iters=1", "loss=l2", "ema_decay=0", "optim.lr=0",
                       f'init_weights="{init}"', f'antiring="{setting}"')
        trainer = Trainer(cfg, DistInfo(), data=FixedSource([fixed[0], fixed[1]]))
        with torch.no_grad():
            out = trainer.net(x).float()
        if setting != "off":
            out = AntiRing(3, 0.0).apply(out, x)
        losses[setting] = trainer.iteration(x, y, 1)[0]
        assert losses[setting] == pytest.approx(float(torch.nn.functional.mse_loss(out, y)), rel=1e-5)
    assert losses["3,0"] != pytest.approx(losses["off"], rel=1e-3)
    from cmddcli.model.weights import read_metadata
    from cmddcli.train.checkpoint import export_weights

    for setting, card in (("3,0", {"window": 3, "margin": 0.0}), ("off", None)):
        path = tmp_path / f"export_{setting}.safetensors"
        export_weights(trainer.net, path, {**cfg.to_dict(), "antiring": setting}, 1, ema=False)
        assert read_metadata(path).get("antiring") == card  # the clamp it was trained with, on its card
    for bad in ("card", "8,1", "x"):
        with pytest.raises(CmddError, match="antiring"):
            tiny_cfg(tmp_path / "bad", f'antiring="{bad}"').validate()
