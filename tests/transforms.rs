//! Transforms: resizes against torch's F.interpolate (tools/gen_transform_fixtures.py), and the
//! crop/pad/shuffle/batch properties every loader relies on.

use std::path::Path;

use candle_core::{Device, Tensor};
use robust_ssl::data::transform::{load_batch, resize_image, resize_nearest, Transform};
use robust_ssl::data::{open, Sample, Split, Target, IGNORE};
use robust_ssl::resize::Filter;
use robust_ssl::rng::shuffled;

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn resizes_match_torch_interpolate() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transform/resize.expected.safetensors");
    let exp = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let image = &exp["image"];
    let labels: Vec<f32> = exp["labels"].flatten_all().unwrap().to_vec1().unwrap();
    for (h, w) in [(24, 30), (50, 70), (37, 20)] {
        for (mode, filter) in [("bilinear", Filter::Bilinear), ("bicubic", Filter::Bicubic)] {
            for aa in [false, true] {
                let name = format!("{mode}_{}_{h}x{w}", if aa { "aa" } else { "plain" });
                let got = resize_image(image, h, w, filter, aa).unwrap();
                let d = max_diff(&got, &exp[&name]);
                assert!(d < 1e-5, "{name}: differs from torch by {d}");
            }
        }
        let want: Vec<f32> = exp[&format!("nearest_{h}x{w}")].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(resize_nearest(&labels, (37, 53), (h, w)), want, "nearest {h}x{w}");
    }
}

fn seg_sample() -> Sample {
    let image = Tensor::arange(0f32, 3.0 * 5.0 * 7.0, &Device::Cpu).unwrap().reshape((3, 5, 7)).unwrap();
    Sample { image, target: Target::Segmentation { labels: (0..35).collect(), height: 5, width: 7 } }
}

#[test]
fn pad_and_crop_keep_image_and_target_aligned() {
    let s = Transform::PadToMultiple(4).apply(seg_sample()).unwrap();
    assert_eq!(s.image.dims(), &[3, 8, 8]);
    let Target::Segmentation { labels, height, width } = &s.target else { panic!() };
    assert_eq!((*height, *width), (8, 8));
    assert_eq!(labels[8 + 6], 7 + 6, "original pixel (1, 6) kept in place");
    assert_eq!(labels[7], IGNORE, "padding is ignored, not a class");
    assert_eq!(labels[5 * 8], IGNORE);
    let img = s.image.to_vec3::<f32>().unwrap();
    assert_eq!(img[0][1][6], 13.0);
    assert_eq!(img[2][7][7], 0.0);

    let c = Transform::CenterCrop(3, 3).apply(seg_sample()).unwrap();
    let Target::Segmentation { labels, .. } = &c.target else { panic!() };
    // Rows 1..4, columns 2..5 of the 5x7 map.
    assert_eq!(labels, &vec![9, 10, 11, 16, 17, 18, 23, 24, 25]);
    assert_eq!(c.image.to_vec3::<f32>().unwrap()[0][0], vec![9.0, 10.0, 11.0]);
    assert!(Transform::CenterCrop(6, 3).apply(seg_sample()).is_err());

    let d = Sample {
        image: Tensor::zeros((3, 2, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
        target: Target::Depth { metres: vec![1.0; 6], height: 2, width: 3 },
    };
    let d = Transform::PadToMultiple(4).apply(d).unwrap();
    let Target::Depth { metres, .. } = d.target else { panic!() };
    assert_eq!(metres.iter().filter(|&&m| m == 0.0).count(), 16 - 6, "padded depth is invalid (0)");
}

#[test]
fn resize_short_side_keeps_aspect_and_nearest_labels() {
    let s = Transform::ResizeShort(10).apply(seg_sample()).unwrap();
    assert_eq!(s.image.dims(), &[3, 10, 14]);
    let Target::Segmentation { labels, height, width } = s.target else { panic!() };
    assert_eq!((height, width), (10, 14));
    assert!(labels.iter().all(|l| *l < 35), "nearest never invents a label");
}

#[test]
fn shuffling_is_seeded_and_a_permutation() {
    const PINNED: [usize; 10] = [8, 1, 5, 9, 0, 4, 3, 2, 6, 7];
    let a = shuffled(1000, 42);
    assert_eq!(a, shuffled(1000, 42));
    assert_ne!(a, shuffled(1000, 43));
    let mut sorted = a.clone();
    sorted.sort();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    // Pinned: the same order on every machine and every future version.
    assert_eq!(shuffled(10, 7), PINNED);
}

#[test]
fn parallel_batches_come_back_in_order_and_transformed() {
    let ds = open("synthetic-seg:6x40", Split::Train).unwrap();
    let order = [4, 0, 2];
    let batch = load_batch(ds.as_ref(), &order, &[Transform::Resize(28, 28)]).unwrap();
    for (s, &i) in batch.iter().zip(&order) {
        let direct = Transform::Resize(28, 28).apply(ds.get(i).unwrap()).unwrap();
        assert_eq!(max_diff(&s.image, &direct.image), 0.0);
        assert_eq!(s.image.dims(), &[3, 28, 28]);
    }
}

/// Transform lists parse from the names they describe themselves by (the syntax of --transforms
/// and of head files), and anything else is refused with the accepted forms.
#[test]
fn transform_names_round_trip() {
    use robust_ssl::data::transform::Transform;
    let list = [Transform::ResizeShort(224), Transform::Resize(30, 40), Transform::CenterCrop(28, 14), Transform::PadToMultiple(14)];
    let names: Vec<String> = list.iter().map(Transform::describe).collect();
    assert_eq!(names.join(","), "resize-short224,resize30x40,crop28x14,pad14");
    assert_eq!(Transform::parse_list(&names.join(", ")).unwrap(), list);
    assert!(Transform::parse_list("").unwrap().is_empty());
    for bad in ["resize224", "crop0x4", "pad", "flip", "resize-short-3"] {
        let err = Transform::parse_list(bad).unwrap_err().to_string();
        assert!(err.contains(bad) && err.contains("resize-shortN"), "{bad}: {err}");
    }
}

/// Every random augmentation keeps image and target aligned (channel 0 of the sample holds each
/// pixel's own label), draws every outcome it should, repeats its draws for the same seed, and
/// is refused where no training seed is given.
#[test]
fn augmentations_keep_image_and_target_aligned() {
    use robust_ssl::data::augment::apply_seeded;
    use robust_ssl::rng::SplitMix64;
    let aligned = |s: &Sample, h: usize, w: usize| {
        let Target::Segmentation { labels, height, width } = &s.target else { panic!() };
        assert_eq!((*height, *width, s.image.dim(1).unwrap(), s.image.dim(2).unwrap()), (h, w, h, w));
        let ch0: Vec<f32> = s.image.get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        for (l, v) in labels.iter().zip(&ch0) {
            if *l == IGNORE {
                assert_eq!(*v, 0.0, "padding must be zero where the label is ignored");
            } else {
                assert_eq!(*v, *l as f32, "image and label moved apart");
            }
        }
        labels.clone()
    };
    let mut outcomes = std::collections::BTreeSet::new();
    for seed in 0..64 {
        for t in [Transform::RandomCrop(3, 4), Transform::PadRandomCrop(2), Transform::HFlip, Transform::Flips] {
            let s = apply_seeded(&t, seg_sample(), &mut SplitMix64::new(seed)).unwrap();
            let (h, w) = if t == Transform::RandomCrop(3, 4) { (3, 4) } else { (5, 7) };
            let labels = aligned(&s, h, w);
            let again = apply_seeded(&t, seg_sample(), &mut SplitMix64::new(seed)).unwrap();
            assert_eq!(aligned(&again, h, w), labels, "the same seed must draw the same");
            outcomes.insert((t.describe(), labels[0], labels[w - 1]));
        }
    }
    // Flips: identity (0 at the top-left), horizontal (6), vertical (28), both (34).
    let corners = |name: &str| outcomes.iter().filter(|(n, _, _)| n == name).map(|(_, a, _)| *a).collect::<Vec<_>>();
    assert_eq!(corners("hflip"), vec![0, 6]);
    assert_eq!(corners("flips"), vec![0, 6, 28, 34]);
    // Random 3x4 windows of a 5x7 image: every top-left corner 0..=2 × 0..=3 is drawn.
    assert_eq!(corners("random-crop3x4").len(), 12);
    // Padding 2 on each side: offsets 0..=4 on both axes (25 placements), some reaching padding.
    assert!(corners("pad-random-crop2").contains(&IGNORE) && corners("pad-random-crop2").contains(&0));
    assert!(format!("{:#}", Transform::HFlip.apply(seg_sample()).err().unwrap()).contains("training seed"));
    assert_eq!(
        Transform::parse_list("pad-random-crop4,hflip,flips,random-crop8x9").unwrap(),
        vec![Transform::PadRandomCrop(4), Transform::HFlip, Transform::Flips, Transform::RandomCrop(8, 9)]
    );
}

/// Two transform lists give the same pixels when they differ only in paddings that add nothing:
/// a 224² crop padded to 14 or to 16 px is one image; 28² padded to 8 px is 32², not 28².
#[test]
fn same_pixels_up_to_paddings_that_add_nothing() {
    use robust_ssl::data::transform::Transform::*;
    use robust_ssl::data::transform::{default_transforms, same_pixels};
    assert!(same_pixels(&default_transforms(224, 14), &default_transforms(224, 16)));
    assert!(!same_pixels(&default_transforms(28, 14), &default_transforms(28, 8)));
    assert!(!same_pixels(&default_transforms(224, 14), &default_transforms(518, 14)));
    assert!(same_pixels(&[Resize(480, 640), PadToMultiple(16)], &[Resize(480, 640), PadToMultiple(8)]));
    assert!(!same_pixels(&[Resize(480, 640), PadToMultiple(14)], &[Resize(480, 640), PadToMultiple(16)]));
    // After a shorter-side resize alone the size is unknown: only identical lists agree.
    assert!(same_pixels(&[ResizeShort(100), PadToMultiple(14)], &[ResizeShort(100), PadToMultiple(14)]));
    assert!(!same_pixels(&[ResizeShort(100), PadToMultiple(14)], &[ResizeShort(100), PadToMultiple(16)]));
}
