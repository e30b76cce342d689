"""Writes a GPT-OSS-layout checkpoint with PyTorch and the public reference dequantizer's output
for it, so that package gptoss can be checked against an implementation that is not ours.

Usage (a machine with torch and safetensors; the reference is openai/gpt-oss's
gpt_oss/torch/weights.py, supplied by the caller and not part of this repository):

    python3 tools/gptoss_reference.py OUTDIR path/to/gpt_oss/torch/weights.py
    FP4MOE_GPTOSS_REF=OUTDIR go test ./gptoss -run TestReferenceDequantizer

OUTDIR receives openai/ (two shards in OpenAI's original names, config.json), huggingface/
(the same tensors in transformers' names) and reference_dequant.safetensors: every layer's
mlp1_weight and mlp2_weight as the reference Checkpoint.get() returns them (bf16), widened to
float32. Sizes are GPT-OSS's (hidden and intermediate 2880) with 4 experts and 2 layers; the
block bytes are uniformly random, scales random in [110, 135) plus the extremes 0, 1 and 254.
(Scale 255 is NaN in E8M0 and is left out: the reference turns it into infinities.)
"""
import importlib.util
import json
import os
import sys

import torch
from safetensors.torch import save_file

E, K, I, LAYERS = 4, 2880, 2880, 2


def main(out, reference):
    spec = importlib.util.spec_from_file_location("gptoss_reference_weights", reference)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    g = torch.Generator().manual_seed(20261127)

    def blocks(rows, cols):
        return torch.randint(0, 256, (E, rows, cols // 32, 16), dtype=torch.uint8, generator=g)

    def scales(rows, cols):
        s = torch.randint(110, 135, (E, rows, cols // 32), dtype=torch.uint8, generator=g)
        s[0, 0, :4] = torch.tensor([0, 1, 254, 127], dtype=torch.uint8)
        return s

    def bf16(*shape):
        return torch.randn(*shape, generator=g).to(torch.bfloat16)

    shards = [{} for _ in range(2)]
    for n in range(LAYERS):
        t = shards[n]
        p = f"block.{n}.mlp."
        t[p + "mlp1_weight.blocks"] = blocks(2 * I, K)
        t[p + "mlp1_weight.scales"] = scales(2 * I, K)
        t[p + "mlp1_bias"] = bf16(E, 2 * I)
        t[p + "mlp2_weight.blocks"] = blocks(K, I)
        t[p + "mlp2_weight.scales"] = scales(K, I)
        t[p + "mlp2_bias"] = bf16(E, K)
        t[p + "gate.weight"] = bf16(E, K)
        t[p + "gate.bias"] = bf16(E)
        t[f"block.{n}.attn.norm.scale"] = torch.ones(K)
    config = {"num_hidden_layers": LAYERS, "num_experts": E, "experts_per_token": 2,
              "hidden_size": K, "intermediate_size": I, "swiglu_limit": 7.0}
    openai = os.path.join(out, "openai")
    os.makedirs(openai, exist_ok=True)
    for i, t in enumerate(shards):
        save_file(t, os.path.join(openai, f"model--{i + 1:05d}-of-{len(shards):05d}.safetensors"))
    with open(os.path.join(openai, "config.json"), "w") as f:
        json.dump(config, f)

    hf_names = {"mlp1_weight.blocks": "experts.gate_up_proj_blocks", "mlp1_weight.scales": "experts.gate_up_proj_scales",
                "mlp1_bias": "experts.gate_up_proj_bias", "mlp2_weight.blocks": "experts.down_proj_blocks",
                "mlp2_weight.scales": "experts.down_proj_scales", "mlp2_bias": "experts.down_proj_bias",
                "gate.weight": "router.weight", "gate.bias": "router.bias"}
    hf = os.path.join(out, "huggingface")
    os.makedirs(hf, exist_ok=True)
    for i, t in enumerate(shards):
        renamed = {}
        for name, v in t.items():
            parts = name.split(".", 3)  # block, n, mlp|attn, rest
            if parts[2] == "mlp":
                renamed[f"model.layers.{parts[1]}.mlp.{hf_names[parts[3]]}"] = v
            else:
                renamed[f"model.layers.{parts[1]}.input_layernorm.weight"] = v
        save_file(renamed, os.path.join(hf, f"model-{i:05d}-of-{len(shards) - 1:05d}.safetensors"))
    hf_config = dict(config, num_local_experts=E, num_experts_per_tok=2)
    del hf_config["num_experts"], hf_config["experts_per_token"]
    with open(os.path.join(hf, "config.json"), "w") as f:
        json.dump(hf_config, f)

    ck = ref.Checkpoint(openai, torch.device("cpu"))
    deq = {}
    for n in range(LAYERS):
        for w in ("mlp1_weight", "mlp2_weight"):
            name = f"block.{n}.mlp.{w}"
            deq[name] = ck.get(name).float().contiguous()
            print(f"{name}: reference dequantizer gives {tuple(deq[name].shape)} {ck.get(name).dtype}")
    save_file(deq, os.path.join(out, "reference_dequant.safetensors"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
