"""Training configs from files, checkpoints, command-line flags and typed ``key=value`` overrides; back to TOML.

A config is built in layers, later ones winning: a preset (``paper``, ``tiny``), a TOML (or JSON) file
or the config stored in a checkpoint, then typed flags, then ``--set section.key=value`` overrides
(:func:`build_config` does all of it for ``cmdd train``). Unknown keys are rejected everywhere;
values are type-checked against the dataclass fields of :mod:`cmddcli.train.config` (an int where a
float is expected is fine; a float where an int is expected, or a string for a number, is an error).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

import tomllib

from ..errors import CmddError
from .config import ModelSection, TrainConfig, train_preset

__all__ = ["load_config", "config_from_dict", "parse_override", "apply_overrides", "to_toml",
           "parse_count", "build_config"]



_SECTIONS = {"model", "stages", "optim", "schedule", "data"}


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting int -> float where a float is wanted."""
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, List):
        (item,) = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin in (dict, Dict):
        if isinstance(value, dict):
            return dict(value)
    else:  # pragma: no cover - every field type is listed above
        raise TypeError(f"unsupported config type {tp!r} for {key}")
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    raise CmddError(f"config key {key!r} expects {name}, got {value!r}")


def _coerce_model_value(key: str, value: Any) -> Any:
    """Model overrides are type-checked against ModelConfig's defaults (values by ModelConfig itself)."""
    from ..model import ModelConfig

    known = [f.name for f in dataclasses.fields(ModelConfig)]
    if key not in known:
        raise CmddError(f"unknown config key 'model.{key}'; known: preset, {', '.join(known)}")
    default = getattr(ModelConfig(), key)
    if isinstance(default, bool):
        return _coerce(value, bool, f"model.{key}")
    if isinstance(default, int):
        return _coerce(value, int, f"model.{key}")
    if isinstance(default, float):
        return _coerce(value, float, f"model.{key}")
    if isinstance(default, tuple):
        return list(_coerce(value, List[int], f"model.{key}"))
    return _coerce(value, str, f"model.{key}")


def _apply_section(obj: Any, values: dict, prefix: str) -> None:
    hints = _hints(type(obj))
    for k, v in values.items():
        key = f"{prefix}{k}"
        if k not in hints:
            raise CmddError(f"unknown config key {key!r}; known: {', '.join(prefix + h for h in hints)}")
        setattr(obj, k, _coerce(v, hints[k], key))


def _apply(cfg: TrainConfig, data: dict) -> TrainConfig:
    """Merge a nested dict (TOML / JSON shape) into `cfg` in place, rejecting unknown keys."""
    hints = _hints(TrainConfig)
    for k, v in data.items():
        if k == "model":
            if not isinstance(v, dict):
                raise CmddError("config key 'model' must be a table")
            for mk, mv in v.items():
                if mk == "preset":
                    cfg.model.preset = _coerce(mv, str, "model.preset")
                elif mk == "overrides" and isinstance(mv, dict):
                    for ok, ov in mv.items():
                        cfg.model.overrides[ok] = _coerce_model_value(ok, ov)
                else:
                    cfg.model.overrides[mk] = _coerce_model_value(mk, mv)
        elif k in _SECTIONS:
            if not isinstance(v, dict):
                raise CmddError(f"config key {k!r} must be a table")
            _apply_section(getattr(cfg, k), v, f"{k}.")
        elif k in hints:
            setattr(cfg, k, _coerce(v, hints[k], k))
        else:
            raise CmddError(f"unknown config key {k!r}; known: {', '.join(hints)}")
    return cfg


def config_from_dict(data: dict, base: TrainConfig | None = None) -> TrainConfig:
    """A TrainConfig from a nested dict (e.g. one stored in a checkpoint), over `base` (default: paper)."""
    cfg = copy.deepcopy(base) if base is not None else TrainConfig()
    if "model" in data:  # a stored config is complete: start the model section from scratch
        cfg.model = ModelSection(preset="paper")
    return _apply(cfg, data)


def load_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a TOML (or JSON) config over `base` (default: the preset named by its ``preset`` key, else
    paper). Unknown keys are errors."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise CmddError(f"{p}: cannot read the config ({e.strerror or e})") from e
    try:
        data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise CmddError(f"{p}: not a valid {'JSON' if p.suffix.lower() == '.json' else 'TOML'} config: {e}") from e
    preset = data.pop("preset", None)
    if base is None:
        base = train_preset(preset) if preset else TrainConfig()
    elif preset:
        base = train_preset(preset)
    return _apply(copy.deepcopy(base), data)


def parse_override(text: str) -> tuple[str, Any]:
    """``'optim.lr=1e-3'`` -> ``('optim.lr', 0.001)``. The value is read as a TOML value (numbers, true /
    false, [lists], "strings"); anything that is not valid TOML is taken as a bare string."""
    if "=" not in text:
        raise CmddError(f"override {text!r} must look like key=value (e.g. optim.lr=1e-3)")
    key, raw = (s.strip() for s in text.split("=", 1))
    if not key:
        raise CmddError(f"override {text!r} has no key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_overrides(cfg: TrainConfig, overrides: Iterable[str | tuple[str, Any]]) -> TrainConfig:
    """Apply ``key=value`` overrides (dotted keys for sections) to a copy of `cfg`."""
    cfg = copy.deepcopy(cfg)
    for ov in overrides:
        key, value = parse_override(ov) if isinstance(ov, str) else ov
        parts = key.split(".")
        if len(parts) > 2:
            raise CmddError(f"unknown config key {key!r}")
        nested = {parts[0]: {parts[1]: value}} if len(parts) == 2 else {parts[0]: value}
        if len(parts) == 2 and parts[0] not in _SECTIONS:
            raise CmddError(f"unknown config key {key!r}; sections: {', '.join(sorted(_SECTIONS))}")
        _apply(cfg, nested)
    return cfg


# ---------------------------------------------------------------- writing TOML


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        r = repr(v)
        return r if any(c in r for c in ".en") else r + ".0"
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def to_toml(cfg: TrainConfig) -> str:
    """The resolved config as TOML; ``load_config`` on it gives back an equal config."""
    d = cfg.to_dict()
    lines = ["# cmdd train: resolved configuration (load with `cmdd train --config THIS_FILE`)"]
    for k, v in d.items():
        if not isinstance(v, dict):
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append("")
            lines.append(f"[{k}]")
            for kk, vv in v.items():
                lines.append(f"{kk} = {_toml_value(vv)}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- from the command line


def parse_count(text: str) -> int:
    """An iteration count: ``'300k'`` -> 300000, ``'1.5M'`` -> 1500000, ``'2000'`` -> 2000.
    Raises CmddError for anything else (fractions, zero, negative numbers)."""
    t = text.strip().lower().replace("_", "")
    mult = 1
    if t.endswith("k"):
        t, mult = t[:-1], 1000
    elif t.endswith("m"):
        t, mult = t[:-1], 1_000_000
    try:
        v = float(t) * mult
    except ValueError:
        raise CmddError(f"not an iteration count: {text!r} (e.g. 300000, 300k)") from None
    if v != int(v) or v < 1:
        raise CmddError(f"not an iteration count: {text!r}")
    return int(v)


def build_config(*, config: Optional[Path] = None, preset: Optional[str] = None, resume=None,
                 overrides: Iterable[str] = (), flags: Optional[Dict[str, Any]] = None) -> TrainConfig:
    """The validated config of a run, as ``cmdd train`` resolves it.

    Args:
        config: a TOML / JSON file (over ``preset`` when both are given).
        preset: a training preset name (default ``paper`` when neither file nor resume is given).
        resume: a :class:`~cmddcli.train.checkpoint.ResumePoint`: start from its stored config
            (``config`` / ``preset`` are then an error), with ``out`` = the run folder that holds
            the checkpoint (``RUN/checkpoints/step_N.pt`` -> ``RUN``; a checkpoint file kept
            elsewhere keeps its stored ``out``).
        overrides: ``key=value`` texts (``--set``), applied last.
        flags: typed values by config key (``"iters"``, ``"data.path"``, ...); ``None`` values are
            skipped. ``"data"`` takes a ``--data`` argument (manifest / folder / ``synth[:DIR]``) and
            sets ``data.kind`` and ``data.path``; ``"iters"`` may be a count text such as ``"300k"``.
    Raises:
        CmddError: conflicting sources, unknown keys, ill-typed values, an invalid result.
    """
    from .data import parse_data_arg

    if resume is not None:
        if config is not None or preset is not None:
            raise CmddError("--resume takes the run's configuration from its checkpoint; change it with --set")
        cfg = resume.config()
        # a run continues in the run folder that holds its checkpoint (a copied or moved run, a
        # relative --out resumed from elsewhere), not where it was started; --out still overrides
        if resume.run_folder is not None:
            cfg.out = str(resume.run_folder)
    elif config is not None:
        cfg = load_config(config, base=train_preset(preset) if preset else None)
    else:
        cfg = train_preset(preset or "paper")
    typed: List[tuple] = []
    for key, value in (flags or {}).items():
        if value is None:
            continue
        if key == "data":
            kind, path = parse_data_arg(value)
            typed += [("data.kind", kind), ("data.path", path)]
        elif key == "iters" and isinstance(value, str):
            typed.append((key, parse_count(value)))
        else:
            typed.append((key, str(value) if isinstance(value, Path) else value))
    return apply_overrides(cfg, typed + list(overrides)).validate()
