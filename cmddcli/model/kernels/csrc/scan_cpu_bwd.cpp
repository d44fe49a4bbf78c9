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

// sigmoid(x) = 1 / (1 + exp(-x)): the softplus derivative, with the inference kernel's clamped 2^z.
template <typename F, typename I>
static inline __attribute__((always_inline)) F vsigmoid(F x) {
  const F z = vmin(vmax(x * -kLog2e, splat<F>(-125.0f)), splat<F>(127.0f));
  return splat<F>(1.0f) / (splat<F>(1.0f) + vexp2_clamped<F, I>(z));
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
      if (sig) {
        storeu<F16>(tmp, vsigmoid<F16, I16>(x));
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
  const float* A;      // (K * d, N)
  const float* D;      // (K * d) or null
  float* ckpt;         // (batch, K, d, nchunks, N): the state before each chunk of T steps
  const float* gy;     // backward in: (batch, L, d)
  float* gu;           // (batch, L, d)
  float* gx;           // (batch, S, L, x_stride); columns past K (R + 2N) are set to 0
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
// time order (yk or guk, gxk) and added to the row-major tensors once per direction, plus the
// chunk buffers of one 16-channel tile (vectors: per step vt, per state vn, the group's states vh
// and decays va). Reading the map in a direction's order inside the recurrence (a new cache line,
// for the column orders a new page, per step) cost 2-3x.
constexpr int kMaxNG = 8;  // states per group in the backward
struct TokScratch {
  int64_t XR = 0, nc = 0;
  std::vector<float> xk, uk, gyk, yk, gxk;
  std::vector<F16> vt, vn, vh, va;
  TokScratch(const CmddTokenGradArgs& a, int64_t per)
      : XR(a.R + 2 * a.N), nc(per), xk(a.L * XR), uk(a.L * per), gyk(a.L * per), yk(a.L * per), gxk(a.L * XR),
        vt(7 * a.T), vn(5 * a.N), vh((a.T + 1) * kMaxNG), va(a.T * kMaxNG) {}
};

// dst[0, n) (+)= src[0, n) for the short rows of the gathers and scatters below (tens of floats:
// libc's memcpy call per row cost a quarter of the backward).
template <bool ADD>
static inline __attribute__((always_inline)) void copy_row(float* __restrict dst, const float* __restrict src,
                                                           int64_t n) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) storeu<F16>(dst + j, ADD ? loadu<F16>(dst + j) + loadu<F16>(src + j) : loadu<F16>(src + j));
  for (; j < n; ++j) dst[j] = ADD ? dst[j] + src[j] : src[j];
}

// Gathers direction k of batch item b, channels [c0, c1), into time order.
static void token_gather(const CmddTokenGradArgs& a, int64_t b, int64_t k, int64_t c0, int64_t c1, const int64_t* pos,
                         TokScratch& sc) {
  const int64_t L = a.L, XR = sc.XR, nc = c1 - c0;
  const float* xb = a.x + b * L * a.x_stride + k * XR;
  const float* ub = a.u + b * L * a.u_stride + c0;
  const float* gyb = a.gy + b * L * a.d + c0;
  for (int64_t t = 0; t < L; ++t) {
    const int64_t p = pos[t];
    copy_row<false>(sc.xk.data() + t * XR, xb + p * a.x_stride, XR);
    copy_row<false>(sc.uk.data() + t * nc, ub + p * a.u_stride, nc);
    copy_row<false>(sc.gyk.data() + t * nc, gyb + p * a.d, nc);
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
      copy_row<true>(d, s, n);
    else
      copy_row<false>(d, s, n);
  }
}

// Runs fn(b, s, c0, c1, k, pos, scratch) for every task (batch item, slice of channels) and direction.
template <typename Fn>
static void for_token_tasks(const CmddTokenGradArgs& a, Fn fn) {
  const int64_t ntasks = a.batch * a.S;
  int nthreads = a.nthreads > 0 ? a.nthreads : 1;
  if (nthreads > ntasks) nthreads = (int)std::max<int64_t>(1, ntasks);
  const int64_t per = ((a.d + a.S - 1) / a.S + 15) / 16 * 16;  // whole 16-channel tiles per slice
  std::vector<int64_t> pos(a.K * a.L);
  for (int64_t k = 0; k < a.K; ++k) direction_positions(k, a.L, a.H, a.W, pos.data() + k * a.L);
#pragma omp parallel num_threads(nthreads)
  {
    TokScratch sc(a, per);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t b = task / a.S, s = task % a.S;
      const int64_t c0 = s * per, c1 = std::min<int64_t>(a.d, c0 + per);
      if (c0 >= c1) {  // an empty slice: its partial gx is zero
        for (int64_t t = 0; t < a.L; ++t)
          std::fill_n(a.gx + ((b * a.S + s) * a.L + t) * a.x_stride, a.x_stride, 0.0f);
        continue;
      }
      sc.nc = c1 - c0;
      for (int64_t k = 0; k < a.K; ++k) fn(b, s, c0, c1, k, pos.data() + k * a.L, sc);
    }
  }
}

// Sums over the 16 lanes of each of NG vectors p[0..NG) (NG <= 8) added into out[0..NG): a
// transpose-and-add tree (each stage halves the lane groups and pairs the vectors up), about 3
// vector operations per input instead of a full horizontal sum's 8.
template <int NG>
static inline __attribute__((always_inline)) void lane_sums_add(const F16* p, float* out) {
  constexpr I16 m1lo = {0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23};
  constexpr I16 m1hi = {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31};
  constexpr I16 m2lo = {0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27};
  constexpr I16 m2hi = {4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31};
  constexpr I16 m3lo = {0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29};
  constexpr I16 m3hi = {2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31};
  constexpr I16 m4 = {0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15};
  const F16 z = splat<F16>(0.0f);
  F16 q[4], r[2];
  for (int i = 0; i < 4; ++i) {  // stage 1: vector pairs (2i, 2i+1) -> halves summed, 8 lanes each
    const F16 a = 2 * i < NG ? p[2 * i] : z, b = 2 * i + 1 < NG ? p[2 * i + 1] : z;
    q[i] = __builtin_shuffle(a, b, m1lo) + __builtin_shuffle(a, b, m1hi);
  }
  for (int i = 0; i < 2; ++i)  // stage 2: 4-lane groups (vectors 4i .. 4i+3)
    r[i] = __builtin_shuffle(q[2 * i], q[2 * i + 1], m2lo) + __builtin_shuffle(q[2 * i], q[2 * i + 1], m2hi);
  F16 s = __builtin_shuffle(r[0], r[1], m3lo) + __builtin_shuffle(r[0], r[1], m3hi);  // 2-lane groups
  s = __builtin_shuffle(s, m4);  // lanes j and j+8: the two halves of vector j's sum
  typedef float F8v __attribute__((vector_size(32)));
  F8v lo, hi;
  std::memcpy(&lo, &s, 32);
  std::memcpy(&hi, reinterpret_cast<const char*>(&s) + 32, 32);
  const F8v sum = lo + hi;
  if (NG == 8) {
    F8v o;
    std::memcpy(&o, out, 32);
    o += sum;
    std::memcpy(out, &o, 32);
  } else {
    for (int j = 0; j < NG; ++j) out[j] += sum[j];
  }
}

// The backward of the token-major cross scan, vectorised over 16 CHANNELS (like the forward):
// per task (batch item, slice of channels) and direction, each tile of 16 channels runs its
// checkpoint chunks in reverse; within a chunk, states go in groups of NG (their recurrences are
// independent): the group's decays and states are recomputed from the checkpoint into T x NG
// vector buffers, then the reverse recurrence gh_t = C_t gy_t + a_{t+1} gh_{t+1} runs over them.
// The sums over the states (the dt and u gradients) are plain vector adds; the sums over
// channels (gB, gC, the dt_low gradient) go through lane_sums_add once per step and group.
// (The previous kernel, vectorised over the 16 states of one channel, needed two full horizontal
// sums per step and channel and ran at about half this speed; docs/cpu_scan.md.)
template <int NG>
static void token_bwd(const CmddTokenGradArgs& a) {
  const int64_t L = a.L, T = a.T, R = a.R, N = a.N;
  const int64_t nchunks = (L + T - 1) / T;
  for_token_tasks(a, [&](int64_t b, int64_t s, int64_t c0, int64_t c1, int64_t k, const int64_t* pos,
                         TokScratch& sc) {
    token_gather(a, b, k, c0, c1, pos, sc);
    const int64_t XR = sc.XR, nc = c1 - c0;
    std::fill(sc.gxk.begin(), sc.gxk.end(), 0.0f);
    float* guk = sc.yk.data();
    F16* dtb = sc.vt.data();   // per chunk step: dt, sigmoid(pre), u, gy, dt*u, s1, s2
    F16* sgb = dtb + T;
    F16* ub = sgb + T;
    F16* gyb = ub + T;
    F16* dub = gyb + T;
    F16* s1b = dub + T;
    F16* s2b = s1b + T;
    F16* hb = sc.vh.data();    // (T + 1) x NG: row 0 the chunk's initial state, row i + 1 after step i
    F16* ab = sc.va.data();    // T x NG decays
    F16* hk = sc.vn.data();    // N: the chunk's checkpointed state
    F16* gnx = hk + N;         // N: gh carried into the previous step (a_{t+1} gh_{t+1})
    F16* gAv = gnx + N;        // N: gA accumulators
    F16* Av = gAv + N;         // N: A per state
    F16* Alv = Av + N;         // N: A log2(e)
    for (int64_t cc0 = 0; cc0 < nc; cc0 += 16) {
      const int nv = (int)std::min<int64_t>(16, nc - cc0);
      const int64_t ch0 = k * a.d + c0 + cc0;  // first (direction, channel) row of the tile
      alignas(64) float tmp[16];
      auto lanes = [&](auto f) {  // vector of f(v) over the tile's valid lanes, 0 elsewhere
        for (int v = 0; v < 16; ++v) tmp[v] = v < nv ? f(v) : 0.0f;
        return loadu<F16>(tmp);
      };
      const F16 mask = lanes([](int) { return 1.0f; });
      const F16 biasv = lanes([&](int v) { return a.bias ? a.bias[ch0 + v] : 0.0f; });
      const F16 Dv = lanes([&](int v) { return a.D ? a.D[ch0 + v] : 0.0f; });
      F16 Wv[64], gWv[64];
      for (int64_t r = 0; r < R; ++r) {
        Wv[r] = lanes([&](int v) { return a.Wdt[(ch0 + v) * R + r]; });
        gWv[r] = splat<F16>(0.0f);
      }
      for (int64_t n = 0; n < N; ++n) {
        Av[n] = lanes([&](int v) { return a.A[(ch0 + v) * N + n]; });
        Alv[n] = Av[n] * kLog2e;
        gnx[n] = gAv[n] = splat<F16>(0.0f);
      }
      F16 gbv = splat<F16>(0.0f), gDv = splat<F16>(0.0f);
      auto load_tile = [&](const float* src) {  // the tile's channels of a (.., nc) time-ordered row
        if (nv == 16) return loadu<F16>(src);
        return lanes([&](int v) { return src[v]; });
      };
      for (int64_t kc = nchunks - 1; kc >= 0; --kc) {
        const int64_t t0 = kc * T, n = std::min<int64_t>(L, t0 + T) - t0;
        for (int64_t i = 0; i < n; ++i) {
          const float* xp = sc.xk.data() + (t0 + i) * XR;
          F16 pre = biasv;
          for (int64_t r = 0; r < R; ++r) pre += Wv[r] * xp[r];
          dtb[i] = vsoftplus<F16, I16>(pre) * mask;
          sgb[i] = vsigmoid<F16, I16>(pre);
          ub[i] = load_tile(sc.uk.data() + (t0 + i) * nc + cc0);
          gyb[i] = load_tile(sc.gyk.data() + (t0 + i) * nc + cc0);
          dub[i] = dtb[i] * ub[i];
          s1b[i] = s2b[i] = splat<F16>(0.0f);
        }
        for (int v = 0; v < nv; ++v) {  // checkpoint rows (one per channel) -> one vector per state
          const float* ck = a.ckpt + (((b * a.K + k) * a.d + c0 + cc0 + v) * nchunks + kc) * N;
          for (int64_t q = 0; q < N; ++q) reinterpret_cast<float*>(hk + q)[v] = ck[q];
        }
        for (int v = nv; v < 16; ++v)
          for (int64_t q = 0; q < N; ++q) reinterpret_cast<float*>(hk + q)[v] = 0.0f;
        for (int64_t n0 = 0; n0 < N; n0 += NG) {
          F16 h[NG], gn[NG], gA[NG];
          for (int j = 0; j < NG; ++j) hb[j] = h[j] = hk[n0 + j];
          for (int64_t i = 0; i < n; ++i) {  // recompute the group's decays and states
            const float* Bt = sc.xk.data() + (t0 + i) * XR + R + n0;
            const F16 dtv = dtb[i], duv = dub[i];
#pragma GCC unroll 8
            for (int j = 0; j < NG; ++j) {
              const F16 av = decay(dtv, Alv[n0 + j]);
              h[j] = av * h[j] + duv * Bt[j];
              ab[i * NG + j] = av;
              hb[(i + 1) * NG + j] = h[j];
            }
          }
          for (int j = 0; j < NG; ++j) {
            gn[j] = gnx[n0 + j];
            gA[j] = gAv[n0 + j];
          }
          for (int64_t i = n - 1; i >= 0; --i) {  // the reverse recurrence
            const float* xp = sc.xk.data() + (t0 + i) * XR;
            const float* Bt = xp + R + n0;
            const float* Ct = xp + R + N + n0;
            float* gxp = sc.gxk.data() + (t0 + i) * XR;
            const F16 gyv = gyb[i], dtv = dtb[i], duv = dub[i];
            F16 s1 = splat<F16>(0.0f), s2 = splat<F16>(0.0f), pB[NG], pC[NG];
#pragma GCC unroll 8
            for (int j = 0; j < NG; ++j) {
              const F16 av = ab[i * NG + j];
              const F16 gh = gyv * Ct[j] + gn[j];
              pC[j] = gyv * hb[(i + 1) * NG + j];
              const F16 ga = gh * hb[i * NG + j] * av;  // d/d(dt A)
              gA[j] += ga * dtv;
              s1 += ga * Av[n0 + j];
              s2 += gh * Bt[j];
              pB[j] = gh * duv;
              gn[j] = av * gh;
            }
            s1b[i] += s1;
            s2b[i] += s2;
            lane_sums_add<NG>(pB, gxp + R + n0);
            lane_sums_add<NG>(pC, gxp + R + N + n0);
          }
          for (int j = 0; j < NG; ++j) {
            gnx[n0 + j] = gn[j];
            gAv[n0 + j] = gA[j];
          }
        }
        for (int64_t i = 0; i < n; ++i) {  // per step: the u, dt, dt_low, W, bias, D gradients
          const int64_t t = t0 + i;
          const F16 gdt = s1b[i] + s2b[i] * ub[i];
          const F16 gu = s2b[i] * dtb[i] + Dv * gyb[i];
          float* gup = guk + t * nc + cc0;
          if (nv == 16) {
            storeu<F16>(gup, gu);
          } else {
            storeu<F16>(tmp, gu);
            std::memcpy(gup, tmp, nv * sizeof(float));
          }
          const F16 gpre = gdt * sgb[i];
          gbv += gpre;
          gDv += gyb[i] * ub[i];
          const float* xp = sc.xk.data() + t * XR;
          float* gxp = sc.gxk.data() + t * XR;
          for (int64_t r0 = 0; r0 < R; r0 += 8) {
            F16 p[8];
            const int nr = (int)std::min<int64_t>(8, R - r0);
            for (int j = 0; j < nr; ++j) {
              gWv[r0 + j] += gpre * xp[r0 + j];
              p[j] = gpre * Wv[r0 + j];
            }
            for (int j = nr; j < 8; ++j) p[j] = splat<F16>(0.0f);
            float acc[8] = {};
            lane_sums_add<8>(p, acc);
            for (int j = 0; j < nr; ++j) gxp[r0 + j] += acc[j];
          }
        }
      }
      const int64_t o = (b * a.K + k) * a.d + c0 + cc0;  // first output row of the tile
      alignas(64) float w[16];
      for (int64_t q = 0; q < N; ++q) {
        storeu<F16>(w, gAv[q]);
        for (int v = 0; v < nv; ++v) a.gA[(o + v) * N + q] = w[v];
      }
      for (int64_t r = 0; r < R; ++r) {
        storeu<F16>(w, gWv[r]);
        for (int v = 0; v < nv; ++v) a.gW[(o + v) * R + r] = w[v];
      }
      storeu<F16>(w, gbv);
      for (int v = 0; v < nv; ++v) a.gbias[o + v] = w[v];
      storeu<F16>(w, gDv);
      for (int v = 0; v < nv; ++v) a.gD[o + v] = w[v];
    }
    token_scatter(guk, nc, a.gu + b * L * a.d + c0, a.d, pos, L, k > 0);
    float* gxb = a.gx + (b * a.S + s) * L * a.x_stride;
    token_scatter(sc.gxk.data(), XR, gxb + k * XR, a.x_stride, pos, L, false);
    const int64_t pad0 = a.K * XR;  // columns past the K directions (x_proj rows padded for the GEMM)
    if (k == a.K - 1 && pad0 < a.x_stride)
      for (int64_t t = 0; t < L; ++t) std::fill(gxb + t * a.x_stride + pad0, gxb + (t + 1) * a.x_stride, 0.0f);
  });
}

static int check_tokens(const CmddTokenGradArgs* a) {
  if (!a || a->batch <= 0 || a->K <= 0 || a->d <= 0 || a->L <= 0 || a->T <= 0 || a->S <= 0) return 1;
  if (a->N <= 0 || a->N > 64 * 16 || a->R < 0 || a->R > 64) return 2;
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
  if (a->N % 8 == 0) token_bwd<8>(*a);
  else if (a->N % 4 == 0) token_bwd<4>(*a);
  else token_bwd<1>(*a);
  return 0;
}

int cmdd_scan_grad_abi_version() { return 3; }

}  // extern "C"
