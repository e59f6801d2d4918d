// The multi-state chunkwise form's per-chunk stages: the forward as LibTorch ops, and the autograd function
// whose backward is written out. With γ the chunk-local cumsum of the log gates, D_ij = exp(γ_i − γ_j)
// (j ≤ i), P = (q kᵀ) ⊙ D and, for the delta rule, A = tril₋₁(β ⊙ (k kᵀ) ⊙ D), T = (I + A)⁻¹,
// X = β exp(γ) ⊙ k, W = T X and R = P T (R = P for SSD):
//   intra = (R ⊙ Λ) v'        (v' = β v, or v)
//   q̃ = exp(γ) ⊙ q − P W      (exp(γ) ⊙ q for SSD)
//   k̃ = exp(γ_last − γ) ⊙ k,  e = exp(γ_last)
// Shapes: B batch, H heads, N chunks, C chunk length, K key dim, V value dim.
#include "dla/memory/intra_chunk.h"

#include <cstdint>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/record_function.h>
#include <c10/core/DispatchKeySet.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>

#include "dla/ops/common.h"
#include "dla/ops/fused.h"
#include "dla/ops/kernel_buffers.h"
#include "dla/ops/tf32_scope.h"

#if defined(DLA_WITH_CUDA)
#include <c10/cuda/CUDAGuard.h>

#include "intra_chunk_forward_kernel.h"
#include "intra_chunk_gradients_kernel.h"
#endif

namespace dla::memory {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

/// The chunk-local gate terms both directions use.
struct GateTerms {
  at::Tensor gamma_BHNC;
  at::Tensor decay_BHNCC;      ///< D
  at::Tensor exp_gamma_BHNC1;  ///< exp(γ)
  at::Tensor to_end_BHNC1;     ///< exp(γ_last − γ)
};

GateTerms gate_terms(const at::Tensor& g_BHNC) {
  GateTerms gate;
  gate.gamma_BHNC = ops::common::cumsum_gates(g_BHNC);
  gate.decay_BHNCC = ops::common::decay_matrix(gate.gamma_BHNC);
  gate.to_end_BHNC1 = (gate.gamma_BHNC.select(-1, -1).unsqueeze(-1) - gate.gamma_BHNC).exp().unsqueeze(-1);
  gate.exp_gamma_BHNC1 = gate.gamma_BHNC.exp().unsqueeze(-1);
  return gate;
}

at::Tensor transposed(const at::Tensor& x) {
  return x.transpose(-1, -2);
}

/// [..., R, X] as one batch of matrices [-1, R, X] (a view; transposed operands stay strided).
at::Tensor batched(const at::Tensor& x) {
  return x.reshape({-1, x.size(-2), x.size(-1)});
}

/// acc += alpha · a b, accumulated by the batched GEMM itself (no product tensor, no separate add). `acc` is
/// contiguous.
void add_products(at::Tensor& acc, const at::Tensor& a, const at::Tensor& b, double alpha = 1) {
  batched(acc).baddbmm_(batched(a), batched(b), /*beta=*/1, alpha);
}

/// c + alpha · a b as a new tensor shaped like c, from one batched GEMM.
at::Tensor plus_products(const at::Tensor& c, const at::Tensor& a, const at::Tensor& b, double alpha = 1) {
  return at::baddbmm(batched(c), batched(a), batched(b), /*beta=*/1, alpha).view(c.sizes());
}

at::Tensor decayed_products(const at::Tensor& a_BHNCX, const at::Tensor& b_BHNCX, const GateTerms& gate) {
  return a_BHNCX.matmul(transposed(b_BHNCX)).mul_(gate.decay_BHNCC);
}

/// How the forward gets k̃, e and the delta rule's T and W.
enum class Basis {
  kAutogradOps,  ///< LibTorch ops that autograd differentiates
  kOps,          ///< the same ops, inside the autograd function
  kKernel,       ///< prepare_chunks' CUDA kernel (the single-state op's), inside the autograd function
};

/// [B, H, N, C, ...] read as [B, N·C, H, ...]: the token layout prepare_chunks takes (a view).
at::Tensor token_view(const at::Tensor& x_BHNC_) {
  std::vector<int64_t> shape = {x_BHNC_.size(0), x_BHNC_.size(1), x_BHNC_.size(2) * x_BHNC_.size(3)};
  shape.insert(shape.end(), x_BHNC_.sizes().begin() + 4, x_BHNC_.sizes().end());
  return x_BHNC_.view(shape).transpose(1, 2);
}

bool basis_kernel_applies(const IntraChunkInputs& in) {
  return ops::fused::chunk_stages_apply(token_view(in.q_BHNCK), token_view(in.k_BHNCK),
                                        token_view(in.v_BHNCV), in.lam_in_BHNCC.scalar_type(),
                                        in.q_BHNCK.size(3));
}

/// `in` with q, k and v as contiguous tensors in the compute dtype, for the LibTorch-op paths.
IntraChunkInputs in_compute_dtype(IntraChunkInputs in) {
  const at::ScalarType dtype = in.lam_in_BHNCC.scalar_type();
  for (at::Tensor* x : {&in.q_BHNCK, &in.k_BHNCK, &in.v_BHNCV}) {
    if (x->scalar_type() != dtype) *x = x->to(dtype).contiguous();
  }
  return in;
}

#if defined(DLA_WITH_CUDA)
/// Whether q, k and v are bf16 or float32 CUDA tensors of one dtype, as the kernels read them.
bool kernel_reads_tokens(const IntraChunkInputs& in) {
  const at::ScalarType type = in.q_BHNCK.scalar_type();
  return in.q_BHNCK.is_cuda() && (type == at::kFloat || type == at::kBFloat16) &&
         in.k_BHNCK.scalar_type() == type && in.v_BHNCV.scalar_type() == type;
}

kernels::IntraChunkGradientDims kernel_dims(const IntraChunkInputs& in) {
  const at::Tensor& q = in.q_BHNCK;
  return {q.size(0) * q.size(1) * q.size(2),
          q.size(1),
          q.size(2),
          q.size(3),
          q.size(4),
          in.v_BHNCV.size(4),
          in.beta_BHNC.defined()};
}

/// x_BHNC_ (q, k, v or one of their gradients) as the kernels address it: in place where its rows are
/// contiguous and its strides and start suit four-element loads, else a contiguous copy, which `kept` holds.
kernels::ChunkedRows chunked_rows(const at::Tensor& x_BHNC_, at::Tensor& kept) {
  const int64_t vector = 4;
  bool in_place =
      x_BHNC_.stride(4) == 1 &&
      reinterpret_cast<std::uintptr_t>(x_BHNC_.data_ptr()) % (vector * x_BHNC_.element_size()) == 0;
  for (int d = 0; d < 4; ++d)
    in_place = in_place && x_BHNC_.stride(d) % vector == 0;
  kept = in_place ? x_BHNC_ : ops::kernel_buffer(x_BHNC_);
  return {kept.data_ptr(), kept.stride(0), kept.stride(1),
          kept.stride(2),  kept.stride(3), kept.scalar_type() == at::kBFloat16};
}

/// x as the kernels read it: contiguous float32, aligned to the 32 bytes a tensor-core fragment load needs.
/// Undefined stays undefined.
at::Tensor kernel_input(const at::Tensor& x) {
  if (!x.defined()) return x;
  at::Tensor buffer = ops::kernel_buffer(x);
  if (reinterpret_cast<std::uintptr_t>(buffer.data_ptr()) % 32 != 0) buffer = buffer.clone();
  return buffer;
}

/// intra, q̃ and v' from the forward kernel, given prepare_chunks' γ, T and W (in t); false where the kernel
/// does not run these inputs (the caller runs prepare_chunks, so basis_kernel_applies holds).
bool forward_kernel_terms(const IntraChunkInputs& in, const at::Tensor& gamma_BHNC, IntraChunkTerms& t) {
  if (!intra_chunk_forward_uses_cuda_kernel(in)) return false;
  const kernels::IntraChunkGradientDims dims = kernel_dims(in);
  at::Tensor q_kept, k_kept, v_kept;
  const kernels::ChunkedRows q = chunked_rows(in.q_BHNCK, q_kept), k = chunked_rows(in.k_BHNCK, k_kept),
                             v = chunked_rows(in.v_BHNCV, v_kept);
  const at::Tensor beta = kernel_input(in.beta_BHNC), lam_in = kernel_input(in.lam_in_BHNCC),
                   gamma = kernel_input(gamma_BHNC), t_inverse = kernel_input(t.t_inverse_BHNCC),
                   w = kernel_input(t.w_BHNCK);
  const auto options = lam_in.options();
  t.intra_BHNCV = at::empty(in.v_BHNCV.sizes(), options);
  t.transported_q_BHNCK = at::empty(in.q_BHNCK.sizes(), options);
  t.source_v_BHNCV = dims.delta_rule ? at::empty(in.v_BHNCV.sizes(), options) : at::Tensor();
  if (in.bf16_copies) {
    t.bf16.transported_q_BHNCK = at::empty_like(t.transported_q_BHNCK, options.dtype(at::kBFloat16));
    if (dims.delta_rule)
      t.bf16.source_v_BHNCV = at::empty_like(t.source_v_BHNCV, options.dtype(at::kBFloat16));
  }
  const auto copy = [](const at::Tensor& x) { return x.defined() ? x.data_ptr() : nullptr; };
  const char* error = kernels::intra_chunk_forward(
      {q, k, v, ops::data_or_null(beta), lam_in.data_ptr<float>(), gamma.data_ptr<float>(),
       ops::data_or_null(t_inverse), ops::data_or_null(w), t.intra_BHNCV.data_ptr<float>(),
       t.transported_q_BHNCK.data_ptr<float>(),
       dims.delta_rule ? t.source_v_BHNCV.data_ptr<float>() : nullptr, copy(t.bf16.transported_q_BHNCK),
       copy(t.bf16.source_v_BHNCV)},
      dims, ops::current_cuda_stream(lam_in));
  TORCH_CHECK(error == nullptr, "memory per-chunk stages forward: CUDA kernel failed: ", error);
  return true;
}
#endif

IntraChunkTerms run_forward(const IntraChunkInputs& in, Basis basis) {
  IntraChunkTerms t;
  const bool delta_rule = in.beta_BHNC.defined();
  at::Tensor gamma_BHNC, decay_BHNCC;
  if (basis == Basis::kKernel) {
    // The copies come from the kernels of both stages, or not at all.
    const bool copies = in.bf16_copies && intra_chunk_forward_uses_cuda_kernel(in);
    ops::fused::PreparedChunks prepared =
        ops::fused::prepare_chunks(token_view(in.k_BHNCK), token_view(in.v_BHNCV), token_view(in.g_BHNC),
                                   delta_rule ? token_view(in.beta_BHNC) : at::Tensor(), in.q_BHNCK.size(3),
                                   {.written_values = false, .bf16_copies = copies});
    gamma_BHNC = prepared.gamma_BHMC;
    t.k_to_end_BHNCK = prepared.k_to_end_BHMCK;
    t.chunk_decay_BHN = prepared.chunk_decay_BHM;
    t.w_BHNCK = prepared.w_BHMCK;
    t.t_inverse_BHNCC = prepared.inverse_BHMCC;
    t.bf16.k_to_end_BHNCK = prepared.k_to_end_bf16_BHMCK;
    t.bf16.w_BHNCK = prepared.w_bf16_BHMCK;
    t.bf16.t_inverse_BHNCC = prepared.inverse_bf16_BHMCC;
#if defined(DLA_WITH_CUDA)
    if (forward_kernel_terms(in, gamma_BHNC, t)) return t;
#endif
    decay_BHNCC = ops::common::decay_matrix(gamma_BHNC);
  } else {
    const GateTerms gate = gate_terms(in.g_BHNC);
    gamma_BHNC = gate.gamma_BHNC;
    decay_BHNCC = gate.decay_BHNCC;
    t.k_to_end_BHNCK = in.k_BHNCK * gate.to_end_BHNC1;
    t.chunk_decay_BHN = gamma_BHNC.select(-1, -1).exp();
    if (delta_rule) {
      const at::Tensor beta_BHNC1 = in.beta_BHNC.unsqueeze(-1);
      const at::Tensor a_BHNCC =
          (beta_BHNC1 * in.k_BHNCK.matmul(transposed(in.k_BHNCK)) * decay_BHNCC).tril(/*diagonal=*/-1);
      t.t_inverse_BHNCC = basis == Basis::kAutogradOps
                              ? ops::fused::differentiable_unit_lower_inverse(a_BHNCC)
                              : ops::fused::unit_lower_inverse(a_BHNCC);
      t.w_BHNCK = t.t_inverse_BHNCC.matmul((beta_BHNC1 * gate.exp_gamma_BHNC1) * in.k_BHNCK);
    }
  }
  const at::Tensor exp_gamma_BHNC1 = gamma_BHNC.exp().unsqueeze(-1);
  const at::Tensor qk_decay_BHNCC = in.q_BHNCK.matmul(transposed(in.k_BHNCK)) * decay_BHNCC;
  at::Tensor reads_BHNCC = qk_decay_BHNCC;
  if (delta_rule) {
    // T's product with the causal reads gives each source token's effect on each query, to which Λ applies
    // (reference/loglinear.md §4.2).
    t.source_v_BHNCV = in.beta_BHNC.unsqueeze(-1) * in.v_BHNCV;
    reads_BHNCC = qk_decay_BHNCC.matmul(t.t_inverse_BHNCC);
    t.transported_q_BHNCK = in.q_BHNCK * exp_gamma_BHNC1 - qk_decay_BHNCC.matmul(t.w_BHNCK);
  } else {
    t.source_v_BHNCV = in.v_BHNCV;
    t.transported_q_BHNCK = in.q_BHNCK * exp_gamma_BHNC1;
  }
  t.intra_BHNCV = (reads_BHNCC * in.lam_in_BHNCC).matmul(t.source_v_BHNCV);
  return t;
}

enum Input { kQ, kK, kV, kG, kBeta, kLamIn, kNumInputs };
enum Output { kIntra, kTransportedQ, kKToEnd, kW, kTInverse, kSourceV, kChunkDecay, kNumOutputs };
// The bf16 copies (kNumSlotOperandCopies) follow the outputs, in SlotOperandCopies' order; no gradient
// flows through them.

IntraChunkInputs inputs_of(const variable_list& x, bool delta_rule) {
  return {x[kQ], x[kK], x[kV], x[kG], delta_rule ? x[kBeta] : at::Tensor(), x[kLamIn]};
}

/// The input gradients from the outputs' (every one defined; SSD's W, T and v' are not outputs). `kept`
/// holds the forward's T, W and v' (the slot pass keeps them too); the products the backward needs besides
/// are recomputed from the inputs.
variable_list backward_terms(const IntraChunkInputs& in, const IntraChunkTerms& kept,
                             const variable_list& d_out) {
  const GateTerms gate = gate_terms(in.g_BHNC);
  const at::Tensor &d_intra = d_out[kIntra], &d_transported_q = d_out[kTransportedQ],
                   &d_k_to_end = d_out[kKToEnd];
  const at::Tensor exp_gamma_BHNC = gate.exp_gamma_BHNC1.squeeze(-1);
  const at::Tensor p_BHNCC = decayed_products(in.q_BHNCK, in.k_BHNCK, gate);
  const bool delta_rule = in.beta_BHNC.defined();
  const at::Tensor reads_BHNCC = delta_rule ? p_BHNCC.matmul(kept.t_inverse_BHNCC) : p_BHNCC;
  const at::Tensor& source_v_BHNCV = delta_rule ? kept.source_v_BHNCV : in.v_BHNCV;
  variable_list grads(kNumInputs);

  // intra = (R ⊙ Λ) v': dΛ, dR and dv'.
  const at::Tensor d_weighted_reads_BHNCC = d_intra.matmul(transposed(source_v_BHNCV));
  grads[kLamIn] = d_weighted_reads_BHNCC * reads_BHNCC;
  const at::Tensor d_reads_BHNCC = d_weighted_reads_BHNCC.mul_(in.lam_in_BHNCC);
  const at::Tensor weighted_reads_t_BHNCC = transposed(reads_BHNCC * in.lam_in_BHNCC);
  // q̃ = exp(γ) q − P W, k̃ = exp(γ_last − γ) k.
  at::Tensor d_gamma_BHNC = (d_transported_q * in.q_BHNCK).sum(-1).mul_(exp_gamma_BHNC);
  at::Tensor d_q_BHNCK = d_transported_q * gate.exp_gamma_BHNC1;
  at::Tensor d_k_BHNCK = d_k_to_end * gate.to_end_BHNC1;
  const at::Tensor to_end_terms_BHNC = (d_k_to_end * in.k_BHNCK).sum(-1).mul_(gate.to_end_BHNC1.squeeze(-1));
  at::Tensor d_p_BHNCC, decay_terms_BHNCC;
  if (delta_rule) {
    const at::Tensor& inverse = kept.t_inverse_BHNCC;
    const at::Tensor beta_BHNC1 = in.beta_BHNC.unsqueeze(-1);
    const at::Tensor beta_exp_gamma_BHNC1 = beta_BHNC1 * gate.exp_gamma_BHNC1;
    const at::Tensor d_source_v_BHNCV = plus_products(d_out[kSourceV], weighted_reads_t_BHNCC, d_intra);
    // R = P T, q̃ = exp(γ) q − P W, W = T X with X = β exp(γ) k, T = (I + A)⁻¹: dA = −Tᵀ dT Tᵀ below the
    // diagonal.
    d_p_BHNCC = d_reads_BHNCC.matmul(transposed(inverse));
    add_products(d_p_BHNCC, d_transported_q, transposed(kept.w_BHNCK), -1);
    const at::Tensor d_w_BHNCK = plus_products(d_out[kW], transposed(p_BHNCC), d_transported_q, -1);
    const at::Tensor d_inverse_BHNCC =
        plus_products(d_out[kTInverse], transposed(p_BHNCC), d_reads_BHNCC)
            .add_(d_w_BHNCK.matmul(transposed(in.k_BHNCK)).mul_(transposed(beta_exp_gamma_BHNC1)));
    const at::Tensor d_x_BHNCK = transposed(inverse).matmul(d_w_BHNCK);
    // A = β (k kᵀ ⊙ D), X and v' = β v.
    const at::Tensor kk_decay_BHNCC = decayed_products(in.k_BHNCK, in.k_BHNCK, gate);
    const at::Tensor d_a_BHNCC =
        transposed(inverse).matmul(d_inverse_BHNCC).matmul(transposed(inverse)).tril_(/*diagonal=*/-1).neg_();
    const at::Tensor d_kk_decay_BHNCC = d_a_BHNCC * beta_BHNC1;
    const at::Tensor x_terms_BHNC = (d_x_BHNCK * in.k_BHNCK).sum(-1);
    grads[kBeta] = (d_a_BHNCC * kk_decay_BHNCC)
                       .sum(-1)
                       .addcmul_(x_terms_BHNC, exp_gamma_BHNC)
                       .add_((d_source_v_BHNCV * in.v_BHNCV).sum(-1));
    grads[kV] = beta_BHNC1 * d_source_v_BHNCV;
    d_k_BHNCK.addcmul_(beta_exp_gamma_BHNC1, d_x_BHNCK);
    d_gamma_BHNC.add_(x_terms_BHNC * beta_exp_gamma_BHNC1.squeeze(-1));
    const at::Tensor d_kk_BHNCC = d_kk_decay_BHNCC * gate.decay_BHNCC;
    add_products(d_k_BHNCK, d_kk_BHNCC + transposed(d_kk_BHNCC), in.k_BHNCK);
    decay_terms_BHNCC = d_p_BHNCC * p_BHNCC + d_kk_decay_BHNCC * kk_decay_BHNCC;
  } else {
    d_p_BHNCC = d_reads_BHNCC;
    grads[kV] = weighted_reads_t_BHNCC.matmul(d_intra);
    decay_terms_BHNCC = d_p_BHNCC * p_BHNCC;
  }
  // P = (q kᵀ) ⊙ D.
  const at::Tensor d_qk_BHNCC = d_p_BHNCC * gate.decay_BHNCC;
  add_products(d_q_BHNCK, d_qk_BHNCC, in.k_BHNCK);
  add_products(d_k_BHNCK, transposed(d_qk_BHNCC), in.q_BHNCK);
  grads[kQ] = d_q_BHNCK;
  grads[kK] = d_k_BHNCK;

  // γ: through D (dD ⊙ D adds at row i and subtracts at column j), k̃ and e; then g = γ's reverse cumsum.
  d_gamma_BHNC.add_(decay_terms_BHNCC.sum(-1)).sub_(decay_terms_BHNCC.sum(-2)).sub_(to_end_terms_BHNC);
  d_gamma_BHNC.select(-1, -1).add_(to_end_terms_BHNC.sum(-1) + d_out[kChunkDecay] * kept.chunk_decay_BHN);
  grads[kG] = d_gamma_BHNC.flip(-1).cumsum(-1).flip(-1);
  return grads;
}

#if defined(DLA_WITH_CUDA)
/// The input gradients from the CUDA kernel (grads in Input order, as backward_terms returns them).
variable_list backward_kernel(const IntraChunkInputs& in, const IntraChunkTerms& kept,
                              const variable_list& d_out) {
  const kernels::IntraChunkGradientDims dims = kernel_dims(in);
  const bool delta_rule = dims.delta_rule;
  at::Tensor q_kept, k_kept, v_kept;
  const kernels::ChunkedRows q = chunked_rows(in.q_BHNCK, q_kept), k = chunked_rows(in.k_BHNCK, k_kept),
                             v = chunked_rows(in.v_BHNCV, v_kept);
  const at::Tensor g = kernel_input(in.g_BHNC), beta = kernel_input(in.beta_BHNC),
                   lam_in = kernel_input(in.lam_in_BHNCC);
  const at::Tensor t_inverse = kernel_input(kept.t_inverse_BHNCC), w = kernel_input(kept.w_BHNCK),
                   source_v = kernel_input(kept.source_v_BHNCV),
                   chunk_decay = kernel_input(kept.chunk_decay_BHN);
  variable_list d(kNumOutputs);
  for (int i = 0; i < kNumOutputs; ++i)
    d[i] = kernel_input(d_out[i]);
  variable_list grads(kNumInputs);
  // q, k and v's gradients take their layout and dtype, so that they too are written in place.
  grads[kQ] = at::empty_like(q_kept);
  grads[kK] = at::empty_like(k_kept);
  grads[kV] = at::empty_like(v_kept);
  at::Tensor d_q_kept, d_k_kept, d_v_kept;
  const kernels::ChunkedRows d_q = chunked_rows(grads[kQ], d_q_kept), d_k = chunked_rows(grads[kK], d_k_kept),
                             d_v = chunked_rows(grads[kV], d_v_kept);
  TORCH_INTERNAL_ASSERT(d_q_kept.is_same(grads[kQ]) && d_k_kept.is_same(grads[kK]) &&
                        d_v_kept.is_same(grads[kV]));
  grads[kG] = at::empty_like(g);
  grads[kLamIn] = at::empty_like(lam_in);
  if (delta_rule) grads[kBeta] = at::empty_like(beta);
  const auto data = [](const at::Tensor& x) { return x.defined() ? x.data_ptr<float>() : nullptr; };
  const char* error = kernels::intra_chunk_gradients({q,
                                                      k,
                                                      v,
                                                      g.data_ptr<float>(),
                                                      data(beta),
                                                      lam_in.data_ptr<float>(),
                                                      data(t_inverse),
                                                      data(w),
                                                      chunk_decay.data_ptr<float>(),
                                                      d[kIntra].data_ptr<float>(),
                                                      d[kTransportedQ].data_ptr<float>(),
                                                      d[kKToEnd].data_ptr<float>(),
                                                      data(d[kW]),
                                                      data(d[kTInverse]),
                                                      data(d[kSourceV]),
                                                      d[kChunkDecay].data_ptr<float>(),
                                                      data(source_v),
                                                      d_q,
                                                      d_k,
                                                      d_v,
                                                      grads[kG].data_ptr<float>(),
                                                      data(grads[kBeta]),
                                                      grads[kLamIn].data_ptr<float>()},
                                                     dims, ops::current_cuda_stream(lam_in));
  TORCH_CHECK(error == nullptr, "memory per-chunk stages backward: CUDA kernel failed: ", error);
  return grads;
}
#endif

/// Whether the backward runs as the CUDA kernel: float32 compute dtype, q, k and v as the kernel reads them,
/// TF32 allowed where the forward ran, and dims the kernel takes.
bool uses_gradient_kernel([[maybe_unused]] const IntraChunkInputs& in, [[maybe_unused]] bool tf32) {
#if defined(DLA_WITH_CUDA)
  const at::Tensor& q = in.q_BHNCK;
  if (!tf32 || !kernel_reads_tokens(in) || in.lam_in_BHNCC.scalar_type() != at::kFloat) return false;
  const c10::cuda::CUDAGuard device_guard(q.device());
  return kernels::supports_intra_chunk_gradients(kernel_dims(in));
#else
  return false;
#endif
}

class IntraChunkFunction : public torch::autograd::Function<IntraChunkFunction> {
 public:
  /// `inputs` in Input order (β an empty placeholder for SSD), as IntraChunkInputs describes them. Returns
  /// the Output terms, then the bf16 copies (empty placeholders where not written).
  static variable_list forward(AutogradContext* ctx, at::TensorList inputs, bool delta_rule,
                               bool bf16_copies) {
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    variable_list saved(inputs.begin(), inputs.end());
    IntraChunkInputs in = inputs_of(saved, delta_rule);
    in.bf16_copies = bf16_copies;
    if (!intra_chunk_forward_uses_cuda_kernel(in)) in = in_compute_dtype(in);
    const IntraChunkTerms t = run_forward(in, basis_kernel_applies(in) ? Basis::kKernel : Basis::kOps);
    // SSD has no W, T or v' of its own: an empty tensor each, as every output must be a tensor of its own.
    const auto none = [&] { return at::empty({0}, t.intra_BHNCV.options()); };
    const auto or_none = [&](const at::Tensor& x) { return x.defined() ? x : none(); };
    variable_list out = {t.intra_BHNCV,
                         t.transported_q_BHNCK,
                         t.k_to_end_BHNCK,
                         delta_rule ? t.w_BHNCK : none(),
                         delta_rule ? t.t_inverse_BHNCC : none(),
                         delta_rule ? t.source_v_BHNCV : none(),
                         t.chunk_decay_BHN};
    // W, T and v' cost no memory of their own: the slot pass keeps them too.
    for (const Output kept : {kW, kTInverse, kSourceV, kChunkDecay})
      saved.push_back(out[kept]);
    const variable_list copies = {or_none(t.bf16.transported_q_BHNCK), or_none(t.bf16.k_to_end_BHNCK),
                                  or_none(t.bf16.w_BHNCK), or_none(t.bf16.t_inverse_BHNCC),
                                  or_none(t.bf16.source_v_BHNCV)};
    out.insert(out.end(), copies.begin(), copies.end());
    ctx->mark_non_differentiable(copies);
    // The copies get no gradient: none is made up for them (the backward counts missing ones as zero).
    ctx->set_materialize_grads(false);
    ctx->save_for_backward(saved);
    ctx->saved_data["delta_rule"] = delta_rule;
    ctx->saved_data["tf32"] = ops::tf32_allowed();
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    RECORD_FUNCTION("dla::intra_chunk_backward", std::vector<c10::IValue>());
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const bool tf32_allowed = ctx->saved_data["tf32"].toBool();
    const ops::Tf32Scope tf32(tf32_allowed);
    const bool delta_rule = ctx->saved_data["delta_rule"].toBool();
    const variable_list saved = ctx->get_saved_variables();
    IntraChunkInputs in = inputs_of(saved, delta_rule);
    const bool gradient_kernel = uses_gradient_kernel(in, tf32_allowed);
    if (!gradient_kernel) in = in_compute_dtype(in);
    IntraChunkTerms kept;
    kept.w_BHNCK = saved[kNumInputs];
    kept.t_inverse_BHNCC = saved[kNumInputs + 1];
    kept.source_v_BHNCV = saved[kNumInputs + 2];
    kept.chunk_decay_BHN = saved[kNumInputs + 3];
    // Outputs the loss does not reach have no gradient; they count as zero (in the outputs' dtype, the
    // compute dtype, which q, k and v need not have).
    const std::vector<at::Tensor> like = {
        in.v_BHNCV, in.q_BHNCK, in.k_BHNCK, in.k_BHNCK, in.lam_in_BHNCC, in.v_BHNCV, in.g_BHNC.select(-1, 0)};
    variable_list d_out(kNumOutputs);
    for (int i = 0; i < kNumOutputs; ++i) {
      const bool output = delta_rule || (i != kW && i != kTInverse && i != kSourceV);
      if (output) {
        d_out[i] = grad_outputs[i].defined() ? grad_outputs[i]
                                             : at::zeros(like[i].sizes(), in.lam_in_BHNCC.options());
      }
    }
#if defined(DLA_WITH_CUDA)
    variable_list grads =
        gradient_kernel ? backward_kernel(in, kept, d_out) : backward_terms(in, kept, d_out);
#else
    variable_list grads = backward_terms(in, kept, d_out);
#endif
    grads.push_back(at::Tensor());  // delta_rule
    grads.push_back(at::Tensor());  // bf16_copies
    return grads;
  }
};

}  // namespace

bool intra_chunk_forward_uses_cuda_kernel([[maybe_unused]] const IntraChunkInputs& in) {
#if defined(DLA_WITH_CUDA)
  if (!kernel_reads_tokens(in) || in.lam_in_BHNCC.scalar_type() != at::kFloat || !basis_kernel_applies(in))
    return false;
  const c10::cuda::CUDAGuard device_guard(in.q_BHNCK.device());
  return kernels::supports_intra_chunk_forward(kernel_dims(in));
#else
  return false;
#endif
}

bool intra_chunk_backward_uses_cuda_kernel(const IntraChunkInputs& in) {
  return uses_gradient_kernel(in, ops::tf32_allowed());
}

IntraChunkTerms intra_chunk_terms(const IntraChunkInputs& in, bool fused) {
  RECORD_FUNCTION("dla::intra_chunk", std::vector<c10::IValue>());
  if (!fused) return run_forward(in, Basis::kAutogradOps);
  const bool delta_rule = in.beta_BHNC.defined();
  const at::Tensor placeholder = at::empty({0}, in.lam_in_BHNCC.options());
  const variable_list inputs = {
      in.q_BHNCK,     in.k_BHNCK, in.v_BHNCV, in.g_BHNC, delta_rule ? in.beta_BHNC : placeholder,
      in.lam_in_BHNCC};
  const variable_list out = IntraChunkFunction::apply(at::TensorList(inputs), delta_rule, in.bf16_copies);
  IntraChunkTerms t{out[kIntra], out[kTransportedQ], out[kKToEnd], {}, {}, {}, out[kChunkDecay]};
  const auto copy = [&](int i) {
    return out[kNumOutputs + i].numel() > 0 ? out[kNumOutputs + i] : at::Tensor();
  };
  t.bf16 = {copy(0), copy(1), copy(2), copy(3), copy(4)};
  if (delta_rule) {
    t.w_BHNCK = out[kW];
    t.t_inverse_BHNCC = out[kTInverse];
    t.source_v_BHNCV = out[kSourceV];
  } else {
    // SSD writes v itself, which the slot pass takes in the compute dtype.
    t.source_v_BHNCV = in.v_BHNCV.to(in.lam_in_BHNCC.scalar_type(), /*non_blocking=*/false, /*copy=*/false,
                                     at::MemoryFormat::Contiguous);
  }
  return t;
}

}  // namespace dla::memory
