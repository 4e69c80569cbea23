// One time step of the batch-normalised LSTM (Cooijmans et al. 2016, eq. 6-8) on the CPU, forward
// and backward, after the matrix products: bn_lstm.py holds the equations and drives the time
// loop (bn_lstm_triton.py is the same step on CUDA). Built on first use by bn_lstm_cpu.py.
// Vectorised with ATen's Vectorized (Sleef's exp) when built with CPU_CAPABILITY_AVX2.
//
// Layout: a row per sequence of the batch (B rows); gate rows hold the four gates side by side,
// (f, i, o, g) x H; every tensor is contiguous. Batch normalisation works per column, over the
// rows, and everything else per hidden unit, so the work splits into blocks of hidden units, each
// with all of its rows and its four gate columns: a block needs nothing from another.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "lstm_cpu.h"

#include <algorithm>
#include <cstdint>
#include <optional>

namespace {

using lstm_cpu::optional_data;
using lstm_cpu::sigmoid;
using lstm_cpu::tanh;
using lstm_cpu::Vec;

template <typename T>
T* optional_mutable_data(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

// The n columns at `col` of a (rows x stride) matrix: their batch mean and inverse standard
// deviation 1 / sqrt(Var + eps) (biased variance), from two passes, into `mean` and `inv`. With
// population statistics (batch_statistics false) they come from `running_mean` and
// `running_var` instead; with batch statistics, running ones given are moved towards the
// batch's by `momentum` (the variance towards the unbiased one), as F.batch_norm updates them.
template <typename T>
void column_statistics(const T* x, int64_t rows, int64_t stride, int64_t col, int n,
                       bool batch_statistics, T* running_mean, T* running_var, T momentum, T eps,
                       T* mean, T* inv) {
  Vec<T> mu, variance;
  if (batch_statistics) {
    Vec<T> sum(T(0));
    for (int64_t b = 0; b < rows; ++b) sum = sum + Vec<T>::loadu(x + b * stride + col, n);
    mu = sum / Vec<T>(T(rows));
    Vec<T> squares(T(0));
    for (int64_t b = 0; b < rows; ++b) {
      const Vec<T> d = Vec<T>::loadu(x + b * stride + col, n) - mu;
      squares = squares + d * d;
    }
    variance = squares / Vec<T>(T(rows));
    if (running_mean) {
      const Vec<T> keep(T(1) - momentum), take(momentum);
      (keep * Vec<T>::loadu(running_mean + col, n) + take * mu).store(running_mean + col, n);
      (keep * Vec<T>::loadu(running_var + col, n) + take * squares / Vec<T>(T(rows - 1)))
          .store(running_var + col, n);
    }
  } else {
    mu = Vec<T>::loadu(running_mean + col, n);
    variance = Vec<T>::loadu(running_var + col, n);
  }
  mu.store(mean + col, n);
  (Vec<T>(T(1)) / (variance + Vec<T>(eps)).sqrt()).store(inv + col, n);
}

struct Sizes {
  int64_t B, H;
};

// A step's normalisation: each column's mean and inverse standard deviation, for the
// hidden-to-hidden term a = W_h h_{t-1} (G columns), the input-to-hidden term u = W_x x_t (G)
// and the cell c_t (H); with the parameters gamma_h, gamma_x, b (G each), gamma_c, beta_c (H).
template <typename T>
struct Normalisation {
  T *mean_h, *inv_h, *mean_x, *inv_x, *mean_c, *inv_c;
  const T *gamma_h, *gamma_x, *bias, *gamma_c, *beta_c;
};

// Eq. 6-7 for the rows of the hidden units [j, j + n): (f, i, o, g) after their nonlinearities
// into `gates` and c_t = f c_{t-1} + i g into `c`, from a and u normalised with the step's
// statistics (already in `norm`); with `x_hat_h` and `x_hat_x`, the normalised terms there too.
template <typename T>
void gates_and_cell(const Normalisation<T>& norm, const T* a, const T* u, const T* c_prev,
                    const Sizes& s, int64_t j, int n, T* gates, T* c, T* x_hat_h, T* x_hat_x) {
  const int64_t H = s.H, G = 4 * H;
  Vec<T> mu_h[4], in_h[4], mu_x[4], in_x[4], g_h[4], g_x[4], beta[4];
  for (int k = 0; k < 4; ++k) {
    const int64_t col = k * H + j;
    mu_h[k] = Vec<T>::loadu(norm.mean_h + col, n);
    in_h[k] = Vec<T>::loadu(norm.inv_h + col, n);
    mu_x[k] = Vec<T>::loadu(norm.mean_x + col, n);
    in_x[k] = Vec<T>::loadu(norm.inv_x + col, n);
    g_h[k] = Vec<T>::loadu(norm.gamma_h + col, n);
    g_x[k] = Vec<T>::loadu(norm.gamma_x + col, n);
    beta[k] = Vec<T>::loadu(norm.bias + col, n);
  }
  for (int64_t b = 0; b < s.B; ++b) {
    Vec<T> act[4];
    for (int k = 0; k < 4; ++k) {
      const int64_t at = b * G + k * H + j;
      const Vec<T> xh = (Vec<T>::loadu(a + at, n) - mu_h[k]) * in_h[k];
      const Vec<T> xx = (Vec<T>::loadu(u + at, n) - mu_x[k]) * in_x[k];
      if (x_hat_h) {
        xh.store(x_hat_h + at, n);
        xx.store(x_hat_x + at, n);
      }
      const Vec<T> pre = g_h[k] * xh + g_x[k] * xx + beta[k];                        // (6)
      act[k] = k < 3 ? sigmoid(pre) : tanh(pre);
      act[k].store(gates + at, n);
    }
    if (c) {
      const int64_t cell = b * H + j;
      (act[0] * Vec<T>::loadu(c_prev + cell, n) + act[1] * act[3]).store(c + cell, n);  // (7)
    }
  }
}

// Forward of the hidden units [j, j + n), eq. 6-8: the statistics of a and u, the gates and
// c_t, the statistics of c_t, and h_t = o tanh(gamma_c c_hat + beta_c). The statistics go to
// `norm` (the backward recomputes the rest from them).
template <typename T>
struct Forward {
  const T *a, *u, *c_prev;
  Normalisation<T> norm;
  T *running_mean_h, *running_var_h, *running_mean_x, *running_var_x, *running_mean_c,
      *running_var_c;
  bool batch_statistics;
  T momentum, eps;
  T *gates, *c, *h;

  void units(const Sizes& s, int64_t j, int n) const {
    const int64_t B = s.B, H = s.H, G = 4 * H;
    for (int k = 0; k < 4; ++k) {
      const int64_t col = k * H + j;
      column_statistics(a, B, G, col, n, batch_statistics, running_mean_h, running_var_h,
                        momentum, eps, norm.mean_h, norm.inv_h);
      column_statistics(u, B, G, col, n, batch_statistics, running_mean_x, running_var_x,
                        momentum, eps, norm.mean_x, norm.inv_x);
    }
    gates_and_cell(norm, a, u, c_prev, s, j, n, gates, c, static_cast<T*>(nullptr),
                   static_cast<T*>(nullptr));
    column_statistics(c, B, H, j, n, batch_statistics, running_mean_c, running_var_c, momentum,
                      eps, norm.mean_c, norm.inv_c);
    const Vec<T> mu_c = Vec<T>::loadu(norm.mean_c + j, n), in_c = Vec<T>::loadu(norm.inv_c + j, n);
    const Vec<T> g_c = Vec<T>::loadu(norm.gamma_c + j, n), b_c = Vec<T>::loadu(norm.beta_c + j, n);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t cell = b * H + j;
      const Vec<T> tc = tanh(g_c * (Vec<T>::loadu(c + cell, n) - mu_c) * in_c + b_c);
      (Vec<T>::loadu(gates + b * G + 2 * H + j, n) * tc).store(h + cell, n);         // (8)
    }
  }
};

// Backward of the hidden units [j, j + n): recomputes the step's normalised terms (into a and u,
// which they overwrite), gates, c_hat and tanh(gamma_c c_hat + beta_c) from a, u, c_{t-1}, c_t
// and the statistics; then from dL/dh_t (d_h, plus d_h_rec if given) and dL/dc_t through step
// t + 1 (d_c) to dL/da and dL/du (into a and u) and dL/dc_{t-1} (d_c_prev), adding this step's
// derivatives of gamma_h, gamma_x, b, gamma_c and beta_c to their sums.
// Batch normalisation with batch statistics differentiates through the statistics:
//   dL/dx = gamma inv (dy - mean(dy) - x_hat mean(dy x_hat)),  dy = dL/d(normalised output);
// with population statistics they are constants, dL/dx = gamma inv dy.
template <typename T>
struct Backward {
  const T *d_h, *d_h_rec, *d_c, *c_prev, *c;
  Normalisation<T> norm;
  bool batch_statistics;
  T *a, *u, *gates, *d_pre, *c_hat, *tanh_c, *d_c_prev;
  T *d_gamma_h, *d_gamma_x, *d_bias, *d_gamma_c, *d_beta_c;

  Vec<T> dh(int64_t cell, int n) const {
    Vec<T> v = Vec<T>::loadu(d_h + cell, n);
    return d_h_rec ? v + Vec<T>::loadu(d_h_rec + cell, n) : v;
  }

  void units(const Sizes& s, int64_t j, int n) const {
    const int64_t B = s.B, H = s.H, G = 4 * H;
    const Vec<T> one(T(1));
    const Vec<T> rows = Vec<T>(static_cast<T>(B));
    gates_and_cell(norm, a, u, c_prev, s, j, n, gates, static_cast<T*>(nullptr), a, u);
    const Vec<T> mu_c = Vec<T>::loadu(norm.mean_c + j, n), in_c = Vec<T>::loadu(norm.inv_c + j, n);
    const Vec<T> g_c = Vec<T>::loadu(norm.gamma_c + j, n), b_c = Vec<T>::loadu(norm.beta_c + j, n);
    // dL/d(gamma_c c_hat + beta_c), kept in d_c_prev until that is written.
    Vec<T> sum_dn(T(0)), sum_dn_ch(T(0));
    for (int64_t b = 0; b < B; ++b) {
      const int64_t cell = b * H + j;
      const Vec<T> ch = (Vec<T>::loadu(c + cell, n) - mu_c) * in_c;
      const Vec<T> tc = tanh(g_c * ch + b_c);
      ch.store(c_hat + cell, n);
      tc.store(tanh_c + cell, n);
      const Vec<T> dn = dh(cell, n) * Vec<T>::loadu(gates + b * G + 2 * H + j, n) * (one - tc * tc);
      dn.store(d_c_prev + cell, n);
      sum_dn = sum_dn + dn;
      sum_dn_ch = sum_dn_ch + dn * ch;
    }
    (Vec<T>::loadu(d_gamma_c + j, n) + sum_dn_ch).store(d_gamma_c + j, n);
    (Vec<T>::loadu(d_beta_c + j, n) + sum_dn).store(d_beta_c + j, n);
    const Vec<T> scale_c = g_c * in_c;
    const Vec<T> mean_dn = batch_statistics ? sum_dn / rows : Vec<T>(T(0));
    const Vec<T> mean_dn_ch = batch_statistics ? sum_dn_ch / rows : Vec<T>(T(0));
    // dL/d(pre-activations) into d_pre.
    Vec<T> sum_dp[4], sum_dp_xh[4], sum_dp_xx[4];
    for (int k = 0; k < 4; ++k) sum_dp[k] = sum_dp_xh[k] = sum_dp_xx[k] = Vec<T>(T(0));
    for (int64_t b = 0; b < B; ++b) {
      const int64_t cell = b * H + j, row = b * G + j;
      const Vec<T> ch = Vec<T>::loadu(c_hat + cell, n);
      const Vec<T> dn = Vec<T>::loadu(d_c_prev + cell, n);
      const Vec<T> dc = Vec<T>::loadu(d_c + cell, n) + scale_c * (dn - mean_dn - ch * mean_dn_ch);
      const Vec<T> f = Vec<T>::loadu(gates + row, n), i = Vec<T>::loadu(gates + row + H, n);
      const Vec<T> o = Vec<T>::loadu(gates + row + 2 * H, n);
      const Vec<T> g = Vec<T>::loadu(gates + row + 3 * H, n);
      const Vec<T> cp = Vec<T>::loadu(c_prev + cell, n);
      const Vec<T> dp[4] = {dc * cp * f * (one - f), dc * g * i * (one - i),
                            dh(cell, n) * Vec<T>::loadu(tanh_c + cell, n) * o * (one - o),
                            dc * i * (one - g * g)};
      (dc * f).store(d_c_prev + cell, n);
      for (int k = 0; k < 4; ++k) {
        const int64_t at = row + k * H;
        dp[k].store(d_pre + at, n);
        sum_dp[k] = sum_dp[k] + dp[k];
        sum_dp_xh[k] = sum_dp_xh[k] + dp[k] * Vec<T>::loadu(a + at, n);
        sum_dp_xx[k] = sum_dp_xx[k] + dp[k] * Vec<T>::loadu(u + at, n);
      }
    }
    Vec<T> scale_h[4], scale_x[4], mean_dp[4], mean_h[4], mean_x[4];
    for (int k = 0; k < 4; ++k) {
      const int64_t col = k * H + j;
      (Vec<T>::loadu(d_bias + col, n) + sum_dp[k]).store(d_bias + col, n);
      (Vec<T>::loadu(d_gamma_h + col, n) + sum_dp_xh[k]).store(d_gamma_h + col, n);
      (Vec<T>::loadu(d_gamma_x + col, n) + sum_dp_xx[k]).store(d_gamma_x + col, n);
      scale_h[k] = Vec<T>::loadu(norm.gamma_h + col, n) * Vec<T>::loadu(norm.inv_h + col, n);
      scale_x[k] = Vec<T>::loadu(norm.gamma_x + col, n) * Vec<T>::loadu(norm.inv_x + col, n);
      const Vec<T> zero(T(0));
      mean_dp[k] = batch_statistics ? sum_dp[k] / rows : zero;
      mean_h[k] = batch_statistics ? sum_dp_xh[k] / rows : zero;
      mean_x[k] = batch_statistics ? sum_dp_xx[k] / rows : zero;
    }
    for (int64_t b = 0; b < B; ++b) {
      for (int k = 0; k < 4; ++k) {
        const int64_t at = b * G + k * H + j;
        const Vec<T> dp = Vec<T>::loadu(d_pre + at, n) - mean_dp[k];
        const Vec<T> xh = Vec<T>::loadu(a + at, n), xx = Vec<T>::loadu(u + at, n);
        (scale_h[k] * (dp - xh * mean_h[k])).store(a + at, n);
        (scale_x[k] * (dp - xx * mean_x[k])).store(u + at, n);
      }
    }
  }
};

// Calls `block.units` for every block of hidden units, the blocks split across threads.
template <typename T, typename Block>
void for_each_unit_block(const Block& block, const Sizes& s) {
  constexpr int64_t V = Vec<T>::size();
  const int64_t blocks = (s.H + V - 1) / V;
  // A block is B rows of 4 gate columns: a few blocks make a thread's work worth its start.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(s.B * 4 * V, 1));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t j = blk * V;
      block.units(s, j, static_cast<int>(std::min<int64_t>(V, s.H - j)));
    }
  });
}

void check(bool ok, const char* what) { TORCH_CHECK(ok, "bn_lstm (CPU): ", what); }

void check_tensors(const at::Tensor& reference, std::initializer_list<const at::Tensor*> all) {
  lstm_cpu::check_tensors("bn_lstm", reference, all);
}

void check_optional(const at::Tensor& reference,
                    std::initializer_list<const std::optional<at::Tensor>*> all) {
  for (const std::optional<at::Tensor>* t : all) {
    if (t->has_value()) check_tensors(reference, {&t->value()});
  }
}

// The layout's sizes, B and H taken from c_{t-1}: a tensor of another size would be read or
// written out of bounds.
void check_numel(int64_t numel, std::initializer_list<const at::Tensor*> all, const char* what) {
  for (const at::Tensor* t : all) check(t->numel() == numel, what);
}

void check_optional_numel(int64_t numel,
                          std::initializer_list<const std::optional<at::Tensor>*> all,
                          const char* what) {
  for (const std::optional<at::Tensor>* t : all) {
    if (t->has_value()) check_numel(numel, {&t->value()}, what);
  }
}

template <typename T>
Normalisation<T> normalisation(const at::Tensor& mean_h, const at::Tensor& inv_h,
                               const at::Tensor& mean_x, const at::Tensor& inv_x,
                               const at::Tensor& mean_c, const at::Tensor& inv_c,
                               const at::Tensor& gamma_h, const at::Tensor& gamma_x,
                               const at::Tensor& bias, const at::Tensor& gamma_c,
                               const at::Tensor& beta_c) {
  return {mean_h.data_ptr<T>(),        inv_h.data_ptr<T>(),         mean_x.data_ptr<T>(),
          inv_x.data_ptr<T>(),         mean_c.data_ptr<T>(),        inv_c.data_ptr<T>(),
          gamma_h.const_data_ptr<T>(), gamma_x.const_data_ptr<T>(), bias.const_data_ptr<T>(),
          gamma_c.const_data_ptr<T>(), beta_c.const_data_ptr<T>()};
}

void step_forward(const at::Tensor& a, const at::Tensor& u, const at::Tensor& c_prev,
                  const at::Tensor& gamma_h, const at::Tensor& gamma_x, const at::Tensor& bias,
                  const at::Tensor& gamma_c, const at::Tensor& beta_c,
                  const std::optional<at::Tensor>& running_mean_h,
                  const std::optional<at::Tensor>& running_var_h,
                  const std::optional<at::Tensor>& running_mean_x,
                  const std::optional<at::Tensor>& running_var_x,
                  const std::optional<at::Tensor>& running_mean_c,
                  const std::optional<at::Tensor>& running_var_c, bool batch_statistics,
                  double momentum, double eps, const at::Tensor& mean_h, const at::Tensor& inv_h,
                  const at::Tensor& mean_x, const at::Tensor& inv_x, const at::Tensor& mean_c,
                  const at::Tensor& inv_c, const at::Tensor& gates, const at::Tensor& c,
                  const at::Tensor& h) {
  check_tensors(a, {&a, &u, &c_prev, &gamma_h, &gamma_x, &bias, &gamma_c, &beta_c, &mean_h,
                    &inv_h, &mean_x, &inv_x, &mean_c, &inv_c, &gates, &c, &h});
  check_optional(a, {&running_mean_h, &running_var_h, &running_mean_x, &running_var_x,
                     &running_mean_c, &running_var_c});
  check(batch_statistics || (running_mean_h && running_var_h && running_mean_x &&
                             running_var_x && running_mean_c && running_var_c),
        "population statistics are needed without batch statistics");
  check(c_prev.dim() == 2, "c_prev must be (B, H)");
  const Sizes s{c_prev.size(0), c_prev.size(1)};
  check(!batch_statistics || s.B >= 2, "batch statistics need a batch of at least 2");
  check_numel(s.B * 4 * s.H, {&a, &u, &gates}, "a, u and gates must be (B, 4H)");
  check_numel(s.B * s.H, {&c, &h}, "c and h must be (B, H)");
  check_numel(4 * s.H, {&gamma_h, &gamma_x, &bias, &mean_h, &inv_h, &mean_x, &inv_x},
              "the gates' parameters and statistics must have 4H values");
  check_optional_numel(4 * s.H, {&running_mean_h, &running_var_h, &running_mean_x,
                                 &running_var_x},
                       "the gates' population statistics must have 4H values");
  check_numel(s.H, {&gamma_c, &beta_c, &mean_c, &inv_c},
              "the cell's parameters and statistics must have H values");
  check_optional_numel(s.H, {&running_mean_c, &running_var_c},
                       "the cell's population statistics must have H values");
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bn_lstm_step_forward", [&] {
    using T = scalar_t;
    const Forward<T> block{
        a.const_data_ptr<T>(), u.const_data_ptr<T>(), c_prev.const_data_ptr<T>(),
        normalisation<T>(mean_h, inv_h, mean_x, inv_x, mean_c, inv_c, gamma_h, gamma_x, bias,
                         gamma_c, beta_c),
        optional_mutable_data<T>(running_mean_h), optional_mutable_data<T>(running_var_h),
        optional_mutable_data<T>(running_mean_x), optional_mutable_data<T>(running_var_x),
        optional_mutable_data<T>(running_mean_c), optional_mutable_data<T>(running_var_c),
        batch_statistics, static_cast<T>(momentum), static_cast<T>(eps), gates.data_ptr<T>(),
        c.data_ptr<T>(), h.data_ptr<T>()};
    for_each_unit_block<T>(block, s);
  });
}

void step_backward(const at::Tensor& d_h, const std::optional<at::Tensor>& d_h_rec,
                   const at::Tensor& d_c, const at::Tensor& a, const at::Tensor& u,
                   const at::Tensor& c_prev, const at::Tensor& c, const at::Tensor& mean_h,
                   const at::Tensor& inv_h, const at::Tensor& mean_x, const at::Tensor& inv_x,
                   const at::Tensor& mean_c, const at::Tensor& inv_c, const at::Tensor& gamma_h,
                   const at::Tensor& gamma_x, const at::Tensor& bias, const at::Tensor& gamma_c,
                   const at::Tensor& beta_c, bool batch_statistics, const at::Tensor& gates,
                   const at::Tensor& d_pre, const at::Tensor& c_hat, const at::Tensor& tanh_c,
                   const at::Tensor& d_c_prev, const at::Tensor& d_gamma_h,
                   const at::Tensor& d_gamma_x, const at::Tensor& d_bias,
                   const at::Tensor& d_gamma_c, const at::Tensor& d_beta_c) {
  check_tensors(a, {&d_h, &d_c, &a, &u, &c_prev, &c, &mean_h, &inv_h, &mean_x, &inv_x, &mean_c,
                    &inv_c, &gamma_h, &gamma_x, &bias, &gamma_c, &beta_c, &gates, &d_pre, &c_hat,
                    &tanh_c, &d_c_prev, &d_gamma_h, &d_gamma_x, &d_bias, &d_gamma_c, &d_beta_c});
  check_optional(a, {&d_h_rec});
  check(c_prev.dim() == 2, "c_prev must be (B, H)");
  const Sizes s{c_prev.size(0), c_prev.size(1)};
  check_numel(s.B * 4 * s.H, {&a, &u, &gates, &d_pre}, "a, u, gates and d_pre must be (B, 4H)");
  check_numel(s.B * s.H, {&d_h, &d_c, &c, &c_hat, &tanh_c, &d_c_prev},
              "d_h, d_c, c, c_hat, tanh_c and d_c_prev must be (B, H)");
  check_optional_numel(s.B * s.H, {&d_h_rec}, "d_h_recurrent must be (B, H)");
  check_numel(4 * s.H, {&mean_h, &inv_h, &mean_x, &inv_x, &gamma_h, &gamma_x, &bias, &d_gamma_h,
                        &d_gamma_x, &d_bias},
              "the gates' parameters, statistics and derivatives must have 4H values");
  check_numel(s.H, {&mean_c, &inv_c, &gamma_c, &beta_c, &d_gamma_c, &d_beta_c},
              "the cell's parameters, statistics and derivatives must have H values");
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "bn_lstm_step_backward", [&] {
    using T = scalar_t;
    const Backward<T> block{
        d_h.const_data_ptr<T>(), optional_data<T>(d_h_rec), d_c.const_data_ptr<T>(),
        c_prev.const_data_ptr<T>(), c.const_data_ptr<T>(),
        normalisation<T>(mean_h, inv_h, mean_x, inv_x, mean_c, inv_c, gamma_h, gamma_x, bias,
                         gamma_c, beta_c),
        batch_statistics, a.data_ptr<T>(), u.data_ptr<T>(), gates.data_ptr<T>(),
        d_pre.data_ptr<T>(), c_hat.data_ptr<T>(), tanh_c.data_ptr<T>(), d_c_prev.data_ptr<T>(),
        d_gamma_h.data_ptr<T>(), d_gamma_x.data_ptr<T>(), d_bias.data_ptr<T>(),
        d_gamma_c.data_ptr<T>(), d_beta_c.data_ptr<T>()};
    for_each_unit_block<T>(block, s);
  });
}

}  // namespace

TORCH_LIBRARY(bn_lstm, m) {
  m.def("step_forward(Tensor a, Tensor u, Tensor c_prev, Tensor gamma_h, Tensor gamma_x, "
        "Tensor bias, Tensor gamma_c, Tensor beta_c, Tensor(a!)? running_mean_h, "
        "Tensor(b!)? running_var_h, Tensor(c!)? running_mean_x, Tensor(d!)? running_var_x, "
        "Tensor(e!)? running_mean_c, Tensor(f!)? running_var_c, bool batch_statistics, "
        "float momentum, float eps, Tensor(g!) mean_h, Tensor(h!) inv_h, Tensor(i!) mean_x, "
        "Tensor(j!) inv_x, Tensor(k!) mean_c, Tensor(l!) inv_c, Tensor(m!) gates, Tensor(n!) c, "
        "Tensor(o!) h) -> ()");
  m.def("step_backward(Tensor d_h, Tensor? d_h_rec, Tensor d_c, Tensor(a!) a, Tensor(b!) u, "
        "Tensor c_prev, Tensor c, Tensor mean_h, Tensor inv_h, Tensor mean_x, Tensor inv_x, "
        "Tensor mean_c, Tensor inv_c, Tensor gamma_h, Tensor gamma_x, Tensor bias, "
        "Tensor gamma_c, Tensor beta_c, bool batch_statistics, Tensor(c!) gates, "
        "Tensor(d!) d_pre, Tensor(e!) c_hat, Tensor(f!) tanh_c, Tensor(g!) d_c_prev, "
        "Tensor(h!) d_gamma_h, Tensor(i!) d_gamma_x, Tensor(j!) d_bias, Tensor(k!) d_gamma_c, "
        "Tensor(l!) d_beta_c) -> ()");
}

TORCH_LIBRARY_IMPL(bn_lstm, CPU, m) {
  m.impl("step_forward", &step_forward);
  m.impl("step_backward", &step_backward);
}
