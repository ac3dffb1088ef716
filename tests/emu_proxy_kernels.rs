//! The proxy and distillation kernels that are not `Backend` ops yet (Gram and cosine
//! matrices with fused row normalisation, AT attention maps, ViT attention scores), run on the
//! kernel emulator through their launch wrappers and compared with compositions of existing ops
//! on the CPU backend. Shapes are not multiples of any tile or block; fresh emulator buffers are
//! NaN, so unwritten outputs fail.
#![cfg(feature = "cuda-emu")]

use kdscout::backend::cuda::emu::EmuGpu;
use kdscout::backend::cuda::ops::GramMode;
use kdscout::backend::cuda::{Gpu, GpuBackend};
use kdscout::rng::Rng;
use kdscout::{Device, Tensor};

const EMU: GpuBackend<EmuGpu> = GpuBackend { gpu: EmuGpu };

fn rand(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::seed(seed);
    (0..n).map(|_| r.uniform(-1.0, 1.0)).collect()
}

fn cpu(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_slice(v, shape.to_vec(), Device::Cpu).unwrap()
}

fn assert_close(got: &[f32], want: &[f32], rtol: f32, atol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= atol + rtol * w.abs(), "{what}: element {i}: kernel {g}, CPU {w}");
    }
}

fn run_gram(v: &[f32], batch: usize, m: usize, d: usize, mode: GramMode) -> Vec<f32> {
    let f = EMU.gpu.upload(v).unwrap();
    EMU.gpu.download(&EMU.gram(&f, batch, m, d, mode).unwrap()).unwrap()
}

#[test]
fn gram_plain_cosine_and_row_normalized() {
    // 70 rows: two row and column tiles, one partial; d = 37: three k-steps, one partial.
    for (batch, m, d) in [(3, 70, 37), (1, 20, 300), (2, 1, 5)] {
        let mut v = rand(batch * m * d, 1);
        // A zero row: cosine and SP rows must follow the eps clamp (0 there), not divide by 0.
        v[..d].iter_mut().for_each(|x| *x = 0.0);
        let f = cpu(&v, &[batch, m, d]);
        let plain = f.gram().unwrap();
        let what = format!("gram [{batch}, {m}, {d}]");
        assert_close(&run_gram(&v, batch, m, d, GramMode::Plain), &plain.to_vec().unwrap(), 1e-5, 1e-5, &what);
        let eps = 1e-8;
        let cos = f.normalize(-1, eps).unwrap().gram().unwrap().to_vec().unwrap();
        assert_close(&run_gram(&v, batch, m, d, GramMode::Cosine { eps }), &cos, 1e-5, 1e-6, &format!("cosine {what}"));
        let sp = plain.normalize(-1, eps).unwrap().to_vec().unwrap();
        let got = run_gram(&v, batch, m, d, GramMode::RowNormalized { eps });
        assert_close(&got, &sp, 1e-5, 1e-6, &format!("row-normalised {what}"));
    }
    // Hand values: rows (3, 4) and (0, 2): Gram [[25, 8], [8, 4]], cosines [[1, .8], [.8, 1]].
    assert_eq!(run_gram(&[3.0, 4.0, 0.0, 2.0], 1, 2, 2, GramMode::Plain), vec![25.0, 8.0, 8.0, 4.0]);
    let cos = run_gram(&[3.0, 4.0, 0.0, 2.0], 1, 2, 2, GramMode::Cosine { eps: 1e-12 });
    assert_close(&cos, &[1.0, 0.8, 0.8, 1.0], 1e-6, 1e-7, "hand cosine");
}

#[test]
fn attention_maps_match_channel_mean_of_squares_normalized() {
    // hw = 300 > 256 threads: positions handled twice by some threads; c = 5 odd.
    for (n, c, hw) in [(3, 5, 63), (2, 7, 300), (1, 1, 1)] {
        let mut v = rand(n * c * hw, 2);
        if n > 1 {
            // An all-zero sample: the eps clamp leaves zeros.
            v[c * hw..2 * c * hw].iter_mut().for_each(|x| *x = 0.0);
        }
        let want = cpu(&v, &[n, c, hw])
            .sqr()
            .unwrap()
            .mean_dims(&[1], false)
            .unwrap()
            .normalize(1, 1e-12)
            .unwrap()
            .to_vec()
            .unwrap();
        let x = EMU.gpu.upload(&v).unwrap();
        let got = EMU.gpu.download(&EMU.attention_map(&x, n, c, hw, 1e-12).unwrap()).unwrap();
        assert_close(&got, &want, 1e-5, 1e-7, &format!("attention map [{n}, {c}, {hw}]"));
    }
    // Hand values: one sample, two channels (1, 2) and (3, 0) at two positions: means of squares
    // (5, 2), normalised (5, 2)/sqrt(29).
    let x = EMU.gpu.upload(&[1.0, 2.0, 3.0, 0.0]).unwrap();
    let got = EMU.gpu.download(&EMU.attention_map(&x, 1, 2, 2, 1e-12).unwrap()).unwrap();
    let r = 29f32.sqrt();
    assert_close(&got, &[5.0 / r, 2.0 / r], 1e-6, 0.0, "hand attention map");
}

#[test]
fn attention_scores_match_softmax_of_scaled_qk() {
    // ViT-like (65 tokens, 4 heads of 16 folded with batch 2), and tk = 300 > 256 with tq != tk.
    for (bh, tq, tk, d) in [(8, 65, 65, 16), (2, 3, 300, 7)] {
        let (qv, kv) = (rand(bh * tq * d, 3), rand(bh * tk * d, 4));
        let scale = 1.0 / (d as f32).sqrt() * 3.0;
        let want = cpu(&qv, &[bh, tq, d])
            .matmul_t(&cpu(&kv, &[bh, tk, d]), false, true)
            .unwrap()
            .scale(scale)
            .unwrap()
            .softmax(-1)
            .unwrap()
            .to_vec()
            .unwrap();
        let (q, k) = (EMU.gpu.upload(&qv).unwrap(), EMU.gpu.upload(&kv).unwrap());
        let got = EMU.gpu.download(&EMU.attention_scores(&q, &k, bh, tq, tk, d, scale).unwrap()).unwrap();
        assert_close(&got, &want, 1e-5, 1e-7, &format!("attention scores [{bh}, {tq}, {tk}, {d}]"));
        for row in got.chunks(tk) {
            let s: f32 = row.iter().sum();
            assert!((s - 1.0).abs() < 1e-5, "a softmax row sums to {s}");
        }
    }
}
