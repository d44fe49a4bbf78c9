// Selective scan (Mamba S6) CPU inference kernel for cmddcli -- see docs/cpu_scan.md.
//
// Plain C++17 without torch headers (it compiles in a couple of seconds), driven from Python
// through ctypes (cmddcli/model/kernels/scan_cpu.py), float32 in and out. Parallel over
// (batch, group/direction, channel tile) with OpenMP; the process shares torch's libgomp, so the
// kernel runs on the same thread pool as torch.
//
// One kernel serves both entry points:
//   * 1-D scan: u, delta (b, G*rep, L); B, C (b, G, N, L); group g owns channels [g*rep, (g+1)*rep).
//   * cross scan (SS2D): u (b, rep, L) shared by the G = 4 directions, delta (b, 4, rep, L),
//     B, C (b, 4, N, L), all in row-major order of an H x W map; direction g visits the map in its
//     own order by index arithmetic (0 row-major, 1 column-major, 2 and 3 their reverses) and the
//     four outputs are summed into y (b, rep, L), which the caller zero-fills. Nothing is permuted
//     in memory.
//
// Vectorisation: V channels at once (one SIMD register holds one state of V channels, the N states
// stay in registers). Time runs in blocks; a block's inputs are first gathered into small buffers
// in time order with V x V in-register transposes (a block is a run of consecutive positions for
// the row-major orders, a strip of V whole columns for the column-major ones, so every load reads
// V consecutive floats), softplus is applied there, the recurrence runs over the buffers and the
// outputs go back the same way. exp() is an inlined polynomial written with GCC vector extensions,
// so everything vectorises for any target (AVX-512, AVX2, SSE, NEON) without libmvec.
// Compile WITHOUT -ffast-math: the rounding trick in vexp2 needs (a + m) - m to stay as written.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

namespace {

#if defined(__AVX512F__)
constexpr int kDefaultV = 16;
#elif defined(__AVX__) || defined(__ARM_NEON) || defined(__aarch64__)
constexpr int kDefaultV = 8;
#else
constexpr int kDefaultV = 4;
#endif
#ifndef CMDD_V
#define CMDD_V kDefaultV
#endif
#ifndef CMDD_T
#define CMDD_T 512
#endif
constexpr int64_t kRunT = CMDD_T;         // steps per block for row-major orders (multiple of 16)
constexpr int64_t kStripMaxT = 1 << 15;   // longest column strip (V * H) handled by the fast path

template <int V>
struct Vec {
  typedef float F __attribute__((vector_size(V * 4)));
  typedef int32_t I __attribute__((vector_size(V * 4)));
  typedef uint32_t U __attribute__((vector_size(V * 4)));
  typedef uint16_t H __attribute__((vector_size(V * 2)));  // bfloat16 bits
};

template <typename F>
static inline __attribute__((always_inline)) F splat(float s) {
  F z = {};
  return z + s;
}
template <typename F>
static inline __attribute__((always_inline)) F vmax(F a, F b) { return a > b ? a : b; }
template <typename F>
static inline __attribute__((always_inline)) F vmin(F a, F b) { return a < b ? a : b; }
template <typename F>
static inline __attribute__((always_inline)) F loadu(const float* p) {
  F r;
  std::memcpy(&r, p, sizeof(F));
  return r;
}
template <typename F>
static inline __attribute__((always_inline)) void storeu(float* p, F v) { std::memcpy(p, &v, sizeof(F)); }

constexpr float kLog2e = 1.44269504088896341f;

// 2^f on [-1/2, 1/2]: 1 + ln2 f + c2 f^2 + c3 f^3 + c4 f^4, c2..c4 fitted for the least maximum
// relative error with the constant and linear terms fixed at 2^f's own (relative error < 7e-6
// over the interval, < 1e-7 for |f| < 0.01). Fixing them keeps the error of a decay close to 1
// (small |dt A|, the long-memory states) of order f^2, so it does not build up over the ~1/|f|
// steps such a state remembers. One degree less than a plain minimax fit of the same accuracy
// near 0 (the scan is bound by these vector operations: 1 of ~13 per state update saved).
// Growing states (some A > 0, or dt < 0 without softplus: the CLAMP_HI instances) compound the
// relative error of every step, so they use the degree-5 minimax fit (relative error < 2e-7).
constexpr float kExp2C1 = 0.69314718f, kExp2C2 = 0.24023634f, kExp2C3 = 0.055802795f, kExp2C4 = 0.0096005782f;
constexpr float kExp2P5[6] = {1.32647e-3f, 9.671510e-3f, 5.550734e-2f, 2.4022242e-1f, 6.931472e-1f, 1.0f};

template <typename F, bool PRECISE>
static inline __attribute__((always_inline)) F exp2_poly(F f) {
  if (PRECISE) {
    F p = splat<F>(kExp2P5[0]);
    for (int i = 1; i < 6; ++i) p = p * f + kExp2P5[i];
    return p;
  }
  F p = splat<F>(kExp2C4);
  p = p * f + kExp2C3;
  p = p * f + kExp2C2;
  p = p * f + kExp2C1;
  return p * f + 1.0f;
}

// 2^z for z already clamped to [-125, 127] (so the result is a normal float, never inf):
// z = k + f with k = round(z), |f| <= 1/2; 2^f by the polynomial above; adding the magic
// constant 1.5 * 2^23 + 127 rounds z to an integer and leaves k + 127 in the low mantissa bits,
// so (bits << 23) is 2^k as a float.
template <typename F, typename I, bool PRECISE = false>
static inline __attribute__((always_inline)) F vexp2_clamped(F z) {
  const F magic = splat<F>(12583039.0f);  // 1.5 * 2^23 + 127
  F t = z + magic;
  F k = t - magic;
  F f = z - k;
  return exp2_poly<F, PRECISE>(f) * (F)((I)t << 23);
}

// Native versions where the instruction set has them: max/min as one instruction, and on AVX-512
// 2^z = scalef(2^f, round(z)) (vrndscaleps + vscalefps replace four instructions; scalef also
// underflows cleanly to 0, but the callers clamp anyway).
// Whether vexp2_clamped needs z >= -125 (the shift trick does; scalef underflows to 0 by itself).
template <typename F>
struct ExpNeedsLowClamp { static constexpr bool value = true; };

#if defined(__AVX512F__)
typedef Vec<16>::F F16;
template <>
struct ExpNeedsLowClamp<Vec<16>::F> { static constexpr bool value = false; };
typedef Vec<16>::I I16;
template <>
inline __attribute__((always_inline)) F16 vmax<F16>(F16 a, F16 b) { return (F16)_mm512_max_ps((__m512)a, (__m512)b); }
template <>
inline __attribute__((always_inline)) F16 vmin<F16>(F16 a, F16 b) { return (F16)_mm512_min_ps((__m512)a, (__m512)b); }
template <>
inline __attribute__((always_inline)) F16 vexp2_clamped<F16, I16, false>(F16 z) {
  const __m512 k = _mm512_roundscale_ps((__m512)z, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return (F16)_mm512_scalef_ps((__m512)exp2_poly<F16, false>(z - (F16)k), k);
}
template <>
inline __attribute__((always_inline)) F16 vexp2_clamped<F16, I16, true>(F16 z) {
  const __m512 k = _mm512_roundscale_ps((__m512)z, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  return (F16)_mm512_scalef_ps((__m512)exp2_poly<F16, true>(z - (F16)k), k);
}
#endif
#if defined(__AVX__)
typedef Vec<8>::F F8;
template <>
inline __attribute__((always_inline)) F8 vmax<F8>(F8 a, F8 b) { return (F8)_mm256_max_ps((__m256)a, (__m256)b); }
template <>
inline __attribute__((always_inline)) F8 vmin<F8>(F8 a, F8 b) { return (F8)_mm256_min_ps((__m256)a, (__m256)b); }
#endif

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), with log1p(e) = 2 atanh(e / (2 + e)) by its series
// (accurate for tiny e too). Matches torch's softplus (threshold 20) to float precision.
template <typename F, typename I>
static inline __attribute__((always_inline)) F vsoftplus(F x) {
  const F zero = splat<F>(0.0f);
  F ax = x < zero ? -x : x;
  F e = vexp2_clamped<F, I>(vmax(ax * -kLog2e, splat<F>(-125.0f)));  // exp(-|x|) in (0, 1]
  F s = e / (e + 2.0f);                                               // [0, 1/3]
  F s2 = s * s;
  F q = splat<F>(1.0f / 15.0f);
  q = q * s2 + (1.0f / 13.0f);
  q = q * s2 + (1.0f / 11.0f);
  q = q * s2 + (1.0f / 9.0f);
  q = q * s2 + (1.0f / 7.0f);
  q = q * s2 + (1.0f / 5.0f);
  q = q * s2 + (1.0f / 3.0f);
  q = q * s2 + 1.0f;
  F m = x > zero ? x : zero;
  return m + 2.0f * s * q;
}

// In-register transpose of a V x V block held as V row vectors: stage S swaps bit S of the row
// index with bit S of the column index (two two-source shuffles per row pair).
template <int V>
struct Transpose {
  typedef typename Vec<V>::F F;
  typedef typename Vec<V>::I I;
  template <int S, int... c>
  static inline __attribute__((always_inline)) void stage(F* r, std::integer_sequence<int, c...>) {
    constexpr I mlo = {((c & S) == 0 ? c : V + c - S)...};
    constexpr I mhi = {((c & S) == 0 ? c + S : V + c)...};
#pragma GCC unroll 16
    for (int i = 0; i < V; ++i) {
      if (i & S) continue;
      const F a = r[i], b = r[i + S];
      r[i] = __builtin_shuffle(a, b, mlo);
      r[i + S] = __builtin_shuffle(a, b, mhi);
    }
  }
  static inline __attribute__((always_inline)) void run(F* r) {
    constexpr auto seq = std::make_integer_sequence<int, V>{};
    stage<1>(r, seq);
    if (V > 2) stage<2>(r, seq);
    if (V > 4) stage<4>(r, seq);
    if (V > 8) stage<8>(r, seq);
  }
};

// Guards a short critical section (adding one block's outputs); yields while waiting so that a
// preempted holder on an oversubscribed machine is not spun against for a whole time slice.
struct SpinLock {
  std::atomic<int> v{0};
  void lock() {
    for (int spins = 0;; ) {
      int expected = 0;
      if (v.compare_exchange_weak(expected, 1, std::memory_order_acquire)) return;
      while (v.load(std::memory_order_relaxed)) {
        if (++spins > 1000) std::this_thread::yield();
      }
    }
  }
  void unlock() { v.store(0, std::memory_order_release); }
};

}  // namespace

extern "C" {

struct CmddScanArgs {
  const float* u;
  const float* delta;
  const float* A;     // (G*rep, N)
  const float* B;     // (batch, G, N, L)
  const float* C;     // (batch, G, N, L)
  const float* D;     // (G*rep) or null
  const float* bias;  // (G*rep) or null
  float* y;           // cross scan: zero-filled by the caller
  int64_t batch, G, rep, N, L;
  int64_t H, W;       // cross scan: map size (H * W == L)
  int32_t cross;      // 1: SS2D four-direction scan with u shared and y summed over directions
  int32_t softplus;   // apply softplus to delta + bias
  int32_t nthreads;
  int32_t clamp_hi;   // 0 only when every A <= 0 and softplus is on (then dt * A <= 0)
};

// Token-major cross scan (SS2D on a channels-last map; see cmdd_cross_scan_tokens_f32).
struct CmddTokenScanArgs {
  const void* u;      // (batch, L, u_stride): channels [0, d) of each position, float32 or bfloat16
  const void* x;      // (batch, L, x_stride): direction k's [dt_low (R), B (N), C (N)] at k * (R + 2N)
  const float* Wdt;   // (K, d, R): dt = Wdt[k] @ dt_low + bias
  const float* bias;  // (K * d)
  const float* A;     // (K * d, N)
  const float* D;     // (K * d) or null
  float* y;           // (batch, L, d), zero-filled by the caller; the K directions are added into it
  int64_t batch, K, d, N, R, L, H, W, u_stride, x_stride;
  int32_t u_bf16, x_bf16, nthreads, clamp_hi;
  // Training forward: when ckpt is set, the state before every ckpt_T steps of each direction and
  // channel goes to ckpt (batch, K, d, ceil(L / ckpt_T), N), as the training backward reads it.
  float* ckpt;
  int64_t ckpt_T;
};

}  // extern "C"

namespace {

// Per-thread scratch: block buffers in time order.
template <int V>
struct Scratch {
  typedef typename Vec<V>::F F;
  std::vector<F> dt, u, y, B, C;  // B, C: (T, N) floats, stored in whole vectors
  int64_t N = 0;
  void reserve(int64_t T, int64_t n) {
    N = n;
    dt.resize(T);
    u.resize(T);
    y.resize(T);
    B.resize((T * n + V - 1) / V + 1);
    C.resize((T * n + V - 1) / V + 1);
  }
  float* Bf() { return reinterpret_cast<float*>(B.data()); }
  float* Cf() { return reinterpret_cast<float*>(C.data()); }
};

// Step t of direction `mode` -> position in row-major memory (the 1-D scan uses mode 0).
static inline int64_t position(int64_t t, int mode, int64_t L, int64_t H, int64_t W) {
  if (mode >= 2) t = L - 1 - t;
  if (mode & 1) t = (t % H) * W + t / H;  // column-major: t = w*H + h -> h*W + w
  return t;
}

// What every tile shares, whichever layout it gathers from: the per-channel constants of V
// channels (A * log2 e per state, D, the dt bias, the valid-lane mask), the N states and the
// recurrence over a block of gathered steps.
template <int V, int NS, bool CLAMP_HI>
struct Recurrence {
  typedef typename Vec<V>::F F;
  typedef typename Vec<V>::I I;

  Scratch<V>& s;
  int64_t N;
  bool softplus;
  int nv;  // valid lanes (channels) in this tile
  F Dv, biasv, lanemask;
  std::vector<F> Al;  // A * log2(e), per state
  F hstat[NS > 0 ? NS : 1];
  std::vector<F> hdyn;
  F* h;

  // Channels [ch0, ch0 + nv) of A (rows of N), D and bias (either may be null).
  Recurrence(Scratch<V>& scratch, int64_t n, bool sp, int valid, const float* A, const float* D, const float* bias,
             int64_t ch0)
      : s(scratch), N(NS > 0 ? NS : n), softplus(sp), nv(valid) {
    alignas(64) float tmp[V];
    Al.resize(N);
    for (int64_t k = 0; k < N; ++k) {
      for (int v = 0; v < V; ++v) tmp[v] = v < nv ? A[(ch0 + v) * N + k] * kLog2e : 0.0f;
      std::memcpy(&Al[k], tmp, sizeof(F));
    }
    for (int v = 0; v < V; ++v) tmp[v] = (D && v < nv) ? D[ch0 + v] : 0.0f;
    std::memcpy(&Dv, tmp, sizeof(F));
    for (int v = 0; v < V; ++v) tmp[v] = (bias && v < nv) ? bias[ch0 + v] : 0.0f;
    std::memcpy(&biasv, tmp, sizeof(F));
    for (int v = 0; v < V; ++v) tmp[v] = v < nv ? 1.0f : 0.0f;
    std::memcpy(&lanemask, tmp, sizeof(F));
    if (NS == 0) hdyn.resize(N);
    h = NS > 0 ? hstat : hdyn.data();
    for (int64_t k = 0; k < N; ++k) h[k] = splat<F>(0.0f);
  }

  // ---- the recurrence over buffer steps [0, nt) ----
  inline void recur(int64_t nt) {
    const F zlo = splat<F>(-125.0f), zhi = splat<F>(127.0f);
    if (softplus) {
      for (int64_t i = 0; i < nt; ++i) s.dt[i] = vsoftplus<F, I>(s.dt[i] + biasv) * lanemask;
    } else {
      for (int64_t i = 0; i < nt; ++i) s.dt[i] = (s.dt[i] + biasv) * lanemask;
    }
    const float* Bf = s.Bf();
    const float* Cf = s.Cf();
    // States in a local array (registers): h, a member, could alias the buffers for the compiler.
    F hl[NS > 0 ? NS : 1];
    F* hh = NS > 0 ? hl : h;
    if (NS > 0)
      for (int n = 0; n < NS; ++n) hl[n] = h[n];
    F* __restrict ybuf = s.y.data();
    const F* __restrict dtbuf = s.dt.data();
    const F* __restrict ubuf = s.u.data();
    const F* __restrict Al = this->Al.data();
    for (int64_t i = 0; i < nt; ++i) {
      const F dt = dtbuf[i];
      const F uv = ubuf[i];
      const F dtu = dt * uv;
      const float* bi = Bf + i * N;
      const float* ci = Cf + i * N;
      F acc0 = Dv * uv, acc1 = splat<F>(0.0f);
      if (NS > 0) {
#pragma GCC unroll 64
        for (int n = 0; n < NS; n += 2) {
          F z0 = dt * Al[n];
          F z1 = dt * Al[n + 1];
          if (CLAMP_HI || ExpNeedsLowClamp<F>::value) {
            z0 = vmax(z0, zlo);
            z1 = vmax(z1, zlo);
          }
          if (CLAMP_HI) {
            z0 = vmin(z0, zhi);
            z1 = vmin(z1, zhi);
          }
          hh[n] = vexp2_clamped<F, I, CLAMP_HI>(z0) * hh[n] + dtu * bi[n];
          hh[n + 1] = vexp2_clamped<F, I, CLAMP_HI>(z1) * hh[n + 1] + dtu * bi[n + 1];
          acc0 = acc0 + hh[n] * ci[n];
          acc1 = acc1 + hh[n + 1] * ci[n + 1];
        }
      } else {
        for (int64_t n = 0; n < N; ++n) {
          F z = vmax(dt * Al[n], zlo);
          if (CLAMP_HI) z = vmin(z, zhi);
          hh[n] = vexp2_clamped<F, I, CLAMP_HI>(z) * hh[n] + dtu * bi[n];
          acc0 = acc0 + hh[n] * ci[n];
        }
      }
      ybuf[i] = acc0 + acc1;
    }
    if (NS > 0)
      for (int n = 0; n < NS; ++n) h[n] = hl[n];
  }

};

template <int V, int NS, bool CLAMP_HI>
struct Tile : Recurrence<V, NS, CLAMP_HI> {
  typedef Recurrence<V, NS, CLAMP_HI> Base;
  typedef typename Vec<V>::F F;
  typedef typename Vec<V>::I I;
  using Base::s;
  using Base::N;
  using Base::nv;
  using Base::recur;

  const CmddScanArgs& a;
  int64_t L, H, W;
  int mode;
  const float* urow[V];       // lanes >= nv point at a valid row; their dt is forced to 0
  const float* drow[V];
  float* yrow[V];
  const float* Bg;
  const float* Cg;
  SpinLock* ylock;  // cross scan: serialises the read-add-write of this tile's y rows

  Tile(const CmddScanArgs& args, Scratch<V>& scratch, int64_t b, int64_t g, int64_t c0, SpinLock* lock)
      : Base(scratch, args.N, args.softplus != 0, (int)std::min<int64_t>(V, args.rep - c0), args.A, args.D, args.bias,
             g * args.rep + c0),
        a(args), ylock(lock) {
    L = a.L;
    H = a.H;
    W = a.W;
    mode = (a.cross && g < 4) ? (int)g : 0;  // directions beyond 4 (unused) stay row-major
    if (H <= 1 || W <= 1) mode &= 2;  // a single row or column: column-major == row-major
    const int64_t rep = a.rep;
    const int64_t ch0 = g * rep + c0;
    const int64_t ub = a.cross ? b * rep * L : b * a.G * rep * L;
    const int64_t ug = a.cross ? 0 : g * rep * L;
    for (int v = 0; v < V; ++v) {
      const int vv = v < nv ? v : 0;
      urow[v] = a.u + ub + ug + (c0 + vv) * L;
      yrow[v] = a.y + ub + ug + (c0 + vv) * L;
      drow[v] = a.delta + b * a.G * rep * L + (ch0 + vv) * L;
    }
    Bg = a.B + (b * a.G + g) * N * L;
    Cg = a.C + (b * a.G + g) * N * L;
  }

  // ---- gathering: V consecutive positions starting at p of V rows go to dst[i0 + j * st] ----
  static inline __attribute__((always_inline)) void tr_rows(const float* const* rows, int64_t p, F* dst,
                                                            int64_t i0, int64_t st) {
    F r[V];
    for (int v = 0; v < V; ++v) r[v] = loadu<F>(rows[v] + p);
    Transpose<V>::run(r);
    for (int j = 0; j < V; ++j) dst[i0 + j * st] = r[j];
  }
  // Gather chunks: chunk c (c < nc) starts at position p0 + c * pstep and its V positions go to
  // buffer steps i0 + c * istep + j * st. One input array at a time (keeps the hardware
  // prefetcher on few streams and the rows, often 2^k floats apart, from fighting over cache sets).
  void gather_chunks(int64_t nc, int64_t p0, int64_t pstep, int64_t i0, int64_t istep, int64_t st) {
    for (int64_t c = 0; c < nc; ++c) tr_rows(drow, p0 + c * pstep, s.dt.data(), i0 + c * istep, st);
    for (int64_t c = 0; c < nc; ++c) tr_rows(urow, p0 + c * pstep, s.u.data(), i0 + c * istep, st);
    if (N % V == 0) {
      const int64_t nb = N / V;
      const float* rows[V];
      for (int64_t q = 0; q < nb; ++q) {
        for (int v = 0; v < V; ++v) rows[v] = Bg + (q * V + v) * L;
        for (int64_t c = 0; c < nc; ++c) tr_rows(rows, p0 + c * pstep, s.B.data() + q, (i0 + c * istep) * nb, st * nb);
        for (int v = 0; v < V; ++v) rows[v] = Cg + (q * V + v) * L;
        for (int64_t c = 0; c < nc; ++c) tr_rows(rows, p0 + c * pstep, s.C.data() + q, (i0 + c * istep) * nb, st * nb);
      }
    } else {
      float* Bf = s.Bf();
      float* Cf = s.Cf();
      for (int64_t c = 0; c < nc; ++c)
        for (int j = 0; j < V; ++j) {
          const int64_t i = i0 + c * istep + j * st, p = p0 + c * pstep + j;
          for (int64_t n = 0; n < N; ++n) {
            Bf[i * N + n] = Bg[n * L + p];
            Cf[i * N + n] = Cg[n * L + p];
          }
        }
    }
  }
  inline void gather_one(int64_t p, int64_t i) {
    float* dtf = reinterpret_cast<float*>(&s.dt[i]);
    float* uf = reinterpret_cast<float*>(&s.u[i]);
    for (int v = 0; v < V; ++v) {
      dtf[v] = drow[v][p];
      uf[v] = urow[v][p];
    }
    float* Bf = s.Bf();
    float* Cf = s.Cf();
    for (int64_t n = 0; n < N; ++n) {
      Bf[i * N + n] = Bg[n * L + p];
      Cf[i * N + n] = Cg[n * L + p];
    }
  }
  // ---- scattering y: buffer steps i0 + c * istep + j * st go to positions p0 + c * pstep + j ----
  void scatter_chunks(int64_t nc, int64_t p0, int64_t pstep, int64_t i0, int64_t istep, int64_t st, bool acc) {
    for (int64_t c = 0; c < nc; ++c) {
      const int64_t p = p0 + c * pstep, ib = i0 + c * istep;
      F r[V];
      for (int j = 0; j < V; ++j) r[j] = s.y[ib + j * st];
      Transpose<V>::run(r);
      for (int v = 0; v < nv; ++v) {
        if (acc) r[v] += loadu<F>(yrow[v] + p);
        storeu<F>(yrow[v] + p, r[v]);
      }
    }
  }
  inline void scatter_one(int64_t p, int64_t i, bool acc) {
    const float* yf = reinterpret_cast<const float*>(&s.y[i]);
    for (int v = 0; v < nv; ++v) yrow[v][p] = acc ? yrow[v][p] + yf[v] : yf[v];
  }

  // ---- blocks ----
  // Run of positions [p0, p0 + n) visited forwards (step i at p0 + i) or backwards (at p0+n-1-i).
  void run_block(int64_t p0, int64_t n, bool rev, bool acc) {
    const int64_t nfull = n / V;
    // Forwards chunk c covers p0 + cV..; backwards it covers p0 + n - (c+1)V.. (steps reversed).
    const int64_t pa = rev ? p0 + n - V : p0, ps = rev ? -V : V;
    const int64_t ia = rev ? V - 1 : 0, st = rev ? -1 : 1;
    gather_chunks(nfull, pa, ps, ia, V, st);
    for (int64_t i = nfull * V; i < n; ++i) gather_one(rev ? p0 + n - 1 - i : p0 + i, i);
    recur(n);
    if (ylock) ylock->lock();
    scatter_chunks(nfull, pa, ps, ia, V, st, acc);
    for (int64_t i = nfull * V; i < n; ++i) scatter_one(rev ? p0 + n - 1 - i : p0 + i, i, acc);
    if (ylock) ylock->unlock();
  }
  // Strip of V whole columns [w0, w0 + V) in column-major order, forwards or backwards:
  // row r of the strip is one chunk, its V columns are steps r + jH (backwards T-1-r - jH).
  void strip_block(int64_t w0, bool rev, bool acc) {
    const int64_t T = V * H;
    gather_chunks(H, w0, W, rev ? T - 1 : 0, rev ? -1 : 1, rev ? -H : H);
    recur(T);
    if (ylock) ylock->lock();
    scatter_chunks(H, w0, W, rev ? T - 1 : 0, rev ? -1 : 1, rev ? -H : H, acc);
    if (ylock) ylock->unlock();
  }
  // Any steps [t0, t0 + n) of the direction, element by element.
  void generic_block(int64_t t0, int64_t n, bool acc) {
    for (int64_t i = 0; i < n; ++i) gather_one(position(t0 + i, mode, L, H, W), i);
    recur(n);
    if (ylock) ylock->lock();
    for (int64_t i = 0; i < n; ++i) scatter_one(position(t0 + i, mode, L, H, W), i, acc);
    if (ylock) ylock->unlock();
  }

  void scan(bool acc) {
    if (!(mode & 1)) {  // row-major, forwards or backwards
      const bool rev = mode == 2;
      for (int64_t t0 = 0; t0 < L; t0 += kRunT) {
        const int64_t n = std::min<int64_t>(kRunT, L - t0);
        run_block(rev ? L - t0 - n : t0, n, rev, acc);
      }
      return;
    }
    // Column-major: strips of V columns; step t (forward order) lies in column t / H.
    const bool rev = mode == 3;
    const bool fast = V * H <= kStripMaxT;
    const int64_t nstrips = (W + V - 1) / V;
    for (int64_t qq = 0; qq < nstrips; ++qq) {
      const int64_t q = rev ? nstrips - 1 - qq : qq;
      const int64_t w0 = q * V, sw = std::min<int64_t>(V, W - w0);
      if (fast && sw == V) {
        strip_block(w0, rev, acc);
      } else {
        // Direction steps covering these columns, in generic blocks.
        const int64_t ta = rev ? L - (w0 + sw) * H : w0 * H;
        const int64_t tb = ta + sw * H;
        for (int64_t t0 = ta; t0 < tb; t0 += kRunT) generic_block(t0, std::min<int64_t>(kRunT, tb - t0), acc);
      }
    }
  }
};

// ---- token-major cross scan: u (b, L, d) and the projections (b, L, K(R+2N)) as a channels-last
// network produces them. A position's V channels are V consecutive values, so the gather needs no
// transpose; dt = Wdt @ dt_low + bias is formed here (the (b, K, d, L) dt tensor never exists).
template <typename T>
static inline __attribute__((always_inline)) float to_f32(T v) { return (float)v; }
template <>
inline __attribute__((always_inline)) float to_f32<uint16_t>(uint16_t v) {  // bfloat16 bits
  const uint32_t w = (uint32_t)v << 16;
  float f;
  std::memcpy(&f, &w, 4);
  return f;
}
template <int V, typename T>
static inline __attribute__((always_inline)) typename Vec<V>::F load_vec(const T* p) {
  typedef typename Vec<V>::F F;
  if constexpr (sizeof(T) == 4) {
    return loadu<F>(reinterpret_cast<const float*>(p));
  } else {  // V bfloat16 -> float32: widen to 32 bits and shift into the high half
    typedef typename Vec<V>::H H16;
    typedef typename Vec<V>::U U32;
    H16 hv;
    std::memcpy(&hv, p, sizeof(H16));
    const U32 w = __builtin_convertvector(hv, U32) << 16;
    return (F)w;
  }
}

// Walks a direction's steps from step t0 on and yields their row-major positions in an H x W map:
// mode 0 row-major, 1 column-major, 2 and 3 their reverses (a single row or column makes the
// column orders the row orders). Incremental: no division per step.
struct DirectionWalk {
  int mode;
  int64_t L, H, W, tt, hh, ww;
  DirectionWalk(int mode_, int64_t L_, int64_t H_, int64_t W_, int64_t t0) : mode(mode_), L(L_), H(H_), W(W_) {
    if (H <= 1 || W <= 1) mode &= 2;
    tt = mode >= 2 ? L - 1 - t0 : t0;  // the step's index in forward order
    hh = tt % H;
    ww = tt / H;
  }
  inline int64_t next() {
    if (!(mode & 1)) {
      const int64_t p = tt;
      tt += mode >= 2 ? -1 : 1;
      return p;
    }
    const int64_t p = hh * W + ww;
    if (mode == 1) {
      if (++hh == H) { hh = 0; ++ww; }
    } else if (--hh < 0) {
      hh = H - 1;
      --ww;
    }
    return p;
  }
};

template <int V, int NS, bool CLAMP_HI, typename TU, typename TX>
struct TokenTile : Recurrence<V, NS, CLAMP_HI> {
  typedef Recurrence<V, NS, CLAMP_HI> Base;
  typedef typename Vec<V>::F F;
  using Base::s;
  using Base::N;
  using Base::nv;
  using Base::recur;

  const CmddTokenScanArgs& a;
  int64_t L, H, W, R, c0, b_, k_;
  int mode;
  const TU* ub;   // u of this batch item, channel c0
  const TX* xb;   // projections of this batch item, direction k
  float* yb;      // y of this batch item, channel c0
  std::vector<F> wdt;  // (R) weight vectors of this tile's channels
  SpinLock* ylock;

  TokenTile(const CmddTokenScanArgs& args, Scratch<V>& scratch, int64_t b, int64_t k, int64_t c0_, SpinLock* lock)
      : Base(scratch, args.N, true, (int)std::min<int64_t>(V, args.d - c0_), args.A, args.D, args.bias, k * args.d + c0_),
        a(args), c0(c0_), b_(b), k_(k), ylock(lock) {
    L = a.L;
    H = a.H;
    W = a.W;
    R = a.R;
    mode = (int)(k & 3);
    if (H <= 1 || W <= 1) mode &= 2;
    ub = reinterpret_cast<const TU*>(a.u) + b * L * a.u_stride + c0;
    xb = reinterpret_cast<const TX*>(a.x) + b * L * a.x_stride + k * (R + 2 * a.N);
    yb = a.y + b * L * a.d + c0;
    alignas(64) float tmp[V];
    wdt.resize(R);
    for (int64_t r = 0; r < R; ++r) {
      for (int v = 0; v < V; ++v) tmp[v] = v < nv ? a.Wdt[(k * a.d + c0 + v) * R + r] : 0.0f;
      std::memcpy(&wdt[r], tmp, sizeof(F));
    }
  }

  // Buffer step i <- position p: dt before bias/softplus, u, B, C.
  inline __attribute__((always_inline)) void gather(int64_t p, int64_t i) {
    const TX* xp = xb + p * a.x_stride;
    F dt = splat<F>(0.0f);
    for (int64_t r = 0; r < R; ++r) dt += wdt[r] * to_f32(xp[r]);
    s.dt[i] = dt;
    const TU* up = ub + p * a.u_stride;
    if (nv == V) {
      s.u[i] = load_vec<V, TU>(up);
    } else {
      alignas(64) float tmp[V] = {};
      for (int v = 0; v < nv; ++v) tmp[v] = to_f32(up[v]);
      std::memcpy(&s.u[i], tmp, sizeof(F));
    }
    float* Bf = s.Bf() + i * N;
    float* Cf = s.Cf() + i * N;
    const TX* bp = xp + R;
    const TX* cp = bp + N;
    if (NS > 0 && NS % V == 0) {
      for (int q = 0; q < NS; q += V) {
        storeu<F>(Bf + q, load_vec<V, TX>(bp + q));
        storeu<F>(Cf + q, load_vec<V, TX>(cp + q));
      }
    } else {
      for (int64_t n = 0; n < N; ++n) {
        Bf[n] = to_f32(bp[n]);
        Cf[n] = to_f32(cp[n]);
      }
    }
  }
  inline __attribute__((always_inline)) void scatter(int64_t p, int64_t i) {
    float* yp = yb + p * a.d;
    if (nv == V) {
      storeu<F>(yp, loadu<F>(yp) + s.y[i]);
    } else {
      const float* yf = reinterpret_cast<const float*>(&s.y[i]);
      for (int v = 0; v < nv; ++v) yp[v] += yf[v];
    }
  }

  // The states of this tile's channels before step t0 into the training checkpoints.
  void save_state(int64_t t0) {
    const int64_t T = a.ckpt_T, nchunks = (L + T - 1) / T;
    for (int v = 0; v < nv; ++v) {
      float* dst = a.ckpt + (((b_ * a.K + k_) * a.d + c0 + v) * nchunks + t0 / T) * N;
      for (int64_t n = 0; n < N; ++n) dst[n] = reinterpret_cast<const float*>(&this->h[n])[v];
    }
  }

  void scan() {
    const int64_t blk = a.ckpt ? a.ckpt_T : kRunT;  // checkpoints: blocks end where chunks do
    for (int64_t t0 = 0; t0 < L; t0 += blk) {
      const int64_t n = std::min<int64_t>(blk, L - t0);
      if (a.ckpt) save_state(t0);
      DirectionWalk in(mode, L, H, W, t0);
      for (int64_t i = 0; i < n; ++i) gather(in.next(), i);
      recur(n);
      DirectionWalk out(mode, L, H, W, t0);  // the same walk again for the outputs
      if (ylock) ylock->lock();
      for (int64_t i = 0; i < n; ++i) scatter(out.next(), i);
      if (ylock) ylock->unlock();
    }
  }
};

template <int V, int NS, bool CLAMP_HI, typename TU, typename TX>
static void run_tokens(const CmddTokenScanArgs& a) {
  const int64_t ntiles = (a.d + V - 1) / V;
  const int64_t ntasks = a.batch * a.K * ntiles;
  int nthreads = a.nthreads > 0 ? a.nthreads : 1;
  if (nthreads > ntasks) nthreads = (int)std::max<int64_t>(1, ntasks);
  std::vector<SpinLock> locks(nthreads > 1 ? a.batch * ntiles : 0);
#pragma omp parallel num_threads(nthreads)
  {
    Scratch<V> scratch;
    scratch.reserve(kRunT, a.N);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t b = task / (ntiles * a.K);
      const int64_t r = task % (ntiles * a.K);
      const int64_t tile = r / a.K, k = r % a.K;
      SpinLock* lock = locks.empty() ? nullptr : &locks[b * ntiles + tile];
      TokenTile<V, NS, CLAMP_HI, TU, TX> t(a, scratch, b, k, tile * V, lock);
      t.scan();
    }
  }
}

template <int V, typename TU, typename TX>
static void dispatch_tokens_n(const CmddTokenScanArgs& a) {
  if (a.clamp_hi) run_tokens<V, 0, true, TU, TX>(a);
  else if (a.N == 16) run_tokens<V, 16, false, TU, TX>(a);
  else run_tokens<V, 0, false, TU, TX>(a);
}

template <int V>
static int dispatch_tokens(const CmddTokenScanArgs* a) {
  if (!a || a->N <= 0 || a->L <= 0 || a->d <= 0 || a->K <= 0 || a->batch <= 0 || a->R < 0) return 1;
  if (a->H <= 0 || a->W <= 0 || a->H * a->W != a->L) return 2;
  if (a->u_stride < a->d || a->x_stride < a->K * (a->R + 2 * a->N)) return 3;
  if (a->ckpt && (a->ckpt_T <= 0 || a->ckpt_T > kRunT)) return 4;
  if (a->u_bf16) {
    if (a->x_bf16) dispatch_tokens_n<V, uint16_t, uint16_t>(*a);
    else dispatch_tokens_n<V, uint16_t, float>(*a);
  } else {
    if (a->x_bf16) dispatch_tokens_n<V, float, uint16_t>(*a);
    else dispatch_tokens_n<V, float, float>(*a);
  }
  return 0;
}

template <int V, int NS, bool CLAMP_HI>
static void run(const CmddScanArgs& a) {
  // (A half-width tile for a remainder of <= V/2 channels, e.g. d = 72 = 4 x 16 + 8, was tried:
  // no faster on a CPU with full-width 512-bit units, see docs/cpu_scan.md.)
  const int64_t ntiles = (a.rep + V - 1) / V;
  const int64_t ntasks = a.batch * a.G * ntiles;
  int nthreads = a.nthreads > 0 ? a.nthreads : 1;
  if (nthreads > ntasks) nthreads = (int)std::max<int64_t>(1, ntasks);
  const bool mt = nthreads > 1;
  // Cross scan: the G directions of one channel tile add into the same y rows, possibly from
  // different threads, so each (batch, tile) has a lock held while a block's outputs are added.
  std::vector<SpinLock> locks(a.cross && mt ? a.batch * ntiles : 0);
  const bool strips = a.cross && a.H > 1 && a.W >= V && V * a.H <= kStripMaxT;
  const int64_t Tmax = std::max<int64_t>(kRunT, strips ? V * a.H : 0);
#pragma omp parallel num_threads(nthreads)
  {
    Scratch<V> scratch;
    scratch.reserve(Tmax, a.N);
    // Task order (batch, tile, group): the last (partial) tile comes last, helping balance.
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntasks; ++task) {
      const int64_t b = task / (ntiles * a.G);
      const int64_t r = task % (ntiles * a.G);
      const int64_t tile = r / a.G, g = r % a.G;
      SpinLock* lock = locks.empty() ? nullptr : &locks[b * ntiles + tile];
      Tile<V, NS, CLAMP_HI> t(a, scratch, b, g, tile * V, lock);
      t.scan(a.cross != 0);
    }
  }
}

template <int V>
static int dispatch(const CmddScanArgs* a) {
  if (!a || a->N <= 0 || a->L <= 0 || a->rep <= 0 || a->G <= 0 || a->batch <= 0) return 1;
  if (a->cross && (a->H <= 0 || a->W <= 0 || a->H * a->W != a->L)) return 2;
  // The upper clamp of dt * A is only needed when some A > 0 or dt can be negative (rare: the
  // generic-N code path serves it). N = 16 (Mamba's default) has its own unrolled instance.
  if (a->clamp_hi) run<V, 0, true>(*a);
  else if (a->N == 16) run<V, 16, false>(*a);
  else run<V, 0, false>(*a);
  return 0;
}

}  // namespace

extern "C" {

// Returns 0 on success, non-zero for invalid arguments (the Python side validates first).
int cmdd_selective_scan_f32(const CmddScanArgs* a) { return dispatch<CMDD_V>(a); }

// SS2D cross scan on token-major (channels-last) operands; returns 0 or an argument error code.
int cmdd_cross_scan_tokens_f32(const CmddTokenScanArgs* a) { return dispatch_tokens<CMDD_V>(a); }

int cmdd_scan_vector_width() { return CMDD_V; }

int cmdd_scan_abi_version() { return 4; }

#ifdef CMDD_SCAN_VARIANTS  // benchmarking only: force a vector width
int cmdd_selective_scan_f32_v8(const CmddScanArgs* a) { return dispatch<8>(a); }
int cmdd_selective_scan_f32_v16(const CmddScanArgs* a) { return dispatch<16>(a); }
#endif

}  // extern "C"
