// The fused CPU update: one pass over every element of a (device, dtype) bucket, every tensor of
// the bucket in one call, split across threads with at::parallel_for. Each element of params,
// grads and state is read once and written once. The rule is reference.py's; its comments give
// the equations. Built on first use by optimizers/cpu_kernel.py (torch.utils.cpp_extension).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Per-call constants. Branch-free forms of the settings, so that the inner loop vectorises:
//   d = sqrt(s + eps_in) + eps_out          (eps inside or outside the root)
//   b = mu b + lr_in u;  theta -= lr_out (k_u u + k_b b)
//     no momentum: mu = 0, k_u = 1, k_b = 0 (the buffer is not touched)
//     lr inside momentum: lr_in = lr, lr_out = 1; else lr_in = 1, lr_out = lr
//     nesterov: k_u = lr_in, k_b = mu; else k_u = 0, k_b = 1
template <typename T>
struct Coefficients {
  T sign, decay, l2, alpha, one_minus_alpha, correction, eps_in, eps_out;
  T mu, lr_in, lr_out, k_u, k_b;
};

template <typename T, bool Centered, bool Momentum>
void update_span(T* __restrict__ param, const T* __restrict__ grad, T* __restrict__ square_avg,
                 T* __restrict__ grad_avg, T* __restrict__ buffer, int64_t n,
                 const Coefficients<T>& coefficients) {
  const Coefficients<T> c = coefficients;  // locals: loop invariants the compiler can see
  for (int64_t i = 0; i < n; ++i) {
    T p = param[i] * c.decay;                         // decoupled weight decay
    const T g = c.sign * grad[i] + c.l2 * param[i];   // maximize; L2 weight decay
    const T v = c.alpha * square_avg[i] + c.one_minus_alpha * g * g;
    square_avg[i] = v;
    T s = v * c.correction;                           // bias correction: 1 / (1 - a^t)
    if constexpr (Centered) {                         // Graves 2013 eq. 39-40
      const T m = grad_avg[i] + c.one_minus_alpha * (g - grad_avg[i]);
      grad_avg[i] = m;
      const T mean = m * c.correction;
      s -= mean * mean;
    }
    const T u = g / (std::sqrt(s + c.eps_in) + c.eps_out);
    if constexpr (Momentum) {
      const T b = c.mu * buffer[i] + c.lr_in * u;
      buffer[i] = b;
      p -= c.lr_out * (c.k_u * u + c.k_b * b);
    } else {
      p -= c.lr_out * u;
    }
    param[i] = p;
  }
}

template <typename T, bool Centered, bool Momentum>
void update_bucket(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                   const std::vector<at::Tensor>& square_avgs,
                   const std::vector<at::Tensor>& grad_avgs,
                   const std::vector<at::Tensor>& buffers,
                   const std::vector<Coefficients<T>>& coefficients, int64_t grain) {
  const size_t count = params.size();
  std::vector<int64_t> starts(count + 1, 0);  // element offsets of each tensor in the bucket
  for (size_t k = 0; k < count; ++k) starts[k + 1] = starts[k] + params[k].numel();
  at::parallel_for(0, starts[count], grain, [&](int64_t begin, int64_t end) {
    size_t k = std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin() - 1;
    for (int64_t at = begin; at < end; ++k) {
      const int64_t offset = at - starts[k];
      const int64_t n = std::min(end, starts[k + 1]) - at;
      if (n <= 0) continue;  // an empty tensor
      update_span<T, Centered, Momentum>(
          params[k].data_ptr<T>() + offset, grads[k].const_data_ptr<T>() + offset,
          square_avgs[k].data_ptr<T>() + offset,
          Centered ? grad_avgs[k].data_ptr<T>() + offset : nullptr,
          Momentum ? buffers[k].data_ptr<T>() + offset : nullptr, n, coefficients[k]);
      at += n;
    }
  });
}

// Whether every tensor of a list is a contiguous CPU tensor of its param's size and dtype.
bool matches_params(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& others) {
  if (others.size() != params.size()) return false;
  for (size_t k = 0; k < params.size(); ++k) {
    if (!others[k].device().is_cpu() || !others[k].is_contiguous() ||
        others[k].numel() != params[k].numel() ||
        others[k].scalar_type() != params[0].scalar_type()) {
      return false;
    }
  }
  return true;
}

template <typename T>
void update_typed(std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                  const std::vector<at::Tensor>& square_avgs,
                  const std::vector<at::Tensor>& grad_avgs, const std::vector<at::Tensor>& buffers,
                  const std::vector<at::Tensor>& steps, double lr, double alpha, double eps,
                  double weight_decay, double momentum, bool eps_in_sqrt, bool lr_in_momentum,
                  bool decoupled_weight_decay, bool nesterov, bool bias_correction, bool maximize,
                  int64_t grain) {
  std::vector<Coefficients<T>> coefficients(params.size());
  const bool has_momentum = momentum > 0;
  for (size_t k = 0; k < params.size(); ++k) {
    float* step = steps[k].data_ptr<float>();
    *step += 1;  // t after this step
    Coefficients<T>& c = coefficients[k];
    c.sign = maximize ? -1 : 1;
    c.decay = decoupled_weight_decay ? 1 - lr * weight_decay : 1;
    c.l2 = decoupled_weight_decay ? 0 : weight_decay;
    c.alpha = alpha;
    c.one_minus_alpha = 1 - alpha;
    c.correction = bias_correction ? 1 / (1 - std::pow(alpha, static_cast<double>(*step))) : 1;
    c.eps_in = eps_in_sqrt ? eps : 0;
    c.eps_out = eps_in_sqrt ? 0 : eps;
    c.mu = momentum;
    c.lr_in = has_momentum && lr_in_momentum ? lr : 1;
    c.lr_out = has_momentum && lr_in_momentum ? 1 : lr;
    c.k_u = nesterov ? c.lr_in : 0;
    c.k_b = nesterov ? momentum : 1;
  }
  const bool centered = !grad_avgs.empty();
  if (centered && has_momentum) {
    update_bucket<T, true, true>(params, grads, square_avgs, grad_avgs, buffers, coefficients, grain);
  } else if (centered) {
    update_bucket<T, true, false>(params, grads, square_avgs, grad_avgs, buffers, coefficients, grain);
  } else if (has_momentum) {
    update_bucket<T, false, true>(params, grads, square_avgs, grad_avgs, buffers, coefficients, grain);
  } else {
    update_bucket<T, false, false>(params, grads, square_avgs, grad_avgs, buffers, coefficients, grain);
  }
}

// Updates the bucket and returns true, or returns false having touched nothing when the bucket
// is not one this loop takes (another dtype, non-contiguous tensors, state in another dtype).
bool update(std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
            std::vector<at::Tensor> square_avgs, std::vector<at::Tensor> grad_avgs,
            std::vector<at::Tensor> buffers, std::vector<at::Tensor> steps, double lr,
            double alpha, double eps, double weight_decay, double momentum, bool eps_in_sqrt,
            bool lr_in_momentum, bool decoupled_weight_decay, bool nesterov, bool bias_correction,
            bool maximize, int64_t grain) {
  if (params.empty()) return true;
  const auto dtype = params[0].scalar_type();
  const bool centered = !grad_avgs.empty();
  if ((dtype != at::kFloat && dtype != at::kDouble) || !matches_params(params, params) ||
      !matches_params(params, grads) || !matches_params(params, square_avgs) ||
      (centered && !matches_params(params, grad_avgs)) ||
      (momentum > 0 && !matches_params(params, buffers)) || steps.size() != params.size()) {
    return false;
  }
  for (const auto& step : steps) {
    if (step.scalar_type() != at::kFloat || step.numel() != 1 || !step.device().is_cpu()) {
      return false;
    }
  }
  if (dtype == at::kFloat) {
    update_typed<float>(params, grads, square_avgs, grad_avgs, buffers, steps, lr, alpha, eps,
                        weight_decay, momentum, eps_in_sqrt, lr_in_momentum,
                        decoupled_weight_decay, nesterov, bias_correction, maximize, grain);
  } else {
    update_typed<double>(params, grads, square_avgs, grad_avgs, buffers, steps, lr, alpha, eps,
                         weight_decay, momentum, eps_in_sqrt, lr_in_momentum,
                         decoupled_weight_decay, nesterov, bias_correction, maximize, grain);
  }
  return true;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("update", &update, "RMSprop update of one CPU bucket in place; false if it "
        "cannot take the bucket");
}
