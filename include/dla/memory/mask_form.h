// Multi-state linear attention in its quadratic (mask) form, spec/dla.md §2: the small-T oracle that every
// memory policy (single, fenwick, dla) and every faster form of it is tested against, for both backbones.
// Shapes: B batch, T tokens, H heads, K key dim, V value dim, L number of λ levels.
#pragma once

#include <ATen/core/Tensor.h>

namespace dla::memory {

// The mask forms compute in float32 (float64 when an input is float64) with differentiable ATen ops only, so
// autograd reaches q, k, v, g, beta and, through lam_weights_BHTT, λ and the confidences. They return
// out [B,T,H,V] in q's dtype. Bad shapes, dtypes or devices throw c10::Error naming the sizes.

/// Λ, the per-query level weights gathered into the T×T mask:
///   lam_weights_BHTT[b,h,t,s] = lam_BTHL[b,t,h, level[b,h,t,s]] · conf_BHTT[b,h,t,s]   where level >= 0,
///   0 where level < 0 (above the diagonal, s > t).
/// level is integer, [B,H,T,T] or [T,T] (one table for every batch and head), with levels < L. conf_BHTT is
/// the confidence of the segment holding s at query t (spec §3.4); undefined means 1.
/// Λ is float32, or float64 when lam or conf is.
at::Tensor level_weights(const at::Tensor& level, const at::Tensor& lam_BTHL,
                         const at::Tensor& conf_BHTT = {});

/// Mamba-2 (SSD) mask form: O = scale · ((Q Kᵀ) ⊙ D ⊙ Λ) V per batch and head, D[t,s] = exp(G_t − G_s) for
/// s ≤ t, G = cumsum of the log decay g over T. q_BTHK, k_BTHK, v_BTHV, g_BTH; lam_weights_BHTT = Λ.
at::Tensor ssd_mask_form(const at::Tensor& q_BTHK, const at::Tensor& k_BTHK, const at::Tensor& v_BTHV,
                         const at::Tensor& g_BTH, const at::Tensor& lam_weights_BHTT, double scale);

/// Gated DeltaNet mask form: O = scale · (((tril(Q Kᵀ) · (I + strict_tril(diag(β) K Kᵀ))⁻¹) ⊙ D ⊙ Λ)(β ⊙ V))
/// per batch and head, D and Λ as in ssd_mask_form; q and k already L2-normalised, beta_BTH the write
/// strength.
at::Tensor gdn_mask_form(const at::Tensor& q_BTHK, const at::Tensor& k_BTHK, const at::Tensor& v_BTHV,
                         const at::Tensor& g_BTH, const at::Tensor& beta_BTH,
                         const at::Tensor& lam_weights_BHTT, double scale);

}  // namespace dla::memory
