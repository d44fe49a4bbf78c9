"""`cmdd eval` and cmddcli.eval.protocol: the published protocol on real and synthetic files."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cmddcli.eval import protocol as E
from cmddcli.eval import metrics as M
from cmddcli.cli.main import app
from cmddcli.data.discovery import DPDD_INDOOR_TEST
from cmddcli.photo.arrays import write_png
from cmddcli.errors import InputError

SAMPLES = Path("/work/shared/samples/defocus")
if not SAMPLES.is_dir():  # the repository's own copy, when the shared folder is not mounted
    SAMPLES = Path(__file__).resolve().parents[1] / "shared" / "samples" / "defocus"
needs_samples = pytest.mark.skipif(not (SAMPLES / "dpdd_1024").is_dir(), reason="real DPDD samples not available")


def _img(rng, h, w, bits=8):
    top = 65535 if bits == 16 else 255
    return rng.integers(0, top + 1, (h, w, 3)).astype(np.uint16 if bits == 16 else np.uint8)


# ---------------------------------------------------------------- acceptance on real DPDD pairs


@needs_samples
def test_acceptance_blurred_inputs_vs_targets_real_dpdd():
    """The issue's acceptance numbers: the ten real pairs' inputs scored against their targets
    (8-bit, GIF pairs without the 48 label rows) average 24.23 dB / 0.722 / 0.0418."""
    items = E.items_from_predictions(SAMPLES / "dpdd_1024" / "blur", SAMPLES / "dpdd_1024" / "sharp")
    items += E.items_from_predictions(str(SAMPLES / "dpdd_gif_pairs" / "*_input.png"),
                                      str(SAMPLES / "dpdd_gif_pairs" / "*_gt.png"), crop_top=48)
    assert len(items) == 10
    report = E.evaluate_predictions(items)
    overall = report.overall()
    assert (overall.group, overall.count) == ("all", 10)
    assert f"{overall.means['psnr']:.2f}" == "24.23"
    assert f"{overall.means['ssim']:.3f}" == "0.722"
    assert f"{overall.means['mae']:.4f}" == "0.0418"


@needs_samples
def test_acceptance_through_the_cli_in_one_call(tmp_path):
    s = SAMPLES
    res = CliRunner().invoke(app, [
        "eval", "--pred", str(s / "dpdd_1024/blur"), "--target", str(s / "dpdd_1024/sharp"), "--crop-top", "0",
        "--pred", str(s / "dpdd_gif_pairs/*_input.png"), "--target", str(s / "dpdd_gif_pairs/*_gt.png"),
        "--crop-top", "48", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)["summary"]
    assert [r["count"] for r in summary] == [6, 4, 10]
    means = summary[-1]["means"]
    assert (round(means["psnr"], 2), round(means["ssim"], 3), round(means["mae"], 4)) == (24.23, 0.722, 0.0418)
    rows = list(csv.DictReader((tmp_path / "per_image.csv").read_text().splitlines()))
    assert len(rows) == 10 and {r["name"] for r in rows} >= {"1P0A2261", "canon_res_07"}
    assert json.loads((tmp_path / "summary.json").read_text())["settings"]["bits"] == 8


# ---------------------------------------------------------------- matching, cropping, bit depth


def test_pred_suffix_glob_and_mismatch(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    for name in ("a1", "a2", "a10"):
        write_png(tmp_path / "gt" / f"{name}.png", _img(rng, 12, 10))
        write_png(tmp_path / "pred" / f"{name}_deblurred.png", _img(rng, 12, 10))
    items = E.items_from_predictions(tmp_path / "pred", tmp_path / "gt", pred_suffix="_deblurred")
    assert [i.name for i in items] == ["a1", "a2", "a10"]  # natural order
    globbed = E.items_from_predictions(str(tmp_path / "pred" / "*_deblurred.png"), tmp_path / "gt")
    assert [i.pred for i in globbed] == [i.pred for i in items]
    (tmp_path / "gt" / "a3.png").write_bytes((tmp_path / "gt" / "a1.png").read_bytes())
    with pytest.raises(InputError, match="no prediction for a3"):
        E.items_from_predictions(tmp_path / "pred", tmp_path / "gt", pred_suffix="_deblurred")


def test_crop_top_and_mask_score_the_right_pixels(tmp_path):
    rng = np.random.default_rng(1)
    p, t = _img(rng, 40, 30), _img(rng, 40, 30)
    write_png(tmp_path / "p.png", p)
    write_png(tmp_path / "t.png", t)
    pf, tf = p / 255.0, t / 255.0
    r = E.evaluate_predictions(E.items_from_predictions(tmp_path / "p.png", tmp_path / "t.png", crop_top=12))
    assert r.rows[0].scores["psnr"] == pytest.approx(M.psnr(pf[12:], tf[12:]), abs=1e-12)
    assert r.rows[0].scores["ssim"] == pytest.approx(M.ssim(pf[12:], tf[12:]), abs=1e-12)
    mask = np.zeros((40, 30), np.uint8)
    mask[20:, 5:] = 255
    write_png(tmp_path / "m.png", mask)
    r = E.evaluate_predictions(E.items_from_predictions(tmp_path / "p.png", tmp_path / "t.png"),
                               E.EvalSettings(metrics="psnr,mae", mask=str(tmp_path / "m.png")))
    assert r.rows[0].scores["psnr"] == pytest.approx(M.psnr(pf[20:, 5:], tf[20:, 5:]), abs=1e-12)
    assert r.rows[0].scores["mae"] == pytest.approx(M.mae(pf[20:, 5:], tf[20:, 5:]), abs=1e-12)


def test_bit_depth_8_reads_16bit_files_like_cv2(tmp_path):
    rng = np.random.default_rng(2)
    a = _img(rng, 8, 8, bits=16)
    write_png(tmp_path / "x.png", a)
    np.testing.assert_array_equal(E.load_for_eval(tmp_path / "x.png", bits=8), (a >> 8) / 255.0)
    np.testing.assert_array_equal(E.load_for_eval(tmp_path / "x.png", bits=16), a / 65535.0)


def test_dpdd_test_tree_reports_indoor_outdoor_combined(tmp_path):
    """Scoring saved predictions against a DPDD tree uses SPEC §3's indoor indices."""
    rng = np.random.default_rng(3)
    root = tmp_path / "dd_dp_dataset_canon"
    preds = tmp_path / "restored"
    names = [f"1P0A{1000 + 7 * i}" for i in range(76)]
    for i, n in enumerate(names):
        t = _img(rng, 10, 12)
        write_png(root / "test_c" / "source" / f"{n}.png", t)
        write_png(root / "test_c" / "target" / f"{n}.png", t)
        # indoor predictions are perfect but for one pixel, outdoor ones are noisier
        p = t.copy()
        p[0, 0, 0] ^= 1 if i in DPDD_INDOOR_TEST else 64
        write_png(preds / f"{n}.png", p)
    res = CliRunner().invoke(app, ["eval", "--pred", str(preds), "--data", str(tmp_path), "--json",
                                   "--metrics", "mae"])
    assert res.exit_code == 0, res.output
    summary = {r["subset"]: r for r in json.loads(res.stdout)["summary"]}
    assert (summary["indoor"]["count"], summary["outdoor"]["count"], summary["combined"]["count"]) == (37, 39, 76)
    assert summary["indoor"]["means"]["mae"] == pytest.approx(1 / 255 / 360)
    assert summary["outdoor"]["means"]["mae"] == pytest.approx(64 / 255 / 360)


# ---------------------------------------------------------------- model mode


@pytest.fixture
def pairs_dir(tmp_path):
    rng = np.random.default_rng(4)
    for n in ("b", "a"):
        write_png(tmp_path / "pairs" / "source" / f"{n}.png", _img(rng, 24, 40))
        write_png(tmp_path / "pairs" / "target" / f"{n}.png", _img(rng, 24, 40))
    return tmp_path / "pairs"


def test_evaluate_model_scores_the_clamped_whole_image_output(pairs_dir):
    from _nets import random_net

    from cmddcli.engine import Deblurrer

    net = random_net("tiny").eval()
    engine = Deblurrer(model=net, device="cpu", precision="fp32", tile=0, threads=torch.get_num_threads())
    items = E.items_from_data(pairs_dir)
    assert [i.name for i in items] == ["a", "b"]
    report = E.evaluate_model(engine, items)
    for it, row in zip(items, report.rows):
        x = E.load_for_eval(it.source)
        with torch.no_grad():
            y = net(torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None])[0].permute(1, 2, 0).numpy()
        y = np.clip(y.astype(np.float64), 0, 1)
        t = E.load_for_eval(it.target)
        assert row.scores["psnr"] == pytest.approx(M.psnr(y, t), abs=1e-5)
        assert row.scores["ssim"] == pytest.approx(M.ssim(y, t), abs=1e-5)


def test_cli_eval_with_weights_saves_images_and_reports(pairs_dir, tiny_weights, tmp_path):
    out = tmp_path / "res"
    res = CliRunner().invoke(app, ["eval", "--weights", str(tiny_weights), "--data", str(pairs_dir), "--device",
                                   "cpu", "--out", str(out), "--save-images", "--bits", "16"])
    assert res.exit_code == 0, res.output
    assert "PSNR" in res.stderr and "combined" in res.stderr  # tables go to stderr, as in cmdd deblur
    assert "PSNR" not in res.stdout  # stdout is kept for --json
    assert sorted(p.name for p in (out / "images" / "pairs").iterdir()) == ["a.png", "b.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "model" and summary["settings"]["bits"] == 16 and len(summary["images"]) == 2


def test_two_pairs_folders_are_two_sets_and_the_summary_says_what_was_scored(pairs_dir, tiny_weights, tmp_path):
    # A second set in the DPDD GIF samples' layout: NAME_input / NAME_gt side by side in one folder.
    rng = np.random.default_rng(5)
    flat = tmp_path / "gif" / "pairs"  # same folder name as the first set: the second gets "#2"
    for n in ("c", "d", "e"):
        write_png(flat / f"{n}_input.png", _img(rng, 24, 40))
        write_png(flat / f"{n}_gt.png", _img(rng, 24, 40))
    (flat / "c.gif").write_bytes(b"GIF89a")  # ignored, as in the samples folder
    items = E.items_from_data(flat)
    assert [(i.name, i.source.name, i.target.name) for i in items] == [
        ("c", "c_input.png", "c_gt.png"), ("d", "d_input.png", "d_gt.png"), ("e", "e_input.png", "e_gt.png")]
    out = tmp_path / "res"
    res = CliRunner().invoke(app, ["eval", "--weights", str(tiny_weights), "--device", "cpu", "--threads", "1",
                                   "--data", str(pairs_dir), "--crop-top", "0", "--data", str(flat),
                                   "--crop-top", "4", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert [(s["group"], s["subset"], s["count"]) for s in summary["summary"]] == [
        ("pairs", "combined", 2), ("pairs#2", "combined", 3), ("all", "combined", 5)]
    assert [(s["group"], s["crop_top"], s["images"]) for s in summary["sets"]] == [
        ("pairs", 0, 2), ("pairs#2", 4, 3)]
    assert summary["weights"]["path"] == str(tiny_weights)
    from cmddcli.data.manifest import sha256_file
    from cmddcli import __version__

    assert summary["weights"]["sha256"] == sha256_file(tiny_weights) and summary["cmdd_version"] == __version__
    assert json.loads((out / "summary.json").read_text())["sets"] == summary["sets"]
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert {r["group"] for r in rows} == {"pairs", "pairs#2"}
    # Saved images stay under --out whatever the labels.
    res = CliRunner().invoke(app, ["eval", "--weights", str(tiny_weights), "--device", "cpu", "--threads", "1",
                                   "--data", str(pairs_dir), "--data", str(flat), "--out", str(out),
                                   "--save-images", "--limit", "1"])
    assert res.exit_code == 0, res.output
    assert sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.png")) == [
        "images/pairs#2/c.png", "images/pairs/a.png"]
    assert sorted(p.name for p in pairs_dir.iterdir()) == ["source", "target"]  # nothing written there
    # The folder was reused: summary.json is the last run, history.jsonl keeps both, oldest first.
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["summary"][-1]["count"] for h in history] == [5, 2]
    assert history[0]["sets"] == summary["sets"] and history[1] == json.loads((out / "summary.json").read_text())
    # Distinct folder names label the sets by folder.
    both = E.gather_items(data=[str(pairs_dir), str(flat.rename(tmp_path / "gif2"))])
    assert sorted({i.group for i in both}) == ["gif2", "pairs"]


def test_set_labels_never_collide():
    def items(group, n=1):
        return [E.EvalItem(f"{group}{i}", Path("t.png"), group=group) for i in range(n)]

    got = E._distinct_groups([items("mine"), items("pairs"), items("pairs")], ["d/mine.json", "A/mine", "B/other"])
    assert [i.group for i in got] == ["mine", "mine#2", "other"]
    got = E._distinct_groups([items("pairs"), items("pairs")], ["x/all", "y/gif"])
    assert [i.group for i in got] == ["all#2", "gif"]  # "all" is the report's row over every set


def test_cli_errors_are_one_line_exit_1(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["eval", "--pred", str(tmp_path)])
    assert res.exit_code == 1 and "--pred needs --target" in res.output
    res = runner.invoke(app, ["eval", "--pred", str(tmp_path / "nope"), "--target", str(tmp_path)])
    assert res.exit_code == 1 and "no such file or folder" in " ".join(res.output.split())
    res = runner.invoke(app, ["eval", "--data", str(tmp_path), "--metrics", "psnr,bogus"])
    assert res.exit_code == 1 and "unknown metric" in res.output
    # Negative counts are usage errors (they once scored the wrong rows / images), and an --out that is
    # a file fails before any scoring.
    for opt in ("--crop-top", "--limit"):
        res = runner.invoke(app, ["eval", "--data", str(tmp_path), opt, "-1"])
        assert res.exit_code == 2 and opt in res.output
    (tmp_path / "afile").write_text("x")
    a = (np.random.default_rng(1).random((16, 16, 3)) * 255).astype(np.uint8)
    for sub in ("source", "target"):
        write_png(tmp_path / "pairs" / sub / "a.png", a)
    res = runner.invoke(app, ["eval", "--pred", str(tmp_path / "pairs" / "source"), "--target",
                              str(tmp_path / "pairs" / "target"), "--out", str(tmp_path / "afile")])
    assert res.exit_code == 1 and "--out must be a folder" in res.output
    # A mistyped --data fails first and leaves no empty --out folder behind.
    res = runner.invoke(app, ["eval", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "new")])
    assert res.exit_code == 1 and not (tmp_path / "new").exists()


def test_existing_file_with_brackets_is_a_file_not_a_pattern(tmp_path):
    """`--pred 'p/x[1].png'` names that file (it was refused as a malformed pattern); markup-like output
    folders ('[/b]') print as they are."""
    a = (np.random.default_rng(3).random((16, 16, 3)) * 255).astype(np.uint8)
    write_png(tmp_path / "p" / "x[1].png", a)
    write_png(tmp_path / "t" / "x[1].png", a)
    res = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "p" / "x[1].png"), "--target",
                                   str(tmp_path / "t" / "x[1].png"), "--out", str(tmp_path / "[/b]o")])
    assert res.exit_code == 0 and "Traceback" not in res.output, res.output
    assert (tmp_path / "[/b]o" / "summary.json").is_file()


def test_gray_prediction_against_colour_target_warns(tmp_path, caplog):
    rng = np.random.default_rng(3)
    t = _img(rng, 12, 10)
    write_png(tmp_path / "t.png", t)
    write_png(tmp_path / "gray.png", t[..., 1])  # HxW: a grayscale PNG
    write_png(tmp_path / "col.png", t)
    with caplog.at_level("WARNING", logger="cmddcli.eval.protocol"):
        r = E.evaluate_predictions(E.items_from_predictions(tmp_path / "col.png", tmp_path / "t.png"))
        assert r.rows[0].scores["psnr"] == float("inf") or r.rows[0].scores["psnr"] > 99
        assert "grayscale" not in caplog.text
        r = E.evaluate_predictions(E.items_from_predictions(tmp_path / "gray.png", tmp_path / "t.png"))
    assert "1 prediction(s) are grayscale while their targets are in colour (" in caplog.text
    assert "gray.png): scored as three equal channels" in caplog.text
    assert np.isfinite(r.rows[0].scores["psnr"])  # still scored, as three equal channels


def test_every_bad_pair_is_listed_before_anything_is_scored(tmp_path):
    """A size mismatch, an unreadable input and a pair smaller than the SSIM window are all named in
    one error, with exit 1 and no report: a mean over a silent subset is never published (not only the
    first bad pair, and the SSIM error names its file)."""
    rng = np.random.default_rng(0)
    img = lambda h, w: (rng.random((h, w, 3)) * 255).astype(np.uint8)  # noqa: E731
    for name, (s, t) in {"a": ((32, 32), (32, 32)), "c": ((32, 32), (40, 32)), "t": ((3, 3), (3, 3))}.items():
        write_png(tmp_path / "source" / f"{name}.png", img(*s))
        write_png(tmp_path / "target" / f"{name}.png", img(*t))
    (tmp_path / "source" / "d.png").write_bytes(b"garbage" * 10)
    write_png(tmp_path / "target" / "d.png", img(32, 32))
    res = CliRunner().invoke(app, ["eval", "--pred", str(tmp_path / "source"), "--target", str(tmp_path / "target"),
                                   "--out", str(tmp_path / "out")])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "3 problem(s)" in text
    assert "c.png: size 32x32 differs" in text and "d.png" in text and "t.png" in text and "SSIM window" in text
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(E.CmddError, match="3 problem"):
        E.check_pairs([E.EvalItem(n, tmp_path / "target" / f"{n}.png", pred=tmp_path / "source" / f"{n}.png")
                       for n in "acdt"])
    E.check_pairs([E.EvalItem("t", tmp_path / "target" / "t.png", pred=tmp_path / "source" / "t.png")],
                  E.EvalSettings(metrics=("psnr",)))  # without SSIM a 3x3 pair is fine
