// Activation checkpointing of the residual blocks: a block's forward keeps only its input, and the backward
// runs the block again, under the autocast setting of the first run, to get its gradients. One more forward
// per block buys the memory of every block's activations.
// Shapes: B batch, T tokens, D model dim.
#pragma once

#include <ATen/core/Tensor.h>

namespace dla::model {

class BlockImpl;

struct CheckpointedBlockOutput {
  at::Tensor h_BTD;
  at::Tensor
      auxiliary_loss;  ///< the block memory's auxiliary loss, differentiable; undefined when it has none
};

/// block.forward(h_BTD) for training, keeping no activations of the block. `block` must outlive the backward
/// pass, and its forward must be deterministic (dla's blocks draw no random numbers).
CheckpointedBlockOutput checkpointed_block_forward(BlockImpl& block, const at::Tensor& h_BTD);

}  // namespace dla::model
