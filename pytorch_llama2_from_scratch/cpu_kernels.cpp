// Small-M matrix products for CPU decoding: y = x @ W^T (* s), x of 1..8 rows, W read from memory once.
//
//     y[m, o] = s[o] * sum_k x[m, k] * W[o, k]        m < M <= 8,  W (N, K) fp32 or int8,  s (N,) or none
//
// Decoding multiplies 1 row (a step) or k+1 rows (speculative verification) by every weight matrix. The time
// is the time to stream W from memory, as long as the arithmetic keeps up:
//   * fp32 W, M = 1: MKL's GEMV streams close to the memory bandwidth; for 2..8 rows it switches to a GEMM
//     path that packs W first and costs ~2 GEMVs. Here every W row is loaded once and multiplied into all
//     M rows of x (held in L1), so 2..8 rows cost about one pass over W.
//   * int8 W: each int8 weight is widened to fp32 in registers (sign-extend, convert) and multiplied by the
//     fp32 activation: 1 byte of memory per weight, activations stay fp32 (weight-only quantisation).
// Rows of W are contiguous, so W is one sequential stream; a software prefetch PF bytes ahead keeps more cache
// lines in flight than the hardware prefetcher alone does for the int8 stream (measured: ~1.5x), and for the
// P panel streams of the panel kernel (one row: ~5-10 % faster than MKL's GEMV; 8 rows: 1.1 -> 1.0 GEMVs).
//
// Built at first use by cpu_kernels.py with -O3 -march=native (AVX-512, AVX2+FMA, or plain C++ loops).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <type_traits>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#ifndef PANEL_PF
#define PANEL_PF 1024  // software prefetch distance of the panel kernel, bytes (1024, 2048, 4096 measured alike)
#endif

namespace {

#if defined(__AVX512F__)
typedef __m512 V;
constexpr int W = 16;  // floats per vector register
inline V vzero() { return _mm512_setzero_ps(); }
inline V vload(const float* p) { return _mm512_loadu_ps(p); }
inline V vload(const int8_t* p) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)p))); }
inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(V v) { return _mm512_reduce_add_ps(v); }
inline V vbroadcast(const float* p) { return _mm512_set1_ps(*p); }
inline void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 V;
constexpr int W = 8;
inline V vzero() { return _mm256_setzero_ps(); }
inline V vload(const float* p) { return _mm256_loadu_ps(p); }
inline V vload(const int8_t* p) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p))); }
inline V vfma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline V vbroadcast(const float* p) { return _mm256_broadcast_ss(p); }
inline void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
#else
typedef float V;
constexpr int W = 1;
inline V vzero() { return 0.f; }
inline V vload(const float* p) { return *p; }
inline V vload(const int8_t* p) { return float(*p); }
inline V vfma(V a, V b, V c) { return a * b + c; }
inline float vsum(V v) { return v; }
inline V vbroadcast(const float* p) { return *p; }
inline void vstore(float* p, V v) { *p = v; }
#endif

inline void prefetch(const void* p) {
#if defined(__AVX512F__) || defined(__AVX2__)
  _mm_prefetch((const char*)p, _MM_HINT_T0);
#else
  (void)p;
#endif
}

// Output rows o0..o1-1 for all M rows of x. U independent accumulators per x row hide the FMA latency when M
// is small (M = 1 has a single dependency chain otherwise).
template <int M, int U, int PF, typename T>
void rows(const float* x, const T* w, const float* s, float* y, int64_t K, int64_t N, int64_t o0, int64_t o1) {
  for (int64_t o = o0; o < o1; ++o) {
    const T* wr = w + o * K;  // row o of W: K contiguous weights
    V acc[U][M];
    for (int u = 0; u < U; ++u)
      for (int m = 0; m < M; ++m) acc[u][m] = vzero();
    int64_t k = 0;
    for (; k + U * W <= K; k += U * W) {
      if (PF > 0) prefetch((const char*)(wr + k) + PF);
      for (int u = 0; u < U; ++u) {
        V wv = vload(wr + k + u * W);  // one load of W ...
        for (int m = 0; m < M; ++m) acc[u][m] = vfma(vload(x + m * K + k + u * W), wv, acc[u][m]);  // ... M uses
      }
    }
    for (int m = 0; m < M; ++m) {
      float t = 0.f;
      for (int u = 0; u < U; ++u) t += vsum(acc[u][m]);
      for (int64_t j = k; j < K; ++j) t += x[m * K + j] * float(wr[j]);  // tail: K not a multiple of U*W
      y[m * N + o] = s ? t * s[o] : t;
    }
  }
}

template <int PF, typename T>
void run(int64_t M, const float* x, const T* w, const float* s, float* y, int64_t K, int64_t N, int64_t a, int64_t b) {
  switch (M) {
    case 1: rows<1, 4, PF>(x, w, s, y, K, N, a, b); break;
    case 2: rows<2, 2, PF>(x, w, s, y, K, N, a, b); break;
    case 3: rows<3, 2, PF>(x, w, s, y, K, N, a, b); break;
    case 4: rows<4, 2, PF>(x, w, s, y, K, N, a, b); break;
    case 5: rows<5, 1, PF>(x, w, s, y, K, N, a, b); break;
    case 6: rows<6, 1, PF>(x, w, s, y, K, N, a, b); break;
    case 7: rows<7, 1, PF>(x, w, s, y, K, N, a, b); break;
    default: rows<8, 1, PF>(x, w, s, y, K, N, a, b); break;
  }
}

// ---- panel layout: no horizontal sums.  Wp (N16, K, 16) holds W^T in panels of 16 outputs: Wp[p, k, j] =
// W[16 p + j, k] (zero rows pad N to a multiple of 16). For each k, one contiguous load of 16 weights is
// multiplied by x[m, k] broadcast, into 16 output accumulators per row of x: y[m, 16p : 16p + 16] arrives in
// registers, so 2..8 rows cost M FMAs + 1 load per 16 weights and nothing per output. P panels at a time give
// P independent accumulator chains (needed when M is small) and reuse each broadcast P times.
template <int M, int P, int PF, typename T>
void panels(const float* x, const T* wp, const float* s, float* y, int64_t K, int64_t N, int64_t p0, int64_t p1) {
  constexpr int L = 16 / W;  // vectors per panel
  for (int64_t p = p0; p < p1; p += P) {
    if (p + P > p1) {  // leftover panels: one at a time
      for (int64_t q = p; q < p1; ++q) panels<M, 1, PF, T>(x, wp, s, y, K, N, q, q + 1);
      return;
    }
    V acc[P][L][M];
    for (int q = 0; q < P; ++q)
      for (int l = 0; l < L; ++l)
        for (int m = 0; m < M; ++m) acc[q][l][m] = vzero();
    const T* base = wp + p * K * 16;
    for (int64_t k = 0; k < K; ++k) {
      V wv[P][L];
      for (int q = 0; q < P; ++q) {
        const T* at = base + (q * K + k) * 16;  // 16 weights of panel p + q at row k of W^T
        if (PF > 0) prefetch((const char*)at + PF);
        for (int l = 0; l < L; ++l) wv[q][l] = vload(at + l * W);
      }
      for (int m = 0; m < M; ++m) {
        const V xb = vbroadcast(x + m * K + k);
        for (int q = 0; q < P; ++q)
          for (int l = 0; l < L; ++l) acc[q][l][m] = vfma(xb, wv[q][l], acc[q][l][m]);
      }
    }
    float out[16];
    for (int q = 0; q < P; ++q)
      for (int m = 0; m < M; ++m) {
        for (int l = 0; l < L; ++l) vstore(out + l * W, acc[q][l][m]);
        for (int j = 0; j < 16; ++j) {
          const int64_t o = (p + q) * 16 + j;
          if (o < N) y[m * N + o] = s ? out[j] * s[o] : out[j];
        }
      }
  }
}

// Panels per pass for M rows: P * L * M accumulators must fit the vector registers with room for the P * L
// weight vectors -- AVX-512 has 32 (L = 1), AVX2 16 (L = 2).
constexpr int panels_for(int M) { return W == 16 ? (M <= 4 ? 4 : 3) : (M <= 2 ? 4 - 2 * (M - 1) : (M <= 4 ? 2 : 1)); }

template <int PF, typename T>
void run_panels(int64_t M, const float* x, const T* w, const float* s, float* y, int64_t K, int64_t N, int64_t a, int64_t b) {
  switch (M) {
    case 1: panels<1, panels_for(1), PF>(x, w, s, y, K, N, a, b); break;
    case 2: panels<2, panels_for(2), PF>(x, w, s, y, K, N, a, b); break;
    case 3: panels<3, panels_for(3), PF>(x, w, s, y, K, N, a, b); break;
    case 4: panels<4, panels_for(4), PF>(x, w, s, y, K, N, a, b); break;
    case 5: panels<5, panels_for(5), PF>(x, w, s, y, K, N, a, b); break;
    case 6: panels<6, panels_for(6), PF>(x, w, s, y, K, N, a, b); break;
    case 7: panels<7, panels_for(7), PF>(x, w, s, y, K, N, a, b); break;
    default: panels<8, panels_for(8), PF>(x, w, s, y, K, N, a, b); break;
  }
}

// Checks shared by both operators; returns x, w, the scale (or undefined) contiguous and the output (M, n).
struct Operands {
  at::Tensor x, w, s, y;
};

Operands prepare(const char* op, const at::Tensor& x, const at::Tensor& w, int64_t k_of_w, int64_t n,
                 const c10::optional<at::Tensor>& scale) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), op, ": CPU tensors only");
  TORCH_CHECK(x.dim() == 2, op, ": x must be 2-D (M, K)");
  TORCH_CHECK(x.size(1) == k_of_w, op, ": x has ", x.size(1), " columns, w has K = ", k_of_w);
  TORCH_CHECK(x.size(0) >= 1 && x.size(0) <= 8, op, ": x must have 1..8 rows, got ", x.size(0));
  TORCH_CHECK(x.scalar_type() == at::kFloat, op, ": x must be float32");
  TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kChar, op, ": w must be float32 or int8");
  Operands o{x.contiguous(), w.contiguous(), at::Tensor(), at::empty({x.size(0), n}, x.options())};
  if (scale.has_value()) {
    o.s = scale->contiguous();
    TORCH_CHECK(o.s.scalar_type() == at::kFloat && o.s.numel() == n, op, ": scale must be float32 of shape (N,)");
  }
  return o;
}

// Calls body(w_ptr) with W's data as int8_t* or float*.
template <typename F>
void with_weight_type(const at::Tensor& w, F body) {
  if (w.scalar_type() == at::kChar) body(w.data_ptr<int8_t>());
  else body(w.data_ptr<float>());
}

at::Tensor small_m_linear(const at::Tensor& x_in, const at::Tensor& w_in, const c10::optional<at::Tensor>& scale) {
  TORCH_CHECK(w_in.dim() == 2, "small_m_linear: w must be 2-D (N, K)");
  const int64_t N = w_in.size(0);
  Operands o = prepare("small_m_linear", x_in, w_in, w_in.size(1), N, scale);
  const int64_t M = o.x.size(0), K = o.x.size(1);
  const float* xp = o.x.data_ptr<float>();
  const float* sp = o.s.defined() ? o.s.data_ptr<float>() : nullptr;
  float* yp = o.y.data_ptr<float>();
  with_weight_type(o.w, [&](auto* wp) {
    constexpr int PF = std::is_same_v<std::remove_cv_t<std::remove_pointer_t<decltype(wp)>>, int8_t> ? 2048 : 0;
    at::parallel_for(0, N, 16, [&](int64_t a, int64_t b) { run<PF>(M, xp, wp, sp, yp, K, N, a, b); });
  });
  return o.y;
}

at::Tensor small_m_linear_panels(const at::Tensor& x_in, const at::Tensor& wp_in, int64_t n, const c10::optional<at::Tensor>& scale) {
  TORCH_CHECK(wp_in.dim() == 3 && wp_in.size(2) == 16, "small_m_linear_panels: wp must be (N16, K, 16)");
  TORCH_CHECK(n >= 1 && n <= wp_in.size(0) * 16 && n > (wp_in.size(0) - 1) * 16, "small_m_linear_panels: n does not match the panels");
  Operands o = prepare("small_m_linear_panels", x_in, wp_in, wp_in.size(1), n, scale);
  const int64_t M = o.x.size(0), K = o.x.size(1), P = o.w.size(0);
  const float* xp = o.x.data_ptr<float>();
  const float* sp = o.s.defined() ? o.s.data_ptr<float>() : nullptr;
  float* yp = o.y.data_ptr<float>();
  with_weight_type(o.w, [&](auto* wp) {
    at::parallel_for(0, P, 4, [&](int64_t a, int64_t b) { run_panels<PANEL_PF>(M, xp, wp, sp, yp, K, n, a, b); });
  });
  return o.y;
}

}  // namespace

TORCH_LIBRARY(llm_scratch, m) {
  m.def("small_m_linear(Tensor x, Tensor w, Tensor? scale) -> Tensor");
  m.def("small_m_linear_panels(Tensor x, Tensor wp, int n, Tensor? scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(llm_scratch, CPU, m) {
  m.impl("small_m_linear", &small_m_linear);
  m.impl("small_m_linear_panels", &small_m_linear_panels);
}
