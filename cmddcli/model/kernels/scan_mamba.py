"""mamba-ssm's CUDA selective scan, used when it imports and the tensors are on CUDA.

Install with ``pip install 'cmddcli[cuda]'`` (needs a CUDA toolkit: mamba-ssm builds from source).
"""

from __future__ import annotations

_IMPORT_ERROR = None
try:  # optional extension
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _selective_scan_fn
except Exception as e:  # pragma: no cover - depends on the machine
    _selective_scan_fn = None
    _IMPORT_ERROR = e


def available() -> bool:
    """True when mamba-ssm's CUDA selective scan imports here."""
    import torch

    return _selective_scan_fn is not None and torch.cuda.is_available()


def why_unavailable() -> str:
    """Why :func:`available` is False, with how to install it ("" when available)."""
    if _selective_scan_fn is None:
        return f"mamba-ssm is not installed ({_IMPORT_ERROR}); install with: pip install 'cmddcli[cuda]' (needs CUDA)"
    return "no CUDA device"


def selective_scan_mamba(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """mamba-ssm's ``selective_scan_fn`` with :func:`cmddcli.model.ssm.selective_scan_ref`'s signature and shapes.
    Raises BackendUnavailable when mamba-ssm is not installed."""
    if _selective_scan_fn is None:
        from ...errors import BackendUnavailable

        raise BackendUnavailable(why_unavailable())
    # mamba-ssm wants contiguous float inputs; B/C groups layout matches ours.
    return _selective_scan_fn(
        u.contiguous(), delta.contiguous(), A.contiguous().float(), B.contiguous(), C.contiguous(),
        D=None if D is None else D.float(), z=None, delta_bias=None if delta_bias is None else delta_bias.float(),
        delta_softplus=delta_softplus, return_last_state=False,
    )
