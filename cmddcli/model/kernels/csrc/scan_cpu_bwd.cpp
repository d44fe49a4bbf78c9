// Selective scan (Mamba S6) CPU TRAINING kernels for cmddcli -- see docs/cpu_scan.md, "Backward".
//
// This file includes the inference kernel (scan_cpu.cpp) so that both share one copy of the
// vector helpers (splat, vmax/vmin, the clamped 2^z, loadu/storeu); the library built from it
// therefore also exports the inference entry points. Same flags, same build machinery
// (cmddcli/model/kernels/scan_cpu.py). float32 maths, plain C++17 + OpenMP, no torch headers.
//
// Two entry points (called through ctypes):
//   * cmdd_scan_fwd_ckpt_f32: forward that also saves the state h every T steps
//     (ckpt (batch, dim, nchunks, N): the state BEFORE chunk k, ckpt[.., 0, :] = 0).
//   * cmdd_scan_bwd_f32: backward. Per (batch, channel) the chunks run in reverse; each chunk's
//     states are recomputed from its checkpoint into a small T x N buffer (with the decays), then
//     the reverse recurrence gh_t = C_t gy_t + a_{t+1} gh_{t+1} produces every gradient.
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
        F16 s1 = splat<F16>(0.0f), s2 = splat<F16>(0.0f);
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

int cmdd_scan_grad_abi_version() { return 1; }

}  // extern "C"
