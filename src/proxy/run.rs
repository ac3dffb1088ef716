//! Scoring candidates one after another (streaming: one network alive at a time besides the
//! teacher's cached view), producing one JSON-serialisable record per candidate.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{Candidate, Proxy, ScoringContext};
use crate::models::Network;
use crate::Result;

/// One proxy's outcome for one candidate. `score` is null unless `status` is "ok": a non-finite
/// value is reported as "nonfinite", never clamped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProxyOutcome {
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub terms: BTreeMap<String, f64>,
    pub higher_is_better: bool,
    pub time_s: f64,
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `score --repeats N` (N > 1): `score` and `terms` are means over the repeats, this is
    /// the sample standard deviation of the score (n − 1), `repeats` is N.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub std: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeats: Option<usize>,
}

/// The `results.jsonl` record of one candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    pub arch: String,
    pub teacher: Option<String>,
    pub seed: u64,
    pub init: super::InitMode,
    pub batch: usize,
    /// Trainable parameters in millions.
    pub params_m: Option<f64>,
    /// Multiply-accumulates of one image in millions.
    pub flops_m: Option<f64>,
    /// "ok" when every proxy gave a finite score, else "nonfinite" or "error".
    pub status: String,
    pub scores: BTreeMap<String, ProxyOutcome>,
}

/// A candidate's weight seed from the run seed and the network (its canonical name, so
/// `resnet8` and `resnet_d111` get the same weights), so its score does not depend on where it
/// sits in a candidates file or on its spelling (shards and merged runs agree).
pub fn candidate_seed(run_seed: u64, name: &str) -> u64 {
    hash_name(run_seed, &crate::models::canonical_name(name))
}

/// The teacher's weight seed: distinct from a student of the same network (a random teacher is
/// not a copy of one of the candidates), the same in `score` and `search`.
pub fn teacher_seed(run_seed: u64, name: &str) -> u64 {
    hash_name(run_seed, &format!("teacher:{}", crate::models::canonical_name(name)))
}

/// A score for a table: six decimals, or scientific notation for values whose magnitude fixed
/// decimals would hide (synflow's 1e40s, tiny gradients).
pub fn format_score(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e7).contains(&a) {
        format!("{v:.4e}")
    } else {
        format!("{v:.6}")
    }
}

fn hash_name(run_seed: u64, name: &str) -> u64 {
    name.bytes().fold(run_seed ^ 0x9e37_79b9_7f4a_7c15, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// Where a scoring run's teacher comes from.
#[derive(Clone, Debug)]
pub struct TeacherSource<'a> {
    pub name: &'a str,
    /// Trained weights (a kdscout model file or training checkpoint); `None`: initialised from
    /// [`teacher_seed`] and the run's init mode.
    pub weights: Option<&'a std::path::Path>,
}

/// The teacher's view of the scoring batch for `score` and `search` (one code path, so both
/// give a student the same score for the same settings): [`build_teacher`], then its features on
/// the batch, whose logits must be finite (a teacher that overflows cannot score anyone).
/// `on_built` sees the network before it is used (`score --dump` saves its initial weights: the
/// train-mode forward moves the batchnorm running statistics).
pub fn teacher_view(
    src: &TeacherSource,
    num_classes: usize,
    run_seed: u64,
    init: super::InitMode,
    images: &crate::Tensor,
    labels: &[u32],
    on_built: impl FnOnce(&dyn Network) -> Result<()>,
) -> Result<super::TeacherView> {
    let net = build_teacher(src, num_classes, run_seed, init)?;
    on_built(net.as_ref())?;
    let view = super::TeacherView::compute(net.as_ref(), src.name, images, labels)?;
    let bad = view.features.logits.to_vec()?.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        let from = src.weights.map_or_else(|| format!("initialised from seed {run_seed}"), |w| w.display().to_string());
        return Err(crate::Error::invalid(
            "--teacher",
            format!(
                "the teacher {} ({from}) gives {bad} non-finite logits on the scoring batch: it cannot score students; check its weights",
                src.name
            ),
        ));
    }
    Ok(view)
}

/// The teacher network of `score` and `search`: trained weights when given, checked for
/// non-finite values, else a random network from the run seed.
pub fn build_teacher(
    src: &TeacherSource,
    num_classes: usize,
    run_seed: u64,
    init: super::InitMode,
) -> Result<Box<dyn Network>> {
    let cand = Candidate {
        name: src.name.to_string(),
        num_classes,
        seed: teacher_seed(run_seed, src.name),
        init,
        device: crate::Device::Cpu,
    };
    let net = cand.build()?;
    if let Some(path) = src.weights {
        crate::distill::checkpoint::load_teacher_weights(net.as_ref(), path)?;
    }
    Ok(net)
}

/// Scores one candidate with every proxy, never failing as a whole: a proxy's error is recorded
/// in its outcome (a candidate that cannot be built is recorded with status "error").
pub fn score_candidate(ctx: &ScoringContext, candidate: &Candidate, proxies: &[Box<dyn Proxy>]) -> CandidateRecord {
    let build = || candidate.build();
    let size = build().and_then(|net| Ok((net.num_parameters(), macs_of(net.as_ref(), ctx)?)));
    let mut record = CandidateRecord {
        arch: candidate.name.clone(),
        teacher: ctx.teacher.as_ref().map(|t| t.name.clone()),
        seed: candidate.seed,
        init: candidate.init,
        batch: ctx.labels.len(),
        params_m: None,
        flops_m: None,
        status: "ok".into(),
        scores: BTreeMap::new(),
    };
    match size {
        Ok((params, macs)) => {
            record.params_m = Some(params as f64 / 1e6);
            record.flops_m = Some(macs as f64 / 1e6);
        }
        Err(e) => {
            record.status = "error".into();
            for p in proxies {
                record.scores.insert(p.info().name.into(), failed(p.as_ref(), 0.0, e.to_string()));
            }
            return record;
        }
    }
    for p in proxies {
        let start = Instant::now();
        let outcome = match p.score(ctx, &build) {
            Ok(s) => {
                let finite = s.value.is_finite();
                ProxyOutcome {
                    score: finite.then_some(s.value),
                    terms: s.terms.into_iter().filter(|(_, v)| v.is_finite()).collect(),
                    higher_is_better: p.info().higher_is_better,
                    time_s: start.elapsed().as_secs_f64(),
                    status: if finite { "ok" } else { "nonfinite" }.into(),
                    error: None,
                    std: None,
                    repeats: None,
                }
            }
            Err(e) => failed(p.as_ref(), start.elapsed().as_secs_f64(), e.to_string()),
        };
        if outcome.status != "ok" && record.status != "error" {
            record.status = outcome.status.clone();
        }
        record.scores.insert(p.info().name.into(), outcome);
    }
    record
}

/// Scores the network `name` once per context (repeat r: the batch and teacher view of
/// `contexts[r]`, weights from `candidate_seed(contexts[r].seed, name)`) and reports, per proxy,
/// the mean over the repeats as its score, with the sample std; a proxy that failed or was
/// non-finite in any repeat keeps that repeat's outcome. One context is exactly
/// [`score_candidate`].
pub fn score_repeated(
    contexts: &[ScoringContext],
    name: &str,
    num_classes: usize,
    init: super::InitMode,
    device: crate::Device,
    proxies: &[Box<dyn Proxy>],
) -> CandidateRecord {
    let mut records: Vec<CandidateRecord> = contexts
        .iter()
        .map(|ctx| {
            let cand =
                Candidate { name: name.to_string(), num_classes, seed: candidate_seed(ctx.seed, name), init, device };
            score_candidate(ctx, &cand, proxies)
        })
        .collect();
    if records.len() <= 1 {
        // One context: the plain record. None (no caller passes that): an empty error record.
        return records.pop().unwrap_or_else(|| empty_record(name));
    }
    let n = records.len();
    let mut merged = records[0].clone();
    for (proxy, out) in merged.scores.iter_mut() {
        let all: Vec<&ProxyOutcome> = records.iter().filter_map(|r| r.scores.get(proxy)).collect();
        if let Some(bad) = all.iter().find(|o| o.status != "ok") {
            *out = (*bad).clone();
        } else {
            let values: Vec<f64> = all.iter().filter_map(|o| o.score).collect();
            let mean = values.iter().sum::<f64>() / n as f64;
            let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            out.score = Some(mean);
            out.std = Some(var.sqrt());
            for (term, v) in out.terms.iter_mut() {
                *v = all.iter().filter_map(|o| o.terms.get(term)).sum::<f64>() / n as f64;
            }
        }
        out.time_s = all.iter().map(|o| o.time_s).sum();
        out.repeats = Some(n);
    }
    let statuses: Vec<&str> = merged.scores.values().map(|o| o.status.as_str()).collect();
    merged.status = if statuses.contains(&"error") {
        "error"
    } else if statuses.contains(&"nonfinite") {
        "nonfinite"
    } else {
        "ok"
    }
    .into();
    merged
}

fn empty_record(name: &str) -> CandidateRecord {
    CandidateRecord {
        arch: name.to_string(),
        teacher: None,
        seed: 0,
        init: super::InitMode::Default,
        batch: 0,
        params_m: None,
        flops_m: None,
        status: "error".into(),
        scores: BTreeMap::new(),
    }
}

fn failed(p: &dyn Proxy, time_s: f64, error: String) -> ProxyOutcome {
    ProxyOutcome {
        score: None,
        terms: BTreeMap::new(),
        higher_is_better: p.info().higher_is_better,
        time_s,
        status: "error".into(),
        error: Some(error),
        std: None,
        repeats: None,
    }
}

fn macs_of(net: &dyn Network, ctx: &ScoringContext) -> Result<u64> {
    let d = ctx.images.dims();
    let x = crate::Tensor::zeros([1, d[1], d[2], d[3]], ctx.images.device())?;
    // Eval-mode semantics are not needed for counting, but a train-mode pass would move this
    // throwaway copy's running statistics; nothing else sees it.
    let _g = crate::autograd::no_grad();
    let (out, macs) = crate::tensor::macs::count_macs(|| net.forward(&x));
    out?;
    Ok(macs)
}

#[cfg(test)]
mod tests {
    use super::format_score;

    #[test]
    fn huge_and_tiny_scores_use_scientific_notation() {
        assert_eq!(format_score(1.7e141), "1.7000e141");
        assert_eq!(format_score(-2.5e-7), "-2.5000e-7");
        assert_eq!(format_score(0.0), "0.000000");
        assert_eq!(format_score(-12.3456789), "-12.345679");
    }
}
