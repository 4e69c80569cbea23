// What the two LSTM steps in C++ share, bn_lstm_cpu.cpp and graves_lstm_cpu.cpp: the
// nonlinearities on ATen's Vectorized, the tensor checks, optional pointers (cpp_build hashes this
// header into both builds' names).

#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>

#include <initializer_list>
#include <optional>

namespace lstm_cpu {

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
Vec<T> sigmoid(const Vec<T>& x) {
  const Vec<T> one(T(1));
  return one / (one + x.neg().exp());
}

// tanh x = 2 sigmoid(2x) - 1: Sleef's tanh costs several times its exp here (within one ulp of 1
// absolute, as the Triton kernels compute it).
template <typename T>
Vec<T> tanh(const Vec<T>& x) {
  const Vec<T> two(T(2));
  return two * sigmoid(two * x) - Vec<T>(T(1));
}

template <typename T>
const T* optional_data(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<T>() : nullptr;
}

// Every tensor contiguous, on the CPU, in the reference's dtype; `op` names the step in errors.
inline void check_tensors(const char* op, const at::Tensor& reference,
                          std::initializer_list<const at::Tensor*> all) {
  for (const at::Tensor* t : all) {
    TORCH_CHECK(t->is_contiguous(), op, " (CPU): every tensor must be contiguous");
    TORCH_CHECK(t->scalar_type() == reference.scalar_type(), op,
                " (CPU): every tensor must have one dtype");
    TORCH_CHECK(t->device().is_cpu(), op, " (CPU): every tensor must be on the CPU");
  }
}

}  // namespace lstm_cpu
