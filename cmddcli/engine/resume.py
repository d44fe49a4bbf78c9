"""Resume records: what made each output of ``cmdd deblur``, every file written for it, and whether a
rerun may keep it.

Each output gets a record, ``OUT/.cmdd/records/<output relative to OUT>.json``: the single truth for
everything a run writes for that output::

    {"format": 2,
     "state": "pending" | "done",
     "output": PATH,                                   # as written (informative; OUT-relative below)
     "output_file": {"size", "sha256", "mtime_ns"},    # the output as written; null while pending
     "side_files": [{"path": REL, "role": "blur map" | "restore mask", "size", "sha256"}],
     "source": {"path", "size", "mtime_ns"},           # the input it was made from
     "settings": RECIPE,                               # see recipe()
     "created": TIME,
     "raw_development_applied": {...}}                 # RAW inputs only: what LibRaw did

``REL`` is relative to OUT, so a copied output folder (``cp -r out out2``) still knows its files.
Order of writing (:func:`begin`, then the files, then :func:`remember`): the record is first written
*pending*, listing every file the run is about to write (sizes and digests null), atomically in place
of any earlier record; then the output and its side files; then the record *done*, with each written
file's size and sha256. So no crash or signal can leave an output (or a blur map) without a record: a
rerun that finds a pending record made from the same input redoes the output over the files it lists
(:func:`interrupted`), and a folder walk never takes them for photos.

An existing output is kept (skipped) only when its record is done, names this very input (resolved
path, size, modification time), the output has the content it was written with (size first, then
sha256; records from before format 2 have no digest and are compared by size and modification time)
and the recipe is the same (:func:`resume_problem`); otherwise the reason says which differs, so
nothing is kept silently. The same records tell a later folder walk which files cmdd wrote, wherever
they sit (:func:`recorded_files`).

This module knows nothing of the batch: it takes paths, the output folder and recipes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from pathlib import Path
from typing import Optional, Sequence

from ..atomic import atomic_write_bytes
from ..photo.raw import RawSettings, is_raw

log = logging.getLogger(__name__)

STATE_DIR = ".cmdd"  # OUT/.cmdd: the run's state (records, summary, report previews)
RECORDS_DIR = "records"

# Recipe entries added after records were first written: a record without one is not failed for it.
LATER_RECIPE_KEYS = ("engine",)

# Longest record file name (bytes): most file systems allow 255; an output name near that limit gets
# a shortened record name with a digest of the full name.
_MAX_RECORD_NAME = 255

_HINT = "use --overwrite to redo it, or --suffix / another -o to keep it"


# ---------------------------------------------------------------------------------------- recipe


def weights_digest(weights: Optional[str | os.PathLike]) -> str:
    """sha256 of the weights file (the shipped one when ``weights`` is None): part of what made an
    output. ``unreadable:PATH`` when it cannot be read (the engine reports why when it loads it)."""
    from ..fileutil import sha256_file
    from ..errors import WeightsError
    from ..model.weights import resolve_weights

    try:
        path = resolve_weights(weights)
    except WeightsError:
        return f"unreadable:{weights}"
    try:
        return sha256_file(path)
    except OSError:
        return f"unreadable:{path}"


def recipe(base: dict, bit_depth: Optional[int], raw: RawSettings, source: Optional[Path] = None) -> dict:
    """The settings that make an output what it is (compared on resume), as JSON values: ``base``
    (weights digest, restore and engine settings), the bit depth and, only for a RAW ``source`` (or
    when no source is given), the RAW development."""
    d = {**base, "bit_depth": bit_depth}
    if source is None or is_raw(source):
        d["raw_development"] = raw.postprocess_params()
    return json.loads(json.dumps(d, default=str))


# ---------------------------------------------------------------------------------------- where records are


def record_file(out_dir: Path, rel: Path) -> Path:
    """The resume record of the output at ``rel`` (relative to ``out_dir``)."""
    name = rel.name + ".json"
    if len(os.fsencode(name)) > _MAX_RECORD_NAME:
        digest = hashlib.sha256(os.fsencode(rel.name)).hexdigest()[:16]
        name = os.fsdecode(os.fsencode(rel.name)[:180]) + f"~{digest}.json"
    return Path(out_dir) / STATE_DIR / RECORDS_DIR / rel.parent / name


def record_path(output: Path, out_dir: Path) -> Path:
    """``out_dir/.cmdd/records/<output relative to out_dir>.json``."""
    try:
        rel = Path(output).relative_to(Path(out_dir))
    except ValueError:
        rel = Path(Path(output).name)
    return record_file(Path(out_dir), rel)


def has_records(folder: Path) -> bool:
    """Whether ``folder`` has been an output folder (it holds a records folder)."""
    return (Path(folder) / STATE_DIR / RECORDS_DIR).is_dir()


def source_identity(path: Path) -> dict:
    """Path, size and modification time of an input: what a resume record compares."""
    st = Path(path).stat()
    return {"path": os.fspath(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ---------------------------------------------------------------------------------------- file content

FORMAT = 2
PENDING, DONE = "pending", "done"

_digests: dict = {}  # (path, dev, ino, size, mtime_ns) -> sha256: a file is hashed once per process


def _regular_stat(path: Path) -> Optional[os.stat_result]:
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def file_sha256(path: Path) -> Optional[str]:
    """sha256 of a regular file (None when it is not one or cannot be read; a named pipe is never opened)."""
    from ..fileutil import sha256_file

    st = _regular_stat(path)
    if st is None:
        return None
    key = (os.fspath(Path(path).absolute()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _digests:
        try:
            _digests[key] = sha256_file(path)
        except OSError:
            return None
    return _digests[key]


def file_identity(path: Path) -> Optional[dict]:
    """Size, sha256 and modification time of a file as written (None when it cannot be read)."""
    st = _regular_stat(path)
    digest = file_sha256(path) if st is not None else None
    if digest is None:
        return None
    return {"size": st.st_size, "sha256": digest, "mtime_ns": st.st_mtime_ns}


def same_content(path: Path, made: Optional[dict]) -> bool:
    """Whether ``path`` is the file a record describes: same size, then same sha256; a record from
    before format 2 (no sha256) is compared by size and modification time, as then."""
    if not isinstance(made, dict):
        return False
    st = _regular_stat(path)
    if st is None or made.get("size") != st.st_size:
        return False
    if made.get("sha256"):
        return file_sha256(path) == made["sha256"]
    return made.get("mtime_ns") == st.st_mtime_ns


# ---------------------------------------------------------------------------------------- reading


def read_record(output: Path, out_dir: Path) -> Optional[dict]:
    """The record of ``output`` in ``out_dir`` (a dict), or None when there is none or it is unreadable."""
    try:
        rec = json.loads(record_path(output, out_dir).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def side_entries(rec: dict) -> list:
    """The well-formed ``side_files`` entries of a record (dicts with a string ``path``)."""
    sides = rec.get("side_files")
    return [s for s in sides if isinstance(s, dict) and isinstance(s.get("path"), str)] if isinstance(sides, list) else []


def _rel(path: Path, out_dir: Path) -> str:
    try:
        return Path(path).relative_to(Path(out_dir)).as_posix()
    except ValueError:
        return Path(path).name


def interrupted(source: Path, output: Path, out_dir: Path) -> bool:
    """Whether ``output``'s record is pending and made from ``source``: a run stopped between writing
    the record and finishing it (the output and its side files may be old, new or missing). The
    files it lists are cmdd's, so the output is redone over them."""
    rec = read_record(output, out_dir)
    if rec is None or rec.get("state") != PENDING:
        return False
    try:
        return (rec.get("source") or {}).get("path") == os.fspath(Path(source).resolve())
    except (OSError, RuntimeError, AttributeError):
        return False


def owns_side_file(output: Path, out_dir: Path, side: Path) -> bool:
    """Whether ``side`` (a blur map / restore mask beside ``output``) is listed in ``output``'s record
    and is the file it says: listed in a pending record, or with the size and sha256 of a done one."""
    rec = read_record(output, out_dir)
    if rec is None:
        return False
    rel = _rel(side, out_dir)
    for entry in side_entries(rec):
        if entry["path"] == rel:
            return rec.get("state") == PENDING or same_content(side, entry)
    return False


def recorded_files(out_dir: Path) -> dict:
    """Every file the records in ``out_dir`` describe, by ``os.path.normcase`` of its absolute path
    under ``out_dir`` as given: ``{path: entry}`` where ``entry`` is the size / sha256 (or size /
    mtime_ns of an older record) it was written with, or None for a file listed in a pending record
    (cmdd's whatever its content). Outputs and side files alike; unreadable records are left out."""
    out_dir = Path(out_dir)
    records = out_dir / STATE_DIR / RECORDS_DIR
    found: dict = {}
    for dirpath, _, names in os.walk(records):
        for name in names:
            if not name.endswith(".json"):
                continue
            rec_file = Path(dirpath) / name
            try:
                rec = json.loads(rec_file.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(rec, dict):
                continue
            rel_dir = rec_file.parent.relative_to(records)
            out_name = name[:-len(".json")]
            if "~" in out_name and isinstance(rec.get("output"), str):  # a shortened record name
                out_name = Path(rec["output"]).name
            pending = rec.get("state") == PENDING
            made = rec.get("output_file")
            entries = [(out_dir / rel_dir / out_name, None if pending else (made if isinstance(made, dict) else {}))]
            entries += [(out_dir / s["path"], None if pending else s) for s in side_entries(rec)]
            for path, entry in entries:
                found[os.path.normcase(os.fspath(path.absolute()))] = entry
    return found


def is_recorded(file: Path, entry: Optional[dict]) -> bool:
    """Whether ``file`` is the file a :func:`recorded_files` entry describes (a photo copied over it
    later is not): a pending entry always, an entry without size as before format 2, else by content."""
    if not entry:
        return True
    return same_content(file, entry)


def resume_problem(source: Path, output: Path, out_dir: Path, settings: dict) -> Optional[str]:
    """None when ``output`` exists and its (done) record says it was made from this very ``source``
    (same path, size and mtime), has the content it was written with, and was made with ``settings``
    (:func:`recipe` for this source); otherwise the reason it must not be kept."""
    rec = read_record(output, out_dir)
    try:
        made_from, made_with = rec["source"], rec["settings"]
        made_from.get, made_with.items
    except (KeyError, TypeError, AttributeError):
        return f"{output} exists but there is no record of what made it (another program, or an older " \
               f"or interrupted run); {_HINT}"
    if rec.get("state") == PENDING:
        return f"{output} was being made from {made_from.get('path')} by a run that was stopped; {_HINT}"
    try:
        now = source_identity(source)
    except OSError as e:
        return f"cannot read {source} ({e.strerror or e})"
    if made_from.get("path") != now["path"]:
        return f"{output} exists but was made from {made_from.get('path')}; {_HINT}"
    if (made_from.get("size"), made_from.get("mtime_ns")) != (now["size"], now["mtime_ns"]):
        return f"{output} was made from an earlier version of this file (size or time changed); {_HINT}"
    made = rec.get("output_file")
    if isinstance(made, dict) and not same_content(output, made):
        what = "size or content" if made.get("sha256") else "size or time"
        return f"{output} was changed after cmdd wrote it ({what} differs from its record); {_HINT}"
    current = dict(settings)
    if not is_raw(source):  # older records hold the RAW development for every file
        made_with = {k: v for k, v in made_with.items() if k != "raw_development"}
    for k in LATER_RECIPE_KEYS:
        if k not in made_with:
            current.pop(k, None)
    if made_with != current:
        keys = []
        for k in sorted(set(made_with) | set(current)):
            a, b = made_with.get(k), current.get(k)
            if isinstance(a, dict) and isinstance(b, dict):
                keys += [f"{k}.{j}" for j in sorted(set(a) | set(b)) if a.get(j) != b.get(j)]
            elif a != b:
                keys.append(k)
        return f"{output} was made with other settings ({', '.join(keys)}); {_HINT}"
    return None


# ---------------------------------------------------------------------------------------- writing


_SIDE_ROLES = ("blur map", "restore mask")  # in the order blurmap.map_image_paths / save_map_images give them


def _write(output: Path, out_dir: Path, payload: dict) -> None:
    atomic_write_bytes(record_path(output, out_dir), (json.dumps(payload, indent=1) + "\n").encode(), fsync=False)


def begin(source: Path, output: Path, out_dir: Path, settings: dict, side_files: Sequence[Path] = ()) -> dict:
    """Before (re)making an output: its record, *pending*, listing the output and every side file
    the run may write (``side_files``), in place of any earlier record (one atomic step, so a stale
    output never passes for new and no file is ever written without a record). Returns the
    source's identity as it is now, for :func:`remember`. Raises OSError when the source cannot be
    read or the record cannot be written (the output is then not made)."""
    ident = source_identity(source)
    payload = {"format": FORMAT, "state": PENDING, "output": os.fspath(output), "output_file": None,
               "side_files": [{"path": _rel(p, out_dir), "role": role, "size": None, "sha256": None}
                              for p, role in zip(side_files, _SIDE_ROLES)],
               "source": ident, "settings": settings, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    _write(output, out_dir, payload)
    return ident


def abandon(output: Path, out_dir: Path, earlier: Optional[dict], side_files: Sequence[Path] = ()) -> None:
    """After :func:`begin`, when the output was not made (the file failed, or a signal came first):
    put back the ``earlier`` record if the output and its side files are still exactly what it
    describes, else remove the pending record if none of the files it lists exists; otherwise (some
    were replaced) it stays pending, so the next run redoes the output."""
    files = [Path(output), *map(Path, side_files)]
    try:
        if earlier is not None and earlier.get("state") != PENDING and isinstance(earlier.get("output_file"), dict) \
                and same_content(Path(output), earlier["output_file"]) \
                and all(same_content(Path(out_dir) / s["path"], s) for s in side_entries(earlier)):
            _write(output, out_dir, earlier)
        elif not any(f.exists() or f.is_symlink() for f in files):
            record_path(output, out_dir).unlink(missing_ok=True)
    except OSError as e:
        log.warning("%s: cannot tidy the pending resume record (%s); the next run redoes this output",
                    output, e.strerror or e)


def remember(output: Path, out_dir: Path, source: Optional[dict], settings: dict,
             raw_applied: Optional[dict] = None, side_files: Sequence[Path] = ()) -> Optional[str]:
    """After an output and its side files (``side_files``: those written, blur map first, as
    ``save_map_images`` returns them) are complete: the record,
    *done*, with each file's size and sha256. ``source`` is :func:`begin`'s identity (None: nothing
    is written), ``raw_applied`` what LibRaw did for a RAW input. Returns a warning when the record
    cannot be finished (it stays pending: the next run redoes the output)."""
    if source is None:
        return None
    made = file_identity(Path(output))
    sides = [{"path": _rel(p, out_dir), "role": role, **(file_identity(Path(p)) or {"size": None, "sha256": None})}
             for p, role in zip(side_files, _SIDE_ROLES)]
    payload = {"format": FORMAT, "state": DONE, "output": os.fspath(output), "output_file": made,
               "side_files": sides, "source": source, "settings": settings,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if raw_applied is not None:  # what LibRaw did, which --raw-half-size does not always decide
        payload["raw_development_applied"] = raw_applied
    try:
        _write(output, out_dir, payload)
    except OSError as e:
        msg = f"resume record not finished ({e.strerror or e}): a later run will make this output again"
        log.warning("%s: %s", output, msg)
        return msg
    return None
