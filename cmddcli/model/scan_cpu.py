"""Compiled C++ selective scan for CPU inference (the ``cpu`` backend of :mod:`.ssm`).

The kernel (``csrc/scan_cpu.cpp``, plain C++ with OpenMP and no torch headers) is compiled on
first use -- the first call of :func:`available` or of a scan, never at import -- with
``torch.utils.cpp_extension.load`` (g++ and ninja; ``-O3 -march=native``), cached under
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) in a folder keyed by the source,
the flags and the CPU, and called through ``ctypes`` (the GIL is released while it runs). If the
build fails, :func:`available` returns False, :func:`why_unavailable` says why (the compiler
output is logged at debug level) and the registry falls back to the ``torch`` backend.

Inference only (no autograd), float32 maths; any float dtype in, ``u``'s dtype out. Threads:
``torch.get_num_threads()``. See docs/cpu_scan.md for the design and measurements.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

_SRC = Path(__file__).resolve().parent / "csrc" / "scan_cpu.cpp"
_ABI_VERSION = 2

# Flag sets tried in order: the fast native build, then more portable fallbacks. No -ffast-math:
# the kernel's exp relies on exact float rounding semantics (see the .cpp header).
_BASE_FLAGS = ["-O3", "-std=c++17", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=fast"]
_FLAG_SETS = [
    ("native", _BASE_FLAGS + ["-march=native", "-fopenmp"], ["-fopenmp"]),
    ("portable", _BASE_FLAGS + ["-fopenmp"], ["-fopenmp"]),
    ("portable, no OpenMP", _BASE_FLAGS, []),
]


class _Args(ctypes.Structure):
    # Mirrors struct CmddScanArgs in csrc/scan_cpu.cpp.
    _fields_ = [
        ("u", ctypes.c_void_p),
        ("delta", ctypes.c_void_p),
        ("A", ctypes.c_void_p),
        ("B", ctypes.c_void_p),
        ("C", ctypes.c_void_p),
        ("D", ctypes.c_void_p),
        ("bias", ctypes.c_void_p),
        ("y", ctypes.c_void_p),
        ("batch", ctypes.c_int64),
        ("G", ctypes.c_int64),
        ("rep", ctypes.c_int64),
        ("N", ctypes.c_int64),
        ("L", ctypes.c_int64),
        ("H", ctypes.c_int64),
        ("W", ctypes.c_int64),
        ("cross", ctypes.c_int32),
        ("softplus", ctypes.c_int32),
        ("nthreads", ctypes.c_int32),
        ("clamp_hi", ctypes.c_int32),
    ]


_lock = threading.Lock()
_state: dict = {"tried": False, "lib": None, "reason": "", "info": ""}


def _cpu_signature() -> str:
    """What -march=native depends on: the machine and its instruction-set flags."""
    sig = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key = line.split(":", 1)[0].strip().lower()
                if key in ("flags", "features", "model name", "cpu part"):
                    sig += "|" + line.strip()
                if key in ("flags", "features"):
                    break
    except OSError:
        sig += "|" + platform.processor()
    return sig


def _compiler() -> str | None:
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx)


def _default_build_root() -> str:
    try:  # what torch.utils.cpp_extension.get_default_build_root() returns, without importing it (slow)
        from torch import _appdirs

        return os.path.realpath(_appdirs.user_cache_dir(appname="torch_extensions"))
    except Exception:  # noqa: BLE001 - any failure: use torch's own lookup
        from torch.utils.cpp_extension import get_default_build_root

        return get_default_build_root()


def _build_root() -> str:
    root = os.environ.get("TORCH_EXTENSIONS_DIR") or _default_build_root()
    try:
        os.makedirs(root, exist_ok=True)
        if os.access(root, os.W_OK):
            return root
    except OSError:
        pass
    return os.path.join(tempfile.gettempdir(), f"cmdd_torch_extensions_{os.getuid() if hasattr(os, 'getuid') else 0}")


def _build_once(label: str, cflags: list, ldflags: list, cached_only: bool = False) -> ctypes.CDLL | None:
    """Load the build for these flags, compiling it first unless it is cached (or cached_only)."""
    src = _SRC.read_bytes()
    key = hashlib.sha256(
        b"\0".join([src, " ".join(cflags + ldflags).encode(), _cpu_signature().encode(), torch.__version__.encode()])
    ).hexdigest()[:16]
    name = f"cmdd_scan_cpu_{key}"
    build_dir = os.path.join(_build_root(), name)
    so_path = os.path.join(build_dir, f"{name}.so")
    stamp = os.path.join(build_dir, "cmdd_build_ok")
    if os.path.isfile(stamp) and os.path.isfile(so_path):
        # Built and loaded before (the folder name hashes source, flags and CPU): skip torch's
        # ninja / compiler checks, which cost seconds per process.
        path = so_path
    elif cached_only:
        return None
    else:
        from torch.utils.cpp_extension import load

        os.makedirs(build_dir, exist_ok=True)
        log.debug("building CPU scan kernel (%s) in %s", label, build_dir)
        path = load(
            name=name,
            sources=[str(_SRC)],
            extra_cflags=cflags,
            extra_ldflags=ldflags,
            build_directory=build_dir,
            is_python_module=False,
            verbose=False,
        )
        if not isinstance(path, str):  # older torch returns None for non-module builds
            path = so_path
    lib = ctypes.CDLL(path)
    lib.cmdd_selective_scan_f32.argtypes = [ctypes.POINTER(_Args)]
    lib.cmdd_selective_scan_f32.restype = ctypes.c_int
    lib.cmdd_scan_abi_version.restype = ctypes.c_int
    lib.cmdd_scan_vector_width.restype = ctypes.c_int
    if lib.cmdd_scan_abi_version() != _ABI_VERSION:
        raise RuntimeError(f"stale kernel library {path} (ABI {lib.cmdd_scan_abi_version()} != {_ABI_VERSION})")
    _state["info"] = f"{label} build, {lib.cmdd_scan_vector_width()} float lanes, {path}"
    if not os.path.isfile(stamp):
        try:
            Path(stamp).write_text(_state["info"] + "\n")
        except OSError:
            pass
    return lib


def _load() -> ctypes.CDLL | None:
    """Compile (or reuse the cached build) once per process; thread-safe; never raises."""
    if _state["tried"]:
        return _state["lib"]
    with _lock:
        if _state["tried"]:
            return _state["lib"]
        reason = ""
        lib = None
        for label, cflags, ldflags in _FLAG_SETS:  # a build cached by an earlier process
            try:
                lib = _build_once(label, cflags, ldflags, cached_only=True)
            except Exception as e:  # noqa: BLE001 - a bad cached build means "build again"
                log.debug("cached CPU scan kernel (%s) did not load: %s", label, e)
            if lib is not None:
                break
        if lib is None:
            try:
                if not _SRC.is_file():
                    reason = f"kernel source missing: {_SRC}"
                elif _compiler() is None:
                    reason = f"no C++ compiler ({os.environ.get('CXX', 'c++')} not found): install g++ and ninja"
                else:
                    from torch.utils.cpp_extension import is_ninja_available

                    if not is_ninja_available():
                        reason = "ninja not found: install ninja (pip install ninja) and g++"
            except Exception as e:  # noqa: BLE001  # pragma: no cover - defensive
                reason = f"cannot check the build tools: {e}"
        if lib is None and not reason:
            errors = []
            for label, cflags, ldflags in _FLAG_SETS:
                try:
                    lib = _build_once(label, cflags, ldflags)
                    break
                except Exception as e:  # noqa: BLE001 - a failed build only makes the backend unavailable
                    log.debug("CPU scan kernel build (%s) failed: %s", label, e)
                    errors.append(f"{label}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
            if lib is None:
                reason = "C++ build failed (" + "; ".join(errors) + "); run with debug logging for the compiler output"
        if lib is None:
            log.info("compiled CPU selective scan unavailable: %s", reason)
        else:
            log.debug("CPU scan kernel ready: %s", _state["info"])
        _state.update(tried=True, lib=lib, reason=reason)
        return lib


def available() -> bool:
    """True when the kernel is compiled and loaded (builds it on the first call, then cached)."""
    return _load() is not None


def why_unavailable() -> str:
    if _load() is not None:
        return ""
    return _state["reason"]


def kernel_info() -> str:
    """Which build is loaded (flags, SIMD width, library path); empty when unavailable."""
    return _state["info"] if available() else ""


# ----------------------------------------------------------------------------------------------
def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None:
        return None
    return t.detach().to(dtype=torch.float32).contiguous()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check_cpu(*tensors) -> None:
    for t in tensors:
        if t is not None and t.device.type != "cpu":
            raise ValueError(f"the cpu scan backend needs CPU tensors, got {t.device}")


def _run(u, delta, A, B, C, D, bias, y, batch, G, rep, N, L, H, W, cross, softplus) -> None:
    lib = _load()
    if lib is None:
        from ..errors import BackendUnavailable

        raise BackendUnavailable(f"scan backend 'cpu' is unavailable: {why_unavailable()}")
    clamp_hi = int((not softplus) or bool((A > 0).any()))
    args = _Args(
        _ptr(u), _ptr(delta), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(bias), _ptr(y),
        batch, G, rep, N, L, H, W, int(cross), int(softplus), max(1, torch.get_num_threads()), clamp_hi,
    )
    rc = lib.cmdd_selective_scan_f32(ctypes.byref(args))
    if rc != 0:
        raise ValueError(f"cpu selective scan rejected its arguments (code {rc})")


def selective_scan_cpu(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """mamba-ssm's selective scan on CPU: u, delta (b, dim, L); A (dim, N); B, C (b, groups, N, L);
    D, delta_bias (dim,) or None. Returns (b, dim, L) in u's dtype. No autograd."""
    _check_cpu(u, delta, A, B, C, D, delta_bias)
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must be (batch, dim, L) alike, got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, dim, L = u.shape
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be (dim={dim}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    if B.dim() != 4 or B.shape[0] != batch or B.shape[2] != N or B.shape[3] != L or C.shape != B.shape:
        raise ValueError(f"B and C must be (batch, groups, N={N}, L={L}), got {tuple(B.shape)} and {tuple(C.shape)}")
    G = B.shape[1]
    if G < 1 or dim % G:
        raise ValueError(f"groups={G} must divide dim={dim}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.numel() != dim:
            raise ValueError(f"{name} must have dim={dim} elements, got {tuple(t.shape)}")
    y = torch.empty(batch, dim, L, dtype=torch.float32)
    if y.numel() == 0 or N == 0:
        y.zero_()
        if D is not None:
            y += D.detach().float().view(1, dim, 1) * u.detach().float()
        return y.to(u.dtype)
    Af = _f32(A)
    _run(_f32(u), _f32(delta), Af, _f32(B), _f32(C), _f32(D), _f32(delta_bias), y,
         batch, G, dim // G, N, L, 0, 0, False, delta_softplus)
    return y.to(u.dtype)


def cross_scan_cpu(u, delta, A, B, C, D, delta_bias, H: int, W: int):
    """SS2D's fused four-direction scan (see :func:`.ssm.cross_scan_ref` for the contract):
    u (b, d, L) row-major, delta (b, K, d, L), A (K*d, N), B, C (b, K, N, L), D, delta_bias
    (K*d,) or None; softplus always on. Returns (b, d, L) in u's dtype. No autograd."""
    _check_cpu(u, delta, A, B, C, D, delta_bias)
    H, W = int(H), int(W)
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, d, L), got {tuple(u.shape)}")
    batch, d, L = u.shape
    if H * W != L:
        raise ValueError(f"H*W = {H}*{W} != L = {L}")
    if delta.dim() != 4 or delta.shape[0] != batch or delta.shape[2:] != (d, L):
        raise ValueError(f"delta must be (batch, K, d={d}, L={L}), got {tuple(delta.shape)}")
    K = delta.shape[1]
    if A.dim() != 2 or A.shape[0] != K * d:
        raise ValueError(f"A must be (K*d={K * d}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    if B.shape != (batch, K, N, L) or C.shape != B.shape:
        raise ValueError(f"B and C must be (batch, K={K}, N={N}, L={L}), got {tuple(B.shape)} and {tuple(C.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.numel() != K * d:
            raise ValueError(f"{name} must have K*d={K * d} elements, got {tuple(t.shape)}")
    y = torch.zeros(batch, d, L, dtype=torch.float32)  # the kernel adds the K directions into it
    if y.numel() == 0 or K == 0:
        return y.to(u.dtype)
    if N == 0:
        if D is not None:
            y += D.detach().float().view(K, d).sum(0).view(1, d, 1) * u.detach().float()
        return y.to(u.dtype)
    _run(_f32(u), _f32(delta), _f32(A), _f32(B), _f32(C), _f32(D), _f32(delta_bias), y,
         batch, K, d, N, L, H, W, True, True)
    return y.to(u.dtype)
