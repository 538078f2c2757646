"""Baseline for `spatial-viewer bench mllm`: Hugging Face transformers' Qwen2.5-VL-3B language
model on the same shapes (constant weights, f32 or bf16, CPU), prefill and greedy decode with the
KV cache.

    python models/benches/transformers_qwen.py --prompt-tokens 512 --decode-tokens 16

`--dtype bf16` runs the model in bf16 as PyTorch does on the CPU (oneDNN's bf16 kernels where the
CPU has AVX512-BF16 or AMX): the comparison for `bench mllm --dtype bf16-products`.

Needs torch and transformers==4.51.3 (the version Spatial-MLLM pins). Prints one table row.
"""
import argparse
import resource
import time

import torch
from transformers import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLForConditionalGeneration


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = Qwen2_5_VLConfig(
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6, vocab_size=151936,
        max_position_embeddings=128000, tie_word_embeddings=True,
        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        vision_config={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                       "out_hidden_size": 2048, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31]},
    )
    cfg._attn_implementation = "sdpa"
    t0 = time.time()
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(cfg)
    model = model.to_empty(device="cpu")
    model = model.to(torch.bfloat16) if a.dtype == "bf16" else model.float()
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1e-3)
    model.eval()
    init = time.time() - t0
    rss_after_load = peak_rss_mib()
    ids = (1000 + torch.arange(a.prompt_tokens) % 5000).unsqueeze(0)
    with torch.inference_mode():
        t = time.time()
        # The language model, then lm_head on the last position only (4.51's Qwen2.5-VL has no
        # logits_to_keep; the Rust side also computes only the last row's logits).
        out = model.model(input_ids=ids, use_cache=True)
        nxt = model.lm_head(out.last_hidden_state[:, -1:]).argmax(-1)
        prefill = time.time() - t
        past = out.past_key_values
        t = time.time()
        for _ in range(a.decode_tokens):
            out = model.model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = model.lm_head(out.last_hidden_state[:, -1:]).argmax(-1)
        decode = time.time() - t
    print(f"| transformers {__import__('transformers').__version__} torch {torch.__version__} {a.dtype} | {a.prompt_tokens} | {prefill:.2f} | "
          f"{a.prompt_tokens / prefill:.1f} | {a.decode_tokens} | {decode:.2f} | {a.decode_tokens / decode:.2f} | "
          f"{rss_after_load:.0f} | {peak_rss_mib():.0f} | {init:.1f} |")


if __name__ == "__main__":
    main()
