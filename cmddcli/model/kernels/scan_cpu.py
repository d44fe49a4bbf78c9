"""Compiled C++ selective scan for CPU inference (the ``cpu`` backend of :mod:`.ssm`).

The kernel (``csrc/scan_cpu.cpp``, plain C++ with OpenMP and no torch headers) is compiled on
first use -- the first call of :func:`available` or of a scan, never at import -- with
``torch.utils.cpp_extension.load`` (g++ and ninja; ``-O3 -march=native``), cached under
``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``) in a folder keyed by the source,
the flags and the CPU, and called through ``ctypes`` (the GIL is released while it runs). If the
build fails, :func:`available` returns False, :func:`why_unavailable` says why (the compiler
output is logged at debug level) and the registry falls back to the ``torch`` backend.

Without autograd the fused inference kernel runs. Under autograd (grad enabled and an input that
requires grad) a second library built the same way from ``csrc/scan_cpu_bwd.cpp`` runs a forward
that saves the state every ``_CKPT_T`` steps and a backward that recomputes each chunk from its
checkpoint (:class:`_SelectiveScanCpuFn`); the cross scan then permutes into the four directions
around it. If only that library fails to build, training falls back to ``selective_scan_torch``.
float32 maths; any float dtype in, ``u``'s dtype out (gradients in the inputs' dtypes). Threads:
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
_BWD_SRC = Path(__file__).resolve().parent / "csrc" / "scan_cpu_bwd.cpp"
_GRAD_ABI_VERSION = 3
_CKPT_T = 64  # training: the forward saves the state every _CKPT_T steps
_ABI_VERSION = 4

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


class _TokenArgs(ctypes.Structure):
    # Mirrors struct CmddTokenScanArgs in csrc/scan_cpu.cpp.
    _fields_ = [(n, ctypes.c_void_p) for n in ("u", "x", "Wdt", "bias", "A", "D", "y")] + [
        (n, ctypes.c_int64) for n in ("batch", "K", "d", "N", "R", "L", "H", "W", "u_stride", "x_stride")
    ] + [(n, ctypes.c_int32) for n in ("u_bf16", "x_bf16", "nthreads", "clamp_hi")] + [
        ("ckpt", ctypes.c_void_p), ("ckpt_T", ctypes.c_int64)]


class _GradArgs(ctypes.Structure):
    # Mirrors struct CmddScanGradArgs in csrc/scan_cpu_bwd.cpp.
    _fields_ = [(n, ctypes.c_void_p) for n in ("u", "delta", "A", "B", "C", "D", "bias", "y", "ckpt", "gy", "gu",
                                                 "gdelta", "gA", "gB", "gC")] + [
        (n, ctypes.c_int64) for n in ("batch", "G", "rep", "N", "L", "T", "S")
    ] + [("softplus", ctypes.c_int32), ("nthreads", ctypes.c_int32)]


class _TokenGradArgs(ctypes.Structure):
    # Mirrors struct CmddTokenGradArgs in csrc/scan_cpu_bwd.cpp.
    _fields_ = [(n, ctypes.c_void_p) for n in ("u", "x", "Wdt", "bias", "A", "D", "ckpt", "gy", "gu", "gx", "gW",
                                                 "gbias", "gA", "gD")] + [
        (n, ctypes.c_int64) for n in ("batch", "K", "d", "N", "R", "L", "H", "W", "u_stride", "x_stride", "T", "S")
    ] + [("nthreads", ctypes.c_int32)]


_lock = threading.Lock()
_state: dict = {"tried": False, "lib": None, "reason": "", "info": ""}
_grad_state: dict = {"tried": False, "lib": None, "reason": "", "info": ""}


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


def _build_once(
    label: str, cflags: list, ldflags: list, cached_only: bool = False, src_path: Path = _SRC, prefix: str = "cmdd_scan_cpu",
    setup=None,
) -> ctypes.CDLL | None:
    """Load the build for these flags, compiling it first unless it is cached (or cached_only).

    ``src_path``/``prefix``/``setup`` select the library: the inference kernel (default) or the
    training kernels (``_BWD_SRC``, which #includes the inference source: both go in the key)."""
    src = src_path.read_bytes()
    if src_path != _SRC:
        src = src + b"\0" + _SRC.read_bytes()
    key = hashlib.sha256(
        b"\0".join([src, " ".join(cflags + ldflags).encode(), _cpu_signature().encode(), torch.__version__.encode()])
    ).hexdigest()[:16]
    name = f"{prefix}_{key}"
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
            sources=[str(src_path)],
            extra_cflags=cflags,
            extra_ldflags=ldflags,
            build_directory=build_dir,
            is_python_module=False,
            verbose=False,
        )
        if not isinstance(path, str):  # older torch returns None for non-module builds
            path = so_path
    lib = ctypes.CDLL(path)
    if setup is not None:
        info = setup(lib, label, path)
        if not os.path.isfile(stamp):
            try:
                Path(stamp).write_text(info + "\n")
            except OSError:
                pass
        return lib
    lib.cmdd_selective_scan_f32.argtypes = [ctypes.POINTER(_Args)]
    lib.cmdd_selective_scan_f32.restype = ctypes.c_int
    lib.cmdd_cross_scan_tokens_f32.argtypes = [ctypes.POINTER(_TokenArgs)]
    lib.cmdd_cross_scan_tokens_f32.restype = ctypes.c_int
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


def _setup_grad(lib: ctypes.CDLL, label: str, path: str) -> str:
    for fn in (lib.cmdd_scan_fwd_ckpt_f32, lib.cmdd_scan_bwd_f32):
        fn.argtypes = [ctypes.POINTER(_GradArgs)]
        fn.restype = ctypes.c_int
    lib.cmdd_cross_scan_tokens_bwd_f32.argtypes = [ctypes.POINTER(_TokenGradArgs)]
    lib.cmdd_cross_scan_tokens_bwd_f32.restype = ctypes.c_int
    lib.cmdd_scan_grad_abi_version.restype = ctypes.c_int
    if lib.cmdd_scan_grad_abi_version() != _GRAD_ABI_VERSION:
        raise RuntimeError(f"stale kernel library {path} (grad ABI {lib.cmdd_scan_grad_abi_version()} != {_GRAD_ABI_VERSION})")
    _grad_state["info"] = f"{label} build, {path}"
    return _grad_state["info"]


def _load_grad() -> ctypes.CDLL | None:
    """The training kernels (forward with checkpoints, backward): built like the inference kernel,
    once per process, only after the inference kernel loaded; never raises."""
    if _grad_state["tried"]:
        return _grad_state["lib"]
    if _load() is None:
        _grad_state.update(tried=True, lib=None, reason=_state["reason"])
        return None
    with _lock:
        if _grad_state["tried"]:
            return _grad_state["lib"]
        lib, errors = None, []
        kw = dict(src_path=_BWD_SRC, prefix="cmdd_scan_cpu_bwd", setup=_setup_grad)
        for cached_only in (True, False):
            for label, cflags, ldflags in _FLAG_SETS:
                try:
                    lib = _build_once(label, cflags, ldflags, cached_only=cached_only, **kw)
                except Exception as e:  # noqa: BLE001 - a failed build only makes training fall back
                    log.debug("CPU scan backward kernel (%s) failed: %s", label, e)
                    if not cached_only:
                        errors.append(f"{label}: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
                if lib is not None:
                    break
            if lib is not None:
                break
        reason = "" if lib is not None else "backward kernel build failed (" + "; ".join(errors) + ")"
        if lib is None:
            log.info("compiled CPU selective scan backward unavailable: %s", reason)
        _grad_state.update(tried=True, lib=lib, reason=reason)
        return lib


def grad_available() -> bool:
    """True when the training (autograd) kernels are compiled and loaded."""
    return _load_grad() is not None


def available() -> bool:
    """True when the kernel is compiled and loaded (builds it on the first call, then cached)."""
    return _load() is not None


def why_unavailable() -> str:
    """Why the compiled CPU scan cannot be used here ("" when it can)."""
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
        from ...errors import BackendUnavailable

        raise BackendUnavailable(f"scan backend 'cpu' is unavailable: {why_unavailable()}")
    clamp_hi = int((not softplus) or bool((A > 0).any()))
    args = _Args(
        _ptr(u), _ptr(delta), _ptr(A), _ptr(B), _ptr(C), _ptr(D), _ptr(bias), _ptr(y),
        batch, G, rep, N, L, H, W, int(cross), int(softplus), max(1, torch.get_num_threads()), clamp_hi,
    )
    rc = lib.cmdd_selective_scan_f32(ctypes.byref(args))
    if rc != 0:
        raise ValueError(f"cpu selective scan rejected its arguments (code {rc})")


# ----------------------------------------------------------------------------------------------
# Training: autograd through the compiled forward-with-checkpoints and backward kernels
# ----------------------------------------------------------------------------------------------
def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _pad_n(t: torch.Tensor, Np: int) -> torch.Tensor:
    """Pad the last dim (N) with zeros up to Np (padded states have A = B = C = 0: they stay 0)."""
    N = t.shape[-1]
    return t if N == Np else torch.nn.functional.pad(t, (0, Np - N))


def _grad_args(lib, cls=None, **kw):
    a = (cls or _GradArgs)()
    for k, v in kw.items():
        setattr(a, k, v.data_ptr() if isinstance(v, torch.Tensor) else v)
    return a


class _SelectiveScanCpuFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, delta_bias, delta_softplus):
        lib = _load_grad()
        batch, dim, L = u.shape
        G, N = B.shape[1], A.shape[1]
        Np = -(-N // 16) * 16
        T = _CKPT_T
        nchunks = -(-L // T)
        uf, df = _f32(u), _f32(delta)
        Af = _pad_n(_f32(A), Np).contiguous()
        Bt = _pad_n(_f32(B).transpose(-1, -2), Np).contiguous()  # (b, G, L, Np)
        Ct = _pad_n(_f32(C).transpose(-1, -2), Np).contiguous()
        Df, bf = _f32(D), _f32(delta_bias)
        y = torch.empty(batch, dim, L, dtype=torch.float32)
        ckpt = torch.empty(batch, dim, nchunks, Np, dtype=torch.float32)
        nthreads = max(1, torch.get_num_threads())
        args = _grad_args(lib, u=uf, delta=df, A=Af, B=Bt, C=Ct, D=Df, bias=bf, y=y, ckpt=ckpt, batch=batch, G=G,
                          rep=dim // G, N=Np, L=L, T=T, S=1, softplus=int(bool(delta_softplus)), nthreads=nthreads)
        rc = lib.cmdd_scan_fwd_ckpt_f32(ctypes.byref(args))
        if rc != 0:
            raise ValueError(f"cpu selective scan (training forward) rejected its arguments (code {rc})")
        ctx.save_for_backward(uf, df, Af, Bt, Ct, Df, bf, ckpt)
        ctx.meta = (N, bool(delta_softplus), D is not None, delta_bias is not None)
        ctx.dtypes = tuple(None if t is None else t.dtype for t in (u, delta, A, B, C, D, delta_bias))
        return y.to(u.dtype)

    @staticmethod
    def backward(ctx, gy):
        lib = _load_grad()
        uf, df, Af, Bt, Ct, Df, bf, ckpt = ctx.saved_tensors
        N, softplus, has_D, has_bias = ctx.meta
        batch, dim, L = uf.shape
        G, Np = Bt.shape[1], Bt.shape[-1]
        rep = dim // G
        nthreads = max(1, torch.get_num_threads())
        # Slices per group: enough tasks for the threads; each slice has its own gB/gC buffer.
        S = max(1, min(rep, -(-2 * nthreads // (batch * G)))) if nthreads > 1 else 1
        gyf = gy.detach().to(torch.float32).contiguous()
        gu = torch.empty_like(uf)
        gdelta = torch.empty_like(df)
        gA = torch.empty(batch, dim, Np, dtype=torch.float32)
        gB = torch.zeros(batch, G, S, L, Np, dtype=torch.float32)
        gC = torch.zeros(batch, G, S, L, Np, dtype=torch.float32)
        args = _grad_args(lib, u=uf, delta=df, A=Af, B=Bt, C=Ct, D=Df, bias=bf, ckpt=ckpt, gy=gyf, gu=gu,
                          gdelta=gdelta, gA=gA, gB=gB, gC=gC, batch=batch, G=G, rep=rep, N=Np, L=L, T=_CKPT_T, S=S,
                          softplus=int(softplus), nthreads=nthreads)
        rc = lib.cmdd_scan_bwd_f32(ctypes.byref(args))
        if rc != 0:
            raise ValueError(f"cpu selective scan backward rejected its arguments (code {rc})")
        gBs = (gB.sum(2) if S > 1 else gB[:, :, 0])[..., :N].transpose(-1, -2)  # (b, G, N, L)
        gCs = (gC.sum(2) if S > 1 else gC[:, :, 0])[..., :N].transpose(-1, -2)
        gA = gA.sum(0)[:, :N]
        gD = (gyf * uf).sum((0, 2)) if has_D else None
        gbias = gdelta.sum((0, 2)) if has_bias else None
        grads = [gu, gdelta, gA, gBs, gCs, gD, gbias]
        out = []
        for g, dt, need in zip(grads, ctx.dtypes, ctx.needs_input_grad[:7]):
            out.append(None if (g is None or not need) else g.to(dt))
        return (*out, None)


def _selective_scan_train(u, delta, A, B, C, D, delta_bias, delta_softplus):
    if _load_grad() is None:  # the backward kernel did not build: stay correct on the torch backend
        from ..ssm import selective_scan_torch

        return selective_scan_torch(u, delta, A, B, C, D=D, delta_bias=delta_bias, delta_softplus=delta_softplus)
    return _SelectiveScanCpuFn.apply(u, delta, A, B, C, D, delta_bias, delta_softplus)


def _cross_scan_train(u, delta, A, B, C, D, delta_bias, H: int, W: int):
    """:func:`.ssm.cross_scan_ref` around the differentiable 1-D scan, with the K-direction inputs
    and outputs split by ``unbind`` (one gradient copy; ``ys[:, k]`` would zero-fill a full-size gradient per direction)."""
    from ..ssm import _from_direction, _to_direction

    b, d, L = u.shape
    K = delta.shape[1]
    dk, Bk, Ck = delta.unbind(1), B.unbind(1), C.unbind(1)
    us = torch.cat([_to_direction(u, H, W, k) for k in range(K)], dim=1)
    ds = torch.cat([_to_direction(dk[k], H, W, k) for k in range(K)], dim=1)
    Bs = torch.stack([_to_direction(Bk[k], H, W, k) for k in range(K)], dim=1)
    Cs = torch.stack([_to_direction(Ck[k], H, W, k) for k in range(K)], dim=1)
    ys = selective_scan_cpu(us, ds, A, Bs, Cs, D=D, delta_bias=delta_bias, delta_softplus=True)
    parts = ys.view(b, K, d, L).unbind(1)
    y = _from_direction(parts[0], H, W, 0)
    for k in range(1, K):
        y = y + _from_direction(parts[k], H, W, k)
    return y


# ----------------------------------------------------------------------------------------------
def selective_scan_cpu(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True):
    """mamba-ssm's selective scan on CPU: u, delta (b, dim, L); A (dim, N); B, C (b, groups, N, L);
    D, delta_bias (dim,) or None. Returns (b, dim, L) in u's dtype. Differentiable: under autograd
    (grad enabled and an input requiring grad) it runs the training kernels (scan_cpu_bwd.cpp)."""
    _check_cpu(u, delta, A, B, C, D, delta_bias)
    train = _needs_grad(u, delta, A, B, C, D, delta_bias)
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
    if train and u.numel() > 0 and N > 0:
        return _selective_scan_train(u, delta, A, B, C, D, delta_bias, delta_softplus)
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
    (K*d,) or None; softplus always on. Returns (b, d, L) in u's dtype. Under autograd it permutes
    into the K directions (:func:`.ssm.cross_scan_ref`) around the differentiable 1-D scan;
    without it, the fused inference kernel."""
    _check_cpu(u, delta, A, B, C, D, delta_bias)
    if _needs_grad(u, delta, A, B, C, D, delta_bias):
        return _cross_scan_train(u, delta, A, B, C, D, delta_bias, int(H), int(W))
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


def _token_operand(t: torch.Tensor) -> tuple:
    """(tensor the kernel reads, row stride in elements, is bfloat16) for a (b, L, n) operand whose
    rows may be strided (a slice of a wider channels-last tensor) but whose elements are contiguous."""
    if t.dtype not in (torch.float32, torch.bfloat16):
        t = t.float()
    b, L, n = t.shape
    row = t.stride(1) if L > 1 else n
    if (n > 1 and t.stride(2) != 1) or row < n or (b > 1 and t.stride(0) != L * row):
        t, row = t.contiguous(), n
    return t, row, t.dtype == torch.bfloat16


class _CrossScanTokensCpuFn(torch.autograd.Function):
    """Autograd through the token-major training kernels (scan_cpu_bwd.cpp): float32 maths, the
    forward saves each direction's state every ``_CKPT_T`` steps, the backward recomputes chunks."""

    @staticmethod
    def forward(ctx, u, x, Wdt, A, D, delta_bias, H, W):
        batch, L, d = u.shape
        K, _, R = Wdt.shape
        N = A.shape[1]
        nchunks = -(-L // _CKPT_T)
        uf = u.detach().float().contiguous()
        xf = x.detach().float().contiguous()
        Wf, Af, bf = _f32(Wdt), _f32(A), _f32(delta_bias)
        Df = _f32(D) if D is not None else None
        ckpt = torch.empty(batch, K, d, nchunks, N, dtype=torch.float32)
        # The forward is the inference kernel (vectorised over 16 channels, no per-step reduction
        # over the states) saving the states every _CKPT_T steps; the backward kernel reads them.
        y = torch.zeros(batch, L, d, dtype=torch.float32)
        _run_tokens(uf, xf, Wf, Af, Df, bf, H, W, y, ckpt)
        ctx.save_for_backward(uf, xf, Wf, Af, Df if Df is not None else torch.empty(0), bf, ckpt)
        ctx.meta = (int(H), int(W), D is not None)
        ctx.dtypes = (u.dtype, x.dtype)
        return y

    @staticmethod
    def backward(ctx, gy):
        lib = _load_grad()
        uf, xf, Wf, Af, Df, bf, ckpt = ctx.saved_tensors
        H, W, has_D = ctx.meta
        batch, L, d = uf.shape
        K, _, R = Wf.shape
        N = Af.shape[1]
        nthreads = max(1, torch.get_num_threads())
        S = max(1, min(d, -(-2 * nthreads // batch))) if nthreads > 1 else 1  # tasks = batch x S slices
        gyf = gy.detach().float().contiguous()
        gu = torch.empty(batch, L, d, dtype=torch.float32)  # every element written by the kernel
        gx = torch.empty(batch, S, L, xf.shape[2], dtype=torch.float32)  # the kernel writes every element
        gW = torch.empty(batch, K, d, R, dtype=torch.float32)
        gbias = torch.empty(batch, K, d, dtype=torch.float32)
        gA = torch.empty(batch, K, d, N, dtype=torch.float32)
        gD = torch.empty(batch, K, d, dtype=torch.float32)
        args = _grad_args(lib, u=uf, x=xf, Wdt=Wf, bias=bf, A=Af, D=Df if has_D else None, ckpt=ckpt, gy=gyf,
                          gu=gu, gx=gx, gW=gW, gbias=gbias, gA=gA, gD=gD, batch=batch, K=K, d=d, N=N, R=R, L=L,
                          H=H, W=W, u_stride=d, x_stride=xf.shape[2], T=_CKPT_T, S=S, nthreads=nthreads,
                          cls=_TokenGradArgs)
        rc = lib.cmdd_cross_scan_tokens_bwd_f32(ctypes.byref(args))
        if rc != 0:
            raise ValueError(f"cpu token cross scan backward rejected its arguments (code {rc})")
        gx = gx.sum(1) if S > 1 else gx[:, 0]
        need = ctx.needs_input_grad
        return (gu.to(ctx.dtypes[0]) if need[0] else None, gx.to(ctx.dtypes[1]) if need[1] else None,
                gW.sum(0) if need[2] else None, gA.sum(0).view(K * d, N) if need[3] else None,
                gD.sum(0).view(K * d) if (has_D and need[4]) else None, gbias.sum(0).view(K * d) if need[5] else None,
                None, None)


def token_grad_supported(A) -> bool:
    """Whether the token-major training kernels serve this state size (any N up to 1024; both
    kernels vectorise over 16 channels) and are built."""
    return 0 < A.shape[-1] <= 1024 and grad_available()


def cross_scan_tokens_cpu(u, x, Wdt, A, D, delta_bias, H: int, W: int):
    """SS2D's four-direction scan on token-major (channels-last) operands, inference only.

    Args:
        u:          (b, L, d) the map in row-major order, L = H*W, float32 or bfloat16 (rows may
                    be strided, e.g. a channel slice of a channels-last tensor).
        x:          (b, L, >= K*(R+2N)): per position, direction k's [dt_low (R), B (N), C (N)]
                    at columns k*(R+2N) -- SS2D's x_proj applied to u, in its natural layout.
        Wdt:        (K, d, R) dt projection; delta = Wdt[k] @ dt_low + delta_bias (then softplus).
        A:          (K*d, N);  D, delta_bias: (K*d,) (D may be None).
    Returns:
        (b, L, d) float32: the sum over the K directions, as :func:`.ssm.cross_scan_tokens_ref`.
    Raises:
        ValueError on inconsistent shapes; BackendUnavailable if the kernel is not built.
    """
    _check_cpu(u, x, Wdt, A, D, delta_bias)
    if u.dim() != 3 or x.dim() != 3 or x.shape[:2] != u.shape[:2]:
        raise ValueError(f"u must be (b, L, d) and x (b, L, n), got {tuple(u.shape)} and {tuple(x.shape)}")
    batch, L, d = u.shape
    H, W = int(H), int(W)
    if H * W != L:
        raise ValueError(f"H*W = {H}*{W} != L = {L}")
    if Wdt.dim() != 3 or Wdt.shape[1] != d:
        raise ValueError(f"Wdt must be (K, d={d}, R), got {tuple(Wdt.shape)}")
    K, R = Wdt.shape[0], Wdt.shape[2]
    if A.dim() != 2 or A.shape[0] != K * d:
        raise ValueError(f"A must be (K*d={K * d}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    if x.shape[2] < K * (R + 2 * N):
        raise ValueError(f"x must have >= K*(R+2N) = {K * (R + 2 * N)} columns, got {x.shape[2]}")
    if delta_bias is None or delta_bias.numel() != K * d or (D is not None and D.numel() != K * d):
        raise ValueError(f"delta_bias (and D, if given) must have K*d = {K * d} elements")
    if _needs_grad(u, x, Wdt, A, D, delta_bias):
        if u.numel() > 0 and token_grad_supported(A):
            return _CrossScanTokensCpuFn.apply(u, x, Wdt, A, D, delta_bias, H, W)
        from ..ssm import cross_scan_tokens_ref  # differentiable permutes around the 1-D scan

        return cross_scan_tokens_ref(u, x, Wdt, A, D, delta_bias, H, W, backend="cpu")
    y = torch.zeros(batch, L, d, dtype=torch.float32)
    if y.numel() == 0 or N == 0:
        if D is not None:
            y += D.detach().float().view(K, d).sum(0) * u.detach().float()
        return y
    _run_tokens(u, x, Wdt, A, D, delta_bias, H, W, y)
    return y


def _run_tokens(u, x, Wdt, A, D, delta_bias, H: int, W: int, y: torch.Tensor, ckpt: torch.Tensor | None = None):
    """Calls cmdd_cross_scan_tokens_f32, adding the K directions into y (b, L, d) float32 (zeroed
    by the caller); with ``ckpt`` (b, K, d, ceil(L / _CKPT_T), N) it also saves the training
    checkpoints. Shapes as checked by :func:`cross_scan_tokens_cpu`."""
    lib = _load()
    if lib is None:
        from ...errors import BackendUnavailable

        raise BackendUnavailable(f"scan backend 'cpu' is unavailable: {why_unavailable()}")
    batch, L, d = u.shape
    K, _, R = Wdt.shape
    N = A.shape[1]
    uk, us, ubf = _token_operand(u.detach())
    xk, xs, xbf = _token_operand(x.detach())
    Af, Df, bf, Wf = _f32(A), _f32(D), _f32(delta_bias), _f32(Wdt)
    args = _TokenArgs(
        _ptr(uk), _ptr(xk), _ptr(Wf), _ptr(bf), _ptr(Af), _ptr(Df), _ptr(y),
        batch, K, d, N, R, L, int(H), int(W), us, xs, int(ubf), int(xbf), max(1, torch.get_num_threads()),
        int(bool((Af > 0).any())), _ptr(ckpt), _CKPT_T if ckpt is not None else 0,
    )
    rc = lib.cmdd_cross_scan_tokens_f32(ctypes.byref(args))
    if rc != 0:
        raise ValueError(f"cpu token cross scan rejected its arguments (code {rc})")
