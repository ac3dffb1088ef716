//! Search algorithms as ask/tell state machines with all their state in one serialisable value
//! ([`SearchState`]: population, counters, RNG position), so a run can stop after any step and
//! continue identically from the saved state (METHODS §1.7).
//!
//! - `aging`: regularised evolution (Real et al. 2019, DisWOT's `evo_search_nb201`): a random
//!   initial population, then each step samples `sample` members uniformly with replacement,
//!   takes the **best** of the sample as parent (METHODS D.7: not the reference code's draw among
//!   the worst), mutates it, adds the child and removes the oldest member.
//! - `generational`: a population replaced generation by generation: `elites` best members kept,
//!   the rest are children of two tournament winners (crossover with `crossover_prob`, then a
//!   mutation with `mutation_prob`, always when the child equals a parent).
//! - `random`: uniform draws.
//! - `exhaustive`: the space's enumeration in order (optionally one shard `i/n`: indices ≡ i mod n).
//!
//! Every proposal is checked against the budget before scoring (rejected proposals are not
//! scored and not recorded); a proposal seen before reuses its score (duplicates are scored
//! once). The evaluation budget counts distinct scored candidates. The winner is the best score
//! among them (no ground truth is ever consulted: METHODS D.8).

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::budget::{Checked, Constraints};
use super::space::{Genome, SearchSpace};
use crate::rng::{Rng, RngState};
use crate::{invalid_err, Result};

/// A scored architecture. `fitness` is the proxy's score oriented so that higher is better;
/// None when scoring failed or was not finite (ranks below every number).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub arch: String,
    pub genome: Genome,
    pub fitness: Option<f64>,
}

/// `a` strictly better than `b` (None is worst).
pub fn better(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => x > y,
        (Some(_), None) => true,
        _ => false,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AlgoKind {
    Aging,
    Generational,
    Random,
    Exhaustive,
}

impl AlgoKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlgoKind::Aging => "aging",
            AlgoKind::Generational => "generational",
            AlgoKind::Random => "random",
            AlgoKind::Exhaustive => "exhaustive",
        }
    }
}

/// Knobs of the evolutionary algorithms (defaults: DisWOT's NB201 search, population 36,
/// sample 8).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlgoConfig {
    pub population: usize,
    /// Tournament size.
    pub sample: usize,
    /// Generational: members carried over unchanged to the next generation.
    pub elites: usize,
    pub crossover_prob: f64,
    pub mutation_prob: f64,
}

impl Default for AlgoConfig {
    fn default() -> Self {
        AlgoConfig { population: 36, sample: 8, elites: 4, crossover_prob: 0.5, mutation_prob: 1.0 }
    }
}

impl AlgoConfig {
    pub fn validate(&self) -> Result<()> {
        if self.population == 0 || self.sample == 0 {
            invalid_err!("search", "search.population and search.sample must be at least 1");
        }
        if self.elites >= self.population {
            invalid_err!(
                "search",
                "search.elites ({}) must be below search.population ({})",
                self.elites,
                self.population
            );
        }
        for (key, p) in [("search.crossover_prob", self.crossover_prob), ("search.mutation_prob", self.mutation_prob)] {
            if !(0.0..=1.0).contains(&p) {
                invalid_err!("search", "{key} = {p} must be a probability in [0, 1]");
            }
        }
        Ok(())
    }
}

/// One of `count` disjoint parts of an exhaustive enumeration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// Parses `i/n` (0-based i < n).
    pub fn parse(text: &str) -> Result<Shard> {
        let parsed = text.split_once('/').and_then(|(i, n)| Some((i.trim().parse().ok()?, n.trim().parse().ok()?)));
        match parsed {
            Some((index, count)) if count > 0 && index < count => Ok(Shard { index, count }),
            _ => invalid_err!("--shard", "'{text}' is not a shard: write i/n with 0 <= i < n (e.g. 0/4 .. 3/4)"),
        }
    }
}

/// The algorithm's own part of the state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AlgoState {
    /// Oldest member first.
    Aging {
        population: VecDeque<Member>,
    },
    Generational {
        generation: u64,
        population: Vec<Member>,
        offspring: Vec<Member>,
    },
    Random,
    /// Proposals made so far (the k-th proposal is index `shard.index + k * shard.count`).
    Exhaustive {
        next: u64,
    },
}

/// Everything a run needs to continue: written to `state.json` after every step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchState {
    pub schema: u32,
    pub algo: AlgoState,
    pub rng: RngState,
    /// Proposals made (scored, duplicate or over budget).
    pub steps: u64,
    /// Distinct candidates scored = records committed to `results.jsonl`.
    pub evaluations: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// Proposals since the last new candidate (detects exhausted spaces and budgets no
    /// architecture meets).
    pub stall: u64,
    pub best: Option<Member>,
    /// Why the run ended, once it has.
    pub finished: Option<String>,
}

/// What one step did.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Scored(Member),
    Duplicate(Member),
    Rejected { arch: String, why: String },
    Finished(String),
}

/// Scores candidates seen for the first time in the run.
pub trait Evaluator {
    /// `cand_id` = number of distinct candidates scored before this one.
    fn evaluate(&mut self, arch: &str, genome: &Genome, checked: &Checked, cand_id: u64) -> Result<Option<f64>>;
}

/// Proposals without a new candidate after which a run stops (space exhausted, or budget too
/// tight for the space).
pub const STALL_LIMIT: u64 = 20_000;

/// The search loop's fixed parameters.
pub struct Driver<'a> {
    pub space: &'a dyn SearchSpace,
    pub kind: AlgoKind,
    pub cfg: AlgoConfig,
    pub constraints: Constraints,
    pub num_classes: usize,
    /// Distinct candidates to score (0 = no limit: exhaustive runs cover their shard).
    pub evaluations: u64,
    pub shard: Shard,
}

impl Driver<'_> {
    pub fn validate(&self) -> Result<()> {
        self.cfg.validate()?;
        if self.shard.count > 1 && self.kind != AlgoKind::Exhaustive {
            invalid_err!(
                "--shard",
                "sharding splits an exhaustive enumeration; use --algo exhaustive (or one process for {})",
                self.kind.as_str()
            );
        }
        if self.evaluations == 0 && self.kind != AlgoKind::Exhaustive {
            invalid_err!("--evaluations", "0 (no limit) only makes sense with --algo exhaustive; give a budget");
        }
        if self.kind == AlgoKind::Exhaustive && self.space.size().is_none() {
            invalid_err!(
                "--algo",
                "the {} space is too large to enumerate; use aging, generational or random",
                self.space.id()
            );
        }
        Ok(())
    }

    /// The state of a new run with this seed.
    pub fn initial_state(&self, seed: u64) -> SearchState {
        let algo = match self.kind {
            AlgoKind::Aging => AlgoState::Aging { population: VecDeque::new() },
            AlgoKind::Generational => {
                AlgoState::Generational { generation: 0, population: Vec::new(), offspring: Vec::new() }
            }
            AlgoKind::Random => AlgoState::Random,
            AlgoKind::Exhaustive => AlgoState::Exhaustive { next: 0 },
        };
        SearchState {
            schema: 1,
            algo,
            rng: Rng::seed(seed).state(),
            steps: 0,
            evaluations: 0,
            duplicates: 0,
            rejected: 0,
            stall: 0,
            best: None,
            finished: None,
        }
    }

    /// One proposal: ask, check the budget, score (or reuse the score of) the candidate, tell.
    /// `seen` maps every candidate scored so far in the run to its fitness.
    pub fn step(
        &self,
        st: &mut SearchState,
        seen: &mut HashMap<String, Option<f64>>,
        eval: &mut dyn Evaluator,
    ) -> Result<Step> {
        if let Some(why) = &st.finished {
            return Ok(Step::Finished(why.clone()));
        }
        let done = |st: &mut SearchState, why: String| {
            st.finished = Some(why.clone());
            Ok(Step::Finished(why))
        };
        if self.evaluations > 0 && st.evaluations >= self.evaluations {
            return done(st, format!("evaluation budget of {} reached", self.evaluations));
        }
        if self.space.size().is_some_and(|n| seen.len() as u64 >= n) {
            return done(st, format!("every architecture of the {} space was scored", self.space.id()));
        }
        if st.stall >= STALL_LIMIT {
            if st.evaluations == 0 {
                invalid_err!(
                    "search",
                    "none of {STALL_LIMIT} proposals of the {} space meets the budget (max_params {}, max_flops {}, max_layers {}); raise the limits",
                    self.space.id(),
                    self.constraints.max_params,
                    self.constraints.max_flops,
                    self.constraints.max_layers
                );
            }
            return done(st, format!("no new architecture in {STALL_LIMIT} proposals (space nearly exhausted)"));
        }
        let mut rng = Rng::from_state(&st.rng)?;
        let Some(genome) = self.ask(&mut st.algo, &mut rng)? else {
            st.rng = rng.state();
            return done(st, "enumeration complete".into());
        };
        st.rng = rng.state();
        st.steps += 1;
        let arch = self.space.name(&genome);
        let checked = self.constraints.check(self.space, &genome, self.num_classes);
        if let Some(why) = checked.violation {
            st.rejected += 1;
            st.stall += 1;
            return Ok(Step::Rejected { arch, why });
        }
        let (member, fresh) = match seen.get(&arch) {
            Some(&fitness) => (Member { arch, genome, fitness }, false),
            None => {
                let fitness = eval.evaluate(&arch, &genome, &checked, st.evaluations)?;
                seen.insert(arch.clone(), fitness);
                (Member { arch, genome, fitness }, true)
            }
        };
        if fresh {
            st.evaluations += 1;
            st.stall = 0;
            if st.best.as_ref().is_none_or(|b| better(member.fitness, b.fitness)) {
                st.best = Some(member.clone());
            }
        } else {
            st.duplicates += 1;
            st.stall += 1;
        }
        self.tell(&mut st.algo, member.clone());
        Ok(if fresh { Step::Scored(member) } else { Step::Duplicate(member) })
    }

    /// The next proposal, or None when an enumeration is complete.
    pub fn ask(&self, algo: &mut AlgoState, rng: &mut Rng) -> Result<Option<Genome>> {
        let p = self.cfg.population;
        Ok(Some(match algo {
            AlgoState::Aging { population } => {
                if population.len() < p {
                    self.space.sample(rng)
                } else {
                    let pop = population.make_contiguous();
                    let parent = &pop[tournament(pop, self.cfg.sample, rng)];
                    self.space.mutate(&parent.genome, rng)
                }
            }
            AlgoState::Generational { population, .. } => {
                if population.len() < p {
                    self.space.sample(rng)
                } else {
                    let a = &population[tournament(population, self.cfg.sample, rng)].genome;
                    let mut child = a.clone();
                    let mut other = None;
                    if rng.uniform(0.0, 1.0) < self.cfg.crossover_prob as f32 {
                        let b = &population[tournament(population, self.cfg.sample, rng)].genome;
                        child = self.space.crossover(a, b, rng);
                        other = Some(b);
                    }
                    if rng.uniform(0.0, 1.0) < self.cfg.mutation_prob as f32 || child == *a || Some(&child) == other {
                        child = self.space.mutate(&child, rng);
                    }
                    child
                }
            }
            AlgoState::Random => self.space.sample(rng),
            AlgoState::Exhaustive { next } => {
                let size = self.space.size().unwrap_or(0);
                let index = self.shard.index + *next * self.shard.count;
                if index >= size {
                    return Ok(None);
                }
                *next += 1;
                self.space.nth(index)?
            }
        }))
    }

    /// Takes a scored (or duplicate) proposal into the algorithm's state.
    pub fn tell(&self, algo: &mut AlgoState, m: Member) {
        let p = self.cfg.population;
        match algo {
            AlgoState::Aging { population } => {
                population.push_back(m);
                if population.len() > p {
                    population.pop_front();
                }
            }
            AlgoState::Generational { generation, population, offspring } => {
                if population.len() < p {
                    population.push(m);
                    return;
                }
                offspring.push(m);
                if offspring.len() + self.cfg.elites >= p {
                    let mut next = ranked(population);
                    next.truncate(self.cfg.elites);
                    next.append(offspring);
                    *population = next;
                    *generation += 1;
                }
            }
            AlgoState::Random | AlgoState::Exhaustive { .. } => {}
        }
    }
}

/// Index of the best of `sample` members drawn uniformly with replacement (the first drawn
/// among equals): tournament selection, the parent choice of regularised evolution.
pub fn tournament(population: &[Member], sample: usize, rng: &mut Rng) -> usize {
    let mut best = rng.below(population.len());
    for _ in 1..sample {
        let i = rng.below(population.len());
        if better(population[i].fitness, population[best].fitness) {
            best = i;
        }
    }
    best
}

/// Members best first (stable: earlier members first among equals).
pub fn ranked(members: &[Member]) -> Vec<Member> {
    let mut v = members.to_vec();
    v.sort_by(|a, b| {
        if better(a.fitness, b.fitness) {
            std::cmp::Ordering::Less
        } else if better(b.fitness, a.fitness) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    });
    v
}
