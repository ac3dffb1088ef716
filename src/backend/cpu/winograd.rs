//! Winograd F(2x2, 3x3) convolution (Lavin & Gray 2016, "Fast Algorithms for Convolutional
//! Neural Networks") for 3x3 convs with stride 1, padding 1 and one group, in AVX-512.
//!
//! Algorithm: the output is cut into 2x2 tiles; tile (ty, tx) reads the 4x4 input patch d at
//! padded rows 2ty..2ty+4, padded columns 2tx..2tx+4 (padded = shifted by one, zeros outside).
//! With the standard matrices
//!   Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1],
//!   Aᵀ = [1 1 1 0; 0 1 -1 -1],
//! the weights are transformed once per call, U = G g Gᵀ (4x4 per (c_out, c_in), in f64 then
//! rounded), each input patch to V = Bᵀ d B (4x4 per (c_in, tile)), and then for each of the
//! 16 positions ξ of the 4x4 transformed domain a small GEMM M[ξ][co][t] = Σ_ci U[ξ][co][ci] ·
//! V[ξ][ci][t] replaces the convolution's sum; the output tile is Y = Aᵀ M A. That is 16
//! multiplies per 4 outputs instead of 36 (2.25x fewer), plus the transforms' additions.
//!
//! Layout and blocking. Tiles map to the 16 lanes of a vector in "slots" (see `Plan`): 16
//! tiles of one tile row, or for narrow maps (tw <= 8) k = 16 / sw tile rows of sw tiles (sw =
//! tw rounded up to a power of two), so a 16x16 map fills a slot with 2 tile rows and an 8x8
//! map with 4. A job is a group of whole images (several when one image has fewer than NV
//! slots). Per job, in one thread-local scratch buffer:
//! - xp [imgs][c_in][l]: zero-padded input planes, rows of `wp = 2·tw + 2` floats, plus 32
//!   floats of slack so every load of a row stays inside the plane;
//! - v [16][c_in][BW]: transformed inputs of one block of NV slots (BW = 16·NV lanes), position
//!   stride c_in·BW + 16 (one cache line more, so the 16 position streams do not share an L1 set);
//! - m [16][c_out][BW] (stride c_out·BW + 16): GEMM results of that block.
//!
//! Each block of NV slots goes through input transform, GEMM and output transform in turn, so
//! v and m stay in L1/L2 (64 KiB each at 16 channels).
//!
//! The input transform of one slot loads each patch row as a pair of zmm (columns 2tx0.. and
//! 2tx0+2.. of one row, or of the slot's k rows, see `patch_pair`) and splits even/odd columns
//! with `vpermt2ps`, so lane L holds its tile's d[i][j]. The GEMM is register-blocked as NV (4)
//! tile vectors x cb (4 or 6, `channel_block`) output channels of zmm accumulators, weights
//! broadcast from U laid out [ξ][co block][ci][c]. The output transform loads the 16 M vectors
//! of a slot, combines them, and re-interleaves the two output columns of each tile with
//! `vpermt2ps` into masked row stores (an odd width or height leaves the last tile's second
//! column or row unstored; lanes outside the map are never stored).
//!
//! Invariants: every output element is written exactly once; the sums are done in a fixed
//! order (Σ over c_in in index order, then the fixed transform), independent of how images are
//! grouped into jobs or blocks or which thread runs them, so results are bit-identical on every
//! run. Lanes outside the map (and of absent images in a short last block) compute finite junk
//! from neighbouring pixels, zeros or stale scratch, and are never stored.
//! Backward data of such a conv is the same conv of dy with the weights flipped and c_in/c_out
//! swapped (padding 3−1−1 = 1), so it reuses the same path.

use super::conv::{has_avx512, pick_4x6, run_jobs, with_scratch};
use super::matmul::SendPtr;
use crate::backend::Conv2dGeom;
use std::arch::x86_64::*;

/// Tile vectors (of 16 tiles) per GEMM block.
const NV: usize = 4;
/// Most output channels per GEMM block: NV·NC accumulators + NV inputs + 1 broadcast <= 32 zmm.
const NC: usize = 6;

/// Output channels per GEMM block for c_out channels: 4 when that splits them evenly and 6
/// would not (16, 32, 64: no thin remainder block, which ran at about half speed), else 6.
fn channel_block(cout: usize) -> usize {
    if !cout.is_multiple_of(6) && cout.is_multiple_of(4) {
        4
    } else {
        NC
    }
}
/// Lanes (tiles) per block: NV slots of 16.
const BW: usize = 16 * NV;
/// Bound on 16·(c_in + c_out)·tiles per image (256 Ki floats, 1 MiB: ~4·(c_in + c_out)·h·w):
/// keeps a job's padded input planes (c_in·h·w) well inside Zen 4's 1 MiB L2. Bigger images
/// stay on the direct kernel; Winograd was only measured on CIFAR-sized maps (resnet's 16+16
/// channels at 32x32 use half of the bound, 64+64 at 8x8 an eighth).
const MAX_IMAGE_FLOATS: usize = 256 * 1024;
/// Fewest input and output channels for the Winograd path (measured: see `applies`).
const MIN_CHANNELS: usize = 16;

/// Whether the Winograd path can compute this conv (shape-wise, and the CPU has AVX-512).
pub fn supports(g: &Conv2dGeom) -> bool {
    has_avx512()
        && g.groups == 1
        && (g.kh, g.kw) == (3, 3)
        && g.stride == (1, 1)
        && g.pad == (1, 1)
        && (g.h_out, g.w_out) == (g.h, g.w)
        && g.n * g.c_in * g.c_out * g.h * g.w > 0
        && 16 * (g.c_in + g.c_out) * g.h.div_ceil(2) * g.w.div_ceil(2) <= MAX_IMAGE_FLOATS
}

/// Whether the dispatch in conv.rs should take the Winograd path (forward and backward data
/// alike; the condition is symmetric in c_in and c_out). Measured per core against the direct
/// kernel (`CONV_CPUTIME=1 cargo bench --bench ops -- cputime`, batch 64): 16 channels in and
/// out at 32x32 is the break-even (1.05x), 32 and 64 channels gain 1.45-1.5x, while 8 channels
/// (0.8x at 32x32, 0.8-0.9x 8->16 at 16x16), 4->16 (0.6-0.75x) and the 3->16 first conv
/// (0.45-0.7x) lose: the GEMM is too thin to pay for the transforms.
pub fn applies(g: &Conv2dGeom) -> bool {
    supports(g) && g.c_in >= MIN_CHANNELS && g.c_out >= MIN_CHANNELS
}

/// Forward: y [n, c_out, h, w] from x [n, c_in, h, w] and w [c_out, c_in, 3, 3].
pub fn forward(x: &[f32], w: &[f32], g: &Conv2dGeom) -> Vec<f32> {
    let u = transform_weights(g.c_out, g.c_in, |co, ci, ky, kx| w[(co * g.c_in + ci) * 9 + ky * 3 + kx]);
    conv(x, g.n, g.c_in, g.h, g.w, &u, g.c_out, g.flops())
}

/// Backward data: dx [n, c_in, h, w] from dy [n, c_out, h, w], as the conv of dy with the
/// flipped weights w'[ci][co][ky][kx] = w[co][ci][2−ky][2−kx].
pub fn backward_data(dy: &[f32], w: &[f32], g: &Conv2dGeom) -> Vec<f32> {
    let u = transform_weights(g.c_in, g.c_out, |ci, co, ky, kx| w[(co * g.c_in + ci) * 9 + (2 - ky) * 3 + 2 - kx]);
    conv(dy, g.n, g.c_out, g.h, g.w, &u, g.c_in, g.flops())
}

/// U = G g Gᵀ for every (co, ci), laid out [ξ][co block of cb at co0·cin][ci][c < nc]. `at(co,
/// ci, ky, kx)` reads the logical 3x3 weights.
fn transform_weights(cout: usize, cin: usize, at: impl Fn(usize, usize, usize, usize) -> f32) -> Vec<f32> {
    const G: [[f64; 3]; 4] = [[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]];
    let mut u = vec![0.0f32; 16 * cout * cin];
    let cb = channel_block(cout);
    for co in 0..cout {
        let (co0, c) = (co / cb * cb, co % cb);
        let nc = cb.min(cout - co0);
        for ci in 0..cin {
            let mut gg = [[0.0f64; 3]; 4];
            for (i, row) in gg.iter_mut().enumerate() {
                for (kx, v) in row.iter_mut().enumerate() {
                    *v = (0..3).map(|ky| G[i][ky] * at(co, ci, ky, kx) as f64).sum();
                }
            }
            for i in 0..4 {
                for j in 0..4 {
                    let v: f64 = (0..3).map(|kx| gg[i][kx] * G[j][kx]).sum();
                    u[(i * 4 + j) * cout * cin + co0 * cin + ci * nc + c] = v as f32;
                }
            }
        }
    }
    u
}

/// Sizes of one call, and how tiles map to the 16 lanes of a vector ("slot"): a slot holds
/// `k` consecutive tile rows of `sw` tiles each (sw = tw rounded up to a power of two when
/// tw <= 8, so 8x8 maps fill a slot with 4 tile rows), or for wider maps 16 tiles of one row.
/// Lane L of slot (ty0, tx0) is tile (ty0 + L / sw, tx0 + L % sw); lanes outside the map hold
/// finite junk (zeros or neighbouring pixels) and are never stored.
struct Plan {
    h: usize,
    w: usize,
    th: usize,
    tw: usize,
    sw: usize,
    k: usize,
    /// Slots per image: ceil(th / k) groups of tile rows times ceil(tw / sw) chunks.
    slots: usize,
    /// Padded row width 2·tw + 2 (the plane has 2·ceil(th / k)·k + 2 such rows).
    wp: usize,
    /// Floats per padded plane, with slack for the last row's 16-lane loads.
    l: usize,
    /// Images per job: enough for one block of NV slots when the maps are small.
    imgs: usize,
}

impl Plan {
    fn new(n: usize, h: usize, w: usize) -> Plan {
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let sw = if tw > 8 { 16 } else { tw.next_power_of_two() };
        let k = 16 / sw;
        let slots = th.div_ceil(k) * tw.div_ceil(sw);
        let (wp, hp) = (2 * tw + 2, 2 * th.div_ceil(k) * k + 2);
        let imgs = NV.div_ceil(slots).min(n.div_ceil(rayon::current_num_threads())).max(1);
        Plan { h, w, th, tw, sw, k, slots, wp, l: hp * wp + 32, imgs }
    }

    /// (ty0, tx0): the first tile row and column of slot s of an image.
    fn slot(&self, s: usize) -> (usize, usize) {
        let chunks = self.tw.div_ceil(self.sw);
        (s / chunks * self.k, s % chunks * self.sw)
    }

    /// dst [l] = one input plane src [h·w] between zeros (padded row r holds input row r−1 at
    /// columns 1..=w).
    fn pad(&self, src: &[f32], dst: &mut [f32]) {
        let (w, wp) = (self.w, self.wp);
        dst[..wp].fill(0.0);
        for (row, s) in dst[wp..(self.h + 1) * wp].chunks_exact_mut(wp).zip(src.chunks_exact(w)) {
            row[0] = 0.0;
            row[1..=w].copy_from_slice(s);
            row[w + 1..].fill(0.0);
        }
        dst[(self.h + 1) * wp..].fill(0.0);
    }
}

/// out [n, cout, h, w] = the 3x3 pad-1 conv of inp [n, cin, h, w] with transformed weights u.
#[allow(clippy::too_many_arguments)]
fn conv(inp: &[f32], n: usize, cin: usize, h: usize, w: usize, u: &[f32], cout: usize, flops: f64) -> Vec<f32> {
    let hw = h * w;
    assert!(has_avx512() && inp.len() == n * cin * hw && u.len() == 16 * cout * cin && hw > 0);
    let plan = Plan::new(n, h, w);
    let len = n * cout * hw;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let op = SendPtr(out.as_mut_ptr());
    let l = plan.l;
    // Position strides: 16 floats (one cache line) more than the data, so the 16 position
    // streams of the transforms do not all fall into the same L1 set (BW·c is often a multiple
    // of 4 KiB).
    let (vps, mps) = (cin * BW + 16, cout * BW + 16);
    let (xlen, vlen, mlen) = (plan.imgs * cin * l, 16 * vps, 16 * mps);
    run_jobs(n.div_ceil(plan.imgs), flops, |job| {
        let img0 = job * plan.imgs;
        let imgs = plan.imgs.min(n - img0);
        with_scratch(xlen + vlen + mlen, |buf| {
            let (xp, rest) = buf.split_at_mut(xlen);
            let (v, m) = rest.split_at_mut(vlen);
            let src = &inp[img0 * cin * hw..(img0 + imgs) * cin * hw];
            for (plane, s) in xp.chunks_exact_mut(l).zip(src.chunks_exact(hw)) {
                plan.pad(s, plane);
            }
            // Blocks of up to NV slots (global slot gs = image·slots + slot) go through the
            // input transform, the GEMM and the output transform while they sit in L1/L2.
            let total = imgs * plan.slots;
            for g0 in (0..total).step_by(NV) {
                let nb = NV.min(total - g0);
                for gs in g0..g0 + nb {
                    let (i, slot) = (gs / plan.slots, gs % plan.slots);
                    // SAFETY: avx512f was checked (assert above). The planes
                    // xp[i·cin·l..][..cin·l] are inside xp, and `input_transform` reads only
                    // those. Stores go to v[ξ·vps + ci·BW + 16·(gs−g0) .. +16] with gs − g0 < NV,
                    // i.e. below 15·vps + cin·BW, inside v.
                    unsafe {
                        input_transform(
                            xp.as_ptr().add(i * cin * l),
                            cin,
                            &plan,
                            slot,
                            v.as_mut_ptr().add(16 * (gs - g0)),
                            vps,
                        )
                    }
                }
                gemm(v, vps, u, m, mps, cin, cout, nb);
                for gs in g0..g0 + nb {
                    let (i, slot) = (gs / plan.slots, gs % plan.slots);
                    for co in 0..cout {
                        // SAFETY: avx512f checked. Loads m[ξ·mps + co·BW + 16·(gs−g0) .. +16],
                        // inside m like v's stores above. Stores: rows < h, columns < w of
                        // plane (img0+i, co) of out, written by this job only (each image
                        // belongs to one job).
                        unsafe {
                            output_transform(
                                m.as_ptr().add(co * BW + 16 * (gs - g0)),
                                mps,
                                &plan,
                                slot,
                                op.get().add(((img0 + i) * cout + co) * hw),
                            )
                        }
                    }
                }
            }
        })
    });
    // SAFETY: every job writes all h·w pixels of all cout planes of its images (each tile of
    // each image is a valid lane of exactly one slot), and the jobs cover all n images.
    unsafe { out.set_len(len) };
    out
}

/// Lane permutations: even and odd elements of a 32-float pair, and the interleave of two
/// 16-float vectors (low and high halves).
#[target_feature(enable = "avx512f")]
fn perms() -> [__m512i; 4] {
    [
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30),
        _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31),
        _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23),
        _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31),
    ]
}

fn lane_mask(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// The 32 floats whose 2L-th and (2L+1)-th elements are padded columns 2tx + j0 and
/// 2tx + j0 + 1 of tile row ty's patch row i (row pointer `row` = padded row 2ty0 + i, column
/// 2tx0), for lane L = tile (ty0 + L / sw, tx0 + L % sw); as two vectors.
///
/// # Safety
/// avx512f; reads 2·sw floats from row + 2s·wp + j0 for s < k (16 floats when sw = 16), all
/// inside the padded plane (see `Plan`).
#[target_feature(enable = "avx512f")]
unsafe fn patch_pair(row: *const f32, plan: &Plan, j0: usize) -> (__m512, __m512) {
    let (sw, step) = (plan.sw, 2 * plan.wp);
    // SAFETY: the reads described above.
    unsafe {
        let p = row.add(j0);
        match sw {
            16 => (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16))),
            8 => (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(step))),
            4 => {
                let two = |q: *const f32| {
                    let lo = _mm512_castps_pd(_mm512_castps256_ps512(_mm256_loadu_ps(q)));
                    _mm512_castpd_ps(_mm512_insertf64x4::<1>(lo, _mm256_castps_pd(_mm256_loadu_ps(q.add(step)))))
                };
                (two(p), two(p.add(2 * step)))
            }
            _ => {
                let mut buf = [0.0f32; 32];
                for (s, seg) in buf.chunks_exact_mut(2 * sw).enumerate() {
                    seg.copy_from_slice(std::slice::from_raw_parts(p.add(s * step), 2 * sw));
                }
                (_mm512_loadu_ps(buf.as_ptr()), _mm512_loadu_ps(buf.as_ptr().add(16)))
            }
        }
    }
}

/// v[ξ·pos_stride + ci·BW ..+16] = (Bᵀ d B)[ξ] for the tiles of one slot of each of the
/// `planes` padded planes xp[ci·l ..] (one image's channels); one call per slot keeps the
/// slot's setup out of the channel loop.
///
/// # Safety
/// avx512f; xp holds `planes` padded planes of `plan.l` floats; v has room for every ξ < 16
/// and ci < planes.
#[target_feature(enable = "avx512f")]
unsafe fn input_transform(xp: *const f32, planes: usize, plan: &Plan, slot: usize, v: *mut f32, pos_stride: usize) {
    let [even, odd, _, _] = perms();
    let (ty0, tx0) = plan.slot(slot);
    // d·B of patch row i: [d0 − d2, d1 + d2, d2 − d1, d1 − d3].
    let row_t = |plane: *const f32, i: usize| {
        // SAFETY: rows 2ty0 + 2s + i <= 2·ceil(th/k)·k + 1 and columns up to 2tx0 + 33
        // (sw = 16) or 2tx0 + 17 stay inside the plane and its 32 floats of slack.
        let ((a, b), (c, d)) = unsafe {
            let row = plane.add((2 * ty0 + i) * plan.wp + 2 * tx0);
            (patch_pair(row, plan, 0), patch_pair(row, plan, 2))
        };
        let d0 = _mm512_permutex2var_ps(a, even, b);
        let d1 = _mm512_permutex2var_ps(a, odd, b);
        let d2 = _mm512_permutex2var_ps(c, even, d);
        let d3 = _mm512_permutex2var_ps(c, odd, d);
        [_mm512_sub_ps(d0, d2), _mm512_add_ps(d1, d2), _mm512_sub_ps(d2, d1), _mm512_sub_ps(d1, d3)]
    };
    for ci in 0..planes {
        // SAFETY: plane ci of the caller's planes; v's slots as the caller vouched.
        unsafe {
            let plane = xp.add(ci * plan.l);
            let vc = v.add(ci * BW);
            // Bᵀ·(d·B) row by row, so at most three transformed rows are live (no spills).
            let (r0, r1, r2) = (row_t(plane, 0), row_t(plane, 1), row_t(plane, 2));
            for j in 0..4 {
                _mm512_storeu_ps(vc.add(j * pos_stride), _mm512_sub_ps(r0[j], r2[j]));
                _mm512_storeu_ps(vc.add((4 + j) * pos_stride), _mm512_add_ps(r1[j], r2[j]));
                _mm512_storeu_ps(vc.add((8 + j) * pos_stride), _mm512_sub_ps(r2[j], r1[j]));
            }
            let r3 = row_t(plane, 3);
            for j in 0..4 {
                _mm512_storeu_ps(vc.add((12 + j) * pos_stride), _mm512_sub_ps(r1[j], r3[j]));
            }
        }
    }
}

/// Writes the tiles of one slot into plane y [h][w] of one output channel from
/// m[ξ·pos_stride ..+16].
///
/// # Safety
/// avx512f; m readable for 16 floats from every ξ·pos_stride; y holds h·w floats.
#[target_feature(enable = "avx512f")]
unsafe fn output_transform(m: *const f32, pos_stride: usize, plan: &Plan, slot: usize, y: *mut f32) {
    let [_, _, lo, hi] = perms();
    let sw = plan.sw;
    let (ty0, tx0) = plan.slot(slot);
    let mut s = [[_mm512_setzero_ps(); 2]; 4];
    for (i, si) in s.iter_mut().enumerate() {
        let mut r = [_mm512_setzero_ps(); 4];
        for (j, rj) in r.iter_mut().enumerate() {
            // SAFETY: readable (caller).
            *rj = unsafe { _mm512_loadu_ps(m.add((4 * i + j) * pos_stride)) };
        }
        *si = [_mm512_add_ps(_mm512_add_ps(r[0], r[1]), r[2]), _mm512_sub_ps(_mm512_sub_ps(r[1], r[2]), r[3])];
    }
    // Output columns of this slot's tiles in each of its tile rows.
    let cols = (plan.w - 2 * tx0).min(2 * sw);
    for a in 0..2 {
        let y0 = _mm512_add_ps(_mm512_add_ps(s[0][0], s[1][0]), s[2][0]);
        let y1 = _mm512_add_ps(_mm512_add_ps(s[0][1], s[1][1]), s[2][1]);
        let (yb0, yb1) = if a == 0 {
            (y0, y1)
        } else {
            (
                _mm512_sub_ps(_mm512_sub_ps(s[1][0], s[2][0]), s[3][0]),
                _mm512_sub_ps(_mm512_sub_ps(s[1][1], s[2][1]), s[3][1]),
            )
        };
        // Row a of tile (·, L): elements 2L and 2L+1 of the pair (plo, phi).
        let (plo, phi) = (_mm512_permutex2var_ps(yb0, lo, yb1), _mm512_permutex2var_ps(yb0, hi, yb1));
        let rows = plan.k.min(plan.th - ty0);
        let dst = |t: usize| (2 * (ty0 + t) + a < plan.h).then(|| (2 * (ty0 + t) + a) * plan.w + 2 * tx0);
        // SAFETY (all stores): row 2(ty0+t)+a < h, columns 2tx0 .. 2tx0 + cols <= w of y.
        match sw {
            16 => {
                if let Some(o) = dst(0) {
                    unsafe {
                        _mm512_mask_storeu_ps(y.add(o), lane_mask(cols), plo);
                        _mm512_mask_storeu_ps(y.add(o + 16), lane_mask(cols.saturating_sub(16)), phi);
                    }
                }
            }
            8 => {
                for (t, val) in [plo, phi].into_iter().enumerate().take(rows) {
                    if let Some(o) = dst(t) {
                        unsafe { _mm512_mask_storeu_ps(y.add(o), lane_mask(cols), val) };
                    }
                }
            }
            _ => {
                let mut buf = [0.0f32; 32];
                // SAFETY: buf holds 32 floats.
                unsafe {
                    _mm512_storeu_ps(buf.as_mut_ptr(), plo);
                    _mm512_storeu_ps(buf.as_mut_ptr().add(16), phi);
                }
                for t in 0..rows {
                    if let Some(o) = dst(t) {
                        let seg = &buf[2 * sw * t..][..cols];
                        unsafe { std::ptr::copy_nonoverlapping(seg.as_ptr(), y.add(o), cols) };
                    }
                }
            }
        }
    }
}

type Kernel = unsafe fn(*const f32, usize, usize, *const f32, *mut f32);

/// The GEMM kernel for nv tile vectors and nc output channels (1 <= nv <= NV, 1 <= nc <= NC).
fn kernel(nv: usize, nc: usize) -> Kernel {
    pick_4x6!(block, nv, nc)
}

/// m[ξ·mps ..] [cout][BW] = U[ξ] · v[ξ·vps ..] [cin][BW] for the 16 positions ξ, on the
/// first nvec (<= NV) tile vectors of the block.
#[allow(clippy::too_many_arguments)]
fn gemm(v: &[f32], vps: usize, u: &[f32], m: &mut [f32], mps: usize, cin: usize, cout: usize, nvec: usize) {
    assert!(vps >= cin * BW && mps >= cout * BW && v.len() >= 16 * vps && m.len() >= 16 * mps);
    assert!(u.len() == 16 * cout * cin && nvec <= NV);
    let tp = BW;
    for pos in 0..16 {
        let cb = channel_block(cout);
        for co0 in (0..cout).step_by(cb) {
            let nc = cb.min(cout - co0);
            for v0 in (0..nvec).step_by(NV) {
                let kern = kernel(NV.min(nvec - v0), nc);
                // SAFETY: avx512f (checked by `conv`). Reads v[pos·vps + ci·tp + 16·v0 ..
                // + 16·nv] for ci < cin and u[pos·cout·cin + co0·cin .. + nc·cin], writes
                // m[pos·mps + (co0+c)·tp + 16·v0 .. + 16·nv] for c < nc: all inside the
                // slices (asserted sizes, 16·(v0+nv) <= tp).
                unsafe {
                    kern(
                        v.as_ptr().add(pos * vps + 16 * v0),
                        tp,
                        cin,
                        u.as_ptr().add(pos * cout * cin + co0 * cin),
                        m.as_mut_ptr().add(pos * mps + co0 * tp + 16 * v0),
                    )
                }
            }
        }
    }
}

/// acc[v][c] = Σ_ci v[ci·tp + 16v ..] · u[ci·C + c], stored to m[c·tp + 16v ..].
///
/// # Safety
/// avx512f; the ranges described at the call in `gemm`.
#[target_feature(enable = "avx512f")]
#[allow(clippy::needless_range_loop)]
unsafe fn block<const V: usize, const C: usize>(v: *const f32, tp: usize, cin: usize, u: *const f32, m: *mut f32) {
    let mut acc = [[_mm512_setzero_ps(); C]; V];
    // SAFETY (this block): offsets stay inside the ranges the caller vouched for.
    unsafe {
        for ci in 0..cin {
            let mut x = [_mm512_setzero_ps(); V];
            for k in 0..V {
                x[k] = _mm512_loadu_ps(v.add(ci * tp + 16 * k));
            }
            for c in 0..C {
                let wv = _mm512_set1_ps(*u.add(ci * C + c));
                for k in 0..V {
                    acc[k][c] = _mm512_fmadd_ps(x[k], wv, acc[k][c]);
                }
            }
        }
        for k in 0..V {
            for c in 0..C {
                _mm512_storeu_ps(m.add(c * tp + 16 * k), acc[k][c]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn vals(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// f64 3x3 pad-1 conv from the definition, and Σ|terms| per output element.
    /// `wat(co, ci, ky, kx)` reads the weights.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        x: &[f32],
        n: usize,
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        wat: impl Fn(usize, usize, usize, usize) -> f32,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![0.0; n * cout * h * w];
        let mut mag = vec![0.0; y.len()];
        for b in 0..n {
            for co in 0..cout {
                for oy in 0..h {
                    for ox in 0..w {
                        let o = ((b * cout + co) * h + oy) * w + ox;
                        for ci in 0..cin {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (iy, ix) = ((oy + ky) as isize - 1, (ox + kx) as isize - 1);
                                    if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                        continue;
                                    }
                                    let t = x[((b * cin + ci) * h + iy as usize) * w + ix as usize] as f64
                                        * wat(co, ci, ky, kx) as f64;
                                    y[o] += t;
                                    mag[o] += t.abs();
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, mag)
    }

    /// Tolerance: 1e-5 of Σ|terms|. F(2,3)'s transforms add, per output, a bounded number of
    /// extra f32 roundings (sums of <= 4 inputs, of <= 3 halved weights, of 9 GEMM results),
    /// each of relative size 2⁻²⁴ ≈ 6e-8 of intermediates at most ~4x the term magnitudes, on top
    /// of the c_in-long accumulation (<= 64 here, worst case c_in·6e-8 ≈ 4e-6); the measured
    /// worst ratio is printed by the test and stays well below this bound.
    const TOL: f64 = 1e-5;

    fn check(got: &[f32], want: &[f64], mag: &[f64], what: &str) -> f64 {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let mut worst = 0.0f64;
        for (i, ((a, b), s)) in got.iter().zip(want).zip(mag).enumerate() {
            let err = (*a as f64 - b).abs();
            assert!(err <= TOL * s + 1e-30, "{what}: element {i}: {a} vs {b} (Σ|terms| {s})");
            if *s > 0.0 {
                worst = worst.max(err / s);
            }
        }
        worst
    }

    /// (n, c_in, c_out, h, w): batch 1 and 3, channels 1, 5, 17, 64, maps 1x1 .. 32x32 with odd
    /// and unequal sides, multi-image jobs (small maps) and rows of more than 16 tiles.
    const CASES: [(usize, usize, usize, usize, usize); 11] = [
        (1, 1, 1, 1, 1),
        (3, 5, 17, 2, 2),
        (1, 17, 5, 3, 3),
        (3, 5, 5, 7, 7),
        (3, 64, 17, 8, 8),
        (1, 17, 64, 9, 13),
        (3, 17, 17, 32, 32),
        (1, 1, 5, 9, 13),
        (3, 64, 64, 2, 2),
        (1, 5, 1, 7, 37),
        (3, 17, 5, 16, 15),
    ];

    #[test]
    fn forward_and_backward_data_match_naive() {
        if !has_avx512() {
            return;
        }
        let mut worst = 0.0f64;
        for (k, &(n, cin, cout, h, w)) in CASES.iter().enumerate() {
            let g = Conv2dGeom::square(n, cin, h, w, cout, 3, 1, 1, 1);
            assert!(g.h_out == h && g.w_out == w && supports(&g), "{g:?}");
            let x = vals(n * cin * h * w, 3 * k as u64 + 1);
            let wt = vals(cout * cin * 9, 3 * k as u64 + 2);
            let dy = vals(n * cout * h * w, 3 * k as u64 + 3);
            let (y, ymag) = naive(&x, n, cin, h, w, cout, |co, ci, ky, kx| wt[(co * cin + ci) * 9 + ky * 3 + kx]);
            worst = worst.max(check(&forward(&x, &wt, &g), &y, &ymag, &format!("forward {g:?}")));
            // dx = conv of dy (c_out -> c_in channels) with the flipped, transposed weights.
            let (dx, dxmag) =
                naive(&dy, n, cout, h, w, cin, |ci, co, ky, kx| wt[(co * cin + ci) * 9 + (2 - ky) * 3 + 2 - kx]);
            worst = worst.max(check(&backward_data(&dy, &wt, &g), &dx, &dxmag, &format!("backward data {g:?}")));
        }
        println!("winograd worst |err| / Σ|terms|: {worst:.2e} (tolerance {TOL:.0e})");
    }

    /// Same bits whatever the grouping of images into jobs (thread count) and on repeat.
    #[test]
    fn deterministic_across_threads() {
        if !has_avx512() {
            return;
        }
        let g = Conv2dGeom::square(5, 16, 8, 8, 16, 3, 1, 1, 1);
        let x = vals(5 * 16 * 64, 7);
        let wt = vals(16 * 16 * 9, 8);
        let base = forward(&x, &wt, &g);
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let got = pool.install(|| forward(&x, &wt, &g));
            assert!(got.iter().zip(&base).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads");
        }
    }

    /// The CIFAR ResNet 3x3 convs (batch 64) must take this path; the 3->16 first conv must not.
    #[test]
    fn applies_to_resnet_shapes() {
        if !has_avx512() {
            return;
        }
        for (c, s) in [(16, 32), (32, 16), (64, 8)] {
            assert!(applies(&Conv2dGeom::square(64, c, s, s, c, 3, 1, 1, 1)), "{c}ch {s}x{s}");
        }
        assert!(!applies(&Conv2dGeom::square(64, 3, 32, 32, 16, 3, 1, 1, 1)));
        assert!(!applies(&Conv2dGeom::square(64, 8, 16, 16, 16, 3, 1, 1, 1)));
        assert!(!supports(&Conv2dGeom::square(64, 16, 32, 32, 32, 3, 2, 1, 1)), "stride 2");
    }
}
