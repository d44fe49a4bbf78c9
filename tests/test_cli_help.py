"""Every command's --help works, through `cmdd` and `python -m cmddcli`, and shows its options."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cmddcli.cli.main import app

COMMANDS = {
    (): ["deblur", "prepare", "train", "eval", "info", "bench"],
    ("deblur",): ["--output", "--device", "--precision", "--weights", "--tile", "--overlap", "--json", "--scan", "--threads"],
    ("prepare",): ["dpdd", "realdof", "pairs", "synth"],
    ("prepare", "dpdd"): ["--out", "--window", "--overlap", "--stride", "--json", "--quiet"],
    ("prepare", "realdof"): ["--out", "--json"],
    ("prepare", "pairs"): ["--out", "--json"],
    ("prepare", "synth"): ["--out", "--json"],
    ("train",): ["--config", "--preset", "--set", "--resume", "--device", "--precision", "--json", "--scan"],
    ("eval",): ["--weights", "--data", "--pred", "--target", "--device", "--precision", "--tile", "--json", "--scan", "--threads"],
    ("info",): ["--preset", "--weights", "--json", "--scan"],
    ("bench",): ["--preset", "--size", "--device", "--backend", "--json"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=lambda c: " ".join(c) or "cmdd")
def test_help_of_every_command(command):
    res = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "Usage:" in res.output
    for word in COMMANDS[command]:
        assert word in res.output, f"{word} missing from `cmdd {' '.join(command)} --help`"


def test_each_short_option_means_one_thing():
    """A short flag names the same long option in every command that has it (`-p` is the model
    --preset of bench and info, `-s` only deblur's --strength, `-o` always the output folder)."""
    import typer.main

    meaning: dict = {}

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, path + [name])
        for param in getattr(cmd, "params", []):
            opts = [*param.opts, *getattr(param, "secondary_opts", [])]
            longs = frozenset(o for o in opts if o.startswith("--"))
            for short in (o for o in opts if o.startswith("-") and not o.startswith("--")):
                meaning.setdefault(short, {}).setdefault(longs, []).append(" ".join(path))

    walk(typer.main.get_command(app), ["cmdd"])
    assert {"-p", "-s", "-o", "-w"} <= set(meaning)
    # Two spellings of one option (deblur's --output / --out) share a long name; a clash shares none.
    clashes = {s: {" / ".join(sorted(longs)): cmds for longs, cmds in m.items()}
               for s, m in meaning.items() if any(not (a & b) for a in m for b in m)}
    assert not clashes, clashes


def test_a_long_error_is_still_one_line():
    """Errors are one line even when stderr is not a terminal (rich would wrap at 80 columns)."""
    long = "/tmp/" + "x" * 120 + "/w.safetensors"
    res = CliRunner().invoke(app, ["info", "--weights", long])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and long in lines[0], res.output


def test_python_dash_m_runs_the_cli():
    res = subprocess.run([sys.executable, "-m", "cmddcli", "--version"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.startswith("cmdd ")
    res = subprocess.run([sys.executable, "-m", "cmddcli", "info", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "Usage: cmdd info" in res.stdout


def test_info_describes_the_shipped_weights_preset_by_default():
    import json

    from cmddcli.model.weights import default_weights_path, read_metadata

    res = CliRunner().invoke(app, ["info", "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)["preset"]["name"]
    assert shown == read_metadata(default_weights_path())["preset"]
    res = CliRunner().invoke(app, ["info", "--json", "--preset", "paper"])
    assert json.loads(res.stdout)["preset"]["name"] == "paper"


def test_info_shows_the_card_of_named_weights():
    """`cmdd info --weights v2`: that file's card (its scores), the packaged names; unknown -> exit 1."""
    import json

    from cmddcli.model.weights import packaged_weights

    if "v2" not in packaged_weights():
        pytest.skip("no packaged v2 weights in this copy")
    res = CliRunner().invoke(app, ["info", "--json", "--weights", "v2"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["weights"]["path"].endswith("cmddnet_v2.safetensors")
    assert "scores_real_dpdd_test" in data["weights"]["metadata"]
    assert {"default", "v1", "v2"} <= set(data["packaged_weights"])
    res = CliRunner().invoke(app, ["info", "--weights", "v2"])
    assert res.exit_code == 0 and "cmddnet_v2.safetensors" in res.stdout and "scores_real_dpdd_test" in res.stdout
    res = CliRunner().invoke(app, ["info", "--weights", "v9"])
    assert res.exit_code == 1 and "not a packaged weights name" in res.output


def test_scan_option_accepts_auto_and_the_backends_only():
    assert CliRunner().invoke(app, ["info", "--json", "--scan", "auto"]).exit_code == 0
    res = CliRunner().invoke(app, ["info", "--scan", "nope"])
    assert res.exit_code == 2 and "unknown scan backend" in res.output


def test_more_threads_than_cores_is_a_warning(tmp_path):
    from cmddcli.runtime import available_cores

    res = CliRunner().invoke(app, ["deblur", str(tmp_path / "nope.jpg"), "-o", str(tmp_path / "o"),
                                   "--threads", str(available_cores() + 1)])
    assert "is more than the" in res.output and "Traceback" not in res.output


def _params_by_long_name(command_path):
    import typer.main

    cmd = typer.main.get_command(app)
    for name in command_path:
        cmd = cmd.commands[name]
    return {o: p for p in cmd.params for o in p.opts if o.startswith("--")}


@pytest.mark.parametrize("command_path", [("deblur",), ("eval",), ("prepare", "synth")], ids=" ".join)
def test_bit_depth_has_both_spellings(command_path):
    """deblur said --bit-depth, eval and prepare --bits: every command now takes both for one option."""
    params = _params_by_long_name(command_path)
    assert params["--bits"] is params["--bit-depth"]


def test_overlap_units_are_named():
    """deblur's --overlap is in pixels, prepare's a fraction of the window: the help says which."""
    assert _params_by_long_name(("deblur",))["--overlap"].metavar == "PX"
    assert _params_by_long_name(("prepare", "dpdd"))["--overlap"].metavar == "FRACTION"
    res = CliRunner().invoke(app, ["deblur", "x.png", "--overlap", "0.5"], env={"COLUMNS": "200"})
    assert res.exit_code == 2 and "--overlap" in res.output  # a fraction is refused, not truncated
