"""`cmdd bench`: the forward table and the end-to-end photo benchmark (behaviour, not seconds)."""

import json

from typer.testing import CliRunner

from cmddcli.cli.main import app
from cmddcli.engine.bench import bench_photo, make_test_photo, photo_rows_to_markdown
from cmddcli.runtime import tune_cpu_allocator


def test_make_test_photo_size(tmp_path):
    from PIL import Image

    p = tmp_path / "x.jpg"
    make_test_photo(p, 70, 33)
    with Image.open(p) as im:
        assert im.size == (70, 33) and im.format == "JPEG"


def test_bench_photo_runs_deblur_end_to_end(tiny_weights):
    row = bench_photo(96, 64, weights=tiny_weights)
    assert row.size == "96x64" and row.seconds > 0 and row.peak_mib > 50
    assert row.precision in ("fp32", "bf16")
    assert "96x64 JPEG" in photo_rows_to_markdown([row])


def test_bench_photo_cli_with_weights(tiny_weights):
    """`cmdd bench --photo WxH --weights W` times deblur with those weights and names them; --weights
    without --photo is a one-line error."""
    res = CliRunner().invoke(app, ["bench", "--photo", "64x48", "--weights", str(tiny_weights), "--json"])
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout)[0]
    assert row["size"] == "64x48" and row["weights"] == tiny_weights.name
    res = CliRunner().invoke(app, ["bench", "--weights", str(tiny_weights)])
    assert res.exit_code == 1 and "--weights applies to --photo only" in res.output


def test_bench_forward_json():
    res = CliRunner().invoke(app, ["bench", "-p", "tiny", "--size", "24", "--size", "32x16", "-b", "cpu", "--repeats", "1",
                                   "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert rows[0]["preset"] == "tiny" and rows[0]["size"] == "24x24" and rows[0]["total_s"] > 0
    assert rows[1]["size"] == "32x16"  # width x height, as given
    # the scan is attributed whichever layout the block takes (token-major on CPU)
    assert 0 < rows[0]["scan_s"] < rows[0]["total_s"]


def test_bench_lists_take_commas_and_scan_alias():
    """`-p a,b --size 24,32x16 --scan cpu` means what `-p a -p b --size 24 --size 32x16 -b cpu` means."""
    res = CliRunner().invoke(app, ["bench", "-p", "tiny,tiny", "--size", "24,32x16", "--scan", "cpu", "--repeats", "1",
                                   "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [(r["preset"], r["size"], r["backend"]) for r in rows] == [
        ("tiny", "24x24", "cpu"), ("tiny", "32x16", "cpu")] * 2
    res = CliRunner().invoke(app, ["bench", "-p", "tiny", "--size", "24", "--scan", "nope", "--repeats", "1"])
    assert res.exit_code == 2 and "nope" in res.output


def test_bench_auto_naming_a_listed_backend_gives_one_row(monkeypatch):
    monkeypatch.setenv("CMDD_SCAN", "cpu")  # auto picks cpu here
    res = CliRunner().invoke(app, ["bench", "-p", "tiny", "--size", "24", "--scan", "cpu,auto", "--repeats", "1",
                                   "--json"])
    assert res.exit_code == 0, res.output
    assert [r["backend"] for r in json.loads(res.stdout)] == ["cpu"]


def test_bench_bad_arguments_fail_before_any_timing(tmp_path, monkeypatch):
    """Each bad argument is one error line (exit 1) or typer's usage box naming the option (exit 2),
    never a traceback, and before anything is timed (an unknown preset after a good one, an
    unwritable -o)."""
    import cmddcli.engine.bench as B

    calls = []
    monkeypatch.setattr(B, "bench_forward", lambda *a, **k: calls.append(a) or [])
    monkeypatch.setattr(B, "bench_photo", lambda *a, **k: calls.append(a))
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--size", "-5"], 2, "--size"), (["--photo", "0x0"], 2, "--photo"), (["--size", "abc"], 2, "256 or"),
        (["-p", "tiny", "--size", "24", "--repeats", "0"], 2, "--repeats"),
        (["-p", "tiny", "--size", "24", "--device", "gpu"], 1, "unknown device"),
        (["-p", "tiny,nope", "--size", "24"], 1, "unknown model preset 'nope'"),
        (["-p", "tiny", "--scan", "nope"], 2, "unknown scan backend 'nope'"),
        (["-p", "tiny", "--size", "24", "-o", str(tmp_path / "afile" / "t.md")], 1, "is a file"),
        (["-p", "tiny", "--size", "24", "-o", str(tmp_path)], 1, "is a folder"),
        (["-p", "tiny", "--photo", "64x48"], 1, "--photo times cmdd deblur"),
        (["--repeats", "2", "--photo", "64x48"], 1, "--photo times cmdd deblur"),
        (["--size", "24", "-o", str(tmp_path / "[/b]" / "t.md"), "--device", "gpu"], 1, "unknown device"),
    ]
    for args, code, text in cases:
        res = CliRunner().invoke(app, ["bench", *args])
        out = " ".join(res.output.split())
        assert res.exit_code == code and text in out and "Traceback" not in out, (args, res.output)
    assert calls == []  # nothing was timed
    # A path that looks like rich markup is printed as it is, not parsed (it crashed the error line).
    res = CliRunner().invoke(app, ["bench", "-p", "nope", "-o", str(tmp_path / "afile" / "[/b].md")])
    assert res.exit_code == 1 and "[/b].md" in res.output and "Traceback" not in res.output


def test_tune_cpu_allocator_is_idempotent():
    assert tune_cpu_allocator() == tune_cpu_allocator()


def test_training_benchmark_script_runs():
    """benchmarks/bench_train.py (the training-speed table of benchmarks/RESULTS.md) still builds a
    Trainer: it broke once when the Trainer began checking for training data the benchmark does not use."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"
    res = subprocess.run([sys.executable, str(script), "--preset", "tiny", "--stages", "32x1", "--iters", "1",
                          "--warmup", "0"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "| tiny |" in res.stdout and "32² x 1" in res.stdout
