//! The op set. `Backend` is the only place where devices differ: every op takes storages that
//! live on one device plus a small geometry struct (plain numbers, mirrored later by the CUDA
//! parameter structs) and returns new storage on the same device. Shape checking happens once,
//! in `Tensor`, before a backend is called; backends may assume consistent geometry.

pub mod cpu;
#[cfg(any(feature = "cuda", feature = "cuda-emu"))]
pub mod cuda;

use crate::error::{Error, Result};

/// Where a tensor lives. `Cuda` and `CudaEmu` exist only in builds with the features of the
/// same names (see `backend::cuda`); [`Device::parse`] names the missing feature otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    /// A CUDA GPU by ordinal. Create it with [`Device::parse`] (or `cuda::driver::device`), which
    /// probes the driver first.
    #[cfg(feature = "cuda")]
    Cuda(usize),
    /// The CUDA kernels on the CPU emulator (one fiber per CUDA thread): slow, for testing.
    #[cfg(feature = "cuda-emu")]
    CudaEmu,
}

impl Device {
    pub fn backend(&self) -> &'static dyn Backend {
        match self {
            Device::Cpu => {
                cpu::tune_allocator_once();
                &cpu::CpuBackend
            }
            #[cfg(feature = "cuda")]
            Device::Cuda(ordinal) => cuda::driver::backend(*ordinal),
            #[cfg(feature = "cuda-emu")]
            Device::CudaEmu => {
                static EMU: cuda::GpuBackend<cuda::emu::EmuGpu> = cuda::GpuBackend { gpu: cuda::emu::EmuGpu };
                &EMU
            }
        }
    }

    /// The device a user named: `cpu`, `cuda`, `cuda:N`, `cuda-emu`, or `auto` (the first GPU
    /// when one is usable, else the CPU, saying so on stderr). A GPU that is asked for and not
    /// usable is an error with one line saying why (no driver, no device, built without CUDA).
    pub fn parse(name: &str) -> Result<Device> {
        let name = name.trim();
        match name {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::auto()),
            "cuda-emu" => {
                #[cfg(feature = "cuda-emu")]
                return Ok(Device::CudaEmu);
                #[cfg(not(feature = "cuda-emu"))]
                Err(Error::Device {
                    op: "device",
                    detail:
                        "cuda-emu: this binary was built without the kernel emulator (rebuild with --features cuda-emu)"
                            .into(),
                })
            }
            _ if name == "cuda" || name.starts_with("cuda:") => {
                let ordinal = match name.strip_prefix("cuda:") {
                    None => 0,
                    Some(n) => n.parse::<usize>().map_err(|_| {
                        Error::invalid("device", format!("{name}: expected cuda:N with N a GPU ordinal (0, 1, ...)"))
                    })?,
                };
                Device::cuda(ordinal)
            }
            _ => Err(Error::invalid(
                "device",
                format!("unknown device {name:?}: use cpu, cuda, cuda:N, cuda-emu or auto"),
            )),
        }
    }

    /// GPU `ordinal`, after probing the driver and loading the kernels.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        #[cfg(feature = "cuda")]
        return cuda::driver::device(ordinal);
        #[cfg(not(feature = "cuda"))]
        Err(Error::Device {
            op: "device",
            detail: format!(
                "cuda:{ordinal}: this binary was built without CUDA support (rebuild with --features cuda); \
                 use --device cpu"
            ),
        })
    }

    /// The first usable GPU, else the CPU (printing one line on stderr saying why).
    pub fn auto() -> Device {
        match Device::cuda(0) {
            Ok(d) => d,
            Err(e) => {
                crate::errln!("kdscout: no usable GPU ({e}); running on the CPU");
                Device::Cpu
            }
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            #[cfg(feature = "cuda")]
            Device::Cuda(o) => write!(f, "cuda:{o}"),
            #[cfg(feature = "cuda-emu")]
            Device::CudaEmu => write!(f, "cuda-emu"),
        }
    }
}

/// Device memory of one tensor, always dense row-major f32 for compute.
#[derive(Clone, Debug)]
pub enum Storage {
    Cpu(Vec<f32>),
    #[cfg(feature = "cuda")]
    Cuda(cuda::driver::CudaBuf),
    /// Emulator memory: host memory, but only kernels touch it (no silent CPU access).
    #[cfg(feature = "cuda-emu")]
    Emu(Vec<f32>),
}

impl Storage {
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Storage::Cuda(b) => Device::Cuda(b.ordinal()),
            #[cfg(feature = "cuda-emu")]
            Storage::Emu(_) => Device::CudaEmu,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(v) => v.len(),
            #[cfg(feature = "cuda")]
            Storage::Cuda(b) => b.len(),
            #[cfg(feature = "cuda-emu")]
            Storage::Emu(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The CPU slice; an error on other devices (no silent copies across devices).
    pub fn as_cpu(&self) -> Result<&[f32]> {
        match self {
            Storage::Cpu(v) => Ok(v),
            #[allow(unreachable_patterns)]
            other => Err(not_cpu(other.device())),
        }
    }
    pub fn as_cpu_mut(&mut self) -> Result<&mut [f32]> {
        match self {
            Storage::Cpu(v) => Ok(v),
            #[allow(unreachable_patterns)]
            other => Err(not_cpu(other.device())),
        }
    }
}

#[allow(dead_code)]
fn not_cpu(d: Device) -> Error {
    Error::Device { op: "cpu", detail: format!("a tensor on {d} used as CPU memory; copy it to the host first") }
}

/// Elementwise unary ops. Parameters ride inside the variant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Relu,
    Relu6,
    LeakyRelu(f32),
    /// Exact GELU, x·Φ(x), as `nn.GELU()` computes it.
    Gelu,
    Sigmoid,
    Tanh,
    /// x·tanh(softplus(x)).
    Mish,
    Exp,
    Log,
    Sqrt,
    /// x^p (for non-integer p, x must be positive).
    Pow(f32),
    Abs,
    /// x·mul + add: scaling, negation and scalar shifts in one op.
    Affine {
        mul: f32,
        add: f32,
    },
    /// max(x, lo); gradient flows where x > lo.
    ClampMin(f32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

/// Geometry of an op over one dimension of a contiguous tensor viewed as [outer, len, inner].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DimGeom {
    pub outer: usize,
    pub len: usize,
    pub inner: usize,
}

impl DimGeom {
    pub fn new(dims: &[usize], dim: usize) -> Self {
        DimGeom { outer: dims[..dim].iter().product(), len: dims[dim], inner: dims[dim + 1..].iter().product() }
    }
}

/// Batched matmul: C[b] = op(A[b]) · op(B[b]), op = transpose when the flag is set.
/// A is stored [batch_a, m, k] (or [batch_a, k, m] when `trans_a`), B [batch_b, k, n]
/// (or [batch_b, n, k] when `trans_b`); a batch of 1 is broadcast. C is [batch, m, n].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatmulGeom {
    pub batch: usize,
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub a_broadcast: bool,
    pub b_broadcast: bool,
}

impl MatmulGeom {
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.m * self.k * self.n) as f64
    }
}

/// 2-D convolution (dilation 1). x [n, c_in, h, w], w [c_out, c_in/groups, kh, kw],
/// y [n, c_out, h_out, w_out].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dGeom {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub groups: usize,
    pub h_out: usize,
    pub w_out: usize,
}

impl Conv2dGeom {
    /// A square kernel with the same stride and padding on both axes; the output size is
    /// derived (floor mode). The caller guarantees the kernel fits the padded input.
    #[allow(clippy::too_many_arguments)]
    pub fn square(
        n: usize,
        c_in: usize,
        h: usize,
        w: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Conv2dGeom {
        let out = |i: usize| (i + 2 * pad - k) / stride + 1;
        Conv2dGeom {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: k,
            kw: k,
            stride: (stride, stride),
            pad: (pad, pad),
            groups,
            h_out: out(h),
            w_out: out(w),
        }
    }

    pub fn flops(&self) -> f64 {
        2.0 * (self.n * self.c_out * self.h_out * self.w_out * (self.c_in / self.groups) * self.kh * self.kw) as f64
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    Max,
    /// Average; `count_include_pad` divides by the full window even where it covers padding.
    Avg {
        count_include_pad: bool,
    },
}

/// 2-D pooling window over x [n, c, h, w] -> [n, c, h_out, w_out] (floor mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub h_out: usize,
    pub w_out: usize,
}

/// Spatial resampling x [n, c, h, w] -> [n, c, h_out, w_out]; also adaptive average pooling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResizeGeom {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub h_out: usize,
    pub w_out: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterpMode {
    /// PyTorch `mode="nearest"`: src = floor(dst · in/out).
    Nearest,
    /// PyTorch `mode="bilinear", align_corners=False`.
    Bilinear,
}

/// Normalisation over x viewed as [n, c, hw] (batchnorm: statistics per c over n·hw).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormGeom {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
    pub eps: f32,
    pub momentum: f32,
}

/// Fused SGD step (PyTorch `torch.optim.SGD` semantics, dampening 0).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdStep {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    pub nesterov: bool,
    /// PyTorch initialises the momentum buffer with the first gradient instead of decaying zeros.
    pub first_step: bool,
}

/// Fake quantisation of x viewed as [channels, len] (channel axis first, as in a weight
/// [c_out, ...]; per-tensor quantisation is `channels = 1`), to `bits` unsigned levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantGeom {
    pub channels: usize,
    pub len: usize,
    pub bits: u32,
}

impl NormGeom {
    /// Operand lengths of `Backend::channel_affine` (x [n, c, hw], scale and shift [c], residual
    /// like x), or an error naming them: every backend checks before touching memory.
    pub fn check_channel_affine(&self, x: usize, scale: usize, shift: usize, residual: Option<usize>) -> Result<()> {
        let (n, c, hw) = (self.n, self.c, self.hw);
        if x != n * c * hw || scale != c || shift != c || residual.is_some_and(|r| r != x) {
            return Err(crate::Error::shape(
                "channel_affine",
                format!(
                    "x has {x} values, scale {scale}, shift {shift}, residual {residual:?}; expected \
                     [n={n}, c={c}, hw={hw}], c, c and x's count"
                ),
            ));
        }
        Ok(())
    }
}

impl QuantGeom {
    /// Rejects bit widths outside 1..=16 and storages of another size, naming the fix.
    pub fn check(&self, op: &'static str, lens: &[(&str, usize, usize)]) -> Result<()> {
        if !(1..=16).contains(&self.bits) {
            return Err(Error::invalid(op, format!("bit width {}: use 1 to 16 bits", self.bits)));
        }
        for &(what, got, want) in lens {
            if got != want {
                return Err(Error::invalid(
                    op,
                    format!(
                        "{what} has {got} elements, expected {want} for {} channels of {}",
                        self.channels, self.len
                    ),
                ));
            }
        }
        Ok(())
    }
    /// The largest quantised level, 2^bits − 1.
    pub fn qmax(&self) -> f32 {
        ((1u32 << self.bits) - 1) as f32
    }
}

/// The op set every device implements. Forward ops return fresh storage; backward ops return
/// the gradient of their inputs. Index layouts are documented at each geometry struct.
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn device(&self) -> Device;

    // ---- memory ----
    /// Upload host values (named for the direction of the copy, so it takes `&self`).
    #[allow(clippy::wrong_self_convention)]
    fn from_host(&self, data: &[f32]) -> Result<Storage>;
    fn to_host(&self, x: &Storage) -> Result<Vec<f32>>;
    fn full(&self, len: usize, value: f32) -> Result<Storage>;

    // ---- elementwise ----
    fn unary(&self, op: UnaryOp, x: &Storage) -> Result<Storage>;
    /// dx given x, y = op(x) and dy (each rule reads whichever of x and y is cheaper).
    fn unary_backward(&self, op: UnaryOp, x: &Storage, y: &Storage, dy: &Storage) -> Result<Storage>;
    /// Broadcasting binary op (numpy rules; shapes already padded to the same rank).
    fn binary(
        &self,
        op: BinaryOp,
        a: &Storage,
        a_dims: &[usize],
        b: &Storage,
        b_dims: &[usize],
        out_dims: &[usize],
    ) -> Result<Storage>;
    /// Sum x over the dimensions where `to_dims` is 1 (the adjoint of broadcasting).
    fn sum_to(&self, x: &Storage, x_dims: &[usize], to_dims: &[usize]) -> Result<Storage>;

    // ---- layout ----
    fn permute(&self, x: &Storage, dims: &[usize], perm: &[usize]) -> Result<Storage>;
    /// Concatenate along the middle axis of [outer, len_i, inner] views; `lens` per part.
    fn concat(&self, parts: &[&Storage], outer: usize, lens: &[usize], inner: usize) -> Result<Storage>;
    /// Slice [start, start+len) of the middle axis of x viewed as `g`.
    fn narrow(&self, x: &Storage, g: DimGeom, start: usize, len: usize) -> Result<Storage>;

    // ---- linear algebra and convolution ----
    fn matmul(&self, a: &Storage, b: &Storage, g: &MatmulGeom) -> Result<Storage>;
    fn conv2d(&self, x: &Storage, w: &Storage, g: &Conv2dGeom) -> Result<Storage>;
    fn conv2d_backward_data(&self, dy: &Storage, w: &Storage, g: &Conv2dGeom) -> Result<Storage>;
    fn conv2d_backward_weight(&self, x: &Storage, dy: &Storage, g: &Conv2dGeom) -> Result<Storage>;

    // ---- pooling and resampling ----
    fn pool2d(&self, kind: PoolKind, x: &Storage, g: &Pool2dGeom) -> Result<Storage>;
    /// Max pooling routes dy to the first maximum of each window (PyTorch's choice), found from x.
    fn pool2d_backward(&self, kind: PoolKind, x: &Storage, dy: &Storage, g: &Pool2dGeom) -> Result<Storage>;
    fn adaptive_avg_pool2d(&self, x: &Storage, g: &ResizeGeom) -> Result<Storage>;
    fn adaptive_avg_pool2d_backward(&self, dy: &Storage, g: &ResizeGeom) -> Result<Storage>;
    fn interpolate(&self, mode: InterpMode, x: &Storage, g: &ResizeGeom) -> Result<Storage>;
    fn interpolate_backward(&self, mode: InterpMode, dy: &Storage, g: &ResizeGeom) -> Result<Storage>;

    // ---- normalisation ----
    /// Train-mode batchnorm: returns (y, batch mean, 1/sqrt(biased var + eps)) and updates the
    /// running statistics with `momentum` and the unbiased variance. With `relu`, y is the
    /// activated output max(bn(x), 0) (the ReLU that follows most batchnorms, in the same pass).
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_train(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        running_mean: &mut Storage,
        running_var: &mut Storage,
        relu: bool,
        g: &NormGeom,
    ) -> Result<(Storage, Storage, Storage)>;
    /// y = x·scale[c] + shift[c], plus `residual` when given, then ReLU when `relu`; x viewed as
    /// [n, c, hw] (g.eps and g.momentum unused). One pass for what eval-mode batchnorm, a ResNet
    /// block's shortcut add and its activation do in up to four. The product and each sum are
    /// rounded separately (no fused multiply-add), so results equal the composed ops bit for bit.
    /// Inference only: `Tensor::channel_affine` composes differentiable ops when recording.
    fn channel_affine(
        &self,
        x: &Storage,
        scale: &Storage,
        shift: &Storage,
        residual: Option<&Storage>,
        relu: bool,
        g: &NormGeom,
    ) -> Result<Storage>;
    /// Backward of train-mode batchnorm: (dx, dgamma, dbeta). `relu_out`: the forward's output
    /// when it applied the ReLU; dy then flows only where that output is positive.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        gamma: &Storage,
        mean: &Storage,
        invstd: &Storage,
        relu_out: Option<&Storage>,
        g: &NormGeom,
    ) -> Result<(Storage, Storage, Storage)>;
    /// Layer norm over the last axis of x viewed as [rows, cols] (g.n = rows, g.c = cols):
    /// returns (y, mean, invstd) per row.
    fn layer_norm(
        &self,
        x: &Storage,
        gamma: &Storage,
        beta: &Storage,
        g: &NormGeom,
    ) -> Result<(Storage, Storage, Storage)>;
    fn layer_norm_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        gamma: &Storage,
        mean: &Storage,
        invstd: &Storage,
        g: &NormGeom,
    ) -> Result<(Storage, Storage, Storage)>;

    // ---- softmax family and reductions (over the middle axis of a DimGeom) ----
    fn softmax(&self, x: &Storage, g: DimGeom, log: bool) -> Result<Storage>;
    fn softmax_backward(&self, y: &Storage, dy: &Storage, g: DimGeom, log: bool) -> Result<Storage>;
    /// Mean cross-entropy of logits [rows, classes] against labels; returns a 1-element storage.
    fn cross_entropy(&self, logits: &Storage, labels: &[u32], rows: usize, classes: usize) -> Result<Storage>;
    fn cross_entropy_backward(
        &self,
        logits: &Storage,
        labels: &[u32],
        dloss: &Storage,
        rows: usize,
        classes: usize,
    ) -> Result<Storage>;
    /// KL(p || q) with q given as log-probabilities, summed and divided by rows (`batchmean`).
    fn kl_div(&self, log_q: &Storage, p: &Storage, rows: usize) -> Result<Storage>;
    /// (d log_q, d p).
    fn kl_div_backward(&self, log_q: &Storage, p: &Storage, dloss: &Storage, rows: usize)
        -> Result<(Storage, Storage)>;
    fn reduce_sum(&self, x: &Storage, g: DimGeom) -> Result<Storage>;
    fn reduce_max(&self, x: &Storage, g: DimGeom) -> Result<Storage>;
    /// Routes dy to the first maximum along the axis, found from x.
    fn reduce_max_backward(&self, x: &Storage, dy: &Storage, g: DimGeom) -> Result<Storage>;
    /// `F.normalize(x, p=2, dim, eps)`: x / max(||x||, eps) along the axis.
    fn normalize(&self, x: &Storage, g: DimGeom, eps: f32) -> Result<Storage>;
    fn normalize_backward(&self, x: &Storage, dy: &Storage, g: DimGeom, eps: f32) -> Result<Storage>;

    // ---- optimisation ----
    /// One fused SGD pass: weight decay, momentum, Nesterov and the update, per element.
    fn sgd_step(&self, param: &mut Storage, grad: &Storage, momentum_buf: &mut Storage, step: &SgdStep) -> Result<()>;

    // ---- finite-difference hypergradient (DARTS-style, see METHODS.md §3.3) ----
    /// θ⁺ = θ + ε·v and θ⁻ = θ − ε·v in one pass (same lengths).
    fn fd_perturb(&self, theta: &Storage, v: &Storage, eps: f32) -> Result<(Storage, Storage)>;
    /// (g⁺ − g⁻) / (2ε), elementwise.
    fn fd_combine(&self, g_plus: &Storage, g_minus: &Storage, eps: f32) -> Result<Storage>;

    // ---- quantisation ----
    /// Asymmetric min/max fake quantisation per channel, PyTorch's formulas in f32: range
    /// [min(x, 0), max(x, 0)], scale = max(range/qmax, f32::EPSILON), zero point =
    /// clamp(−round(min/scale), 0, qmax), y = (clamp(round(x·(1/scale)) + zp, 0, qmax) − zp)·scale
    /// with round half to even. Returns (y, scale, zero point) with one scale and zero point per
    /// channel.
    fn fake_quant(&self, x: &Storage, g: &QuantGeom) -> Result<(Storage, Storage, Storage)>;
    /// Straight-through estimator: dx = dy where round(x·(1/scale)) + zp lies in [0, qmax], else 0.
    fn fake_quant_backward(
        &self,
        x: &Storage,
        dy: &Storage,
        scale: &Storage,
        zero_point: &Storage,
        g: &QuantGeom,
    ) -> Result<Storage>;

    // ---- gradient accumulation ----
    /// acc[i] += x[i] in place (same length): autograd's accumulation of a gradient into one it
    /// owns alone, with the bits of `binary(Add, acc, x)` and no new buffer.
    fn add_assign(&self, acc: &mut Storage, x: &Storage) -> Result<()>;
}

/// Reject storages from another device with an error naming both.
pub(crate) fn same_device(op: &'static str, a: Device, b: Device) -> Result<()> {
    if a != b {
        return Err(Error::Device { op, detail: format!("tensors on {a} and {b}; move them to one device first") });
    }
    Ok(())
}
