// Shared argument checks for voxmix's C++ ops: messages name the argument and what was expected.
#pragma once
#include <torch/extension.h>

#define CHECK_CPU(x) TORCH_CHECK(!(x).is_cuda(), #x " must be a CPU tensor, got device ", (x).device())
#define CHECK_DIM(x, n) \
  TORCH_CHECK((x).dim() == (n), #x " must have ", (n), " dimensions, got shape ", (x).sizes())
#define CHECK_FLOATING(x)                                                                      \
  TORCH_CHECK((x).scalar_type() == at::kFloat || (x).scalar_type() == at::kHalf ||              \
                  (x).scalar_type() == at::kBFloat16,                                          \
              #x " must be float32, float16 or bfloat16, got ", (x).scalar_type())
#define CHECK_POSITIVE(v) TORCH_CHECK((v) > 0, #v " must be positive, got ", (v))

// Rows of this many elements or more are worth a thread of their own; below it the thread pool's
// start-up costs more than the copy (measured: ~10 us per parallel region on 2 cores).
constexpr int64_t kGrainElements = 32768;
