// The chunkwise form's read weights: the LibTorch path (gathers over the grid of key slots, differentiated by
// autograd) and the autograd function over the CUDA kernels of chunk_levels.cu.
// Shapes: B batch, H heads, N chunks, C chunk length, S slots, L = S + 1 levels.
#include "dla/memory/chunk_level_weights.h"

#include <vector>

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include "dla/memory/segments.h"
#include "dla/ops/kernel_buffers.h"

#if defined(DLA_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>

#include "chunk_levels_kernel.h"
#endif

namespace dla::memory {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

ChunkLevelWeights level_weights_ops(const ChunkLevelInputs& in) {
  const at::Tensor& lam_BHNCL = in.lam_BHNCL;
  const int64_t batch = lam_BHNCL.size(0), heads = lam_BHNCL.size(1), num_chunks = lam_BHNCL.size(2);
  const int64_t C = lam_BHNCL.size(3), S = in.rows_BHNCS.size(4);
  const bool weighted = in.conf_BHNCS.defined();
  const at::Tensor keys_NC = at::arange(num_chunks * C, in.rows_BHNCS.options()).view({num_chunks, C});

  const at::Tensor slot_in_BHNCC = slot_of_keys(in.rows_BHNCS, keys_NC.unsqueeze(1));
  const at::Tensor diagonal_CC = at::eye(C, slot_in_BHNCC.options().dtype(at::kBool));
  const at::Tensor level_in_BHNCC = (slot_in_BHNCC.clamp_min(0) + 1).masked_fill(diagonal_CC, 0);
  at::Tensor intra_BHNCC = lam_BHNCL.gather(-1, level_in_BHNCC.expand({batch, heads, num_chunks, C, C}));
  if (weighted)
    intra_BHNCC =
        intra_BHNCC * in.conf_BHNCS.gather(-1, slot_in_BHNCC.clamp_min(0)).masked_fill(diagonal_CC, 1);

  const at::Tensor slot_x_BHNCS = slot_of_keys(in.rows_BHNCS, in.state_keys_BHNS.unsqueeze(3));
  at::Tensor state_BHNCS =
      lam_BHNCL.gather(-1, (slot_x_BHNCS.clamp_min(0) + 1).expand({batch, heads, num_chunks, C, S})) *
      (slot_x_BHNCS >= 0);
  if (weighted) state_BHNCS = state_BHNCS * in.conf_BHNCS.gather(-1, slot_x_BHNCS.clamp_min(0));
  return {intra_BHNCC, state_BHNCS};
}

#if defined(DLA_WITH_CUDA)
kernels::ChunkLevelDims dims_of(const at::Tensor& lam_BHNCL, const at::Tensor& rows_BHNCS) {
  const int64_t batch = lam_BHNCL.size(0), heads = lam_BHNCL.size(1), num_chunks = lam_BHNCL.size(2);
  const int64_t C = lam_BHNCL.size(3);
  return {.batch = batch,
          .heads = heads,
          .chunks = num_chunks,
          .chunk_size = C,
          .slots = rows_BHNCS.size(4),
          .table_batch_stride = rows_BHNCS.size(0) == 1 ? 0 : rows_BHNCS.size(1) * num_chunks * C,
          .table_head_stride = rows_BHNCS.size(1) == 1 ? 0 : num_chunks * C};
}

/// Inputs lam, conf (an empty placeholder when absent: autograd functions take defined tensors), the
/// contiguous table rows and state keys.
class ChunkLevelFunction : public torch::autograd::Function<ChunkLevelFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& lam_BHNCL,
                               const at::Tensor& conf_BHNCS, const at::Tensor& rows_BHNCS,
                               const at::Tensor& state_keys_BHNS) {
    const c10::cuda::CUDAGuard device_guard(lam_BHNCL.device());
    const kernels::ChunkLevelDims dims = dims_of(lam_BHNCL, rows_BHNCS);
    const bool weighted = conf_BHNCS.numel() > 0;
    const at::Tensor intra_BHNCC = at::empty(
        {dims.batch, dims.heads, dims.chunks, dims.chunk_size, dims.chunk_size}, lam_BHNCL.options());
    const at::Tensor state_BHNCS =
        at::empty({dims.batch, dims.heads, dims.chunks, dims.chunk_size, dims.slots}, lam_BHNCL.options());
    const char* error = kernels::chunk_level_weights(
        rows_BHNCS.data_ptr<int64_t>(), state_keys_BHNS.data_ptr<int64_t>(), lam_BHNCL.data_ptr<float>(),
        weighted ? conf_BHNCS.data_ptr<float>() : nullptr, intra_BHNCC.data_ptr<float>(),
        state_BHNCS.data_ptr<float>(), dims, ops::current_cuda_stream(lam_BHNCL));
    TORCH_CHECK(error == nullptr, "chunk level weights: CUDA kernel failed: ", error);
    ctx->save_for_backward({lam_BHNCL, conf_BHNCS, rows_BHNCS, state_keys_BHNS});
    return {intra_BHNCC, state_BHNCS};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    RECORD_FUNCTION("dla::chunk_level_weights_backward", std::vector<c10::IValue>());
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &lam_BHNCL = saved[0], &conf_BHNCS = saved[1], &rows_BHNCS = saved[2],
                     &state_keys_BHNS = saved[3];
    const c10::cuda::CUDAGuard device_guard(lam_BHNCL.device());
    const kernels::ChunkLevelDims dims = dims_of(lam_BHNCL, rows_BHNCS);
    const bool weighted = conf_BHNCS.numel() > 0;
    const auto gradient = [&](const at::Tensor& grad, at::IntArrayRef sizes) {
      return grad.defined() ? grad.to(at::kFloat).contiguous() : at::zeros(sizes, lam_BHNCL.options());
    };
    const at::Tensor d_intra =
        gradient(grad_outputs[0], {dims.batch, dims.heads, dims.chunks, dims.chunk_size, dims.chunk_size});
    const at::Tensor d_state =
        gradient(grad_outputs[1], {dims.batch, dims.heads, dims.chunks, dims.chunk_size, dims.slots});
    const at::Tensor d_lam = at::empty_like(lam_BHNCL);
    const at::Tensor d_conf = weighted ? at::empty_like(conf_BHNCS) : at::Tensor();
    const char* error = kernels::chunk_level_gradients(
        rows_BHNCS.data_ptr<int64_t>(), state_keys_BHNS.data_ptr<int64_t>(), lam_BHNCL.data_ptr<float>(),
        weighted ? conf_BHNCS.data_ptr<float>() : nullptr, d_intra.data_ptr<float>(),
        d_state.data_ptr<float>(), d_lam.data_ptr<float>(), weighted ? d_conf.data_ptr<float>() : nullptr,
        dims, ops::current_cuda_stream(lam_BHNCL));
    TORCH_CHECK(error == nullptr, "chunk level weights backward: CUDA kernel failed: ", error);
    return {d_lam, d_conf, at::Tensor(), at::Tensor()};
  }
};
#endif

}  // namespace

bool chunk_level_weights_use_cuda_kernels([[maybe_unused]] const ChunkLevelInputs& in) {
#if defined(DLA_WITH_CUDA)
  const at::Tensor& lam = in.lam_BHNCL;
  const at::Tensor& rows = in.rows_BHNCS;
  const auto table_dim_fits = [](int64_t table, int64_t full) { return table == 1 || table == full; };
  return lam.is_cuda() && lam.scalar_type() == at::kFloat && lam.dim() == 5 && rows.dim() == 5 &&
         rows.scalar_type() == at::kLong && rows.device() == lam.device() &&
         table_dim_fits(rows.size(0), lam.size(0)) && table_dim_fits(rows.size(1), lam.size(1)) &&
         rows.size(3) == lam.size(3) && lam.size(4) == rows.size(4) + 1 &&
         lam.size(3) <= kernels::kMaxLevelChunk && rows.size(4) <= kernels::kMaxLevelSlots &&
         (!in.conf_BHNCS.defined() || in.conf_BHNCS.scalar_type() == at::kFloat) &&
         kernels::supports_chunk_levels(dims_of(lam, rows));
#else
  return false;
#endif
}

ChunkLevelWeights chunk_level_weights(const ChunkLevelInputs& in, [[maybe_unused]] bool kernel) {
  RECORD_FUNCTION("dla::chunk_level_weights", std::vector<c10::IValue>());
#if defined(DLA_WITH_CUDA)
  if (kernel && chunk_level_weights_use_cuda_kernels(in)) {
    const at::Tensor& lam = in.lam_BHNCL;
    const at::Tensor rows = in.rows_BHNCS.contiguous();
    const at::Tensor state_keys =
        in.state_keys_BHNS.expand({rows.size(0), rows.size(1), lam.size(2), rows.size(4)}).contiguous();
    const at::Tensor conf =
        in.conf_BHNCS.defined()
            ? in.conf_BHNCS.expand({lam.size(0), lam.size(1), lam.size(2), lam.size(3), rows.size(4)})
                  .contiguous()
            : at::empty({0}, lam.options());
    const variable_list out = ChunkLevelFunction::apply(lam.contiguous(), conf, rows, state_keys);
    return {out[0], out[1]};
  }
#endif
  return level_weights_ops(in);
}

}  // namespace dla::memory
