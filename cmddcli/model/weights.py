"""Weights as safetensors with a small JSON metadata header.

The header (safetensors ``__metadata__``, string values) holds ``cmdd`` = JSON of
``{"format": 1, "config": ModelConfig dict, "preset": ..., "version": ..., ...}`` plus anything the
caller adds (training data, iterations, scores). Only safetensors is read: no pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

from .. import __version__
from ..atomic import atomic_path
from ..errors import CmddError, WeightsError
from .cmddnet import CMDDNet
from .config import ModelConfig

FORMAT = 1
_WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_WEIGHTS_NAME = "cmddnet_default.safetensors"


def default_weights_path() -> Path:
    """The weights that ship inside the package (may be absent in a source checkout)."""
    return _WEIGHTS_DIR / DEFAULT_WEIGHTS_NAME


def packaged_weights() -> dict[str, Path]:
    """Weights inside the package by name: ``cmddnet_NAME.safetensors`` -> NAME (``default``, ``v1``, ...)."""
    if not _WEIGHTS_DIR.is_dir():
        return {}
    return {p.name[len("cmddnet_"):-len(".safetensors")]: p
            for p in sorted(_WEIGHTS_DIR.glob("cmddnet_*.safetensors"))}


def resolve_weights(weights: Union[str, Path, None]) -> Path:
    """The file ``--weights`` names: None = the default weights; a packaged name (``v1``, see
    :func:`packaged_weights`) when no file of that name exists; otherwise the path as given.

    Raises:
        WeightsError: a bare word (no folder, no suffix) that is neither a file nor a packaged name.
    """
    if weights is None:
        return default_weights_path()
    path = Path(weights)
    text = str(weights)
    if path.exists() or "/" in text or "\\" in text or path.suffix:
        return path
    named = packaged_weights()
    if text in named:
        return named[text]
    raise WeightsError(f"{text}: no such weights file, and not a packaged weights name "
                       f"({', '.join(named) or 'none installed'})")


def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def save_weights(
    model: nn.Module,
    path: Union[str, Path],
    metadata: Optional[dict] = None,
    dtype: Optional[torch.dtype] = None,
    preset: Optional[str] = None,
) -> Path:
    """Write ``model``'s state dict (optionally cast to fp16/bf16) with the cmdd metadata header."""
    path = Path(path)
    config: ModelConfig = getattr(model, "config", None)
    if config is None:
        raise WeightsError("save_weights needs a CMDDNet (a module with a .config)")
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu().contiguous()
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v
    header = {
        "format": FORMAT,
        "config": config.to_dict(),
        "preset": preset,
        "version": __version__,
        "dtype": str(dtype or "float32").replace("torch.", ""),
        **(metadata or {}),
    }
    _atomic_save(state, path, {"cmdd": json.dumps(header, default=str)})
    return path


def read_metadata(path: Union[str, Path]) -> dict:
    """The cmdd header of a weights file, without loading the tensors."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:
        if path.suffix.lower() in (".pt", ".pth", ".ckpt", ".bin"):  # a pickle: never unpickled here
            raise WeightsError(f"{path}: a PyTorch pickle, not a safetensors weights file; cmdd loads only "
                               "safetensors (a cmdd training checkpoint converts with "
                               "scripts/export_checkpoint.py CKPT OUT.safetensors)") from e
        raise WeightsError(f"{path}: not a safetensors weights file ({e})") from e
    if "cmdd" not in meta:
        raise WeightsError(f"{path}: safetensors file without cmdd metadata (not made by cmdd save_weights)")
    try:
        header = json.loads(meta["cmdd"])
    except (json.JSONDecodeError, RecursionError) as e:
        raise WeightsError(f"{path}: corrupt cmdd metadata ({' '.join(str(e).split())})") from e
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: corrupt cmdd metadata (a JSON {_json_kind(header)}, not a JSON object)")
    preset = header.get("preset")
    if preset is not None and not isinstance(preset, str):
        raise WeightsError(f"{path}: corrupt cmdd metadata (preset is a JSON {_json_kind(preset)}, not a name)")
    return header


def _json_kind(value) -> str:
    """The JSON type of a decoded value, as a reader of the file would name it."""
    if value is None:
        return "null"
    for kind, types in (("boolean", bool), ("number", (int, float)), ("string", str), ("list", list),
                        ("object", dict)):
        if isinstance(value, types):
            return kind
    return type(value).__name__


def _describe_mismatch(model_cfg: ModelConfig, file_cfg: dict) -> str:
    mine = model_cfg.to_dict()
    diffs = [f"{k}={file_cfg.get(k)!r} (model has {mine[k]!r})" for k in mine if file_cfg.get(k) != mine[k]]
    return ", ".join(diffs) or "same config, different tensors"


def load_state(model: nn.Module, path: Union[str, Path]) -> dict:
    """Load weights into an existing CMDDNet strictly; returns the metadata header.

    A file made for another configuration fails with the differing config fields named."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_metadata(path)
    file_cfg = meta.get("config", {})
    cfg: ModelConfig = getattr(model, "config", None)
    if cfg is not None and file_cfg and file_cfg != cfg.to_dict():
        raise WeightsError(f"{path}: weights made for another model configuration: {_describe_mismatch(cfg, file_cfg)}")
    state = load_file(str(path), device="cpu")
    ref = model.state_dict()
    _check_shapes(path, {k: tuple(v.shape) for k, v in ref.items()}, {k: tuple(v.shape) for k, v in state.items()})
    device = next(model.parameters()).device
    model.load_state_dict({k: v.to(device=device, dtype=ref[k].dtype) for k, v in state.items()}, strict=True)
    return meta


def check_weights(weights: Union[str, Path, None]) -> Path:
    """The file ``--weights`` names (:func:`resolve_weights`), checked as :func:`load_weights` would
    load it but without reading the tensors: it exists, is safetensors (complete: a truncated file
    fails), its cmdd header is an object with a usable model config, and its tensors have the names
    and shapes of that model. So a command refuses bad weights before it makes an output folder.
    Raises WeightsError naming the file and the reason."""
    from safetensors import safe_open

    path = resolve_weights(weights)
    if not path.is_file():
        if path == default_weights_path():
            raise WeightsError(f"{path}: the default weights are not installed with this copy of cmdd; "
                               "pass --weights FILE")
        raise WeightsError(f"weights file not found: {path}")
    cfg = _config_of(path, read_metadata(path))
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        ref = {k: tuple(v.shape) for k, v in CMDDNet(cfg).state_dict().items()}
    with safe_open(str(path), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    _check_shapes(path, ref, shapes)
    return path


def _check_shapes(path: Path, ref: dict, found: dict) -> None:
    """Raise WeightsError naming ``path`` unless ``found`` (tensor name -> shape) has exactly the
    names and shapes of ``ref`` (the model's)."""
    missing = sorted(set(ref) - set(found))
    unexpected = sorted(set(found) - set(ref))
    bad_shape = [k for k in ref if k in found and found[k] != ref[k]]
    if missing or unexpected or bad_shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if bad_shape:
            parts.append(f"{len(bad_shape)} with other shapes (e.g. {bad_shape[0]})")
        raise WeightsError(f"{path}: weights do not fit this model: " + "; ".join(parts))


def _config_of(path: Path, meta: dict) -> ModelConfig:
    """The model config a weights file's header describes (WeightsError when there is none usable)."""
    if not isinstance(meta, dict) or "config" not in meta:
        raise WeightsError(f"{path}: cmdd metadata without a model config")
    try:
        return ModelConfig.from_dict(meta["config"])
    except CmddError as e:
        raise WeightsError(f"{path}: unusable model config in its metadata: {e}") from e
    except Exception as e:  # a config of the wrong shape that from_dict did not foresee
        raise WeightsError(f"{path}: unusable model config in its metadata ({type(e).__name__}: {e})") from e


def load_weights(path: Union[str, Path, None] = None, map_location: Union[str, torch.device] = "cpu"):
    """Build the CMDDNet described by a weights file and load it. Returns ``(model, metadata)``.

    ``path=None`` loads the weights that ship with the package; a packaged name (``v1``) loads that
    file (:func:`resolve_weights`)."""
    path = resolve_weights(path)
    if not path.is_file():
        if path == default_weights_path():
            raise WeightsError(
                f"{path}: the default weights are not installed with this copy of cmdd; pass --weights FILE"
            )
        raise WeightsError(f"{path}: no such weights file")
    meta = read_metadata(path)
    model = CMDDNet(_config_of(path, meta))
    load_state(model, path)
    model.to(map_location).eval()
    return model, meta
