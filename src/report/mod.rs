//! What the user looks at: the report of a run — the
//! store's results organised (`results.rs`) into tables (`tables.rs`; transfer across encoders
//! as matrices, `transfer.rs`) and robustness-vs-ε
//! curves (`plots.rs`), the worst case per sample over every attack (`per_sample.rs`,
//! `worst_case.rs`), the attacks' cost (`cost.rs`), with the run's protocol beside the study's (`protocol.rs`), written as
//! Markdown and one self-contained HTML page (`page.rs`), or its tables as booktabs LaTeX
//! (`latex.rs`).

pub mod cost;
pub mod latex;
pub mod page;
pub mod per_sample;
pub mod plots;
pub mod protocol;
pub mod results;
pub mod tables;
pub mod transfer;
pub mod worst_case;
