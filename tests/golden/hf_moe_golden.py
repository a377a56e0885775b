#!/usr/bin/env python3
"""Golden outputs of Hugging Face transformers' MoE blocks, for tests/golden/hf_moe_golden_test.cpp.

Builds a Mixtral sparse MoE block (softmax top-2, renormalised, no shared expert) and a
DeepSeek-V3 MoE block (sigmoid scores, selection-only correction bias, one shared expert), fills
them with seeded random weights, runs a batch of tokens through each, and writes the inputs, the
weights in hetmoe's layout and the outputs to one safetensors file:
  <case>/x [T, H], <case>/router [E, H], <case>/w13 [E, H, 2F], <case>/w2 [E, F, H],
  <case>/out [T, H], and for deepseek_v3 also bias [E], shared_w13 [2S, H], shared_w2 [H, S].
Exit code 3 (with a message) when transformers is not installed, so the test can skip.

Usage: hf_moe_golden.py OUT.safetensors
"""
import sys

try:
    import torch
    from safetensors.torch import save_file
    from transformers import DeepseekV3Config, MixtralConfig
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as ds
    from transformers.models.mixtral import modeling_mixtral as mx
except ImportError as e:  # the C++ test skips with this reason
    print(f"transformers/safetensors unavailable: {e}")
    sys.exit(3)

H, F, E, K, T = 32, 24, 8, 2, 64


def randomize(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(module.parameters()) + list(module.buffers()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def experts(block):
    # HF: gate_up_proj [E, 2F, H] applied as x @ W^T (gate rows first), down_proj [E, H, F].
    return (block.experts.gate_up_proj.detach().transpose(1, 2).contiguous(),
            block.experts.down_proj.detach().transpose(1, 2).contiguous())


def main():
    out = {}
    x = torch.randn(T, H, generator=torch.Generator().manual_seed(7))

    cfg = MixtralConfig(hidden_size=H, intermediate_size=F, num_local_experts=E,
                        num_experts_per_tok=K)
    mix = mx.MixtralSparseMoeBlock(cfg).eval()
    randomize(mix, 1)
    w13, w2 = experts(mix)
    with torch.no_grad():
        y = mix(x.view(1, T, H)).view(T, H)
    out.update({"mixtral/x": x, "mixtral/router": mix.gate.weight.detach(), "mixtral/w13": w13,
                "mixtral/w2": w2, "mixtral/out": y})

    cfg = DeepseekV3Config(hidden_size=H, moe_intermediate_size=F, n_routed_experts=E,
                           num_experts_per_tok=K, n_shared_experts=1, n_group=1, topk_group=1,
                           routed_scaling_factor=1.0, norm_topk_prob=True)
    dsb = ds.DeepseekV3MoE(cfg).eval()
    randomize(dsb, 2)
    w13, w2 = experts(dsb)
    se = dsb.shared_experts
    with torch.no_grad():
        y = dsb(x.view(1, T, H)).view(T, H)
    out.update({
        "deepseek_v3/x": x, "deepseek_v3/router": dsb.gate.weight.detach(),
        "deepseek_v3/w13": w13, "deepseek_v3/w2": w2,
        "deepseek_v3/bias": dsb.gate.e_score_correction_bias.detach(),
        "deepseek_v3/shared_w13": torch.cat([se.gate_proj.weight, se.up_proj.weight]).detach(),
        "deepseek_v3/shared_w2": se.down_proj.weight.detach(), "deepseek_v3/out": y,
    })
    save_file({k: v.float().clone().contiguous() for k, v in out.items()}, sys.argv[1],
              metadata={"H": str(H), "F": str(F), "E": str(E), "K": str(K),
                        "transformers": __import__("transformers").__version__})


if __name__ == "__main__":
    main()
