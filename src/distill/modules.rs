//! The trainable parts some distillers add (they join the optimiser with the student):
//! FitNets' `ConvReg` (with a `ConvTranspose2d` for its upsampling case), CC's linear embeds,
//! NORM's foldable feature transform, and ReviewKD's ABF fusion modules.

use crate::backend::InterpMode;
use crate::nn::init::{kaiming_uniform_, pytorch_default_weight_bias, FanMode};
use crate::nn::{Activation, BatchNorm2d, Conv2d, Conv2dConfig, Init, Linear, LocalTensor, Module, Sequential};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{invalid_err, module_boilerplate, shape_err, Device, Result};

// ====================================================================== ConvTranspose2d

/// `nn.ConvTranspose2d` (groups 1, dilation 1, output_padding 0): weight [in, out, k, k], bias
/// [out]; output size `(h − 1)·stride − 2·padding + k`. Computed as a convolution of the
/// zero-dilated input with the flipped, channel-transposed kernel, so every step is a recorded op.
pub struct ConvTranspose2d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvTranspose2d {
    /// PyTorch's default initialisation (fan-in taken from dim 1 of the weight, as PyTorch does).
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        rng: &mut Rng,
        dev: Device,
    ) -> Result<ConvTranspose2d> {
        if in_channels == 0 || out_channels == 0 || kernel == 0 || stride == 0 || padding >= kernel {
            invalid_err!(
                "ConvTranspose2d",
                "channels {in_channels}->{out_channels}, kernel {kernel} and stride {stride} must be positive, padding {padding} below the kernel"
            );
        }
        let weight = Tensor::zeros([in_channels, out_channels, kernel, kernel], dev)?.requires_grad_();
        let bias = Tensor::zeros([out_channels], dev)?.requires_grad_();
        pytorch_default_weight_bias(&weight, Some(&bias), rng)?;
        Ok(ConvTranspose2d { weight, bias: Some(bias), in_channels, out_channels, kernel, stride, padding })
    }
}

/// The k×k anti-identity (flips an axis by a matmul, which is differentiable).
fn anti_identity(k: usize, dev: Device) -> Result<Tensor> {
    let mut j = vec![0.0f32; k * k];
    for i in 0..k {
        j[i * k + (k - 1 - i)] = 1.0;
    }
    Tensor::from_slice(&j, [k, k], dev)
}

impl Module for ConvTranspose2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.rank() != 4 || x.dims()[1] != self.in_channels {
            shape_err!("ConvTranspose2d", "expected input [n, {}, h, w], got {}", self.in_channels, x.shape());
        }
        let (n, c, h, w) = (x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]);
        let (s, k, dev) = (self.stride, self.kernel, x.device());
        let dilated = if s == 1 {
            x.clone()
        } else {
            let cols =
                Tensor::concat(&[&x.reshape([n, c, h, 1, w, 1])?, &Tensor::zeros([n, c, h, 1, w, s - 1], dev)?], 5)?;
            let rows = Tensor::concat(&[&cols, &Tensor::zeros([n, c, h, s - 1, w, s], dev)?], 3)?;
            rows.reshape([n, c, h * s, w * s])?.narrow(2, 0, (h - 1) * s + 1)?.narrow(3, 0, (w - 1) * s + 1)?
        };
        let j = anti_identity(k, dev)?;
        let flipped = j.matmul(&self.weight.transpose(0, 1)?.matmul(&j)?)?;
        let pad = k - 1 - self.padding;
        let y = dilated.conv2d(&flipped, (1, 1), (pad, pad), 1)?;
        match &self.bias {
            Some(b) => y.add(&b.reshape([1, self.out_channels, 1, 1])?),
            None => Ok(y),
        }
    }
    fn local_tensors(&self) -> Vec<LocalTensor> {
        let mut v = vec![LocalTensor::param("weight", &self.weight)];
        if let Some(b) = &self.bias {
            v.push(LocalTensor::param("bias", b));
        }
        v
    }
    module_boilerplate!();
}

// ====================================================================== ConvReg (FitNets)

/// FitNets' convolutional regressor (RepDistiller `models/util.py::ConvReg`), chosen from the
/// student and teacher map shapes [n, c, h, w]:
/// `s_H = 2·t_H` → Conv 3×3 stride 2 pad 1; `2·s_H = t_H` → ConvTranspose 4×4 stride 2 pad 1;
/// `s_H >= t_H` → Conv with kernel (1 + s_H − t_H, 1 + s_W − t_W); then BatchNorm (+ ReLU).
pub struct ConvReg {
    pub conv: Box<dyn Module>,
    pub bn: BatchNorm2d,
    pub use_relu: bool,
}

impl ConvReg {
    pub fn new(s_shape: &[usize], t_shape: &[usize], use_relu: bool, rng: &mut Rng, dev: Device) -> Result<ConvReg> {
        if s_shape.len() != 4 || t_shape.len() != 4 {
            shape_err!("ConvReg", "student {s_shape:?} and teacher {t_shape:?} must be map shapes [n, c, h, w]");
        }
        let (s_c, s_h, s_w) = (s_shape[1], s_shape[2], s_shape[3]);
        let (t_c, t_h, t_w) = (t_shape[1], t_shape[2], t_shape[3]);
        let conv: Box<dyn Module> = if s_h == 2 * t_h {
            Box::new(Conv2d::new(s_c, t_c, 3, Conv2dConfig::default().stride(2).padding(1), rng, dev)?)
        } else if 2 * s_h == t_h {
            Box::new(ConvTranspose2d::new(s_c, t_c, 4, 2, 1, rng, dev)?)
        } else if s_h >= t_h && s_w >= t_w {
            Box::new(Conv2d::new_hw(s_c, t_c, (1 + s_h - t_h, 1 + s_w - t_w), Conv2dConfig::default(), rng, dev)?)
        } else {
            invalid_err!(
                "ConvReg",
                "student map {s_h}x{s_w} cannot be regressed onto teacher map {t_h}x{t_w}: supported are s_H = 2·t_H, 2·s_H = t_H, or s_H >= t_H and s_W >= t_W (pick another hint layer)"
            );
        };
        Ok(ConvReg { conv, bn: BatchNorm2d::new(t_c, dev)?, use_relu })
    }
}

impl Module for ConvReg {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.bn.forward(&self.conv.forward(x)?)?;
        if self.use_relu {
            y.relu()
        } else {
            Ok(y)
        }
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("conv".into(), self.conv.as_ref()), ("bn".into(), &self.bn)]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![self.conv.as_mut(), &mut self.bn]
    }
    module_boilerplate!();
}

// ====================================================================== CC embeds

/// CC's two trainable `LinearEmbed`s (RepDistiller: Linear(D → feat_dim = 128) for the student and
/// for the teacher; both train, the teacher features themselves stay constant).
pub struct CcEmbed {
    pub embed_s: Linear,
    pub embed_t: Linear,
}

impl CcEmbed {
    pub fn new(d_s: usize, d_t: usize, feat_dim: usize, rng: &mut Rng, dev: Device) -> Result<CcEmbed> {
        Ok(CcEmbed {
            embed_s: Linear::new(d_s, feat_dim, true, rng, dev)?,
            embed_t: Linear::new(d_t, feat_dim, true, rng, dev)?,
        })
    }

    /// `cc(embed_s(f_s), embed_t(f_t))` on features flattened to [B, -1].
    pub fn loss(&self, f_s: &Tensor, f_t: &Tensor) -> Result<Tensor> {
        let flat = |f: &Tensor| f.flatten_from(1);
        super::cc(&self.embed_s.forward(&flat(f_s)?)?, &self.embed_t.forward(&flat(f_t)?)?)
    }
}

impl Module for CcEmbed {
    fn forward(&self, _x: &Tensor) -> Result<Tensor> {
        invalid_err!("CcEmbed", "takes a student and a teacher feature: call CcEmbed::loss")
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("embed_s".into(), &self.embed_s), ("embed_t".into(), &self.embed_t)]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.embed_s, &mut self.embed_t]
    }
    module_boilerplate!();
}

// ====================================================================== NORM feature transform

/// NORM's feature transform on the student's last map (METHODS §6.1; names as in NORM's student
/// models): `e = layer31(f)` = BN(Conv1×1(C_s → n·C_t)), `f' = layer32(e) + f` with
/// layer32 = BN(Conv1×1(n·C_t → C_s)). Linear, so it folds into the classifier after training
/// ([`NormFt::fold_into`]).
pub struct NormFt {
    pub layer31: Sequential,
    pub layer32: Sequential,
    pub n: usize,
    pub c_s: usize,
    pub c_t: usize,
}

fn conv1x1_bn(c_in: usize, c_out: usize, rng: &mut Rng, dev: Device) -> Result<Sequential> {
    Ok(Sequential::new()
        .with(Conv2d::new(c_in, c_out, 1, Conv2dConfig::default().bias(false), rng, dev)?)
        .with(BatchNorm2d::new(c_out, dev)?))
}

impl NormFt {
    /// Convs initialised kaiming_normal(fan_out), BN weight 1 / bias 0, as NORM's model files do.
    pub fn new(c_s: usize, c_t: usize, n: usize, rng: &mut Rng, dev: Device) -> Result<NormFt> {
        if n == 0 {
            invalid_err!("NormFt", "the expansion factor N (co_sponge) must be at least 1");
        }
        let ft = NormFt {
            layer31: conv1x1_bn(c_s, n * c_t, rng, dev)?,
            layer32: conv1x1_bn(n * c_t, c_s, rng, dev)?,
            n,
            c_s,
            c_t,
        };
        Init::KaimingNormalFanOut.apply(&ft, rng)?;
        Ok(ft)
    }

    /// The expanded feature `e` (what the loss reads) and the transformed map `f'`.
    pub fn expand(&self, f: &Tensor) -> Result<(Tensor, Tensor)> {
        let e = self.layer31.forward(f)?;
        let out = self.layer32.forward(&e)?.add(f)?;
        Ok((e, out))
    }

    /// Eval-mode folding: `GAP(FT(f)) = A·GAP(f) + d` because every step is a per-pixel affine map,
    /// so `fc(GAP(FT(f)))` equals a new Linear with weight `W·A` and bias `W·d + b`. Uses the BN
    /// running statistics (call after training, with the student in eval mode).
    pub fn fold_into(&self, fc: &Linear) -> Result<Linear> {
        if fc.in_features != self.c_s {
            shape_err!(
                "NormFt::fold_into",
                "classifier reads {} features, the transform outputs {}",
                fc.in_features,
                self.c_s
            );
        }
        // Each 1x1 conv + eval BN is x -> diag(a)·W·x + c with a = γ/√(var + eps), c = β − mean·a.
        let affine = |seq: &Sequential| -> Result<(Vec<f64>, Vec<f64>, usize, usize)> {
            let conv = seq.get(0).and_then(|m| m.as_any().downcast_ref::<Conv2d>());
            let bn = seq.get(1).and_then(|m| m.as_any().downcast_ref::<BatchNorm2d>());
            let (Some(conv), Some(bn)) = (conv, bn) else {
                invalid_err!("NormFt::fold_into", "expected Conv2d + BatchNorm2d layers");
            };
            let (o, i) = (conv.out_channels, conv.in_channels);
            let w = conv.weight.to_vec()?;
            let (mean, var) = (bn.running_mean.to_vec()?, bn.running_var.to_vec()?);
            let gamma = bn.weight.as_ref().map(|t| t.to_vec()).transpose()?.unwrap_or(vec![1.0; o]);
            let beta = bn.bias.as_ref().map(|t| t.to_vec()).transpose()?.unwrap_or(vec![0.0; o]);
            let mut m = vec![0.0f64; o * i];
            let mut c = vec![0.0f64; o];
            for r in 0..o {
                let a = gamma[r] as f64 / (var[r] as f64 + bn.eps as f64).sqrt();
                for k in 0..i {
                    m[r * i + k] = a * w[r * i + k] as f64;
                }
                c[r] = beta[r] as f64 - mean[r] as f64 * a;
            }
            Ok((m, c, o, i))
        };
        let (m1, c1, mid, cs) = affine(&self.layer31)?;
        let (m2, c2, _, _) = affine(&self.layer32)?;
        // A = I + M2·M1 [cs, cs], d = M2·c1 + c2 [cs].
        let mut a = vec![0.0f64; cs * cs];
        let mut d = c2.clone();
        for r in 0..cs {
            a[r * cs + r] += 1.0;
            for j in 0..mid {
                let m = m2[r * mid + j];
                d[r] += m * c1[j];
                for k in 0..cs {
                    a[r * cs + k] += m * m1[j * cs + k];
                }
            }
        }
        let (out, w) = (fc.out_features, fc.weight.to_vec()?);
        let b = match &fc.bias {
            Some(b) => b.to_vec()?,
            None => vec![0.0; out],
        };
        let mut w2 = vec![0.0f32; out * cs];
        let mut b2 = vec![0.0f32; out];
        for o in 0..out {
            let mut acc_b = b[o] as f64;
            for r in 0..cs {
                let wr = w[o * cs + r] as f64;
                acc_b += wr * d[r];
                for k in 0..cs {
                    w2[o * cs + k] += (wr * a[r * cs + k]) as f32;
                }
            }
            b2[o] = acc_b as f32;
        }
        let dev = fc.weight.device();
        Ok(Linear {
            weight: Tensor::from_slice(&w2, [out, cs], dev)?.requires_grad_(),
            bias: Some(Tensor::from_slice(&b2, [out], dev)?.requires_grad_()),
            in_features: cs,
            out_features: out,
        })
    }
}

impl Module for NormFt {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.expand(x)?.1)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        vec![("layer31".into(), &self.layer31), ("layer32".into(), &self.layer32)]
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        vec![&mut self.layer31, &mut self.layer32]
    }
    module_boilerplate!();
}

// ====================================================================== ReviewKD ABF

/// ReviewKD's attention-based fusion (mdistiller `ABF`): `x = BN(Conv1×1(x))`; when fusing, the
/// deeper level's residual `y` is nearest-upsampled to x's size, a 1×1 conv + sigmoid over
/// `[x, y]` gives two attention maps, `x = x·z₀ + y·z₁`; x is nearest-resized to the teacher's
/// size if needed; output `BN(Conv3×3(x))`, residual x.
pub struct Abf {
    pub conv1: Sequential,
    pub conv2: Sequential,
    pub att_conv: Option<Sequential>,
}

impl Abf {
    pub fn new(in_c: usize, mid_c: usize, out_c: usize, fuse: bool, rng: &mut Rng, dev: Device) -> Result<Abf> {
        let no_bias = Conv2dConfig::default().bias(false);
        let c1 = Conv2d::new(in_c, mid_c, 1, no_bias, rng, dev)?;
        let c2 = Conv2d::new(mid_c, out_c, 3, no_bias.padding(1), rng, dev)?;
        kaiming_uniform_(&c1.weight, 1.0, FanMode::FanIn, rng)?;
        kaiming_uniform_(&c2.weight, 1.0, FanMode::FanIn, rng)?;
        let att_conv = if fuse {
            Some(
                Sequential::new()
                    .with(Conv2d::new(2 * mid_c, 2, 1, Conv2dConfig::default(), rng, dev)?)
                    .with(Activation::Sigmoid),
            )
        } else {
            None
        };
        Ok(Abf {
            conv1: Sequential::new().with(c1).with(BatchNorm2d::new(mid_c, dev)?),
            conv2: Sequential::new().with(c2).with(BatchNorm2d::new(out_c, dev)?),
            att_conv,
        })
    }

    /// (output, residual) for student map `x`, deeper residual `y` (fusing levels only) and the
    /// teacher's spatial size `out_hw`.
    pub fn forward_fused(&self, x: &Tensor, y: Option<&Tensor>, out_hw: (usize, usize)) -> Result<(Tensor, Tensor)> {
        if x.rank() != 4 {
            shape_err!("ABF", "student map must be [n, c, h, w], got {}", x.shape());
        }
        let (h, w) = (x.dims()[2], x.dims()[3]);
        let mut x = self.conv1.forward(x)?;
        if let Some(att) = &self.att_conv {
            let Some(y) = y else { invalid_err!("ABF", "a fusing level needs the deeper level's residual") };
            let y = y.interpolate(InterpMode::Nearest, h, w)?;
            let z = att.forward(&Tensor::concat(&[&x, &y], 1)?)?;
            x = x.mul(&z.narrow(1, 0, 1)?)?.add(&y.mul(&z.narrow(1, 1, 1)?)?)?;
        }
        if (x.dims()[2], x.dims()[3]) != out_hw {
            x = x.interpolate(InterpMode::Nearest, out_hw.0, out_hw.1)?;
        }
        Ok((self.conv2.forward(&x)?, x))
    }
}

impl Module for Abf {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self
            .forward_fused(x, None, (x.dims().get(2).copied().unwrap_or(0), x.dims().get(3).copied().unwrap_or(0)))?
            .0)
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        let mut v: Vec<(String, &dyn Module)> = vec![("conv1".into(), &self.conv1), ("conv2".into(), &self.conv2)];
        if let Some(a) = &self.att_conv {
            v.push(("att_conv".into(), a));
        }
        v
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        let mut v: Vec<&mut dyn Module> = vec![&mut self.conv1, &mut self.conv2];
        if let Some(a) = &mut self.att_conv {
            v.push(a);
        }
        v
    }
    module_boilerplate!();
}

/// ReviewKD's review path (mdistiller `ReviewKD`): one ABF per level, run from the deepest level
/// (the pooled feature as a 1×1 map, not fused) to the shallowest, each fusing the residual of the
/// level below. `abfs` is stored deepest first, as mdistiller names them (`abfs.0` = deepest).
pub struct ReviewKd {
    pub abfs: Vec<Abf>,
    /// Teacher spatial sizes per level, shallowest first.
    out_hw: Vec<(usize, usize)>,
}

impl ReviewKd {
    /// From the student and teacher level shapes (shallowest first, [n, c, h, w] each); the middle
    /// width is `min(512, C_s of the deepest level)`.
    pub fn new(s_shapes: &[Vec<usize>], t_shapes: &[Vec<usize>], rng: &mut Rng, dev: Device) -> Result<ReviewKd> {
        if s_shapes.is_empty()
            || s_shapes.len() != t_shapes.len()
            || s_shapes.iter().chain(t_shapes).any(|s| s.len() != 4)
        {
            shape_err!(
                "reviewkd",
                "student levels {s_shapes:?} and teacher levels {t_shapes:?} must be equally many maps"
            );
        }
        let l = s_shapes.len();
        let mid = s_shapes[l - 1][1].min(512);
        let mut abfs = Vec::with_capacity(l);
        for i in (0..l).rev() {
            abfs.push(Abf::new(s_shapes[i][1], mid, t_shapes[i][1], i < l - 1, rng, dev)?);
        }
        Ok(ReviewKd { abfs, out_hw: t_shapes.iter().map(|t| (t[2], t[3])).collect() })
    }

    /// The review outputs, shallowest first, to compare with the teacher levels by [`super::hcl`].
    pub fn review(&self, levels: &[Tensor]) -> Result<Vec<Tensor>> {
        let l = self.out_hw.len();
        if levels.len() != l {
            shape_err!("reviewkd", "{} student levels given, the review path was built for {l}", levels.len());
        }
        let mut out = vec![None; l];
        let mut res: Option<Tensor> = None;
        for (k, abf) in self.abfs.iter().enumerate() {
            let i = l - 1 - k;
            let (o, r) = abf.forward_fused(&levels[i], res.as_ref(), self.out_hw[i])?;
            out[i] = Some(o);
            res = Some(r);
        }
        Ok(out.into_iter().flatten().collect())
    }
}

impl Module for ReviewKd {
    fn forward(&self, _x: &Tensor) -> Result<Tensor> {
        invalid_err!("ReviewKd", "reads several levels: call ReviewKd::review")
    }
    fn children(&self) -> Vec<(String, &dyn Module)> {
        self.abfs.iter().enumerate().map(|(k, a)| (format!("abfs.{k}"), a as &dyn Module)).collect()
    }
    fn children_mut(&mut self) -> Vec<&mut dyn Module> {
        self.abfs.iter_mut().map(|a| a as &mut dyn Module).collect()
    }
    module_boilerplate!();
}
