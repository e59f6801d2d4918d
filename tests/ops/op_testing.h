// Helpers for the op tests: tensor comparison that reports its errors, random op inputs, gradients of a
// scalar loss, the path of a reference fixture, and the message of an expected c10::Error.
// Shapes: B batch, T tokens, H heads, K key dim, V value dim.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "dla/ops/common.h"
#include "dla/ops/kernels.h"
#include "test_util.h"

namespace dla::test {

/// How far `got` is from `ref`, computed in float64.
struct CloseStats {
  double max_abs_diff = 0;   ///< max |ref - got|
  double rel_rms_error = 0;  ///< ||ref - got|| / ||ref|| (the plain norm of the difference when ref is 0)
};

CloseStats compare(const at::Tensor& ref, const at::Tensor& got);

/// CHECKs that `got` has ref's shape and a relative RMS error of at most `tol`; the name, both errors and
/// the shape are reported with the check. Returns the errors for further checks.
CloseStats expect_close(const std::string& name, const at::Tensor& ref, const at::Tensor& got, double tol);

struct OpSizes {
  int64_t batch = 2;
  int64_t tokens = 8;
  int64_t heads = 2;
  int64_t key_dim = 16;
  int64_t value_dim = 24;
};

/// Inputs of the linear-attention ops in `dtype`: q_BTHK and k_BTHK L2-normalised per head, v_BTHV, a mild
/// log decay g_BTH < 0 (so states carry over several chunks), beta_BTH in (0, 1), and initial_state_BHKV
/// when `with_initial_state` (else undefined). Seeded, so a case draws the same numbers every run.
struct OpInputs {
  at::Tensor q, k, v, g, beta, initial_state;
};
OpInputs random_inputs(const OpSizes& sizes, bool with_initial_state, at::ScalarType dtype, uint64_t seed);

/// Standard normal numbers of `shape` in float64, seeded: fixed weights for a scalar loss.
at::Tensor random_weight(at::IntArrayRef shape, uint64_t seed);

/// The gradient of sum(out * out_weight) + sum(final_state * state_weight) with respect to each of
/// `inputs`, for `op` run on detached copies of them (undefined inputs get undefined gradients). The
/// weights are fixed random tensors, so every output entry matters.
using OpFunction = std::function<ops::OpResult(const std::vector<at::Tensor>&)>;
std::vector<at::Tensor> op_gradients(const OpFunction& op, const std::vector<at::Tensor>& inputs,
                                     const at::Tensor& out_weight, const at::Tensor& state_weight);

/// An op run with a chunk size (0: its naive recurrence) on inputs listed as for op_gradients.
using ChunkedOpFunction = std::function<ops::OpResult(const std::vector<at::Tensor>&, int64_t chunk_size)>;

/// CHECKs that the gradients of `op` at chunk_size equal those of its naive recurrence (chunk 0) for every
/// input, to relative RMS `tol`; `names` label the inputs. Fixed random output and state weights.
void expect_chunk_gradients_match(const ChunkedOpFunction& op, const std::vector<at::Tensor>& inputs,
                                  const std::vector<std::string>& names, int64_t chunk_size, double tol);

/// Sets the process-wide kernel choice (aten or fused path) for one scope.
class KernelChoiceScope {
 public:
  explicit KernelChoiceScope(ops::KernelChoice choice) : previous_(ops::kernel_choice()) {
    ops::set_kernel_choice(choice);
  }
  ~KernelChoiceScope() { ops::set_kernel_choice(previous_); }
  KernelChoiceScope(const KernelChoiceScope&) = delete;
  KernelChoiceScope& operator=(const KernelChoiceScope&) = delete;

 private:
  ops::KernelChoice previous_;
};

/// The message of the c10::Error that `fn` throws, or a text saying that it threw none.
std::string c10_error_message(const std::function<void()>& fn);

}  // namespace dla::test
