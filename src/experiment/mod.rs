//! Experiments: a TOML file of encoders × tasks × heads × attacks × ε × norm × steps × seeds
//! (`config.rs`), planned into keyed work items that share expensive work (`plan.rs`), run into a
//! crash-safe results store (`execute.rs`, `store.rs`), split over shards and merged back, and
//! exported as CSV or JSON (`export.rs`); transfer attacks across encoders are checked in
//! `transfer.rs`, shards chosen in `shard.rs`, `--set` overrides applied to the
//! file's text in `overrides.rs`. The report is drawn from the store (`report/`). The
//! protocol switch (`protocol.rs`: ours or the study's) fills what a file or command leaves unset.

pub mod config;
pub mod cost;
pub mod events;
pub mod execute;
pub mod export;
pub mod overrides;
pub mod plan;
pub mod protocol;
pub mod shard;
pub mod store;
pub mod transfer;
