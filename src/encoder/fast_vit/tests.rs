//! Tests of the fast path's own choices: attention weights kept or computed again, bf16's
//! weights packed once only when frozen, and a batch split over groups of threads.

use super::*;
use crate::encoder::{Encoder, LoadOptions};

/// The tiny DINOv2 fixture (4 heads) and `b` images of 2×2 patches.
struct Fixture {
    enc: Encoder,
    side: usize,
    pos: Vec<f32>,
    pixels: Vec<f32>,
}

impl Fixture {
    fn of(b: usize) -> Self {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoder/dinov2_official.pth");
        let enc = Encoder::load(&file, &LoadOptions { heads: Some(4), ..Default::default() }).unwrap();
        let side = 2 * enc.config().patch_size;
        let pos = enc.vit.patch_positions(2, 2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let pixels = (0..b * 3 * side * side).map(|i| ((i * 37 % 101) as f32) / 100.0).collect();
        Fixture { enc, side, pos, pixels }
    }
}

/// f32, and bf16 where the CPU has it.
fn precisions() -> Vec<Precision> {
    let mut precisions = vec![Precision::F32];
    if crate::encoder::bf16_gemm::supported() {
        precisions.push(Precision::Bf16);
    } else {
        eprintln!("bf16 skipped: this CPU has no AVX512-BF16");
    }
    precisions
}

/// Above the tape's bound on attention weights the reverse pass computes them again: the
/// pixels' and the weights' gradients are bit for bit those of a tape that kept them, in f32 and
/// in bf16 (where the CPU has it). By default f32 keeps them and bf16 computes them again.
#[test]
fn attention_weights_computed_again_give_the_same_gradients() {
    let Fixture { enc, side, pos, pixels } = Fixture::of(2);
    let b = 2;
    let run = |fast: &FastVit, record| {
        let (out, _, tape) = fast.forward(&pixels, (b, side, side), &pos, record, Outputs::All).unwrap();
        let tape = tape.unwrap();
        let kept = tape.parts.iter().flat_map(|p| &p.blocks).all(|k| !k.p.is_empty());
        let d_out: Vec<f32> = (0..out.len()).map(|i| ((i * 13 % 29) as f32 - 14.0) / 10.0).collect();
        let dx = fast.backward(&tape, &d_out, None);
        let named = if record == Record::ParamGradients { fast.param_gradients(&tape, d_out).named } else { vec![] };
        (kept, dx, named)
    };
    let precisions = precisions();
    for precision in precisions {
        let mut fast = FastVit::new(&enc.vit, precision).unwrap();
        assert_eq!(run(&fast, Record::InputGradient).0, precision == Precision::F32, "{precision:?}'s default");
        for record in [Record::InputGradient, Record::ParamGradients] {
            fast.attention_tape_bytes = ATTENTION_TAPE_BYTES;
            let (kept, dx, named) = run(&fast, record);
            assert!(kept);
            fast.attention_tape_bytes = 0;
            let (again, dx_again, named_again) = run(&fast, record);
            assert!(!again, "a zero bound keeps no attention weights");
            assert!(dx.iter().any(|&g| g != 0.0));
            assert_eq!(dx, dx_again, "{precision:?} {record:?}");
            assert_eq!(named.len(), named_again.len());
            for ((n, g), (_, h)) in named.iter().zip(&named_again) {
                assert_eq!(g, h, "{precision:?} {n}");
            }
        }
    }
}

/// bf16 packs the weights once only where no optimizer can write them: with one trainable
/// weight anywhere, every layer packs its weight on each product again (and f32 never packs).
#[test]
fn weights_are_packed_once_only_when_frozen() {
    if !crate::encoder::bf16_gemm::supported() {
        eprintln!("skipped: this CPU has no AVX512-BF16");
        return;
    }
    let mut enc = Fixture::of(1).enc;
    let every = |f: &FastVit, packed: bool| {
        f.pe.is_packed() == packed && f.blocks.iter().all(|b| [&b.qkv, &b.proj, &b.fc1, &b.fc2].iter().all(|l| l.is_packed() == packed))
    };
    assert!(every(&FastVit::new(&enc.vit, Precision::Bf16).unwrap(), true));
    assert!(every(&FastVit::new(&enc.vit, Precision::F32).unwrap(), false));
    let w = enc.vit.blocks[1].ffn.fc1.w_t.clone();
    enc.vit.blocks[1].ffn.fc1.w_t = candle_core::Var::from_tensor(&w).unwrap().as_tensor().clone();
    assert!(every(&FastVit::new(&enc.vit, Precision::Bf16).unwrap(), false));
}

/// A batch split over groups of threads gives the whole batch's outputs and pixel gradients bit
/// for bit: one thread (no split), two threads (two groups of two images on one thread each),
/// eight threads (four groups of one image on two threads each, or two of two on four after a
/// CLS-only forward), in f32 and in bf16 (where the CPU has it), for every output and CLS-only forward.
#[test]
fn a_batch_split_over_groups_of_threads_gives_the_whole_batch_bits() {
    let Fixture { enc, side, pos, pixels } = Fixture::of(4);
    let b = 4;
    let precisions = precisions();
    for precision in precisions {
        let fast = FastVit::new(&enc.vit, precision).unwrap();
        for outputs in [Outputs::All, Outputs::ClsOnly] {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| {
                    let plain = fast.forward(&pixels, (b, side, side), &pos, Record::Nothing, outputs).unwrap();
                    let (out, pre, tape) = fast.forward(&pixels, (b, side, side), &pos, Record::InputGradient, outputs).unwrap();
                    let tape = tape.unwrap();
                    let t = out.len() / b;
                    let cls = |v: &[f32]| v.chunks(t).flat_map(|img| img[..fast.d].to_vec()).collect::<Vec<f32>>();
                    // Gradients on every row, or on the CLS rows alone after a CLS-only forward.
                    let d_out: Vec<f32> = (0..out.len())
                        .map(|i| if outputs == Outputs::All || i % t < fast.d { ((i * 13 % 29) as f32 - 14.0) / 10.0 } else { 0.0 })
                        .collect();
                    let d_pre: Vec<f32> = d_out.iter().map(|g| g * 0.5).collect();
                    let dx = fast.backward(&tape, &d_out, Some(&d_pre));
                    let read = |v: &[f32]| if outputs == Outputs::All { v.to_vec() } else { cls(v) };
                    (tape.parts.len(), read(&plain.0), read(&out), read(&pre), dx)
                })
            };
            let (parts, plain, out, pre, dx) = run(1);
            assert_eq!(parts, 1);
            assert!(dx.iter().any(|&g| g != 0.0) && out.iter().all(|v| v.is_finite()));
            assert_eq!(plain, out, "{precision:?} {outputs:?}: a forward without a tape");
            // A CLS-only forward keeps two images a group (its last products have a row an image).
            let most = if outputs == Outputs::All { 4 } else { 2 };
            for (threads, groups) in [(2, 2), (8, most)] {
                let (split, plain_s, out_s, pre_s, dx_s) = run(threads);
                assert_eq!(split, groups, "{threads} threads split a batch of {b} in {groups}");
                let what = format!("{precision:?} {outputs:?} on {threads} threads");
                assert!(plain_s == plain && out_s == out && pre_s == pre, "{what}: outputs");
                assert_eq!(dx_s, dx, "{what}: pixel gradients");
            }
        }
    }
}
