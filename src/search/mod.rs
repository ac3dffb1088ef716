//! Student architecture search (METHODS §1.6-§1.7): spaces, budgets, the search algorithms with
//! resumable state, and the run directory (`kdscout search`).

pub mod algo;
pub mod budget;
pub mod config;
pub mod merge;
pub mod plots;
pub mod run;
pub mod space;
pub mod space_vit;

pub use algo::{AlgoConfig, AlgoKind, Driver, Member, SearchState, Shard};
pub use budget::{Constraints, Count};
pub use space::{space_by_id, Genome, SearchSpace};
