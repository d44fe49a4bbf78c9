"""Ship check: the validation-side clauses of the default weights' ship rule, for candidate weights, in one table.

    python scripts/ship_check.py W [W ...] [--bar default] [--val DIR] [--probe DIR] [--photos DIR]
        [--halo-max 0.136] [--probe-min 1.0] [--max-cast 1.0] [--tie 0.02] [--threads 2] [--antiring card|off|W,M]
        [--out FILE.md]

The rule (training/v3/README.md, issue 28) filters candidates by clauses, each read strictly, and then
picks among those that pass. For each W this measures, with W's network run once per image:

* **validation** (``--val``, default ../shared/samples/defocus/dpdd_1024): the gain of PSNR and of
  colour-fair PSNR over the input, per-image means, exactly as ``cmdd eval`` scores them (whole
  image, fp32, 8-bit protocol); clause: both above the ``--bar`` weights' (evaluated in the same
  run; default: the shipped default weights); and the worst image's gains, raw and colour-fair:
  clause > 0 (no image worse than its input);
* **halo**, on the same outputs: the share of pixels whose luma lies more than 4 levels below or
  above the local range (9 px) of input and target (:func:`cmddcli.eval.checks.halo_excursions`, as
  ``scripts/halo_check.py``), under + over, three decimals; clause <= ``--halo-max`` (v1's 0.136 %);
* **synthetic probe** (``--probe``, pairs as ``cmdd eval --data`` reads them, e.g. ``cmdd prepare synth
  /work/sharp_src/skimage -o PROBE -n 24 --size 256 --seed 7 --val-fraction 0``): the mean gain;
  clause >= ``--probe-min`` (+1.0 dB: what synthetic training taught is kept);
* **colour cast** on real defocused photos (``--photos``, default ../shared/samples/defocus/blurred_only):
  each photo restored as ``cmdd deblur`` restores it (default tiling and precision), before encoding;
  the spread of the per-channel mean shifts (:func:`cmddcli.eval.checks.channel_shift`, as
  ``scripts/colour_check.py``); clause < ``--max-cast`` levels on every photo.

Every W is run with the anti-ringing clamp its card names (``--antiring card``, as ``cmdd deblur`` and
``cmdd eval`` run it), or with the one ``--antiring`` names (off, or W,M: :mod:`cmddcli.engine.antiring`),
labelled so in the table; the bar always runs as its card says.

A clause whose data is not given (``--probe`` left out) is "not measured" and the candidate cannot
pass. The pick: among the candidates that pass every clause, the highest colour-fair gain among those
within ``--tie`` dB of the best raw gain. The test pairs are not scored here: they are scored once,
for the pick only (``cmdd eval``). Exit status 0 when some candidate passes, 3 when none does, 1 on an
error (one line).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from cmddcli.atomic import atomic_path
from cmddcli.engine import Deblurrer
from cmddcli.engine.antiring import parse_antiring
from cmddcli.errors import InputError, run_script
from cmddcli.eval.checks import channel_shift, halo_excursions, halo_share
from cmddcli.eval.protocol import EvalSettings, evaluate_model, gather_items, load_for_eval
from cmddcli.photo import read_photo

NONE_PASS = 3
SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples" / "defocus"


@dataclass
class Scores:
    """One weights file's measurements; None = not measured."""
    weights: str
    gain: float = float("nan")
    gain_cf: float = float("nan")
    worst: float = float("nan")
    worst_cf: float = float("nan")
    halo: tuple = (float("nan"), float("nan"))  # % of pixels > 4 levels (under, over)
    probe: Optional[float] = None
    cast: Optional[float] = None
    failed: list = field(default_factory=list)  # the clauses not met, by name

    @property
    def halo_total(self) -> float:
        return round(self.halo[0], 3) + round(self.halo[1], 3)  # as halo_check prints them


class _Capture:
    """A Deblurrer whose outputs are kept (so the halo is measured on what the protocol scored)."""

    def __init__(self, engine: Deblurrer):
        self.engine, self.outputs = engine, []
        self.describe = engine.describe

    def restore(self, x: np.ndarray) -> np.ndarray:
        y = self.engine.restore(x)
        self.outputs.append(y)
        return y


def protocol_engine(weights: str, threads: Optional[int], antiring: str = "card") -> Deblurrer:
    """The network as ``cmdd eval`` runs it: CPU, fp32, whole image (anti-ringing as ``antiring`` says)."""
    return Deblurrer(weights, device="cpu", precision="fp32", tile=0, threads=threads, antiring=antiring)


def validation(engine: Deblurrer, weights: str, items, window: int = 9) -> Scores:
    """Validation gains, worst image and halo of ``engine`` (loaded from ``weights``) on ``items``
    (one network pass each)."""
    cap = _Capture(engine)
    report = evaluate_model(cap, items, EvalSettings(metrics=("psnr", "psnr_cf"), device="cpu"))
    s = Scores(weights, report.overall().gain("psnr"), report.overall().gain("psnr_cf"))
    s.worst = min(r.scores["psnr"] - r.input_scores["psnr"] for r in report.rows)
    s.worst_cf = min(r.scores["psnr_cf"] - r.input_scores["psnr_cf"] for r in report.rows)
    under, over = [], []
    for it, out in zip(items, cap.outputs):
        u, o = halo_excursions(out, load_for_eval(it.source), load_for_eval(it.target), window)
        under.append(u.ravel())
        over.append(o.ravel())
    s.halo = halo_share(np.concatenate(under), np.concatenate(over))
    return s


def probe_gain(engine: Deblurrer, items) -> float:
    return evaluate_model(engine, items, EvalSettings(metrics=("psnr",), device="cpu")).overall().gain("psnr")


def colour_cast(weights: str, photos: list, threads: Optional[int], antiring: str = "card") -> float:
    """The largest colour cast (8-bit levels) over ``photos``, restored as ``cmdd deblur`` does."""
    engine = Deblurrer(weights, threads=threads, antiring=antiring)
    worst = 0.0
    for p in photos:
        rgb = read_photo(p).rgb.astype(np.float32)
        whole, _ = channel_shift(engine.restore(rgb), rgb)
        worst = max(worst, float(np.ptp(whole)))
    return worst


def judge(s: Scores, bar: Scores, args) -> None:
    """Fill ``s.failed`` with the clauses ``s`` does not meet (each read strictly)."""
    checks = [("beats bar", s.gain > bar.gain and s.gain_cf > bar.gain_cf),
              ("no image worse", s.worst > 0 and s.worst_cf > 0),
              ("halo", s.halo_total <= args.halo_max),
              ("probe", s.probe is not None and s.probe >= args.probe_min),
              ("colour", s.cast is not None and s.cast < args.max_cast)]
    s.failed = [name for name, ok in checks if not ok]


def pick(cands: list, tie: float) -> Optional[Scores]:
    """Among passing candidates: the highest cf gain among those within ``tie`` dB of the best raw gain."""
    ok = [s for s in cands if not s.failed]
    if not ok:
        return None
    best = max(s.gain for s in ok)
    return max((s for s in ok if s.gain >= best - tie), key=lambda s: s.gain_cf)


def _fmt(v: Optional[float], spec: str = "+.3f") -> str:
    return "not measured" if v is None else format(v, spec)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("weights", nargs="+", help="candidate weights files or packaged names")
    ap.add_argument("--bar", default="default", help="weights to beat on validation (default: the shipped default)")
    ap.add_argument("--val", type=Path, default=SAMPLES / "dpdd_1024", help="validation pairs")
    ap.add_argument("--probe", type=Path, help="synthetic probe pairs (left out: the clause is not measured)")
    ap.add_argument("--photos", type=Path, default=SAMPLES / "blurred_only", help="real defocused photos")
    ap.add_argument("--halo-max", type=float, default=0.136, help="largest halo share, %% (v1's)")
    ap.add_argument("--probe-min", type=float, default=1.0, help="smallest synthetic probe gain, dB")
    ap.add_argument("--max-cast", type=float, default=1.0, help="colour cast bound, 8-bit levels (strict)")
    ap.add_argument("--tie", type=float, default=0.02, help="raw gains this close (dB) count as tied")
    ap.add_argument("--threads", type=int, help="CPU threads (default: all)")
    ap.add_argument("--antiring", default="card",
                    help="anti-ringing for the candidates (not the bar): card (default), off or W,M")
    ap.add_argument("--out", type=Path, help="also write the table here (Markdown)")
    args = ap.parse_args()
    parse_antiring(args.antiring)  # a bad setting fails before minutes of scoring
    for folder in [args.val, args.photos] + ([args.probe] if args.probe else []):
        if not folder.is_dir():
            raise InputError(folder, "not a folder")
    val_items = gather_items(data=[str(args.val)])
    probe_items = gather_items(data=[str(args.probe)]) if args.probe else None
    photos = sorted(p for p in args.photos.iterdir() if p.is_file() and not p.name.startswith("."))
    if not photos:
        raise InputError(args.photos, "holds no photos")

    bar = validation(protocol_engine(args.bar, args.threads), args.bar, val_items)
    rows = ["| weights | validation gain / cf | worst image / cf | halo under + over | synthetic probe | "
            "colour cast | clauses not met |", "|---|---|---|---|---|---|---|",
            f"| bar: {args.bar} | {bar.gain:+.3f} / {bar.gain_cf:+.3f} | {bar.worst:+.3f} / {bar.worst_cf:+.3f} | "
            f"{bar.halo[0]:.3f} + {bar.halo[1]:.3f} % | | | |"]
    print("\n".join(rows), flush=True)
    cands = []
    for w in args.weights:
        engine = protocol_engine(w, args.threads, args.antiring)  # loaded once for validation and probe
        name = w if args.antiring == "card" else f"{w} (antiring {args.antiring})"
        s = validation(engine, name, val_items)
        s.probe = probe_gain(engine, probe_items) if probe_items else None
        s.cast = colour_cast(w, photos, args.threads, args.antiring)
        judge(s, bar, args)
        cands.append(s)
        rows.append(f"| {name} | {s.gain:+.3f} / {s.gain_cf:+.3f} | {s.worst:+.3f} / {s.worst_cf:+.3f} | "
                    f"{s.halo[0]:.3f} + {s.halo[1]:.3f} = {s.halo_total:.3f} % | {_fmt(s.probe, '+.2f')} | "
                    f"{_fmt(s.cast, '.2f')} | {', '.join(s.failed) or 'none'} |")
        print(rows[-1], flush=True)
    chosen = pick(cands, args.tie)
    rule = (f"Clauses: beats {args.bar} on validation raw and cf; every image > 0; halo <= {args.halo_max:g} %; "
            f"probe >= {args.probe_min:+g} dB; cast < {args.max_cast:g}. Pick: highest cf within {args.tie:g} dB "
            "of the best raw gain among those passing.")
    verdict = f"Pick: {chosen.weights}" if chosen else "Pick: none (no candidate passes every clause)"
    print("\n" + rule + "\n" + verdict)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text("\n".join(rows + ["", rule, verdict]) + "\n")
    return 0 if chosen else NONE_PASS


if __name__ == "__main__":
    run_script(main)  # CmddError / OSError: one line, exit 1
