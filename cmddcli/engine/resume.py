"""Resume records: what made each output of ``cmdd deblur``, and whether a rerun may keep it.

Each finished output gets a record, ``OUT/.cmdd/records/<output relative to OUT>.json``::

    {"output": PATH,
     "output_file": {"size": ..., "mtime_ns": ...},   # the output as written (tells it from a later copy)
     "source": {"path": ..., "size": ..., "mtime_ns": ...},   # the input it was made from
     "settings": RECIPE,                              # see recipe()
     "created": TIME,
     "raw_development_applied": {...}}                # RAW inputs only: what LibRaw did

An existing output is kept (skipped) only when its record names this very input (resolved path,
size, modification time), the output is unchanged since it was written and the recipe is the same
(:func:`resume_problem`); otherwise the reason says which of these differs, so nothing is kept
silently. A record is removed before its output is made again (:func:`forget_record`) and written
once the output is complete (:func:`remember`), so an interrupted run never leaves a stale output
that passes for new. The same records tell a later folder walk which files are outputs of an
earlier run (:func:`recorded_output`).

This module knows nothing of the batch: it takes paths, the output folder and recipes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

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


# ---------------------------------------------------------------------------------------- reading


def recorded_output(file: Path, out_dir: Path, rel: Path) -> Optional[Path]:
    """The record that makes ``file`` (at ``rel`` in ``out_dir``) an output of an earlier run, or None.

    ``file`` is such an output when its record exists and, where the record says, ``file`` has the
    size and modification time it was written with (a photo copied over it later is an input again).
    """
    rec = record_file(out_dir, rel)
    try:
        made = json.loads(rec.read_text()).get("output_file")
        st = file.stat()
    except (OSError, ValueError, AttributeError):
        return None
    if made is not None and (made.get("size"), made.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
        return None
    return rec


def resume_problem(source: Path, output: Path, out_dir: Path, settings: dict) -> Optional[str]:
    """None when ``output`` exists and its record says it was made from this very ``source`` (same
    path, size and mtime), is unchanged since, and was made with ``settings`` (:func:`recipe` for this
    source); otherwise the reason it must not be kept."""
    try:
        rec = json.loads(record_path(output, out_dir).read_text())
        made_from, made_with = rec["source"], rec["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{output} exists but there is no record of what made it (another program, or an older " \
               f"or interrupted run); {_HINT}"
    try:
        now = source_identity(source)
    except OSError as e:
        return f"cannot read {source} ({e.strerror or e})"
    if made_from.get("path") != now["path"]:
        return f"{output} exists but was made from {made_from.get('path')}; {_HINT}"
    if (made_from.get("size"), made_from.get("mtime_ns")) != (now["size"], now["mtime_ns"]):
        return f"{output} was made from an earlier version of this file (size or time changed); {_HINT}"
    made = rec.get("output_file")
    if isinstance(made, dict):
        try:
            st = output.stat()
            changed = (made.get("size"), made.get("mtime_ns")) != (st.st_size, st.st_mtime_ns)
        except OSError:
            changed = True
        if changed:
            return f"{output} was changed after cmdd wrote it (size or time differs from its record); {_HINT}"
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


def forget_record(source: Path, output: Path, out_dir: Path) -> Optional[dict]:
    """Before (re)making an output: drop its old record (so a stale output never passes for new) and
    return the source's identity as it is now (None if it cannot be read: the job fails anyway)."""
    try:
        record_path(output, out_dir).unlink()
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("%s: cannot remove the old resume record (%s)", output, e.strerror or e)
    try:
        return source_identity(source)
    except OSError:
        return None


def remember(output: Path, out_dir: Path, source: Optional[dict], settings: dict,
             raw_applied: Optional[dict] = None) -> Optional[str]:
    """After an output is written: its record. ``source`` is :func:`forget_record`'s identity (None:
    nothing is written), ``raw_applied`` what LibRaw did for a RAW input. Returns a warning when the
    record cannot be written (the next run then reports the output as unrecorded instead of skipping it)."""
    if source is None:
        return None
    try:
        st = Path(output).stat()
        made = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}  # tells this output from a later copy
    except OSError:
        made = None
    payload = {"output": os.fspath(output), "output_file": made, "source": source,
               "settings": settings, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if raw_applied is not None:  # what LibRaw did, which --raw-half-size does not always decide
        payload["raw_development_applied"] = raw_applied
    try:
        atomic_write_bytes(record_path(output, out_dir), (json.dumps(payload, indent=1) + "\n").encode(),
                           fsync=False)
    except OSError as e:
        msg = f"resume record not written ({e.strerror or e}): a later run will not skip this output"
        log.warning("%s: %s", output, msg)
        return msg
    return None
