//! Hostile inputs for every reader: a few thousand structure-aware mutations of each reader's
//! seeds (tests/common/mutate.rs), each read through the project's own entry point
//! (tests/common/hostile.rs) under a bounded allocator (tests/common/bounded_alloc.rs). A case
//! passes when the file is read, or refused with an error that names it; it fails on a panic, an
//! error that does not name the file, or a single allocation request above the bound.
//!
//! Each reader runs in a child process (this test binary, running `hostile_case_child`), so that
//! an allocation refused where the code cannot recover (the process aborts) or a hang ends only
//! that case: the parent names it and starts a new child at the next case. Cases are counted,
//! not timed, and each is made from its own seed, so any one of them can be replayed alone:
//!
//!   HOSTILE_READERS=pth HOSTILE_ONLY=1234 cargo test --release --test hostile_inputs -- --nocapture
//!
//! `HOSTILE_READERS` (comma-separated reader names) and `HOSTILE_SCALE` (a factor on the number of
//! cases) narrow or widen a run. Failing inputs are kept under the target folder's
//! `tmp/hostile-failures/<reader>/case-<N>` for the fuzz targets (`fuzz/run.sh`) to replay.

#[path = "common/bounded_alloc.rs"]
mod bounded_alloc;
#[path = "common/hostile.rs"]
mod hostile;
#[path = "common/mutate.rs"]
mod mutate;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bounded_alloc::{arm, disarm, BoundedAlloc, DEFAULT_BOUND};
use hostile::Reader;

#[global_allocator]
static ALLOC: BoundedAlloc = BoundedAlloc;

/// Cases per reader: a few thousand where a case costs a millisecond or two, fewer where it loads
/// and runs an encoder or plans an experiment (same order of total time for each).
fn cases(reader: Reader) -> usize {
    let base = match reader {
        Reader::Pth | Reader::Safetensors | Reader::Onnx | Reader::HfConfig => 1500,
        Reader::Experiment => 1500,
        _ => 3000,
    };
    let scale: f64 = std::env::var("HOSTILE_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    ((base as f64 * scale) as usize).max(1)
}

/// A case stuck this long is a hang.
const HANG: Duration = Duration::from_secs(30);
/// After this many aborted children, a reader's remaining cases are skipped.
const MAX_ABORTS: usize = 40;

/// The input of case `i`: the seeds themselves first, then mutations of a seed drawn per case.
fn case_input(reader: Reader, seeds: &[hostile::Seed], i: usize) -> Vec<u8> {
    if i < seeds.len() {
        return seeds[i].bytes.clone();
    }
    let mut rng = mutate::Rng::new(mutate::case_seed(reader, i as u64));
    let seed = &seeds[rng.below(seeds.len())].bytes;
    mutate::mutate(reader, seed, &mut rng)
}

fn failures_dir(reader: Reader) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile-failures").join(reader.name())
}

/// One line, for the child's report.
fn oneline(s: &str) -> String {
    let s = s.replace('\n', " ⏎ ").replace('\t', " ");
    if s.chars().count() > 600 {
        s.chars().take(600).collect::<String>() + "…"
    } else {
        s
    }
}

/// The last panic of this process: message, location, and a backtrace.
static PANIC: Mutex<Option<(String, String, std::backtrace::Backtrace)>> = Mutex::new(None);

/// Frames of ours (and of the libraries that failed under us) from a backtrace, innermost first.
fn our_frames(text: &str) -> String {
    const LIBS: [&str; 10] = ["candle-core", "/png-", "/image-", "/zip-", "/safetensors-", "matfile", "npyz", "hdf5", "flate2", "/toml"];
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        let Some((_, name)) = l.trim().split_once(": ") else { continue };
        let Some(at) = lines.peek().map(|n| n.trim()).filter(|n| n.starts_with("at ")) else { continue };
        let at = at.trim_start_matches("at ");
        if (at.starts_with("./src/") || LIBS.iter().any(|c| at.contains(c))) && !name.contains("hostile") {
            out.push(format!("{name} ({at})"));
            if out.len() == 6 {
                break;
            }
        }
    }
    out.join(" <- ")
}

/// Runs the cases `HOSTILE_START..HOSTILE_END` of `HOSTILE_READER` (only when the parent asks).
#[test]
fn hostile_case_child() {
    let Ok(name) = std::env::var("HOSTILE_READER") else { return };
    let reader = Reader::from_name(&name).expect("a reader name");
    let env = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} is set by the parent"));
    let dir = PathBuf::from(env("HOSTILE_DIR"));
    let progress = PathBuf::from(env("HOSTILE_PROGRESS"));
    let (start, end): (usize, usize) = (env("HOSTILE_START").parse().unwrap(), env("HOSTILE_END").parse().unwrap());
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
        *PANIC.lock().unwrap_or_else(|e| e.into_inner()) = Some((msg, at, std::backtrace::Backtrace::force_capture()));
    }));
    let seeds = reader.seeds();
    let mut out = std::io::stdout().lock();
    let (mut ok, mut err) = (0usize, 0usize);
    let mut located = std::collections::HashSet::new();
    for i in start..end {
        std::fs::write(&progress, format!("{i} {ok} {err}")).expect("progress file");
        let Ok(input) = std::panic::catch_unwind(|| case_input(reader, &seeds, i)) else {
            let (msg, at, _) = PANIC.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default_panic();
            writeln!(out, "FAIL\t{i}\tmutator panic at {at}\t\t{}", oneline(&msg)).unwrap();
            continue;
        };
        arm(DEFAULT_BOUND);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hostile::check(reader, &input, &dir)));
        let largest = disarm();
        let mut failure = None;
        match outcome {
            Ok(true) => ok += 1,
            Ok(false) => err += 1,
            Err(_) => {
                let (msg, at, bt) = PANIC.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default_panic();
                if msg.contains(hostile::UNNAMED) {
                    err += 1;
                    failure = Some(("unnamed".to_string(), String::new(), msg));
                } else {
                    let frames = if located.insert(at.clone()) { our_frames(&bt.to_string()) } else { String::new() };
                    failure = Some((format!("panic at {at}"), frames, msg));
                }
            }
        }
        if largest > DEFAULT_BOUND {
            failure = Some((
                "allocation".into(),
                String::new(),
                format!("a single allocation of {largest} bytes was requested (bound {DEFAULT_BOUND}); refused, and the reader recovered"),
            ));
        }
        // A seed must be read, except the regression inputs fuzzing found (refusing them is right).
        if i < seeds.len() && !seeds[i].name.starts_with(hostile::REGRESSION) && failure.is_none() && !matches!(outcome, Ok(true)) {
            let why = match hostile::run(reader, &input, &dir) {
                Err(e) => format!("{e:#}"),
                Ok(()) => "(read on a second try)".into(),
            };
            failure = Some(("seed refused".into(), String::new(), format!("seed {} is not read: {why}", seeds[i].name)));
        }
        if let Some((kind, frames, msg)) = failure {
            let keep = failures_dir(reader);
            let _ = std::fs::create_dir_all(&keep);
            let _ = std::fs::write(keep.join(format!("case-{i}")), &input);
            writeln!(out, "FAIL\t{i}\t{kind}\t{}\t{}", oneline(&frames), oneline(&msg)).unwrap();
        }
    }
    writeln!(out, "DONE\t{ok}\t{err}").unwrap();
}

trait OrDefaultPanic {
    fn unwrap_or_default_panic(self) -> (String, String, std::backtrace::Backtrace);
}

impl OrDefaultPanic for Option<(String, String, std::backtrace::Backtrace)> {
    fn unwrap_or_default_panic(self) -> (String, String, std::backtrace::Backtrace) {
        self.unwrap_or_else(|| ("(no message)".into(), "?".into(), std::backtrace::Backtrace::disabled()))
    }
}

/// One failing case, as reported.
struct Failure {
    reader: Reader,
    case: usize,
    kind: String,
    frames: String,
    message: String,
}

#[derive(Default)]
struct Tally {
    cases: usize,
    ok: usize,
    err: usize,
    failures: Vec<Failure>,
    seconds: f64,
    skipped: usize,
}

/// What a dead child's stderr says: the allocation-error handler's line and the frames of its
/// backtrace, or the last lines.
fn tail(path: &Path) -> (String, String) {
    let text = std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    if let Some(at) = text.rfind("memory allocation of") {
        let rest = &text[at..];
        return (rest.lines().next().unwrap_or_default().to_string(), our_frames(rest));
    }
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    (lines[lines.len().saturating_sub(3)..].join(" | "), String::new())
}

/// Runs `reader`'s cases in child processes, a new one after each abort or hang.
fn run_reader(reader: Reader, work: &Path) -> Tally {
    let started = Instant::now();
    let mut t = Tally::default();
    let dir = work.join("data");
    let progress = work.join(format!("{}.progress", reader.name()));
    let (stdout, stderr) = (work.join(format!("{}.out", reader.name())), work.join(format!("{}.err", reader.name())));
    let (mut start, end) = match std::env::var("HOSTILE_ONLY").ok().and_then(|s| s.parse::<usize>().ok()) {
        Some(i) => (i, i + 1),
        None => (0, cases(reader)),
    };
    let mut aborts = 0;
    while start < end {
        let _ = std::fs::remove_file(&progress);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["hostile_case_child", "--exact", "--nocapture", "--test-threads=1", "-q"])
            .env("HOSTILE_READER", reader.name())
            .env("HOSTILE_DIR", &dir)
            .env("HOSTILE_PROGRESS", &progress)
            .env("HOSTILE_START", start.to_string())
            .env("HOSTILE_END", end.to_string())
            // The allocation-error handler prints a backtrace; errors do not capture one.
            .env("RUST_BACKTRACE", "1")
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("the test binary runs");
        let (mut last, mut since) = (String::new(), Instant::now());
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            let now = std::fs::read_to_string(&progress).unwrap_or_default();
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() > HANG {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let report = std::fs::read_to_string(&stdout).unwrap_or_default();
        for line in report.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            match f[..] {
                ["FAIL", case, kind, frames, message] => t.failures.push(Failure {
                    reader,
                    case: case.parse().unwrap(),
                    kind: kind.into(),
                    frames: frames.into(),
                    message: message.into(),
                }),
                ["DONE", ok, err] => {
                    t.ok += ok.parse::<usize>().unwrap();
                    t.err += err.parse::<usize>().unwrap();
                }
                _ => {}
            }
        }
        if status.is_some_and(|s| s.success()) && report.contains("DONE\t") {
            t.cases += end - start;
            break;
        }
        // The child died (or hung) in the case it last started.
        let p: Vec<usize> = std::fs::read_to_string(&progress).unwrap_or_default().split(' ').filter_map(|v| v.parse().ok()).collect();
        let Some(&case) = p.first() else {
            panic!("{}: the child process failed before its first case: {:?}", reader.name(), tail(&stderr));
        };
        t.ok += p.get(1).copied().unwrap_or(0);
        t.err += p.get(2).copied().unwrap_or(0);
        t.cases += case + 1 - start;
        let what = match status {
            None => (format!("hang (> {}s)", HANG.as_secs()), "the case did not finish; killed".to_string(), String::new()),
            Some(s) => {
                let (said, frames) = tail(&stderr);
                ("abort".to_string(), format!("the process died ({s}): {said}"), frames)
            }
        };
        let seeds = reader.seeds();
        let input = case_input(reader, &seeds, case);
        let keep = failures_dir(reader);
        let _ = std::fs::create_dir_all(&keep);
        let _ = std::fs::write(keep.join(format!("case-{case}")), &input);
        t.failures.push(Failure { reader, case, kind: what.0, frames: what.2, message: what.1 });
        start = case + 1;
        aborts += 1;
        if aborts >= MAX_ABORTS && start < end {
            t.skipped = end - start;
            break;
        }
    }
    t.seconds = started.elapsed().as_secs_f64();
    t
}

/// The key a failure is grouped by: where it happened, or what it said without the numbers.
fn group_key(f: &Failure) -> String {
    let digits_out = |s: &str| s.chars().map(|c| if c.is_ascii_digit() { '#' } else { c }).collect::<String>();
    match f.kind.as_str() {
        k if k.starts_with("panic") => k.to_string(),
        "unnamed" => {
            let m = f.message.split("): ").nth(1).unwrap_or(&f.message);
            format!("unnamed: {}", digits_out(&m.chars().take(60).collect::<String>()))
        }
        "abort" => format!("abort: {}", digits_out(&f.message.chars().filter(|c| !c.is_ascii_digit()).take(80).collect::<String>())),
        k => k.to_string(),
    }
}

#[test]
fn every_reader_survives_hostile_inputs() {
    if std::env::var_os("HOSTILE_READER").is_some() {
        return; // a child runs only its cases
    }
    let readers: Vec<Reader> = match std::env::var("HOSTILE_READERS") {
        Ok(list) => list.split(',').map(|n| Reader::from_name(n.trim()).unwrap_or_else(|| panic!("no reader '{n}'"))).collect(),
        Err(_) => Reader::ALL.to_vec(),
    };
    let work = tempfile::tempdir().unwrap();
    let next = AtomicUsize::new(0);
    let tallies: Mutex<BTreeMap<usize, Tally>> = Mutex::new(BTreeMap::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).min(readers.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&reader) = readers.get(k) else { break };
                let t = run_reader(reader, work.path());
                eprintln!(
                    "hostile {:<15} {:>5} cases  {:>5} ok  {:>5} err  {:>3} failing  {:>5.1}s",
                    reader.name(),
                    t.cases,
                    t.ok,
                    t.err,
                    t.failures.len(),
                    t.seconds
                );
                tallies.lock().unwrap().insert(k, t);
            });
        }
    });
    let tallies = tallies.into_inner().unwrap();
    let mut report = String::new();
    let mut failing = 0;
    for (&k, t) in &tallies {
        if t.skipped > 0 {
            report += &format!("\n[{}] {} cases skipped after {MAX_ABORTS} aborted child processes\n", readers[k].name(), t.skipped);
        }
        let mut groups: BTreeMap<String, Vec<&Failure>> = BTreeMap::new();
        for f in &t.failures {
            groups.entry(group_key(f)).or_default().push(f);
        }
        for (key, fs) in groups {
            failing += fs.len();
            let f = fs[0];
            let cases: Vec<String> = fs.iter().take(8).map(|f| f.case.to_string()).collect();
            report += &format!(
                "\n[{}] {key}: {} case(s) ({}{})\n  first: {}\n  {}\n  replay: HOSTILE_READERS={} HOSTILE_ONLY={} cargo test --release --test hostile_inputs -- --nocapture\n  input:  {}\n",
                f.reader.name(),
                fs.len(),
                cases.join(", "),
                if fs.len() > 8 { ", …" } else { "" },
                f.message,
                if fs.iter().any(|f| !f.frames.is_empty()) { fs.iter().find(|f| !f.frames.is_empty()).unwrap().frames.clone() } else { String::new() },
                f.reader.name(),
                f.case,
                failures_dir(f.reader).join(format!("case-{}", f.case)).display()
            );
        }
    }
    let total: usize = tallies.values().map(|t| t.cases).sum();
    eprintln!("hostile: {total} cases over {} readers, {failing} failing", tallies.len());
    assert!(failing == 0, "{failing} hostile input(s) broke a reader:\n{report}");
}
