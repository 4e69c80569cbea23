// The elementwise half of one time step of Graves' (2013) LSTM on the CPU, forward and backward,
// each one pass over the batch: graves_lstm.py holds the equations and drives the time loop
// (graves_lstm_triton.py is the same step on CUDA). Vectorised with ATen's Vectorized (Sleef's
// exp) when built with CPU_CAPABILITY_AVX2; built on first use by graves_lstm_cpu.py.
//
// Layout: a row per sequence of the batch; gate rows hold the four gates side by side,
// (i, f, g, o) x H, as nn.LSTM orders them; every tensor is contiguous.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include "lstm_cpu.h"

#include <algorithm>
#include <cstdint>
#include <limits>

namespace {

using lstm_cpu::optional_data;
using lstm_cpu::sigmoid;
using lstm_cpu::tanh;
using lstm_cpu::Vec;

// Forward, eq. 7-11, for one row; r (the recurrent product h_{t-1} W_hh^T) may be null when
// `from_input` already holds the whole pre-activation. Writes the gates (i, f, g, o) after
// their nonlinearities, c_t and h_t.
template <typename T>
void forward_row(const T* a, const T* r, const T* c_prev, const T* peephole, T* gates, T* c,
                 T* h, int64_t H) {
  const T* w_ci = peephole;
  const T* w_cf = peephole + H;
  const T* w_co = peephole + 2 * H;
  for (int64_t j = 0; j < H; j += Vec<T>::size()) {
    const int n = static_cast<int>(std::min<int64_t>(Vec<T>::size(), H - j));
    auto pre = [&](int gate) {
      Vec<T> z = Vec<T>::loadu(a + gate * H + j, n);
      return r ? z + Vec<T>::loadu(r + gate * H + j, n) : z;
    };
    const Vec<T> cp = Vec<T>::loadu(c_prev + j, n);
    const Vec<T> i = sigmoid(pre(0) + Vec<T>::loadu(w_ci + j, n) * cp);    // eq. 7
    const Vec<T> f = sigmoid(pre(1) + Vec<T>::loadu(w_cf + j, n) * cp);    // eq. 8
    const Vec<T> g = tanh(pre(2));
    const Vec<T> ct = f * cp + i * g;                                       // eq. 9
    const Vec<T> o = sigmoid(pre(3) + Vec<T>::loadu(w_co + j, n) * ct);    // eq. 10
    i.store(gates + j, n);
    f.store(gates + H + j, n);
    g.store(gates + 2 * H + j, n);
    o.store(gates + 3 * H + j, n);
    ct.store(c + j, n);
    (o * tanh(ct)).store(h + j, n);                                        // eq. 11
  }
}

// Backward of one row: from dL/dh_t (d_h, plus d_h_rec if given) and dL/dc_t (d_c) to the four
// pre-activation derivatives, each clipped to [-bound, bound], and dL/dc_{t-1}; adds this step's
// share of the peephole derivatives to the row's sums (d_peephole: w_ci, w_cf, w_co rows).
template <typename T>
void backward_row(const T* d_h, const T* d_h_rec, const T* d_c, const T* gates, const T* c,
                  const T* c_prev, const T* peephole, T bound, T* d_pre, T* d_c_prev,
                  T* d_peephole, int64_t H) {
  const T* w_ci = peephole;
  const T* w_cf = peephole + H;
  const T* w_co = peephole + 2 * H;
  const Vec<T> one(T(1)), hi(bound), lo(-bound);
  auto clip = [&](const Vec<T>& x) { return at::vec::clamp(x, lo, hi); };
  for (int64_t j = 0; j < H; j += Vec<T>::size()) {
    const int n = static_cast<int>(std::min<int64_t>(Vec<T>::size(), H - j));
    const Vec<T> i = Vec<T>::loadu(gates + j, n);
    const Vec<T> f = Vec<T>::loadu(gates + H + j, n);
    const Vec<T> g = Vec<T>::loadu(gates + 2 * H + j, n);
    const Vec<T> o = Vec<T>::loadu(gates + 3 * H + j, n);
    const Vec<T> cp = Vec<T>::loadu(c_prev + j, n);
    const Vec<T> ct = Vec<T>::loadu(c + j, n);
    const Vec<T> tc = tanh(ct);
    Vec<T> dh = Vec<T>::loadu(d_h + j, n);
    if (d_h_rec) dh = dh + Vec<T>::loadu(d_h_rec + j, n);
    const Vec<T> d_o = clip(dh * tc * o * (one - o));
    const Vec<T> dc = Vec<T>::loadu(d_c + j, n) + dh * o * (one - tc * tc)
                      + d_o * Vec<T>::loadu(w_co + j, n);
    const Vec<T> d_i = clip(dc * g * i * (one - i));
    const Vec<T> d_f = clip(dc * cp * f * (one - f));
    const Vec<T> d_g = clip(dc * i * (one - g * g));
    d_i.store(d_pre + j, n);
    d_f.store(d_pre + H + j, n);
    d_g.store(d_pre + 2 * H + j, n);
    d_o.store(d_pre + 3 * H + j, n);
    (dc * f + d_i * Vec<T>::loadu(w_ci + j, n) + d_f * Vec<T>::loadu(w_cf + j, n))
        .store(d_c_prev + j, n);
    (Vec<T>::loadu(d_peephole + j, n) + d_i * cp).store(d_peephole + j, n);
    (Vec<T>::loadu(d_peephole + H + j, n) + d_f * cp).store(d_peephole + H + j, n);
    (Vec<T>::loadu(d_peephole + 2 * H + j, n) + d_o * ct).store(d_peephole + 2 * H + j, n);
  }
}

// Rows per thread chunk: a chunk should hold about this many elements of the hidden layer, so
// that a small batch stays on one thread (a thread's start-up outweighs its share).
constexpr int64_t GRAIN_ELEMENTS = 16384;

int64_t grain(int64_t H) { return std::max<int64_t>(1, GRAIN_ELEMENTS / std::max<int64_t>(H, 1)); }

void check(bool ok, const char* what) { TORCH_CHECK(ok, "graves_lstm (CPU): ", what); }

void check_tensors(const at::Tensor& reference, std::initializer_list<const at::Tensor*> all) {
  lstm_cpu::check_tensors("graves_lstm", reference, all);
}

void cell_forward(const at::Tensor& from_input, const std::optional<at::Tensor>& recurrent,
                  const at::Tensor& c_prev, const at::Tensor& peephole, const at::Tensor& gates,
                  const at::Tensor& c, const at::Tensor& h) {
  check_tensors(from_input, {&from_input, &c_prev, &peephole, &gates, &c, &h});
  if (recurrent.has_value()) check_tensors(from_input, {&*recurrent});
  const int64_t B = c_prev.size(0), H = c_prev.size(1);
  AT_DISPATCH_FLOATING_TYPES(from_input.scalar_type(), "graves_lstm_cell_forward", [&] {
    const scalar_t* a = from_input.const_data_ptr<scalar_t>();
    const scalar_t* r = optional_data<scalar_t>(recurrent);
    const scalar_t* cp = c_prev.const_data_ptr<scalar_t>();
    const scalar_t* w = peephole.const_data_ptr<scalar_t>();
    scalar_t* gp = gates.data_ptr<scalar_t>();
    scalar_t* cn = c.data_ptr<scalar_t>();
    scalar_t* hn = h.data_ptr<scalar_t>();
    at::parallel_for(0, B, grain(H), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        forward_row(a + b * 4 * H, r ? r + b * 4 * H : nullptr, cp + b * H, w, gp + b * 4 * H,
                    cn + b * H, hn + b * H, H);
      }
    });
  });
}

void cell_backward(const at::Tensor& d_h, const std::optional<at::Tensor>& d_h_recurrent,
                   const at::Tensor& d_c, const at::Tensor& gates, const at::Tensor& c,
                   const at::Tensor& c_prev, const at::Tensor& peephole, double bound,
                   const at::Tensor& d_pre, const at::Tensor& d_c_prev,
                   const at::Tensor& d_peephole) {
  check_tensors(gates,
                {&d_h, &d_c, &gates, &c, &c_prev, &peephole, &d_pre, &d_c_prev, &d_peephole});
  if (d_h_recurrent.has_value()) check_tensors(gates, {&*d_h_recurrent});
  const int64_t B = c.size(0), H = c.size(1);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "graves_lstm_cell_backward", [&] {
    const scalar_t* dh = d_h.const_data_ptr<scalar_t>();
    const scalar_t* dhr = optional_data<scalar_t>(d_h_recurrent);
    const scalar_t* dc = d_c.const_data_ptr<scalar_t>();
    const scalar_t* gp = gates.const_data_ptr<scalar_t>();
    const scalar_t* cn = c.const_data_ptr<scalar_t>();
    const scalar_t* cp = c_prev.const_data_ptr<scalar_t>();
    const scalar_t* w = peephole.const_data_ptr<scalar_t>();
    scalar_t* dz = d_pre.data_ptr<scalar_t>();
    scalar_t* dcp = d_c_prev.data_ptr<scalar_t>();
    scalar_t* dw = d_peephole.data_ptr<scalar_t>();
    const scalar_t clip = static_cast<scalar_t>(
        std::min<double>(bound, std::numeric_limits<scalar_t>::max()));
    at::parallel_for(0, B, grain(H), [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        backward_row(dh + b * H, dhr ? dhr + b * H : nullptr, dc + b * H, gp + b * 4 * H,
                     cn + b * H, cp + b * H, w, clip, dz + b * 4 * H, dcp + b * H,
                     dw + b * 3 * H, H);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY(graves_lstm, m) {
  m.def("cell_forward(Tensor from_input, Tensor? recurrent, Tensor c_prev, Tensor peephole, "
        "Tensor(a!) gates, Tensor(b!) c, Tensor(c!) h) -> ()");
  m.def("cell_backward(Tensor d_h, Tensor? d_h_recurrent, Tensor d_c, Tensor gates, Tensor c, "
        "Tensor c_prev, Tensor peephole, float bound, Tensor(a!) d_pre, Tensor(b!) d_c_prev, "
        "Tensor(c!) d_peephole) -> ()");
}

TORCH_LIBRARY_IMPL(graves_lstm, CPU, m) {
  m.impl("cell_forward", &cell_forward);
  m.impl("cell_backward", &cell_backward);
}
