"""``cmdd deblur --report``: a static HTML page to look at the results before deciding.

``OUT/index.html`` has one card per photo: a before/after slider (drag anywhere on the picture, or
use the arrow keys), the strength and the restored region, the time taken and any warnings.
Previews are small JPEGs in ``OUT/.cmdd/report/`` (long side at most :data:`PREVIEW_SIZE` px,
named by a hash of the output path so every rank of a distributed run agrees). The page is one
file with inline CSS and JavaScript: no server, no network, it opens from ``file://`` offline.
"""

from __future__ import annotations

import hashlib
import html
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import CmddError
from ..atomic import atomic_path, atomic_write_bytes
from ..photo.samples import from_float

log = logging.getLogger(__name__)

REPORT_NAME = "index.html"
PREVIEW_DIR = Path(".cmdd") / "report"
PREVIEW_SIZE = 960
PREVIEW_QUALITY = 85

__all__ = ["REPORT_NAME", "PREVIEW_DIR", "preview_paths", "write_previews", "write_report"]


def preview_paths(out_dir: Path, output: str | os.PathLike) -> tuple[Path, Path]:
    """(before, after) preview files of one output, relative to ``out_dir``."""
    try:
        rel = Path(output).absolute().relative_to(Path(out_dir).absolute()).as_posix()
    except ValueError:
        rel = Path(output).as_posix()
    key = hashlib.sha1(rel.encode()).hexdigest()[:16]
    return PREVIEW_DIR / f"{key}_before.jpg", PREVIEW_DIR / f"{key}_after.jpg"


def _save_preview(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    im = Image.fromarray(from_float(rgb))
    if max(im.size) > PREVIEW_SIZE:
        s = PREVIEW_SIZE / max(im.size)
        im = im.resize((max(1, round(im.width * s)), max(1, round(im.height * s))), Image.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        im.save(tmp, format="JPEG", quality=PREVIEW_QUALITY)


def write_previews(out_dir: Path, output: str | os.PathLike, before: np.ndarray, after: np.ndarray) -> None:
    """Write the before/after preview JPEGs of one photo ((H, W, 3) float32 in [0, 1] each)."""
    b, a = preview_paths(out_dir, output)
    _save_preview(Path(out_dir) / b, before)
    _save_preview(Path(out_dir) / a, after)


def _previews_from_files(out_dir: Path, row: dict) -> Optional[str]:
    """Make the previews of a photo skipped in this run from its files. Returns a warning or None."""
    from ..photo import read_photo

    try:
        before = read_photo(row["input"]).rgb
        after = read_photo(row["output"]).rgb
    except (CmddError, OSError) as e:
        return f"no preview ({e})"
    if before.shape != after.shape:
        return "no preview (input and output differ in size)"
    write_previews(out_dir, row["output"], before, after)
    return None


_CSS = """
:root{--bg:#15171a;--card:#1f2226;--fg:#e8e8e8;--dim:#9aa0a6;--warn:#f2c14e;--bad:#ef6461;--ok:#7bd389}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.45 system-ui,sans-serif}
header{padding:18px 24px;border-bottom:1px solid #2c3036}h1{margin:0 0 4px;font-size:20px}
header p{margin:0;color:var(--dim)}main{display:grid;gap:20px;padding:20px 24px;
grid-template-columns:repeat(auto-fill,minmax(min(100%,440px),1fr))}
.card{background:var(--card);border-radius:10px;padding:14px;overflow:hidden}
.card h2{font-size:15px;margin:0 0 10px;word-break:break-all}
.compare{position:relative;width:100%;background:#000;border-radius:6px;overflow:hidden;--pos:50%;
touch-action:none;user-select:none}
.compare img{position:absolute;inset:0;width:100%;height:100%;display:block;object-fit:contain}
.compare img.after{clip-path:inset(0 0 0 var(--pos))}
.compare .divider{position:absolute;top:0;bottom:0;left:var(--pos);width:2px;margin-left:-1px;background:#fff;
box-shadow:0 0 4px #000;pointer-events:none}
.compare .tag{position:absolute;top:8px;padding:1px 7px;border-radius:4px;background:#000a;font-size:12px;
pointer-events:none}.compare .l{left:8px}.compare .r{right:8px}
.compare input{position:absolute;inset:0;width:100%;height:100%;margin:0;opacity:0;cursor:ew-resize}
.compare input:focus-visible+.divider{background:var(--warn)}
dl{display:grid;grid-template-columns:auto 1fr;gap:2px 12px;margin:10px 0 0;font-size:13px}
dt{color:var(--dim)}dd{margin:0;word-break:break-all}
.status-failed h2{color:var(--bad)}.status-done .st{color:var(--ok)}
ul.warnings{margin:8px 0 0;padding-left:18px;color:var(--warn);font-size:13px}
.reason{color:var(--bad)}
"""

_JS = """
document.querySelectorAll('.compare').forEach(function (c) {
  var r = c.querySelector('input');
  function set() { c.style.setProperty('--pos', r.value + '%'); }
  r.addEventListener('input', set); set();
});
"""


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _card(row: dict, out_dir: Path) -> str:
    name = Path(row["input"]).name
    status = row.get("status", "")
    restore = row.get("restore") or {}
    facts = [("status", f'<span class="st">{_esc(status)}</span>')]
    if row.get("width"):
        facts.append(("size", f'{row["width"]} × {row["height"]}'))
    if restore:
        facts.append(("strength", _esc(f'{restore.get("strength", 1.0):g}')))
        region = restore.get("restore", "everything")
        frac = restore.get("restored_fraction")
        if frac is not None and region != "everything":
            region = f"{region} ({100 * frac:.0f} % of the photo)"
        facts.append(("restored", _esc(region)))
    if status == "done":
        facts.append(("time", f'{row.get("seconds", 0.0):.1f} s'))
    facts.append(("input", _esc(row["input"])))
    if row.get("output"):
        facts.append(("output", _esc(row["output"])))
    body = ""
    before, after = (preview_paths(out_dir, row["output"]) if row.get("output") else (None, None))
    if before is not None and (out_dir / before).is_file() and (out_dir / after).is_file():
        from PIL import Image

        with Image.open(out_dir / before) as im:
            w, h = im.size
        body = (
            f'<div class="compare" style="aspect-ratio:{w}/{h}">'
            f'<img class="before" src="{_esc(before.as_posix())}" alt="before: {_esc(name)}" width="{w}" height="{h}">'
            f'<img class="after" src="{_esc(after.as_posix())}" alt="after: {_esc(name)}" width="{w}" height="{h}">'
            f'<input type="range" min="0" max="100" value="50" step="0.5" aria-label="before / after: {_esc(name)}">'
            '<div class="divider"></div><span class="tag l">before</span><span class="tag r">after</span></div>'
        )
    elif status == "failed":
        body = f'<p class="reason">{_esc(row.get("reason", ""))}</p>'
    warnings = list(row.get("warnings") or [])
    if status == "skipped" and row.get("reason"):
        warnings.append(row["reason"])
    warn = "".join(f"<li>{_esc(w)}</li>" for w in warnings)
    dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return (f'<article class="card status-{_esc(status)}"><h2>{_esc(name)}</h2>{body}<dl>{dl}</dl>'
            + (f'<ul class="warnings">{warn}</ul>' if warn else "") + "</article>")


_GENERATOR = '<meta name="generator" content="cmdd">'
_OLD_TITLE = "<title>cmdd deblur report</title>"  # reports written before the generator tag


def foreign_report(out_dir: Path) -> Optional[Path]:
    """``out_dir/index.html`` when it exists and is not a cmdd report (a page of the user's own,
    which ``--report`` must not replace), else None."""
    path = Path(out_dir) / REPORT_NAME
    try:
        if not (path.exists() or path.is_symlink()):
            return None
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return path
    return None if (_GENERATOR in head or _OLD_TITLE in head) else path


def write_report(summary: dict, out_dir: Path, replace_foreign: bool = False) -> Path:
    """Write ``out_dir/index.html`` from a run summary (``BatchReport.to_dict()``).

    An ``index.html`` there that cmdd did not write is replaced only with ``replace_foreign``
    (``--overwrite``); otherwise CmddError.

    Photos processed in this run already have previews (:func:`write_previews`); for photos skipped
    because their output existed, previews are made from the files when missing. Returns the path.
    """
    out_dir = Path(out_dir)
    files = [dict(f) for f in summary.get("files", []) if f.get("status") in ("done", "skipped", "failed")]
    for row in files:
        if row["status"] == "skipped" and row.get("output") and Path(row["output"]).is_file():
            b, a = preview_paths(out_dir, row["output"])
            if not ((out_dir / b).is_file() and (out_dir / a).is_file()):
                warning = _previews_from_files(out_dir, row)
                if warning:
                    row.setdefault("warnings", []).append(warning)
    counts = summary.get("counts", {})
    settings = summary.get("settings", {})
    engine = settings.get("engine", {})
    restore = settings.get("restore", {})
    line = " · ".join(x for x in (
        ", ".join(f"{counts[k]} {k}" for k in ("done", "skipped", "failed") if counts.get(k)),
        f"strength {restore['strength']:g}" if "strength" in restore else "",
        f"restored {restore['restore']}" if restore.get("restore") else "",
        f"weights {Path(engine['weights']).name}" if engine.get("weights") else "",
        f"{engine['device']}" if engine.get("device") else "",
    ) if x)
    cards = "\n".join(_card(r, out_dir) for r in files)
    page = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">{_GENERATOR}'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>cmdd deblur report</title><style>{_CSS}</style></head>\n<body>"
        f"<header><h1>cmdd deblur</h1><p>{_esc(line)}</p></header>\n<main>\n{cards}\n</main>\n"
        f"<script>{_JS}</script></body></html>\n"
    )
    path = out_dir / REPORT_NAME
    if not replace_foreign and foreign_report(out_dir) is not None:
        raise CmddError(f"{path} exists and is not a cmdd report; not replaced (remove it, use another -o, "
                        "or --overwrite)")
    try:
        atomic_write_bytes(path, page.encode("utf-8"))
    except OSError as e:
        raise CmddError(f"{path}: cannot write the report ({e.strerror or e})") from e
    log.debug("report: %s", path)
    return path
