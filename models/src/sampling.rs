//! Space-aware frame sampling (Spatial-MLLM `sa_sampling.py`): keep confident points, voxelise
//! them on a grid of 1/20 of the smallest bounding-box side, and greedily pick the frames that
//! cover the most not-yet-covered voxels. Exactly upstream's result, in about two passes over the
//! maps: the percentile is bracketed from a sample, one fused pass marks the confident points and
//! grows their box, a second voxelises the marked points and de-duplicates them with a bitset over
//! the grid (no hashing, no sorting of every point).


/// Settings of the sampler; the defaults are upstream's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// Frames to pick (fewer when coverage stops growing).
    pub k: usize,
    /// Confidence percentile (0-100) a point must reach (numpy linear interpolation).
    pub conf_percentile: f64,
    /// Absolute confidence floor (points must be strictly above it).
    pub min_conf: f32,
    /// Voxel size = the smallest bounding-box side / this.
    pub grid_divisions: f32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self { k: 16, conf_percentile: 50.0, min_conf: 0.1, grid_divisions: 20.0 }
    }
}

/// Why each frame was (or was not) picked.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingResult {
    /// Picked frame indices in temporal order.
    pub selected: Vec<usize>,
    /// Picked frames in the order the greedy chose them, with their marginal gain (new voxels).
    pub picks_in_order: Vec<(usize, usize)>,
    pub voxel_size: f32,
    pub bbox_min: [f32; 3],
    pub conf_threshold: f32,
    /// Distinct voxels seen by each frame.
    pub voxels_per_frame: Vec<usize>,
    /// Voxels covered by the picks together.
    pub covered_voxels: usize,
    /// Voxels seen by all frames together.
    pub total_voxels: usize,
}

/// numpy's `percentile(values, q)` with linear interpolation. Exact, in linear time: a radix
/// histogram on the top 16 bits of the values' order-preserving keys finds the buckets of the two
/// order statistics, and only those buckets are searched.
pub fn percentile_linear(values: &[f32], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let ranks = percentile_ranks(values.len(), q);
    let (bracket, below) = KeyBracket::from_histogram(&key_histogram(values), ranks);
    let chunk = values.len().div_ceil(threads_for(values.len())).max(1);
    // The bracket's values in one parallel pass.
    let mut inside: Vec<f32> = std::thread::scope(|s| {
        let parts: Vec<_> = values.chunks(chunk).map(|c| s.spawn(move || c.iter().copied().filter(|&v| bracket.contains(v)).collect::<Vec<f32>>())).collect();
        parts.into_iter().flat_map(|p| p.join().expect("gather thread")).collect()
    });
    interpolate(&mut inside, below, ranks).expect("the histogram's bracket holds both ranks")
}

/// The two ranks numpy's linear percentile interpolates between, and the fraction between them.
#[derive(Clone, Copy)]
struct PercentileRanks {
    lo: usize,
    hi: usize,
    frac: f64,
}

fn percentile_ranks(len: usize, q: f64) -> PercentileRanks {
    let pos = (q / 100.0).clamp(0.0, 1.0) * (len - 1) as f64;
    let lo = pos.floor() as usize;
    PercentileRanks { lo, hi: (lo + 1).min(len - 1), frac: pos - lo as f64 }
}

/// f32 -> u32 with the order of `f32::total_cmp`.
#[inline(always)]
fn order_key(v: f32) -> u32 {
    let b = v.to_bits();
    if b & 0x8000_0000 != 0 { !b } else { b | 0x8000_0000 }
}

/// `order_key` without a branch (the same values), for loops that should vectorise.
#[inline(always)]
fn order_key_branchless(v: f32) -> u32 {
    let b = v.to_bits();
    b ^ ((((b as i32) >> 31) as u32) | 0x8000_0000)
}

fn threads_for(len: usize) -> usize {
    if len < 1 << 16 { 1 } else { std::thread::available_parallelism().map_or(1, |n| n.get()).min(8) }
}

/// Counts of the values per top-16-bit bucket of their order keys.
fn key_histogram(values: &[f32]) -> Vec<usize> {
    let chunk = values.len().div_ceil(threads_for(values.len())).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = values
            .chunks(chunk)
            .map(|c| {
                s.spawn(move || {
                    let mut h = vec![0u32; 1 << 16];
                    for &v in c {
                        h[(order_key(v) >> 16) as usize] += 1;
                    }
                    h
                })
            })
            .collect();
        let mut total = vec![0usize; 1 << 16];
        for p in parts {
            for (t, x) in total.iter_mut().zip(p.join().expect("histogram thread")) {
                *t += x as usize;
            }
        }
        total
    })
}

/// A range of order keys (inclusive) meant to hold the two order statistics a percentile
/// interpolates between: every value below it is below both, every value above it above both.
#[derive(Clone, Copy, Debug)]
struct KeyBracket {
    from: u32,
    to: u32,
}

impl KeyBracket {
    /// The exact bracket: the histogram buckets of the two ranks, and the count below it.
    fn from_histogram(hist: &[usize], ranks: PercentileRanks) -> (Self, usize) {
        let mut before = 0;
        let (mut first, mut last, mut below) = (None, u32::MAX, 0);
        for (i, &n) in hist.iter().enumerate() {
            if first.is_none() && before + n > ranks.lo {
                first = Some(i as u32);
                below = before;
            }
            if before + n > ranks.hi {
                last = i as u32;
                break;
            }
            before += n;
        }
        let first = first.unwrap_or(u32::MAX);
        let bracket = Self { from: first << 16, to: (last << 16) | 0xFFFF }.with_negative_zero();
        if bracket.from < first << 16 {
            below -= hist[(bracket.from >> 16) as usize];
        }
        (bracket, below)
    }

    /// A bracket from a sample of `values`: a few standard errors of the sample quantile either
    /// side. It holds both ranks except with a tiny probability, checked after the pass.
    fn from_sample(values: &[f32], ranks: PercentileRanks) -> Self {
        let n = values.len();
        let m = n.min(SAMPLE);
        let mut keys: Vec<u32> = (0..m).map(|i| order_key(values[sample_index(i, n, m)])).collect();
        let to_sample = |rank: usize| rank as f64 / (n - 1).max(1) as f64 * (m - 1) as f64;
        // The standard error of a sample quantile is at most sqrt(m / 4) samples.
        let margin = 5.0 * (m as f64 / 4.0).sqrt() + 2.0;
        let lo = (to_sample(ranks.lo) - margin).floor().max(0.0) as usize;
        let hi = ((to_sample(ranks.hi) + margin).ceil() as usize).min(m - 1);
        let (_, &mut from, above) = keys.select_nth_unstable(lo);
        let to = if hi > lo { *above.select_nth_unstable(hi - lo - 1).1 } else { from };
        // The sample's extremes are not the population's: open the ends of the range.
        let from = if lo == 0 { 0 } else { from };
        let to = if hi == m - 1 { u32::MAX } else { to };
        Self { from, to }.with_negative_zero()
    }

    /// -0.0 sorts just below +0.0 but compares equal to it: a bracket starting at +0.0 takes it in.
    fn with_negative_zero(self) -> Self {
        let plus_zero = order_key(0.0);
        if self.from & 0xFFFF_0000 == plus_zero { Self { from: self.from.min(order_key(-0.0) & 0xFFFF_0000), ..self } } else { self }
    }

    #[inline(always)]
    fn contains(&self, v: f32) -> bool {
        (self.from..=self.to).contains(&order_key(v))
    }
}

/// Confidences sampled to bracket the percentile.
const SAMPLE: usize = 1 << 16;

/// The i-th of m sampled positions in n values: one per stretch of n/m, at a pseudo-random place
/// in it so that periodic maps do not alias.
fn sample_index(i: usize, n: usize, m: usize) -> usize {
    let (start, end) = ((i as u64 * n as u64 / m as u64) as usize, ((i as u64 + 1) * n as u64 / m as u64) as usize);
    let jitter = ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize;
    start + jitter % (end - start).max(1)
}

/// The percentile from the values inside the bracket (reordered in place) and the count below
/// it; `None` when the bracket misses one of the ranks.
fn interpolate(inside: &mut [f32], below: usize, ranks: PercentileRanks) -> Option<f64> {
    let lo = ranks.lo.checked_sub(below)?;
    let hi = ranks.hi - below;
    if hi >= inside.len() {
        return None;
    }
    let (_, &mut a, rest) = inside.select_nth_unstable_by(lo, f32::total_cmp);
    let b = if hi == lo { a } else { rest.iter().copied().min_by(f32::total_cmp).unwrap_or(a) };
    let (a, b) = (a as f64, b as f64);
    // numpy's _lerp: a + (b - a) * t, mirrored for t >= 0.5 to stay monotonic.
    Some(if ranks.frac >= 0.5 { b - (b - a) * (1.0 - ranks.frac) } else { a + (b - a) * ranks.frac })
}

/// Bits `start..start + len` (len <= 64) of a bitset, as the low bits of a word.
#[inline(always)]
fn bits_at(words: &[u64], start: usize, len: usize) -> u64 {
    let (w, s) = (start / 64, start % 64);
    let mut v = words[w] >> s;
    if s != 0 && w + 1 < words.len() {
        v |= words[w + 1] << (64 - s);
    }
    if len < 64 { v & ((1u64 << len) - 1) } else { v }
}

/// The points that pass the confidence filter (a bitset over all points) and their bounding box.
struct ConfidentPoints {
    mask: Vec<u64>,
    threshold: f64,
    lo: [f32; 3],
    hi: [f32; 3],
    any: bool,
}

/// Points per block of the fused passes: one bitset word.
const BLOCK: usize = 64;

/// Per-thread result of the classification pass.
struct ClassifiedChunk {
    lo: [f32; 3],
    hi: [f32; 3],
    any: bool,
    /// Confidences of the points inside the bracket.
    boundary: Vec<f32>,
    /// Points below the bracket.
    below: usize,
    /// The points inside the bracket, to settle without going back to the maps; `None` past `BOUNDARY_RECORDS`
    /// (nearly constant confidences), where settling scans the boundary bits instead.
    records: Option<Vec<BoundaryPoint>>,
}

/// A point inside the percentile's bracket, recorded during the classification pass.
#[derive(Clone, Copy)]
struct BoundaryPoint {
    conf: f32,
    xyz: [f32; 3],
    /// Position in its thread's chunk.
    offset: u32,
}

/// Boundary points recorded per thread (20 bytes each) before falling back to a scan.
const BOUNDARY_RECORDS: usize = if cfg!(test) { 1 << 10 } else { 1 << 20 };

impl ConfidentPoints {
    /// A bracket around the percentile from a sample, then one fused pass over confidences and
    /// points that keeps every point certainly above it (a bit in the mask, its coordinates in
    /// the box) and records the few inside it, which are settled once the exact percentile is
    /// known.
    fn find(points: &[f32], conf: &[f32], params: &SamplingParams) -> Self {
        let n = conf.len();
        let ranks = percentile_ranks(n, params.conf_percentile);
        let min_conf = params.min_conf;
        let words = n.div_ceil(64);
        let mut mask = vec![0u64; words];
        let mut boundary_mask = vec![0u64; words];
        let words_per_thread = words.div_ceil(threads_for(n)).max(1);
        let mut classify_all = |bracket: KeyBracket| -> Vec<ClassifiedChunk> {
            std::thread::scope(|s| {
                let handles: Vec<_> = mask
                    .chunks_mut(words_per_thread)
                    .zip(boundary_mask.chunks_mut(words_per_thread))
                    .enumerate()
                    .map(|(t, (mask, boundary_mask))| {
                        let first = t * words_per_thread * BLOCK;
                        s.spawn(move || classify(points, conf, first, mask, boundary_mask, bracket, min_conf))
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("classification thread")).collect()
            })
        };
        let gather = |parts: &[ClassifiedChunk]| -> (Vec<f32>, usize) {
            let mut inside = Vec::with_capacity(parts.iter().map(|p| p.boundary.len()).sum());
            for p in parts {
                inside.extend_from_slice(&p.boundary);
            }
            (inside, parts.iter().map(|p| p.below).sum())
        };
        // A bracket from a sample (no pass over the map); if it missed, the exact one from a
        // histogram and a second classification pass.
        let mut parts = classify_all(KeyBracket::from_sample(conf, ranks));
        let (mut inside, below) = gather(&parts);
        let threshold = match interpolate(&mut inside, below, ranks) {
            Some(t) => t,
            None => {
                let (bracket, _) = KeyBracket::from_histogram(&key_histogram(conf), ranks);
                parts = classify_all(bracket);
                let (mut inside, below) = gather(&parts);
                interpolate(&mut inside, below, ranks).expect("the histogram's bracket holds both ranks")
            }
        };
        let (mut lo, mut hi, mut any) = ([f32::INFINITY; 3], [f32::NEG_INFINITY; 3], false);
        let mut records = Vec::with_capacity(parts.len());
        for p in parts {
            lo = [0, 1, 2].map(|a| lo[a].min(p.lo[a]));
            hi = [0, 1, 2].map(|a| hi[a].max(p.hi[a]));
            any |= p.any;
            records.push(p.records);
        }
        // Settle the boundary points, each thread its own words.
        let settled: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = mask
                .chunks_mut(words_per_thread)
                .zip(boundary_mask.chunks(words_per_thread))
                .zip(records)
                .enumerate()
                .map(|(t, ((mask, boundary_mask), records))| {
                    let first = t * words_per_thread * BLOCK;
                    s.spawn(move || match records {
                        Some(records) => settle_recorded(&records, mask, threshold, min_conf),
                        None => settle(points, conf, first, mask, boundary_mask, threshold, min_conf),
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("settling thread")).collect()
        });
        for (l, h, a) in settled {
            lo = [0, 1, 2].map(|i| lo[i].min(l[i]));
            hi = [0, 1, 2].map(|i| hi[i].max(h[i]));
            any |= a;
        }
        Self { mask, threshold, lo, hi, any }
    }
}

/// Eight 0/1 bytes as the low eight bits of a word (byte i -> bit i).
#[inline(always)]
fn pack_bytes(b: &[u8]) -> u64 {
    let x = u64::from_le_bytes(b.try_into().expect("eight bytes"));
    x.wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// 0/1 bytes (a multiple of eight, at most 64) as bits.
#[inline(always)]
fn pack_bits(b: &[u8]) -> u64 {
    b.chunks_exact(8).enumerate().fold(0, |acc, (i, c)| acc | pack_bytes(c) << (8 * i))
}

/// For each byte of keep bits, the 24 coordinate lanes of its eight points (x, y, z each).
static EXPAND_KEEP: [[u8; 24]; 256] = {
    let mut t = [[0u8; 24]; 256];
    let mut bits = 0;
    while bits < 256 {
        let mut lane = 0;
        while lane < 24 {
            t[bits][lane] = ((bits >> (lane / 3)) & 1) as u8;
            lane += 1;
        }
        bits += 1;
    }
    t
};

/// The classification pass over points `first..` (as many as `mask` has bits, whole words).
fn classify(points: &[f32], conf: &[f32], first: usize, mask: &mut [u64], boundary_mask: &mut [u64], bracket: KeyBracket, min_conf: f32) -> ClassifiedChunk {
    multiversion! {
        fn kernel(points: &[f32], conf: &[f32], first: usize, mask: &mut [u64], boundary_mask: &mut [u64], bracket: KeyBracket, min_conf: f32) -> ClassifiedChunk {
            // Eight points' worth of lanes, so blocks reduce with vector min/max.
            let mut lo24 = [f32::INFINITY; 24];
            let mut hi24 = [f32::NEG_INFINITY; 24];
            let mut boundary = Vec::new();
            let mut records = Some(Vec::new());
            let mut below = 0;
            let (mut keep_b, mut edge_b) = ([0u8; BLOCK], [0u8; BLOCK]);
            for (w, (m, bm)) in mask.iter_mut().zip(boundary_mask.iter_mut()).enumerate() {
                let start = first + w * BLOCK;
                let end = (start + BLOCK).min(conf.len());
                let c = &conf[start..end];
                keep_b.fill(0);
                edge_b.fill(0);
                // Keys above the bracket are kept (if above the floor; `v > min_conf` is false for
                // NaN, as upstream's comparison is); keys inside wait for the exact percentile.
                let edge_span = bracket.to.wrapping_sub(bracket.from);
                let mut below_here = 0u32;
                if let Ok(full) = <&[f32; BLOCK]>::try_from(c) {
                    // Fixed trip counts and branch-free keys, so these vectorise.
                    let mut keys = [0u32; BLOCK];
                    for j in 0..BLOCK {
                        keys[j] = order_key_branchless(full[j]);
                    }
                    for j in 0..BLOCK {
                        keep_b[j] = ((keys[j] > bracket.to) & (full[j] > min_conf)) as u8;
                    }
                    for j in 0..BLOCK {
                        edge_b[j] = (keys[j].wrapping_sub(bracket.from) <= edge_span) as u8;
                    }
                    for j in 0..BLOCK {
                        below_here += (keys[j] < bracket.from) as u32;
                    }
                } else {
                    for (j, &v) in c.iter().enumerate() {
                        let key = order_key(v);
                        keep_b[j] = ((key > bracket.to) & (v > min_conf)) as u8;
                        edge_b[j] = (key.wrapping_sub(bracket.from) <= edge_span) as u8;
                        below_here += (key < bracket.from) as u32;
                    }
                }
                below += below_here as usize;
                let (keep, edge) = (pack_bits(&keep_b), pack_bits(&edge_b));
                *m = keep;
                *bm = edge;
                let mut e = edge;
                while e != 0 {
                    let j = e.trailing_zeros() as usize;
                    e &= e - 1;
                    boundary.push(c[j]);
                    if let Some(r) = records.as_mut() {
                        if r.len() == BOUNDARY_RECORDS {
                            records = None;
                        } else {
                            let i = (start + j) * 3;
                            r.push(BoundaryPoint { conf: c[j], xyz: [points[i], points[i + 1], points[i + 2]], offset: (start + j - first) as u32 });
                        }
                    }
                }
                if keep == 0 {
                    continue;
                }
                let p = &points[start * 3..end * 3];
                // Groups of eight points with vector min/max, masked by their eight keep bits.
                for (g, ch) in p.chunks(24).enumerate() {
                    let lanes = &EXPAND_KEEP[(keep >> (8 * g)) as usize & 0xFF];
                    // Unconditional updates (dropped lanes offer +-inf): no masked stores.
                    let mut update = |i: usize, v: f32| {
                        let kept = lanes[i] != 0;
                        lo24[i] = lo24[i].min(if kept { v } else { f32::INFINITY });
                        hi24[i] = hi24[i].max(if kept { v } else { f32::NEG_INFINITY });
                    };
                    if let Ok(full) = <&[f32; 24]>::try_from(ch) {
                        for i in 0..24 {
                            update(i, full[i]);
                        }
                    } else {
                        for (i, &v) in ch.iter().enumerate() {
                            update(i, v);
                        }
                    }
                }
            }
            let (mut lo, mut hi) = ([f32::INFINITY; 3], [f32::NEG_INFINITY; 3]);
            for i in 0..24 {
                lo[i % 3] = lo[i % 3].min(lo24[i]);
                hi[i % 3] = hi[i % 3].max(hi24[i]);
            }
            let any = mask.iter().any(|&m| m != 0);
            ClassifiedChunk { lo, hi, any, boundary, below, records }
        }
    }
    kernel(points, conf, first, mask, boundary_mask, bracket, min_conf)
}

/// Settles one thread's recorded boundary points once the percentile is known: sets the mask bits
/// of those that pass and grows the box.
fn settle_recorded(records: &[BoundaryPoint], mask: &mut [u64], threshold: f64, min_conf: f32) -> ([f32; 3], [f32; 3], bool) {
    let (mut lo, mut hi, mut any) = ([f32::INFINITY; 3], [f32::NEG_INFINITY; 3], false);
    for r in records.iter().filter(|r| (r.conf as f64) >= threshold && r.conf > min_conf) {
        mask[r.offset as usize / 64] |= 1 << (r.offset % 64);
        any = true;
        for a in 0..3 {
            lo[a] = lo[a].min(r.xyz[a]);
            hi[a] = hi[a].max(r.xyz[a]);
        }
    }
    (lo, hi, any)
}

/// Settles the boundary points of one thread's words once the percentile is known: sets their
/// mask bits and grows the box.
fn settle(points: &[f32], conf: &[f32], first: usize, mask: &mut [u64], boundary_mask: &[u64], threshold: f64, min_conf: f32) -> ([f32; 3], [f32; 3], bool) {
    let (mut lo, mut hi, mut any) = ([f32::INFINITY; 3], [f32::NEG_INFINITY; 3], false);
    for (w, (m, &b)) in mask.iter_mut().zip(boundary_mask).enumerate() {
        let mut b = b;
        while b != 0 {
            let j = b.trailing_zeros() as usize;
            b &= b - 1;
            let i = first + w * BLOCK + j;
            let c = conf[i];
            if (c as f64) >= threshold && c > min_conf {
                *m |= 1 << j;
                any = true;
                for a in 0..3 {
                    lo[a] = lo[a].min(points[i * 3 + a]);
                    hi[a] = hi[a].max(points[i * 3 + a]);
                }
            }
        }
    }
    (lo, hi, any)
}

/// The grid cell of each of up to 64 consecutive points (`p`: xyz interleaved), three cell
/// coordinates per point, elementwise so it vectorises; meaningful for points inside the box.
#[inline(always)]
fn block_cells(p: &[f32], lo3: &[f32; 3 * BLOCK], voxel_size: f32, out: &mut [i32; 3 * BLOCK]) {
    for k in 0..p.len() {
        // Inside the box `p - lo >= 0`, so truncation is floor; the clamp keeps points outside
        // it (not kept, but computed alongside) in range for the conversion.
        let v = ((p[k] - lo3[k]) / voxel_size).max(0.0).min(1.0e9);
        // SAFETY: v is finite and in [0, 1e9].
        out[k] = unsafe { v.to_int_unchecked::<i32>() };
    }
}

/// The distinct dense-grid cells the kept points of `range` fall in, sorted. A bitset over the
/// grid (`seen`, all zero in and out) de-duplicates them: no hashing, no sorting of every point.
fn dense_frame_cells(points: &[f32], mask: &[u64], range: std::ops::Range<usize>, lo: [f32; 3], voxel_size: f32, dims: [i64; 3], seen: &mut [u64]) -> Vec<u64> {
    multiversion! {
        fn kernel(points: &[f32], mask: &[u64], range: std::ops::Range<usize>, lo: [f32; 3], voxel_size: f32, dx: u32, dy: u32, seen: &mut [u64]) -> Vec<u64> {
            let mut set = Vec::new();
            let lo3: [f32; 3 * BLOCK] = std::array::from_fn(|k| lo[k % 3]);
            let mut cells = [0i32; 3 * BLOCK];
            let mut ids = [0u32; BLOCK];
            let mut same = [0u8; BLOCK];
            // The previous point's voxel, when it was kept.
            let mut previous: Option<u32> = None;
            for start in range.clone().step_by(BLOCK) {
                let len = BLOCK.min(range.end - start);
                let kept = bits_at(mask, start, len);
                if kept == 0 {
                    previous = None;
                    continue;
                }
                block_cells(&points[start * 3..(start + len) * 3], &lo3, voxel_size, &mut cells);
                for j in 0..BLOCK {
                    ids[j] = (cells[3 * j] as u32).wrapping_add(dx.wrapping_mul((cells[3 * j + 1] as u32).wrapping_add(dy.wrapping_mul(cells[3 * j + 2] as u32))));
                }
                // A kept point right after a kept point of the same voxel adds nothing
                // (neighbouring pixels mostly share a voxel).
                same[0] = (Some(ids[0]) == previous) as u8;
                for j in 1..BLOCK {
                    same[j] = (ids[j] == ids[j - 1]) as u8;
                }
                let mut new = kept & !(pack_bits(&same) & ((kept << 1) | previous.is_some() as u64));
                previous = (kept >> (len - 1) & 1 != 0).then_some(ids[len - 1]);
                while new != 0 {
                    let id = ids[new.trailing_zeros() as usize];
                    new &= new - 1;
                    let (w, bit) = ((id / 64) as usize, 1u64 << (id % 64));
                    if seen[w] & bit == 0 {
                        seen[w] |= bit;
                        set.push(id as u64);
                    }
                }
            }
            for &id in &set {
                seen[(id / 64) as usize] = 0;
            }
            set.sort_unstable();
            set
        }
    }
    kernel(points, mask, range, lo, voxel_size, dims[0] as u32, dims[1] as u32, seen)
}

/// The distinct cells of `range`'s kept points as packed coordinates, for grids too large for a
/// bitset (a very elongated scene).
fn packed_frame_cells(points: &[f32], mask: &[u64], range: std::ops::Range<usize>, lo: [f32; 3], voxel_size: f32) -> Vec<u64> {
    let mut set: Vec<u64> = range
        .filter(|&i| mask[i / 64] >> (i % 64) & 1 != 0)
        .map(|i| packed_key([0, 1, 2].map(|a| ((points[i * 3 + a] - lo[a]) / voxel_size).floor() as i64)))
        .collect();
    set.sort_unstable();
    set.dedup();
    set
}

/// The per-frame voxel sets of a geometry (the expensive half of the sampler); any K can then be
/// picked from them in milliseconds.
#[derive(Debug, Clone)]
pub struct VoxelSets {
    /// Distinct voxel ids each frame sees (sorted).
    pub frame_sets: Vec<Vec<u32>>,
    pub total_voxels: usize,
    pub voxel_size: f32,
    pub bbox_min: [f32; 3],
    pub conf_threshold: f32,
    /// The occupied cells (voxel id = position here), as grid keys.
    cells: Vec<u64>,
    /// Cells per axis of the confident points' bounding box.
    dims: [i64; 3],
    /// Whether `cells` holds dense grid indices (else packed coordinates).
    dense: bool,
}

/// Largest grid kept as a bitset (32 MiB per thread); beyond that cells are packed coordinates.
const DENSE_GRID_CELLS: i64 = 1 << 28;
/// Cells per axis packed coordinates can hold.
const PACKED_AXIS_CELLS: i64 = 1 << 21;

fn packed_key(c: [i64; 3]) -> u64 {
    ((c[0] as u64) << 42) | ((c[1] as u64) << 21) | c[2] as u64
}

/// Largest grid whose voxel ids come from ranks in a bitset of the occupied cells (512 KiB).
const RANKED_GRID_CELLS: i64 = 1 << 22;

/// Voxel ids = positions among the occupied cells in order: the occupied cells and each frame's
/// ids, for a small dense grid (a bitset of occupied cells and the rank of each cell in it).
fn ranked_ids(frame_cells: &[Vec<u64>], cells: usize) -> (Vec<u64>, Vec<Vec<u32>>) {
    let mut occupied = vec![0u64; cells.div_ceil(64)];
    for &c in frame_cells.iter().flatten() {
        occupied[(c / 64) as usize] |= 1 << (c % 64);
    }
    let mut before = Vec::with_capacity(occupied.len());
    let mut all = Vec::new();
    for (w, &bits) in occupied.iter().enumerate() {
        before.push(all.len() as u32);
        let mut b = bits;
        while b != 0 {
            all.push(w as u64 * 64 + b.trailing_zeros() as u64);
            b &= b - 1;
        }
    }
    let rank = |c: u64| before[(c / 64) as usize] + (occupied[(c / 64) as usize] & ((1u64 << (c % 64)) - 1)).count_ones();
    (all, frame_cells.iter().map(|set| set.iter().map(|&c| rank(c)).collect()).collect())
}

/// The same for any grid: the union sorted, ids by binary search.
fn sorted_ids(frame_cells: &[Vec<u64>]) -> (Vec<u64>, Vec<Vec<u32>>) {
    let mut all: Vec<u64> = frame_cells.iter().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    let ids = frame_cells.iter().map(|set| set.iter().map(|c| all.binary_search(c).expect("occupied") as u32).collect()).collect();
    (all, ids)
}

impl VoxelSets {
    /// The occupied voxel a world point falls in, if any.
    pub fn voxel_of(&self, p: [f32; 3]) -> Option<u32> {
        let c = [0, 1, 2].map(|a| ((p[a] - self.bbox_min[a]) / self.voxel_size).floor() as i64);
        if (0..3).any(|a| c[a] < 0 || c[a] >= self.dims[a]) {
            return None;
        }
        let key = if self.dense { (c[0] + self.dims[0] * (c[1] + self.dims[1] * c[2])) as u64 } else { packed_key(c) };
        self.cells.binary_search(&key).ok().map(|i| i as u32)
    }

    /// For every voxel id, the position in `picks_in_order` of the pick that covered it first
    /// (`u16::MAX` when no pick sees it): why each frame was chosen, voxel by voxel.
    pub fn first_cover(&self, picks_in_order: &[(usize, usize)]) -> Vec<u16> {
        let mut first = vec![u16::MAX; self.total_voxels];
        for (rank, &(frame, _)) in picks_in_order.iter().enumerate() {
            for &v in self.frame_sets.get(frame).map(Vec::as_slice).unwrap_or(&[]) {
                if first[v as usize] == u16::MAX {
                    first[v as usize] = rank.min(u16::MAX as usize - 1) as u16;
                }
            }
        }
        first
    }

    /// points: S frames of P points, xyz interleaved ([S*P*3]); conf: [S*P].
    pub fn build(points: &[f32], conf: &[f32], frames: usize, params: &SamplingParams) -> anyhow::Result<Self> {
        anyhow::ensure!(frames > 0, "space-aware sampling needs at least one frame");
        anyhow::ensure!((0.0..=100.0).contains(&params.conf_percentile), "confidence percentile {}: expected 0 to 100", params.conf_percentile);
        anyhow::ensure!(conf.len() % frames == 0 && points.len() == conf.len() * 3, "point map has {} values and confidence {}; expected 3 values per confidence for {frames} frames", points.len(), conf.len());
        anyhow::ensure!(!conf.is_empty(), "space-aware sampling needs points, and the frames have none");
        let per_frame = conf.len() / frames;
        let ConfidentPoints { mask, threshold, lo, hi, any } = ConfidentPoints::find(points, conf, params);
        anyhow::ensure!(any, "no point passes the confidence filter (percentile {} and > {})", params.conf_percentile, params.min_conf);
        anyhow::ensure!(lo.iter().chain(&hi).all(|v| v.is_finite()), "the confident points reach infinity (bounding box {lo:?} to {hi:?}), so no voxel grid can be built");
        let extent = (0..3).map(|a| hi[a] - lo[a]).fold(f32::INFINITY, f32::min);
        let voxel_size = extent / params.grid_divisions;
        anyhow::ensure!(voxel_size > 0.0 && voxel_size.is_finite(), "the confident points span no volume (smallest side {extent}), so no voxel grid can be built");

        let dims = [0, 1, 2].map(|a| ((hi[a] - lo[a]) / voxel_size).floor() as i64 + 1);
        let cells = dims.iter().try_fold(1i64, |n, &d| n.checked_mul(d)).unwrap_or(i64::MAX);
        let dense = cells <= DENSE_GRID_CELLS;
        anyhow::ensure!(dense || dims.iter().all(|&d| d <= PACKED_AXIS_CELLS), "the confident points' bounding box is {dims:?} voxels of {voxel_size}: too elongated to voxelise");
        // Each frame's distinct cells, frames split over the cores.
        let threads = threads_for(conf.len()).clamp(1, frames);
        let per_thread = frames.div_ceil(threads);
        let frame_cells: Vec<Vec<u64>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let mask = &mask;
                    let range = (t * per_thread)..((t + 1) * per_thread).min(frames);
                    s.spawn(move || {
                        let mut seen = vec![0u64; if dense { (cells as usize).div_ceil(64) } else { 0 }];
                        range
                            .map(|f| {
                                let points_range = f * per_frame..(f + 1) * per_frame;
                                if dense { dense_frame_cells(points, mask, points_range, lo, voxel_size, dims, &mut seen) } else { packed_frame_cells(points, mask, points_range, lo, voxel_size) }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().flat_map(|h| h.join().expect("voxel thread")).collect()
        });
        let (all, frame_sets) = if dense && cells <= RANKED_GRID_CELLS { ranked_ids(&frame_cells, cells as usize) } else { sorted_ids(&frame_cells) };
        Ok(Self { frame_sets, total_voxels: all.len(), voxel_size, bbox_min: lo, conf_threshold: threshold as f32, cells: all, dims, dense })
    }
    /// Greedy maximum coverage: strictly greater gain wins, the lowest index wins ties, stop when
    /// nothing new is covered.
    pub fn greedy(&self, k: usize) -> SamplingResult {
        let frames = self.frame_sets.len();
        let mut covered = vec![false; self.total_voxels];
        let mut chosen = vec![false; frames];
        let mut picks = Vec::new();
        for _ in 0..k.min(frames) {
            let mut best: Option<(usize, usize)> = None;
            for f in (0..frames).filter(|&f| !chosen[f]) {
                let gain = self.frame_sets[f].iter().filter(|&&v| !covered[v as usize]).count();
                if best.is_none_or(|(_, g)| gain > g) {
                    best = Some((f, gain));
                }
            }
            match best {
                Some((f, gain)) if gain > 0 => {
                    chosen[f] = true;
                    for &v in &self.frame_sets[f] {
                        covered[v as usize] = true;
                    }
                    picks.push((f, gain));
                }
                _ => break,
            }
        }
        let mut selected: Vec<usize> = picks.iter().map(|&(f, _)| f).collect();
        selected.sort_unstable();
        SamplingResult {
            selected,
            covered_voxels: covered.iter().filter(|&&c| c).count(),
            picks_in_order: picks,
            voxel_size: self.voxel_size,
            bbox_min: self.bbox_min,
            conf_threshold: self.conf_threshold,
            voxels_per_frame: self.frame_sets.iter().map(Vec::len).collect(),
            total_voxels: self.total_voxels,
        }
    }
}

/// Space-aware sampling in one call. points: S frames of P points, xyz interleaved; conf: [S*P].
pub fn space_aware_sampling(points: &[f32], conf: &[f32], frames: usize, params: &SamplingParams) -> anyhow::Result<SamplingResult> {
    Ok(VoxelSets::build(points, conf, frames, params)?.greedy(params.k))
}

/// `np.linspace(0, n-1, k)` rounded as upstream does (truncating int cast), both ends included.
pub fn uniform_indices(n: usize, k: usize) -> Vec<usize> {
    if n == 0 || k == 0 {
        return Vec::new();
    }
    if k == 1 {
        return vec![0];
    }
    (0..k).map(|i| ((i as f64) * (n - 1) as f64 / (k - 1) as f64) as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_cover_names_the_pick_that_saw_a_voxel_first() {
        // Frame 0 sees x in [0, 1), frame 1 sees [0, 2), frame 2 sees [2, 3): picks 1 then 2.
        let pts = |xs: &[f32]| xs.iter().flat_map(|&x| [x, 0.0, 0.0]).collect::<Vec<f32>>();
        let mut points = pts(&[0.05, 0.95, 0.95, 0.95]);
        points.extend(pts(&[0.05, 0.95, 1.5, 1.95]));
        points.extend(pts(&[2.05, 2.5, 2.95, 2.95]));
        // A flat scene: give it some height and depth so the box has volume.
        for (i, p) in points.chunks_mut(3).enumerate() {
            p[1] = (i % 2) as f32 * 3.0;
            p[2] = (i % 3) as f32 * 1.5;
        }
        let conf = vec![1.0f32; 12];
        let params = SamplingParams { k: 3, conf_percentile: 0.0, min_conf: 0.0, grid_divisions: 1.0 };
        let sets = VoxelSets::build(&points, &conf, 3, &params).unwrap();
        let r = sets.greedy(3);
        let first = sets.first_cover(&r.picks_in_order);
        for (f, chunk) in points.chunks(12).enumerate() {
            for p in chunk.chunks(3) {
                let v = sets.voxel_of([p[0], p[1], p[2]]).expect("occupied");
                let rank = first[v as usize] as usize;
                // The pick that covered it first is one that sees it.
                assert!(sets.frame_sets[r.picks_in_order[rank].0].contains(&v), "frame {f}");
                // No earlier pick sees it.
                assert!(r.picks_in_order[..rank].iter().all(|&(g, _)| !sets.frame_sets[g].contains(&v)));
            }
        }
        assert_eq!(sets.voxel_of([100.0, 0.0, 0.0]), None);
    }

    /// Upstream's algorithm written plainly: a sorted copy for the percentile, a set per frame.
    fn direct(points: &[f32], conf: &[f32], frames: usize, params: &SamplingParams) -> (f64, [f32; 3], f32, Vec<std::collections::BTreeSet<[i64; 3]>>) {
        let mut sorted = conf.to_vec();
        sorted.sort_by(f32::total_cmp);
        let pos = params.conf_percentile / 100.0 * (sorted.len() - 1) as f64;
        let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
        let (a, b) = (sorted[lo] as f64, sorted[(lo + 1).min(sorted.len() - 1)] as f64);
        let threshold = if frac >= 0.5 { b - (b - a) * (1.0 - frac) } else { a + (b - a) * frac };
        let keep = |i: usize| (conf[i] as f64) >= threshold && conf[i] > params.min_conf;
        let (mut min, mut max) = ([f32::INFINITY; 3], [f32::NEG_INFINITY; 3]);
        for i in (0..conf.len()).filter(|&i| keep(i)) {
            for a in 0..3 {
                min[a] = min[a].min(points[i * 3 + a]);
                max[a] = max[a].max(points[i * 3 + a]);
            }
        }
        let voxel = (0..3).map(|a| max[a] - min[a]).fold(f32::INFINITY, f32::min) / params.grid_divisions;
        let per_frame = conf.len() / frames;
        let sets = (0..frames)
            .map(|f| (f * per_frame..(f + 1) * per_frame).filter(|&i| keep(i)).map(|i| [0, 1, 2].map(|a| ((points[i * 3 + a] - min[a]) / voxel).floor() as i64)).collect())
            .collect();
        (threshold, min, voxel, sets)
    }

    fn cells_of(sets: &VoxelSets, frame: usize) -> std::collections::BTreeSet<[i64; 3]> {
        sets.frame_sets[frame]
            .iter()
            .map(|&v| {
                let key = sets.cells[v as usize];
                if sets.dense {
                    let k = key as i64;
                    [k % sets.dims[0], k / sets.dims[0] % sets.dims[1], k / (sets.dims[0] * sets.dims[1])]
                } else {
                    [(key >> 42) as i64, (key >> 21 & 0x1F_FFFF) as i64, (key & 0x1F_FFFF) as i64]
                }
            })
            .collect()
    }

    /// A small deterministic generator (no dependency for tests).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    #[test]
    fn voxel_sets_equal_the_direct_algorithm_on_awkward_inputs() {
        // 3 frames of an odd size (frames do not start on mask words), enough points for
        // several threads and a sampled percentile bracket.
        let (frames, per_frame) = (3, 30_011);
        let n = frames * per_frame;
        let mut rng = Lcg(7);
        // Walls of a box seen by each frame, with a stray far point or two.
        let mut points: Vec<f32> = (0..n * 3).map(|_| rng.next() * 4.0 - 1.0).collect();
        for i in (0..n).step_by(997) {
            points[i * 3] = 250.0;
        }
        let sampled: std::collections::HashSet<usize> = (0..SAMPLE.min(n)).map(|i| sample_index(i, n, SAMPLE.min(n))).collect();
        let cases: Vec<(&str, Vec<f32>, SamplingParams)> = vec![
            ("continuous", (0..n).map(|_| 1.0 + rng.next() * 20.0).collect(), SamplingParams::default()),
            // Ties everywhere: a few levels, so the bracket holds many points.
            ("ten levels", (0..n).map(|_| (rng.next() * 10.0).floor()).collect(), SamplingParams::default()),
            // All equal: the bracket holds everything (past the recording cap).
            ("constant", vec![2.5; n], SamplingParams::default()),
            ("NaN and signed zeros", (0..n).map(|i| match i % 7 { 0 => f32::NAN, 1 => -0.0, 2 => 0.0, 3 => -1.0 - rng.next(), _ => rng.next() }).collect(), SamplingParams { conf_percentile: 40.0, min_conf: -5.0, ..Default::default() }),
            ("percentile 0", (0..n).map(|_| rng.next()).collect(), SamplingParams { conf_percentile: 0.0, min_conf: 0.0, ..Default::default() }),
            ("percentile 99.99", (0..n).map(|_| rng.next()).collect(), SamplingParams { conf_percentile: 99.99, min_conf: 0.0, ..Default::default() }),
            ("percentile 37.3", (0..n).map(|_| rng.next()).collect(), SamplingParams { conf_percentile: 37.3, min_conf: 0.2, ..Default::default() }),
            // The sampled positions see only high values: the sampled bracket misses both ranks.
            ("unrepresentative sample", (0..n).map(|i| if sampled.contains(&i) { 100.0 + rng.next() } else { 1.0 + rng.next() }).collect(), SamplingParams::default()),
        ];
        for (name, conf, params) in cases {
            let sets = VoxelSets::build(&points, &conf, frames, &params).unwrap_or_else(|e| panic!("{name}: {e}"));
            let (threshold, min, voxel, expected) = direct(&points, &conf, frames, &params);
            assert_eq!(sets.conf_threshold, threshold as f32, "{name}: threshold");
            assert_eq!(sets.bbox_min, min, "{name}: box");
            assert_eq!(sets.voxel_size, voxel, "{name}: voxel size");
            for (f, want) in expected.iter().enumerate() {
                assert_eq!(&cells_of(&sets, f), want, "{name}: frame {f}");
            }
            let union: std::collections::BTreeSet<_> = expected.iter().flatten().collect();
            assert_eq!(sets.total_voxels, union.len(), "{name}: occupied voxels");
        }
    }

    #[test]
    fn voxel_sets_of_an_elongated_scene_use_packed_cells() {
        // One long axis: more cells than the dense grid takes.
        let (frames, per_frame) = (2, 5_000);
        let mut rng = Lcg(3);
        let points: Vec<f32> = (0..frames * per_frame).flat_map(|_| [rng.next() * 2.0e4, rng.next(), rng.next() * 1.0e2]).collect();
        let conf: Vec<f32> = (0..frames * per_frame).map(|_| 1.0 + rng.next()).collect();
        let params = SamplingParams::default();
        let sets = VoxelSets::build(&points, &conf, frames, &params).unwrap();
        assert!(!sets.dense);
        let (_, _, _, expected) = direct(&points, &conf, frames, &params);
        for (f, want) in expected.iter().enumerate() {
            assert_eq!(&cells_of(&sets, f), want, "frame {f}");
        }
    }

    #[test]
    fn infinite_points_get_a_clear_error() {
        let mut points = vec![0.0f32; 3 * 100];
        for (i, p) in points.iter_mut().enumerate() {
            *p = (i % 17) as f32;
        }
        points[30] = f32::INFINITY;
        let err = VoxelSets::build(&points, &[1.0; 100], 1, &SamplingParams { conf_percentile: 0.0, ..Default::default() }).unwrap_err();
        assert!(err.to_string().contains("infinity"), "{err}");
    }

    #[test]
    fn a_percentile_outside_0_to_100_is_named_in_the_error() {
        let points: Vec<f32> = (0..300).map(|i| (i % 17) as f32).collect();
        for bad in [150.0, -1.0, f64::NAN] {
            let err = VoxelSets::build(&points, &[1.0; 100], 1, &SamplingParams { conf_percentile: bad, ..Default::default() }).unwrap_err();
            assert!(err.to_string().contains("expected 0 to 100"), "{bad}: {err}");
        }
    }

    #[test]
    fn percentile_matches_numpy() {
        // np.percentile([1,2,3,4], 50) == 2.5; np.percentile([3,1,2], 50) == 2.0
        assert_eq!(percentile_linear(&[1.0, 2.0, 3.0, 4.0], 50.0), 2.5);
        assert_eq!(percentile_linear(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert!((percentile_linear(&[0.0, 10.0], 25.0) - 2.5).abs() < 1e-12);
    }

    #[test]
    fn uniform_includes_both_ends() {
        assert_eq!(uniform_indices(100, 16).first(), Some(&0));
        assert_eq!(uniform_indices(100, 16).last(), Some(&99));
        assert_eq!(uniform_indices(10, 4), vec![0, 3, 6, 9]);
    }
}
