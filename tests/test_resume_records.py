"""Issue 29: the resume record is the single truth for everything a run writes for one output (the
output and its --save-blur-map files), written pending first and final last, and an unchanged output
is recognised by its content. Plus the batch's rows for aliases and non-regular files, one-line
failures when not on a terminal, and weights checked before the output folder is made."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cmddcli.cli.main import app


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    import cmddcli.runtime as D

    monkeypatch.setattr(D, "available_cores", lambda: 1)


def photo(path: Path, seed: int = 0, size: int = 32) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rng.random((size, size, 3)) * 200 + 20).astype(np.uint8)).save(path)
    return path


def run(args, weights=None):
    full = ["deblur", *map(str, args)] + (["--weights", str(weights)] if weights else [])
    return CliRunner().invoke(app, full, catch_exceptions=False)


def payload(r) -> dict:
    return json.loads(r.stdout)


def by_name(r) -> dict:
    return {Path(f["input"]).name: f for f in payload(r)["files"]}


def files_in(folder: Path) -> list:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and ".cmdd" not in p.relative_to(folder).parts)


# ------------------------------------------------------------------------------------ items 1-4: side files, content


def test_rerun_into_the_input_folder_with_blur_maps_takes_no_map_as_a_photo(tmp_path, tiny_weights):
    """Item 1: `-o d --suffix _s --save-blur-map` into the input folder, run three times: the reruns
    skip every photo and take no blur map as a photo."""
    d = tmp_path / "d"
    for i in range(3):
        photo(d / f"p{i}.png", i)
    args = [d, "-o", d, "--suffix", "_s", "--save-blur-map", "--json"]
    assert run(args, tiny_weights).exit_code == 0
    first = files_in(d)
    assert len(first) == 9  # 3 photos, 3 outputs, 3 blur maps
    for _ in range(2):
        r = run(args, tiny_weights)
        assert r.exit_code == 0, r.stdout
        assert payload(r)["counts"] == {"done": 0, "skipped": 3, "failed": 0, "planned": 0}
        assert files_in(d) == first


def test_deleted_output_is_redone_over_its_own_blur_map(tmp_path, tiny_weights):
    """Item 2: the blur map beside a deleted output is the record's own file, not a foreign one."""
    src, out = tmp_path / "in", tmp_path / "out"
    photo(src / "a.png")
    photo(src / "b.png", 1)
    assert run([src, "-o", out, "--save-blur-map"], tiny_weights).exit_code == 0
    (out / "a.png").unlink()
    r = run([src, "-o", out, "--save-blur-map", "--json"], tiny_weights)
    assert r.exit_code == 0, r.stdout
    assert by_name(r)["a.png"]["status"] == "done" and by_name(r)["b.png"]["status"] == "skipped"
    rec = json.loads((out / ".cmdd" / "records" / "a.png.json").read_text())
    assert rec["state"] == "done" and [s["path"] for s in rec["side_files"]] == ["a_blurmap.png"]


def test_a_copied_output_folder_resumes(tmp_path, tiny_weights):
    """Item 3: `cp -r out out2` without keeping times: the copy resumes (outputs are known by content);
    an output whose content changed is still not kept."""
    src, out, out2 = tmp_path / "in", tmp_path / "out", tmp_path / "out2"
    photo(src / "a.png")
    photo(src / "b.png", 1)
    assert run([src, "-o", out, "--save-blur-map"], tiny_weights).exit_code == 0
    shutil.copytree(out, out2, copy_function=shutil.copyfile)
    for p in out2.rglob("*"):
        os.utime(p, ns=(10**18, 10**18))  # other times than the originals
    r = run([src, "-o", out2, "--save-blur-map", "--json"], tiny_weights)
    assert r.exit_code == 0, r.stdout
    assert payload(r)["counts"]["skipped"] == 2
    data = bytearray((out2 / "b.png").read_bytes())  # same size, other content
    data[-20] ^= 0xFF
    (out2 / "b.png").write_bytes(bytes(data))
    r = run([src, "-o", out2, "--save-blur-map", "--json"], tiny_weights)
    assert r.exit_code == 1 and "was changed after cmdd wrote it" in by_name(r)["b.png"]["reason"]


def test_an_earlier_runs_files_are_never_inputs_wherever_they_sit(tmp_path, tiny_weights):
    """Item 4: an output folder given as input to another -o (outputs in its root), and blur maps in
    an earlier output folder below the walked one: none of them is taken as a photo."""
    src, out1 = tmp_path / "in", tmp_path / "out1"
    photo(src / "a.png")
    assert run([src, "-o", out1, "--save-blur-map"], tiny_weights).exit_code == 0
    photo(out1 / "new.png", 5)  # a photo the user put there later is an input
    r = run([out1, "-o", tmp_path / "out2", "--dry-run", "--json"], tiny_weights)
    assert sorted(by_name(r)) == ["new.png"], r.stdout
    shoot = tmp_path / "shoot"
    photo(shoot / "a.png")
    photo(shoot / "day" / "b.png", 1)
    assert run([shoot, "-r", "-o", shoot / "v1", "--save-blur-map"], tiny_weights).exit_code == 0
    r = run([shoot, "-r", "-o", shoot / "v2", "--dry-run", "--json"], tiny_weights)
    planned = sorted(Path(f["input"]).relative_to(shoot).as_posix() for f in payload(r)["files"])
    assert planned == ["a.png", "day/b.png"]
    r = run([shoot / "v1", "-r", "-o", tmp_path / "v3", "--dry-run", "--json"], tiny_weights)  # from below
    assert r.exit_code == 1 and "no images found" in r.stderr


def test_old_records_without_a_content_hash_still_resume(tmp_path, tiny_weights):
    """Records written before issue 29 (size and modification time, no state) are still read."""
    src, out = tmp_path / "in", tmp_path / "out"
    photo(src / "a.png")
    assert run([src, "-o", out], tiny_weights).exit_code == 0
    rec_path = out / ".cmdd" / "records" / "a.png.json"
    rec = json.loads(rec_path.read_text())
    st = (out / "a.png").stat()
    old = {"output": str(out / "a.png"), "output_file": {"size": st.st_size, "mtime_ns": st.st_mtime_ns},
           "source": rec["source"], "settings": rec["settings"], "created": rec["created"]}
    rec_path.write_text(json.dumps(old))
    r = run([src, "-o", out, "--json"], tiny_weights)
    assert r.exit_code == 0 and payload(r)["counts"]["skipped"] == 1
    r = run([out, "-o", tmp_path / "o3", "--dry-run"], tiny_weights)  # still an output, not a photo
    assert r.exit_code == 1 and "no images found" in r.stderr


# ------------------------------------------------------------------------------------ item 5: record first


def test_a_stop_between_the_output_and_its_record_resumes_cleanly(tmp_path, tiny_weights, monkeypatch):
    """Item 5: SIGTERM (Ctrl-C) after the output is renamed into place but before its record is
    final: the rerun of the same command redoes that file and finishes with nothing failed."""
    from cmddcli.engine import resume

    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(3):
        photo(src / f"p{i}.png", i)
    real = resume.remember
    calls = []

    def stopped(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the signal arrives here
        return real(*a, **k)

    monkeypatch.setattr(resume, "remember", stopped)
    r = run([src, "-o", out, "--save-blur-map"], tiny_weights)
    assert r.exit_code == 130
    assert (out / "p1.png").exists()  # the output is in place, its record not final
    monkeypatch.setattr(resume, "remember", real)
    r = run([src, "-o", out, "--save-blur-map", "--json"], tiny_weights)
    assert r.exit_code == 0, r.stdout
    st = {k: v["status"] for k, v in by_name(r).items()}
    assert st == {"p0.png": "skipped", "p1.png": "done", "p2.png": "done"}
    for i in range(3):
        rec = json.loads((out / ".cmdd" / "records" / f"p{i}.png.json").read_text())
        assert rec["state"] == "done"
    r = run([src, "-o", out, "--save-blur-map", "--json"], tiny_weights)
    assert r.exit_code == 0 and payload(r)["counts"]["skipped"] == 3


# ------------------------------------------------------------------------------------ item 6: weights


def _bad_weights(tmp_path: Path, tiny_weights: Path) -> dict:
    from safetensors.torch import save_file
    import torch

    data = tiny_weights.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.safetensors").write_bytes(b"not weights at all")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "list.safetensors"), metadata={"cmdd": "[1, 2]"})
    save_file({"x": torch.zeros(2)}, str(tmp_path / "str.safetensors"), metadata={"cmdd": '"hello"'})
    save_file({"x": torch.zeros(2)}, str(tmp_path / "num.safetensors"), metadata={"cmdd": "3"})
    from safetensors import safe_open

    with safe_open(str(tiny_weights), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    k = sorted(tensors)[0]
    tensors[k] = torch.zeros(*[s + 1 for s in tensors[k].shape])
    save_file(tensors, str(tmp_path / "shape.safetensors"), metadata=meta)
    return {n: tmp_path / f"{n}.safetensors" for n in ("missing", "trunc", "text", "list", "str", "num", "shape")}


def test_unusable_weights_fail_before_the_output_folder_is_made(tmp_path, tiny_weights):
    """Item 6: missing, truncated, not-safetensors, wrong-shape weights or a cmdd header that is not a
    JSON object: one error line, and no empty -o folder left behind."""
    a = photo(tmp_path / "a.png")
    for name, w in _bad_weights(tmp_path, tiny_weights).items():
        out = tmp_path / f"out_{name}"
        r = run([a, "-o", out, "--weights", w])
        assert r.exit_code == 1 and "Traceback" not in r.stderr, (name, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and str(w.name) in r.stderr, (name, r.stderr)
        assert not out.exists(), name


def test_info_with_a_header_that_is_not_an_object_is_one_line(tmp_path, tiny_weights):
    for name in ("list", "str", "num"):
        w = _bad_weights(tmp_path, tiny_weights)[name]
        r = CliRunner().invoke(app, ["info", "--weights", str(w)], catch_exceptions=False)
        assert r.exit_code == 1 and "Traceback" not in r.output, r.output
        assert len(r.stderr.strip().splitlines()) == 1 and "not a JSON object" in r.stderr, r.stderr


# ------------------------------------------------------------------------------------ items 7, 9, 15: rows


def test_a_named_alias_of_a_named_file_gets_its_own_row(tmp_path, tiny_weights):
    """Item 7: `a.png alias.png` where alias.png links to a.png: two rows, the alias skipped with why."""
    a = photo(tmp_path / "a.png")
    (tmp_path / "alias.png").symlink_to(a)
    r = run([a, tmp_path / "alias.png", "-o", tmp_path / "out", "--json"], tiny_weights)
    rows = by_name(r)
    assert r.exit_code == 0 and sorted(rows) == ["a.png", "alias.png"]
    assert rows["a.png"]["status"] == "done"
    assert rows["alias.png"]["status"] == "skipped" and "same file as" in rows["alias.png"]["reason"]
    assert str(a) in rows["alias.png"]["reason"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
def test_a_named_pipe_is_never_opened(tmp_path, tiny_weights):
    """Item 9: a FIFO in an input folder (or named on its own) gets a row with the reason; the other
    photos are processed, nothing blocks."""
    src = tmp_path / "in"
    photo(src / "a.png")
    os.mkfifo(src / "pipe.png")
    out = tmp_path / "out"
    for args in ([src], [src / "a.png", src / "pipe.png"]):
        cmd = [sys.executable, "-m", "cmddcli", "deblur", *map(str, args), "-o", str(out), "--json",
               "--weights", str(tiny_weights), "--threads", "1"]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)
        except subprocess.TimeoutExpired:
            pytest.fail(f"cmdd blocked on the named pipe ({args})")
        rows = {Path(f["input"]).name: f for f in json.loads(p.stdout)["files"]}
        assert rows["a.png"]["status"] in ("done", "skipped"), p.stdout
        assert rows["pipe.png"]["status"] == "failed" and "not a regular file" in rows["pipe.png"]["reason"]
        assert p.returncode == 1


def test_failures_are_one_line_each_when_not_on_a_terminal(tmp_path, tiny_weights):
    """Item 15: with stderr piped (80 columns), each failed file is one line with its whole path and
    reason, so `grep NAME log` finds it."""
    src = tmp_path / ("a-rather-long-folder-name-for-the-shoot-" * 2)
    photo(src / "ok.png")
    bad = src / ("broken-file-with-a-long-name-" * 2 + ".png")
    bad.write_bytes(b"")
    r = run([src, "-o", tmp_path / "out"], tiny_weights)
    assert r.exit_code == 1
    lines = [ln for ln in r.stderr.splitlines() if str(bad) in ln]
    assert lines and "empty" in lines[0].lower(), r.stderr


def test_an_unexpected_exception_fails_its_file_and_the_batch_goes_on(tmp_path, tiny_weights, monkeypatch):
    """A decoder's (or cmdd's own) unexpected exception on one file used to end the whole batch with a
    traceback, no summary and an empty --json: now that file fails with the exception named, the other
    files are deblurred, and the exit code is 1."""
    import cmddcli.engine.runner as R

    real_read = R.read_photo

    def read(path, *a, **k):
        if Path(path).name == "b.png":
            raise ValueError("subsection not found")
        return real_read(path, *a, **k)

    monkeypatch.setattr(R, "read_photo", read)
    photo(tmp_path / "in" / "a.png")
    photo(tmp_path / "in" / "b.png", seed=1)
    photo(tmp_path / "in" / "c.png", seed=2)
    r = CliRunner().invoke(app, ["deblur", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--json",
                                 "--weights", str(tiny_weights)])
    assert r.exit_code == 1
    rows = by_name(r)
    assert [rows[n]["status"] for n in ("a.png", "b.png", "c.png")] == ["done", "failed", "done"]
    assert "ValueError: subsection not found" in rows["b.png"]["reason"]
    assert "\n" not in rows["b.png"]["reason"]
