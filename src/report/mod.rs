//! What the user looks at: the report of a run — the
//! store's results organised (`results.rs`) into tables (`tables.rs`; transfer across encoders
//! as matrices, `transfer.rs`) and robustness-vs-ε
//! curves (`plots.rs`), with the run's protocol beside the study's (`protocol.rs`), written as
//! Markdown and one self-contained HTML page (`page.rs`).

pub mod page;
pub mod plots;
pub mod protocol;
pub mod results;
pub mod tables;
pub mod transfer;
