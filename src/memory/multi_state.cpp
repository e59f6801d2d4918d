// The three forms of multi-state linear attention over a segment table (spec/dla.md §2, §4.1, §4.2).
// Shapes: B batch, T tokens, H heads, K key dim, V value dim, S slots, L levels, Q queries, N chunks,
// C chunk length.
#include "dla/memory/multi_state.h"

#include <string_view>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/record_function.h>

#include "dla/memory/chunk_level_weights.h"
#include "dla/memory/intra_chunk.h"
#include "dla/memory/mask_form.h"
#include "dla/memory/slot_pass.h"
#include "dla/ops/common.h"
#include "dla/ops/fused.h"
#include "dla/ops/head_major.h"
#include "dla/ops/kernels.h"
#include "dla/ops/tf32_scope.h"

namespace dla::memory {
namespace {

at::ScalarType check_and_pick_dtype(std::string_view op, const Recurrence& terms, const LevelWeights& weights,
                                    const SegmentTable& segments) {
  ops::common::check_inputs(op, terms.q_BTHK, terms.k_BTHK, terms.v_BTHV, terms.g_BTH, {});
  if (terms.delta_rule()) ops::common::check_token_gate(op, "beta", terms.beta_BTH, terms.q_BTHK);
  const at::Tensor& lam = weights.lam_BTHL;
  TORCH_CHECK(lam.defined() && lam.dim() == 4 && lam.sizes().slice(0, 3) == terms.q_BTHK.sizes().slice(0, 3),
              op, ": lam must be [B, T, H, L] with B, T, H of q ", terms.q_BTHK.sizes(), ", got ",
              lam.defined() ? lam.sizes() : at::IntArrayRef{});
  const at::Tensor& start = segments.start_BHQS;
  TORCH_CHECK(start.defined() && start.dim() == 4 && start.scalar_type() == at::kLong, op,
              ": the segment table must be int64 [B|1, H|1, Q, S]");
  TORCH_CHECK(start.size(3) == lam.size(3) - 1, op, ": the segment table has ", start.size(3),
              " slots but lam has ", lam.size(3), " levels (need slots = levels - 1)");
  TORCH_CHECK(start.size(2) >= terms.q_BTHK.size(1) + 1, op, ": the segment table has ", start.size(2),
              " rows, need T + 1 = ", terms.q_BTHK.size(1) + 1);
  if (weights.conf_BHQS.defined()) {
    TORCH_CHECK(weights.conf_BHQS.dim() == 4 && weights.conf_BHQS.size(2) == start.size(2) &&
                    weights.conf_BHQS.size(3) == start.size(3),
                op, ": conf must be [B, H, Q, S] like the segment table ", start.sizes(), ", got ",
                weights.conf_BHQS.sizes());
  }
  return ops::common::compute_dtype(
      {terms.q_BTHK, terms.k_BTHK, terms.v_BTHV, terms.g_BTH, terms.beta_BTH, lam, weights.conf_BHQS});
}

at::Tensor heads_first(const at::Tensor& x_BTH_, at::ScalarType dtype) {
  return x_BTH_.to(dtype).movedim(1, 2);
}

/// The table's rows as [B, H, rows, S]: broadcast over batch and heads, and past its last row (the state
/// after the last token) repeated, which serves the padded queries of the last chunk.
at::Tensor table_rows(const at::Tensor& x_BHQS, int64_t batch, int64_t heads, int64_t rows) {
  at::Tensor x = x_BHQS.expand({batch, heads, x_BHQS.size(2), x_BHQS.size(3)});
  if (x.size(2) < rows) {
    const at::Tensor last = x.narrow(2, x.size(2) - 1, 1);
    x = at::cat({x, last.expand({batch, heads, rows - x.size(2), x.size(3)})}, /*dim=*/2);
  }
  return x.narrow(2, 0, rows);
}

at::Tensor conf_rows(const LevelWeights& weights, const SegmentTable& segments, int64_t batch, int64_t heads,
                     int64_t rows, at::ScalarType dtype) {
  if (weights.conf_BHQS.defined()) return table_rows(weights.conf_BHQS.to(dtype), batch, heads, rows);
  return at::ones({batch, heads, rows, segments.num_slots()}, weights.lam_BTHL.options().dtype(dtype));
}

/// one_hot_BHXS[..., s, j] = 1 where slot_BHXJ[..., j] == s: the matrix that sums sources into their slots.
at::Tensor slot_matrix(const at::Tensor& slot_BHXJ, int64_t num_slots, at::ScalarType dtype) {
  const at::Tensor slots_S1 = at::arange(num_slots, slot_BHXJ.options()).unsqueeze(-1);
  return (slot_BHXJ.unsqueeze(-2) == slots_S1).to(dtype);
}

/// The slots [first, first + count) outside which no chunk boundary (table rows 0, C, 2C, … and T) has a
/// segment: there the slot pass carries no state and no token lands. Read from the table where it is on the
/// host, or from its host copy; all slots when neither exists (a table made on the device).
struct SlotRange {
  int64_t first = 0, count = 0;
};

SlotRange boundary_slots(const SegmentTable& segments, int64_t tokens, int64_t chunk_size) {
  const int64_t num_slots = segments.num_slots();
  const at::Tensor& host_BHQS = segments.start_BHQS.is_cpu() ? segments.start_BHQS : segments.host_start_BHQS;
  if (!host_BHQS.defined()) return {0, num_slots};
  std::vector<int64_t> rows;
  for (int64_t q = 0; q < tokens; q += chunk_size)
    rows.push_back(q);
  rows.push_back(tokens);
  const at::Tensor held_S =
      (host_BHQS.index_select(2, at::tensor(rows, at::kLong)) >= 0).flatten(0, 2).any(0).contiguous();
  const auto held = held_S.accessor<bool, 1>();
  int64_t first = 0, last = num_slots;
  while (first < last && !held[first])
    ++first;
  while (last > first && !held[last - 1])
    --last;
  return last > first ? SlotRange{first, last - first} : SlotRange{0, num_slots};
}

/// q, k or v for the per-chunk stages: the tokens themselves seen as [B, H, N, C, ·] where `in_place` (the
/// chunk kernels read them there, in their dtype), else a copy in chunk layout and the compute dtype.
at::Tensor chunk_operand(const at::Tensor& x_BTH_, int64_t chunk_size, at::ScalarType dtype, bool in_place) {
  if (!in_place) return ops::common::to_chunks(x_BTH_, chunk_size, dtype);
  return x_BTH_.unflatten(1, {x_BTH_.size(1) / chunk_size, chunk_size}).movedim(3, 1);
}

}  // namespace

at::Tensor quadratic(const Recurrence& terms, const LevelWeights& weights, const SegmentTable& segments) {
  const at::ScalarType dtype = check_and_pick_dtype("memory::quadratic", terms, weights, segments);
  const int64_t batch = terms.q_BTHK.size(0), tokens = terms.q_BTHK.size(1), heads = terms.q_BTHK.size(2);
  const at::Tensor rows_BHTS = table_rows(segments.start_BHQS, batch, heads, tokens);
  const at::Tensor keys_T = at::arange(tokens, rows_BHTS.options());
  const at::Tensor slot_BHTT = slot_of_keys(rows_BHTS, keys_T);
  const at::Tensor query_T1 = keys_T.unsqueeze(-1);
  const at::Tensor past_TT = keys_T < query_T1;
  const at::Tensor level_BHTT =
      at::where(past_TT, slot_BHTT + 1, at::where(keys_T == query_T1, at::zeros_like(slot_BHTT), -1));
  const at::Tensor conf_BHTS = conf_rows(weights, segments, batch, heads, tokens, dtype);
  const at::Tensor conf_BHTT =
      at::where(past_TT, conf_BHTS.gather(3, slot_BHTT.clamp_min(0)), at::ones({}, conf_BHTS.options()));
  const at::Tensor lam_weights_BHTT = level_weights(level_BHTT, weights.lam_BTHL, conf_BHTT);
  if (terms.delta_rule()) {
    return gdn_mask_form(terms.q_BTHK, terms.k_BTHK, terms.v_BTHV, terms.g_BTH, terms.beta_BTH,
                         lam_weights_BHTT, terms.scale);
  }
  return ssd_mask_form(terms.q_BTHK, terms.k_BTHK, terms.v_BTHV, terms.g_BTH, lam_weights_BHTT, terms.scale);
}

MultiStateResult recurrent(const Recurrence& terms, const LevelWeights& weights, const SegmentTable& segments,
                           const at::Tensor& initial_states_BHSKV, int64_t first_position) {
  const at::ScalarType dtype = check_and_pick_dtype("memory::recurrent", terms, weights, segments);
  const int64_t batch = terms.q_BTHK.size(0), tokens = terms.q_BTHK.size(1), heads = terms.q_BTHK.size(2);
  const int64_t key_dim = terms.q_BTHK.size(3), value_dim = terms.v_BTHV.size(3);
  const int64_t num_slots = segments.num_slots();

  const at::Tensor q_BHTK = heads_first(terms.q_BTHK, dtype), k_BHTK = heads_first(terms.k_BTHK, dtype);
  const at::Tensor v_BHTV = heads_first(terms.v_BTHV, dtype);
  const at::Tensor decay_BHT = heads_first(terms.g_BTH, dtype).exp();
  const at::Tensor beta_BHT = terms.delta_rule() ? heads_first(terms.beta_BTH, dtype) : at::Tensor();
  const at::Tensor lam_BHTL = heads_first(weights.lam_BTHL, dtype);
  const at::Tensor start_BHQS = table_rows(segments.start_BHQS, batch, heads, tokens + 1);
  const at::Tensor conf_BHQS = conf_rows(weights, segments, batch, heads, tokens + 1, dtype);

  at::Tensor states_BHSKV = initial_states_BHSKV.defined()
                                ? initial_states_BHSKV.to(dtype)
                                : at::zeros({batch, heads, num_slots, key_dim, value_dim}, q_BHTK.options());
  TORCH_CHECK(states_BHSKV.sizes() == at::IntArrayRef({batch, heads, num_slots, key_dim, value_dim}),
              "memory::recurrent: initial states must be [B, H, S, K, V], got ", states_BHSKV.sizes());
  std::vector<at::Tensor> out_BHV;
  for (int64_t i = 0; i < tokens; ++i) {
    const at::Tensor q_BHK = q_BHTK.select(2, i), k_BHK = k_BHTK.select(2, i);
    const at::Tensor decay_BH11 = decay_BHT.select(2, i).view({batch, heads, 1, 1});
    at::Tensor write_BHV = v_BHTV.select(2, i);
    if (terms.delta_rule()) {
      // S <- a (S - beta k (kᵀ S)) for every state: the delta rule's transition.
      const at::Tensor beta_BH11 = beta_BHT.select(2, i).view({batch, heads, 1, 1});
      const at::Tensor k_BH1K = k_BHK.unsqueeze(2);
      const at::Tensor kS_BHSV = k_BH1K.unsqueeze(2).matmul(states_BHSKV).squeeze(3);
      states_BHSKV = decay_BH11.unsqueeze(2) *
                     (states_BHSKV - beta_BH11.unsqueeze(2) * k_BHK.view({batch, heads, 1, key_dim, 1}) *
                                         kS_BHSV.unsqueeze(3));
      write_BHV = beta_BH11.squeeze(-1) * write_BHV;
    } else {
      states_BHSKV = decay_BH11.unsqueeze(2) * states_BHSKV;
    }
    // The sentinel holds token i's addition alone: qᵀ(k wᵀ) = (q·k) w.
    const at::Tensor lam_BHL = lam_BHTL.select(2, i);
    const at::Tensor sentinel_BHV =
        lam_BHL.select(2, 0).unsqueeze(-1) * (q_BHK * k_BHK).sum(-1, true) * write_BHV;
    const at::Tensor read_BHSV = q_BHK.view({batch, heads, 1, 1, key_dim}).matmul(states_BHSKV).squeeze(3);
    const at::Tensor weight_BHS = lam_BHL.narrow(2, 1, num_slots) * conf_BHQS.select(2, i);
    out_BHV.push_back(terms.scale * (sentinel_BHV + (weight_BHS.unsqueeze(-1) * read_BHSV).sum(2)));

    // Move the states to their slots at the next query; merged segments add up. The token joins the newest.
    const at::Tensor next_rows_BHS = start_BHQS.select(2, i + 1);
    const at::Tensor state_slot_BHS = slot_of_keys(next_rows_BHS, start_BHQS.select(2, i));
    const at::Tensor token_BH1 = at::full({batch, heads, 1}, first_position + i, next_rows_BHS.options());
    const at::Tensor token_slot_BH1 = slot_of_keys(next_rows_BHS, token_BH1);
    const at::Tensor moved_BHSX = slot_matrix(state_slot_BHS, num_slots, dtype)
                                      .matmul(states_BHSKV.reshape({batch, heads, num_slots, -1}));
    const at::Tensor added_BHS11 =
        slot_matrix(token_slot_BH1, num_slots, dtype).view({batch, heads, num_slots, 1, 1});
    states_BHSKV = moved_BHSX.view({batch, heads, num_slots, key_dim, value_dim}) +
                   added_BHS11 * (k_BHK.unsqueeze(-1) * write_BHV.unsqueeze(-2)).unsqueeze(2);
  }
  const at::Tensor out_BTHV = at::stack(out_BHV, /*dim=*/1).to(terms.q_BTHK.scalar_type());
  return {out_BTHV, states_BHSKV};
}

MultiStateResult chunkwise(const Recurrence& terms, const LevelWeights& weights, const SegmentTable& segments,
                           int64_t chunk_size) {
  RECORD_FUNCTION("dla::memory_chunkwise", std::vector<c10::IValue>());
  const at::ScalarType dtype = check_and_pick_dtype("memory::chunkwise", terms, weights, segments);
  const ops::Tf32Scope tf32(ops::tf32_suits(terms.q_BTHK));
  TORCH_CHECK(chunk_size >= 1, "memory::chunkwise: chunk_size must be at least 1, got ", chunk_size);
  namespace common = ops::common;
  const int64_t batch = terms.q_BTHK.size(0), tokens = terms.q_BTHK.size(1), heads = terms.q_BTHK.size(2);
  const int64_t num_slots = segments.num_slots();
  const int64_t num_chunks = (tokens + chunk_size - 1) / chunk_size, padded = num_chunks * chunk_size;
  const int64_t C = chunk_size, S = num_slots;

  const bool fused = ops::use_fused_kernels(terms.q_BTHK);
  const at::Tensor lam_BHNCL = common::to_chunks(weights.lam_BTHL, C, dtype);

  // Levels and confidences: of the chunk's own keys (intra), of the chunk-start states (inter), and the slots
  // that states and tokens move to at the chunk's end (at most token T: the final state is query T's). A
  // table shared by every sequence and head (Fenwick, no confidences) is worked out once and broadcast.
  const bool shared_table = !weights.conf_BHQS.defined();
  const int64_t table_batch = shared_table ? segments.start_BHQS.size(0) : batch;
  const int64_t table_heads = shared_table ? segments.start_BHQS.size(1) : heads;
  const at::Tensor start_BHQS = table_rows(segments.start_BHQS, table_batch, table_heads, padded + 1);
  const at::Tensor rows_BHNCS =
      start_BHQS.narrow(2, 0, padded).view({table_batch, table_heads, num_chunks, C, S});
  const at::Tensor keys_NC = at::arange(padded, start_BHQS.options()).view({num_chunks, C});
  const at::Tensor chunk_start_N = keys_NC.select(1, 0);
  const at::Tensor chunk_end_N = (chunk_start_N + C).clamp_max(tokens);
  const at::Tensor state_keys_BHNS = start_BHQS.index_select(2, chunk_start_N);
  const at::Tensor end_rows_BHNS = start_BHQS.index_select(2, chunk_end_N);
  const at::Tensor conf_BHNCS = shared_table
                                    ? at::Tensor()
                                    : table_rows(weights.conf_BHQS.to(dtype), batch, heads, padded + 1)
                                          .narrow(2, 0, padded)
                                          .view({batch, heads, num_chunks, C, S});
  const ChunkLevelWeights read_weights =
      chunk_level_weights({rows_BHNCS, state_keys_BHNS, lam_BHNCL, conf_BHNCS}, fused);
  const at::Tensor state_move_BHNSS = slot_matrix(slot_of_keys(end_rows_BHNS, state_keys_BHNS), S, dtype)
                                          .expand({batch, heads, num_chunks, S, S});
  const at::Tensor token_move_BHNSC =
      slot_matrix(slot_of_keys(end_rows_BHNS, keys_NC), S, dtype).expand({batch, heads, num_chunks, S, C});

  // Without padding, the fused path's per-chunk kernels read q, k and v where they are.
  const at::ScalarType type = terms.q_BTHK.scalar_type();
  const bool in_place = fused && tokens == padded && terms.q_BTHK.is_cuda() && dtype == at::kFloat &&
                        (type == at::kFloat || type == at::kBFloat16) && terms.k_BTHK.scalar_type() == type &&
                        terms.v_BTHV.scalar_type() == type;
  // The slot pass works only the slots that hold something at a chunk boundary (with Fenwick levels, those
  // of chunk length and up to the sequence's): the others would carry zeros through every chunk.
  const auto [first_slot, used_slots] = boundary_slots(segments, tokens, C);
  // Where the slot pass runs its bf16 kernels, the per-chunk kernels write their operands in bf16 as well.
  const bool compact_states = ops::tf32_suits(terms.q_BTHK);
  const bool bf16_copies = fused && compact_states && terms.q_BTHK.is_cuda() && dtype == at::kFloat &&
                           slot_pass_takes_bf16_copies({batch, heads, num_chunks, C, terms.q_BTHK.size(3),
                                                        terms.v_BTHV.size(3), used_slots},
                                                       terms.q_BTHK.device());
  const IntraChunkTerms intra = intra_chunk_terms(
      {chunk_operand(terms.q_BTHK, C, dtype, in_place), chunk_operand(terms.k_BTHK, C, dtype, in_place),
       chunk_operand(terms.v_BTHV, C, dtype, in_place), common::to_chunks(terms.g_BTH, C, dtype),
       terms.delta_rule() ? common::to_chunks(terms.beta_BTH, C, dtype) : at::Tensor(),
       read_weights.intra_BHNCC, bf16_copies},
      fused);
  const SlotPassResult pass =
      slot_pass({intra.transported_q_BHNCK, read_weights.state_BHNCS.narrow(-1, first_slot, used_slots),
                 intra.k_to_end_BHNCK, intra.w_BHNCK, intra.t_inverse_BHNCC, intra.source_v_BHNCV,
                 intra.chunk_decay_BHN,
                 state_move_BHNSS.narrow(-2, first_slot, used_slots).narrow(-1, first_slot, used_slots),
                 token_move_BHNSC.narrow(-2, first_slot, used_slots), compact_states, intra.bf16},
                fused);
  // Without padding the two parts are summed, scaled and moved back to tokens-major in one pass.
  const at::ScalarType out_dtype = terms.q_BTHK.scalar_type();
  const at::Tensor out_BTHV =
      tokens == padded
          ? ops::from_head_major(intra.intra_BHNCV.flatten(2, 3), pass.inter_BHNCV.flatten(2, 3), terms.scale,
                                 out_dtype)
          : common::from_chunks((intra.intra_BHNCV + pass.inter_BHNCV) * terms.scale, tokens).to(out_dtype);
  const at::Tensor final_states_BHSKV =
      used_slots == S ? pass.final_states_BHSKV
                      : at::constant_pad_nd(pass.final_states_BHSKV,
                                            {0, 0, 0, 0, first_slot, S - first_slot - used_slots});
  return {out_BTHV, final_states_BHSKV};
}

}  // namespace dla::memory
