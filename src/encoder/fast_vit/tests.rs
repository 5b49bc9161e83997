//! Tests of the fast path's own choices: attention weights kept or computed again, and bf16's
//! weights packed once only when frozen.

use super::*;
use crate::encoder::{Encoder, LoadOptions};

/// Above the tape's bound on attention weights the reverse pass computes them again: the
/// pixels' and the weights' gradients are bit for bit those of a tape that kept them, in f32 and
/// in bf16 (where the CPU has it). By default f32 keeps them and bf16 computes them again.
#[test]
fn attention_weights_computed_again_give_the_same_gradients() {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoder/dinov2_official.pth");
    let enc = Encoder::load(&file, &LoadOptions { heads: Some(4), ..Default::default() }).unwrap();
    let (b, side) = (2, 2 * enc.config().patch_size);
    let pos = enc.vit.patch_positions(2, 2).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let pixels: Vec<f32> = (0..b * 3 * side * side).map(|i| ((i * 37 % 101) as f32) / 100.0).collect();
    let run = |fast: &FastVit, record| {
        let (out, _, tape) = fast.forward(&pixels, (b, side, side), &pos, record, Outputs::All).unwrap();
        let tape = tape.unwrap();
        let kept = tape.blocks.iter().all(|k| !k.p.is_empty());
        let d_out: Vec<f32> = (0..out.len()).map(|i| ((i * 13 % 29) as f32 - 14.0) / 10.0).collect();
        let dx = fast.backward(&tape, d_out.clone(), None);
        let named = if record == Record::ParamGradients { fast.param_gradients(&tape, d_out).named } else { vec![] };
        (kept, dx, named)
    };
    let mut precisions = vec![Precision::F32];
    if crate::encoder::bf16_gemm::supported() {
        precisions.push(Precision::Bf16);
    } else {
        eprintln!("bf16 skipped: this CPU has no AVX512-BF16");
    }
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
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/encoder/dinov2_official.pth");
    let mut enc = Encoder::load(&file, &LoadOptions { heads: Some(4), ..Default::default() }).unwrap();
    let every = |f: &FastVit, packed: bool| {
        f.pe.is_packed() == packed && f.blocks.iter().all(|b| [&b.qkv, &b.proj, &b.fc1, &b.fc2].iter().all(|l| l.is_packed() == packed))
    };
    assert!(every(&FastVit::new(&enc.vit, Precision::Bf16).unwrap(), true));
    assert!(every(&FastVit::new(&enc.vit, Precision::F32).unwrap(), false));
    let w = enc.vit.blocks[1].ffn.fc1.w_t.clone();
    enc.vit.blocks[1].ffn.fc1.w_t = candle_core::Var::from_tensor(&w).unwrap().as_tensor().clone();
    assert!(every(&FastVit::new(&enc.vit, Precision::Bf16).unwrap(), false));
}
