//! Training-free scoring: a candidate network, freshly initialised, is scored on one real batch
//! (and, for teacher-aware proxies, against a teacher whose view of that batch is computed once
//! and shared by every candidate). Definitions: METHODS.md §0-§1 (DisWOT) and Part B.1 (the
//! zero-cost-nas baselines); each proxy's doc comment names its source and any choice made.
//!
//! Every proxy scores its own fresh copy of the candidate (built by [`Candidate::build`] with the
//! same seed, so all proxies see identical initial weights): several proxies change the network
//! they score (SynFlow takes absolute weights, Zen-score re-initialises it, GraSP perturbs it,
//! every train-mode forward moves BN running statistics), and none may leak into another.

pub mod diswot;
pub mod kd_based;
pub mod linalg;
pub mod rank;
pub mod run;
pub mod synflow;
pub mod zero_cost;

use crate::models::{self, Features, Network};
use crate::nn::{Conv2d, Init, Linear, Module};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::{invalid_err, Device, Result};

/// How a candidate's weights are drawn before scoring (METHODS §0.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InitMode {
    /// The original repository's initialisation (kaiming-normal fan_out for the CIFAR ResNets).
    Default,
    /// Every Conv2d/Linear weight N(0, 1), biases 0, norm layers 1/0 (DisWOT's NB201/S1 scripts,
    /// Zen-NAS).
    Gaussian,
}

impl std::str::FromStr for InitMode {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<InitMode> {
        match s {
            "default" => Ok(InitMode::Default),
            "gaussian" => Ok(InitMode::Gaussian),
            _ => invalid_err!("--init", "unknown init '{s}': use default or gaussian"),
        }
    }
}

/// A network to score: a name the zoo builds, a class count, and the seed of its weights.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub name: String,
    pub num_classes: usize,
    pub seed: u64,
    pub init: InitMode,
    pub device: Device,
}

impl Candidate {
    /// A fresh copy with the candidate's initial weights (identical on every call).
    pub fn build(&self) -> Result<Box<dyn Network>> {
        let mut rng = Rng::seed(self.seed);
        let net = models::build(&self.name, self.num_classes, &mut rng, self.device)?;
        if self.init == InitMode::Gaussian {
            Init::Normal { mean: 0.0, std: 1.0 }.apply(net.as_ref(), &mut rng)?;
        }
        Ok(net)
    }
}

/// The teacher's view of the scoring batch, computed once and shared by all candidates:
/// its features (detached) and the gradient of its classifier weight after a mean cross-entropy
/// backward (DisWOT's semantic input), both in training-mode BN as the reference code runs it.
pub struct TeacherView {
    pub name: String,
    pub features: Features,
    pub classifier_grad: Tensor,
    /// The classifier weight itself (the paper's CAM formulation reads it).
    pub classifier_weight: Option<Tensor>,
}

/// ∂CE/∂W of the final Linear after a mean cross-entropy, in closed form from a forward pass:
/// logits = pooled·Wᵀ + b, so ∂CE/∂W = (softmax(logits) − onehot(labels))ᵀ · pooled / B. No
/// backward pass through the network is needed (a test checks logits = classifier(pooled) for
/// every model of the zoo).
pub fn classifier_grad(f: &Features, labels: &[u32]) -> Result<Tensor> {
    let (b, k) = (f.logits.dims()[0], f.logits.dims()[1]);
    if labels.len() != b {
        crate::shape_err!("classifier_grad", "{} labels for logits {}", labels.len(), f.logits.shape());
    }
    let mut onehot = vec![0.0f32; b * k];
    for (n, &l) in labels.iter().enumerate() {
        if l as usize >= k {
            invalid_err!("classifier_grad", "label {l} does not fit {k} classes");
        }
        onehot[n * k + l as usize] = 1.0;
    }
    let err = f.logits.softmax(1)?.sub(&Tensor::from_vec(onehot, [b, k], f.logits.device())?)?;
    err.matmul_t(&f.pooled, true, false)?.scale(1.0 / b as f32)
}

impl TeacherView {
    pub fn compute(teacher: &dyn Network, name: &str, x: &Tensor, labels: &[u32]) -> Result<TeacherView> {
        let _g = crate::autograd::no_grad();
        let f = teacher.forward_features(x)?;
        let classifier_grad = classifier_grad(&f, labels)?;
        let detach_all = |v: &[Tensor]| v.iter().map(|t| t.detach()).collect::<Vec<_>>();
        let features = Features {
            stages: detach_all(&f.stages),
            preact_stages: detach_all(&f.preact_stages),
            final_map: f.final_map,
            head_map: f.head_map.as_ref().map(|t| t.detach()),
            pooled: f.pooled.detach(),
            logits: f.logits.detach(),
        };
        let classifier_weight = Some(teacher.classifier().weight.detach());
        Ok(TeacherView { name: name.to_string(), features, classifier_grad, classifier_weight })
    }
}

/// Everything a proxy may read besides the candidate: the batch, the teacher's view of it, and
/// the seed for proxies that draw their own inputs (Zen-score).
pub struct ScoringContext {
    pub images: Tensor,
    pub labels: Vec<u32>,
    pub teacher: Option<TeacherView>,
    pub seed: u64,
}

impl ScoringContext {
    pub fn teacher(&self, proxy: &'static str) -> Result<&TeacherView> {
        match &self.teacher {
            Some(t) => Ok(t),
            None => invalid_err!(proxy, "this proxy compares the student with a teacher: give --teacher NAME"),
        }
    }
    /// A generator for proxy `name`, fixed by the run seed and the proxy (not by the order in
    /// which proxies run).
    pub fn rng_for(&self, name: &str) -> Rng {
        let salt = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        Rng::seed(self.seed ^ salt)
    }
}

/// The scoring batch of a run: the first batch of a seeded pass over the training split with the
/// standard CIFAR augmentation (one real batch with its labels, as DisWOT scores), and the
/// source's class count. `kdscout score` and `kdscout search` both take it from here.
pub fn scoring_batch(source: &crate::data::DataSource, batch: usize, seed: u64) -> Result<(Tensor, Vec<u32>, usize)> {
    let data = source.load(crate::data::Split::Train)?;
    if batch == 0 || data.len() < batch {
        invalid_err!("--batch", "batch {batch} must be in 1..={} (the training images of {source})", data.len());
    }
    let mut rng = Rng::seed(seed);
    let first = crate::data::DataLoader::train(&data, batch)?.epoch(&mut rng).next();
    let (images, labels) = first.ok_or_else(|| crate::Error::data(source.to_string(), "no batch"))??.into_parts();
    Ok((images, labels, data.num_classes))
}

/// A proxy's value and, for composite proxies, its named terms.
#[derive(Clone, Debug, PartialEq)]
pub struct ProxyScore {
    pub value: f64,
    pub terms: Vec<(String, f64)>,
}

impl ProxyScore {
    pub fn scalar(value: f64) -> ProxyScore {
        ProxyScore { value, terms: Vec::new() }
    }
}

/// What the registry says about a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyInfo {
    pub name: &'static str,
    pub higher_is_better: bool,
    pub needs_gradients: bool,
    pub needs_teacher: bool,
    /// What it reads, in a few words (shown by `kdscout score --list`).
    pub reads: &'static str,
}

/// Builds a fresh copy of the candidate with its initial weights (identical on every call).
pub type NetFactory<'a> = &'a dyn Fn() -> Result<Box<dyn Network>>;

pub trait Proxy: Send + Sync {
    fn info(&self) -> ProxyInfo;
    /// Scores the network `build` makes; the proxy calls `build` for each copy it needs.
    fn score(&self, ctx: &ScoringContext, build: NetFactory) -> Result<ProxyScore>;
}

/// Every proxy, in the order `--proxies all` runs them.
pub fn registry() -> Vec<Box<dyn Proxy>> {
    let mut v: Vec<Box<dyn Proxy>> = vec![Box::new(diswot::DisWot), Box::new(diswot::DisWotCam)];
    v.extend(kd_based::all());
    v.extend(zero_cost::all());
    v.push(Box::new(synflow::SynFlow));
    v
}

/// The proxy of that name, or an error listing the names.
pub fn by_name(name: &str) -> Result<Box<dyn Proxy>> {
    let all = registry();
    let names: Vec<&str> = all.iter().map(|p| p.info().name).collect();
    let list = names.join(", ");
    match all.into_iter().find(|p| p.info().name == name) {
        Some(p) => Ok(p),
        None => invalid_err!("--proxies", "unknown proxy '{name}': use one of {list}"),
    }
}

/// Conv2d and Linear weights of a network with their dotted names: the layers zero-cost-nas's
/// per-weight measures sum over.
pub fn layer_weights(net: &dyn Module) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    net.visit_modules("", &mut |name, m| {
        let any = m.as_any();
        if let Some(c) = any.downcast_ref::<Conv2d>() {
            out.push((name.to_string(), c.weight.clone()));
        } else if let Some(l) = any.downcast_ref::<Linear>() {
            out.push((name.to_string(), l.weight.clone()));
        }
    });
    out
}

/// For proxies that compare the images of the batch with each other: one image gives a constant,
/// so the proxy says why it cannot score instead of returning it.
pub(crate) fn require_pairs(proxy: &'static str, ctx: &ScoringContext) -> Result<()> {
    let b = ctx.images.dims().first().copied().unwrap_or(0);
    if b < 2 {
        invalid_err!(
            proxy,
            "it compares the images of the batch with each other, so it needs a batch of at least 2 images \
             (got {b}): use --batch 2 or more"
        );
    }
    Ok(())
}

/// Mean cross-entropy of a forward pass on the context batch.
pub(crate) fn batch_loss(net: &dyn Network, ctx: &ScoringContext) -> Result<Tensor> {
    net.forward(&ctx.images)?.cross_entropy(&ctx.labels)
}

/// A tensor's values widened to f64.
pub(crate) fn host_f64(t: &Tensor) -> Result<Vec<f64>> {
    Ok(t.to_vec()?.into_iter().map(f64::from).collect())
}
