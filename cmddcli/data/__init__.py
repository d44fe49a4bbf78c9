"""Data: manifests, DPDD / RealDOF / pairs discovery, training crops, the defocus synthesiser, datasets.

Import from the submodules, or from here (names are resolved lazily, so ``import cmddcli.data``
does not load torch):

    from cmddcli.data import load_manifest, PairsDataset, SynthDataset, SynthConfig, synthesize
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS = {
    # manifests
    "Manifest": "manifest", "Pair": "manifest", "PairEntry": "manifest", "load_manifest": "manifest",
    "save_manifest": "manifest", "MANIFEST_NAME": "manifest", "sha256_file": "manifest",
    # discovery
    "discover_dpdd": "discovery", "discover_realdof": "discovery", "discover_pairs": "discovery", "RawPair": "discovery",
    "Discovery": "discovery", "DPDD_INDOOR_TEST": "discovery", "natural_key": "discovery",
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
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
