"""Baseline for `spatial-viewer bench ask`: the same Spatial-MLLM question through upstream's code
(Spatial-MLLM's `SpatialMLLMForConditionalGeneration`, not vendored here, on transformers 4.51.3),
constant weights, f32, CPU: the same synthetic frames, prompt layout and greedy decode.

    python models/benches/upstream_ask.py --upstream /path/to/Spatial-MLLM-checkout \\
        --frames 16 --height 476 --width 644 --prompt-tokens 3200 --decode-tokens 32

Upstream's model holds the Qwen2.5-VL-3B weights, the whole VGGT-1B and the connector: about 25 GB
in f32 before any activation, more than a 23 GB machine has. So the question runs as upstream's
forward runs it, in two processes: `--part encode` (the vision tower, the spatial encoder and the
connector, called exactly as `SpatialMLLMForConditionalGeneration.forward` calls them) and `--part
generate` (upstream's `generate` with the encoders' outputs handed in, the rest of its forward
unchanged). Without `--part`, both run one after the other and one table is printed. VGGT's heads,
which a question never runs, are left out of the encode process (in favour of upstream's memory).

Upstream runs the vision tower with FlashAttention-2's variable-length kernel (GPU only). On the
CPU transformers' "sdpa" vision attention builds a dense [N, N] block-diagonal mask, so PyTorch
takes its unfused path and holds 16 x N x N scores: 10 GB at 16 frames, which does not fit. Here
the vision attention computes the same thing FlashAttention's varlen call does, one `cu_seqlens`
segment (window or frame) at a time through `scaled_dot_product_attention` without a mask;
everything else in the tower is transformers' code.

Needs torch, transformers==4.51.3, huggingface_hub. Upstream imports deepspeed only for ZeRO-3
loading; a stand-in module is installed when it is missing.
"""
import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import types


def vm_hwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak():
    # Resets VmHWM, so each stage's peak is its own (what `bench ask` does too).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class Marks:
    """Stage boundaries with the peak resident memory of the stage that just ended."""

    def __init__(self):
        self.rows = []
        self.last = None

    def mark(self, name):
        now = time.time()
        if self.last is not None:
            prev_name, prev_t = self.last
            self.rows.append({"stage": prev_name, "secs": now - prev_t, "peak_mib": vm_hwm_mib()})
        reset_peak()
        self.last = (name, now) if name is not None else None


def import_upstream(path):
    if path:
        sys.path.insert(0, path)
        # Upstream's VGGT copy imports `vggt.*` relative to its own folder.
        sys.path.insert(0, os.path.join(path, "src", "qwenvl", "external"))
    # transformers' modules first, so they see deepspeed as absent; then the stand-in for
    # upstream's module-level `import deepspeed`.
    import transformers.models.qwen2_5_vl.modeling_qwen2_5_vl  # noqa: F401
    import transformers.integrations  # noqa: F401
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        sys.modules["deepspeed"] = types.ModuleType("deepspeed")
    from src.qwenvl.model.spatial_mllm import SpatialMLLMConfig, SpatialMLLMForConditionalGeneration
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl
    modeling_qwen2_5_vl.Qwen2_5_VLVisionSdpaAttention.forward = segmented_vision_attention
    return SpatialMLLMConfig, SpatialMLLMForConditionalGeneration


def segmented_vision_attention(self, hidden_states, cu_seqlens, rotary_pos_emb=None, position_embeddings=None):
    """transformers 4.51's `Qwen2_5_VLVisionSdpaAttention.forward` with the dense block-diagonal
    mask replaced by one attention call per segment (what `flash_attn_varlen_func` computes)."""
    import torch
    import torch.nn.functional as F
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
    seq_length = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    if position_embeddings is None:
        emb = torch.cat((rotary_pos_emb, rotary_pos_emb), dim=-1)
        cos, sin = emb.cos(), emb.sin()
    else:
        cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
    q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)  # [heads, N, d]
    bounds = cu_seqlens.tolist()
    parts = [F.scaled_dot_product_attention(q[:, a:b], k[:, a:b], v[:, a:b], dropout_p=0.0) for a, b in zip(bounds[:-1], bounds[1:])]
    attn_output = torch.cat(parts, dim=1).transpose(0, 1).reshape(seq_length, -1)
    return self.proj(attn_output)


def synthetic_frames(frames, height, width):
    import numpy as np
    # The formula of `synthetic_frame` in app/src/cli/bench_ask.rs.
    y, x = np.mgrid[0:height, 0:width]
    out = np.empty((frames, height, width, 3), dtype=np.uint8)
    for i in range(frames):
        for c in range(3):
            out[i, :, :, c] = (x * (c + 1) + y * (3 - c) + i * 16 + c * 64) % 256
    return out


def prompt_ids(cfg, video_tokens, total):
    # The layout of `prompt_ids` in app/src/cli/bench_ask.rs (Qwen2.5-VL's chat template).
    im_start, newline = 151644, 198
    words = lambda n, seed: [1000 + (i * 7 + seed) % 5000 for i in range(n)]
    ids = [im_start] + words(8, 1) + [cfg.eos_token_id, newline, im_start] + words(2, 2)
    ids += [cfg.vision_start_token_id] + [cfg.video_token_id] * video_tokens + [cfg.vision_end_token_id]
    tail = 5
    assert total >= len(ids) + 1 + tail, f"--prompt-tokens {total} is too short"
    ids += words(total - len(ids) - tail, 3)
    ids += [cfg.eos_token_id, newline, im_start] + words(1, 4) + [newline]
    return ids


@contextlib.contextmanager
def parameters_on_meta():
    """Parameters are created on the meta device (no memory, no random init); buffers (rotary
    frequencies, VGGT's normalisation constants) stay real, as their constructors compute them."""
    import torch
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def build(a, part):
    import torch
    SpatialMLLMConfig, SpatialMLLMForConditionalGeneration = import_upstream(a.upstream)
    cfg = SpatialMLLMConfig(
        hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1e6, vocab_size=151936,
        max_position_embeddings=128000, tie_word_embeddings=True,
        rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        # The released config's special tokens.
        bos_token_id=151643, eos_token_id=151645, vision_start_token_id=151652, vision_end_token_id=151653,
        image_token_id=151655, video_token_id=151656,
        vision_config={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                       "out_hidden_size": 2048, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                       "tokens_per_second": 2},
        spatial_config={"img_size": 518, "patch_size": 14, "embed_dim": 1024},
        connector_config={"connector_type": "mlp_add", "spatial_embeds_layer_idx": -1},
    )
    cfg._attn_implementation = "sdpa"
    cfg.vision_config._attn_implementation = "sdpa"
    with parameters_on_meta():
        model = SpatialMLLMForConditionalGeneration(cfg)
    vggt = model.spatial_encoder.vggt_model
    vggt.camera_head = vggt.point_head = vggt.depth_head = vggt.track_head = None
    # Each process materialises only what its part runs.
    if part == "encode":
        keep = [model.visual, model.spatial_encoder, model.connector]
        model.model = None
    else:
        keep = [model.model]
        model.visual = model.spatial_encoder = model.connector = None
    for m in keep:
        for sub in m.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None:
                    sub._parameters[name] = torch.nn.Parameter(torch.full(p.shape, 1e-3), requires_grad=False)
    if part == "generate":
        model.lm_head.weight = model.model.embed_tokens.weight  # tied, as the checkpoint is
    model.eval()
    return cfg, model


def run_encode(a, out_path):
    import numpy as np
    import torch
    from transformers import Qwen2VLImageProcessor

    marks = Marks()
    t0 = time.time()
    cfg, model = build(a, "encode")
    init = time.time() - t0
    rss_after_load = vm_hwm_mib()
    frames = synthetic_frames(a.frames, a.height, a.width)
    with torch.inference_mode():
        marks.mark("preparing frames")
        proc = Qwen2VLImageProcessor()
        batch = proc(images=None, videos=[frames], return_tensors="pt")
        pixel_values_videos, grid = batch["pixel_values_videos"], batch["video_grid_thw"]
        video_tchw = [torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0]
        # SpatialMLLMForConditionalGeneration.forward, video branch, step by step.
        marks.mark("Qwen vision tower")
        video_embeds = model.visual(pixel_values_videos.type(model.visual.dtype), grid_thw=grid)
        marks.mark("VGGT aggregator (spatial branch)")
        spatial_embeds_list, patch_start_idx = model.spatial_encoder(video_tchw, grid_thw=grid)
        marks.mark("connector")
        fused = model.connector(video_embeds=video_embeds, spatial_embeds_list=spatial_embeds_list,
                                patch_start_idx=patch_start_idx, grid_thw=grid)
        marks.mark(None)
    torch.save({"fused": fused, "grid": grid}, out_path)
    return {"rows": marks.rows, "init": init, "rss_after_load": rss_after_load, "grid": grid.tolist(),
            "video_tokens": fused.shape[0]}


def run_generate(a, in_path):
    import torch
    saved = torch.load(in_path)
    fused, grid = saved["fused"], saved["grid"]
    t0 = time.time()
    cfg, model = build(a, "generate")
    init = time.time() - t0
    rss_after_load = vm_hwm_mib()
    ids = torch.tensor([prompt_ids(cfg, fused.shape[0], a.prompt_tokens)])

    # The encoders' outputs handed in; everything else in upstream's forward runs as written.
    class Given(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value = value
            self.dtype = torch.float32

        def forward(self, *args, **kwargs):
            return self.value

    model.visual = Given(torch.zeros(fused.shape[0], 1))
    model.spatial_encoder = Given(([None], [0]))
    model.connector = Given(fused)

    marks = Marks()
    calls = []
    model.model.register_forward_pre_hook(lambda m, args: calls.append(time.time()) or (marks.mark("decode") if len(calls) == 2 else None))
    with torch.inference_mode():
        marks.mark("prefill")
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=torch.zeros(1, 1),
            video_grid_thw=grid, video_tchw=[torch.zeros(1)], second_per_grid_ts=torch.tensor([1.0]),
            max_new_tokens=a.decode_tokens, min_new_tokens=a.decode_tokens, do_sample=False,
            temperature=None, top_p=None, top_k=None,
        )
        marks.mark(None)
    generated = out.shape[1] - ids.shape[1]
    return {"rows": marks.rows, "init": init, "rss_after_load": rss_after_load, "prompt_tokens": ids.shape[1],
            "generated": generated}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--upstream", default=os.environ.get("SPATIAL_MLLM_DIR"), help="a Spatial-MLLM checkout (or PYTHONPATH)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--height", type=int, default=476)
    ap.add_argument("--width", type=int, default=644)
    ap.add_argument("--prompt-tokens", type=int, default=3200)
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--part", choices=["encode", "generate"])
    ap.add_argument("--exchange", help="where the encode part leaves the fused embeddings")
    ap.add_argument("--json", help="where a part writes its result")
    a = ap.parse_args()
    import torch
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.part:
        result = run_encode(a, a.exchange) if a.part == "encode" else run_generate(a, a.exchange)
        with open(a.json, "w") as f:
            json.dump(result, f)
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for part in ["encode", "generate"]:
            cmd = [sys.executable, __file__, "--part", part, "--exchange", os.path.join(tmp, "fused.pt"),
                   "--json", os.path.join(tmp, part + ".json")] + [arg for arg in sys.argv[1:]]
            subprocess.run(cmd, check=True)
            with open(os.path.join(tmp, part + ".json")) as f:
                results[part] = json.load(f)
    enc, gen = results["encode"], results["generate"]
    rows = enc["rows"] + gen["rows"]
    import transformers
    print(f"upstream Spatial-MLLM (transformers {transformers.__version__}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads): {a.frames} frames of {a.width}x{a.height}, grid {enc['grid']}, "
          f"{enc['video_tokens']} video tokens, {gen['prompt_tokens']} prompt tokens, {gen['generated']} generated")
    print("| stage | seconds | peak RSS MiB |")
    print("|---|---|---|")
    for r in rows:
        name = r["stage"]
        if name == "prefill":
            name = f"prefill, {gen['prompt_tokens']} tokens"
        elif name == "decode":
            name = f"decode, {gen['generated'] - 1} tokens"
        print(f"| {name} | {r['secs']:.2f} | {r['peak_mib']:.0f} |")
    total = sum(r["secs"] for r in rows)
    print(f"| **total** (frames ready to last token; weights loaded) | {total:.2f} | "
          f"{max(r['peak_mib'] for r in rows):.0f} (two processes) |")
    dec = [r for r in gen["rows"] if r["stage"] == "decode"][0]
    pre = [r for r in gen["rows"] if r["stage"] == "prefill"][0]
    print(f"\nprefill {gen['prompt_tokens'] / pre['secs']:.1f} tokens/s; decode {(gen['generated'] - 1) / dec['secs']:.2f} tokens/s; "
          f"RSS after load: encode {enc['rss_after_load']:.0f} MiB, generate {gen['rss_after_load']:.0f} MiB; "
          f"init {enc['init']:.1f} + {gen['init']:.1f} s")


if __name__ == "__main__":
    main()
