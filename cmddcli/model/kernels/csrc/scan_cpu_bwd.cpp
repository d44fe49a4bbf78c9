// Selective scan (Mamba S6) CPU TRAINING kernels for cmddcli -- see docs/cpu_scan.md, "Backward".
//
// This file includes the inference kernel (scan_cpu.cpp) so that both share one copy of the
// vector helpers (splat, vmax/vmin, the clamped 2^z, loadu/storeu); the library built from it
// therefore also exports the inference entry points. Same flags, same build machinery
// (cmddcli/model/kernels/scan_cpu.py). float32 maths, plain C++17 + OpenMP, no torch headers.
//
// Entry points (called through ctypes):
//   * cmdd_scan_fwd_ckpt_f32: forward that also saves the state h every T steps
//     (ckpt (batch, dim, nchunks, N): the state BEFORE chunk k, ckpt[.., 0, :] = 0).
//   * cmdd_scan_bwd_f32: backward. Per (batch, channel) the chunks run in reverse; each chunk's
//     states are recomputed from its checkpoint into a small T x N buffer (with the decays), then
//     the reverse recurrence gh_t = C_t gy_t + a_{t+1} gh_{t+1} produces every gradient.
//   * cmdd_cross_scan_tokens_bwd_f32: the same backward for SS2D's four directions on token-major
//     (channels-last) operands, dt formed from its rank-R projection (see its struct below).
//
// Layout differs from the inference kernel: one channel at a time, vectorised over the N states
// (N padded by the caller to a multiple of 16; padded states have A = B = C = 0 and stay 0).
// B and C come transposed, (batch, G, L, N), so B_t is 16 contiguous floats.
// Parallel over tasks (batch, group, slice): a slice is a run of channels of one group and owns
// its own gB / gC partial buffers (batch, G, S, L, N), summed over S by the caller -- no races,
// deterministic. gA is written per (batch, channel) and summed over batch by the caller.
#include "scan_cpu.cpp"

#include <cmath>

namespace {

typedef Vec<16>::F F16;
typedef Vec<16>::I I16;

static inline __attribute__((always_inline)) float hsum16(F16 v) {
#if defined(__AVX512F__)
  return _mm512_reduce_add_ps((__m512)v);
#else
  typedef float F8 __attribute__((vector_size(32)));
  typedef float F4 __attribute__((vector_size(16)));
  F8 lo, hi;
  std::memcpy(&lo, &v, 32);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + 32, 32);
  F8 s8 = lo + hi;
  F4 a, b;
  std::memcpy(&a, &s8, 16);
  std::memcpy(&b, reinterpret_cast<const char*>(&s8) + 16, 16);
  F4 s4 = a + b;
  return (s4[0] + s4[1]) + (s4[2] + s4[3]);
#endif
}

// 2^(dt * A * log2e) with the same clamps as the inference kernel.
static inline __attribute__((always_inline)) F16 decay(F16 dtv, F16 Al) {
  F16 z = vmax(dtv * Al, splat<F16>(-125.0f));
  z = vmin(z, splat<F16>(127.0f));
  return vexp2_clamped<F16, I16>(z);
}

}  // namespace

extern "C" {

struct CmddScanGradArgs {
  const float* u;       // (batch, dim, L)
  const float* delta;   // (batch, dim, L)
  const float* A;       // (dim, N)
  const float* B;       // (batch, G, L, N)   transposed
  const float* C;       // (batch, G, L, N)   transposed
  const float* D;       // (dim) or null
  const float* bias;    // (dim) or null
  float* y;             // forward out: (batch, dim, L)
  float* ckpt;          // (batch, dim, nchunks, N); forward writes, backward reads
  const float* gy;      // backward in: (batch, dim, L)
  float* gu;            // (batch, dim, L)
  float* gdelta;        // (batch, dim, L)
  float* gA;            // (batch, dim, N)  per batch, summed by the caller
  float* gB;            // (batch, G, S, L, N)  zero-filled by the caller
  float* gC;            // (batch, G, S, L, N)  zero-filled by the caller
  int64_t batch, G, rep, N, L, T, S;
  int32_t softplus;
  int32_t nthreads;
};

}  // extern "C"

namespace {

struct GradTask {
  int64_t b, g, c0, c1, s;
};

template <typename Fn>
static void for_tasks(const CmddScanGradArgs& a, Fn fn) {
  const int64_t S = a.S;
  const int64_t ntasks = a.batch * a.G * S;
  int nthreads = a.nthreads > 0 ? a.nthreads : 1;
  if (nthreads > ntasks) nthreads = (int)std::max<int64_t>(1, ntasks);
  const int64_t per = (a.rep + S - 1) / S;
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<float> dtbuf(a.L), hbuf(a.T * a.N + 16), abuf(a.T * a.N + 16), sigbuf(a.L);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      GradTask t;
      t.b = task / (a.G * S);
      t.g = (task / S) % a.G;
      t.s = task % S;
      t.c0 = t.s * per;
      t.c1 = std::min<int64_t>(a.rep, t.c0 + per);
      for (int64_t c = t.c0; c < t.c1; ++c) fn(t, t.g * a.rep + c, dtbuf.data(), sigbuf.data(), hbuf.data(), abuf.data());
    }
  }
}

// dt (and sigmoid(delta + bias) for the softplus derivative) of one channel, 16 steps at a time
// with the inference kernel's vectorised softplus / 2^z (scalar libm calls cost more than the scan).
static inline void channel_dt(const CmddScanGradArgs& a, const float* drow, int64_t d, float* dt, float* sig) {
  const float bias = a.bias ? a.bias[d] : 0.0f;
  const int64_t L = a.L;
  for (int64_t t0 = 0; t0 < L; t0 += 16) {
    const int64_t n = std::min<int64_t>(16, L - t0);
    alignas(64) float tmp[16] = {};
    std::memcpy(tmp, drow + t0, n * sizeof(float));
    const F16 x = loadu<F16>(tmp) + bias;
    if (a.softplus) {
      storeu<F16>(tmp, vsoftplus<F16, I16>(x));
      std::memcpy(dt + t0, tmp, n * sizeof(float));
      if (sig) {  // 1 / (1 + exp(-x))
        const F16 z = vmin(vmax(x * -kLog2e, splat<F16>(-125.0f)), splat<F16>(127.0f));
        storeu<F16>(tmp, splat<F16>(1.0f) / (splat<F16>(1.0f) + vexp2_clamped<F16, I16>(z)));
        std::memcpy(sig + t0, tmp, n * sizeof(float));
      }
    } else {
      storeu<F16>(tmp, x);
      std::memcpy(dt + t0, tmp, n * sizeof(float));
    }
  }
}

// One step t of the reverse recurrence of one channel, over its nb vectors of 16 states:
// gh = C_t gy_t + gnext (the state gradient), gC_t += gy_t h_t, gB_t += gh dt_t u_t,
// gA += gh h_{t-1} a_t dt_t, gnext = a_t gh; returns s1 = sum gh h_{t-1} a_t A (the dt-via-decay
// term) and s2 = sum gh B_t (the input term), per lane, for the caller's reductions.
// ab, hb: the step's decays a_t and states h_t; hp: h_{t-1}.
static inline __attribute__((always_inline)) void reverse_step(int64_t nb, const float* ab, const float* hb,
                                                               const float* hp, const float* Bt, const float* Ct,
                                                               float* gBt, float* gCt, F16 gyv, F16 dtv, F16 dtu,
                                                               const F16* Av, F16* gnext, F16* gAacc, F16& s1,
                                                               F16& s2) {
  s1 = splat<F16>(0.0f);
  s2 = splat<F16>(0.0f);
  for (int64_t q = 0; q < nb; ++q) {
    const F16 av = loadu<F16>(ab + q * 16);
    const F16 Bv = loadu<F16>(Bt + q * 16);
    const F16 gh = loadu<F16>(Ct + q * 16) * gyv + gnext[q];
    storeu<F16>(gCt + q * 16, loadu<F16>(gCt + q * 16) + gyv * loadu<F16>(hb + q * 16));
    const F16 ga = gh * loadu<F16>(hp + q * 16) * av;  // d/d(dt * A)
    gAacc[q] += ga * dtv;
    s1 += ga * Av[q];
    s2 += gh * Bv;
    storeu<F16>(gBt + q * 16, loadu<F16>(gBt + q * 16) + gh * dtu);
    gnext[q] = av * gh;
  }
}

template <int NB>
static void fwd_ckpt(const CmddScanGradArgs& a) {
  const int64_t L = a.L, T = a.T, nb = NB > 0 ? NB : a.N / 16, N = nb * 16;
  const int64_t nchunks = (L + T - 1) / T;
  const int64_t dim = a.G * a.rep;
  for_tasks(a, [&](const GradTask& tk, int64_t d, float* dt, float*, float*, float*) {
    const int64_t row = (tk.b * dim + d) * L;
    const float* urow = a.u + row;
    float* yrow = a.y + row;
    float* ck = a.ckpt + (tk.b * dim + d) * nchunks * N;
    const float* Bg = a.B + (tk.b * a.G + tk.g) * L * N;
    const float* Cg = a.C + (tk.b * a.G + tk.g) * L * N;
    channel_dt(a, a.delta + row, d, dt, nullptr);
    const float Dd = a.D ? a.D[d] : 0.0f;
    F16 Al[NB > 0 ? NB : 64], h[NB > 0 ? NB : 64];
    for (int64_t q = 0; q < nb; ++q) {
      Al[q] = loadu<F16>(a.A + d * N + q * 16) * kLog2e;
      h[q] = splat<F16>(0.0f);
    }
    for (int64_t t = 0; t < L; ++t) {
      if (t % T == 0)
        for (int64_t q = 0; q < nb; ++q) storeu<F16>(ck + (t / T) * N + q * 16, h[q]);
      const float dtt = dt[t], uu = urow[t];
      const F16 dtv = splat<F16>(dtt), dtu = splat<F16>(dtt * uu);
      F16 acc = splat<F16>(0.0f);
      for (int64_t q = 0; q < nb; ++q) {
        h[q] = decay(dtv, Al[q]) * h[q] + dtu * loadu<F16>(Bg + t * N + q * 16);
        acc += h[q] * loadu<F16>(Cg + t * N + q * 16);
      }
      yrow[t] = hsum16(acc) + Dd * uu;
    }
  });
}

template <int NB>
static void bwd(const CmddScanGradArgs& a) {
  const int64_t L = a.L, T = a.T, nb = NB > 0 ? NB : a.N / 16, N = nb * 16;
  const int64_t nchunks = (L + T - 1) / T;
  const int64_t dim = a.G * a.rep;
  for_tasks(a, [&](const GradTask& tk, int64_t d, float* dt, float* sig, float* hbuf, float* abuf) {
    const int64_t row = (tk.b * dim + d) * L;
    const float* urow = a.u + row;
    const float* gyrow = a.gy + row;
    float* gurow = a.gu + row;
    float* gdrow = a.gdelta + row;
    const float* ck = a.ckpt + (tk.b * dim + d) * nchunks * N;
    const float* Bg = a.B + (tk.b * a.G + tk.g) * L * N;
    const float* Cg = a.C + (tk.b * a.G + tk.g) * L * N;
    float* gBg = a.gB + ((tk.b * a.G + tk.g) * a.S + tk.s) * L * N;
    float* gCg = a.gC + ((tk.b * a.G + tk.g) * a.S + tk.s) * L * N;
    channel_dt(a, a.delta + row, d, dt, sig);
    const float Dd = a.D ? a.D[d] : 0.0f;
    F16 Al[NB > 0 ? NB : 64], Av[NB > 0 ? NB : 64], h[NB > 0 ? NB : 64], gnext[NB > 0 ? NB : 64],
        gAacc[NB > 0 ? NB : 64];
    for (int64_t q = 0; q < nb; ++q) {
      Av[q] = loadu<F16>(a.A + d * N + q * 16);
      Al[q] = Av[q] * kLog2e;
      gnext[q] = splat<F16>(0.0f);
      gAacc[q] = splat<F16>(0.0f);
    }
    for (int64_t k = nchunks - 1; k >= 0; --k) {
      const int64_t t0 = k * T, t1 = std::min<int64_t>(L, t0 + T);
      // Recompute the chunk's states and decays from its checkpoint.
      for (int64_t q = 0; q < nb; ++q) h[q] = loadu<F16>(ck + k * N + q * 16);
      for (int64_t t = t0; t < t1; ++t) {
        const float dtt = dt[t];
        const F16 dtv = splat<F16>(dtt), dtu = splat<F16>(dtt * urow[t]);
        float* hb = hbuf + (t - t0) * N;
        float* ab = abuf + (t - t0) * N;
        for (int64_t q = 0; q < nb; ++q) {
          const F16 av = decay(dtv, Al[q]);
          h[q] = av * h[q] + dtu * loadu<F16>(Bg + t * N + q * 16);
          storeu<F16>(ab + q * 16, av);
          storeu<F16>(hb + q * 16, h[q]);
        }
      }
      // Reverse recurrence over the chunk.
      for (int64_t t = t1 - 1; t >= t0; --t) {
        const float dtt = dt[t], uu = urow[t], gyt = gyrow[t];
        const F16 gyv = splat<F16>(gyt), dtv = splat<F16>(dtt), dtu = splat<F16>(dtt * uu);
        const float* hb = hbuf + (t - t0) * N;
        const float* hp = t > t0 ? hbuf + (t - t0 - 1) * N : ck + k * N;
        const float* ab = abuf + (t - t0) * N;
        const float* Bt = Bg + t * N;
        const float* Ct = Cg + t * N;
        float* gBt = gBg + t * N;
        float* gCt = gCg + t * N;
        F16 s1, s2;
        reverse_step(nb, ab, hb, hp, Bt, Ct, gBt, gCt, gyv, dtv, dtu, Av, gnext, gAacc, s1, s2);
        const float hs2 = hsum16(s2);
        const float gdt = hsum16(s1) + hs2 * uu;
        gurow[t] = hs2 * dtt + Dd * gyt;
        gdrow[t] = a.softplus ? gdt * sig[t] : gdt;
      }
    }
    float* gA = a.gA + (tk.b * dim + d) * N;
    for (int64_t q = 0; q < nb; ++q) storeu<F16>(gA + q * 16, gAacc[q]);
  });
}

static int check(const CmddScanGradArgs* a) {
  if (!a || a->batch <= 0 || a->G <= 0 || a->rep <= 0 || a->L <= 0 || a->T <= 0 || a->S <= 0) return 1;
  if (a->N <= 0 || a->N % 16 || a->N > 64 * 16) return 2;
  return 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Backward of the token-major SS2D cross scan (its forward: cmdd_cross_scan_tokens_f32 with ckpt
// set, in scan_cpu.cpp): the operands as a channels-last network holds them, u (batch, L, d) and
// x = x_proj(u) (batch, L, x_stride) with direction k's [dt_low (R), B (N), C (N)] at columns
// k (R + 2N); dt = softplus(Wdt[k] . dt_low + bias) is formed here, and the four directions walk
// the map by index (no permuted copies). One task = (batch, slice of channels); a task runs its
// channels' four directions in turn, so gu is written by one task per element. gx (dt_low, B, C gradients, summed over channels) has one partial buffer per
// (batch, slice), summed by the caller; gW, gbias, gA, gD are per batch item. Softplus always on.
extern "C" {
struct CmddTokenGradArgs {
  const float* u;      // (batch, L, u_stride)
  const float* x;      // (batch, L, x_stride)
  const float* Wdt;    // (K, d, R)
  const float* bias;   // (K * d)
  const float* A;      // (K * d, N), N a multiple of 16
  const float* D;      // (K * d) or null
  float* ckpt;         // (batch, K, d, nchunks, N): the state before each chunk of T steps
  const float* gy;     // backward in: (batch, L, d)
  float* gu;           // (batch, L, d)
  float* gx;           // (batch, S, L, x_stride); columns past K (R + 2N) are left to the caller
  float* gW;           // (batch, K, d, R)
  float* gbias;        // (batch, K, d)
  float* gA;           // (batch, K, d, N)
  float* gD;           // (batch, K, d)
  int64_t batch, K, d, N, R, L, H, W, u_stride, x_stride, T, S;
  int32_t nthreads;
};
}  // extern "C"

namespace {

// Row-major position of every step of direction k (see DirectionWalk in scan_cpu.cpp).
static void direction_positions(int64_t k, int64_t L, int64_t H, int64_t W, int64_t* pos) {
  DirectionWalk walk((int)(k & 3), L, H, W, 0);
  for (int64_t t = 0; t < L; ++t) pos[t] = walk.next();
}

// Per thread: one direction's operands gathered into time order for a task's channels [c0, c1)
// (xk: dt_low, B, C per step; uk, gyk: the channels' u / gy per step), the outputs accumulated in
// time order (yk or guk, gxk) and added to the row-major tensors once per direction, plus one
// channel's dt / sigmoid / u and the chunk buffers. Reading the map in a direction's order inside
// the recurrence (a new cache line, for the column orders a new page, per step) cost 2-3x.
struct TokScratch {
  int64_t XR = 0, nc = 0;
  std::vector<float> xk, uk, gyk, yk, gxk, dt, sig, uu, hbuf, abuf;
  TokScratch(const CmddTokenGradArgs& a, int64_t per)
      : XR(a.R + 2 * a.N), nc(per), xk(a.L * XR), uk(a.L * per), gyk(a.L * per), yk(a.L * per), gxk(a.L * XR),
        dt(a.L + 16), sig(a.L + 16), uu(a.L), hbuf(a.T * a.N + 16), abuf(a.T * a.N + 16) {}
};

// Gathers direction k of batch item b, channels [c0, c1), into time order.
static void token_gather(const CmddTokenGradArgs& a, int64_t b, int64_t k, int64_t c0, int64_t c1, const int64_t* pos,
                         TokScratch& sc) {
  const int64_t L = a.L, XR = sc.XR, nc = c1 - c0;
  const float* xb = a.x + b * L * a.x_stride + k * XR;
  const float* ub = a.u + b * L * a.u_stride + c0;
  const float* gyb = a.gy + b * L * a.d + c0;
  for (int64_t t = 0; t < L; ++t) {
    const int64_t p = pos[t];
    std::memcpy(sc.xk.data() + t * XR, xb + p * a.x_stride, XR * sizeof(float));
    std::memcpy(sc.uk.data() + t * nc, ub + p * a.u_stride, nc * sizeof(float));
    std::memcpy(sc.gyk.data() + t * nc, gyb + p * a.d, nc * sizeof(float));
  }
}

// A time-ordered (L, n) buffer into rows of a row-major tensor: dst[pos[t] * stride + j] (+)= src[t * n + j]
// (pos is a permutation, so with add = false every row is written once: no zero-fill needed).
static void token_scatter(const float* src, int64_t n, float* dst, int64_t stride, const int64_t* pos, int64_t L,
                          bool add) {
  for (int64_t t = 0; t < L; ++t) {
    float* d = dst + pos[t] * stride;
    const float* s = src + t * n;
    if (add)
      for (int64_t j = 0; j < n; ++j) d[j] += s[j];
    else
      std::memcpy(d, s, n * sizeof(float));
  }
}

// dt (and sigmoid of its pre-activation, for the softplus derivative) and u of channel c (slot cc
// of the gathered buffers) along the gathered direction, 16 steps at a time.
static void token_channel_dt(const CmddTokenGradArgs& a, int64_t k, int64_t c, int64_t cc, TokScratch& sc,
                             bool want_sig) {
  const int64_t L = a.L, R = a.R, XR = sc.XR, nc = sc.nc;
  const float* w = a.Wdt + (k * a.d + c) * R;
  const float bias = a.bias ? a.bias[k * a.d + c] : 0.0f;
  for (int64_t t0 = 0; t0 < L; t0 += 16) {
    const int64_t n = std::min<int64_t>(16, L - t0);
    alignas(64) float pre[16] = {};
    for (int64_t j = 0; j < n; ++j) {
      const float* xp = sc.xk.data() + (t0 + j) * XR;
      float v = bias;
      for (int64_t r = 0; r < R; ++r) v += w[r] * xp[r];
      pre[j] = v;
      sc.uu[t0 + j] = sc.uk[(t0 + j) * nc + cc];
    }
    const F16 xv = loadu<F16>(pre);
    storeu<F16>(sc.dt.data() + t0, vsoftplus<F16, I16>(xv));
    if (want_sig) {
      const F16 z = vmin(vmax(xv * -kLog2e, splat<F16>(-125.0f)), splat<F16>(127.0f));
      storeu<F16>(sc.sig.data() + t0, splat<F16>(1.0f) / (splat<F16>(1.0f) + vexp2_clamped<F16, I16>(z)));
    }
  }
}

// Runs fn(b, s, c0, c1, k, pos, scratch) for every task (batch item, slice of channels) and direction.
template <typename Fn>
static void for_token_tasks(const CmddTokenGradArgs& a, Fn fn) {
  const int64_t ntasks = a.batch * a.S;
  int nthreads = a.nthreads > 0 ? a.nthreads : 1;
  if (nthreads > ntasks) nthreads = (int)std::max<int64_t>(1, ntasks);
  const int64_t per = (a.d + a.S - 1) / a.S;
  std::vector<int64_t> pos(a.K * a.L);
  for (int64_t k = 0; k < a.K; ++k) direction_positions(k, a.L, a.H, a.W, pos.data() + k * a.L);
#pragma omp parallel num_threads(nthreads)
  {
    TokScratch sc(a, per);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t b = task / a.S, s = task % a.S;
      const int64_t c0 = s * per, c1 = std::min<int64_t>(a.d, c0 + per);
      if (c0 >= c1) continue;
      sc.nc = c1 - c0;
      for (int64_t k = 0; k < a.K; ++k) fn(b, s, c0, c1, k, pos.data() + k * a.L, sc);
    }
  }
}

template <int NB>
static void token_bwd(const CmddTokenGradArgs& a) {
  const int64_t L = a.L, T = a.T, R = a.R, nb = NB > 0 ? NB : a.N / 16, N = nb * 16;
  const int64_t nchunks = (L + T - 1) / T;
  for_token_tasks(a, [&](int64_t b, int64_t s, int64_t c0, int64_t c1, int64_t k, const int64_t* pos,
                               TokScratch& sc) {
    token_gather(a, b, k, c0, c1, pos, sc);
    const int64_t XR = sc.XR, nc = c1 - c0;
    std::fill(sc.gxk.begin(), sc.gxk.end(), 0.0f);
    float* guk = sc.yk.data();
    std::fill(sc.yk.begin(), sc.yk.end(), 0.0f);
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t cc = c - c0, ch = k * a.d + c;
      token_channel_dt(a, k, c, cc, sc, true);
      const float* ck = a.ckpt + ((b * a.K + k) * a.d + c) * nchunks * N;
      const float* w = a.Wdt + ch * R;
      const float Dd = a.D ? a.D[ch] : 0.0f;
      F16 Al[NB > 0 ? NB : 64], Av[NB > 0 ? NB : 64], h[NB > 0 ? NB : 64], gnext[NB > 0 ? NB : 64],
          gAacc[NB > 0 ? NB : 64];
      for (int64_t q = 0; q < nb; ++q) {
        Av[q] = loadu<F16>(a.A + ch * N + q * 16);
        Al[q] = Av[q] * kLog2e;
        gnext[q] = splat<F16>(0.0f);
        gAacc[q] = splat<F16>(0.0f);
      }
      float gWacc[64] = {};
      float gbacc = 0.0f, gDacc = 0.0f;
      float* hbuf = sc.hbuf.data();
      float* abuf = sc.abuf.data();
      for (int64_t kc = nchunks - 1; kc >= 0; --kc) {
        const int64_t t0 = kc * T, t1 = std::min<int64_t>(L, t0 + T);
        for (int64_t q = 0; q < nb; ++q) h[q] = loadu<F16>(ck + kc * N + q * 16);
        for (int64_t t = t0; t < t1; ++t) {
          const float dtt = sc.dt[t];
          const F16 dtv = splat<F16>(dtt), dtu = splat<F16>(dtt * sc.uu[t]);
          const float* Bt = sc.xk.data() + t * XR + R;
          float* hb = hbuf + (t - t0) * N;
          float* ab = abuf + (t - t0) * N;
          for (int64_t q = 0; q < nb; ++q) {
            const F16 av = decay(dtv, Al[q]);
            h[q] = av * h[q] + dtu * loadu<F16>(Bt + q * 16);
            storeu<F16>(ab + q * 16, av);
            storeu<F16>(hb + q * 16, h[q]);
          }
        }
        for (int64_t t = t1 - 1; t >= t0; --t) {
          const float dtt = sc.dt[t], uu = sc.uu[t], gyt = sc.gyk[t * nc + cc];
          const F16 gyv = splat<F16>(gyt), dtv = splat<F16>(dtt), dtu = splat<F16>(dtt * uu);
          const float* hb = hbuf + (t - t0) * N;
          const float* hp = t > t0 ? hbuf + (t - t0 - 1) * N : ck + kc * N;
          const float* ab = abuf + (t - t0) * N;
          const float* xp = sc.xk.data() + t * XR;
          const float* Bt = xp + R;
          const float* Ct = Bt + N;
          float* gxp = sc.gxk.data() + t * XR;
          float* gBt = gxp + R;
          float* gCt = gBt + N;
          F16 s1, s2;
          reverse_step(nb, ab, hb, hp, Bt, Ct, gBt, gCt, gyv, dtv, dtu, Av, gnext, gAacc, s1, s2);
          const float hs2 = hsum16(s2);
          const float gdt = hsum16(s1) + hs2 * uu;
          guk[t * nc + cc] = hs2 * dtt + Dd * gyt;
          const float gpre = gdt * sc.sig[t];
          gbacc += gpre;
          gDacc += gyt * uu;
          for (int64_t r = 0; r < R; ++r) {
            gWacc[r] += gpre * xp[r];
            gxp[r] += gpre * w[r];
          }
        }
      }
      const int64_t o = (b * a.K + k) * a.d + c;
      for (int64_t q = 0; q < nb; ++q) storeu<F16>(a.gA + o * N + q * 16, gAacc[q]);
      for (int64_t r = 0; r < R; ++r) a.gW[o * R + r] = gWacc[r];
      a.gbias[o] = gbacc;
      a.gD[o] = gDacc;
    }
    token_scatter(guk, nc, a.gu + b * L * a.d + c0, a.d, pos, L, k > 0);
    token_scatter(sc.gxk.data(), XR, a.gx + (b * a.S + s) * L * a.x_stride + k * XR, a.x_stride, pos, L, false);
  });
}

static int check_tokens(const CmddTokenGradArgs* a) {
  if (!a || a->batch <= 0 || a->K <= 0 || a->d <= 0 || a->L <= 0 || a->T <= 0 || a->S <= 0) return 1;
  if (a->N <= 0 || a->N % 16 || a->N > 64 * 16 || a->R < 0 || a->R > 64) return 2;
  if (a->H <= 0 || a->W <= 0 || a->H * a->W != a->L) return 3;
  if (a->u_stride < a->d || a->x_stride < a->K * (a->R + 2 * a->N)) return 4;
  return 0;
}

}  // namespace

extern "C" {

int cmdd_scan_fwd_ckpt_f32(const CmddScanGradArgs* a) {
  if (int rc = check(a)) return rc;
  if (a->N == 16) fwd_ckpt<1>(*a);
  else fwd_ckpt<0>(*a);
  return 0;
}

int cmdd_scan_bwd_f32(const CmddScanGradArgs* a) {
  if (int rc = check(a)) return rc;
  if (a->N == 16) bwd<1>(*a);
  else bwd<0>(*a);
  return 0;
}

int cmdd_cross_scan_tokens_bwd_f32(const CmddTokenGradArgs* a) {
  if (int rc = check_tokens(a)) return rc;
  if (a->N == 16) token_bwd<1>(*a);
  else token_bwd<0>(*a);
  return 0;
}

int cmdd_scan_grad_abi_version() { return 3; }

}  // extern "C"
