//! Progress on stderr for the long steps (feature extraction, training, attacks, experiments).
//! On a terminal: indicatif bars with ETA. Elsewhere (a Slurm log, a pipe, a file): plain lines,
//! `progress: LABEL: POS/LEN (P%), ELAPSED elapsed, ~ETA left [MESSAGE]`, for each bar at most
//! once every `ROBUST_SSL_PROGRESS_SECONDS` seconds (default 30; 0: every update) and once when
//! it ends. Warnings go through [`Bars::println`] / [`Bar::suspend`] and are printed in both
//! modes. `ROBUST_SSL_PROGRESS=plain|bars|off` forces a mode.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Bars,
    Plain,
    Off,
}

fn mode() -> Mode {
    match std::env::var("ROBUST_SSL_PROGRESS").ok().as_deref().map(str::trim) {
        Some("plain") => Mode::Plain,
        Some("bars") => Mode::Bars,
        Some("off") => Mode::Off,
        _ if std::io::stderr().is_terminal() => Mode::Bars,
        _ => Mode::Plain,
    }
}

fn period() -> Duration {
    let secs = std::env::var("ROBUST_SSL_PROGRESS_SECONDS").ok().and_then(|s| s.trim().parse::<f64>().ok());
    Duration::from_secs_f64(secs.filter(|s| s.is_finite() && *s >= 0.0).unwrap_or(30.0))
}

/// What a plain-mode bar has printed.
#[derive(Debug)]
struct Plain {
    label: String,
    message: String,
    start: Instant,
    last: Option<Instant>,
    period: Duration,
}

/// One progress bar: an indicatif bar on a terminal, plain periodic lines elsewhere.
#[derive(Clone, Debug)]
pub struct Bar {
    inner: indicatif::ProgressBar,
    plain: Option<Arc<Mutex<Plain>>>,
}

/// A bar over `len` units, labelled `message`.
pub fn bar(len: u64, message: &str) -> Bar {
    let mode = mode();
    let inner = match mode {
        Mode::Bars => indicatif::ProgressBar::new(len),
        _ => indicatif::ProgressBar::hidden(),
    };
    inner.set_length(len);
    inner.set_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}]").expect("valid template"),
    );
    inner.set_message(message.to_string());
    let plain = (mode == Mode::Plain).then(|| {
        Arc::new(Mutex::new(Plain {
            label: message.trim().to_string(),
            message: String::new(),
            start: Instant::now(),
            last: None,
            period: period(),
        }))
    });
    Bar { inner, plain }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

impl Bar {
    pub fn inc(&self, n: u64) {
        self.inner.inc(n);
        self.report(false);
    }

    pub fn set_position(&self, pos: u64) {
        self.inner.set_position(pos);
        self.report(false);
    }

    /// The text shown beside the bar (in plain lines, after the figures).
    pub fn set_message(&self, message: String) {
        match &self.plain {
            Some(p) => p.lock().unwrap_or_else(|e| e.into_inner()).message = message,
            None => self.inner.set_message(message),
        }
    }

    /// Ends the bar: cleared on a terminal, a last line elsewhere.
    pub fn finish_and_clear(&self) {
        self.report(true);
        self.inner.finish_and_clear();
    }

    /// Runs `f` (which prints, e.g. a warning) with the bar out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.inner.suspend(f)
    }

    /// A plain line when the period has passed since the last one (or at the end).
    fn report(&self, end: bool) {
        let Some(p) = &self.plain else { return };
        let mut p = p.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if !end && p.last.is_some_and(|t| now.duration_since(t) < p.period) {
            return;
        }
        let (pos, len) = (self.inner.position(), self.inner.length().unwrap_or(0));
        let elapsed = now.duration_since(p.start);
        let pct = if len > 0 { 100.0 * pos as f64 / len as f64 } else { 100.0 };
        let eta = match (end, pos) {
            (true, _) => "done".to_string(),
            (false, 0) => "~? left".to_string(),
            (false, _) => format!("~{} left", clock(elapsed.mul_f64(len.saturating_sub(pos) as f64 / pos as f64))),
        };
        let message = if p.message.is_empty() { String::new() } else { format!(" [{}]", p.message) };
        eprintln!("progress: {}: {pos}/{len} ({pct:.0}%), {} elapsed, {eta}{message}", p.label, clock(elapsed));
        p.last = Some(now);
    }
}

/// Several bars drawn together (an experiment's overall bar and its current item's).
pub struct Bars {
    multi: indicatif::MultiProgress,
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl Bars {
    pub fn new() -> Self {
        Self { multi: indicatif::MultiProgress::new() }
    }

    pub fn add(&self, bar: Bar) -> Bar {
        let inner = if bar.plain.is_some() { bar.inner } else { self.multi.add(bar.inner) };
        Bar { inner, plain: bar.plain }
    }

    pub fn remove(&self, bar: &Bar) {
        self.multi.remove(&bar.inner);
    }

    /// A line above the bars (a warning): printed in every mode.
    pub fn println(&self, line: String) -> std::io::Result<()> {
        if mode() == Mode::Bars {
            self.multi.println(line)
        } else {
            eprintln!("{line}");
            Ok(())
        }
    }
}
