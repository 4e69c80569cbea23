// The LSTMs' nonlinearities on ATen's Vectorized, shared by bn_lstm_cpu.cpp and
// graves_lstm_cpu.cpp (cpp_build hashes this header into both builds' names).

#pragma once

#include <ATen/cpu/vec/vec.h>

namespace lstm_vectorized {

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

}  // namespace lstm_vectorized
