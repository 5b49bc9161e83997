//! What the user looks at: pictures of attacks (and, later, tables, plots and the HTML report).

pub mod strips;
