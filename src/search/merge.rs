//! `kdscout merge`: joins the run directories of the shards (`--shard i/n`) of one exhaustive
//! search into one run directory.
//!
//! The shards must be of one run: the same settings except those of [`MAY_DIFFER`] (so the same
//! space, seed, proxy, data, budget, teacher and shard count `n`), each index given once.
//! A shard whose `state.json` is not finished is *incomplete*, an index of `0..n` that no input
//! holds is *missing*: both are errors (naming the shard and the fix) unless `allow_partial`,
//! when the merge goes on and its report says what is absent. The merged directory holds the
//! usual outputs plus `merge.json` ([`MergeReport`]): the shards, how many members of the space
//! the merged results hold, and whether the run is complete.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::algo::SearchState;
use super::config::{differences, parse_file, SearchConfig};
use super::run::{finish_outputs, parse_results, write_atomic, SearchRecord, CONFIG_FILE, RESULTS_FILE, STATE_FILE};
use super::space::space_by_id;
use crate::error::io_err as io;
use crate::run_lock::RunLock;
use crate::{Error, Result};

pub const MERGE_FILE: &str = "merge.json";

/// Settings that may differ between shards of one run: the shard index, the evaluation budget
/// (raised on resume), and the teacher weights' path (the teacher is identified by
/// `teacher_weights_sha256`; a shard run on another machine sees the file under another path).
const MAY_DIFFER: &[&str] = &["shard.index", "evaluations", "teacher_weights"];

/// One input shard as found on disk.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShardReport {
    pub dir: String,
    pub index: u64,
    pub count: u64,
    /// Records in its `results.jsonl` (distinct architectures scored).
    pub records: u64,
    /// Members of the space in this shard's part of the enumeration (None: not enumerable).
    pub share: Option<u64>,
    /// Proposals refused by the budget (never scored).
    pub over_budget: u64,
    /// Why the shard's run ended; None while it is incomplete.
    pub finished: Option<String>,
}

/// What a merge joined and what it lacks: printed, and written to `merge.json`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MergeReport {
    pub space: String,
    /// Members of the whole space (None: too large to enumerate).
    pub space_size: Option<u64>,
    /// Distinct architectures in the merged results.
    pub members: u64,
    pub over_budget: u64,
    pub shard_count: u64,
    pub shards: Vec<ShardReport>,
    /// Shard indices that no input holds.
    pub missing: Vec<u64>,
    /// Shard indices whose run has not finished.
    pub incomplete: Vec<u64>,
    /// Records dropped because an earlier shard held the same architecture.
    pub duplicates_dropped: u64,
    /// Every shard present and finished.
    pub complete: bool,
}

impl MergeReport {
    /// One line: "holds 64 of 64 members of resnet_d", then what is absent.
    pub fn holds(&self) -> String {
        let mut s = self.counts();
        let mut absent: Vec<String> =
            self.missing.iter().map(|i| format!("shard {i}/{} missing", self.shard_count)).collect();
        for sh in self.shards.iter().filter(|sh| sh.finished.is_none()) {
            absent.push(format!("shard {}/{} incomplete ({})", sh.index, sh.count, sh.held()));
        }
        if !absent.is_empty() {
            s.push_str(": ");
            s.push_str(&absent.join(", "));
        }
        if self.duplicates_dropped > 0 {
            s.push_str(&format!("; {} records of architectures already merged were dropped", self.duplicates_dropped));
        }
        s
    }

    /// "holds 35 of 64 members of resnet_d" (and how many the budget excluded).
    fn counts(&self) -> String {
        let mut s = match self.space_size {
            Some(n) => format!("holds {} of {n} members of {}", self.members, self.space),
            None => format!("holds {} members of {} (a space too large to enumerate)", self.members, self.space),
        };
        if self.over_budget > 0 {
            s.push_str(&format!(" ({} over the budget, not scored)", self.over_budget));
        }
        s
    }
}

impl ShardReport {
    fn held(&self) -> String {
        match self.share {
            Some(n) => format!("{} of its {n} members scored", self.records),
            None => format!("{} members scored", self.records),
        }
    }
}

/// Members of a space of `size` in shard `index` of `count` (indices `index + k * count`).
fn share(size: u64, index: u64, count: u64) -> u64 {
    size.saturating_sub(index).div_ceil(count)
}

/// A shard's run directory, read.
struct Input {
    dir: PathBuf,
    cfg: SearchConfig,
    state: Option<SearchState>,
    records: Vec<SearchRecord>,
}

fn read_input(dir: &Path) -> Result<Input> {
    let config = dir.join(CONFIG_FILE);
    if !config.is_file() {
        return Err(Error::invalid(
            "merge",
            format!(
                "{} holds no search run (no {CONFIG_FILE}); give the --out directories of the shards",
                dir.display()
            ),
        ));
    }
    let cfg = parse_file(&config)?;
    let state_path = dir.join(STATE_FILE);
    let state = if state_path.exists() {
        let text = fs::read_to_string(&state_path).map_err(io(state_path.display().to_string()))?;
        Some(serde_json::from_str(&text).map_err(|e| Error::data(state_path.display().to_string(), e.to_string()))?)
    } else {
        None
    };
    let results = dir.join(RESULTS_FILE);
    // Read only: a shard may still be running (its last line half written).
    let records: Vec<SearchRecord> = match fs::read(&results) {
        Ok(bytes) => parse_results(&bytes, &results)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(results.display().to_string())(e)),
    };
    if let Some(r) = records.iter().find(|r| r.space != cfg.space) {
        return Err(Error::data(
            results.display().to_string(),
            format!("record {} is of space {} but the run's config says {}", r.cand_id, r.space, cfg.space),
        ));
    }
    Ok(Input { dir: dir.to_path_buf(), cfg, state, records })
}

/// Refuses inputs that are not distinct shards of one run: a directory given twice, settings
/// that differ (other than the shard index and the evaluation budget), a shard index held twice.
fn check_one_run(inputs: &[Input]) -> Result<()> {
    let first = &inputs[0];
    let mut canonical: BTreeMap<PathBuf, &Path> = BTreeMap::new();
    let mut by_index: BTreeMap<u64, &Path> = BTreeMap::new();
    for inp in inputs {
        let real = fs::canonicalize(&inp.dir).map_err(io(inp.dir.display().to_string()))?;
        if let Some(prev) = canonical.insert(real, &inp.dir) {
            return Err(Error::invalid(
                "merge",
                format!(
                    "{} is given twice (the second time as {}); give each shard once",
                    prev.display(),
                    inp.dir.display()
                ),
            ));
        }
        let diff = differences(&first.cfg, &inp.cfg, MAY_DIFFER)?;
        if !diff.is_empty() {
            return Err(Error::invalid(
                "merge",
                format!(
                    "{} is not a shard of the same run as {}: {}",
                    inp.dir.display(),
                    first.dir.display(),
                    diff.join("; ")
                ),
            ));
        }
        let sh = inp.cfg.shard;
        if let Some(prev) = by_index.insert(sh.index, &inp.dir) {
            return Err(Error::invalid(
                "merge",
                format!(
                    "{} and {} both hold shard {}/{} of the run; give each shard once",
                    prev.display(),
                    inp.dir.display(),
                    sh.index,
                    sh.count
                ),
            ));
        }
    }
    Ok(())
}

/// Joins the shards in `inputs` into `out` (records renumbered in shard order; an architecture
/// present in several shards is kept once). Missing or incomplete shards are an error unless
/// `allow_partial`.
pub fn merge_shards(inputs: &[PathBuf], out: &Path, allow_partial: bool) -> Result<(Vec<SearchRecord>, MergeReport)> {
    if inputs.is_empty() {
        return Err(Error::invalid("merge", "give the run directories of the shards to merge"));
    }
    let mut inputs: Vec<Input> = inputs.iter().map(|d| read_input(d)).collect::<Result<_>>()?;
    check_one_run(&inputs)?;
    // Shard order, not argument order: the merged records (and the winner among equal scores,
    // the first) are the same however the directories are listed.
    inputs.sort_by_key(|i| i.cfg.shard.index);
    let cfg0 = &inputs[0].cfg;
    let space = space_by_id(&cfg0.space)?;
    let count = cfg0.shard.count;

    let mut records: Vec<SearchRecord> = Vec::new();
    let mut seen = HashSet::new();
    let mut shards = Vec::new();
    let mut duplicates_dropped = 0;
    for inp in &inputs {
        let sh = inp.cfg.shard;
        shards.push(ShardReport {
            dir: inp.dir.display().to_string(),
            index: sh.index,
            count: sh.count,
            records: inp.records.len() as u64,
            share: space.size().map(|n| share(n, sh.index, sh.count)),
            over_budget: inp.state.as_ref().map_or(0, |s| s.rejected),
            finished: inp.state.as_ref().and_then(|s| s.finished.clone()),
        });
        for r in &inp.records {
            if seen.insert(r.record.arch.clone()) {
                records.push(SearchRecord { cand_id: records.len() as u64, ..r.clone() });
            } else {
                duplicates_dropped += 1;
            }
        }
    }
    let present: HashSet<u64> = shards.iter().map(|s| s.index).collect();
    let missing: Vec<u64> = (0..count).filter(|i| !present.contains(i)).collect();
    let mut incomplete: Vec<u64> = shards.iter().filter(|s| s.finished.is_none()).map(|s| s.index).collect();
    incomplete.sort_unstable();
    let report = MergeReport {
        space: space.id().to_string(),
        space_size: space.size(),
        members: records.len() as u64,
        over_budget: shards.iter().map(|s| s.over_budget).sum(),
        shard_count: count,
        complete: missing.is_empty() && incomplete.is_empty(),
        shards,
        missing,
        incomplete,
        duplicates_dropped,
    };
    if !report.complete && !allow_partial {
        return Err(Error::invalid("merge", partial_reasons(&report)));
    }

    // One writer: the lock is taken (creating `out`) once the shards are known to merge.
    let _lock = RunLock::acquire(out)?;
    if out.join(RESULTS_FILE).exists() {
        return Err(Error::invalid("merge", format!("{} already holds results; choose another --out", out.display())));
    }
    let mut cfg = cfg0.clone();
    cfg.shard = Default::default();
    write_atomic(&out.join(CONFIG_FILE), &cfg.to_toml()?)?;
    let mut text = String::new();
    for r in &records {
        text.push_str(&serde_json::to_string(r).map_err(|e| Error::invalid("merge", e.to_string()))?);
        text.push('\n');
    }
    write_atomic(&out.join(RESULTS_FILE), &text)?;
    let json = serde_json::to_string_pretty(&report).map_err(|e| Error::invalid("merge", e.to_string()))?;
    write_atomic(&out.join(MERGE_FILE), &(json + "\n"))?;
    let num_classes = records.first().map_or(0, |r| r.num_classes);
    finish_outputs(out, &cfg, space.as_ref(), num_classes, &records)?;
    Ok((records, report))
}

/// Joins complete shards (see [`merge_shards`]); the records of the merged run.
pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<Vec<SearchRecord>> {
    merge_shards(inputs, out, false).map(|(records, _)| records)
}

/// Why a partial merge is refused: each absent shard and how to supply it.
fn partial_reasons(r: &MergeReport) -> String {
    let mut why = Vec::new();
    if !r.missing.is_empty() {
        let list: Vec<String> = r.missing.iter().map(|i| format!("{i}/{}", r.shard_count)).collect();
        why.push(format!(
            "shard{} {} {} missing (run `kdscout search ... --shard i/n` for each and give its --out directory)",
            if list.len() == 1 { "" } else { "s" },
            list.join(", "),
            if list.len() == 1 { "is" } else { "are" }
        ));
    }
    for sh in r.shards.iter().filter(|s| s.finished.is_none()) {
        why.push(format!(
            "{} (shard {}/{}) is incomplete: {}; finish it with `kdscout search --resume --out {}`",
            sh.dir,
            sh.index,
            sh.count,
            sh.held(),
            sh.dir
        ));
    }
    format!("{}; or pass --allow-partial to merge what there is (it {})", why.join("; "), r.counts())
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn shares_partition_the_enumeration() {
        for (size, count) in [(64, 3), (15625, 2), (5, 8), (1, 1)] {
            assert_eq!((0..count).map(|i| share(size, i, count)).sum::<u64>(), size, "{size} in {count}");
        }
        assert_eq!(share(15625, 1, 2), 7812);
    }
}
