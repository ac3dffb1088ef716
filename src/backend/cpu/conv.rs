//! Conv2d on the CPU: a direct AVX-512 kernel for stride-1 convs that keep the width (3x3 pad 1
//! and the like; see `direct`), otherwise tiled im2col + GEMM, 1x1 stride-1 unpadded convs
//! straight to GEMM, and convs with one input channel per group (depthwise, with or without a
//! channel multiplier) as direct loops.
//!
//! Layout of the GEMMs, per image and group (P = output pixels, K = c_in/groups·kh·kw):
//! - forward: yᵀ[P x c_out] = colᵀ[P x K] · Wᵀ[K x c_out]. The column buffer is [K][tile] and
//!   the destination is the NCHW output itself (row stride 1 along pixels, column stride P), so
//!   the long pixel axis is gemm's m and every operand is column-major, as its microkernel likes
//!   (gemm then packs neither the column buffer nor the output).
//! - backward data: colᵀ[P x K] = dyᵀ[P x c_out] · W[c_out x K], then col2im scatter-adds.
//! - backward weight: Wᵀ[K x c_out] += col[K x P] · dyᵀ[P x c_out], partial sums per fixed run
//!   of jobs added in run order (`sum_jobs`), so results are bit-identical on every run.
//!
//! A tile is a run of whole output rows, sized so the column buffer stays within L2
//! (`COL_BUDGET`). Each tile first copies the input rows it reads into a zero-padded buffer,
//! so building the column buffer is plain row copies with no bounds tests (AVX-512 when the
//! CPU has it: with 8- to 32-pixel rows the copies, not the GEMM, would otherwise dominate).

use super::matmul::{par_for, sgemm, MatMut, MatRef, SendPtr, PAR_MIN_FLOPS};
#[cfg(target_arch = "x86_64")]
use super::winograd;
use crate::backend::Conv2dGeom;
use crate::error::Result;
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;

/// Floats of column buffer per tile: 256 KiB, a quarter of Zen 4's 1 MiB L2, leaving room for
/// gemm's packed weights and the output tile.
const COL_BUDGET: usize = 64 * 1024;

/// Output rows per tile for a K-row column buffer: as many as fit the budget (at least one),
/// then evened out so the last tile is not a short remainder.
fn tile_rows(kk: usize, h_out: usize, w_out: usize) -> usize {
    let fit = (COL_BUDGET / (kk * w_out).max(1)).clamp(1, h_out.max(1));
    let tiles = h_out.div_ceil(fit).max(1);
    h_out.div_ceil(tiles).max(1)
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a per-thread scratch buffer of `len` floats (contents unspecified), reused
/// across calls so big column buffers are not re-faulted in for every tile.
pub(super) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
            f(&mut buf[..len])
        }
        // Re-entered: a thread waiting inside a parallel gemm ran another tile; use a fresh buffer.
        Err(_) => f(&mut vec![0.0; len]),
    })
}

/// Derived sizes of one convolution.
#[derive(Clone, Copy)]
struct Sizes {
    cig: usize,
    cog: usize,
    /// Rows of the column buffer: cig·kh·kw.
    kk: usize,
    /// Input pixels per channel.
    hw: usize,
    /// Output pixels per channel.
    p: usize,
    /// Width of the zero-padded input rows.
    wp: usize,
    pointwise: bool,
}

impl Sizes {
    fn of(g: &Conv2dGeom) -> Sizes {
        let cig = g.c_in / g.groups;
        Sizes {
            cig,
            cog: g.c_out / g.groups,
            kk: cig * g.kh * g.kw,
            hw: g.h * g.w,
            p: g.h_out * g.w_out,
            wp: g.w + 2 * g.pad.1,
            // 1x1, stride 1, no padding: the input plane already is the column buffer.
            pointwise: g.kh == 1 && g.kw == 1 && g.stride == (1, 1) && g.pad == (0, 0),
        }
    }
}

/// Output positions o in [0, out_len) whose input index o·stride + k_off − pad lies in
/// [0, in_len), as a half-open range (empty when none).
fn valid_range(out_len: usize, in_len: usize, stride: usize, k_off: usize, pad: usize) -> (usize, usize) {
    let lo = if pad > k_off { (pad - k_off).div_ceil(stride) } else { 0 };
    let hi = if in_len + pad > k_off { (in_len + pad - k_off).div_ceil(stride).min(out_len) } else { 0 };
    (lo.min(hi), hi)
}

/// One tile: output rows oy0..oy0+rows, i.e. pixels p0..p0+len.
#[derive(Clone, Copy)]
struct Tile {
    oy0: usize,
    rows: usize,
    p0: usize,
    len: usize,
    /// Padded input rows the tile reads: (rows−1)·stride + kh.
    in_rows: usize,
}

impl Tile {
    fn new(g: &Conv2dGeom, t: usize, tile_rows: usize) -> Tile {
        let oy0 = t * tile_rows;
        let rows = tile_rows.min(g.h_out - oy0);
        Tile { oy0, rows, p0: oy0 * g.w_out, len: rows * g.w_out, in_rows: (rows - 1) * g.stride.0 + g.kh }
    }
    /// Floats of the padded input rows of one group.
    fn padded_len(&self, s: &Sizes) -> usize {
        s.cig * self.in_rows * s.wp
    }
    /// Input row (unpadded coordinates) of padded row r; negative or >= h inside the padding.
    fn input_row(&self, g: &Conv2dGeom, r: usize) -> isize {
        (self.oy0 * g.stride.0 + r) as isize - g.pad.0 as isize
    }
}

/// xp [cig][in_rows][wp]: the input rows of one group's channels x [cig][h][w] that the tile
/// reads, zero-padded.
fn pad_rows(x: &[f32], g: &Conv2dGeom, s: &Sizes, t: &Tile, xp: &mut [f32]) {
    let px = g.pad.1;
    let copy = row_copier();
    // Padded rows r in [r0, r1) hold input rows; the rest, and the side columns, are zeros.
    let r0 = (-t.input_row(g, 0)).clamp(0, t.in_rows as isize) as usize;
    let r1 = (g.h as isize - t.input_row(g, 0)).clamp(r0 as isize, t.in_rows as isize) as usize;
    for (ci, plane) in xp.chunks_exact_mut(t.in_rows * s.wp).enumerate() {
        plane[..r0 * s.wp].fill(0.0);
        plane[r1 * s.wp..].fill(0.0);
        if px > 0 {
            for row in plane[r0 * s.wp..r1 * s.wp].chunks_exact_mut(s.wp) {
                row[..px].fill(0.0);
                row[px + g.w..].fill(0.0);
            }
        }
        if r1 > r0 {
            let iy0 = (t.input_row(g, r0)) as usize;
            copy(&mut plane[r0 * s.wp + px..], s.wp, &x[ci * s.hw + iy0 * g.w..], g.w, r1 - r0, g.w);
        }
    }
}

/// Adds the interior of the padded rows dxp [cig][in_rows][wp] back into dx [cig][h][w].
fn unpad_rows_add(dxp: &[f32], g: &Conv2dGeom, s: &Sizes, t: &Tile, dx: &mut [f32]) {
    let px = g.pad.1;
    for (i, row) in dxp.chunks_exact(s.wp).enumerate() {
        let (ci, r) = (i / t.in_rows, i % t.in_rows);
        let iy = t.input_row(g, r);
        if iy < 0 || iy >= g.h as isize {
            continue;
        }
        let dst = &mut dx[ci * s.hw + iy as usize * g.w..][..g.w];
        for (d, v) in dst.iter_mut().zip(&row[px..px + g.w]) {
            *d += v;
        }
    }
}

/// col [kk][len] of a tile from its padded input rows xp [cig][in_rows][wp].
fn im2col(xp: &[f32], g: &Conv2dGeom, s: &Sizes, t: &Tile, col: &mut [f32]) {
    let (sy, sx) = g.stride;
    let copy = row_copier();
    for (kk, dst) in col.chunks_exact_mut(t.len).enumerate() {
        let (ci, ky, kx) = (kk / (g.kh * g.kw), kk / g.kw % g.kh, kk % g.kw);
        let src = &xp[(ci * t.in_rows + ky) * s.wp + kx..];
        if sx == 1 {
            copy(dst, g.w_out, src, sy * s.wp, t.rows, g.w_out);
        } else {
            for (r, d) in dst.chunks_exact_mut(g.w_out).enumerate() {
                let srow = &src[r * sy * s.wp..];
                for (ox, v) in d.iter_mut().enumerate() {
                    *v = srow[ox * sx];
                }
            }
        }
    }
}

/// Scatter-adds col [kk][len] of a tile into its padded rows dxp [cig][in_rows][wp].
fn col2im(col: &[f32], g: &Conv2dGeom, s: &Sizes, t: &Tile, dxp: &mut [f32]) {
    let (sy, sx) = g.stride;
    let add = row_adder();
    for (kk, src) in col.chunks_exact(t.len).enumerate() {
        let (ci, ky, kx) = (kk / (g.kh * g.kw), kk / g.kw % g.kh, kk % g.kw);
        let dst = &mut dxp[(ci * t.in_rows + ky) * s.wp + kx..];
        if sx == 1 {
            add(dst, src, t.rows, g.w_out, sy * s.wp);
        } else {
            for (r, sv) in src.chunks_exact(g.w_out).enumerate() {
                let drow = &mut dst[r * sy * s.wp..];
                for (ox, v) in sv.iter().enumerate() {
                    drow[ox * sx] += v;
                }
            }
        }
    }
}

/// dst[r·dst_stride + i] = src[r·src_stride + i] for r < rows, i < w.
type RowCopy = fn(&mut [f32], usize, &[f32], usize, usize, usize);
/// dst[r·stride + i] += src[r·w + i] for r < rows, i < w.
type RowAdd = fn(&mut [f32], &[f32], usize, usize, usize);

/// Panics unless `rows` rows of `w` floats, `stride` apart, fit in `len` floats (the bounds
/// the SIMD row loops rely on; geometry is validated before a kernel runs, so this never fires).
fn check_strided(len: usize, rows: usize, w: usize, stride: usize) {
    assert!(rows == 0 || len >= (rows - 1) * stride + w, "row copy out of bounds");
}

fn copy_rows_portable(dst: &mut [f32], dst_stride: usize, src: &[f32], src_stride: usize, rows: usize, w: usize) {
    for r in 0..rows {
        dst[r * dst_stride..][..w].copy_from_slice(&src[r * src_stride..][..w]);
    }
}

fn add_rows_portable(dst: &mut [f32], src: &[f32], rows: usize, w: usize, stride: usize) {
    for (r, s) in src[..rows * w].chunks_exact(w).enumerate() {
        for (d, v) in dst[r * stride..][..w].iter_mut().zip(s) {
            *d += v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Lanes of the last, partial vector of a w-float row, and how many full vectors precede it.
    fn split(w: usize) -> (usize, __mmask16) {
        (w / 16, ((1u32 << (w % 16)) - 1) as __mmask16)
    }

    pub fn copy_rows(dst: &mut [f32], dst_stride: usize, src: &[f32], src_stride: usize, rows: usize, w: usize) {
        super::check_strided(src.len(), rows, w, src_stride);
        super::check_strided(dst.len(), rows, w, dst_stride);
        // SAFETY: row_copier hands this out only when avx512f was detected; check_rows proved
        // every row's w floats lie inside dst and src.
        unsafe { copy_rows_impl(dst.as_mut_ptr(), dst_stride, src.as_ptr(), src_stride, rows, w) }
    }

    pub fn add_rows(dst: &mut [f32], src: &[f32], rows: usize, w: usize, stride: usize) {
        super::check_strided(src.len(), rows, w, w);
        super::check_strided(dst.len(), rows, w, stride);
        // SAFETY: as in copy_rows, with the strided side being dst.
        unsafe { add_rows_impl(dst.as_mut_ptr(), src.as_ptr(), rows, w, stride) }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn copy_rows_impl(
        dst: *mut f32,
        dst_stride: usize,
        src: *const f32,
        src_stride: usize,
        rows: usize,
        w: usize,
    ) {
        let (full, mask) = split(w);
        for r in 0..rows {
            // SAFETY: the caller checked (rows−1)·stride + w floats at dst and at src; masked
            // lanes are neither read nor written.
            unsafe {
                let (d, s) = (dst.add(r * dst_stride), src.add(r * src_stride));
                for c in 0..full {
                    _mm512_storeu_ps(d.add(c * 16), _mm512_loadu_ps(s.add(c * 16)));
                }
                if mask != 0 {
                    _mm512_mask_storeu_ps(d.add(full * 16), mask, _mm512_maskz_loadu_ps(mask, s.add(full * 16)));
                }
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    unsafe fn add_rows_impl(dst: *mut f32, src: *const f32, rows: usize, w: usize, stride: usize) {
        let (full, mask) = split(w);
        for r in 0..rows {
            // SAFETY: as in copy_rows_impl with the roles of the strided and dense sides swapped.
            unsafe {
                let (d, s) = (dst.add(r * stride), src.add(r * w));
                for c in 0..full {
                    let (dp, sp) = (d.add(c * 16), s.add(c * 16));
                    _mm512_storeu_ps(dp, _mm512_add_ps(_mm512_loadu_ps(dp), _mm512_loadu_ps(sp)));
                }
                if mask != 0 {
                    let (dp, sp) = (d.add(full * 16), s.add(full * 16));
                    let v = _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dp), _mm512_maskz_loadu_ps(mask, sp));
                    _mm512_mask_storeu_ps(dp, mask, v);
                }
            }
        }
    }
}

pub(super) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn row_copier() -> RowCopy {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        return avx512::copy_rows;
    }
    copy_rows_portable
}

fn row_adder() -> RowAdd {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        return avx512::add_rows;
    }
    add_rows_portable
}

/// `pick_4x6!(f, v, c)`: the instance `f::<V, C>` of a register-blocked kernel for
/// 1 <= v <= 4 vectors and 1 <= c <= 6 channels (larger values take 4 and 6), as a fn pointer.
macro_rules! pick_4x6 {
    ($f:ident, $v:expr, $c:expr) => {
        match $v {
            1 => pick_4x6!(@c $f, 1, $c),
            2 => pick_4x6!(@c $f, 2, $c),
            3 => pick_4x6!(@c $f, 3, $c),
            _ => pick_4x6!(@c $f, 4, $c),
        }
    };
    (@c $f:ident, $v:literal, $c:expr) => {
        match $c {
            1 => $f::<$v, 1> as _,
            2 => $f::<$v, 2> as _,
            3 => $f::<$v, 3> as _,
            4 => $f::<$v, 4> as _,
            5 => $f::<$v, 5> as _,
            _ => $f::<$v, 6> as _,
        }
    };
}
pub(super) use pick_4x6;

/// Parallelism of each job's GEMM: the jobs themselves run in parallel unless they are too
/// few to occupy every thread, in which case each GEMM splits instead.
fn job_par(jobs: usize, flops_per_job: f64) -> Parallelism {
    if jobs >= rayon::current_num_threads() {
        Parallelism::None
    } else {
        par_for(flops_per_job)
    }
}

/// Runs `f(job)` for job in 0..jobs, in parallel when there is enough work to share.
pub(super) fn run_jobs(jobs: usize, total_flops: f64, f: impl Fn(usize) + Sync + Send) {
    if jobs <= 1 || total_flops < PAR_MIN_FLOPS {
        (0..jobs).for_each(f);
    } else {
        (0..jobs).into_par_iter().for_each(f);
    }
}

/// y [n, c_out, h_out, w_out] = conv(x [n, c_in, h, w], w [c_out, c_in/groups, kh, kw]).
pub fn conv2d(x: &[f32], w: &[f32], g: &Conv2dGeom) -> Result<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if winograd::applies(g) {
        return Ok(winograd::forward(x, w, g));
    }
    #[cfg(target_arch = "x86_64")]
    if direct::applies(g) {
        return Ok(direct::forward(x, w, g));
    }
    #[cfg(target_arch = "x86_64")]
    if fwdc::applies(g) {
        return Ok(fwdc::forward(x, w, g));
    }
    let s = Sizes::of(g);
    Ok(conv2d_tiled(x, w, g, tile_rows(s.kk, g.h_out, g.w_out)))
}

/// dx [n, c_in, h, w] from dy [n, c_out, h_out, w_out] and w.
pub fn conv2d_backward_data(dy: &[f32], w: &[f32], g: &Conv2dGeom) -> Result<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    if winograd::applies(g) {
        return Ok(winograd::backward_data(dy, w, g));
    }
    #[cfg(target_arch = "x86_64")]
    if direct::applies(g) {
        return Ok(direct::backward_data(dy, w, g));
    }
    #[cfg(target_arch = "x86_64")]
    if bwdc::applies(g) {
        return Ok(bwdc::backward_data(dy, w, g));
    }
    let s = Sizes::of(g);
    Ok(backward_data_tiled(dy, w, g, tile_rows(s.kk, g.h_out, g.w_out)))
}

/// dw [c_out, c_in/groups, kh, kw] from x and dy.
pub fn conv2d_backward_weight(x: &[f32], dy: &[f32], g: &Conv2dGeom) -> Result<Vec<f32>> {
    // With few input channels the per-image transpose of dy dominates wgt3; the pixel-lane
    // kernel of `direct` needs none (first conv 3->16: ~60 vs ~34 GFLOP/s per core).
    #[cfg(target_arch = "x86_64")]
    if wgt3::applies(g) && !(g.c_in < 8 && direct::applies(g)) {
        return Ok(wgt3::backward_weight(x, dy, g));
    }
    #[cfg(target_arch = "x86_64")]
    if direct::applies(g) {
        return Ok(direct::backward_weight(x, dy, g));
    }
    let s = Sizes::of(g);
    Ok(backward_weight_tiled(x, dy, g, tile_rows(s.kk, g.h_out, g.w_out)))
}

fn conv2d_tiled(x: &[f32], w: &[f32], g: &Conv2dGeom, tile_rows: usize) -> Vec<f32> {
    let s = Sizes::of(g);
    let len = g.n * g.c_out * s.p;
    if len == 0 || s.kk == 0 {
        return vec![0.0; len];
    }
    if s.cig == 1 {
        let mut y = vec![0.0f32; len];
        depthwise_forward(x, w, g, &s, &mut y);
        return y;
    }
    // Every element is written by exactly one GEMM below (with read_dst off), so the output
    // skips the memset of a zeroed allocation.
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let ntiles = g.h_out.div_ceil(tile_rows);
    let jobs = g.n * g.groups * ntiles;
    let par = job_par(jobs, g.flops() / jobs as f64);
    let yp = SendPtr(y.as_mut_ptr());
    run_jobs(jobs, g.flops(), |job| {
        let (img, gi, t) = (job / (ntiles * g.groups), job / ntiles % g.groups, job % ntiles);
        let t = Tile::new(g, t, tile_rows);
        let xg = &x[(img * g.c_in + gi * s.cig) * s.hw..][..s.cig * s.hw];
        // Wᵀ[K x cog]: element (k, co) of this group's weights at co·K + k.
        let rhs = MatRef { ptr: w[gi * s.cog * s.kk..].as_ptr(), rs: 1, cs: s.kk as isize };
        // SAFETY: y has capacity n·c_out·P; this job's view covers pixels p0..p0+len of
        // channels gi·cog..(gi+1)·cog of image img, in bounds and disjoint from other jobs'.
        let dst =
            MatMut { ptr: unsafe { yp.get().add((img * g.c_out + gi * s.cog) * s.p + t.p0) }, rs: 1, cs: s.p as isize };
        if s.pointwise {
            let lhs = MatRef { ptr: xg[t.p0..].as_ptr(), rs: 1, cs: s.hw as isize };
            // SAFETY: lhs addresses xg[p0 + i + c·hw] for i < len, c < cig (= K), inside xg;
            // rhs covers the group's cog·K weights; dst is exclusive to this job (see above).
            unsafe { sgemm(t.len, s.cog, s.kk, dst, false, lhs, rhs, par) };
        } else {
            with_scratch(t.padded_len(&s) + s.kk * t.len, |buf| {
                let (xp, col) = buf.split_at_mut(t.padded_len(&s));
                pad_rows(xg, g, &s, &t, xp);
                im2col(xp, g, &s, &t, col);
                let lhs = MatRef { ptr: col.as_ptr(), rs: 1, cs: t.len as isize };
                // SAFETY: col is [K][len]; rhs and dst as above.
                unsafe { sgemm(t.len, s.cog, s.kk, dst, false, lhs, rhs, par) };
            });
        }
    });
    // SAFETY: the tiles of every (image, group) cover all h_out rows of its cog channels, and
    // sgemm (k = K >= 1, read_dst off) wrote each of those elements.
    unsafe { y.set_len(len) };
    y
}

fn backward_data_tiled(dy: &[f32], w: &[f32], g: &Conv2dGeom, tile_rows: usize) -> Vec<f32> {
    let s = Sizes::of(g);
    let mut dx = vec![0.0f32; g.n * g.c_in * s.hw];
    if dx.is_empty() || s.p == 0 || s.cog == 0 {
        return dx;
    }
    if s.cig == 1 {
        depthwise_backward_data(dy, w, g, &s, &mut dx);
        return dx;
    }
    let ntiles = g.h_out.div_ceil(tile_rows);
    // One job per (image, group): its dx channels are one contiguous chunk, and its tiles
    // overlap in dx (the windows do), so they run in order within the job.
    let jobs = g.n * g.groups;
    let par = job_par(jobs, g.flops() / (jobs * ntiles) as f64);
    let body = |job: usize, dxg: &mut [f32]| {
        let (img, gi) = (job / g.groups, job % g.groups);
        // W[cog x K], row-major.
        let rhs = MatRef { ptr: w[gi * s.cog * s.kk..].as_ptr(), rs: s.kk as isize, cs: 1 };
        let dyg = &dy[(img * g.c_out + gi * s.cog) * s.p..][..s.cog * s.p];
        for t in 0..ntiles {
            let t = Tile::new(g, t, tile_rows);
            // dyᵀ[len x cog]: element (i, co) at co·P + p0 + i.
            let lhs = MatRef { ptr: dyg[t.p0..].as_ptr(), rs: 1, cs: s.p as isize };
            if s.pointwise {
                let dst = MatMut { ptr: dxg[t.p0..].as_mut_ptr(), rs: 1, cs: s.hw as isize };
                // SAFETY: dst addresses dxg[p0 + i + c·hw], i < len, c < cig, inside this job's
                // exclusive chunk; lhs lies in dyg and rhs in this group's weights.
                unsafe { sgemm(t.len, s.kk, s.cog, dst, false, lhs, rhs, par) };
            } else {
                with_scratch(t.padded_len(&s) + s.kk * t.len, |buf| {
                    let (dxp, col) = buf.split_at_mut(t.padded_len(&s));
                    let dst = MatMut { ptr: col.as_mut_ptr(), rs: 1, cs: t.len as isize };
                    // SAFETY: col is a private [K][len] buffer; lhs and rhs as above.
                    unsafe { sgemm(t.len, s.kk, s.cog, dst, false, lhs, rhs, par) };
                    dxp.fill(0.0);
                    col2im(col, g, &s, &t, dxp);
                    unpad_rows_add(dxp, g, &s, &t, dxg);
                });
            }
        }
    };
    let chunk = s.cig * s.hw;
    if jobs > 1 && g.flops() >= PAR_MIN_FLOPS {
        dx.par_chunks_mut(chunk).enumerate().for_each(|(j, c)| body(j, c));
    } else {
        dx.chunks_mut(chunk).enumerate().for_each(|(j, c)| body(j, c));
    }
    dx
}

/// Sums the partial results of `jobs` jobs (`job(acc, j)` adds job j into acc) so that the
/// result is bit-identical on every run and thread count: jobs are cut into at most 8 fixed
/// runs of consecutive jobs, each run folds in job order, and the run totals are added in run
/// order. `parallel` only decides whether runs execute on the rayon pool.
fn sum_jobs(jobs: usize, len: usize, parallel: bool, job: impl Fn(Vec<f32>, usize) -> Vec<f32> + Sync) -> Vec<f32> {
    const RUNS: usize = 8;
    let per = jobs.div_ceil(RUNS).max(1);
    let run = |r: usize| (r * per..((r + 1) * per).min(jobs)).fold(vec![0.0f32; len], &job);
    let runs = jobs.div_ceil(per);
    let totals: Vec<Vec<f32>> =
        if parallel { (0..runs).into_par_iter().map(run).collect() } else { (0..runs).map(run).collect() };
    let mut totals = totals.into_iter();
    let mut sum = totals.next().unwrap_or_else(|| vec![0.0f32; len]);
    for t in totals {
        sum.iter_mut().zip(&t).for_each(|(a, b)| *a += b);
    }
    sum
}

fn backward_weight_tiled(x: &[f32], dy: &[f32], g: &Conv2dGeom, tile_rows: usize) -> Vec<f32> {
    let s = Sizes::of(g);
    let wlen = g.c_out * s.kk;
    if wlen == 0 || g.n == 0 || s.p == 0 {
        return vec![0.0; wlen];
    }
    if s.cig == 1 {
        return depthwise_backward_weight(x, dy, g, &s);
    }
    let ntiles = g.h_out.div_ceil(tile_rows);
    // Jobs are (image, tile); every job adds into the whole dW, so each rayon split keeps its
    // own partial sum and the partials are added at the end.
    let jobs = g.n * ntiles;
    let par = job_par(jobs, g.flops() / jobs as f64);
    let job = |mut acc: Vec<f32>, job: usize| -> Vec<f32> {
        let (img, t) = (job / ntiles, job % ntiles);
        let t = Tile::new(g, t, tile_rows);
        for gi in 0..g.groups {
            let xg = &x[(img * g.c_in + gi * s.cig) * s.hw..][..s.cig * s.hw];
            // dyᵀ[len x cog]: element (i, co) at co·P + p0 + i.
            let rhs = MatRef { ptr: dy[(img * g.c_out + gi * s.cog) * s.p + t.p0..].as_ptr(), rs: 1, cs: s.p as isize };
            // dWᵀ[K x cog] of this group: element (k, co) at co·K + k.
            let dst = MatMut { ptr: acc[gi * s.cog * s.kk..].as_mut_ptr(), rs: 1, cs: s.kk as isize };
            if s.pointwise {
                let lhs = MatRef { ptr: xg[t.p0..].as_ptr(), rs: s.hw as isize, cs: 1 };
                // SAFETY: lhs addresses xg[c·hw + p0 + i] (c < cig, i < len); rhs lies in dy's
                // image img; dst is this group's cog·K block of the job-private accumulator.
                unsafe { sgemm(s.kk, s.cog, t.len, dst, true, lhs, rhs, par) };
            } else {
                with_scratch(t.padded_len(&s) + s.kk * t.len, |buf| {
                    let (xp, col) = buf.split_at_mut(t.padded_len(&s));
                    pad_rows(xg, g, &s, &t, xp);
                    im2col(xp, g, &s, &t, col);
                    let lhs = MatRef { ptr: col.as_ptr(), rs: t.len as isize, cs: 1 };
                    // SAFETY: col is [K][len]; rhs and dst as above.
                    unsafe { sgemm(s.kk, s.cog, t.len, dst, true, lhs, rhs, par) };
                });
            }
        }
        acc
    };
    sum_jobs(jobs, wlen, jobs > 1 && g.flops() >= PAR_MIN_FLOPS, job)
}

// ---- one input channel per group (depthwise and friends): direct loops ----

/// Runs `f(index, chunk)` over `len`-sized chunks of `v`, in parallel when the op is big enough.
fn for_planes(v: &mut [f32], len: usize, flops: f64, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if flops >= PAR_MIN_FLOPS {
        v.par_chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        v.chunks_mut(len).enumerate().for_each(|(i, c)| f(i, c));
    }
}

fn depthwise_forward(x: &[f32], w: &[f32], g: &Conv2dGeom, s: &Sizes, y: &mut [f32]) {
    let (sy, sx) = g.stride;
    let (py, px) = g.pad;
    let taps = g.kh * g.kw;
    for_planes(y, s.p, g.flops(), |plane, yo| {
        let (img, co) = (plane / g.c_out, plane % g.c_out);
        let xi = &x[(img * g.c_in + co / s.cog) * s.hw..][..s.hw];
        let wk = &w[co * taps..][..taps];
        for (oy, yrow) in yo.chunks_mut(g.w_out).enumerate() {
            for ky in 0..g.kh {
                let iy = (oy * sy + ky) as isize - py as isize;
                if iy < 0 || iy >= g.h as isize {
                    continue;
                }
                let xrow = &xi[iy as usize * g.w..][..g.w];
                for kx in 0..g.kw {
                    let wv = wk[ky * g.kw + kx];
                    let (lo, hi) = valid_range(g.w_out, g.w, sx, kx, px);
                    if lo == hi {
                        continue;
                    }
                    if sx == 1 {
                        let src = &xrow[lo + kx - px..hi + kx - px];
                        for (d, v) in yrow[lo..hi].iter_mut().zip(src) {
                            *d += wv * v;
                        }
                    } else {
                        for ox in lo..hi {
                            yrow[ox] += wv * xrow[ox * sx + kx - px];
                        }
                    }
                }
            }
        }
    });
}

fn depthwise_backward_data(dy: &[f32], w: &[f32], g: &Conv2dGeom, s: &Sizes, dx: &mut [f32]) {
    let (sy, sx) = g.stride;
    let (py, px) = g.pad;
    let taps = g.kh * g.kw;
    // One dx plane per (image, input channel) gathers from that group's cog output channels.
    for_planes(dx, s.hw, g.flops(), |plane, dxp| {
        let (img, ci) = (plane / g.c_in, plane % g.c_in);
        for co in ci * s.cog..(ci + 1) * s.cog {
            let dyp = &dy[(img * g.c_out + co) * s.p..][..s.p];
            let wk = &w[co * taps..][..taps];
            for (oy, dyrow) in dyp.chunks(g.w_out).enumerate() {
                for ky in 0..g.kh {
                    let iy = (oy * sy + ky) as isize - py as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let xrow = &mut dxp[iy as usize * g.w..][..g.w];
                    for kx in 0..g.kw {
                        let wv = wk[ky * g.kw + kx];
                        let (lo, hi) = valid_range(g.w_out, g.w, sx, kx, px);
                        if lo == hi {
                            continue;
                        }
                        if sx == 1 {
                            for (d, v) in xrow[lo + kx - px..hi + kx - px].iter_mut().zip(&dyrow[lo..hi]) {
                                *d += wv * v;
                            }
                        } else {
                            for ox in lo..hi {
                                xrow[ox * sx + kx - px] += wv * dyrow[ox];
                            }
                        }
                    }
                }
            }
        }
    });
}

fn depthwise_backward_weight(x: &[f32], dy: &[f32], g: &Conv2dGeom, s: &Sizes) -> Vec<f32> {
    let (sy, sx) = g.stride;
    let (py, px) = g.pad;
    let taps = g.kh * g.kw;
    let mut dw = vec![0.0f32; g.c_out * taps];
    // One job per output channel: its taps sum over every image and pixel.
    for_planes(&mut dw, taps, g.flops(), |co, dwk| {
        let ci = co / s.cog;
        for img in 0..g.n {
            let xi = &x[(img * g.c_in + ci) * s.hw..][..s.hw];
            let dyp = &dy[(img * g.c_out + co) * s.p..][..s.p];
            for (oy, dyrow) in dyp.chunks(g.w_out).enumerate() {
                for ky in 0..g.kh {
                    let iy = (oy * sy + ky) as isize - py as isize;
                    if iy < 0 || iy >= g.h as isize {
                        continue;
                    }
                    let xrow = &xi[iy as usize * g.w..][..g.w];
                    for kx in 0..g.kw {
                        let (lo, hi) = valid_range(g.w_out, g.w, sx, kx, px);
                        if lo == hi {
                            continue;
                        }
                        let acc: f32 = if sx == 1 {
                            xrow[lo + kx - px..hi + kx - px].iter().zip(&dyrow[lo..hi]).map(|(a, b)| a * b).sum()
                        } else {
                            (lo..hi).map(|ox| xrow[ox * sx + kx - px] * dyrow[ox]).sum()
                        };
                        dwk[ky * g.kw + kx] += acc;
                    }
                }
            }
        }
    });
    dw
}

// ---- direct AVX-512 convolution for stride-1 "same-width" convs (3x3 pad 1 and the like) ----

/// Direct convolution for stride-1, groups-1 convs whose output rows are as wide as the input
/// (kw = 2·pad_x + 1), e.g. every 3x3 pad-1 conv of a CIFAR ResNet. Pixels are taken 16 at a
/// time in flattened (row, column) order: with equal input and output widths, tap (ky, kx) of
/// output pixel p reads input pixel p + ky·w + kx of a plane padded by pad_y rows plus pad_x
/// floats in front, so one unaligned load per 16 pixels serves every tap; lanes whose column
/// would leave the row (and wrap into the neighbouring one) are masked to zero. No column
/// buffer: each input float is copied once (into the padded plane) instead of kh·kw times.
///
/// Backward data of such a conv is the same kind of conv (dy with the spatially flipped,
/// channel-transposed weights, padding k−1−pad), so it runs on the same kernel. Backward
/// weight reduces over pixels: per (output channel, tap) a 16-lane partial sum, reduced at
/// the end of each job.
#[cfg(target_arch = "x86_64")]
mod direct {
    use super::{has_avx512, run_jobs, with_scratch, SendPtr, PAR_MIN_FLOPS};
    use crate::backend::Conv2dGeom;
    use std::arch::x86_64::*;

    /// Pixel vectors (of 16) per forward block.
    const NV: usize = 4;
    /// Output channels per forward block: NV·NC accumulators plus NV inputs and one broadcast
    /// weight fit the 32 zmm registers.
    const NC: usize = 6;
    /// Output channels per backward-weight block, times up to 3 taps of one kernel row.
    const WC: usize = 6;
    const WT: usize = 3;

    /// Whether the direct path handles this conv (and the CPU has AVX-512).
    pub fn applies(g: &Conv2dGeom) -> bool {
        has_avx512()
            && g.groups == 1
            && g.stride == (1, 1)
            && !(g.kh == 1 && g.kw == 1)
            && g.kw == 2 * g.pad.1 + 1
            && g.pad.0 < g.kh
            && g.w_out == g.w
            && g.h + 2 * g.pad.0 + 1 == g.h_out + g.kh
            && g.n * g.c_in * g.c_out * g.h_out * g.w > 0
    }

    /// Padded planes and per-vector column masks of one "same-width" conv of an h_in x w input
    /// into h_out x w outputs.
    struct Plan {
        w: usize,
        kh: usize,
        kw: usize,
        hw_in: usize,
        /// Output pixels per channel.
        p: usize,
        /// Zero floats in front of each padded plane: pad_y·w + pad_x.
        front: usize,
        /// Floats per padded plane (covers the last vector's over-read).
        l: usize,
        /// Pixel vectors per channel: ceil(p / 16).
        nvec: usize,
        /// masks[v·kw + kx]: lanes of vector v whose column stays in the row at tap kx.
        masks: Vec<u16>,
        /// tails[v]: lanes of vector v inside the p pixels (all but the last are full).
        tails: Vec<u16>,
    }

    impl Plan {
        fn new(h_in: usize, w: usize, h_out: usize, kh: usize, kw: usize, pad: (usize, usize)) -> Plan {
            let p = h_out * w;
            let nvec = p.div_ceil(16);
            let l = (16 * nvec + (kh - 1) * w + kw - 1).next_multiple_of(16);
            let mut masks = vec![0u16; nvec * kw];
            for v in 0..nvec {
                for kx in 0..kw {
                    for j in 0..16 {
                        let ox = ((16 * v + j) % w) as isize + kx as isize - pad.1 as isize;
                        if ox >= 0 && ox < w as isize {
                            masks[v * kw + kx] |= 1 << j;
                        }
                    }
                }
            }
            let rem = p - 16 * (nvec - 1);
            let mut tails = vec![0xffffu16; nvec];
            tails[nvec - 1] = ((1u32 << rem) - 1) as u16;
            Plan { w, kh, kw, hw_in: h_in * w, p, front: pad.0 * w + pad.1, l, nvec, masks, tails }
        }

        /// dst [c][l] = the c input planes src [c][h_in·w] between zeros.
        fn pad(&self, src: &[f32], dst: &mut [f32]) {
            for (plane, s) in dst.chunks_exact_mut(self.l).zip(src.chunks_exact(self.hw_in)) {
                plane[..self.front].fill(0.0);
                plane[self.front..self.front + self.hw_in].copy_from_slice(s);
                plane[self.front + self.hw_in..].fill(0.0);
            }
        }
    }

    /// Weights reordered for the forward kernel: per block of up to NC output channels
    /// (block starting at co0 stored at co0·cin·kh·kw), [kx][ci][ky][c]. `at(co, ci, ky, kx)`
    /// reads the logical weight.
    fn reorder(
        cout: usize,
        cin: usize,
        kh: usize,
        kw: usize,
        at: impl Fn(usize, usize, usize, usize) -> f32,
    ) -> Vec<f32> {
        let mut out = Vec::with_capacity(cout * cin * kh * kw);
        for co0 in (0..cout).step_by(NC) {
            let nc = NC.min(cout - co0);
            for kx in 0..kw {
                for ci in 0..cin {
                    for ky in 0..kh {
                        for c in 0..nc {
                            out.push(at(co0 + c, ci, ky, kx));
                        }
                    }
                }
            }
        }
        out
    }

    /// Forward: y [n, c_out, h_out, w] from x [n, c_in, h, w] and w [c_out, c_in, kh, kw].
    pub fn forward(x: &[f32], w: &[f32], g: &Conv2dGeom) -> Vec<f32> {
        let (cin, k) = (g.c_in, g.kh * g.kw);
        let wb = reorder(g.c_out, cin, g.kh, g.kw, |co, ci, ky, kx| w[(co * cin + ci) * k + ky * g.kw + kx]);
        let plan = Plan::new(g.h, g.w, g.h_out, g.kh, g.kw, g.pad);
        same_conv(x, g.n, cin, &wb, g.c_out, &plan, g.flops())
    }

    /// Backward data: dx [n, c_in, h, w] from dy and w, as the conv of dy with the flipped,
    /// transposed weights (padding kh−1−pad_y, kw−1−pad_x keeps the widths equal).
    pub fn backward_data(dy: &[f32], w: &[f32], g: &Conv2dGeom) -> Vec<f32> {
        let (cin, cout, kh, kw) = (g.c_in, g.c_out, g.kh, g.kw);
        let wb =
            reorder(cin, cout, kh, kw, |ci, co, ky, kx| w[((co * cin + ci) * kh + kh - 1 - ky) * kw + kw - 1 - kx]);
        let plan = Plan::new(g.h_out, g.w, g.h, kh, kw, (kh - 1 - g.pad.0, kw - 1 - g.pad.1));
        same_conv(dy, g.n, cout, &wb, cin, &plan, g.flops())
    }

    type FwdKernel =
        unsafe fn(*const f32, usize, usize, usize, usize, usize, *const f32, *const u16, *mut f32, usize, usize);

    /// The forward kernel for nv pixel vectors and nc output channels (1 <= nv <= NV, 1 <= nc <= NC).
    fn fwd_kernel(nv: usize, nc: usize) -> FwdKernel {
        pick_4x6!(fwd_block, nv, nc)
    }

    /// out [n, cout, plan.p] = conv of inp [n, cin, plan.hw_in] with blocked weights wb.
    fn same_conv(inp: &[f32], n: usize, cin: usize, wb: &[f32], cout: usize, plan: &Plan, flops: f64) -> Vec<f32> {
        assert!(has_avx512() && inp.len() == n * cin * plan.hw_in && wb.len() == cout * cin * plan.kh * plan.kw);
        let p = plan.p;
        let len = n * cout * p;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let op = SendPtr(out.as_mut_ptr());
        let k = cin * plan.kh * plan.kw;
        run_jobs(n, flops, |img| {
            with_scratch(cin * plan.l, |xp| {
                plan.pad(&inp[img * cin * plan.hw_in..][..cin * plan.hw_in], xp);
                for co0 in (0..cout).step_by(NC) {
                    let nc = NC.min(cout - co0);
                    for v0 in (0..plan.nvec).step_by(NV) {
                        let nv = NV.min(plan.nvec - v0);
                        let kern = fwd_kernel(nv, nc);
                        let nstore = p - 16 * v0;
                        // SAFETY: avx512f was checked (assert above). Loads: vector v < nv of
                        // tap (ci, ky, kx) reads xp[ci·l + 16(v0+v) + ky·w + kx .. +16], below
                        // ci·l + 16·nvec + (kh−1)·w + kw − 1 <= (ci+1)·l, inside xp's cin·l;
                        // weights read wb[co0·k .. (co0+nc)·k]; masks[(v0+v)·kw + kx] exists.
                        // Stores: channels co0..co0+nc, pixels 16·v0 .. min(p, 16(v0+nv)) of
                        // image img, inside out's capacity n·cout·p and written by this job only.
                        unsafe {
                            kern(
                                xp.as_ptr().add(16 * v0),
                                plan.l,
                                cin,
                                plan.kh,
                                plan.kw,
                                plan.w,
                                wb.as_ptr().add(co0 * k),
                                plan.masks.as_ptr().add(v0 * plan.kw),
                                op.get().add((img * cout + co0) * p + 16 * v0),
                                p,
                                nstore,
                            )
                        }
                    }
                }
            })
        });
        // SAFETY: the blocks of every image cover all cout channels and all p pixels, and the
        // kernel stores every one of them.
        unsafe { out.set_len(len) };
        out
    }

    /// acc[v][c] = Σ over (kx, ci, ky) of x[v-th vector shifted by ky·w + kx, masked] · w[c];
    /// stores the first `nstore` pixels of each of the NC channels (channel stride p).
    ///
    /// # Safety
    /// avx512f; the pointer ranges described at the call in `same_conv`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    unsafe fn fwd_block<const V: usize, const C: usize>(
        xp: *const f32,
        l: usize,
        cin: usize,
        kh: usize,
        kw: usize,
        w: usize,
        wb: *const f32,
        masks: *const u16,
        y: *mut f32,
        p: usize,
        nstore: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); C]; V];
        for kx in 0..kw {
            let mut m = [0u16; V];
            for (v, mv) in m.iter_mut().enumerate() {
                // SAFETY: masks holds V·kw entries for these vectors (caller).
                *mv = unsafe { *masks.add(v * kw + kx) };
            }
            // SAFETY (this block): offsets stay inside the ranges the caller vouched for.
            unsafe {
                let mut wp = wb.add(kx * cin * kh * C);
                for ci in 0..cin {
                    let mut xr = xp.add(ci * l + kx);
                    for _ in 0..kh {
                        let mut xin = [_mm512_setzero_ps(); V];
                        for v in 0..V {
                            xin[v] = _mm512_maskz_loadu_ps(m[v], xr.add(16 * v));
                        }
                        for c in 0..C {
                            let wv = _mm512_set1_ps(*wp.add(c));
                            for v in 0..V {
                                acc[v][c] = _mm512_fmadd_ps(xin[v], wv, acc[v][c]);
                            }
                        }
                        wp = wp.add(C);
                        xr = xr.add(w);
                    }
                }
            }
        }
        for v in 0..V {
            let rem = nstore.saturating_sub(16 * v).min(16);
            let mask = ((1u32 << rem) - 1) as u16;
            for c in 0..C {
                // SAFETY: the first min(16, nstore − 16v) pixels of channel c of this vector
                // are inside the caller's output block.
                unsafe {
                    let d = y.add(c * p + 16 * v);
                    if rem == 16 {
                        _mm512_storeu_ps(d, acc[v][c]);
                    } else if rem > 0 {
                        _mm512_mask_storeu_ps(d, mask, acc[v][c]);
                    }
                }
            }
        }
    }

    type WgtKernel = unsafe fn(
        *const f32,
        usize,
        *const f32,
        usize,
        usize,
        usize,
        usize,
        *const u16,
        usize,
        *const u16,
        *mut f32,
        usize,
    );

    fn wgt_kernel(nt: usize, nc: usize) -> WgtKernel {
        macro_rules! by_nc {
            ($t:literal) => {
                match nc {
                    1 => wgt_block::<$t, 1>,
                    2 => wgt_block::<$t, 2>,
                    3 => wgt_block::<$t, 3>,
                    4 => wgt_block::<$t, 4>,
                    5 => wgt_block::<$t, 5>,
                    6 => wgt_block::<$t, 6>,
                    7 => wgt_block::<$t, 7>,
                    _ => wgt_block::<$t, 8>,
                }
            };
        }
        match nt {
            1 => by_nc!(1),
            2 => by_nc!(2),
            _ => by_nc!(3),
        }
    }

    /// Backward weight: dw [c_out, c_in, kh, kw] from x and dy.
    pub fn backward_weight(x: &[f32], dy: &[f32], g: &Conv2dGeom) -> Vec<f32> {
        assert!(has_avx512());
        let (cin, cout, kh, kw) = (g.c_in, g.c_out, g.kh, g.kw);
        let plan = Plan::new(g.h, g.w, g.h_out, kh, kw, g.pad);
        let p = plan.p;
        assert!(x.len() == g.n * cin * plan.hw_in && dy.len() == g.n * cout * p);
        let wlen = cout * cin * kh * kw;
        // Images per job: enough pixels that the horizontal sums at the end are amortized.
        let gimg = 1024usize.div_ceil(p).clamp(1, g.n.div_ceil(rayon::current_num_threads()).max(1));
        let jobs = g.n.div_ceil(gimg);
        let job = |mut acc: Vec<f32>, job: usize| -> Vec<f32> {
            let i0 = job * gimg;
            let gi = gimg.min(g.n - i0);
            with_scratch(gi * cin * plan.l, |xp| {
                plan.pad(&x[i0 * cin * plan.hw_in..][..gi * cin * plan.hw_in], xp);
                let dyi = &dy[i0 * cout * p..][..gi * cout * p];
                for co0 in (0..cout).step_by(WC) {
                    let nc = WC.min(cout - co0);
                    for ci in 0..cin {
                        for ky in 0..kh {
                            for kx0 in (0..kw).step_by(WT) {
                                let nt = WT.min(kw - kx0);
                                // SAFETY: avx512f asserted. x loads: image i < gi, vector v <
                                // nvec, tap kx0 + t reads xp[(i·cin + ci)·l + ky·w + kx0 + t +
                                // 16v .. +16], inside plane (i·cin + ci) as in same_conv. dy
                                // loads: channel co0 + c < cout, pixels 16v.. masked to < p.
                                // Writes acc[((co0 + c)·cin + ci)·kh·kw + ky·kw + kx0 + t] <
                                // wlen, a job-private vector.
                                unsafe {
                                    wgt_kernel(nt, nc)(
                                        xp.as_ptr().add(ci * plan.l + ky * plan.w + kx0),
                                        cin * plan.l,
                                        dyi.as_ptr().add(co0 * p),
                                        cout * p,
                                        p,
                                        gi,
                                        plan.nvec,
                                        plan.masks.as_ptr().add(kx0),
                                        kw,
                                        plan.tails.as_ptr(),
                                        acc.as_mut_ptr().add((co0 * cin + ci) * kh * kw + ky * kw + kx0),
                                        cin * kh * kw,
                                    )
                                }
                            }
                        }
                    }
                }
            });
            acc
        };
        super::sum_jobs(jobs, wlen, jobs > 1 && g.flops() >= PAR_MIN_FLOPS, job)
    }

    /// out[c·ocs + t] += Σ over images i < gi and pixels of dy[i][c][pixel] · x[i][pixel + tap t]
    /// (tap t masked to its row), for C channels and T adjacent taps of one kernel row.
    ///
    /// # Safety
    /// avx512f; the ranges described at the call in `backward_weight`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    unsafe fn wgt_block<const T: usize, const C: usize>(
        xp: *const f32,
        xs: usize,
        dy: *const f32,
        dys: usize,
        p: usize,
        gi: usize,
        nvec: usize,
        masks: *const u16,
        kw: usize,
        tails: *const u16,
        out: *mut f32,
        ocs: usize,
    ) {
        // Flat, sized for the largest block: LLVM keeps some elements of a nested [[_; T]; C]
        // array in memory.
        let mut acc = [_mm512_setzero_ps(); WC * WT];
        // One flat loop over (image, vector): nested loops (or a test for the last vector)
        // make LLVM keep part of the accumulators in memory.
        let (mut v, mut xb, mut db) = (0, xp, dy);
        for _ in 0..gi * nvec {
            // SAFETY (this block): offsets stay inside the ranges the caller vouched for.
            unsafe {
                let dm = *tails.add(v);
                let xr = xb.add(16 * v);
                let mut xin = [_mm512_setzero_ps(); T];
                for t in 0..T {
                    xin[t] = _mm512_maskz_loadu_ps(*masks.add(v * kw + t), xr.add(t));
                }
                let dr = db.add(16 * v);
                for c in 0..C {
                    let d = _mm512_maskz_loadu_ps(dm, dr.add(c * p));
                    for t in 0..T {
                        acc[c * T + t] = _mm512_fmadd_ps(xin[t], d, acc[c * T + t]);
                    }
                }
                v += 1;
                if v == nvec {
                    v = 0;
                    xb = xb.wrapping_add(xs);
                    db = db.wrapping_add(dys);
                }
            }
        }
        for c in 0..C {
            for t in 0..T {
                // SAFETY: out[c·ocs + t] is inside the caller's accumulator.
                unsafe { *out.add(c * ocs + t) += _mm512_reduce_add_ps(acc[c * T + t]) };
            }
        }
    }
}

/// Backward weight of 3x3 groups-1 convs (any stride and padding), vectorized over output
/// channels: dwᵀ[(ci, ky, kx)][co] += x_pad[ci][oy·sy + ky][ox·sx + kx] · dyᵀ[(oy, ox)][co],
/// with dy transposed per image into [pixel][co] (co padded to 16 or 32) so one broadcast input
/// float feeds 1 or 2 full vectors of output channels. The other layout (pixels in lanes) needs
/// two vector loads per FMA, which Zen 4's load ports cannot sustain.
#[cfg(target_arch = "x86_64")]
pub(super) mod wgt3 {
    use super::{has_avx512, with_scratch, PAR_MIN_FLOPS};
    use crate::backend::Conv2dGeom;
    use std::arch::x86_64::*;

    pub fn applies(g: &Conv2dGeom) -> bool {
        has_avx512()
            && g.groups == 1
            && g.kh == 3
            && g.kw == 3
            && g.n * g.c_in * g.c_out * g.h_out * g.w_out > 0
            // Per-image scratch (padded input and dyᵀ) within 4 MiB.
            && g.c_in * (g.h + 2 * g.pad.0) * (g.w + 2 * g.pad.1) + g.h_out * g.w_out * g.c_out.next_multiple_of(16)
                <= 1 << 20
    }

    /// dw [c_out, c_in, 3, 3] from x and dy.
    pub fn backward_weight(x: &[f32], dy: &[f32], g: &Conv2dGeom) -> Vec<f32> {
        assert!(applies(g));
        let (cin, cout) = (g.c_in, g.c_out);
        let (hp, wp) = (g.h + 2 * g.pad.0, g.w + 2 * g.pad.1);
        let plane = hp * wp;
        let p = g.h_out * g.w_out;
        // Output channels per kernel pass: 32 (two vectors, 9 taps of one ci) or 16 (one
        // vector, 9 taps of two ci) when fewer than 32 remain.
        let coutp = cout.next_multiple_of(16);
        let k = cin * 9;
        let dwt_len = k * coutp;
        let hw = g.h * g.w;
        let job = |mut acc: Vec<f32>, img: usize| -> Vec<f32> {
            with_scratch(cin * plane + p * coutp, |buf| {
                let (xpw, dyt) = buf.split_at_mut(cin * plane);
                // Zero-padded input planes.
                let (py, px) = g.pad;
                for (ci, pl) in xpw.chunks_exact_mut(plane).enumerate() {
                    pl[..py * wp].fill(0.0);
                    pl[(py + g.h) * wp..].fill(0.0);
                    let src = &x[(img * cin + ci) * hw..][..hw];
                    for (row, dst) in src.chunks_exact(g.w).zip(pl[py * wp..].chunks_exact_mut(wp)) {
                        dst[..px].fill(0.0);
                        dst[px..px + g.w].copy_from_slice(row);
                        dst[px + g.w..].fill(0.0);
                    }
                }
                // dyᵀ [p][coutp], padding channels zero.
                let dyi = &dy[img * cout * p..][..cout * p];
                let pfull = p / 16 * 16;
                for co0 in (0..coutp).step_by(16) {
                    let rows = 16.min(cout - co0.min(cout));
                    for p0 in (0..pfull).step_by(16) {
                        // SAFETY: avx512f (applies). Reads rows co0..co0+rows (< cout) of dyi,
                        // pixels p0..p0+16 <= p; writes dyt rows p0..p0+16 (< p), lanes
                        // co0..co0+16 <= coutp.
                        unsafe {
                            transpose16(
                                dyi.as_ptr().add(co0 * p + p0),
                                p,
                                rows,
                                dyt.as_mut_ptr().add(p0 * coutp + co0),
                                coutp,
                            )
                        };
                    }
                }
                for (pi, row) in dyt.chunks_exact_mut(coutp).enumerate().skip(pfull) {
                    for (co, d) in row[..cout].iter_mut().enumerate() {
                        *d = dyi[co * p + pi];
                    }
                    row[cout..].fill(0.0);
                }
                let mut co0 = 0;
                while co0 < coutp {
                    let two = coutp - co0 >= 32;
                    let ci_step = if two { 1 } else { 2 };
                    let mut ci = 0;
                    while ci < cin {
                        let nci = ci_step.min(cin - ci);
                        // SAFETY: avx512f (applies). x reads: channels ci..ci+nci, rows
                        // oy·sy + ky <= (h_out−1)·sy + 2 < hp and columns ox·sx + kx < wp of
                        // planes inside xpw. dyᵀ reads: rows < p, lanes co0..co0+16·cv <= coutp.
                        // acc writes: rows ci·9 .. (ci+nci)·9 of dwᵀ, lanes as for dyᵀ; acc is
                        // job-private.
                        unsafe {
                            let xb = xpw.as_ptr().add(ci * plane);
                            let db = dyt.as_ptr().add(co0);
                            let ab = acc.as_mut_ptr().add(ci * 9 * coutp + co0);
                            match (two, nci) {
                                (true, _) => kern::<1, 2>(xb, plane, wp, g, db, coutp, ab),
                                (false, 2) => kern::<2, 1>(xb, plane, wp, g, db, coutp, ab),
                                _ => kern::<1, 1>(xb, plane, wp, g, db, coutp, ab),
                            }
                        }
                        ci += nci;
                    }
                    co0 += if two { 32 } else { 16 };
                }
            });
            acc
        };
        let dwt = super::sum_jobs(g.n, dwt_len, g.n > 1 && g.flops() >= PAR_MIN_FLOPS, job);
        let mut dw = vec![0.0f32; cout * k];
        for (co, row) in dw.chunks_exact_mut(k).enumerate() {
            for (kk, d) in row.iter_mut().enumerate() {
                *d = dwt[kk * coutp + co];
            }
        }
        dw
    }

    /// dst[j·ld + i] = src[i·ls + j] for i, j < 16, with src rows i >= rows read as zeros: a
    /// 16x16 transpose in four rounds of two-source permutes, round b swapping row-index bit b
    /// with column-index bit b.
    ///
    /// # Safety
    /// avx512f; src rows i < rows hold 16 readable floats at src + i·ls; dst rows j < 16 hold 16
    /// writable floats at dst + j·ld.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)]
    pub(super) unsafe fn transpose16(src: *const f32, ls: usize, rows: usize, dst: *mut f32, ld: usize) {
        let mut r = [_mm512_setzero_ps(); 16];
        for i in 0..rows.min(16) {
            // SAFETY: row i < rows is readable (caller).
            r[i] = unsafe { _mm512_loadu_ps(src.add(i * ls)) };
        }
        for b in 0..4 {
            let bit = 1 << b;
            let (mut lo, mut hi) = ([0i32; 16], [0i32; 16]);
            for c in 0..16 {
                if c & bit == 0 {
                    (lo[c], hi[c]) = (c as i32, (c | bit) as i32);
                } else {
                    (lo[c], hi[c]) = (16 + (c ^ bit) as i32, 16 + c as i32);
                }
            }
            // SAFETY: 16-element arrays, unaligned loads.
            let (ilo, ihi) =
                unsafe { (_mm512_loadu_si512(lo.as_ptr().cast()), _mm512_loadu_si512(hi.as_ptr().cast())) };
            for i in 0..16 {
                if i & bit == 0 {
                    let (a, c) = (r[i], r[i | bit]);
                    r[i] = _mm512_permutex2var_ps(a, ilo, c);
                    r[i | bit] = _mm512_permutex2var_ps(a, ihi, c);
                }
            }
        }
        for j in 0..16 {
            // SAFETY: row j < 16 of dst is writable (caller).
            unsafe { _mm512_storeu_ps(dst.add(j * ld), r[j]) };
        }
    }

    /// acc[(c·9 + ky·3 + kx)·ld + 16v ..] += Σ over output pixels of
    /// x[c][oy·sy + ky][ox·sx + kx] · dyᵀ[pixel][16v ..], for c < NCI, v < CV.
    ///
    /// # Safety
    /// avx512f; the ranges described at the call in `backward_weight`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn kern<const NCI: usize, const CV: usize>(
        xb: *const f32,
        plane: usize,
        wp: usize,
        g: &Conv2dGeom,
        dyt: *const f32,
        ld: usize,
        acc: *mut f32,
    ) {
        let (sy, sx) = g.stride;
        // Flat, sized for the largest block (NCI·9·CV <= 18): LLVM keeps nested arrays of
        // vectors partly in memory.
        let mut a = [_mm512_setzero_ps(); 18];
        let mut d = dyt;
        for oy in 0..g.h_out {
            // SAFETY (this block): see the caller; every address stays in the ranges it lists.
            unsafe {
                let mut xr = xb.add(oy * sy * wp);
                for _ in 0..g.w_out {
                    let mut dv = [_mm512_setzero_ps(); CV];
                    for v in 0..CV {
                        dv[v] = _mm512_loadu_ps(d.add(16 * v));
                    }
                    for c in 0..NCI {
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let xv = _mm512_set1_ps(*xr.add(c * plane + ky * wp + kx));
                                for v in 0..CV {
                                    let i = (c * 9 + ky * 3 + kx) * CV + v;
                                    a[i] = _mm512_fmadd_ps(xv, dv[v], a[i]);
                                }
                            }
                        }
                    }
                    xr = xr.add(sx);
                    d = d.add(ld);
                }
            }
        }
        for t in 0..NCI * 9 {
            for v in 0..CV {
                // SAFETY: row t of this block of dwᵀ, lanes 16v.. inside the caller's range.
                unsafe {
                    let pa = acc.add(t * ld + 16 * v);
                    _mm512_storeu_ps(pa, _mm512_add_ps(_mm512_loadu_ps(pa), a[t * CV + v]));
                }
            }
        }
    }
}

/// Forward of groups-1 convs the pixel-lane `direct` kernel does not take (stride 2, 1x1
/// stride-2 downsampling), vectorized over output channels: yᵀ[pixel][co] = Σ over (ci, ky, kx)
/// of x_pad[ci][oy·sy + ky][ox·sx + kx] (broadcast) · Wᵀ[(ci, ky, kx)][co] (1 or 2 vectors),
/// for runs of up to 8 pixels of one output row; yᵀ is transposed back per image.
#[cfg(target_arch = "x86_64")]
pub(super) mod fwdc {
    use super::{has_avx512, run_jobs, with_scratch, SendPtr};
    use crate::backend::Conv2dGeom;
    use std::arch::x86_64::*;

    /// Pixels per kernel call (along one output row).
    const NP: usize = 8;

    /// Whether the kernel computes this conv correctly (every groups-1 conv, given AVX-512).
    pub fn supports(g: &Conv2dGeom) -> bool {
        has_avx512() && g.groups == 1
    }

    /// Whether it should: `supports` plus the shapes where it beats the GEMM path.
    pub fn applies(g: &Conv2dGeom) -> bool {
        has_avx512()
            && g.groups == 1
            && (g.stride.1 == 1 || g.stride.1 == 2)
            && g.n * g.c_in * g.c_out * g.h_out * g.w_out > 0
            && g.c_in >= 4
            // Lanes are output channels: at most a quarter of them padding.
            && 4 * g.c_out >= 3 * g.c_out.next_multiple_of(16)
            // Per-image scratch (padded input and yᵀ) within 4 MiB floats-wise; bigger maps
            // stream better through the tiled GEMM.
            && g.c_in * (g.h + 2 * g.pad.0) * (g.w + 2 * g.pad.1) + g.h_out * g.w_out * g.c_out.next_multiple_of(16)
                <= 1 << 20
            // 1x1 stride-1 unpadded convs are plain GEMMs on the input planes.
            && !(g.kh == 1 && g.kw == 1 && g.stride == (1, 1) && g.pad == (0, 0))
    }

    /// y [n, c_out, h_out, w_out] from x [n, c_in, h, w] and w [c_out, c_in, kh, kw].
    pub fn forward(x: &[f32], w: &[f32], g: &Conv2dGeom) -> Vec<f32> {
        assert!(supports(g));
        let (cin, cout, kh, kw) = (g.c_in, g.c_out, g.kh, g.kw);
        let (hp, wp) = (g.h + 2 * g.pad.0, g.w + 2 * g.pad.1);
        let plane = hp * wp;
        let p = g.h_out * g.w_out;
        let coutp = cout.next_multiple_of(16);
        let k = cin * kh * kw;
        // Wᵀ [k][coutp], padding channels zero.
        let mut wt = vec![0.0f32; k * coutp];
        for co in 0..cout {
            for kk in 0..k {
                wt[kk * coutp + co] = w[co * k + kk];
            }
        }
        let hw = g.h * g.w;
        let len = g.n * cout * p;
        let mut y: Vec<f32> = Vec::with_capacity(len);
        let yp = SendPtr(y.as_mut_ptr());
        run_jobs(g.n, g.flops(), |img| {
            with_scratch(cin * plane + p * coutp, |buf| {
                let (xpw, yt) = buf.split_at_mut(cin * plane);
                let (py, px) = g.pad;
                for (ci, pl) in xpw.chunks_exact_mut(plane).enumerate() {
                    pl[..py * wp].fill(0.0);
                    pl[(py + g.h) * wp..].fill(0.0);
                    let src = &x[(img * cin + ci) * hw..][..hw];
                    for (row, dst) in src.chunks_exact(g.w).zip(pl[py * wp..].chunks_exact_mut(wp)) {
                        dst[..px].fill(0.0);
                        dst[px..px + g.w].copy_from_slice(row);
                        dst[px + g.w..].fill(0.0);
                    }
                }
                for co0 in (0..coutp).step_by(32) {
                    let two = coutp - co0 >= 32;
                    for oy in 0..g.h_out {
                        for ox0 in (0..g.w_out).step_by(NP) {
                            let np = NP.min(g.w_out - ox0);
                            // SAFETY: avx512f (applies). x reads: channel ci < cin, row oy·sy +
                            // ky < hp, column (ox0 + j)·sx + kx < wp (j < np) of xpw. Wᵀ reads
                            // rows < k, lanes co0..co0+16·cv <= coutp. yᵀ writes rows
                            // oy·w_out + ox0 + j < p, same lanes; yᵀ is this thread's scratch.
                            unsafe {
                                let xb = xpw.as_ptr().add(oy * g.stride.0 * wp + ox0 * g.stride.1);
                                let wb = wt.as_ptr().add(co0);
                                let yb = yt.as_mut_ptr().add((oy * g.w_out + ox0) * coutp + co0);
                                kernel(np, two, g.stride.1)(xb, plane, wp, cin, kh, kw, wb, coutp, yb);
                            }
                        }
                    }
                }
                // yᵀ [p][coutp] -> y [cout][p] of this image.
                let pfull = p / 16 * 16;
                // SAFETY: y has capacity n·cout·p; this image's cout·p block belongs to this job.
                let yi = unsafe { std::slice::from_raw_parts_mut(yp.get().add(img * cout * p), cout * p) };
                for co0 in (0..cout).step_by(16) {
                    let rows = 16.min(cout - co0);
                    for p0 in (0..pfull).step_by(16) {
                        if rows == 16 {
                            // SAFETY: avx512f; yᵀ rows p0..p0+16 hold lanes co0..co0+16; y rows
                            // co0..co0+16 hold pixels p0..p0+16.
                            unsafe {
                                super::wgt3::transpose16(
                                    yt.as_ptr().add(p0 * coutp + co0),
                                    coutp,
                                    16,
                                    yi.as_mut_ptr().add(co0 * p + p0),
                                    p,
                                )
                            };
                        } else {
                            for c in co0..co0 + rows {
                                for pi in p0..p0 + 16 {
                                    yi[c * p + pi] = yt[pi * coutp + c];
                                }
                            }
                        }
                    }
                    for c in co0..co0 + rows {
                        for pi in pfull..p {
                            yi[c * p + pi] = yt[pi * coutp + c];
                        }
                    }
                }
            })
        });
        // SAFETY: every image's cout·p block was fully written above.
        unsafe { y.set_len(len) };
        y
    }

    type Kern = unsafe fn(*const f32, usize, usize, usize, usize, usize, *const f32, usize, *mut f32);

    fn kernel(np: usize, two: bool, sx: usize) -> Kern {
        macro_rules! by_np {
            ($cv:literal, $sx:literal) => {
                match np {
                    1 => kern::<1, $cv, $sx>,
                    2 => kern::<2, $cv, $sx>,
                    3 => kern::<3, $cv, $sx>,
                    4 => kern::<4, $cv, $sx>,
                    5 => kern::<5, $cv, $sx>,
                    6 => kern::<6, $cv, $sx>,
                    7 => kern::<7, $cv, $sx>,
                    _ => kern::<8, $cv, $sx>,
                }
            };
        }
        match (two, sx) {
            (true, 1) => by_np!(2, 1),
            (true, _) => by_np!(2, 2),
            (false, 1) => by_np!(1, 1),
            (false, _) => by_np!(1, 2),
        }
    }

    /// yᵀ[j·ld + 16v ..] = Σ over (ci, ky, kx) of x[ci·plane + ky·wp + j·SX + kx] ·
    /// Wᵀ[((ci·kh + ky)·kw + kx)·ld + 16v ..], for pixels j < P and vectors v < CV.
    ///
    /// # Safety
    /// avx512f; the ranges described at the call in `forward`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
    unsafe fn kern<const P: usize, const CV: usize, const SX: usize>(
        xb: *const f32,
        plane: usize,
        wp: usize,
        cin: usize,
        kh: usize,
        kw: usize,
        wb: *const f32,
        ld: usize,
        yt: *mut f32,
    ) {
        let mut a = [_mm512_setzero_ps(); 16];
        let mut wr = wb;
        for ci in 0..cin {
            for ky in 0..kh {
                // SAFETY (this block): see the caller.
                unsafe {
                    let xr = xb.add(ci * plane + ky * wp);
                    for kx in 0..kw {
                        let mut wv = [_mm512_setzero_ps(); CV];
                        for v in 0..CV {
                            wv[v] = _mm512_loadu_ps(wr.add(16 * v));
                        }
                        for j in 0..P {
                            let xv = _mm512_set1_ps(*xr.add(j * SX + kx));
                            for v in 0..CV {
                                a[j * CV + v] = _mm512_fmadd_ps(xv, wv[v], a[j * CV + v]);
                            }
                        }
                        wr = wr.add(ld);
                    }
                }
            }
        }
        for j in 0..P {
            for v in 0..CV {
                // SAFETY: row j of yᵀ, lanes 16v.. (caller).
                unsafe { _mm512_storeu_ps(yt.add(j * ld + 16 * v), a[j * CV + v]) };
            }
        }
    }
}

/// Backward data of the groups-1 convs the pixel-lane `direct` kernel skips (stride 2, 1x1
/// stride-2), vectorized over input channels: for each output pixel and tap,
/// dxᵀ_pad[(oy·sy + ky, ox·sx + kx)][ci] += Σ_co dy[co][oy, ox] (broadcast) · W[co][ky, kx][ci]
/// (1 or 2 vectors), accumulated in registers over co for runs of up to 16 or 8 pixels of a row,
/// then added into a padded [pixel][ci] image that is transposed back.
#[cfg(target_arch = "x86_64")]
pub(super) mod bwdc {
    use super::{has_avx512, run_jobs, with_scratch, SendPtr};
    use crate::backend::Conv2dGeom;
    use std::arch::x86_64::*;

    /// Whether the kernel computes this conv correctly (every groups-1 conv, given AVX-512).
    pub fn supports(g: &Conv2dGeom) -> bool {
        has_avx512() && g.groups == 1
    }

    /// Whether it should: `supports` plus the shapes where it beats the GEMM path.
    pub fn applies(g: &Conv2dGeom) -> bool {
        has_avx512()
            && g.groups == 1
            && g.n * g.c_in * g.c_out * g.h_out * g.w_out > 0
            && g.c_out >= 4
            // Lanes are input channels: at most a quarter of them padding.
            && 4 * g.c_in >= 3 * g.c_in.next_multiple_of(16)
            // Per-image scratch (padded dxᵀ) within 4 MiB.
            && (g.h + 2 * g.pad.0) * (g.w + 2 * g.pad.1) * g.c_in.next_multiple_of(16) <= 1 << 20
            && !(g.kh == 1 && g.kw == 1 && g.stride == (1, 1) && g.pad == (0, 0))
    }

    /// dx [n, c_in, h, w] from dy [n, c_out, h_out, w_out] and w [c_out, c_in, kh, kw].
    pub fn backward_data(dy: &[f32], w: &[f32], g: &Conv2dGeom) -> Vec<f32> {
        assert!(supports(g));
        let (cin, cout, kh, kw) = (g.c_in, g.c_out, g.kh, g.kw);
        let (sy, sx) = g.stride;
        let (hp, wp) = (g.h + 2 * g.pad.0, g.w + 2 * g.pad.1);
        let p = g.h_out * g.w_out;
        let cinp = cin.next_multiple_of(16);
        let taps = kh * kw;
        // W [co][tap][cinp], padding channels zero.
        let mut wr = vec![0.0f32; cout * taps * cinp];
        for co in 0..cout {
            for ci in 0..cin {
                for t in 0..taps {
                    wr[(co * taps + t) * cinp + ci] = w[(co * cin + ci) * taps + t];
                }
            }
        }
        let hw = g.h * g.w;
        // Every element is written below (each image's block by its own job), so no zero-fill.
        let dx_len = g.n * cin * hw;
        let mut dx: Vec<f32> = Vec::with_capacity(dx_len);
        let dxp = SendPtr(dx.as_mut_ptr());
        run_jobs(g.n, g.flops(), |img| {
            with_scratch(hp * wp * cinp, |dxt| {
                dxt.fill(0.0);
                let dyi = &dy[img * cout * p..][..cout * p];
                for ci0 in (0..cinp).step_by(32) {
                    let two = cinp - ci0 >= 32;
                    let np_max = if two { 8 } else { 16 };
                    for t in 0..taps {
                        let (ky, kx) = (t / kw, t % kw);
                        for oy in 0..g.h_out {
                            for ox0 in (0..g.w_out).step_by(np_max) {
                                let np = np_max.min(g.w_out - ox0);
                                // SAFETY: avx512f (applies). dy reads: channels < cout, pixels
                                // oy·w_out + ox0 + j < p of this image. W reads: rows co·taps + t,
                                // lanes ci0..ci0+16·cv <= cinp. dxᵀ writes: padded pixel
                                // (oy·sy + ky)·wp + (ox0 + j)·sx + kx < hp·wp (the forward
                                // geometry keeps every window inside the padded input), same
                                // lanes; dxt is this thread's scratch.
                                unsafe {
                                    let d = dyi.as_ptr().add(oy * g.w_out + ox0);
                                    let wb = wr.as_ptr().add(t * cinp + ci0);
                                    let xb = dxt.as_mut_ptr().add(((oy * sy + ky) * wp + ox0 * sx + kx) * cinp + ci0);
                                    kernel(np, two)(d, p, cout, wb, taps * cinp, xb, sx * cinp);
                                }
                            }
                        }
                    }
                }
                // dxᵀ_pad interior -> dx [cin][h][w] of this image.
                // SAFETY: dx has capacity for n·cin·hw floats; this image's block belongs to this
                // job. The block is viewed as uninitialised floats, all of which are written below.
                let dxi = unsafe {
                    std::slice::from_raw_parts_mut(
                        dxp.get().add(img * cin * hw).cast::<std::mem::MaybeUninit<f32>>(),
                        cin * hw,
                    )
                };
                let (py, px) = g.pad;
                for iy in 0..g.h {
                    let row = &dxt[((iy + py) * wp + px) * cinp..];
                    for ci0 in (0..cin).step_by(16) {
                        let rows = 16.min(cin - ci0);
                        let mut x0 = 0;
                        if rows == 16 {
                            while x0 + 16 <= g.w {
                                // SAFETY: avx512f; dxᵀ pixels x0..x0+16 of this row hold lanes
                                // ci0..ci0+16; dx rows ci0..ci0+16 hold columns x0..x0+16 of iy.
                                unsafe {
                                    super::wgt3::transpose16(
                                        row.as_ptr().add(x0 * cinp + ci0),
                                        cinp,
                                        16,
                                        dxi.as_mut_ptr().add(ci0 * hw + iy * g.w + x0).cast::<f32>(),
                                        hw,
                                    )
                                };
                                x0 += 16;
                            }
                        }
                        for ci in ci0..ci0 + rows {
                            for ix in x0..g.w {
                                dxi[ci * hw + iy * g.w + ix].write(row[ix * cinp + ci]);
                            }
                        }
                    }
                }
            })
        });
        // SAFETY: the jobs above wrote every element of every image's block: rows iy < h, channels
        // ci < cin (blocks of 16 by transpose16, the rest one by one), columns ix < w.
        unsafe { dx.set_len(dx_len) };
        dx
    }

    type Kern = unsafe fn(*const f32, usize, usize, *const f32, usize, *mut f32, usize);

    fn kernel(np: usize, two: bool) -> Kern {
        macro_rules! by_np {
            ($cv:literal; $($n:literal)*) => {
                match np {
                    $($n => kern::<$n, $cv>,)*
                    _ => unreachable!(),
                }
            };
        }
        if two {
            by_np!(2; 1 2 3 4 5 6 7 8)
        } else {
            by_np!(1; 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16)
        }
    }

    /// dxᵀ[j·xs + 16v ..] += Σ_co d[co·ds + j] · wb[co·ws + 16v ..] for j < P, v < CV.
    ///
    /// # Safety
    /// avx512f; the ranges described at the call in `backward_data`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::needless_range_loop)]
    unsafe fn kern<const P: usize, const CV: usize>(
        d: *const f32,
        ds: usize,
        cout: usize,
        wb: *const f32,
        ws: usize,
        xb: *mut f32,
        xs: usize,
    ) {
        let mut a = [_mm512_setzero_ps(); 16];
        let (mut dr, mut wr) = (d, wb);
        for _ in 0..cout {
            // SAFETY (this block): see the caller.
            unsafe {
                let mut wv = [_mm512_setzero_ps(); CV];
                for v in 0..CV {
                    wv[v] = _mm512_loadu_ps(wr.add(16 * v));
                }
                for j in 0..P {
                    let dv = _mm512_set1_ps(*dr.add(j));
                    for v in 0..CV {
                        a[j * CV + v] = _mm512_fmadd_ps(dv, wv[v], a[j * CV + v]);
                    }
                }
                dr = dr.add(ds);
                wr = wr.add(ws);
            }
        }
        for j in 0..P {
            for v in 0..CV {
                // SAFETY: padded pixel j of the caller's run, lanes 16v.. (caller).
                unsafe {
                    let px = xb.add(j * xs + 16 * v);
                    _mm512_storeu_ps(px, _mm512_add_ps(_mm512_loadu_ps(px), a[j * CV + v]));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| (((i * 31 + seed * 17) % 23) as f32 - 11.0) / 11.0).collect()
    }

    /// Naive f64 forward, and its adjoints, indexed straight from the definition.
    fn naive(x: &[f32], w: &[f32], dy: &[f32], g: &Conv2dGeom) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let (cig, cog) = (g.c_in / g.groups, g.c_out / g.groups);
        let mut y = vec![0.0; g.n * g.c_out * g.h_out * g.w_out];
        let mut dx = vec![0.0; x.len()];
        let mut dw = vec![0.0; w.len()];
        for n in 0..g.n {
            for co in 0..g.c_out {
                for oy in 0..g.h_out {
                    for ox in 0..g.w_out {
                        let yi = ((n * g.c_out + co) * g.h_out + oy) * g.w_out + ox;
                        for c in 0..cig {
                            let ci = co / cog * cig + c;
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.stride.0 + ky) as isize - g.pad.0 as isize;
                                    let ix = (ox * g.stride.1 + kx) as isize - g.pad.1 as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    let xi = ((n * g.c_in + ci) * g.h + iy as usize) * g.w + ix as usize;
                                    let wi = ((co * cig + c) * g.kh + ky) * g.kw + kx;
                                    y[yi] += x[xi] as f64 * w[wi] as f64;
                                    dx[xi] += dy[yi] as f64 * w[wi] as f64;
                                    dw[wi] += dy[yi] as f64 * x[xi] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
        (y, dx, dw)
    }

    fn close(got: &[f32], want: &[f64], what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!((*a as f64 - b).abs() <= 1e-4 * (1.0 + b.abs()), "{what}: element {i}: {a} vs {b}");
        }
    }

    /// Tile heights that do not divide h_out (so P is not a multiple of the tile), one-row
    /// tiles, a single tile and an oversized one, on padded, strided, grouped and 1x1 convs.
    #[test]
    fn tiling_edge_cases_match_naive() {
        let cases = [
            Conv2dGeom::square(2, 3, 7, 7, 5, 3, 1, 1, 1), // P = 49
            Conv2dGeom::square(1, 4, 9, 6, 6, 3, 2, 1, 2), // stride 2, groups 2, P = 15
            Conv2dGeom::square(3, 5, 5, 5, 7, 1, 1, 0, 1), // pointwise, P = 25
            Conv2dGeom::square(1, 2, 6, 5, 3, 1, 2, 0, 1), // 1x1 stride 2 goes through im2col
            Conv2dGeom::square(2, 3, 8, 8, 4, 7, 1, 3, 1), // 7x7 pad 3
            Conv2dGeom::square(1, 2, 4, 4, 2, 3, 1, 0, 1), // P = 4
        ];
        for g in &cases {
            let s = Sizes::of(g);
            let x = vals(g.n * g.c_in * g.h * g.w, 1);
            let w = vals(g.c_out * s.kk, 2);
            let dy = vals(g.n * g.c_out * s.p, 3);
            let (y, dx, dw) = naive(&x, &w, &dy, g);
            for tile in [1, 2, 3, g.h_out - 1, g.h_out, g.h_out + 2] {
                let tile = tile.max(1);
                let what = format!("{g:?} tile {tile}");
                close(&conv2d_tiled(&x, &w, g, tile), &y, &format!("{what} forward"));
                close(&backward_data_tiled(&dy, &w, g, tile), &dx, &format!("{what} backward data"));
                close(&backward_weight_tiled(&x, &dy, g, tile), &dw, &format!("{what} backward weight"));
            }
        }
    }

    #[test]
    fn default_tiles_split_large_maps() {
        // 16ch 3x3 on 61x61: K = 144, 9 tiles of 7 rows, the last one of 5.
        let g = Conv2dGeom::square(1, 16, 61, 61, 8, 3, 1, 1, 1);
        let s = Sizes::of(&g);
        let t = tile_rows(s.kk, g.h_out, g.w_out);
        assert!(t < g.h_out && !g.h_out.is_multiple_of(t), "tile of {t} rows over {}", g.h_out);
        let x = vals(g.n * g.c_in * g.h * g.w, 4);
        let w = vals(g.c_out * s.kk, 5);
        let dy = vals(g.n * g.c_out * s.p, 6);
        let (y, dx, dw) = naive(&x, &w, &dy, &g);
        close(&conv2d(&x, &w, &g).unwrap(), &y, "forward");
        close(&conv2d_backward_data(&dy, &w, &g).unwrap(), &dx, "backward data");
        let got = conv2d_backward_weight(&x, &dy, &g).unwrap();
        for (a, b) in got.iter().zip(&dw) {
            assert!((*a as f64 - b).abs() <= 1e-3 * (1.0 + b.abs()), "dw {a} vs {b}");
        }
    }

    #[test]
    fn depthwise_and_multiplier_match_naive() {
        for g in [
            Conv2dGeom::square(2, 6, 9, 9, 6, 3, 1, 1, 6),
            Conv2dGeom::square(1, 3, 8, 7, 6, 5, 2, 2, 3),
            Conv2dGeom::square(3, 1, 5, 5, 4, 3, 1, 0, 1),
        ] {
            let s = Sizes::of(&g);
            let x = vals(g.n * g.c_in * g.h * g.w, 7);
            let w = vals(g.c_out * s.kk, 8);
            let dy = vals(g.n * g.c_out * s.p, 9);
            let (y, dx, dw) = naive(&x, &w, &dy, &g);
            close(&conv2d(&x, &w, &g).unwrap(), &y, "depthwise forward");
            close(&conv2d_backward_data(&dy, &w, &g).unwrap(), &dx, "depthwise backward data");
            close(&conv2d_backward_weight(&x, &dy, &g).unwrap(), &dw, "depthwise backward weight");
        }
    }

    #[test]
    fn row_copies_match_portable() {
        // Widths below, at and across the 16-lane vector (masked tails), strided both ways.
        for w in [1, 7, 16, 17, 33] {
            let (rows, wide) = (3, w + 5);
            let src: Vec<f32> = (0..rows * wide).map(|i| i as f32).collect();
            let (mut a, mut b) = (vec![-1.0; rows * wide], vec![-1.0; rows * wide]);
            row_copier()(&mut a, wide, &src, wide, rows, w);
            copy_rows_portable(&mut b, wide, &src, wide, rows, w);
            assert_eq!(a, b, "copy, width {w}");
            let dense: Vec<f32> = (0..rows * w).map(|i| i as f32 * 0.5).collect();
            row_adder()(&mut a, &dense, rows, w, wide);
            add_rows_portable(&mut b, &dense, rows, w, wide);
            assert_eq!(a, b, "add, width {w}");
        }
    }

    /// The direct AVX-512 path (when the CPU has it) against the naive reference, and against
    /// the portable tiled path, on odd widths (not multiples of 16, and wider than 16), odd
    /// channel counts around the block sizes, batch 1, 3x3/5x5/3x5/7x7 kernels, pads 1/2/3 and
    /// vertical pads other than k/2.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn direct_matches_naive_and_portable() {
        let mut cases = vec![
            Conv2dGeom::square(1, 3, 7, 5, 7, 3, 1, 1, 1),
            Conv2dGeom::square(2, 5, 9, 17, 13, 3, 1, 1, 1),
            Conv2dGeom::square(3, 16, 8, 8, 16, 3, 1, 1, 1),
            Conv2dGeom::square(1, 7, 11, 33, 9, 5, 1, 2, 1),
            Conv2dGeom::square(2, 4, 5, 5, 3, 7, 1, 3, 1),
            Conv2dGeom::square(1, 2, 1, 1, 1, 3, 1, 1, 1),
            Conv2dGeom::square(2, 9, 20, 4, 6, 3, 1, 1, 1),
        ];
        // 3x5 kernel, pad (0, 2): height shrinks; 5x3, pad (4, 1): height grows.
        let mut a = Conv2dGeom::square(2, 3, 6, 13, 8, 3, 1, 1, 1);
        (a.kh, a.kw, a.pad, a.h_out) = (3, 5, (0, 2), 4);
        let mut b = Conv2dGeom::square(1, 5, 4, 10, 7, 3, 1, 1, 1);
        (b.kh, b.kw, b.pad, b.h_out) = (5, 3, (4, 1), 8);
        cases.extend([a, b]);
        for g in &cases {
            if !direct::applies(g) {
                assert!(!has_avx512(), "{g:?} should take the direct path");
                return;
            }
            let s = Sizes::of(g);
            let x = vals(g.n * g.c_in * g.h * g.w, 11);
            let w = vals(g.c_out * s.kk, 12);
            let dy = vals(g.n * g.c_out * s.p, 13);
            let (y, dx, dw) = naive(&x, &w, &dy, g);
            let what = format!("{g:?}");
            let fy = direct::forward(&x, &w, g);
            let fdx = direct::backward_data(&dy, &w, g);
            let fdw = direct::backward_weight(&x, &dy, g);
            close(&fy, &y, &format!("{what} forward"));
            close(&fdx, &dx, &format!("{what} backward data"));
            close(&fdw, &dw, &format!("{what} backward weight"));
            let t = tile_rows(s.kk, g.h_out, g.w_out);
            let port = |a: &[f32], b: &[f32], name: &str| {
                for (i, (u, v)) in a.iter().zip(b).enumerate() {
                    assert!((u - v).abs() <= 1e-4 * (1.0 + v.abs()), "{what} {name} vs portable at {i}: {u} vs {v}");
                }
            };
            port(&fy, &conv2d_tiled(&x, &w, g, t), "forward");
            port(&fdx, &backward_data_tiled(&dy, &w, g, t), "backward data");
            port(&fdw, &backward_weight_tiled(&x, &dy, g, t), "backward weight");
        }
    }

    /// The channel-vectorized 3x3 weight gradient against the naive reference: output channels
    /// below, at and across 16 and 32 (one- and two-vector passes, mixed), odd input channel
    /// counts (a lone last channel), stride 2, padding 0 and 2, batch 1, rectangular maps.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn wgt3_matches_naive() {
        let mut cases = vec![
            Conv2dGeom::square(1, 3, 7, 5, 5, 3, 1, 1, 1),
            Conv2dGeom::square(2, 5, 9, 17, 40, 3, 1, 1, 1),
            Conv2dGeom::square(3, 8, 8, 8, 32, 3, 1, 1, 1),
            Conv2dGeom::square(1, 7, 11, 9, 16, 3, 2, 1, 1),
            Conv2dGeom::square(2, 4, 6, 6, 33, 3, 2, 0, 1),
            Conv2dGeom::square(1, 2, 5, 5, 3, 3, 1, 2, 1),
        ];
        let mut a = Conv2dGeom::square(2, 3, 6, 13, 20, 3, 1, 1, 1);
        (a.h, a.h_out) = (9, 9);
        cases.push(a);
        for g in &cases {
            if !wgt3::applies(g) {
                assert!(!has_avx512(), "{g:?} should take the wgt3 path");
                return;
            }
            let s = Sizes::of(g);
            let x = vals(g.n * g.c_in * g.h * g.w, 21);
            let w = vals(g.c_out * s.kk, 22);
            let dy = vals(g.n * g.c_out * s.p, 23);
            let (_, _, dw) = naive(&x, &w, &dy, g);
            close(&wgt3::backward_weight(&x, &dy, g), &dw, &format!("{g:?} wgt3"));
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn transpose16_matches_scalar() {
        if !has_avx512() {
            return;
        }
        let (ls, ld) = (19, 21);
        let src: Vec<f32> = (0..16 * ls).map(|i| i as f32).collect();
        for rows in [16, 5, 1] {
            let mut dst = vec![-1.0f32; 16 * ld];
            // SAFETY: avx512f checked; src holds 16 rows of ls >= 16 floats, dst 16 rows of ld.
            unsafe { wgt3::transpose16(src.as_ptr(), ls, rows, dst.as_mut_ptr(), ld) };
            for j in 0..16 {
                for i in 0..ld {
                    let want = if i >= 16 {
                        -1.0
                    } else if i < rows {
                        src[i * ls + j]
                    } else {
                        0.0
                    };
                    assert_eq!(dst[j * ld + i], want, "rows {rows}: dst[{j}][{i}]");
                }
            }
        }
    }

    /// The channel-vectorized forward against the naive reference: stride 1 and 2, 1x1 and 3x3
    /// and 7x7 kernels, pads 0-3, output channels below, at and across 16/32 (one- and
    /// two-vector passes, a partial last transpose block), row lengths not multiples of 8.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn fwdc_matches_naive() {
        let cases = [
            Conv2dGeom::square(1, 4, 7, 5, 5, 3, 2, 1, 1),
            Conv2dGeom::square(2, 5, 9, 17, 40, 3, 2, 1, 1),
            Conv2dGeom::square(3, 16, 16, 16, 32, 1, 2, 0, 1),
            Conv2dGeom::square(1, 7, 11, 9, 16, 3, 1, 1, 1),
            Conv2dGeom::square(2, 4, 12, 12, 33, 3, 2, 0, 1),
            Conv2dGeom::square(1, 6, 13, 13, 20, 7, 2, 3, 1),
            Conv2dGeom::square(2, 8, 35, 35, 48, 3, 2, 1, 1),
        ];
        check_path("fwdc", &cases, fwdc::supports, 24, |x, w, _, g| fwdc::forward(x, w, g), |(y, _, _)| y);
    }

    /// The channel-vectorized backward data against the naive reference: stride 1 and 2, 1x1,
    /// 3x3 and 7x7 kernels, pads 0-3 (including input rows/columns no window reaches), input
    /// channels below, at and across 16/32, widths with and without 16-pixel runs.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bwdc_matches_naive() {
        let cases = [
            Conv2dGeom::square(1, 4, 7, 5, 5, 3, 2, 1, 1),
            Conv2dGeom::square(2, 40, 9, 17, 5, 3, 2, 1, 1),
            Conv2dGeom::square(3, 16, 32, 32, 32, 1, 2, 0, 1),
            Conv2dGeom::square(1, 7, 11, 9, 16, 3, 1, 1, 1),
            Conv2dGeom::square(2, 33, 12, 12, 4, 3, 2, 0, 1),
            Conv2dGeom::square(1, 20, 13, 13, 6, 7, 2, 3, 1),
            Conv2dGeom::square(2, 48, 34, 34, 8, 3, 2, 1, 1),
        ];
        check_path("bwdc", &cases, bwdc::supports, 27, |_, w, dy, g| bwdc::backward_data(dy, w, g), |(_, dx, _)| dx);
    }

    /// Runs one direct-kernel path on every case it supports against the naive f64 reference
    /// (`pick` selects y, dx or dw from it); a case it does not support is only allowed on a
    /// CPU without AVX-512.
    fn check_path(
        name: &str,
        cases: &[Conv2dGeom],
        supports: fn(&Conv2dGeom) -> bool,
        seed: usize,
        kernel: impl Fn(&[f32], &[f32], &[f32], &Conv2dGeom) -> Vec<f32>,
        pick: impl Fn((Vec<f64>, Vec<f64>, Vec<f64>)) -> Vec<f64>,
    ) {
        for g in cases {
            if !supports(g) {
                assert!(!has_avx512(), "{g:?} should take the {name} path");
                return;
            }
            let s = Sizes::of(g);
            let x = vals(g.n * g.c_in * g.h * g.w, seed);
            let w = vals(g.c_out * s.kk, seed + 1);
            let dy = vals(g.n * g.c_out * s.p, seed + 2);
            close(&kernel(&x, &w, &dy, g), &pick(naive(&x, &w, &dy, g)), &format!("{g:?} {name}"));
        }
    }

    /// Batch 64 resnet shape through the public entry points: parallel jobs, multi-image
    /// weight-gradient groups.
    #[test]
    fn resnet_shape_matches_naive() {
        let g = Conv2dGeom::square(8, 16, 8, 8, 24, 3, 1, 1, 1);
        let s = Sizes::of(&g);
        let x = vals(g.n * g.c_in * g.h * g.w, 14);
        let w = vals(g.c_out * s.kk, 15);
        let dy = vals(g.n * g.c_out * s.p, 16);
        let (y, dx, dw) = naive(&x, &w, &dy, &g);
        close(&conv2d(&x, &w, &g).unwrap(), &y, "forward");
        close(&conv2d_backward_data(&dy, &w, &g).unwrap(), &dx, "backward data");
        let got = conv2d_backward_weight(&x, &dy, &g).unwrap();
        for (a, b) in got.iter().zip(&dw) {
            assert!((*a as f64 - b).abs() <= 1e-3 * (1.0 + b.abs()), "dw {a} vs {b}");
        }
    }

    /// The dispatch must send the CIFAR ResNet 3x3 convs (forward and backward data) to the
    /// Winograd path: `conv2d`'s bits equal `winograd`'s and differ from `direct`'s (batch 2;
    /// the path choice does not depend on the batch).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn resnet_shapes_dispatch_to_winograd() {
        if !has_avx512() {
            return;
        }
        for (c, hw) in [(16, 32), (32, 16), (64, 8)] {
            let g = Conv2dGeom::square(2, c, hw, hw, c, 3, 1, 1, 1);
            let x = vals(g.n * c * hw * hw, 21);
            let w = vals(c * c * 9, 22);
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            let got = bits(conv2d(&x, &w, &g).unwrap());
            assert_eq!(got, bits(winograd::forward(&x, &w, &g)), "{g:?} forward");
            assert_ne!(got, bits(direct::forward(&x, &w, &g)), "{g:?}: direct gives the same bits");
            let got = bits(conv2d_backward_data(&x, &w, &g).unwrap());
            assert_eq!(got, bits(winograd::backward_data(&x, &w, &g)), "{g:?} backward data");
            assert_ne!(got, bits(direct::backward_data(&x, &w, &g)), "{g:?}: direct gives the same bits");
        }
    }

    #[test]
    fn valid_range_bounds() {
        // out 5, in 5, stride 1, pad 1: kx 0 skips ox 0, kx 2 skips ox 4.
        assert_eq!(valid_range(5, 5, 1, 0, 1), (1, 5));
        assert_eq!(valid_range(5, 5, 1, 2, 1), (0, 4));
        // Stride 2, pad 3, 7 taps over 4 inputs: only some outputs see real pixels.
        assert_eq!(valid_range(2, 4, 2, 0, 3), (2, 2));
        assert_eq!(valid_range(2, 4, 2, 6, 3), (0, 1));
    }
}
