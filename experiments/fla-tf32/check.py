"""Shows that the gdn_model fixture of flash-linear-attention carries TF32 rounding.

fla ran GatedDeltaNetForCausalLM in training mode, so its Triton chunk kernels computed every dot product
in TF32 (operands truncated to 10 mantissa bits). This script recomputes the model from the fixture's
parameters in plain PyTorch, once in float32 and once with the operands of the chunk dot products
truncated as the tensor cores do, and compares the logits with the fixture's.

Usage: python3 check.py FIXTURE_DIR   (needs torch; a development check, not part of dla)
"""
import json
import struct
import sys

import torch
import torch.nn.functional as F


def load_safetensors(path):
    raw = open(path, "rb").read()
    header_len = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        data = bytearray(raw[base + begin : base + end])
        tensors[name] = torch.frombuffer(data, dtype=torch.float32).reshape(entry["shape"])
    return tensors, json.loads(header["__metadata__"]["config"])


def truncate_to_tf32(x):
    bits = x.contiguous().view(torch.int32) & ~0x1FFF
    return bits.view(torch.float32)


def unit_lower_inverse(a, dot, block=16):
    """(I + a)^-1 for strictly lower a, the way fla's kernel does it: exact 16x16 diagonal blocks, then
    off-diagonal blocks merged with dot products, Ai_ij = -Ai_ii · sum_{k=j}^{i-1} A_ik Ai_kj."""
    n = a.shape[-1]
    blocks = range(0, n, block)
    inverse = torch.zeros_like(a)
    for s in blocks:
        e = min(s + block, n)
        inverse[..., s:e, s:e] = torch.linalg.inv(torch.eye(e - s) + a[..., s:e, s:e])
    for offset in range(1, len(blocks)):
        for i in range(offset, len(blocks)):
            j = i - offset
            si, sj = i * block, j * block
            total = sum(
                dot(a[..., si : si + block, k * block : (k + 1) * block], inverse[..., k * block : (k + 1) * block, sj : sj + block])
                for k in range(j, i)
            )
            inverse[..., si : si + block, sj : sj + block] = -dot(inverse[..., si : si + block, si : si + block], total)
    return inverse


def forward(params, config, ids, tf32):
    def dot(a, b):
        return truncate_to_tf32(a) @ truncate_to_tf32(b) if tf32 else a @ b

    eps = config["norm_eps"]
    heads, head_dim = config["num_heads"], config["head_dim"]

    def rms_norm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def short_conv(x, weight):
        width = weight.shape[-1]
        padded = F.pad(x.transpose(1, 2), (width - 1, 0))
        return F.silu(F.conv1d(padded, weight, groups=x.shape[-1]).transpose(1, 2))

    def l2_norm(x):
        return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + 1e-6)

    def gated_delta_rule_one_chunk(q, k, v, g, beta):
        # [B,H,T,D]; T fits in one chunk of 64, as in the fixture, and the initial state is zero.
        cumulative = g.cumsum(-1)
        decay = torch.exp(cumulative[..., :, None] - cumulative[..., None, :])
        a = (dot(k, k.transpose(-1, -2)) * beta[..., None] * decay).tril(-1)
        inverse = unit_lower_inverse(a, dot) if tf32 else torch.linalg.inv(torch.eye(a.shape[-1]) + a)
        u = dot(inverse, v * beta[..., None])
        return dot((dot(q, k.transpose(-1, -2)) * decay).tril(), u) * head_dim**-0.5

    x = params["model.embeddings.weight"][ids]
    batch, length = ids.shape
    for layer in range(config["num_hidden_layers"]):
        p = lambda name: params[f"model.layers.{layer}.{name}"]
        h = rms_norm(x, p("attn_norm.weight"))
        q, k, v = (short_conv(h @ p(f"attn.{n}_proj.weight").T, p(f"attn.{n}_conv1d.weight")) for n in "qkv")
        q = l2_norm(q.view(batch, length, heads, head_dim)).transpose(1, 2)
        k = l2_norm(k.view(batch, length, heads, head_dim)).transpose(1, 2)
        v = v.view(batch, length, heads, -1).transpose(1, 2)
        beta = torch.sigmoid(h @ p("attn.b_proj.weight").T).transpose(1, 2)
        g = -p("attn.A_log").exp() * F.softplus(h @ p("attn.a_proj.weight").T + p("attn.dt_bias"))
        o = gated_delta_rule_one_chunk(q, k, v, g.transpose(1, 2), beta).transpose(1, 2)
        gate = (h @ p("attn.g_proj.weight").T).view(batch, length, heads, -1)
        o = rms_norm(o, p("attn.o_norm.weight")) * F.silu(gate)
        x = x + o.reshape(batch, length, -1) @ p("attn.o_proj.weight").T
        h = rms_norm(x, p("mlp_norm.weight"))
        x = x + (F.silu(h @ p("mlp.gate_proj.weight").T) * (h @ p("mlp.up_proj.weight").T)) @ p(
            "mlp.down_proj.weight"
        ).T
    return rms_norm(x, params["model.norm.weight"]) @ params["lm_head.weight"].T


def main():
    tensors, config = load_safetensors(f"{sys.argv[1]}/gdn_model.safetensors")
    params = {name[len("param.") :]: t for name, t in tensors.items() if name.startswith("param.")}
    ids = tensors["input_ids"].long()
    reference = tensors["logits"]
    with torch.no_grad():
        for label, tf32 in (("float32", False), ("tf32-truncated dots", True)):
            diff = forward(params, config, ids, tf32) - reference
            print(
                f"{label:20s} relative RMS {(diff.norm() / reference.norm()).item():.2e}  "
                f"max abs {diff.abs().max().item():.2e}  "
                f"position 0 relative {(diff[:, 0].norm() / reference[:, 0].norm()).item():.2e}"
            )


if __name__ == "__main__":
    main()
