# The bf16 numerics of the CUDA attention paths, emulated in numpy against float64: the fused kernel
# (attention.cu: f32 scores, online softmax per 64-key tile in log2 units, unnormalised
# probabilities rounded to bf16 for P.V, the sum from the f32 ones) and the chunked path (q * scale
# in bf16, cuBLAS scores rounded to bf16, softmax in f32, probabilities rounded to bf16), on random
# unit-variance q and k (VGGT's are LayerNorm-ed) and values. Prints each path's largest and mean
# error, averaged over 20 draws.   python3 tools/attention_numerics.py   (needs numpy)
import numpy as np
def bf16(x):
    x = np.asarray(x, dtype=np.float32)
    b = x.view(np.uint32).astype(np.uint64)
    b = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) << 16
    return b.astype(np.uint32).view(np.float32)
rng = np.random.default_rng(0)
def trial(t, d, vscale, tile=64):
    q = bf16(rng.standard_normal((t, d)) * 1.0); k = bf16(rng.standard_normal((t, d))); v = bf16(rng.standard_normal((t, d)) * vscale)
    scale = 1 / np.sqrt(d)
    s = q.astype(np.float64) @ k.T.astype(np.float64) * scale
    p = np.exp(s - s.max(1, keepdims=True)); ref = (p / p.sum(1, keepdims=True)) @ v.astype(np.float64)
    # chunked: bf16(q*scale), scores bf16 (f32 accumulate), softmax f32, probs bf16, PV f32 acc, out bf16
    sc = bf16(bf16(q * np.float32(scale)).astype(np.float32) @ k.T.astype(np.float32))
    e = np.exp(sc - sc.max(1, keepdims=True)); pr = bf16(e / e.sum(1, keepdims=True))
    chunked = bf16(pr @ v)
    # fused: f32 scores, online softmax per tile in log2 units, P bf16 unnormalised, l from f32 p
    s32 = (q.astype(np.float32) @ k.T.astype(np.float32)) * np.float32(scale * np.log2(np.e))
    m = np.full((t, 1), -np.inf, np.float32); l = np.zeros((t, 1), np.float32); o = np.zeros((t, d), np.float32)
    for j in range(0, t, tile):
        st = s32[:, j:j+tile]
        mn = np.maximum(m, st.max(1, keepdims=True)); r = np.exp2(m - mn)
        pp = np.exp2(st - mn); l = l * r + pp.sum(1, keepdims=True)
        o = o * r + bf16(pp) @ v[j:j+tile]; m = mn
    fused = bf16(o / l)
    err = lambda a: np.abs(a - ref).max() / max(1.0, np.abs(ref).max())
    return err(chunked), err(fused), np.abs(chunked - ref).mean(), np.abs(fused - ref).mean()
for t, d, vs in [(4, 16, 1.0), (64, 16, 1.0), (300, 16, 1.0), (300, 64, 1.0), (300, 64, 10.0), (2, 16, 1.0)]:
    r = np.array([trial(t, d, vs) for _ in range(20)])
    print(f"t={t} d={d} v*{vs}: max err chunked {r[:,0].mean():.2e} fused {r[:,1].mean():.2e}; mean abs chunked {r[:,2].mean():.2e} fused {r[:,3].mean():.2e}")
