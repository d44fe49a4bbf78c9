"""Fit the residual gain of trained weights on training pairs; score it on others; write the weights.

    python scripts/residual_gain.py WEIGHTS --data DIR [--data DIR ...] [--gains 1:1.8:0.05]
        [--threads N] [--report FILE.md] [--write OUT --gain G|fit] [--dtype fp32]

The network restores ``x + r(x)``; with residual gain g it restores ``x + g * r(x)``
(cmddcli.model.residual_gain: the output convolution scaled by g, exact, no run-time cost). Each
--data (a pairs folder with blur/ and sharp/, a DPDD tree or a manifest, as cmdd eval --data) is run
through the network once (cmddcli.engine.Deblurrer, fp32, whole image, as cmdd eval), and every
gain of --gains (START:STOP:STEP inclusive, or a comma list) is scored from that one output by the
cmdd eval protocol (clip to [0, 1], unquantised; PSNR and colour-fair PSNR against the target; gain
= score minus the input's). Printed per set and gain: the mean gains and the worst image's; and the
least-squares gain ``<r, t - x> / <r, r>`` pooled over the set's pixels.

--write OUT writes WEIGHTS with the output convolution scaled by --gain: a number, or ``fit`` = the
gain of the grid with the highest mean colour-fair gain on the FIRST --data set (give the training
pairs first; the other sets are then only scored, never chosen from). OUT keeps the card of WEIGHTS
(absolute paths cut) and adds "residual_gain": the gain, how it was chosen, the source's name and
SHA-256, and each set's curve.

Exit status: 0 done; 1 an error (one line on stderr; nothing written).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
from pathlib import Path

import numpy as np

from cmddcli.atomic import atomic_path, check_writable
from cmddcli.engine import Deblurrer
from cmddcli.errors import CmddError, run_script
from cmddcli.eval.protocol import items_from_data, load_for_eval
from cmddcli.fileutil import sha256_file
from cmddcli.model.residual_gain import check_gain, gain_curve, scale_residual
from cmddcli.model.weights import load_weights, resolve_weights, save_weights

_spec = importlib.util.spec_from_file_location("prune_states", Path(__file__).with_name("prune_states.py"))
_prune = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_prune)
STORAGE_DTYPES, portable, preset_of = _prune.STORAGE_DTYPES, _prune.portable, _prune.preset_of


def parse_gains(spec: str) -> list[float]:
    """"START:STOP:STEP" (inclusive) or "a,b,c" -> sorted gains, each > 0. Raises CmddError."""
    try:
        if ":" in spec:
            start, stop, step = (float(v) for v in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            gains = [round(start + i * step, 6) for i in range(int(round((stop - start) / step)) + 1)]
        else:
            gains = [float(v) for v in spec.split(",")]
    except ValueError:
        raise CmddError(f"--gains must be START:STOP:STEP (STEP > 0, STOP >= START) or a comma list, got {spec!r}")
    if not gains or min(gains) <= 0:
        raise CmddError(f"--gains must be > 0, got {spec!r}")
    return sorted(set(gains) | {1.0})


def score_set(engine: Deblurrer, data: str, items: list, gains: list[float]) -> dict:
    """Run the network on every pair (``items``, found in ``data``) and score each gain (module docstring)."""
    per_image, num, den = [], 0.0, 0.0
    for it in items:
        x = load_for_eval(it.source)
        t = load_for_eval(it.target)
        y = engine.restore(x.astype(np.float32)).astype(np.float64)
        r = y - x
        num, den = num + float((r * (t - x)).sum()), den + float((r * r).sum())
        base = gain_curve(x, x, t, [1.0])[1.0]  # the input's own scores
        curve = gain_curve(x, y, t, gains)
        per_image.append({"name": it.name, "input": base, "curve": curve})
        logging.info("%s: gain 1 %+.3f / cf %+.3f", it.name, curve[1.0]["psnr"] - base["psnr"],
                     curve[1.0]["psnr_cf"] - base["psnr_cf"])
    rows = []
    for g in gains:
        raw = [im["curve"][g]["psnr"] - im["input"]["psnr"] for im in per_image]
        cf = [im["curve"][g]["psnr_cf"] - im["input"]["psnr_cf"] for im in per_image]
        rows.append({"gain": g, "psnr_gain": float(np.mean(raw)), "psnr_cf_gain": float(np.mean(cf)),
                     "worst_psnr_gain": float(min(raw)), "worst_psnr_cf_gain": float(min(cf))})
    return {"data": data, "images": len(per_image), "least_squares_gain": num / den if den else float("nan"),
            "curve": rows, "per_image": per_image}


def report_md(weights: str, sets: list[dict], chosen: float | None) -> str:
    lines = [f"# Residual gain of {weights}", ""]
    for s in sets:
        lines += [f"## {portable(s['data'])} ({s['images']} pairs; least-squares gain {s['least_squares_gain']:.3f})", "",
                  "| residual gain | mean gain, dB | cf gain | worst image | worst cf |", "|---:|---:|---:|---:|---:|"]
        for r in s["curve"]:
            mark = " **(chosen)**" if chosen is not None and r["gain"] == chosen else ""
            lines.append(f"| {r['gain']:g}{mark} | {r['psnr_gain']:+.3f} | {r['psnr_cf_gain']:+.3f} | "
                         f"{r['worst_psnr_gain']:+.3f} | {r['worst_psnr_cf_gain']:+.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", help="weights file or packaged name (v1, v2, default)")
    ap.add_argument("--data", action="append", required=True, help="pairs to score (repeatable; the first fits)")
    ap.add_argument("--gains", default="1:1.8:0.05", help="START:STOP:STEP or a comma list (default 1:1.8:0.05)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    ap.add_argument("--report", type=Path, default=None, help="write the curves as Markdown here")
    ap.add_argument("--write", type=Path, default=None, help="weights file to write with the residual gain")
    ap.add_argument("--gain", default=None, help="the gain to write: a number, or 'fit' (module docstring)")
    ap.add_argument("--dtype", choices=list(STORAGE_DTYPES), default="fp32", help="storage type of --write")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    src = resolve_weights(args.weights)
    gains = parse_gains(args.gains)
    fixed = None
    if args.write is not None:
        _prune.check_out_path(src, args.write, "residual-gain")
        check_writable(args.write, "weights file")
        if args.gain is None:
            raise CmddError("--write needs --gain G or --gain fit")
        if args.gain != "fit":
            try:
                fixed = float(args.gain)
            except ValueError:
                raise CmddError(f"--gain must be a number or 'fit', got {args.gain!r}")
            check_gain(fixed)  # before the long part; scale_residual checks the same
    elif args.gain is not None:
        raise CmddError("--gain is for --write")
    if args.report is not None:
        check_writable(args.report, "report")
    found = [(d, items_from_data(d)) for d in args.data]  # every set found before the long part

    engine = Deblurrer(src, device="cpu", precision="fp32", tile=0, threads=args.threads)  # whole image: the protocol
    sets = [score_set(engine, d, items, gains) for d, items in found]
    for s in sets:
        best = max(s["curve"], key=lambda r: r["psnr_cf_gain"])
        print(f"{s['data']}: {s['images']} pairs, least-squares gain {s['least_squares_gain']:.3f}; "
              f"best cf at {best['gain']:g}", flush=True)
        for r in s["curve"]:
            print(f"  gain {r['gain']:5.2f}: {r['psnr_gain']:+.3f} / cf {r['psnr_cf_gain']:+.3f} dB "
                  f"(worst {r['worst_psnr_gain']:+.3f} / {r['worst_psnr_cf_gain']:+.3f})", flush=True)
    chosen = None
    if args.write is not None:
        chosen = fixed if fixed is not None else max(sets[0]["curve"], key=lambda r: r["psnr_cf_gain"])["gain"]
        model, meta = load_weights(src)
        model = scale_residual(model.float(), chosen)
        card = _prune.inherited_card(meta)
        card["residual_gain"] = {
            "gain": chosen,
            "chosen": "given" if fixed is not None else f"highest mean colour-fair gain on {portable(args.data[0])}",
            "from": src.name,
            "from_sha256": sha256_file(src),
            "method": "cmddcli.model.residual_gain.scale_residual: output convolution x gain",
            "curves": [{"data": portable(s["data"]), "images": s["images"],
                        "least_squares_gain": round(s["least_squares_gain"], 4),
                        "curve": [{k: round(v, 4) for k, v in r.items()} for r in s["curve"]]} for s in sets],
        }
        save_weights(model, args.write, metadata=card, dtype=STORAGE_DTYPES[args.dtype], preset=preset_of(model.config))
        print(f"wrote {args.write.name} (residual gain {chosen:g}).", flush=True)
    if args.report is not None:
        with atomic_path(args.report) as tmp:
            Path(tmp).write_text(report_md(src.name, sets, chosen))
    return 0


if __name__ == "__main__":
    run_script(main)  # CmddError / OSError: one line, exit 1
