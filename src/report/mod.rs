//! What the user looks at: the report of a run — the
//! store's results organised (`results.rs`) into tables (`tables.rs`) and robustness-vs-ε
//! curves (`plots.rs`), written as Markdown and one self-contained HTML page (`page.rs`).

pub mod page;
pub mod plots;
pub mod results;
pub mod tables;
