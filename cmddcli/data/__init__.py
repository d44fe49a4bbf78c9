"""Data: manifests, DPDD / RealDOF / pairs discovery, training crops, the defocus synthesiser, datasets.

Import from the submodules, or from here (names are resolved lazily, so ``import cmddcli.data``
does not load torch):

    from cmddcli.data import load_manifest, PairsDataset, SynthDataset, SynthConfig, synthesize
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    # manifests
    "Manifest": "manifest", "Pair": "manifest", "PairEntry": "manifest", "load_manifest": "manifest",
    "save_manifest": "manifest", "MANIFEST_NAME": "manifest", "sha256_file": "manifest",
    # discovery
    "discover_dpdd": "dpdd", "discover_realdof": "dpdd", "discover_pairs": "dpdd", "RawPair": "dpdd",
    "Discovery": "dpdd", "DPDD_INDOOR_TEST": "dpdd", "natural_key": "dpdd",
    # preparing
    "prepare_dpdd": "prepare", "prepare_realdof": "prepare", "prepare_pairs": "prepare",
    "prepare_synth": "prepare", "PrepareResult": "prepare",
    "window_starts": "crops", "stride_for": "crops", "sharpness_scores": "crops",
    # synthesis and sources
    "SynthConfig": "synth", "SynthSample": "synth", "synthesize": "synth", "render_defocus": "synth",
    "disk_kernel": "synth", "random_disparity": "synth",
    "SYNTH_PRESETS": "synth", "synth_preset": "synth", "PSFShape": "synth", "psf_kernel": "synth",
    "SharpnessFilter": "sources", "SharpTile": "sources", "list_images": "sources", "load_sharp": "sources",
    "find_sharp_tiles": "sources", "sharp_tiles": "sources",
    # datasets
    "PairsDataset": "datasets", "SynthDataset": "datasets",
    # image files
    "read_image": "pngio", "write_png": "pngio", "to_float": "pngio", "from_float": "pngio",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cmddcli.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
