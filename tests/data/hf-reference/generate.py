#!/usr/bin/env python3
"""Reference data from Hugging Face transformers for Herd's HF loader and engine.

For each MoE architecture Herd loads from a Hugging Face directory, builds a
tiny random-weight model with a fixed seed, saves it (config.json +
model.safetensors, float32) and records what transformers computes for fixed
token ids: 8 greedy tokens (argmax, step by step) and the logits of every
position of ids ++ greedy. Herd's test
(tests/worker/hf_reference_test.cc) reads only the files written here, so CI
needs neither Python nor torch.

Pinned peer (install into a throwaway venv, not needed by CI):
    python3 -m venv /tmp/hfvenv
    /tmp/hfvenv/bin/pip install torch==2.5.1 transformers==4.51.3 safetensors==0.5.3
    /tmp/hfvenv/bin/python tests/data/hf-reference/generate.py
"""
import json
import os

import torch
import transformers
from transformers import (MixtralConfig, MixtralForCausalLM, OlmoeConfig, OlmoeForCausalLM,
                          Qwen2MoeConfig, Qwen2MoeForCausalLM, Qwen3MoeConfig,
                          Qwen3MoeForCausalLM)

HERE = os.path.dirname(os.path.abspath(__file__))
IDS = [1, 17, 42, 0, 127, 100, 64, 7, 99, 42, 5, 88]
COMMON = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
              rope_theta=10000.0, tie_word_embeddings=False)

MODELS = {
    "mixtral": (MixtralForCausalLM,
                MixtralConfig(**COMMON, intermediate_size=32, num_local_experts=4,
                              num_experts_per_tok=2)),
    # Shared expert with a sigmoid gate, q/k/v biases, top-k not renormalised.
    "qwen2moe": (Qwen2MoeForCausalLM,
                 Qwen2MoeConfig(**COMMON, intermediate_size=32, moe_intermediate_size=32,
                                shared_expert_intermediate_size=48, num_experts=4,
                                num_experts_per_tok=2, norm_topk_prob=False)),
    # Per-head q/k RMSNorm, head_dim not hidden/heads, top-k renormalised.
    "qwen3moe": (Qwen3MoeForCausalLM,
                 Qwen3MoeConfig(**COMMON, head_dim=24, intermediate_size=32,
                                moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                                norm_topk_prob=True)),
    # q/k RMSNorm over all heads.
    "olmoe": (OlmoeForCausalLM,
              OlmoeConfig(**COMMON, intermediate_size=32, num_experts=4, num_experts_per_tok=2,
                          norm_topk_prob=False)),
}


def main():
    torch.manual_seed(20261122)
    for name, (cls, config) in MODELS.items():
        config.torch_dtype = "float32"
        config._attn_implementation = "eager"
        model = cls(config).eval()
        # Norm weights of 1 and zero biases would hide mistakes: perturb them.
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "norm" in pname:
                    p.add_(torch.randn_like(p) * 0.1)
                elif pname.endswith(".bias"):
                    p.copy_(torch.randn_like(p) * 0.05)
        out_dir = os.path.join(HERE, name)
        model.save_pretrained(out_dir, safe_serialization=True)
        # Greedy by hand (no generate(): its logits processors are not the model):
        # each step feeds the whole sequence and takes the argmax of the last row.
        greedy = []
        with torch.no_grad():
            for _ in range(8):
                step = model(torch.tensor([IDS + greedy])).logits[0, -1]
                greedy.append(int(torch.argmax(step)))
            # Logits of every position of ids ++ greedy (teacher-forced), as
            # herd generate --dump-logits lays them out.
            logits = model(torch.tensor([IDS + greedy])).logits[0].float().contiguous()
        top2 = torch.topk(logits, 2, dim=-1).values
        margin = float((top2[:, 0] - top2[:, 1])[len(IDS) - 1:-1].min())
        logits.numpy().astype("<f4").tofile(os.path.join(out_dir, "logits.f32"))
        with open(os.path.join(out_dir, "reference.json"), "w") as f:
            json.dump({"peer": f"transformers {transformers.__version__}, torch "
                               f"{torch.__version__}", "architecture": cls.__name__,
                       "ids": IDS, "greedy": greedy, "logits_shape": list(logits.shape),
                       "min_greedy_margin_top1_minus_top2": margin}, f, indent=1)
        print(name, list(logits.shape), greedy)


if __name__ == "__main__":
    main()
