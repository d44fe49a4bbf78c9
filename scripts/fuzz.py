"""Fuzz what cmdd reads from untrusted bytes (hypothesis-driven mutations of generated valid files).

Targets (one per run)::

    photo    read_photo + write_photo (JPEG/PNG/TIFF/WebP seeds with EXIF, ICC, pHYs, ...)
    raw      read_photo on DNG seeds (rawpy / LibRaw, exiv2 metadata)
    weights  read_metadata + load_weights on safetensors with mutated header / cmdd metadata
    resume   engine.resume's record readers (resume_problem, interrupted, recorded_files, is_recorded,
             owns_side_file) on mutated records
    eval     cmdd eval's loading and scoring of a prediction / target pair (mutated prediction)

Mutations: byte flips, byte runs, truncation, insertion, and structure edits (PNG chunk bodies,
TIFF IFD entries, JSON values). The rule: every exception is a :class:`cmddcli.errors.CmddError`
whose message is one line naming the file; anything else is a crash. Each distinct crash (type and
innermost cmdd frame) is saved under ``--out`` (the input and its traceback) and the run goes on.

Usage::

    python scripts/fuzz.py TARGET --minutes 10 [--out benchmarks/fuzz/crashes] [--seed 0]

Not part of the test suite; regressions found with it live in tests/test_fuzz_regressions.py.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import struct
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from cmddcli.errors import CmddError  # noqa: E402

# ---------------------------------------------------------------------------------------- seeds


def _exif_bytes() -> bytes:
    from PIL import Image

    ex = Image.Exif()
    ex[271], ex[272], ex[274], ex[306] = "FuzzMake", "FuzzModel", 6, "2024:01:02 03:04:05"
    ex[270] = "a description"
    ex.get_ifd(0x8769).update({33434: 0.008, 33437: 2.8, 34855: 200, 37510: b"ASCII\x00\x00\x00comment"})
    ex.get_ifd(0x8825).update({1: "N", 2: (1.0, 2.0, 3.0)})
    return ex.tobytes()


def photo_seeds() -> list[tuple[str, bytes]]:
    import tifffile
    from PIL import Image, ImageCms

    from cmddcli.photo import png

    rng = np.random.default_rng(0)
    rgb = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = _exif_bytes()
    seeds = []
    for fmt, ext, kw in [("JPEG", ".jpg", {"dpi": (300, 300), "quality": 90}),
                         ("PNG", ".png", {"dpi": (300, 300)}),
                         ("WEBP", ".webp", {})]:
        b = io.BytesIO()
        Image.fromarray(rgb).save(b, format=fmt, exif=exif, icc_profile=icc, **kw)
        seeds.append((ext, b.getvalue()))
    b = io.BytesIO()
    Image.fromarray(rgb[..., 0]).convert("P").save(b, format="PNG", transparency=3)
    seeds.append((".png", b.getvalue()))
    a16 = (rng.random((12, 16, 4)) * 65535).astype(np.uint16)
    data = png.write_png(a16, icc_profile=icc, exif=exif)
    i = data.index(b"IDAT") - 4
    data = data[:i] + png.chunk(b"gAMA", struct.pack(">I", 45455)) + png.chunk(b"pHYs", struct.pack(">IIB", 11811, 11811, 1)) + data[i:]
    seeds.append((".png", data))
    for arr, kw in [(rgb, {"photometric": "rgb", "resolution": (300, 300)}),
                    ((rng.random((12, 16)) * 65535).astype(np.uint16), {"photometric": "minisblack"}),
                    (rng.random((12, 16, 3)).astype(np.float32) * 2 - 0.5, {"photometric": "rgb"}),
                    (rng.random((12, 16)) > 0.5, {"photometric": "miniswhite"}),
                    ((rng.random((2, 12, 16, 3)) * 255).astype(np.uint8), {"photometric": "rgb"})]:
        b = io.BytesIO()
        tifffile.imwrite(b, arr, iccprofile=icc, compression="zlib" if arr.dtype != bool else None,
                         metadata=None, **kw)
        seeds.append((".tif", b.getvalue()))
    return seeds


def raw_seeds(tmp: Path) -> list[tuple[str, bytes]]:
    import tifffile

    rng = np.random.default_rng(1)
    a = (rng.random((24, 32, 3)) * 0.6 * 65535 + 3000).astype(np.uint16)
    tags = [
        (50706, "B", 4, (1, 4, 0, 0), True), (50707, "B", 4, (1, 1, 0, 0), True),
        (50708, "s", 0, "Fuzz Cam", True), (271, "s", 0, "FuzzMake", True), (272, "s", 0, "FuzzModel", True),
        (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),
        (50778, "H", 1, 21, True), (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True), (50717, "H", 1, 65535, True),
    ]
    b = io.BytesIO()
    tifffile.imwrite(b, a, photometric=34892, extratags=tags, subfiletype=0, metadata=None)
    seeds = [(".dng", b.getvalue())]
    cfa = (rng.random((32, 48)) * 4000 + 200).astype(np.uint16)
    tags_cfa = tags[:-1] + [(50717, "H", 1, 4095, True), (33421, "H", 2, (2, 2), True),
                            (33422, "B", 4, (0, 1, 1, 2), True)]
    b = io.BytesIO()
    tifffile.imwrite(b, cfa, photometric=32803, extratags=tags_cfa, subfiletype=0, metadata=None)
    seeds.append((".dng", b.getvalue()))
    return seeds


def weights_seed(tmp: Path) -> bytes:
    from cmddcli.model.cmddnet import CMDDNet
    from cmddcli.model.config import model_config
    from cmddcli.model.weights import save_weights

    p = tmp / "seed.safetensors"
    save_weights(CMDDNet(model_config("tiny")), p, preset="tiny")  # the test preset keeps each run fast
    return p.read_bytes()


# ---------------------------------------------------------------------------------------- mutations


def _png_chunks(data: bytes) -> list[tuple[int, int]]:
    """(offset of chunk, length of body) for each chunk of a PNG (stops at anything odd)."""
    out, pos = [], 8
    while pos + 12 <= len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        out.append((pos, n))
        pos += 12 + n
    return out


def _tiff_entries(data: bytes) -> list[int]:
    """Offsets of the 12-byte entries of the first IFD of a classic TIFF."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return []
    e = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(e + "I", data[4:8])
        (n,) = struct.unpack(e + "H", data[ifd:ifd + 2])
    except struct.error:
        return []
    return [ifd + 2 + 12 * i for i in range(min(n, 200)) if ifd + 14 + 12 * i <= len(data)]


def mutate(data: bytes, draw) -> bytes:
    """Apply 1-4 mutations drawn with hypothesis's ``draw``."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "run", "truncate", "insert", "chunk", "tiff", "int"]))
        if not b:
            break
        i = draw(st.integers(0, len(b) - 1))
        if kind == "flip":
            b[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "run":
            v = draw(st.binary(min_size=1, max_size=16))
            b[i:i + len(v)] = v
        elif kind == "truncate":
            del b[draw(st.integers(1, len(b))):]
        elif kind == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "int":  # an interesting 32-bit value (sizes, offsets, counts)
            v = draw(st.sampled_from([0, 1, 0x7F, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 0x10000, len(b)]))
            b[i:i + 4] = struct.pack(draw(st.sampled_from([">I", "<I"])), v)
        elif kind == "chunk" and bytes(b[:8]) == b"\x89PNG\r\n\x1a\n":
            chunks = _png_chunks(bytes(b))
            if chunks:
                pos, n = draw(st.sampled_from(chunks))
                op = draw(st.sampled_from(["body", "drop", "dup", "crc", "len"]))
                if op == "body":
                    body = draw(st.binary(max_size=80))
                    import zlib

                    ctype = bytes(b[pos + 4:pos + 8])
                    b[pos:pos + 12 + n] = struct.pack(">I", len(body)) + ctype + body + struct.pack(
                        ">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)
                elif op == "drop":
                    del b[pos:pos + 12 + n]
                elif op == "dup":
                    b[pos:pos] = b[pos:pos + 12 + n]
                elif op == "crc":
                    b[pos + 8 + n:pos + 12 + n] = b"\x00\x00\x00\x00"
                else:
                    b[pos:pos + 4] = struct.pack(">I", draw(st.integers(0, 1 << 20)))
        elif kind == "tiff":
            entries = _tiff_entries(bytes(b))
            if entries:
                off = draw(st.sampled_from(entries))
                field = draw(st.sampled_from([(2, 2), (4, 4), (8, 4)]))  # type, count, value/offset
                b[off + field[0]:off + field[0] + field[1]] = draw(st.binary(min_size=field[1], max_size=field[1]))
    return bytes(b)


# ---------------------------------------------------------------------------------------- the rule


class Crashes:
    def __init__(self, out: Path, target: str):
        self.out, self.target = out, target
        self.seen: dict[str, int] = {}
        self.execs = 0

    def check(self, fn, path_named: str, data: bytes, ext: str) -> None:
        """Run ``fn()``; record a crash when it raises anything but a one-line CmddError naming the file."""
        self.execs += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn()
        except CmddError as e:
            msg = str(e)
            if "\n" in msg:
                self._record("multiline", e, data, ext)
            elif path_named not in msg and str(Path(path_named).parent) not in msg:  # the input or an output
                self._record("unnamed", e, data, ext)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - that is what we look for
            self._record(type(e).__name__, e, data, ext)

    def _record(self, kind: str, e: BaseException, data: bytes, ext: str) -> None:
        tb = traceback.extract_tb(e.__traceback__)
        frames = [f for f in tb if "cmddcli" in f.filename] or tb[-1:]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        inner = f"{Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else "?"
        key = f"{kind}:{type(e).__name__}@{where}|{inner}"
        if key in self.seen and len(data) >= self.seen[key]:
            return
        first = key not in self.seen
        self.seen[key] = len(data)
        name = f"{self.target}-{time.strftime('%H%M%S')}-{list(self.seen).index(key) + 1:03d}"  # never overwrites
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / (name + ext)).write_bytes(data)
        (self.out / (name + ".txt")).write_text(f"{key}\n{str(e)[:2000]}\n\n" + "".join(
            traceback.format_exception(type(e), e, e.__traceback__)))
        if first:
            print(f"CRASH {key}: {str(e)[:200]!r}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------- targets


def _read_write_target(out_exts: tuple):
    """A target that reads the mutated file with ``read_photo`` and writes it as each of ``out_exts``."""
    def target(tmp: Path, crashes: Crashes, seeds):
        from cmddcli.photo.io import read_photo, write_photo

        def run(ext, data):
            p = tmp / f"in{ext}"
            p.write_bytes(data)

            def go():
                photo = read_photo(p, max_pixels=4_000_000)
                for oext in out_exts:
                    write_photo(tmp / f"out{oext}", photo)
            crashes.check(go, str(p), data, ext)
        return run
    return target


target_photo = _read_write_target((".jpg", ".png", ".tif"))  # images with metadata, to every format
target_raw = _read_write_target((".tif",))  # RAW developments (rawpy / LibRaw, exiv2), as deblur writes them


def target_weights(tmp: Path, crashes: Crashes, seeds):
    from cmddcli.engine.info import collect_info
    from cmddcli.model.weights import load_weights, read_metadata

    def run(ext, data):
        p = tmp / "w.safetensors"
        p.write_bytes(data)

        def go():
            read_metadata(p)
            collect_info(None, str(p))  # what `cmdd info --weights` shows
            load_weights(p)
        crashes.check(go, str(p), data, ext)
    return run


def target_resume(tmp: Path, crashes: Crashes, seeds):
    from cmddcli.engine import resume

    src = tmp / "src.png"
    src.write_bytes(b"not really an image")
    out_dir = tmp / "out"
    out = out_dir / "src.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"output")
    rec = resume.record_path(out, out_dir)
    rec.parent.mkdir(parents=True, exist_ok=True)

    def run(ext, data):
        rec.write_bytes(data)

        def go():
            r = resume.resume_problem(src, out, out_dir, {"weights": "abc", "bit_depth": None})
            assert r is None or (isinstance(r, str) and "\n" not in r), f"odd reason {r!r}"
            resume.interrupted(src, out, out_dir)
            resume.owns_side_file(out, out_dir, out_dir / "src_blurmap.png")
            for path, entry in resume.recorded_files(out_dir).items():
                resume.is_recorded(Path(path), entry)
        crashes.check(go, str(rec), data, ext)
    return run


def target_eval(tmp: Path, crashes: Crashes, seeds):
    from cmddcli.eval.protocol import EvalSettings, evaluate_predictions, items_from_predictions

    def run(ext, data):
        pdir, tdir = tmp / "pred", tmp / "target"
        for d in (pdir, tdir):
            d.mkdir(exist_ok=True)
            for f in d.iterdir():
                f.unlink()
        p = pdir / f"img{ext}"
        p.write_bytes(data)
        t = tdir / f"img{ext}"
        t.write_bytes(seeds_by_ext[ext])

        def go():
            items = items_from_predictions(pdir, tdir)
            evaluate_predictions(items, EvalSettings())
        crashes.check(go, str(p), data, ext)
    seeds_by_ext = {}
    for ext, data in seeds:
        seeds_by_ext.setdefault(ext, data)
    return run


def eval_seeds() -> list[tuple[str, bytes]]:
    import tifffile
    from PIL import Image

    from cmddcli.photo import png

    rng = np.random.default_rng(2)
    a = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
    seeds = [(".png", png.write_png(a)), (".png", png.write_png((a.astype(np.uint16) * 257)))]
    b = io.BytesIO()
    Image.fromarray(a).save(b, format="JPEG")
    seeds.append((".jpg", b.getvalue()))
    b = io.BytesIO()
    tifffile.imwrite(b, a.astype(np.float32) / 255)
    seeds.append((".tif", b.getvalue()))
    return seeds


def json_mutate(text: str, draw) -> bytes:
    """A JSON-aware edit: replace a value somewhere in the record by another JSON value."""
    try:
        obj = json.loads(text)
    except ValueError:
        return text.encode()
    values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                          lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                          max_leaves=6)

    def paths(o, pre=()):
        yield pre
        if isinstance(o, dict):
            for k, v in o.items():
                yield from paths(v, pre + (k,))
        elif isinstance(o, list):
            for i, v in enumerate(o):
                yield from paths(v, pre + (i,))
    where = draw(st.sampled_from(list(paths(obj))))
    new = draw(values)
    if not where:
        obj = new
    else:
        o = obj
        for k in where[:-1]:
            o = o[k]
        o[where[-1]] = new
    return json.dumps(obj).encode()


def weights_json_mutate(data: bytes, draw) -> bytes:
    """Edit the safetensors header: the cmdd metadata (a JSON value inside a JSON string) or the header itself."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.get("__metadata__", {})
    op = draw(st.sampled_from(["cmdd", "meta", "tensor"]))
    if op == "cmdd" and "cmdd" in meta:
        meta["cmdd"] = json_mutate(meta["cmdd"], draw).decode()
    elif op == "meta":
        header["__metadata__"] = json.loads(json_mutate(json.dumps(meta), draw))
    else:
        names = [k for k in header if k != "__metadata__"]
        if names:
            k = draw(st.sampled_from(names))
            header[k] = json.loads(json_mutate(json.dumps(header[k]), draw))
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data[8 + n:]


# ---------------------------------------------------------------------------------------- driver


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("target", choices=["photo", "raw", "weights", "resume", "eval"])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", default="benchmarks/fuzz/crashes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-memory-gb", type=float, default=None,
                    help="address-space cap (default 4, 8 for weights): an input that needs more fails with "
                         "MemoryError and is saved as a crash instead of taking the machine's memory")
    args = ap.parse_args()
    cap = args.max_memory_gb or (8.0 if args.target == "weights" else 4.0)
    resource.setrlimit(resource.RLIMIT_AS, (int(cap * 2**30), int(cap * 2**30)))
    logging.disable(logging.CRITICAL)
    tmp = Path(tempfile.mkdtemp(prefix=f"cmdd-fuzz-{args.target}-"))
    crashes = Crashes(Path(args.out), args.target)
    if args.target == "photo":
        seeds = photo_seeds()
    elif args.target == "raw":
        seeds = raw_seeds(tmp)
    elif args.target == "weights":
        seeds = [(".safetensors", weights_seed(tmp))]
    elif args.target == "resume":
        seeds = [(".json", json.dumps({
            "output": str(tmp / "out" / "src.png"), "output_file": {"size": 6, "mtime_ns": 1},
            "source": {"path": str((tmp / "src.png").resolve()), "size": 19, "mtime_ns": 1},
            "settings": {"weights": "abc", "bit_depth": None, "raw_development": {"a": 1}},
            "created": "2024"}, indent=1).encode()),
                 (".json", json.dumps({  # format 2: states, content hashes, side files
                     "format": 2, "state": "done", "output": str(tmp / "out" / "src.png"),
                     "output_file": {"size": 6, "sha256": "0" * 64, "mtime_ns": 1},
                     "side_files": [{"path": "src_blurmap.png", "role": "blur map", "size": 3, "sha256": "1" * 64}],
                     "source": {"path": str((tmp / "src.png").resolve()), "size": 19, "mtime_ns": 1},
                     "settings": {"weights": "abc", "bit_depth": None}, "created": "2024"}, indent=1).encode())]
    else:
        seeds = eval_seeds()
    run = {"photo": target_photo, "raw": target_raw, "weights": target_weights, "resume": target_resume,
           "eval": target_eval}[args.target](tmp, crashes, seeds)
    structured = {"weights": weights_json_mutate, "resume": lambda d, draw: json_mutate(d.decode(), draw)}.get(args.target)

    for ext, data in seeds:  # the seeds themselves must pass
        run(ext, data)
    if crashes.seen:
        print(f"seed inputs already crash: {sorted(crashes.seen)}", file=sys.stderr)

    @settings(max_examples=200, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def one(data):
        ext, seed = data.draw(st.sampled_from(seeds))
        if structured is not None and data.draw(st.booleans()):
            try:
                mutated = structured(seed, data.draw)
            except (ValueError, KeyError, TypeError, struct.error):
                mutated = seed
            if data.draw(st.booleans()):
                mutated = mutate(mutated, data.draw)
        else:
            mutated = mutate(seed, data.draw)
        run(ext, mutated)

    start = time.monotonic()
    end = start + args.minutes * 60
    rounds = 0
    while time.monotonic() < end:
        one()
        rounds += 1
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"[{(time.monotonic() - start) / 60:5.1f} min] {crashes.execs} executions, {len(crashes.seen)} "
              f"distinct crash(es), peak RSS {rss:.0f} MB", file=sys.stderr, flush=True)
    minutes = (time.monotonic() - start) / 60
    summary = {"target": args.target, "minutes": round(minutes, 1), "executions": crashes.execs,
               "crashes": len(crashes.seen), "kinds": sorted(crashes.seen), "memory_cap_gb": cap,
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("CMDD_FUZZ", "1")
    sys.exit(main())
