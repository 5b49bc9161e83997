//! `robust-ssl eval`: scores a trained head on a split (accuracy; mIoU; depth RMSE, AbsRel, …)
//! beside its trivial baseline, as text or `--json`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;

use super::features::FeatureArgs;
use robust_ssl::data::transform::resizes;
use robust_ssl::data::Split;
use robust_ssl::features::cache::CacheReport;
use robust_ssl::features::Source;
use robust_ssl::heads::evaluate::{evaluate, evaluate_sliding, Evaluation, Metrics};
use robust_ssl::heads::head::{Baseline, Task, TrainedHead};
use robust_ssl::heads::sliding::Window;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[arg(long, value_parser = super::choice::<Task>())]
    pub task: Task,
    #[command(flatten)]
    pub features: FeatureArgs,
    /// Head file written by `train-head`.
    #[arg(long)]
    pub head: PathBuf,
    /// Samples per head forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Dense heads: whole images, through sliding windows CROP:STRIDE in pixels (the reference
    /// evaluations: 518:341 for DINOv2, 224:100 for DINO) or `whole` (one window, centre-padded to
    /// the patch multiple: the study's depth), scored at each label's own size. Images get the
    /// head's resizes only (or --transforms); features are computed, not cached.
    #[arg(long = "window", alias = "sliding-window", conflicts_with = "pixels")]
    pub window: Option<Window>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    head: String,
    task: Task,
    dataset: String,
    transforms: Vec<String>,
    /// How the outputs were computed and where they were scored.
    protocol: String,
    #[serde(flatten)]
    evaluation: Evaluation,
    cache: Option<CacheReport>,
}

pub fn run(a: &EvalArgs) -> Result<()> {
    let f = &a.features;
    let dev = robust_ssl::device::default_device()?;
    let file = a.head.display().to_string();
    let head = TrainedHead::load_for(&a.head, a.task, &dev)?;
    let meta = &head.meta;
    let pixels_head = meta.source == serde_json::json!("pixels");
    if pixels_head != f.pixels {
        bail!(
            "{file}: the head was trained on {}, but this run gives {}",
            if pixels_head { "raw pixels (--pixels)" } else { "encoder features" },
            if f.pixels { "raw pixels" } else { "encoder features" }
        );
    }
    let mut prep = f.prepare(&[Split::Val, Split::Test], a.task, meta.layout(), Some(&meta.transforms))?;
    let window = f.window(a.window, a.task, prep.encoder.as_ref(), &meta.transforms);
    if window.is_some() && f.transforms.is_none() {
        // Windows see whole images: of the head's transforms, only the resizes apply.
        prep.request.transforms = resizes(&prep.request.transforms);
    }
    if let Source::Encoder(enc) = prep.source() {
        let fp = enc.fingerprint()?;
        if fp != meta.source {
            eprintln!(
                "warning: {file} was trained on features of another encoder ({}); evaluating it on {} anyway",
                meta.encoder_file.as_deref().unwrap_or("unknown"),
                enc.info.file
            );
        }
    }
    let (evaluation, cache, protocol) = match (window, &prep.encoder) {
        (Some(window), Some(enc)) => {
            let e = evaluate_sliding(
                &head,
                enc,
                prep.dataset.as_ref(),
                &prep.request.indices,
                &prep.request.transforms,
                window,
                f.encoder_batch_size,
                &file,
            )?;
            (e, None, format!("{}, scored at label resolution", window.describe()))
        }
        (Some(_), None) => bail!("--window needs an encoder (--checkpoint)"),
        (None, _) => {
            let (mut source, cache) = prep.batches(f)?;
            let e = evaluate(&head, source.as_mut(), a.batch_size, &dev, &file)?;
            (e, cache, "one pass per transformed image, scored at the transformed size".to_string())
        }
    };
    let report = Report {
        head: file,
        task: a.task,
        dataset: prep.dataset.describe(),
        transforms: prep.request.transform_names(),
        protocol: format!("{} protocol: {protocol}", f.protocol),
        evaluation,
        cache,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

pub fn baseline_name(b: &Baseline) -> String {
    match b {
        Baseline::MajorityClass(c) => format!("always class {c}, the training majority"),
        Baseline::MeanDepth(d) => format!("always {d:.3} m, the training mean"),
        Baseline::Unknown => "not known: the head file carries no training statistics (a published head)".into(),
    }
}

/// The headline figures of `m` on one line.
pub fn one_line(m: &Metrics) -> String {
    match m {
        Metrics::Cls { accuracy, correct, total } => format!("accuracy {:.2}% ({correct}/{total})", 100.0 * accuracy),
        Metrics::Seg { miou, pixel_accuracy, .. } => format!("mIoU {:.2}%, pixel accuracy {:.2}%", 100.0 * miou, 100.0 * pixel_accuracy),
        Metrics::Depth { errors: e, .. } => format!("RMSE {:.4} m, AbsRel {:.4}, δ1 {:.2}%", e.rmse, e.abs_rel, 100.0 * e.delta1),
    }
}

fn print_report(r: &Report) {
    let e = &r.evaluation;
    println!("{} head {} on {} ({} samples; {})", r.task, r.head, r.dataset, e.samples, r.transforms.join(","));
    println!("  {}", r.protocol);
    match (&e.head, &e.baseline) {
        (Metrics::Depth { errors: h, images, images_without_valid_pixels, .. }, Metrics::Depth { errors: b, .. }) => {
            println!("  {:<10} {:>10} {:>10}", "metric", "head", "baseline");
            let rows = [
                ("RMSE", h.rmse, b.rmse),
                ("AbsRel", h.abs_rel, b.abs_rel),
                ("SqRel", h.sq_rel, b.sq_rel),
                ("RMSE-log", h.rmse_log, b.rmse_log),
                ("log10", h.log10, b.log10),
                ("δ<1.25", h.delta1, b.delta1),
                ("δ<1.25²", h.delta2, b.delta2),
                ("δ<1.25³", h.delta3, b.delta3),
            ];
            for (name, x, y) in rows {
                println!("  {name:<10} {x:>10.4} {y:>10.4}");
            }
            println!("  per image, then averaged over {images} image(s); {images_without_valid_pixels} without a valid pixel skipped");
        }
        (head, base) => {
            println!("  head:     {}", one_line(head));
            println!("  baseline: {}", one_line(base));
            if let Metrics::Seg { iou_per_class, .. } = head {
                let shown: Vec<String> = iou_per_class
                    .iter()
                    .enumerate()
                    .map(|(c, v)| match v {
                        Some(v) => format!("{c}:{:.1}", 100.0 * v),
                        None => format!("{c}:-"),
                    })
                    .collect();
                println!("  IoU per class (%): {}", shown.join(" "));
            }
        }
    }
    println!("  baseline: {}", baseline_name(&e.baseline_kind));
}
