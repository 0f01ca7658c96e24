// Fused CPU kernels for rnndrop: one direction of an LSTM / GRU / simple RNN layer with
// time-locked recurrent dropout masks and Keras step masks, forward and hand-derived backward.
//
// The maths is rnndrop.cells / rnndrop.reference.run_direction (the definition this file must
// match); the Python side (rnndrop/_kernels/autograd.py) does the input projection of all
// timesteps as one matmul before calling in here and lets autograd take its gradient, so this
// file sees `gi = dropout(x) W_ih^T + b_ih` and owns only the recurrence.
//
// Buffers (T time, B batch, H hidden, G gates: LSTM 4 (i f g o), GRU 3 (r z n), RNN 1;
// Gm mask gates: 0 no recurrent mask, 1 shared, G per gate). "walk order" index s runs in the
// order steps are computed (s = 0 is t = T-1 when reverse); "time order" is indexed by t.
//   gi      (T, B, G*H)  time order, input projection incl. b_ih            [input]
//   h0, c0  (B, H)                                                          [input]
//   w_hh    (G*H, H), b_hh (G*H) or none, rmask (Gm, B, H) or none          [input]
//   steps   (T, B) bool or none: True = real step (Keras carry-over at False)
//   out     (T, B, H)    time order; without step mask it is also the state storage
//   S       (T, B, H)    walk order, state h after step s (only with a step mask)
//   C       (T, B, H)    walk order, LSTM cell state after step s (saved when training)
//   GA      (T, B, G*H)  time order, activated gates (LSTM i f g o; GRU r z n) (saved)
//   GHN     (T, B, H)    time order, GRU reset_after: W_hn (h*m) + b_hn (saved)
// Backward produces dGI (T, B, G*H) = d gi (time order) and, for the GRU with reset_after,
// dGH (T, B, 3H) = d of the recurrent pre-activations (they differ in the n block only).
//
// Parallelism: the rows of the batch are independent for the whole recurrence, so the batch is
// split between threads once and each thread runs the full time loop on its rows (no barrier
// per step). Per-step matmuls run on the thread's row block: float32 on AVX-512 through the
// packed-weight micro-kernel below, anything else through at::mm (inside a parallel region
// ATen/MKL run it single-threaded). The weight gradients are big matmuls after the loop, over
// all timesteps at once.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <type_traits>
#include <vector>

// The float32 micro-kernel exists for AVX-512 (6 x 64 tiles in zmm registers) and for AVX2 + FMA
// (6 x 16 tiles in ymm registers: AMD Zen 1-3, Intel client CPUs since Alder Lake, most laptops);
// the bf16 micro-kernel (autocast) needs AVX512_BF16 and is compiled for AVX-512 builds only.
#if defined(__AVX512F__)
#include <immintrin.h>
#define RNNDROP_MICROKERNEL 1
#define RNNDROP_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define RNNDROP_MICROKERNEL 1
#define RNNDROP_AVX512 0
#else
#define RNNDROP_MICROKERNEL 0
#define RNNDROP_AVX512 0
#endif

namespace rnndrop {

using at::Tensor;

enum Mode : int64_t { kLSTM = 0, kGRU = 1, kRNN = 2 };
enum Act : int64_t { kTanh = 0, kSigmoid = 1, kRelu = 2, kLinear = 3, kHardSigmoid = 4 };

// ---------------------------------------------------------------- counter-based draws

// C. Wellons' lowbias32 integer hash: the arithmetic of rnndrop.counter_rng (see keyed_draws below).
inline uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// DropConnect's mask of W_hh (G*H, H_out), drawn where it is used instead of read from a tensor: element
// (r, c) is rnndrop.counter_rng's draw (row r, sample 0, unit c) of the mask's keys, 0 with probability p,
// else 1 / (1 - p) — the numbers rnndrop.masks.KeyedMask.materialize() gives. Folding it into the
// packing of W_hh (forward and backward) and into dW costs no pass over G*H*H_out values of its own.
struct WeightMask {
  bool on = false;
  uint32_t k0 = 0, v = 0, thr = 0;  // v = lowbias32(0 ^ k1): the sample coordinate is always 0
  double scale = 0;
  int64_t units = 0;  // H_out, the row length of the draws' layout

  static WeightMask make(int64_t k0, int64_t k1, int64_t threshold, double scale, int64_t units) {
    WeightMask m;
    if (threshold < 0) return m;  // no mask
    m.on = true;
    m.k0 = static_cast<uint32_t>(k0);
    m.v = lowbias32(static_cast<uint32_t>(k1));
    m.thr = static_cast<uint32_t>(threshold);
    m.scale = scale;
    m.units = units;
    return m;
  }
  // out[c] = mask value of W_hh element (row, c0 + c), c < n.
  template <typename T>
  void row(int64_t r, int64_t c0, int64_t n, T* __restrict out) const {
    const uint32_t lo = static_cast<uint32_t>(r * units + c0);
    const T s = static_cast<T>(scale);
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) {
      const uint32_t x = lowbias32(lowbias32((lo + static_cast<uint32_t>(c)) ^ k0) ^ v);
      out[c] = (x >> 8) < thr ? T(0) : s;
    }
  }
};

// ---------------------------------------------------------------- element-wise helpers

// float32 tanh in a third of Sleef's time (it was a quarter of the LSTM recurrence's element-wise
// cost): an odd Taylor polynomial below |x| = 0.3125 (truncation < 1e-8 relative), else
// 1 - 2 / (exp(2|x|) + 1) with the sign restored. Within 2.4 ulp of the exact tanh over float32
// (Sleef's, which torch.tanh uses: 0.5 ulp); exact at 0, saturates to ±1, NaN stays NaN.
inline at::vec::Vectorized<float> fast_tanh(at::vec::Vectorized<float> x) {
  using V = at::vec::Vectorized<float>;
  const V a = x.abs();
  const V x2 = x * x;
  V p(-1382.0f / 155925.0f);
  p = at::vec::fmadd(p, x2, V(62.0f / 2835.0f));
  p = at::vec::fmadd(p, x2, V(-17.0f / 315.0f));
  p = at::vec::fmadd(p, x2, V(2.0f / 15.0f));
  p = at::vec::fmadd(p, x2, V(-1.0f / 3.0f));
  const V small = at::vec::fmadd(x * x2, p, x);
  const V big_abs = V(1.0f) - V(2.0f) / ((a + a).exp() + V(1.0f));
  const V big = V::blendv(big_abs, V(0.0f) - big_abs, x < V(0.0f));
  return V::blendv(big, small, a < V(0.3125f));
}

// x <- act(x) in place, with ATen's vectorised maths (the same Sleef functions torch uses; tanh for
// float32 is fast_tanh above).
template <typename T>
void activate(int64_t act, T* x, int64_t n) {
  using V = at::vec::Vectorized<T>;
  constexpr int64_t W = V::size();
  auto apply = [&](auto f) {
    int64_t j = 0;
    for (; j + W <= n; j += W) f(V::loadu(x + j)).store(x + j);
    if (j < n) f(V::loadu(x + j, n - j)).store(x + j, n - j);
  };
  switch (act) {
    case kTanh:
      if constexpr (std::is_same_v<T, float>) {
        apply([](V a) { return fast_tanh(a); });
      } else {
        apply([](V a) { return a.tanh(); });
      }
      break;
    case kSigmoid: {
      // torch's CPU sigmoid: 1 / (1 + exp(-x)).
      apply([](V a) { return (V(T(1)) + (V(T(0)) - a).exp()).reciprocal(); });
      break;
    }
    case kRelu:
      apply([](V a) { return at::vec::clamp_min(a, V(T(0))); });
      break;
    case kHardSigmoid:
      // Keras 3 (rnndrop.activations): clamp(x / 6 + 1/2, 0, 1), divided as the reference divides.
      apply([](V a) { return at::vec::clamp(a / V(T(6)) + V(T(0.5)), V(T(0)), V(T(1))); });
      break;
    default:
      break;  // linear
  }
}

// g <- g * act'(.) where y = act(.) is the activation's output (as torch's *_backward do).
template <typename T>
void act_grad(int64_t act, const T* __restrict y, T* __restrict g, int64_t n) {
  switch (act) {
    case kTanh:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) g[j] = g[j] * (T(1) - y[j] * y[j]);
      break;
    case kSigmoid:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) g[j] = g[j] * (T(1) - y[j]) * y[j];
      break;
    case kRelu:
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) g[j] = y[j] > T(0) ? g[j] : T(0);
      break;
    case kHardSigmoid:
      // 1/6 inside the linear part. From the output alone the two ends are ambiguous: an output of
      // exactly 0 or 1 counts as clamped (torch's clamp passes the gradient at a pre-activation of exactly
      // -3 or 3, a set of measure zero).
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) g[j] = (y[j] > T(0) && y[j] < T(1)) ? g[j] / T(6) : T(0);
      break;
    default:
      break;
  }
}

template <typename T>
inline void mul_rows(T* __restrict dst, const T* __restrict a, const T* __restrict b, int64_t n) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) dst[j] = a[j] * b[j];
}

// A (rows, cols) matrix view of raw memory with row stride ld (no copy, no ownership).
template <typename T>
Tensor view2d(const T* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// ---------------------------------------------------------------- the per-step matmul
//
// Every per-step product is C (rows, N) = A (rows, K; row stride lda) @ B (K, N) with B a block of
// W_hh (transposed in the forward). For float32 B is packed once per call into zero-padded panels
// of kPanel columns, panel-major ([panel][k][kPanel]), and a register-blocked micro-kernel computes
// 6 x kPanel tiles (AVX-512: 6 x 64, 24 zmm accumulators; AVX2: 6 x 16, 12 ymm accumulators, the
// tile of BLIS's Haswell kernel); B streams from L1/L2, A is broadcast. The batch block of one
// thread is small (M = 8..32 rows), where BLAS runs well below peak and pays a call overhead every
// step. Other dtypes / ISAs use at::mm on a view of W.

#if RNNDROP_AVX512
constexpr int64_t kPanel = 64;  // columns per packed panel (4 zmm)
#else
constexpr int64_t kPanel = 16;  // columns per packed panel (2 ymm)
#endif
constexpr int64_t kRows = 6;    // rows per micro-tile

template <typename T>
struct Operand {
  Tensor mat;        // (K, N) view of W_hh (for at::mm)
  Tensor packed;     // float32: (ceil(N/kPanel) * K * kPanel) panels, or undefined
  Tensor packed_lp;  // bf16 (low-precision mode): (ceil(N/64) * ceil(K/2) * 64 * 2) k-pair panels, or undefined
  int64_t K = 0, N = 0;
};

// Rows of the next micro-tile when `left` rows remain: 6 while that leaves at least 4, else the rest
// split evenly (8 -> 4 + 4 rather than 6 + 2: a 2-row tile loads B for 2 rows' worth of work).
constexpr int64_t tile_rows(int64_t left) {
  return left <= kRows ? left : left >= kRows + 4 ? kRows : (left + 1) / 2;
}

#if RNNDROP_AVX512
template <int MR>
inline void micro_tile(int64_t K, const float* __restrict a, int64_t lda, const float* __restrict bp,
                       float* __restrict c, int64_t ldc, int64_t ncols) {
  __m512 acc[MR][4];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* b = bp + k * kPanel;
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
    const __m512 b2 = _mm512_loadu_ps(b + 32), b3 = _mm512_loadu_ps(b + 48);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r * lda + k]);
      acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
      acc[r][2] = _mm512_fmadd_ps(av, b2, acc[r][2]);
      acc[r][3] = _mm512_fmadd_ps(av, b3, acc[r][3]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    float* cr = c + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const int64_t left = ncols - v * 16;
      if (left >= 16) {
        _mm512_storeu_ps(cr + v * 16, acc[r][v]);
      } else if (left > 0) {
        _mm512_mask_storeu_ps(cr + v * 16, static_cast<__mmask16>((1u << left) - 1u), acc[r][v]);
      }
    }
  }
}
#elif RNNDROP_MICROKERNEL
// AVX2 + FMA: 6 rows x 16 columns (2 ymm per row); 12 accumulators + 2 B vectors + 1 broadcast of
// the 16 ymm registers.
template <int MR>
inline void micro_tile(int64_t K, const float* __restrict a, int64_t lda, const float* __restrict bp,
                       float* __restrict c, int64_t ldc, int64_t ncols) {
  __m256 acc[MR][2];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    const float* b = bp + k * kPanel;
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m256 av = _mm256_broadcast_ss(a + r * lda + k);
      acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
    }
  }
  if (ncols >= 16) {
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      _mm256_storeu_ps(c + r * ldc, acc[r][0]);
      _mm256_storeu_ps(c + r * ldc + 8, acc[r][1]);
    }
    return;
  }
  // A partial last panel: store through a lane mask (lanes below `left` are written).
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(ncols)), lane);
  const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(ncols - 8)), lane);
  // Unrolled like every loop over acc: a rolled loop indexes acc, which makes GCC keep it in memory and
  // store every accumulator at every k (measured: the kernel at a third of its speed).
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    _mm256_maskstore_ps(c + r * ldc, m0, acc[r][0]);
    _mm256_maskstore_ps(c + r * ldc + 8, m1, acc[r][1]);
  }
}
#endif

#if RNNDROP_MICROKERNEL
inline void gemm_packed(float* c, const float* a, int64_t rows, int64_t lda, const Operand<float>& b,
                        int64_t ldc = -1) {
  const int64_t K = b.K, N = b.N, panels = (N + kPanel - 1) / kPanel;
  if (ldc < 0) ldc = N;
  const float* packed = b.packed.data_ptr<float>();
  // Panel-outer: one panel of B (K x 64) is reused by every row tile while it is in L2.
  for (int64_t p = 0; p < panels; ++p) {
    const float* bp = packed + p * K * kPanel;
    const int64_t ncols = std::min(kPanel, N - p * kPanel);
    for (int64_t r0 = 0, mr = 0; r0 < rows; r0 += mr) {
      mr = tile_rows(rows - r0);
      const float* ar = a + r0 * lda;
      float* cr = c + r0 * ldc + p * kPanel;
      switch (mr) {
        case 6: micro_tile<6>(K, ar, lda, bp, cr, ldc, ncols); break;
        case 5: micro_tile<5>(K, ar, lda, bp, cr, ldc, ncols); break;
        case 4: micro_tile<4>(K, ar, lda, bp, cr, ldc, ncols); break;
        case 3: micro_tile<3>(K, ar, lda, bp, cr, ldc, ncols); break;
        case 2: micro_tile<2>(K, ar, lda, bp, cr, ldc, ncols); break;
        default: micro_tile<1>(K, ar, lda, bp, cr, ldc, ncols); break;
      }
    }
  }
}

// ---- bf16 (autocast): the same tiles on AVX512_BF16's vdpbf16ps, float32 accumulation.
// B is packed as k-pair panels ([panel][k/2][64 columns][2]) so that one 32-bit broadcast of A's
// (a_k, a_k+1) pair and one zmm of B (16 columns x 2 k) feed one vdpbf16ps. A (the masked state,
// or the gate gradients in the backward) is rounded to bf16 (round to nearest even, as torch)
// into a per-thread buffer each step; the product comes back in float32, unrounded.
// Compiled for the AVX512_BF16 target only here; callers check cpu_has_bf16() at run time.
#endif  // RNNDROP_MICROKERNEL

#if RNNDROP_AVX512
#define RNNDROP_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

template <int MR>
RNNDROP_BF16_TARGET void micro_tile_bf16(int64_t KP, const uint16_t* __restrict a, int64_t lda,
                                         const uint16_t* __restrict bp, float* __restrict c, int64_t ldc,
                                         int64_t ncols) {
  __m512 acc[MR][4];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
  for (int64_t kp = 0; kp < KP; ++kp) {
    const uint16_t* b = bp + kp * 2 * kPanel;
    const __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 32);
    const __m512i b2 = _mm512_loadu_si512(b + 64), b3 = _mm512_loadu_si512(b + 96);
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * kp, sizeof(pair));
      const __m512i av = _mm512_set1_epi32(pair);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)av, (__m512bh)b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)av, (__m512bh)b1);
      acc[r][2] = _mm512_dpbf16_ps(acc[r][2], (__m512bh)av, (__m512bh)b2);
      acc[r][3] = _mm512_dpbf16_ps(acc[r][3], (__m512bh)av, (__m512bh)b3);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r) {
    float* cr = c + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < 4; ++v) {
      const int64_t left = ncols - v * 16;
      if (left >= 16) {
        _mm512_storeu_ps(cr + v * 16, acc[r][v]);
      } else if (left > 0) {
        _mm512_mask_storeu_ps(cr + v * 16, static_cast<__mmask16>((1u << left) - 1u), acc[r][v]);
      }
    }
  }
}

// dst[0..n) <- bf16(src[0..n)), then zeros up to `padded` (an even row length).
RNNDROP_BF16_TARGET void round_row_bf16(uint16_t* dst, const float* src, int64_t n, int64_t padded) {
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_loadu_ps(src + j));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + j), (__m256i)v);
  }
  if (j < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - j)) - 1u);
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + j));
    _mm256_mask_storeu_epi16(dst + j, m, (__m256i)v);
  }
  for (int64_t k = n; k < padded; ++k) dst[k] = 0;
}

RNNDROP_BF16_TARGET void gemm_packed_bf16(float* c, const float* a, int64_t rows, int64_t lda,
                                          const Operand<float>& b) {
  const int64_t K = b.K, N = b.N, KP = (K + 1) / 2, panels = (N + kPanel - 1) / kPanel;
  const int64_t la = 2 * KP;
  // One buffer per worker thread, reused across steps and calls.
  static thread_local std::vector<uint16_t> abuf;
  if (static_cast<int64_t>(abuf.size()) < rows * la) abuf.resize(rows * la);
  uint16_t* al = abuf.data();
  for (int64_t r = 0; r < rows; ++r) round_row_bf16(al + r * la, a + r * lda, K, la);
  const uint16_t* packed = reinterpret_cast<const uint16_t*>(b.packed_lp.data_ptr<at::BFloat16>());
  for (int64_t p = 0; p < panels; ++p) {
    const uint16_t* bp = packed + p * KP * 2 * kPanel;
    const int64_t ncols = std::min(kPanel, N - p * kPanel);
    for (int64_t r0 = 0, mr = 0; r0 < rows; r0 += mr) {
      mr = tile_rows(rows - r0);
      const uint16_t* ar = al + r0 * la;
      float* cr = c + r0 * N + p * kPanel;
      switch (mr) {
        case 6: micro_tile_bf16<6>(KP, ar, la, bp, cr, N, ncols); break;
        case 5: micro_tile_bf16<5>(KP, ar, la, bp, cr, N, ncols); break;
        case 4: micro_tile_bf16<4>(KP, ar, la, bp, cr, N, ncols); break;
        case 3: micro_tile_bf16<3>(KP, ar, la, bp, cr, N, ncols); break;
        case 2: micro_tile_bf16<2>(KP, ar, la, bp, cr, N, ncols); break;
        default: micro_tile_bf16<1>(KP, ar, la, bp, cr, N, ncols); break;
      }
    }
  }
}

// gi rows in bf16 (the autocast input projection) widened to float32 (exact: bf16 is a prefix of float32).
inline void widen_row_bf16(float* dst, const at::BFloat16* src, int64_t n) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + j)));
    _mm512_storeu_ps(dst + j, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
  for (; j < n; ++j) dst[j] = static_cast<float>(src[j]);
}
#endif

// Whether this CPU runs the bf16 micro-kernel (AVX512_BF16: AMD Zen 4, Intel Cooper Lake / Sapphire Rapids+).
bool cpu_has_bf16() {
#if RNNDROP_AVX512
  static const bool yes = __builtin_cpu_supports("avx512bf16");
  return yes;
#else
  return false;
#endif
}

// ---------------------------------------------------------------- packing
//
// The packed panels of W_hh (and of W_ih for the input projection) are made afresh by every call,
// from the weight as it is at that moment: nothing is kept across calls. A cache keyed on the
// tensor (identity, version counter, data pointer) was here until 2026-12: writes through `w.data`
// (manual SGD, EMA, nn.init on `.data`) move none of those, so it computed with stale weights, and
// its weak references blocked torch.utils.swap_tensors. Packing reads G*H*H values once per call
// against the recurrence's T*B*G*H*H multiply-adds: its measured cost is in docs/benchmarks.md.

// Pack mat (K, N), any strides, into zero-padded panel-major form ([panel][k][kPanel]). mat is a block
// of W_hh starting at row `row0`: its transpose (`trans`, the forward's operand: mat[k][n] = W[row0 + n][k])
// or itself (the backward's: mat[k][n] = W[row0 + k][n]). With `wm` on, every element is multiplied by
// DropConnect's mask as it is packed. The rows of W are split between threads.
inline Tensor pack_panels(const Tensor& mat, bool trans = true, int64_t row0 = 0, const WeightMask& wm = {}) {
  const int64_t K = mat.size(0), N = mat.size(1), panels = (N + kPanel - 1) / kPanel;
  // Zero padding exists only in a partial last panel.
  Tensor out = N % kPanel ? at::zeros({panels * K * kPanel}, mat.options())
                          : at::empty({panels * K * kPanel}, mat.options());
  float* o = out.data_ptr<float>();
  const float* m = mat.data_ptr<float>();
  const int64_t sk = mat.stride(0), sn = mat.stride(1);
  if (trans) {
    // W row n = column n of mat (length K), scattered to o[(p*K + k)*kPanel + n % kPanel]; rows split between
    // threads, each row's mask drawn once.
    at::parallel_for(0, N, std::max<int64_t>(1, 4096 / std::max<int64_t>(K, 1)), [&](int64_t r0, int64_t r1) {
      std::vector<float> mrow(wm.on ? K : 0);
      for (int64_t r = r0; r < r1; ++r) {
        if (wm.on) wm.row(row0 + r, 0, K, mrow.data());
        const int64_t p = r / kPanel, nn = r - p * kPanel;
        const float* src = m + r * sn;
        float* dst = o + p * K * kPanel + nn;
        if (wm.on) {
          for (int64_t k = 0; k < K; ++k) dst[k * kPanel] = src[k * sk] * mrow[k];
        } else {
          for (int64_t k = 0; k < K; ++k) dst[k * kPanel] = src[k * sk];
        }
      }
    });
  } else {
    // W row k = row k of mat: panel after panel, so that the packed panels are written in order (row by
    // row, a row's chunks land one panel apart); panels split between threads.
    at::parallel_for(0, panels, std::max<int64_t>(1, 4096 / std::max<int64_t>(K * kPanel, 1)),
                     [&](int64_t p0, int64_t p1) {
      float mbuf[kPanel];
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n0 = p * kPanel, w = std::min(N, n0 + kPanel) - n0;
        for (int64_t k = 0; k < K; ++k) {
          const float* src = m + k * sk + n0 * sn;
          float* dst = o + (p * K + k) * kPanel;
          if (wm.on) {
            wm.row(row0 + k, n0, w, mbuf);
            for (int64_t j = 0; j < w; ++j) dst[j] = src[j * sn] * mbuf[j];
          } else {
            for (int64_t j = 0; j < w; ++j) dst[j] = src[j * sn];
          }
        }
      }
    });
  }
  return out;
}

// mat (any strides) times DropConnect's mask, as a new contiguous matrix: the operand of at::mm where
// nothing is packed (float64, CPUs without the micro-kernel). Orientation and rows as pack_panels.
inline Tensor masked_copy(const Tensor& mat, bool trans, int64_t row0, const WeightMask& wm) {
  Tensor w = trans ? mat.t() : mat;  // W's layout: rows of W_hh
  Tensor out = at::empty(w.sizes(), w.options());
  AT_DISPATCH_FLOATING_TYPES(w.scalar_type(), "rnndrop_masked_copy", [&] {
    const int64_t rows = w.size(0), cols = w.size(1);
    at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        scalar_t* dst = out.data_ptr<scalar_t>() + r * cols;
        wm.row(row0 + r, 0, cols, dst);
        const scalar_t* src = w.data_ptr<scalar_t>() + r * w.stride(0);
        for (int64_t c = 0; c < cols; ++c) dst[c] *= src[c * w.stride(1)];
      }
    });
  });
  return trans ? out.t() : out;
}

// dW (G*H, H_out) contiguous <- dW * mask: the gradient of the raw W_hh from that of the dropped one.
inline void mask_weight_grad(Tensor& dW, const WeightMask& wm) {
  AT_DISPATCH_FLOATING_TYPES(dW.scalar_type(), "rnndrop_mask_weight_grad", [&] {
    const int64_t rows = dW.size(0), cols = dW.size(1);
    scalar_t* d = dW.data_ptr<scalar_t>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(cols, 1)), [&](int64_t r0, int64_t r1) {
      std::vector<scalar_t> mrow(cols);
      for (int64_t r = r0; r < r1; ++r) {
        wm.row(r, 0, cols, mrow.data());
        scalar_t* dr = d + r * cols;
        for (int64_t c = 0; c < cols; ++c) dr[c] *= mrow[c];  // (no pragma: inside a macro's argument)
      }
    });
  });
}

#if RNNDROP_AVX512
inline Tensor pack_panels_bf16(const Tensor& mat_in, bool trans = true, int64_t row0 = 0, const WeightMask& wm = {}) {
  const Tensor mat = wm.on ? masked_copy(mat_in, trans, row0, wm) : mat_in;
  const int64_t K = mat.size(0), N = mat.size(1), KP = (K + 1) / 2, panels = (N + kPanel - 1) / kPanel;
  Tensor out = at::zeros({panels * KP * kPanel * 2}, mat.options().dtype(at::kBFloat16));
  at::BFloat16* o = out.data_ptr<at::BFloat16>();
  const float* m = mat.data_ptr<float>();
  const int64_t sk = mat.stride(0), sn = mat.stride(1);
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t k = 0; k < K; ++k)
      for (int64_t n = p * kPanel; n < std::min(N, (p + 1) * kPanel); ++n)
        o[((p * KP + k / 2) * kPanel + (n - p * kPanel)) * 2 + (k & 1)] = at::BFloat16(m[k * sk + n * sn]);
  return out;
}
#endif

// The operand B = mat (K, N) of the per-step products: packed for the micro-kernel (float32), in
// bf16 k-pair panels under autocast (lowp), else a view for at::mm.
// `trans`, `row0`, `wm`: which block of W_hh mat is and DropConnect's mask (see pack_panels).
template <typename T>
Operand<T> make_operand(const Tensor& mat, bool lowp, bool trans = true, int64_t row0 = 0, const WeightMask& wm = {}) {
  Operand<T> op;
  op.K = mat.size(0);
  op.N = mat.size(1);
#if RNNDROP_MICROKERNEL
  if constexpr (std::is_same_v<T, float>) {
#if RNNDROP_AVX512
    if (lowp) {
      op.packed_lp = pack_panels_bf16(mat, trans, row0, wm);
      return op;
    }
#endif
    op.packed = pack_panels(mat, trans, row0, wm);
    return op;
  }
#endif
  op.mat = wm.on ? masked_copy(mat, trans, row0, wm) : mat;
  return op;
}

// out (rows, N) contiguous <- a (rows, K; row stride lda) @ B.
template <typename T>
void mm_into(T* out, const T* a, int64_t rows, int64_t lda, const Operand<T>& b) {
  if (rows == 0) return;
#if RNNDROP_MICROKERNEL
  if constexpr (std::is_same_v<T, float>) {
#if RNNDROP_AVX512
    if (b.packed_lp.defined()) {
      gemm_packed_bf16(out, a, rows, lda, b);
      return;
    }
#endif
    if (b.packed.defined()) {
      gemm_packed(out, a, rows, lda, b);
      return;
    }
  }
#endif
  Tensor o = view2d(out, rows, b.N, b.N);
  at::mm_out(o, view2d(a, rows, b.K, lda), b.mat);
}

// ---------------------------------------------------------------- problem description

// Zoneout weights w (keep-previous) of one direction: (Tz, Bz, Hz) with each size either full or 1
// (training: (T, B|1, H) Bernoulli draws; eval: (1, 1, 1) holding z). Broadcast by zero strides.
template <typename T>
struct ZoneMask {
  const T* p = nullptr;
  int64_t st = 0, sb = 0, sj = 0;
  bool on() const { return p != nullptr; }
  const T* row(int64_t t, int64_t b) const { return p + t * st + b * sb; }
};

template <typename T>
struct Problem {
  int64_t mode, act, ract;
  bool reset_after, reverse, zero_fill, save;
  int64_t Tn, B, H, G, GH, Gm;
  bool lowp = false;  // bf16 autocast: per-step products on bf16 operands (float32 accumulation)
  const T* gi;
  const at::BFloat16* gi_lp = nullptr;  // gi in bf16 (lowp), else nullptr and gi is used
  const T* h0;
  const T* c0;
  const T* bias;     // b_hh or nullptr
  const T* bias_ih;  // b_ih or nullptr (not yet in gi)
  const T* mask;  // (Gm, B, H) or nullptr
  const T* cand = nullptr;  // (B, H) candidate (Semeniuta) mask or nullptr
  ZoneMask<T> zh, zc;       // zoneout weights of h and (LSTM) c; off when p is null
  const bool* steps;
  WeightMask wm;  // DropConnect on W_hh, applied where W_hh is packed (and to dW)
  Tensor w;    // (GH, H)
  Tensor wT;   // (H, GH) view
  // Matmul operands by (transposed, first gate, gate count): prepared before the parallel region.
  std::map<int64_t, Operand<T>> ops;
  T* out;
  T* S;
  T* C;
  T* GA;
  T* GHN;
  T* CR = nullptr;  // (T, B, H) walk order, LSTM raw new c before zoneout (saved with zoneout of c)
  const T* cand_row(int64_t b) const { return cand ? cand + b * H : nullptr; }

  int64_t tix(int64_t s) const { return reverse ? Tn - 1 - s : s; }
  // State h after walk step s (row b).
  T* state(int64_t s, int64_t b) const { return steps ? S + (s * B + b) * H : out + (tix(s) * B + b) * H; }
  // State h before walk step s (row b): h0 or the state after step s-1.
  const T* hprev(int64_t s, int64_t b) const { return s == 0 ? h0 + b * H : state(s - 1, b); }
  const T* m(int64_t g, int64_t b) const { return mask + (g * B + b) * H; }
  // Row (t, b) of gi in T; a bf16 gi is widened into `scratch` (GH values).
  const T* gi_row(int64_t t, int64_t b, T* scratch) const {
#if RNNDROP_AVX512
    if constexpr (std::is_same_v<T, float>) {
      if (gi_lp) {
        widen_row_bf16(scratch, gi_lp + (t * B + b) * GH, GH);
        return scratch;
      }
    }
#endif
    return gi + (t * B + b) * GH;
  }
  bool keep(int64_t t, int64_t b) const { return steps == nullptr || steps[t * B + b]; }
  const T* bhh(int64_t k) const { return bias ? bias + k * H : nullptr; }
  const T* bih(int64_t k) const { return bias_ih ? bias_ih + k * H : nullptr; }
  static int64_t op_key(bool trans, int64_t g0, int64_t ng) { return (trans ? 256 : 0) + g0 * 16 + ng; }
  const Operand<T>& op(bool trans, int64_t g0, int64_t ng) const { return ops.at(op_key(trans, g0, ng)); }
  // Prepare the operands of the forward (trans: W_g^T) or backward (W_g) recurrent matmuls.
  void prepare(bool trans) {
    const bool gru_rb = mode == kGRU && !reset_after;
    const int64_t ng = gru_rb ? 2 : G;
    auto add = [&](int64_t g0, int64_t n) {
      Tensor blk = (g0 == 0 && n == G) ? w : w.narrow(0, g0 * H, n * H);
      const int64_t key = op_key(trans, g0, n);
      ops.emplace(key, make_operand<T>(trans ? blk.t() : blk, lowp, trans, g0 * H, wm));
    };
    if (Gm == G && G > 1) {
      for (int64_t g = 0; g < ng; ++g) add(g, 1);
    } else {
      add(0, ng);
    }
    if (gru_rb) add(2, 1);
  }
};

// gh <- (hprev * m_g) W_g^T for gates [g0, g0 + ng) of rows [b0, b0 + nb) at walk step s.
// Layout of gh (gate k, row b at gh + k*gs + b*rs): one (nb, ng*H) matrix unless the mask is per
// gate, then ng stacked (nb, H) matrices. hm receives the masked inputs (max(Gm,1) * nb * H).
template <typename T>
void recurrent_forward(const Problem<T>& P, int64_t s, int64_t b0, int64_t nb, int64_t g0, int64_t ng,
                       T* gh, T* hm) {
  const int64_t H = P.H;
  const T* hp = P.hprev(s, b0);  // (nb, H) rows, row stride H
  if (P.Gm == 0) {
    mm_into(gh, hp, nb, H, P.op(true, g0, ng));
    return;
  }
  if (P.Gm == 1) {
    for (int64_t b = 0; b < nb; ++b) mul_rows(hm + b * H, hp + b * H, P.m(0, b0 + b), H);
    mm_into(gh, hm, nb, H, P.op(true, g0, ng));
    return;
  }
  for (int64_t g = g0; g < g0 + ng; ++g) {
    T* hmg = hm + (g - g0) * nb * H;
    for (int64_t b = 0; b < nb; ++b) mul_rows(hmg + b * H, hp + b * H, P.m(g, b0 + b), H);
    mm_into(gh + (g - g0) * nb * H, hmg, nb, H, P.op(true, g, 1));
  }
}

// dhm <- d(pre-activations of gates [g0, g0+ng)) W_g for rows [b0, b0+nb) at time t; src is a
// (T, B, G*H) time-order buffer of pre-activation gradients. Layout of dhm: one (nb, H) matrix
// unless the mask is per gate, then ng stacked (nb, H) matrices (one per gate, to be masked).
template <typename T>
void recurrent_backward(const Problem<T>& P, int64_t t, int64_t b0, int64_t nb, int64_t g0, int64_t ng,
                        const T* src, T* dhm) {
  const int64_t H = P.H, GH = P.GH;
  const T* a = src + (t * P.B + b0) * GH;
  if (P.Gm <= 1) {
    mm_into(dhm, a + g0 * H, nb, GH, P.op(false, g0, ng));
    return;
  }
  for (int64_t g = g0; g < g0 + ng; ++g) mm_into(dhm + (g - g0) * nb * H, a + g * H, nb, GH, P.op(false, g, 1));
}

// dst <- base + sum_g dhm_g * m_g for row b (base may be null): the gradient reaching h_{t-1}
// through the recurrent matmuls of gates [g0, g0+ng).
template <typename T>
void rec_grad_row(const Problem<T>& P, const T* dhm, int64_t nb, int64_t b, int64_t bg, int64_t g0, int64_t ng,
                  const T* base, T* dst) {
  const int64_t H = P.H;
  if (P.Gm <= 1) {
    const T* d = dhm + b * H;
    const T* m = P.Gm == 1 ? P.m(0, bg) : nullptr;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      T v = m ? d[j] * m[j] : d[j];
      dst[j] = base ? base[j] + v : v;
    }
    return;
  }
  for (int64_t g = g0; g < g0 + ng; ++g) {
    const T* d = dhm + (g - g0) * nb * H + b * H;
    const T* m = P.m(g, bg);
    const T* acc = g == g0 ? base : dst;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dst[j] = acc ? acc[j] + d[j] * m[j] : d[j] * m[j];
  }
}

// dst <- (gi + b_ih) + (gh + b_hh) for one gate row: the association of rnndrop.cells, whose
// input projection adds b_ih to the matmul and whose step adds b_hh to the recurrent product.
// (b_ih is added here rather than by the projection, saving a pass over the (T, B, G*H) buffer.)
template <typename T>
inline void preact(T* __restrict dst, const T* __restrict gi, const T* __restrict gh, const T* __restrict bih,
                   const T* __restrict bias, int64_t n) {
  if (bias) {  // both biases or neither (the layer's `bias` flag)
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dst[j] = (gi[j] + bih[j]) + (gh[j] + bias[j]);
  } else {
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) dst[j] = gi[j] + gh[j];
  }
}

// torch.lerp(new, old, w) as ATen's CPU kernel computes it: exact at w = 0 and w = 1.
template <typename T>
inline T lerp_(T a, T b, T w) {
  return w < T(0.5) ? a + w * (b - a) : b - (b - a) * (T(1) - w);
}

// dst <- lerp(raw, prev, w_t): zoneout of one row (dst may not alias raw or prev).
template <typename T>
inline void zoneout_row(T* __restrict dst, const T* __restrict raw, const T* __restrict prev, const ZoneMask<T>& z,
                        int64_t t, int64_t b, int64_t H) {
  const T* w = z.row(t, b);
  if (z.sj == 0) {
    const T wv = w[0];
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dst[j] = lerp_(raw[j], prev[j], wv);
  } else {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) dst[j] = lerp_(raw[j], prev[j], w[j]);
  }
}

// Backward of zoneout_row for one row: g <- (1 - w) g (into the raw state), carry <- w g (into the previous).
template <typename T>
inline void zoneout_grad_row(T* __restrict g, T* __restrict carry, const ZoneMask<T>& z, int64_t t, int64_t b,
                             int64_t H) {
  const T* w = z.row(t, b);
#pragma omp simd
  for (int64_t j = 0; j < H; ++j) {
    const T wv = z.sj == 0 ? w[0] : w[j];
    carry[j] = g[j] * wv;
    g[j] = g[j] * (T(1) - wv);
  }
}

// GRU's new state h = (1 - z) * (d * n) + z * h_prev (d: the candidate mask or none).
template <typename T>
inline void gru_update(T* __restrict hn, const T* __restrict z, const T* __restrict n, const T* __restrict hp,
                       const T* __restrict d, int64_t H) {
  if (d) {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) hn[j] = (T(1) - z[j]) * (n[j] * d[j]) + z[j] * hp[j];
  } else {
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) hn[j] = (T(1) - z[j]) * n[j] + z[j] * hp[j];
  }
}

// Step-mask bookkeeping shared by all cells for one row after the new h is in `hnew`:
// keeps it (state and output) or carries the previous state over (Keras rule).
template <typename T>
inline void store_step(const Problem<T>& P, int64_t s, int64_t t, int64_t bg, const T* hnew, char& seen) {
  const int64_t H = P.H;
  T* orow = P.out + (t * P.B + bg) * H;
  if (!P.steps) {
    if (orow != hnew) std::memcpy(orow, hnew, H * sizeof(T));
    return;
  }
  T* st = P.state(s, bg);
  if (P.keep(t, bg)) {
    if (st != hnew) std::memcpy(st, hnew, H * sizeof(T));
    std::memcpy(orow, st, H * sizeof(T));
    seen = 1;
  } else {
    const T* hp = P.hprev(s, bg);
    std::memcpy(st, hp, H * sizeof(T));
    if (P.zero_fill || !seen) {
      std::memset(orow, 0, H * sizeof(T));
    } else {
      std::memcpy(orow, hp, H * sizeof(T));
    }
  }
}

template <typename T>
Tensor scratch(int64_t n) {
  return at::empty({std::max<int64_t>(n, 1)}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
}

// ---------------------------------------------------------------- forward, one block of rows

template <typename T>
void forward_rows(const Problem<T>& P, T* hT, T* cT, int64_t b0, int64_t b1) {
  const int64_t nb = b1 - b0, H = P.H, G = P.G, GH = P.GH, B = P.B;
  const bool per_gate = P.Gm == G && G > 1;
  const bool gru_rb = P.mode == kGRU && !P.reset_after;
  const bool zone_h = P.zh.on(), zone_c = P.zc.on();
  const int64_t ng_first = gru_rb ? 2 : G;  // gates of the first (or only) recurrent matmul
  const int64_t gs = per_gate ? nb * H : H;
  const int64_t rs = per_gate ? H : ng_first * H;
  const int64_t n_gh = ng_first * nb * H, n_hm = std::max<int64_t>(P.Gm, 1) * nb * H;
  const int64_t n_ga = P.save ? 0 : nb * GH, n_c = (P.mode == kLSTM && !P.save) ? 2 * nb * H : 0;
  const int64_t n_gru = P.mode == kGRU ? 2 * nb * H : 0;  // u and gh_n (reset_after=False) or GHN scratch
  Tensor buf = scratch<T>(n_gh + n_hm + n_ga + n_c + n_gru + 3 * H + GH);
  T* gh = buf.data_ptr<T>();
  T* hm = gh + n_gh;
  T* gtmp = hm + n_hm;
  T* cbuf = gtmp + n_ga;
  T* gbuf = cbuf + n_c;
  T* tc = gbuf + n_gru;
  T* hraw = tc + H;     // the cell's new h before zoneout
  T* craw = hraw + H;   // the LSTM's new c before zoneout (when not saved in CR)
  T* girow = craw + H;  // a bf16 gi row widened (lowp)
  std::vector<char> seen(nb, 0);

  auto ga_row = [&](int64_t t, int64_t b) { return P.save ? P.GA + (t * B + b0 + b) * GH : gtmp + b * GH; };
  auto c_row = [&](int64_t s, int64_t b) {
    return P.save ? P.C + (s * B + b0 + b) * H : cbuf + ((s & 1) * nb + b) * H;
  };
  // Where the new h goes: straight to its storage, or first to a buffer when zoneout mixes it with
  // the previous h (the RNN keeps the raw h in GA for the backward: its activation's derivative).
  auto h_target = [&](int64_t s, int64_t t, int64_t b) -> T* {
    if (zone_h) return (P.mode == kRNN && P.save) ? P.GA + (t * B + b0 + b) * GH : hraw;
    return P.steps ? P.state(s, b0 + b) : P.out + (t * B + b0 + b) * H;
  };
  // Zoneout of h: storage <- lerp(h_raw, h_prev, w_t); returns the storage row.
  auto finish_h = [&](int64_t s, int64_t t, int64_t b, const T* hr, const T* hp) -> T* {
    T* hn = P.steps ? P.state(s, b0 + b) : P.out + (t * B + b0 + b) * H;
    if (zone_h) zoneout_row(hn, hr, hp, P.zh, t, b0 + b, H);
    return hn;
  };

  for (int64_t s = 0; s < P.Tn; ++s) {
    const int64_t t = P.tix(s);
    recurrent_forward(P, s, b0, nb, 0, ng_first, gh, hm);
    if (gru_rb) {
      // r, z, then u = r * (h * m_n) and the n gate's own recurrent matmul on u.
      T* u = gbuf;
      T* ghn = gbuf + nb * H;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t bg = b0 + b;
        T* ga = ga_row(t, b);
        const T* gir = P.gi_row(t, bg, girow);
        for (int64_t k = 0; k < 2; ++k)
          preact(ga + k * H, gir + k * H, gh + k * gs + b * rs, P.bih(k), P.bhh(k), H);
        activate(P.ract, ga, 2 * H);
        const T* hp = P.hprev(s, bg);
        T* ub = u + b * H;
        if (P.Gm == 0) {
          mul_rows(ub, ga, hp, H);
        } else if (P.Gm == 1) {
          mul_rows(ub, ga, hm + b * H, H);
        } else {
          const T* mn = P.m(2, bg);
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) ub[j] = ga[j] * (hp[j] * mn[j]);
        }
      }
      mm_into(ghn, u, nb, H, P.op(true, 2, 1));
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t bg = b0 + b;
        T* ga = ga_row(t, b);
        const T* gir = P.gi_row(t, bg, girow);
        preact(ga + 2 * H, gir + 2 * H, ghn + b * H, P.bih(2), P.bhh(2), H);
        activate(P.act, ga + 2 * H, H);
        const T* hp = P.hprev(s, bg);
        T* hr = h_target(s, t, b);
        gru_update(hr, ga + H, ga + 2 * H, hp, P.cand_row(bg), H);
        store_step(P, s, t, bg, finish_h(s, t, b, hr, hp), seen[b]);
      }
      continue;
    }
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t bg = b0 + b;
      const T* gir = P.gi_row(t, bg, girow);
      const T* hp = P.hprev(s, bg);
      T* hr = h_target(s, t, b);
      if (P.mode == kRNN) {
        preact(hr, gir, gh + b * rs, P.bih(0), P.bhh(0), H);
        activate(P.act, hr, H);
        store_step(P, s, t, bg, finish_h(s, t, b, hr, hp), seen[b]);
        continue;
      }
      T* ga = ga_row(t, b);
      if (P.mode == kGRU) {  // reset_after=True
        T* ghn = P.save ? P.GHN + (t * B + bg) * H : gbuf + b * H;
        for (int64_t k = 0; k < 2; ++k)
          preact(ga + k * H, gir + k * H, gh + k * gs + b * rs, P.bih(k), P.bhh(k), H);
        activate(P.ract, ga, 2 * H);
        const T* ghb = gh + 2 * gs + b * rs;
        if (P.bias) {
          const T* bn = P.bias + 2 * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) ghn[j] = ghb[j] + bn[j];
        } else {
          std::memcpy(ghn, ghb, H * sizeof(T));
        }
        const T *r = ga, *z = ga + H, *gin = gir + 2 * H;
        T* n = ga + 2 * H;
        if (P.bias_ih) {
          const T* bin = P.bih(2);
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) n[j] = (gin[j] + bin[j]) + r[j] * ghn[j];
        } else {
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) n[j] = gin[j] + r[j] * ghn[j];
        }
        activate(P.act, n, H);
        gru_update(hr, z, n, hp, P.cand_row(bg), H);
        store_step(P, s, t, bg, finish_h(s, t, b, hr, hp), seen[b]);
        continue;
      }
      // LSTM
      for (int64_t k = 0; k < 4; ++k)
        preact(ga + k * H, gir + k * H, gh + k * gs + b * rs, P.bih(k), P.bhh(k), H);
      activate(P.ract, ga, 2 * H);  // i, f
      activate(P.act, ga + 2 * H, H);  // g
      activate(P.ract, ga + 3 * H, H);  // o
      const T *i = ga, *f = ga + H, *g = ga + 2 * H, *o = ga + 3 * H;
      const T* cp = s == 0 ? P.c0 + bg * H : c_row(s - 1, b);
      T* cn = c_row(s, b);
      // The raw new c: in cn directly, or (zoneout of c) in CR / a buffer, then mixed into cn.
      T* cr = !zone_c ? cn : (P.save ? P.CR + (s * B + bg) * H : craw);
      const T* d = P.cand_row(bg);
      if (d) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) cr[j] = f[j] * cp[j] + i[j] * (g[j] * d[j]);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) cr[j] = f[j] * cp[j] + i[j] * g[j];
      }
      std::memcpy(tc, cr, H * sizeof(T));
      activate(P.act, tc, H);
      mul_rows(hr, o, tc, H);
      if (zone_c) zoneout_row(cn, cr, cp, P.zc, t, bg, H);
      if (P.steps && !P.keep(t, bg)) std::memcpy(cn, cp, H * sizeof(T));  // carry c over
      store_step(P, s, t, bg, finish_h(s, t, b, hr, hp), seen[b]);
    }
  }
  // Final (carried) states of these rows.
  for (int64_t b = 0; b < nb; ++b) {
    std::memcpy(hT + (b0 + b) * H, P.state(P.Tn - 1, b0 + b), H * sizeof(T));
    if (P.mode == kLSTM) std::memcpy(cT + (b0 + b) * H, c_row(P.Tn - 1, b), H * sizeof(T));
  }
}

// ---------------------------------------------------------------- backward, one block of rows

template <typename T>
struct Grads {
  const T* dout;  // (T, B, H)
  const T* dhT;
  const T* dcT;
  T* dGI;  // (T, B, GH)
  T* dGH;  // (T, B, GH), == dGI except for the GRU with reset_after
  T* dh0;
  T* dc0;
};

template <typename T>
void backward_rows(const Problem<T>& P, const Grads<T>& D, int64_t b0, int64_t b1) {
  const int64_t nb = b1 - b0, H = P.H, G = P.G, GH = P.GH, B = P.B, Tn = P.Tn;
  const bool per_gate = P.Gm == G && G > 1;
  const bool gru_rb = P.mode == kGRU && !P.reset_after;
  const bool zone_h = P.zh.on(), zone_c = P.zc.on();
  const int64_t n_dhm = (per_gate ? G : 1) * nb * H;
  Tensor buf = scratch<T>(5 * nb * H + n_dhm + 3 * H);
  T* dh = buf.data_ptr<T>();
  T* dc = dh + nb * H;
  T* ddir = dc + nb * H;
  T* du = ddir + nb * H;
  T* dhm = du + nb * H;
  T* tc = dhm + n_dhm;
  T* tmp = tc + H;
  T* zcarry = tmp + H;       // zoneout of h: the part of dh that goes straight to h_{t-1} (nb * H)
  T* ccarry = zcarry + nb * H;  // zoneout of c: the same for one row of dc (H)
  std::memcpy(dh, D.dhT + b0 * H, nb * H * sizeof(T));
  if (P.mode == kLSTM) std::memcpy(dc, D.dcT + b0 * H, nb * H * sizeof(T));

  // Which outputs are views of the state after their step (gradient flows into it) and which
  // are constant zeros (zero_output_for_mask, or a masked step before the first real one).
  std::vector<char> flows(P.steps ? Tn * nb : 0, 1);
  if (P.steps) {
    for (int64_t b = 0; b < nb; ++b) {
      char seen = 0;
      for (int64_t s = 0; s < Tn; ++s) {
        const bool k = P.keep(P.tix(s), b0 + b);
        flows[s * nb + b] = k || (!P.zero_fill && seen);
        seen = seen || k;
      }
    }
  }

  for (int64_t s = Tn - 1; s >= 0; --s) {
    const int64_t t = P.tix(s);
    for (int64_t b = 0; b < nb; ++b) {
      if (P.steps && !flows[s * nb + b]) continue;
      const T* g = D.dout + (t * B + b0 + b) * H;
      T* d = dh + b * H;
#pragma omp simd
      for (int64_t j = 0; j < H; ++j) d[j] += g[j];
    }
    // Element-wise backward of the cell, per row, into the pre-activation gradients.
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t bg = b0 + b;
      T* dg = D.dGI + (t * B + bg) * GH;
      if (!P.keep(t, bg)) {
        std::memset(dg, 0, GH * sizeof(T));
        if (D.dGH != D.dGI) std::memset(D.dGH + (t * B + bg) * GH, 0, GH * sizeof(T));
        continue;
      }
      T* dhb = dh + b * H;
      if (zone_h) {  // h = lerp(h_raw, h_prev, w): d h_raw = (1 - w) dh, d h_prev gets w dh
        zoneout_grad_row(dhb, zcarry + b * H, P.zh, t, bg, H);
      }
      if (P.mode == kRNN) {
        std::memcpy(dg, dhb, H * sizeof(T));
        // The activation's derivative from its output: the raw h (kept in GA under zoneout).
        act_grad(P.act, zone_h ? P.GA + (t * B + bg) * GH : P.state(s, bg), dg, H);
        continue;
      }
      const T* ga = P.GA + (t * B + bg) * GH;
      const T* d = P.cand_row(bg);
      if (P.mode == kGRU) {
        const T *r = ga, *z = ga + H, *n = ga + 2 * H;
        const T* hp = P.hprev(s, bg);
        T* dd = ddir + b * H;
        if (d) {
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            dg[2 * H + j] = (dhb[j] * (T(1) - z[j])) * d[j];
            dg[H + j] = dhb[j] * (hp[j] - n[j] * d[j]);
            dd[j] = dhb[j] * z[j];
          }
        } else {
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            dg[2 * H + j] = dhb[j] * (T(1) - z[j]);
            dg[H + j] = dhb[j] * (hp[j] - n[j]);
            dd[j] = dhb[j] * z[j];
          }
        }
        if (zone_h) {
          const T* zc_ = zcarry + b * H;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) dd[j] += zc_[j];
        }
        act_grad(P.act, n, dg + 2 * H, H);
        act_grad(P.ract, z, dg + H, H);
        if (!gru_rb) {
          const T* ghn = P.GHN + (t * B + bg) * H;
          T* dgh = D.dGH + (t * B + bg) * GH;
#pragma omp simd
          for (int64_t j = 0; j < H; ++j) {
            dg[j] = dg[2 * H + j] * ghn[j];
            dgh[2 * H + j] = dg[2 * H + j] * r[j];
          }
          act_grad(P.ract, r, dg, H);
          std::memcpy(dgh, dg, 2 * H * sizeof(T));
        }
        continue;
      }
      // LSTM
      const T *i = ga, *f = ga + H, *gg = ga + 2 * H, *o = ga + 3 * H;
      // The raw new c (before zoneout) is what tanh saw; the carried one is what the next step used.
      const T* cn = (zone_c ? P.CR : P.C) + (s * B + bg) * H;
      const T* cp = s == 0 ? P.c0 + bg * H : P.C + ((s - 1) * B + bg) * H;
      T* dcb = dc + b * H;
      if (zone_c) zoneout_grad_row(dcb, ccarry, P.zc, t, bg, H);
      std::memcpy(tc, cn, H * sizeof(T));
      activate(P.act, tc, H);
      mul_rows(dg + 3 * H, dhb, tc, H);  // d o
      mul_rows(tmp, dhb, o, H);
      act_grad(P.act, tc, tmp, H);
      if (d) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T dcc = dcb[j] + tmp[j];
          dg[j] = dcc * (gg[j] * d[j]);
          dg[H + j] = dcc * cp[j];
          dg[2 * H + j] = (dcc * i[j]) * d[j];
          dcb[j] = dcc * f[j];
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T dcc = dcb[j] + tmp[j];
          dg[j] = dcc * gg[j];
          dg[H + j] = dcc * cp[j];
          dg[2 * H + j] = dcc * i[j];
          dcb[j] = dcc * f[j];
        }
      }
      if (zone_c) {
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) dcb[j] += ccarry[j];
      }
      act_grad(P.ract, i, dg, H);
      act_grad(P.ract, f, dg + H, H);
      act_grad(P.act, gg, dg + 2 * H, H);
      act_grad(P.ract, o, dg + 3 * H, H);
    }
    if (gru_rb) {
      // n's recurrent matmul ran on u = r * (h * m_n): its input gradient feeds r and h.
      mm_into(du, D.dGI + (t * B + b0) * GH + 2 * H, nb, GH, P.op(false, 2, 1));
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t bg = b0 + b;
        if (!P.keep(t, bg)) continue;
        T* dg = D.dGI + (t * B + bg) * GH;
        const T* r = P.GA + (t * B + bg) * GH;
        const T* hp = P.hprev(s, bg);
        const T* mn = P.Gm == 0 ? nullptr : P.m(P.Gm == 1 ? 0 : 2, bg);
        const T* dub = du + b * H;
        T* dd = ddir + b * H;
#pragma omp simd
        for (int64_t j = 0; j < H; ++j) {
          const T hn = mn ? hp[j] * mn[j] : hp[j];
          dg[j] = dub[j] * hn;
          dd[j] += mn ? dub[j] * r[j] * mn[j] : dub[j] * r[j];
        }
        act_grad(P.ract, r, dg, H);
      }
    }
    const int64_t ng = gru_rb ? 2 : G;
    recurrent_backward(P, t, b0, nb, 0, ng, D.dGH, dhm);
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t bg = b0 + b;
      if (!P.keep(t, bg)) continue;  // carried over: dh (and dc) pass through unchanged
      const T* base = P.mode == kGRU ? ddir + b * H : (zone_h ? zcarry + b * H : nullptr);
      rec_grad_row(P, dhm, nb, b, bg, 0, ng, base, dh + b * H);
    }
  }
  std::memcpy(D.dh0 + b0 * H, dh, nb * H * sizeof(T));
  if (P.mode == kLSTM) std::memcpy(D.dc0 + b0 * H, dc, nb * H * sizeof(T));
}

// ---------------------------------------------------------------- entry points

// Rows per thread below which the batch is not split (a thread's matmul would be too thin).
constexpr int64_t kGrainRows = 4;

int64_t num_gates(int64_t mode) { return mode == kLSTM ? 4 : mode == kGRU ? 3 : 1; }

template <typename T>
Problem<T> make_problem(int64_t mode, int64_t act, int64_t ract, bool reset_after, bool reverse, bool zero_fill,
                        bool save, const Tensor& gi, const Tensor& h0, const c10::optional<Tensor>& c0,
                        const Tensor& w_hh, const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& b_ih,
                        const c10::optional<Tensor>& rmask, const c10::optional<Tensor>& steps,
                        const c10::optional<Tensor>& cmask, const c10::optional<Tensor>& zh,
                        const c10::optional<Tensor>& zc) {
  Problem<T> P;
  P.mode = mode;
  P.act = act;
  P.ract = ract;
  P.reset_after = reset_after;
  P.reverse = reverse;
  P.zero_fill = zero_fill;
  P.save = save;
  P.Tn = gi.size(0);
  P.B = gi.size(1);
  P.G = num_gates(mode);
  P.GH = gi.size(2);
  P.H = P.GH / P.G;
  P.Gm = rmask && rmask->defined() ? rmask->size(0) : 0;
  if (gi.scalar_type() == at::kBFloat16) {  // autocast: the projection came in bf16
    P.lowp = true;
    P.gi = nullptr;
    P.gi_lp = gi.data_ptr<at::BFloat16>();
  } else {
    P.gi = gi.data_ptr<T>();
  }
  P.h0 = h0.data_ptr<T>();
  P.cand = (cmask && cmask->defined()) ? cmask->data_ptr<T>() : nullptr;
  set_zone(P.zh, zh);
  set_zone(P.zc, zc);
  P.c0 = (c0 && c0->defined()) ? c0->data_ptr<T>() : nullptr;
  P.bias = (b_hh && b_hh->defined()) ? b_hh->data_ptr<T>() : nullptr;
  P.bias_ih = (b_ih && b_ih->defined()) ? b_ih->data_ptr<T>() : nullptr;
  P.mask = P.Gm ? rmask->data_ptr<T>() : nullptr;
  P.steps = (steps && steps->defined()) ? steps->data_ptr<bool>() : nullptr;
  // Detached: the per-step matmuls write into out= views, which autograd would refuse for a
  // weight that requires grad (grad mode is thread-local and on in the worker threads).
  P.w = w_hh.detach();
  P.out = P.S = P.C = P.GA = P.GHN = nullptr;
  return P;
}

// Zoneout weights: a contiguous (Tz, Bz, Hz) tensor, each size full or 1 (broadcast).
template <typename T>
void set_zone(ZoneMask<T>& z, const c10::optional<Tensor>& w) {
  if (!w || !w->defined()) return;
  const int64_t Tz = w->size(0), Bz = w->size(1), Hz = w->size(2);
  z.p = w->data_ptr<T>();
  z.st = Tz > 1 ? Bz * Hz : 0;
  z.sb = Bz > 1 ? Hz : 0;
  z.sj = Hz > 1 ? 1 : 0;
}

void check_inputs(int64_t mode, const Tensor& gi, const Tensor& h0, const c10::optional<Tensor>& c0,
                  const Tensor& w_hh, const c10::optional<Tensor>& b_hh, const c10::optional<Tensor>& b_ih,
                  const c10::optional<Tensor>& rmask, const c10::optional<Tensor>& steps,
                  const c10::optional<Tensor>& cmask, const c10::optional<Tensor>& zh,
                  const c10::optional<Tensor>& zc) {
  TORCH_CHECK(mode >= 0 && mode <= 2, "rnndrop kernel: unknown mode ", mode);
  TORCH_CHECK(gi.dim() == 3 && gi.is_contiguous(), "rnndrop kernel: gi must be a contiguous (T, B, G*H) tensor");
  const int64_t Tn = gi.size(0), G = num_gates(mode), B = gi.size(1), GH = gi.size(2), H = GH / G;
  TORCH_CHECK(GH == G * H, "rnndrop kernel: gi's last dimension must be a multiple of ", G);
  TORCH_CHECK(Tn >= 1, "rnndrop kernel: need at least one timestep");
  // The states' dtype is the kernel's; gi may be bf16 with float32 states (autocast).
  const auto dtype = h0.scalar_type();
  TORCH_CHECK(gi.scalar_type() == dtype || (gi.scalar_type() == at::kBFloat16 && dtype == at::kFloat),
              "rnndrop kernel: gi must have the states' dtype, or be bf16 with float32 states; got ",
              gi.scalar_type(), " and ", dtype);
  TORCH_CHECK(gi.scalar_type() != at::kBFloat16 || cpu_has_bf16(),
              "rnndrop kernel: bf16 needs a CPU with AVX512_BF16");
  auto same = [&](const Tensor& x, at::IntArrayRef shape, const char* name) {
    TORCH_CHECK(x.sizes() == shape && x.is_contiguous() && x.scalar_type() == dtype && x.is_cpu(),
                "rnndrop kernel: ", name, " must be a contiguous CPU tensor of shape ", shape, " and dtype ",
                dtype, ", got ", x.sizes(), " ", x.scalar_type());
  };
  same(h0, {B, H}, "h0");
  if (mode == kLSTM) {
    TORCH_CHECK(c0 && c0->defined(), "rnndrop kernel: LSTM needs c0");
    same(*c0, {B, H}, "c0");
  }
  same(w_hh, {GH, H}, "w_hh");
  const bool has_hh = b_hh && b_hh->defined(), has_ih = b_ih && b_ih->defined();
  TORCH_CHECK(has_hh == has_ih, "rnndrop kernel: pass both biases or neither");
  if (has_hh) same(*b_hh, {GH}, "b_hh");
  if (has_ih) same(*b_ih, {GH}, "b_ih");
  if (rmask && rmask->defined()) {
    const int64_t gm = rmask->size(0);
    TORCH_CHECK(rmask->dim() == 3 && (gm == 1 || gm == G), "rnndrop kernel: rmask must be (1 or G, B, H)");
    same(*rmask, {gm, B, H}, "rmask");
  }
  if (steps && steps->defined()) {
    TORCH_CHECK(steps->scalar_type() == at::kBool && steps->is_contiguous() && steps->sizes() == at::IntArrayRef({gi.size(0), B}),
                "rnndrop kernel: steps must be a contiguous (T, B) bool tensor");
  }
  TORCH_CHECK(!(cmask && cmask->defined()) || mode != kRNN, "rnndrop kernel: the candidate mask is for LSTM / GRU");
  if (cmask && cmask->defined()) same(*cmask, {B, H}, "cmask");
  TORCH_CHECK(!(zc && zc->defined()) || mode == kLSTM, "rnndrop kernel: zoneout of c is for LSTM");
  for (const auto* z : {&zh, &zc}) {
    if (!*z || !(*z)->defined()) continue;
    const Tensor& w = **z;
    TORCH_CHECK(w.dim() == 3 && w.is_contiguous() && w.scalar_type() == dtype && w.is_cpu() &&
                    (w.size(0) == 1 || w.size(0) == Tn) && (w.size(1) == 1 || w.size(1) == B) &&
                    (w.size(2) == 1 || w.size(2) == H),
                "rnndrop kernel: zoneout weights must be contiguous (1|T, 1|B, 1|H) of the states' dtype, got ",
                w.sizes());
  }
}

// Returns {out (T,B,H), hT, cT, S, C, GA, GHN}; tensors a configuration does not use are undefined.
// DropConnect (wk0, wk1, wthr, wscale): the keys, threshold and scale of W_hh's mask (WeightMask), wthr < 0: none.
std::vector<Tensor> forward(int64_t mode, int64_t act, int64_t ract, bool reset_after, bool reverse, bool zero_fill,
                            bool save, const Tensor& gi, const Tensor& h0, const c10::optional<Tensor>& c0,
                            const Tensor& w_hh, const c10::optional<Tensor>& b_hh,
                            const c10::optional<Tensor>& b_ih, const c10::optional<Tensor>& rmask,
                            const c10::optional<Tensor>& steps, const c10::optional<Tensor>& cmask,
                            const c10::optional<Tensor>& zh, const c10::optional<Tensor>& zc, int64_t wk0,
                            int64_t wk1, int64_t wthr, double wscale) {
  check_inputs(mode, gi, h0, c0, w_hh, b_hh, b_ih, rmask, steps, cmask, zh, zc);
  const int64_t Tn = gi.size(0), B = gi.size(1), G = num_gates(mode), H = gi.size(2) / G;
  const auto opts = h0.options();
  const bool has_zh = zh && zh->defined(), has_zc = zc && zc->defined();
  Tensor out = at::empty({Tn, B, H}, opts), hT = at::empty({B, H}, opts), cT, S, C, GA, GHN, CR;
  const bool has_steps = steps && steps->defined();
  if (has_steps) S = at::empty({Tn, B, H}, opts);
  if (mode == kLSTM) {
    cT = at::empty({B, H}, opts);
    if (save) C = at::empty({Tn, B, H}, opts);
  }
  if (save && (mode != kRNN || has_zh)) GA = at::empty({Tn, B, G * H}, opts);  // RNN: its raw h under zoneout
  if (save && mode == kGRU && reset_after) GHN = at::empty({Tn, B, H}, opts);
  if (save && mode == kLSTM && has_zc) CR = at::empty({Tn, B, H}, opts);
  AT_DISPATCH_FLOATING_TYPES(h0.scalar_type(), "rnndrop_forward", [&] {
    auto P = make_problem<scalar_t>(mode, act, ract, reset_after, reverse, zero_fill, save, gi, h0, c0, w_hh, b_hh,
                                    b_ih, rmask, steps, cmask, zh, zc);
    P.wm = WeightMask::make(wk0, wk1, wthr, wscale, w_hh.size(1));
    P.prepare(true);
    P.CR = CR.defined() ? CR.data_ptr<scalar_t>() : nullptr;
    P.out = out.data_ptr<scalar_t>();
    P.S = S.defined() ? S.data_ptr<scalar_t>() : nullptr;
    P.C = C.defined() ? C.data_ptr<scalar_t>() : nullptr;
    P.GA = GA.defined() ? GA.data_ptr<scalar_t>() : nullptr;
    P.GHN = GHN.defined() ? GHN.data_ptr<scalar_t>() : nullptr;
    scalar_t* hTp = hT.data_ptr<scalar_t>();
    scalar_t* cTp = cT.defined() ? cT.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B, kGrainRows, [&](int64_t b0, int64_t b1) {
      at::NoGradGuard no_grad;
      forward_rows(P, hTp, cTp, b0, b1);
    });
  });
  return {out, hT, cT, S, C, GA, GHN, CR};
}

// The inputs of every step's recurrent matmul, time order: (T, B, H) = h_{t-1} in walk terms.
Tensor prev_states(const Tensor& h0, const Tensor& out, const c10::optional<Tensor>& S, bool reverse) {
  const bool has_steps = S && S->defined();
  // walk order: h0, state after step 0, ..., state after step T-2
  Tensor walk_states = has_steps ? *S : (reverse ? out.flip(0) : out);
  Tensor prev = at::cat({h0.unsqueeze(0), walk_states.narrow(0, 0, out.size(0) - 1)}, 0);
  return reverse ? prev.flip(0) : prev;
}

// Returns {dgi, dh0, dc0, dw_hh, db_hh, db_ih}.
std::vector<Tensor> backward(int64_t mode, int64_t act, int64_t ract, bool reset_after, bool reverse, bool zero_fill,
                             bool lowp, const Tensor& h0, const c10::optional<Tensor>& c0, const Tensor& w_hh,
                             bool has_bias, const c10::optional<Tensor>& rmask, const c10::optional<Tensor>& steps,
                             const c10::optional<Tensor>& cmask, const c10::optional<Tensor>& zh,
                             const c10::optional<Tensor>& zc, const Tensor& out, const c10::optional<Tensor>& S,
                             const c10::optional<Tensor>& C, const c10::optional<Tensor>& GA,
                             const c10::optional<Tensor>& GHN, const c10::optional<Tensor>& CR, const Tensor& dout,
                             const Tensor& dhT, const c10::optional<Tensor>& dcT, int64_t wk0, int64_t wk1,
                             int64_t wthr, double wscale) {
  const WeightMask wm = WeightMask::make(wk0, wk1, wthr, wscale, w_hh.size(1));
  TORCH_CHECK(!lowp || (out.scalar_type() == at::kFloat && cpu_has_bf16()),
              "rnndrop kernel: the bf16 backward needs float32 states and a CPU with AVX512_BF16");
  const int64_t Tn = out.size(0), B = out.size(1), H = out.size(2), G = num_gates(mode), GH = G * H;
  TORCH_CHECK(dout.is_contiguous() && dout.sizes() == out.sizes(), "rnndrop kernel: dout must be contiguous (T,B,H)");
  TORCH_CHECK(dhT.is_contiguous() && dhT.sizes() == h0.sizes(), "rnndrop kernel: dhT must be contiguous (B,H)");
  const auto opts = out.options();
  Tensor dGI = at::empty({Tn, B, GH}, opts);
  Tensor dGH = (mode == kGRU && reset_after) ? at::empty({Tn, B, GH}, opts) : dGI;
  Tensor dh0 = at::empty({B, H}, opts), dc0;
  if (mode == kLSTM) dc0 = at::empty({B, H}, opts);
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "rnndrop_backward", [&] {
    // dGI only carries the sizes here (P.gi is never read by the backward).
    auto P = make_problem<scalar_t>(mode, act, ract, reset_after, reverse, zero_fill, true, dGI, h0, c0, w_hh,
                                    c10::nullopt, c10::nullopt, rmask, steps, cmask, zh, zc);
    P.lowp = lowp;
    P.wm = wm;
    P.prepare(false);
    P.CR = (CR && CR->defined()) ? CR->data_ptr<scalar_t>() : nullptr;
    P.out = const_cast<scalar_t*>(out.data_ptr<scalar_t>());
    P.S = (S && S->defined()) ? S->data_ptr<scalar_t>() : nullptr;
    P.C = (C && C->defined()) ? C->data_ptr<scalar_t>() : nullptr;
    P.GA = (GA && GA->defined()) ? GA->data_ptr<scalar_t>() : nullptr;
    P.GHN = (GHN && GHN->defined()) ? GHN->data_ptr<scalar_t>() : nullptr;
    Grads<scalar_t> D;
    D.dout = dout.data_ptr<scalar_t>();
    D.dhT = dhT.data_ptr<scalar_t>();
    D.dcT = (dcT && dcT->defined()) ? dcT->data_ptr<scalar_t>() : nullptr;
    D.dGI = dGI.data_ptr<scalar_t>();
    D.dGH = dGH.data_ptr<scalar_t>();
    D.dh0 = dh0.data_ptr<scalar_t>();
    D.dc0 = dc0.defined() ? dc0.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B, kGrainRows, [&](int64_t b0, int64_t b1) {
      at::NoGradGuard no_grad;
      backward_rows(P, D, b0, b1);
    });
  });

  // Weight gradients: one matmul over all timesteps and rows per (masked) input.
  const int64_t Gm = rmask && rmask->defined() ? rmask->size(0) : 0;
  Tensor prev = prev_states(h0, out, S, reverse);  // (T, B, H), a fresh tensor
  // A shared mask is applied in place (no second (T, B, H) buffer); per gate, one gate at a time.
  if (Gm == 1) prev.mul_(rmask->select(0, 0).unsqueeze(0));
  auto masked = [&](int64_t g) { return Gm <= 1 ? prev : prev * rmask->select(0, g).unsqueeze(0); };
  Tensor src = dGH.view({Tn * B, GH});
  Tensor dW = at::empty({GH, H}, opts);
  // o <- a @ b over all timesteps; in bf16 (ATen's oneDNN matmul) under autocast, like torch.nn's
  // backward there: operands rounded to bf16, float32 accumulation, the result rounded to bf16.
  auto wgrad = [&](Tensor& o, const Tensor& a, const Tensor& b) {
    if (lowp) {
      o.copy_(at::mm(a.to(at::kBFloat16), b.to(at::kBFloat16)));
    } else {
      at::mm_out(o, a, b);
    }
  };
  const bool gru_rb = mode == kGRU && !reset_after;
  const int64_t ng = gru_rb ? 2 : G;
  if (Gm == G && G > 1) {
    for (int64_t g = 0; g < ng; ++g) {
      Tensor o = dW.narrow(0, g * H, H);
      wgrad(o, src.narrow(1, g * H, H).t(), masked(g).view({Tn * B, H}));
    }
  } else {
    Tensor o = dW.narrow(0, 0, ng * H);
    wgrad(o, src.narrow(1, 0, ng * H).t(), masked(0).view({Tn * B, H}));
  }
  if (gru_rb) {
    Tensor r = GA->narrow(2, 0, H);
    Tensor u = r * (Gm <= 1 ? prev : prev * rmask->select(0, 2).unsqueeze(0));
    Tensor o = dW.narrow(0, 2 * H, H);
    wgrad(o, src.narrow(1, 2 * H, H).t(), u.reshape({Tn * B, H}));
  }
  // Bias gradients: b_hh sees the recurrent pre-activations, b_ih the input-side ones; they are
  // the same sums except for the GRU with reset_after (clone: two parameters never share a grad).
  Tensor db_hh, db_ih;
  if (has_bias) {
    db_ih = dGI.view({Tn * B, GH}).sum(0);
    db_hh = dGH.is_same(dGI) ? db_ih.clone() : src.sum(0);
  }
  // DropConnect: the products above used W_hh * mask; the raw W_hh's gradient is dW * mask.
  if (wm.on) mask_weight_grad(dW, wm);
  return {dGI, dh0, dc0, dW, db_hh, db_ih};
}

// ---------------------------------------------------------------- the input projection
//
// out[:, r0 : r0 + N] <- x (M, K) @ w[r0 : r0 + N]^T, w (G*H, K) the whole W_ih: the projection of all
// timesteps' (masked) inputs onto one block of W_ih's rows (all of them without per-gate input masks),
// on the same packed micro-kernel as the recurrence, the block's W^T packed once per parameter version
// (through the cache, keyed on the whole weight and the block), rows split between threads in chunks.
// MKL's sgemm reached about 140 GFLOP/s on these tall, thin-K shapes (6400 x 64 @ 64 x 1024). float32
// with the AVX-512 micro-kernel only (see has_projection(); the caller uses ATen otherwise).
void project_into(const Tensor& x, const Tensor& w, int64_t row0, int64_t rows_w, Tensor& out) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kFloat && w.dim() == 2 &&
                  w.scalar_type() == at::kFloat && w.size(1) == x.size(1) && row0 >= 0 && rows_w >= 1 &&
                  row0 + rows_w <= w.size(0) && out.dim() == 2 && out.is_contiguous() &&
                  out.scalar_type() == at::kFloat && out.size(0) == x.size(0) && out.size(1) == w.size(0),
              "rnndrop project_into: x (M, K) and out (M, G*H) contiguous float32, w (G*H, K), a row block of w");
#if RNNDROP_MICROKERNEL
  const int64_t M = x.size(0), K = x.size(1), ldc = out.size(1);
  Operand<float> op = make_operand<float>(w.detach().narrow(0, row0, rows_w).t(), false);
  const float* a = x.data_ptr<float>();
  float* c = out.data_ptr<float>() + row0;
  constexpr int64_t kChunk = 48;  // rows per task: 8 micro-tiles over one B panel at a time
  at::parallel_for(0, (M + kChunk - 1) / kChunk, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = t * kChunk, rows = std::min(kChunk, M - r0);
      gemm_packed(c + r0 * ldc, a + r0 * K, rows, K, op, ldc);
    }
  });
#else
  TORCH_CHECK(false, "rnndrop project_into: built without the micro-kernel (AVX-512 or AVX2 + FMA)");
#endif
}

bool has_projection() { return RNNDROP_MICROKERNEL != 0; }

// The panels one call packs for its per-step products, from a float32 W_hh (G*H, H): the forward's W^T
// (transposed) or the backward's W. For benchmarks/bench_dropin.py, which weighs packing against a call.
Tensor pack_weight(const Tensor& w, bool transposed) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat, "rnndrop pack_weight: a float32 (G*H, H) matrix");
  return make_operand<float>(transposed ? w.t() : w, false, transposed).packed;
}

// gi (T, B, G*H) = (x * mask_g) @ W_ih[g]^T for every mask gate g (one block without a mask): the
// functional form of project_into, for torch.compile's graph (eager calls write a reused buffer).
Tensor input_projection(const Tensor& x, const Tensor& w, const c10::optional<Tensor>& mask) {
  TORCH_CHECK(x.dim() == 3, "rnndrop input_projection: x must be (T, B, I)");
  const int64_t Tn = x.size(0), B = x.size(1), I = x.size(2), GH = w.size(0);
  const bool masked = mask && mask->defined();
  const int64_t blocks = masked ? mask->size(0) : 1, width = GH / blocks;
  Tensor out = at::empty({Tn * B, GH}, x.options());
  const Tensor wc = w.contiguous();  // once, not per mask block
  for (int64_t g = 0; g < blocks; ++g) {
    Tensor xm = masked ? x * mask->select(0, g).unsqueeze(0) : x;
    project_into(xm.reshape({Tn * B, I}).contiguous(), wc, g * width, width, out);
  }
  return out.view({Tn, B, GH});
}

// ---------------------------------------------------------------- counter-based mask draws
//
// rnndrop.counter_rng, the same numbers (its docstring is the definition; tests compare the two).
// Element (a, b, c) of an (A, B, C) draw is `below` when x >> 8 < threshold, else `above`, where
// x = lowbias32(lowbias32(lo ^ k0) ^ lowbias32(b ^ k1)) and lo = a * C + c mod 2^32 (lowbias32: C. Wellons'
// integer hash). The first hash depends on (a, c) only: computed once and reused by every sample b, so
// the inner loop is one hash per element, which the compiler vectorises (8 lanes with AVX2).

// The keys of one mask from the call's seed (s0, s1): counter_rng.mask_keys, kind = its MASK_KINDS code.
inline std::pair<uint32_t, uint32_t> mask_key_pair(uint32_t s0, uint32_t s1, int64_t layer, int64_t direction,
                                                   int64_t kind) {
  const uint32_t stream = static_cast<uint32_t>((layer * 2 + direction) * 8 + kind);
  const uint32_t k0 = lowbias32(lowbias32(stream ^ s0) ^ s1);
  const uint32_t k1 = lowbias32(lowbias32(s1 ^ stream ^ 0x9e3779b9u) ^ s0);
  return {k0, k1};
}

std::vector<int64_t> mask_keys(int64_t s0, int64_t s1, int64_t layer, int64_t direction, int64_t kind) {
  const auto k = mask_key_pair(static_cast<uint32_t>(s0), static_cast<uint32_t>(s1), layer, direction, kind);
  return {static_cast<int64_t>(k.first), static_cast<int64_t>(k.second)};
}

Tensor keyed_draws(int64_t k0, int64_t k1, int64_t threshold, int64_t A, int64_t Bn, int64_t C, double below,
                   double above, at::ScalarType dtype) {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble, "keyed_draws: float32 or float64, got ", dtype);
  TORCH_CHECK(A >= 0 && Bn >= 0 && C >= 0 && threshold >= 0 && threshold <= (int64_t{1} << 24),
              "keyed_draws: bad shape or threshold");
  Tensor out = at::empty({A, Bn, C}, at::TensorOptions().dtype(dtype));
  if (out.numel() == 0) return out;
  const uint32_t key0 = static_cast<uint32_t>(k0), key1 = static_cast<uint32_t>(k1);
  const uint32_t thr = static_cast<uint32_t>(threshold);
  std::vector<uint32_t> first(static_cast<size_t>(A * C));
  uint32_t* u = first.data();
  uint32_t lo = 0;  // the counter a * C + c, modulo 2^32
  for (int64_t i = 0; i < A * C; ++i, ++lo) u[i] = lowbias32(lo ^ key0);
  AT_DISPATCH_FLOATING_TYPES(dtype, "keyed_draws", [&] {
    const scalar_t lo_v = static_cast<scalar_t>(below), hi_v = static_cast<scalar_t>(above);
    scalar_t* o = out.data_ptr<scalar_t>();
    auto rows = [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t a = r / Bn, b = r - a * Bn;
        const uint32_t v = lowbias32(static_cast<uint32_t>(b) ^ key1);
        const uint32_t* ur = u + a * C;
        scalar_t* orow = o + r * C;
        int64_t c = 0;
#if defined(__AVX2__)
        if constexpr (std::is_same_v<scalar_t, float>) {  // 8 draws at a time (the scalar loop's numbers)
          const __m256i vv = _mm256_set1_epi32(static_cast<int>(v)), tv = _mm256_set1_epi32(static_cast<int>(thr));
          const __m256i m0 = _mm256_set1_epi32(0x7feb352d), m1 = _mm256_set1_epi32(static_cast<int>(0x846ca68bu));
          const __m256 below_v = _mm256_set1_ps(static_cast<float>(lo_v)), above_v = _mm256_set1_ps(static_cast<float>(hi_v));
          float* of = reinterpret_cast<float*>(orow);  // scalar_t is float here (not a template: no discarded branch)
          for (; c + 8 <= C; c += 8) {
            __m256i x = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ur + c)), vv);
            x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
            x = _mm256_mullo_epi32(x, m0);
            x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
            x = _mm256_mullo_epi32(x, m1);
            x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
            // x >> 8 < 2^24 and thr <= 2^24: a signed comparison is the unsigned one.
            const __m256i hit = _mm256_cmpgt_epi32(tv, _mm256_srli_epi32(x, 8));
            _mm256_storeu_ps(of + c, _mm256_blendv_ps(above_v, below_v, _mm256_castsi256_ps(hit)));
          }
        }
#endif
        for (; c < C; ++c) {
          const uint32_t x = lowbias32(ur[c] ^ v);
          orow[c] = (x >> 8) < thr ? lo_v : hi_v;
        }
      }
    };
    // Threads only for large draws (a parallel region costs microseconds); any split gives the same numbers.
    constexpr int64_t kSerial = int64_t{1} << 17;
    if (out.numel() < kSerial) {
      rows(0, A * Bn);
    } else {
      at::parallel_for(0, A * Bn, std::max<int64_t>(1, (kSerial / 4) / C), rows);
    }
  });
  return out;
}

}  // namespace rnndrop

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnndrop fused CPU recurrences (see rnndrop/_kernels)";
  m.def("forward", &rnndrop::forward, "fused forward of one direction");
  m.def("backward", &rnndrop::backward, "hand-derived backward (BPTT) of one direction");
  m.def("cpu_has_bf16", &rnndrop::cpu_has_bf16, "whether this CPU runs the bf16 (autocast) micro-kernel");
  m.def("project_into", &rnndrop::project_into, "out[:, r0:r0+N] <- x @ w[r0:r0+N]^T on the packed micro-kernel");
  m.def("input_projection", &rnndrop::input_projection, "gi = (x * mask_g) @ W_ih[g]^T, functional (for compile)");
  m.def("has_projection", &rnndrop::has_projection, "whether project_into is built (float32 AVX-512 or AVX2)");
  m.def("pack_weight", &rnndrop::pack_weight, "the packed panels of W (transposed: W^T), as one call makes them");
  m.def("keyed_draws", &rnndrop::keyed_draws, "counter-based mask draws (see rnndrop/counter_rng.py)");
  m.def("mask_keys", &rnndrop::mask_keys, "a mask's keys from the call's seed (see rnndrop/counter_rng.py)");
  m.attr("ABI_VERSION") = 4;
}
