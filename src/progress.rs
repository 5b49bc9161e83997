//! Progress bars with ETA on stderr for the long steps (feature extraction, training); hidden
//! when stderr is not a terminal.

/// A bar over `len` units, labelled `message`.
pub fn bar(len: u64, message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}]").expect("valid template"),
    );
    bar.set_message(message.to_string());
    bar
}
