"""The Triton selective-scan kernels against selective_scan_ref / cross_scan_ref.

Without a GPU the kernels run on CPU tensors through Triton's interpreter (TRITON_INTERPRET=1, set
per test so other test modules are unaffected); with CUDA the same tests run compiled on the GPU,
plus larger sizes. Without triton installed only the "module imports cleanly" test runs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from cmddcli.errors import BackendUnavailable
from cmddcli.model.ssm import cross_scan_ref, selective_scan_ref

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_CUDA = torch.cuda.is_available()
needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed: pip install 'cmddcli[cuda]'")
needs_cuda = pytest.mark.skipif(not (HAS_TRITON and HAS_CUDA), reason="needs triton and a CUDA device")


def _import_triton_for_interpreter() -> str:
    """Import triton with TRITON_INTERPRET=1 (its own jit helpers, e.g. tl.cdiv, follow the mode in
    force at *its* import) and restore the variable, so other test modules see no interpreter.
    Returns '' when the interpreter can run in this process, else why not."""
    if HAS_CUDA or not HAS_TRITON:
        return ""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        import triton.language as tl
        from triton.runtime.interpreter import InterpretedFunction
    except Exception as e:  # pragma: no cover - broken install
        return f"triton's interpreter does not import: {e}"
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old
    if not isinstance(getattr(tl, "cdiv", None), InterpretedFunction):
        return "triton was imported before this module without TRITON_INTERPRET=1"
    return ""


INTERPRETER_PROBLEM = _import_triton_for_interpreter()


def _vectorised_generic_scan(self, input):
    """Drop-in for Triton's interpreter ScanOps.generic_scan: same recurrence, one combine call per
    position along the axis on whole slices instead of one per element (about 100x faster)."""
    axis = self.axis
    datas = [arg.handle.data for arg in input]
    outs = [np.empty_like(d) for d in datas]
    ndim = datas[0].ndim

    def at(i):
        idx = [slice(None)] * ndim
        idx[axis] = i
        return tuple(idx)

    acc = [d[at(0)].copy() for d in datas]
    for o, a in zip(outs, acc):
        o[at(0)] = a
    for i in range(1, datas[0].shape[axis]):
        prev = tuple(self.to_tensor(a, arg.dtype) for a, arg in zip(acc, input))
        cur = tuple(self.to_tensor(d[at(i)].copy(), arg.dtype) for d, arg in zip(datas, input))
        ret = self.combine_fn.fn(*prev, *cur)
        ret = ret if isinstance(ret, tuple) else (ret,)
        acc = [r.handle.data for r in ret]
        for o, a in zip(outs, acc):
            o[at(i)] = a
    return [self.to_tensor(o, arg.dtype) for o, arg in zip(outs, input)]


@pytest.fixture
def device(monkeypatch):
    """'cuda' when there is a GPU, else 'cpu' with the Triton interpreter switched on for this test."""
    if HAS_CUDA:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        return "cuda"
    if INTERPRETER_PROBLEM:
        pytest.skip(f"{INTERPRETER_PROBLEM}; test_interpreter_in_subprocess runs these instead")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    try:
        from triton.runtime import interpreter

        if hasattr(interpreter, "ScanOps") and hasattr(interpreter.ScanOps, "generic_scan"):
            monkeypatch.setattr(interpreter.ScanOps, "generic_scan", _vectorised_generic_scan)
    except Exception:  # an interpreter without ScanOps: the tests are just slower
        pass
    return "cpu"


def _scan_inputs(b, dim, N, L, groups=1, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    u = r(b, dim, L)
    delta = 0.5 * r(b, dim, L) - 1.0
    A = -(torch.rand(dim, N, generator=g) * 4 + 0.05)
    B = r(b, groups, N, L)
    C = r(b, groups, N, L)
    D = r(dim)
    bias = 0.3 * r(dim)
    lo = [t.to(device=device, dtype=dtype) for t in (u, delta)]
    bc = [t.to(device=device, dtype=dtype) for t in (B, C)]
    return lo[0], lo[1], A.to(device), bc[0], bc[1], D.to(device), bias.to(device)


def _cross_inputs(b, d, N, H, W, K=4, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    L = H * W
    u = r(b, d, L).to(device=device, dtype=dtype)
    delta = (0.5 * r(b, K, d, L) - 1.0).to(device=device, dtype=dtype)
    A = (-(torch.rand(K * d, N, generator=g) * 4 + 0.05)).to(device)
    B = r(b, K, N, L).to(device=device, dtype=dtype)
    C = r(b, K, N, L).to(device=device, dtype=dtype)
    D = r(K * d).to(device)
    bias = (0.3 * r(K * d)).to(device)
    return u, delta, A, B, C, D, bias


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def _grads(fn, args, dy):
    leaves = [a.detach().clone().requires_grad_(a is not None) if a is not None else None for a in args]
    out = fn(*leaves)
    (out.float() * dy).sum().backward()
    return out, [a.grad if a is not None else None for a in leaves]


NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


# ----------------------------------------------------------------------------------------------
def test_module_imports_without_triton():
    """`import cmddcli.model.kernels.scan_triton` never fails; without triton it says how to install it."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "from cmddcli.model.kernels import scan_triton as st\n"
        "from cmddcli.errors import BackendUnavailable\n"
        "import torch\n"
        "assert not st.available()\n"
        "assert 'pip install' in st.why_unavailable(), st.why_unavailable()\n"
        "try:\n"
        "    st.selective_scan_triton(*[torch.zeros(1, 2, 3)] * 2, torch.zeros(2, 4), *[torch.zeros(1, 1, 4, 3)] * 2)\n"
        "except BackendUnavailable as e:\n"
        "    print('ok', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok")


@pytest.mark.skipif(not INTERPRETER_PROBLEM, reason="the interpreter tests run in this process")
def test_interpreter_in_subprocess():
    """Fallback when triton was imported in compiled mode earlier in this process: rerun this file
    in a fresh interpreter with TRITON_INTERPRET=1 from the start."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


_AOT_CODE = r"""
import sys
import triton
from cmddcli.model.kernels import scan_triton as st
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as e:
    print("SKIP", e); sys.exit(0)
fwd, bwd = st._kernels()
common = dict(SOFTPLUS=True, HAS_D=True, HAS_BIAS=True)
cases = [
    (fwd, dict(BD=2, BN=16, BL=32, CROSS=True, STORE_CKPT=True, SPLIT=False, **common)),
    (bwd, dict(BD=2, BN=16, BL=32, CROSS=True, REV_FLIP=False, SPLIT=False, **common)),
    (fwd, dict(BD=1, BN=4, BL=64, CROSS=False, STORE_CKPT=True, SPLIT=True, **common)),
    (bwd, dict(BD=1, BN=4, BL=64, CROSS=False, REV_FLIP=True, SPLIT=True, **common)),
]
for fn, consts in cases:
    sig = {n: "constexpr" if n in consts else ("*fp32" if n.endswith("_ptr") else "i32") for n in fn.arg_names}
    try:
        src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    except TypeError as e:  # another Triton API generation
        print("SKIP", e); sys.exit(0)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert k.asm.get("cubin"), "no cubin"
print("OK")
"""


@needs_triton
@pytest.mark.skipif(HAS_CUDA, reason="the CUDA tests compile and run the kernels for real")
def test_kernels_compile_for_sm90_without_gpu():
    """The interpreter does not run Triton's compiler: compile both kernels (cross and 1-D, whole
    and split states, both reverse-scan forms) down to an sm_90 cubin, which needs no GPU."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", _AOT_CODE], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    if res.stdout.startswith("SKIP"):
        pytest.skip(f"this Triton's ahead-of-time compile API differs: {res.stdout.strip()}")
    assert res.stdout.strip().endswith("OK"), res.stdout


@needs_triton
def test_rejects_cpu_tensors_without_interpreter(monkeypatch):
    from cmddcli.model.kernels import scan_triton as st

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _scan_inputs(1, 4, 4, 5)
    with pytest.raises(BackendUnavailable):
        st.selective_scan_triton(*args)


@needs_triton
@pytest.mark.parametrize(
    "groups,use_d,use_bias,softplus",
    [(1, True, True, True), (2, False, False, True), (1, True, False, False)],
)
def test_selective_scan_forward(device, groups, use_d, use_bias, softplus):
    from cmddcli.model.kernels.scan_triton import selective_scan_triton

    u, delta, A, B, C, D, bias = _scan_inputs(2, 8, 16, 37, groups=groups, device=device, seed=1)
    if not softplus:
        delta = torch.nn.functional.softplus(delta)  # dt must be positive without the softplus
    D = D if use_d else None
    bias = bias if use_bias else None
    y = selective_scan_triton(u, delta, A, B, C, D, bias, delta_softplus=softplus)
    ref = selective_scan_ref(u, delta, A, B, C, D, bias, delta_softplus=softplus)
    assert y.shape == ref.shape and y.dtype == u.dtype
    assert torch.isfinite(y).all()
    assert (y - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()


@needs_triton
def test_selective_scan_gradients(device):
    from cmddcli.model.kernels.scan_triton import selective_scan_triton

    args = _scan_inputs(2, 8, 16, 37, device=device, seed=2)
    dy = torch.randn(2, 8, 37, generator=torch.Generator().manual_seed(3)).to(device)
    y, got = _grads(selective_scan_triton, args, dy)
    y_ref, want = _grads(selective_scan_ref, args, dy)
    assert _rel(y, y_ref) <= 1e-4
    for name, g, w in zip(NAMES, got, want):
        assert g is not None and g.shape == w.shape, name
        assert _rel(g, w) <= 1e-3, f"d{name}: rel error {_rel(g, w):.2e}"


@needs_triton
@pytest.mark.parametrize(
    "blocks,reverse", [("8,64", "native"), ("2,4", "native"), ("4,8", "flip"), ("2,8,1,4", "native")]
)
def test_block_sizes(device, monkeypatch, blocks, reverse):
    """One block and one chunk, many small chunks / channel blocks, the flip-based reverse scan and
    states split over programs (BNS=4 of N=16) all give the same gradients."""
    from cmddcli.model.kernels.scan_triton import cross_scan_triton

    monkeypatch.setenv("CMDD_TRITON_SCAN", blocks)
    monkeypatch.setenv("CMDD_TRITON_REVERSE", reverse)
    args = _cross_inputs(1, 6, 16, 3, 5, device=device, seed=4)
    dy = torch.randn(1, 6, 15, generator=torch.Generator().manual_seed(5)).to(device)
    y, got = _grads(lambda *a: cross_scan_triton(*a, 3, 5), args, dy)
    y_ref, want = _grads(lambda *a: cross_scan_ref(*a, 3, 5), args, dy)
    assert _rel(y, y_ref) <= 1e-4
    for name, g, w in zip(NAMES, got, want):
        assert _rel(g, w) <= 1e-3, f"d{name}: rel error {_rel(g, w):.2e}"


@needs_triton
def test_selective_scan_split_states(device, monkeypatch):
    """1-D scan with the N states split over programs: y, du and ddelta become atomic partial sums."""
    from cmddcli.model.kernels.scan_triton import selective_scan_triton

    monkeypatch.setenv("CMDD_TRITON_SCAN", "4,16,1,4")
    args = _scan_inputs(2, 6, 12, 21, groups=2, device=device, seed=15)
    dy = torch.randn(2, 6, 21, generator=torch.Generator().manual_seed(16)).to(device)
    y, got = _grads(selective_scan_triton, args, dy)
    y_ref, want = _grads(selective_scan_ref, args, dy)
    assert _rel(y, y_ref) <= 1e-4
    for name, g, w in zip(NAMES, got, want):
        assert _rel(g, w) <= 1e-3, f"d{name}: rel error {_rel(g, w):.2e}"


@needs_triton
def test_cross_scan_forward_and_gradients(device):
    from cmddcli.model.kernels.scan_triton import cross_scan_triton

    H, W = 5, 7
    args = _cross_inputs(2, 6, 16, H, W, device=device, seed=6)
    dy = torch.randn(2, 6, H * W, generator=torch.Generator().manual_seed(7)).to(device)
    y, got = _grads(lambda *a: cross_scan_triton(*a, H, W), args, dy)
    y_ref, want = _grads(lambda *a: cross_scan_ref(*a, H, W), args, dy)
    assert y.shape == (2, 6, H * W)
    assert (y - y_ref).abs().max().item() <= 1e-4 * y_ref.abs().max().item()
    for name, g, w in zip(NAMES, got, want):
        assert g.shape == w.shape, name
        assert _rel(g, w) <= 1e-3, f"d{name}: rel error {_rel(g, w):.2e}"


@needs_triton
def test_cross_scan_fewer_directions(device):
    """K = 2 (row-major and column-major only) follows the same direction numbering."""
    from cmddcli.model.kernels.scan_triton import cross_scan_triton

    args = _cross_inputs(1, 4, 8, 4, 6, K=2, device=device, seed=8)
    y = cross_scan_triton(*args, 4, 6)
    ref = cross_scan_ref(*args, 4, 6)
    assert _rel(y, ref) <= 1e-4


@needs_triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(device, dtype):
    """bf16 / fp16 u, delta, B, C: float32 inside, output in the input dtype, within its rounding."""
    from cmddcli.model.kernels.scan_triton import cross_scan_triton, selective_scan_triton

    args = _scan_inputs(2, 8, 16, 37, device=device, dtype=dtype, seed=9)
    y = selective_scan_triton(*args)
    ref = selective_scan_ref(*args)  # computes in float32 from the same rounded inputs
    assert y.dtype == dtype
    assert _rel(y, ref) <= 2e-2
    cargs = _cross_inputs(1, 4, 16, 3, 4, device=device, dtype=dtype, seed=10)
    dy = torch.randn(1, 4, 12, generator=torch.Generator().manual_seed(11)).to(device)
    yc, got = _grads(lambda *a: cross_scan_triton(*a, 3, 4), cargs, dy)
    yc_ref, want = _grads(lambda *a: cross_scan_ref(*a, 3, 4), cargs, dy)
    assert yc.dtype == dtype and _rel(yc, yc_ref) <= 2e-2
    for name, g, w in zip(NAMES, got, want):
        assert g.dtype == w.dtype, name
        assert _rel(g, w) <= 2e-2, f"d{name}: rel error {_rel(g, w):.2e}"


@needs_triton
def test_no_grad_skips_checkpoints(device):
    from cmddcli.model.kernels.scan_triton import selective_scan_triton

    args = [a.requires_grad_() if a.is_floating_point() else a for a in _scan_inputs(1, 4, 8, 20, device=device)]
    with torch.no_grad():
        y = selective_scan_triton(*args)
    assert y.grad_fn is None
    assert _rel(y, selective_scan_ref(*[a.detach() for a in args])) <= 1e-4


# ----------------------------------------------------------------------------------------------
# Real GPU only: sizes where the interpreter would take minutes.
# ----------------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_cross_scan_large(monkeypatch, dtype):
    from cmddcli.model.kernels.scan_triton import cross_scan_triton
    from cmddcli.model.ssm import selective_scan_torch

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    H, W = 48, 40
    args = _cross_inputs(2, 24, 16, H, W, device="cuda", dtype=dtype, seed=12)
    dy = torch.randn(2, 24, H * W, device="cuda")
    ref_fn = lambda *a: cross_scan_ref(*a, H, W, scan=selective_scan_torch)  # noqa: E731
    y, got = _grads(lambda *a: cross_scan_triton(*a, H, W), args, dy)
    y_ref, want = _grads(ref_fn, [a.float() for a in args], dy)
    tol_y, tol_g = (1e-4, 1e-3) if dtype == torch.float32 else (2e-2, 3e-2)
    assert _rel(y, y_ref) <= tol_y
    for name, g, w in zip(NAMES, got, want):
        assert _rel(g, w) <= tol_g, f"d{name}: rel error {_rel(g, w):.2e}"


@needs_cuda
def test_cuda_selective_scan_long(monkeypatch):
    from cmddcli.model.kernels.scan_triton import selective_scan_triton
    from cmddcli.model.ssm import selective_scan_torch

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _scan_inputs(2, 64, 16, 4099, device="cuda", seed=13)
    dy = torch.randn(2, 64, 4099, device="cuda")
    y, got = _grads(selective_scan_triton, args, dy)
    y_ref, want = _grads(selective_scan_torch, args, dy)
    assert _rel(y, y_ref) <= 1e-4
    for name, g, w in zip(NAMES, got, want):
        assert _rel(g, w) <= 1e-3, f"d{name}: rel error {_rel(g, w):.2e}"


@needs_cuda
def test_cuda_registry_picks_triton(monkeypatch):
    from cmddcli.model import ssm

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _cross_inputs(1, 8, 16, 6, 5, device="cuda", seed=14)
    y = ssm.cross_scan(*args, 6, 5, backend="triton")
    assert _rel(y, cross_scan_ref(*args, 6, 5)) <= 1e-4
