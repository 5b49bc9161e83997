//! Dataset readers on small files in the exact native formats (tools/gen_data_fixtures.py, which
//! decodes them with the official loaders' numpy semantics), their errors on bad files, and the
//! real Fashion-MNIST that Debian's dataset-fashion-mnist ships (installed by scripts/fetch-assets.sh).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use robust_ssl::data::{open, Dataset, Split, Target};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data")
}

fn spec(kind: &str, dir: &str) -> String {
    format!("{kind}:{}", fixtures().join(dir).display())
}

fn check_against_reference(ds: &dyn Dataset, expected: &str) {
    let exp = candle_core::safetensors::load(fixtures().join(format!("{expected}.expected.safetensors")), &Device::Cpu).unwrap();
    let labels = exp["labels"].to_vec1::<i64>().unwrap();
    assert_eq!(ds.len(), labels.len(), "{expected}: number of samples");
    for (i, &label) in labels.iter().enumerate() {
        let s = ds.get(i).unwrap();
        let want = exp["images"].get(i).unwrap();
        assert_eq!(s.image.dims(), want.dims(), "{expected}[{i}]");
        let diff = (&s.image - &want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "{expected}[{i}]: pixels differ from the reference decoding");
        let want_target = if label < 0 { Target::None } else { Target::Class(label as u32) };
        assert_eq!(s.target, want_target, "{expected}[{i}]");
    }
    assert!(ds.get(ds.len()).is_err(), "reading past the end must fail");
}

#[test]
fn every_reader_matches_the_reference_decoding() {
    let cases = [
        ("cifar10", "cifar-10-batches-bin", Split::Train, "cifar10_train"),
        ("cifar10", "cifar-10-batches-bin", Split::Test, "cifar10_test"),
        ("cifar100", "cifar-100-binary", Split::Train, "cifar100_train"),
        ("cifar100", "cifar-100-binary", Split::Test, "cifar100_test"),
        ("stl10", "stl10_binary", Split::Train, "stl10_train"),
        ("stl10", "stl10_binary", Split::Test, "stl10_test"),
        ("stl10", "stl10_binary", Split::Unlabeled, "stl10_unlabeled"),
        ("mnist", "mnist", Split::Train, "mnist_train"),
        ("mnist", "mnist", Split::Test, "mnist_test"),
        ("fashion-mnist", "fashion-mnist-gz", Split::Train, "fashion-mnist_train"),
        ("fashion-mnist", "fashion-mnist-gz", Split::Test, "fashion-mnist_test"),
        ("imagefolder", "imagefolder", Split::Train, "imagefolder_train"),
        ("imagefolder", "imagefolder", Split::Val, "imagefolder_val"),
    ];
    for (kind, dir, split, expected) in cases {
        let ds = open(&spec(kind, dir), split).unwrap_or_else(|e| panic!("{expected}: {e:#}"));
        check_against_reference(ds.as_ref(), expected);
    }
}

/// Segmentation samples: labels exactly as the reference maps them; images exactly for PNG and
/// within 4/255 for JPEG (PIL and our decoder may round the IDCT differently).
#[test]
fn segmentation_readers_match_the_reference() {
    let cases = [
        ("voc2012", "VOCdevkit/VOC2012", Split::Train, "voc2012_train", 4.0 / 255.0),
        ("voc2012", "VOCdevkit/VOC2012", Split::Val, "voc2012_val", 4.0 / 255.0),
        ("ade20k", "ADEChallengeData2016", Split::Train, "ade20k_train", 4.0 / 255.0),
        ("ade20k", "ADEChallengeData2016", Split::Val, "ade20k_val", 4.0 / 255.0),
        ("cityscapes", "cityscapes", Split::Train, "cityscapes_train", 0.0),
        ("cityscapes", "cityscapes", Split::Val, "cityscapes_val", 0.0),
    ];
    for (kind, dir, split, name, tol) in cases {
        let ds = open(&spec(kind, dir), split).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let exp = candle_core::safetensors::load(fixtures().join(format!("{name}.expected.safetensors")), &Device::Cpu).unwrap();
        assert_eq!(ds.len(), exp.len() / 2, "{name}: number of samples");
        let mut ignored = 0;
        for i in 0..ds.len() {
            let s = ds.get(i).unwrap();
            let want = &exp[&format!("image_{i}")];
            let diff = (&s.image - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(diff <= tol + 1e-6, "{name}[{i}]: image differs by {diff}");
            let want_labels: Vec<u32> =
                exp[&format!("labels_{i}")].flatten_all().unwrap().to_vec1::<i64>().unwrap().iter().map(|&v| v as u32).collect();
            let Target::Segmentation { labels, height, width } = s.target else { panic!("{name}: not a segmentation target") };
            assert_eq!((height, width), (want.dim(1).unwrap(), want.dim(2).unwrap()));
            assert_eq!(labels, want_labels, "{name}[{i}]: labels");
            ignored += labels.iter().filter(|&&l| l == 255).count();
        }
        assert!(ignored > 0, "{name}: the fixture should exercise the ignore index");
        assert_eq!(
            ds.num_classes(),
            Some(match kind {
                "voc2012" => 21,
                "ade20k" => 150,
                _ => 19,
            })
        );
    }
}

#[test]
fn bad_segmentation_files_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let copy = |from: &Path, to: &Path| {
        for e in walk(from) {
            let rel = e.strip_prefix(from).unwrap();
            std::fs::create_dir_all(to.join(rel).parent().unwrap()).unwrap();
            std::fs::copy(&e, to.join(rel)).unwrap();
        }
    };
    let voc = tmp.path().join("VOC2012");
    copy(&fixtures().join("VOCdevkit/VOC2012"), &voc);
    // A label map whose size differs from its image.
    let label = voc.join("SegmentationClass/2007_000033.png");
    let other = voc.join("SegmentationClass/2007_000039.png");
    std::fs::copy(&other, &label).unwrap();
    let ds = open(&format!("voc2012:{}", voc.display()), Split::Val).unwrap();
    let err = format!("{:#}", ds.get(0).err().unwrap());
    assert!(err.contains("2007_000033.png") && err.contains("label map is 24x28 but its image"), "{err}");
    // A corrupt label map.
    std::fs::write(&label, b"\x89PNG\r\n\x1a\nnope").unwrap();
    let err = format!("{:#}", ds.get(0).err().unwrap());
    assert!(err.contains("2007_000033.png"), "{err}");
    // A listed image that does not exist, and an empty list.
    std::fs::remove_file(voc.join("JPEGImages/2007_000039.jpg")).unwrap();
    let err = format!("{:#}", open(&format!("voc2012:{}", voc.display()), Split::Train).err().unwrap());
    assert!(err.contains("2007_000039.jpg") && err.contains("missing"), "{err}");
    std::fs::write(voc.join("ImageSets/Segmentation/val.txt"), "\n").unwrap();
    let err = format!("{:#}", open(&format!("voc2012:{}", voc.display()), Split::Val).err().unwrap());
    assert!(err.contains("val.txt") && err.contains("empty"), "{err}");

    // ADE20k: a value above 150, and a missing annotation.
    let ade = tmp.path().join("ADE");
    copy(&fixtures().join("ADEChallengeData2016"), &ade);
    let ann = walk(&ade.join("annotations/validation")).remove(0);
    let img = image::GrayImage::from_pixel(16, 24, image::Luma([200u8]));
    img.save(&ann).unwrap();
    let ds = open(&format!("ade20k:{}", ade.display()), Split::Val).unwrap();
    let err = format!("{:#}", ds.get(0).err().unwrap());
    assert!(err.contains("label value 200 is not a class"), "{err}");
    std::fs::remove_file(&ann).unwrap();
    let err = format!("{:#}", open(&format!("ade20k:{}", ade.display()), Split::Val).err().unwrap());
    assert!(err.contains("annotation of") && err.contains("missing"), "{err}");

    // Cityscapes: a missing gtFine file.
    let cs = tmp.path().join("cs");
    copy(&fixtures().join("cityscapes"), &cs);
    std::fs::remove_file(cs.join("gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png")).unwrap();
    let err = format!("{:#}", open(&format!("cityscapes:{}", cs.display()), Split::Val).err().unwrap());
    assert!(err.contains("frankfurt_000000_000019_gtFine_labelIds.png") && err.contains("missing"), "{err}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Copies a fixture folder into a temporary one so a test can damage it.
fn scratch(dir: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join(dir);
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(fixtures().join(dir)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    (tmp, dst)
}

fn open_err(kind: &str, dir: &Path, split: Split) -> String {
    match open(&format!("{kind}:{}", dir.display()), split) {
        Ok(_) => panic!("{kind} at {} should be refused", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn damaged_files_are_refused_naming_the_file() {
    // Truncated CIFAR batch.
    let (_t, d) = scratch("cifar-10-batches-bin");
    let f = d.join("data_batch_3.bin");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let err = open_err("cifar10", &d, Split::Train);
    assert!(err.contains("data_batch_3.bin") && err.contains("truncated"), "{err}");
    std::fs::write(&f, &bytes).unwrap();
    // A label out of range.
    let mut bytes = std::fs::read(d.join("test_batch.bin")).unwrap();
    bytes[3073] = 12;
    std::fs::write(d.join("test_batch.bin"), &bytes).unwrap();
    let err = open_err("cifar10", &d, Split::Test);
    assert!(err.contains("test_batch.bin") && err.contains("record 1 has label 12"), "{err}");
    // A missing batch.
    std::fs::remove_file(d.join("data_batch_5.bin")).unwrap();
    let err = open_err("cifar10", &d, Split::Train);
    assert!(err.contains("data_batch_5.bin") && err.contains("cannot open"), "{err}");

    // STL-10: one label too few.
    let (_t, d) = scratch("stl10_binary");
    let y = std::fs::read(d.join("train_y.bin")).unwrap();
    std::fs::write(d.join("train_y.bin"), &y[..1]).unwrap();
    let err = open_err("stl10", &d, Split::Train);
    assert!(err.contains("train_y.bin") && err.contains("1 labels for 2 images"), "{err}");
    std::fs::write(d.join("test_y.bin"), [11u8]).unwrap();
    let err = open_err("stl10", &d, Split::Test);
    assert!(err.contains("test_y.bin") && err.contains("outside 1..=10"), "{err}");

    // IDX: truncated gzip, wrong magic, truncated payload.
    let (_t, d) = scratch("fashion-mnist-gz");
    let f = d.join("t10k-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let err = open_err("fashion-mnist", &d, Split::Test);
    assert!(err.contains("t10k-images-idx3-ubyte.gz") && err.contains("gzip"), "{err}");
    let (_t, d) = scratch("mnist");
    let f = d.join("train-labels-idx1-ubyte");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[3] = 0x03;
    std::fs::write(&f, &bytes).unwrap();
    let err = open_err("mnist", &d, Split::Train);
    assert!(err.contains("train-labels-idx1-ubyte") && err.contains("magic"), "{err}");
    let f = d.join("t10k-images-idx3-ubyte");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 5]).unwrap();
    let err = open_err("mnist", &d, Split::Test);
    assert!(err.contains("t10k-images-idx3-ubyte") && err.contains("truncated"), "{err}");
}

#[test]
fn bad_specs_and_splits_are_refused() {
    let msg = |s: &str, split| match open(s, split) {
        Ok(_) => panic!("{s} should be refused"),
        Err(e) => format!("{e:#}"),
    };
    assert!(msg("cifar10", Split::Train).contains("KIND:PATH"));
    assert!(msg("imagenet:/tmp", Split::Train).contains("unknown dataset kind 'imagenet'"));
    assert!(msg("cifar10:/nonexistent/cifar", Split::Train).contains("/nonexistent/cifar: no such file"));
    let e = msg(&spec("cifar10", "cifar-10-batches-bin"), Split::Val);
    assert!(e.contains("cifar10 has no val split") && e.contains("train, test"), "{e}");
    assert!(msg(&spec("stl10", "stl10_binary"), Split::Val).contains("unlabeled"));
}

/// The real Fashion-MNIST: 60 000 / 10 000 images of 28x28, 6 000 / 1 000 per class.
#[test]
fn real_fashion_mnist_from_debian() {
    let root = Path::new("/usr/share/datasets/fashion-mnist");
    assert!(root.is_dir(), "{} is missing: run `bash scripts/fetch-assets.sh` (installs dataset-fashion-mnist)", root.display());
    for (split, n) in [(Split::Train, 60_000usize), (Split::Test, 10_000)] {
        let ds = open(&format!("fashion-mnist:{}", root.display()), split).unwrap();
        assert_eq!(ds.len(), n);
        let mut per_class = [0usize; 10];
        for i in (0..n).step_by(1) {
            if let Target::Class(c) = ds.get(i).unwrap().target {
                per_class[c as usize] += 1;
            }
        }
        assert_eq!(per_class, [n / 10; 10], "{split}");
        let img = ds.get(0).unwrap().image;
        assert_eq!(img.dims(), &[3, 28, 28]);
        let mean = img.mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(mean > 0.05 && mean < 0.95, "a real image has content ({mean})");
    }
}

/// NYU folder layout: depth in metres exactly as the 16-bit millimetre PNG says; errors for a
/// missing listed file and an 8-bit "depth" map.
#[test]
fn nyu_folder_layout() {
    for (split, name) in [(Split::Train, "nyu_train"), (Split::Test, "nyu_test")] {
        let ds = open(&spec("nyu", "nyu"), split).unwrap();
        let exp = candle_core::safetensors::load(fixtures().join(format!("{name}.expected.safetensors")), &Device::Cpu).unwrap();
        assert_eq!(ds.len(), exp.len() / 2);
        for i in 0..ds.len() {
            let s = ds.get(i).unwrap();
            let diff = (&s.image - &exp[&format!("image_{i}")])
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff <= 4.0 / 255.0 + 1e-6, "{name}[{i}]: image differs by {diff}");
            let Target::Depth { metres, height, width } = s.target else { panic!("not a depth target") };
            assert_eq!((height, width), (12, 16));
            assert_eq!(metres, exp[&format!("depth_{i}")].flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{name}[{i}]");
            assert_eq!(metres[0], 0.0, "unmeasured pixel stays 0");
        }
        assert_eq!(ds.num_classes(), None);
    }
    let empty = tempfile::tempdir().unwrap();
    let err = open_err("nyu", empty.path(), Split::Train);
    assert!(err.contains("no split list"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("a")).unwrap();
    image::RgbImage::new(4, 3).save(root.join("a/rgb.png")).unwrap();
    image::GrayImage::new(4, 3).save(root.join("a/depth.png")).unwrap();
    std::fs::write(root.join("test.txt"), "a/rgb.png a/depth.png\na/rgb.png a/gone.png\n").unwrap();
    let err = open_err("nyu", root, Split::Test);
    assert!(err.contains("gone.png") && err.contains("line 2"), "{err}");
    std::fs::write(root.join("test.txt"), "a/rgb.png a/depth.png\n").unwrap();
    let ds = open(&format!("nyu:{}", root.display()), Split::Test).unwrap();
    let err = format!("{:#}", ds.get(0).err().unwrap());
    assert!(err.contains("depth.png") && err.contains("16-bit"), "{err}");
}

/// Every frame of `dir/nyu_depth_v2_labeled.mat` for both official splits, against what h5py read.
fn check_labeled_mat(dir: &str, dims: (usize, usize), counts: [usize; 2]) {
    let file = fixtures().join(dir).join("nyu_depth_v2_labeled.mat");
    for (split, name, n) in [(Split::Train, format!("{dir}_train"), counts[0]), (Split::Test, format!("{dir}_test"), counts[1])] {
        let ds = open(&format!("nyu:{}", file.display()), split).unwrap();
        let exp = candle_core::safetensors::load(fixtures().join(format!("{name}.expected.safetensors")), &Device::Cpu).unwrap();
        assert_eq!(ds.len(), n);
        for i in 0..n {
            let s = ds.get(i).unwrap();
            let want = &exp[&format!("image_{i}")];
            assert_eq!(s.image.dims(), [3, dims.0, dims.1]);
            assert_eq!(
                s.image.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                want.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                "{name}[{i}]"
            );
            let Target::Depth { metres, height, width } = s.target else { panic!("not a depth target") };
            assert_eq!((height, width), dims);
            assert_eq!(metres, exp[&format!("depth_{i}")].flatten_all().unwrap().to_vec1::<f32>().unwrap(), "{name}[{i}]");
        }
    }
}

/// NYU's official labeled `.mat` (HDF5 after a MATLAB user block, dimensions reversed) with
/// `splits.mat`, read without libhdf5: images and depths exactly as h5py + `transpose(2, 1, 0)` /
/// `.T` read them, the 1-based official split, for deflated chunks with float32 depths and for
/// contiguous arrays with float64 depths; errors for a missing split file, a truncated file, a
/// damaged float type and a split index past the end.
#[test]
fn nyu_labeled_mat() {
    check_labeled_mat("nyu_mat", (12, 16), [3, 2]);
    check_labeled_mat("nyu_mat_contiguous", (14, 10), [2, 1]);
    let file = fixtures().join("nyu_mat/nyu_depth_v2_labeled.mat");
    assert!(open(&format!("nyu:{}", file.display()), Split::Val).is_err(), "the official split has no val");

    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("nyu_depth_v2_labeled.mat");
    std::fs::copy(&file, &copy).unwrap();
    let err = format!("{:#}", open(&format!("nyu:{}", copy.display()), Split::Train).err().unwrap());
    assert!(err.contains("splits.mat"), "{err}");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&copy, &bytes[..bytes.len() / 3]).unwrap();
    std::fs::copy(fixtures().join("nyu_mat/splits.mat"), tmp.path().join("splits.mat")).unwrap();
    let err = format!("{:#}", open(&format!("nyu:{}", copy.display()), Split::Train).err().unwrap());
    assert!(err.contains("nyu_depth_v2_labeled.mat"), "{err}");
    // The depths' float32 type with its exponent bias changed (127 → 126): every value would
    // read as twice itself.
    let mut damaged = bytes.clone();
    let f32_type = [0x11, 0x20, 0x1f, 0, 4, 0, 0, 0, 0, 0, 32, 0, 23, 8, 0, 23, 127, 0, 0, 0];
    let at = damaged.windows(f32_type.len()).position(|w| w == f32_type).expect("the depths' float32 type message");
    damaged[at + 16] = 126;
    std::fs::write(&copy, &damaged).unwrap();
    let err = format!("{:#}", open(&format!("nyu:{}", copy.display()), Split::Train).err().unwrap());
    assert!(err.contains("nyu_depth_v2_labeled.mat") && err.contains("'depths'") && err.contains("damaged"), "{err}");
    // A split index past the 5 frames.
    let mut splits = std::fs::read(fixtures().join("nyu_mat/splits.mat")).unwrap();
    let five = 5f64.to_le_bytes();
    let at = splits.windows(8).rposition(|w| w == five).expect("the index 5 is stored as a double");
    splits[at..at + 8].copy_from_slice(&9f64.to_le_bytes());
    std::fs::copy(&file, &copy).unwrap();
    std::fs::write(tmp.path().join("splits.mat"), splits).unwrap();
    let err = format!("{:#}", open(&format!("nyu:{}", copy.display()), Split::Test).err().unwrap());
    assert!(err.contains("splits.mat") && err.contains('9'), "{err}");
}

/// IDX headers a file can lie with: dimensions whose product overflows, and 0×0 images — each
/// an error naming the file, never a panic.
#[test]
fn hostile_idx_headers_are_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let idx = |magic: u32, dims: &[u32], payload: usize| -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        dims.iter().for_each(|d| v.extend(d.to_be_bytes()));
        v.extend(vec![0u8; payload]);
        v
    };
    let labels = idx(0x0801, &[2], 2);
    for (name, images, needle) in [
        ("overflow", idx(0x0803, &[u32::MAX, u32::MAX, u32::MAX], 16), "no file can hold"),
        ("empty", idx(0x0803, &[2, 0, 0], 0), "images of 0x0 pixels"),
    ] {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("train-images-idx3-ubyte"), &images).unwrap();
        std::fs::write(dir.join("train-labels-idx1-ubyte"), &labels).unwrap();
        let err = format!("{:#}", open(&format!("mnist:{}", dir.display()), Split::Train).err().unwrap());
        assert!(err.contains("train-images-idx3-ubyte") && err.contains(needle), "{name}: {err}");
    }
    // A small gzip file whose header claims 1.6 GB: refused before anything is inflated or
    // allocated (before: inflated whole, then checked).
    use std::io::Write;
    let dir = tmp.path().join("bomb");
    std::fs::create_dir_all(&dir).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&idx(0x0803, &[1, 40_000, 40_000], 1 << 20)).unwrap();
    std::fs::write(dir.join("train-images-idx3-ubyte.gz"), gz.finish().unwrap()).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), idx(0x0801, &[1], 1)).unwrap();
    let err = format!("{:#}", open(&format!("mnist:{}", dir.display()), Split::Train).err().unwrap());
    assert!(err.contains("train-images-idx3-ubyte.gz") && err.contains("more than this"), "{err}");
}

/// A PNG whose header (IHDR) declares `w`x`h` pixels of `color` type at `depth` bits, with a
/// tiny, valid-CRC body: what a hostile label map or photo looks like.
fn lying_png(w: u32, h: u32, depth: u8, color: u8) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        [(data.len() as u32).to_be_bytes().as_slice(), kind, data, &crc.sum().to_be_bytes()].concat()
    };
    let ihdr = [w.to_be_bytes().as_slice(), &h.to_be_bytes(), &[depth, color, 0, 0, 0]].concat();
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut z, &[0u8; 4096]).unwrap();
    let idat = z.finish().unwrap();
    [b"\x89PNG\r\n\x1a\n".as_slice(), &chunk(b"IHDR", &ihdr), &chunk(b"IDAT", &idat), &chunk(b"IEND", &[])].concat()
}

/// Sizes a file or a user declares are checked before they are allocated: label and depth
/// PNGs, photos, transforms and synthetic scenes (before: 1 TB allocations, SIGABRT under
/// `ulimit -v`).
#[test]
fn declared_sizes_are_checked_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    // A VOC label map claiming 100000x100000 pixels.
    let voc = tmp.path().join("VOC2012");
    for f in walk(&fixtures().join("VOCdevkit/VOC2012")) {
        let dest = voc.join(f.strip_prefix(fixtures().join("VOCdevkit/VOC2012")).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, dest).unwrap();
    }
    let label = walk(&voc.join("SegmentationClass"))[0].clone();
    std::fs::write(&label, lying_png(100_000, 100_000, 8, 3)).unwrap();
    let ds = open(&format!("voc2012:{}", voc.display()), Split::Train).unwrap();
    let errors: Vec<String> = (0..ds.len()).filter_map(|i| ds.get(i).err().map(|e| format!("{e:#}"))).collect();
    assert!(errors.iter().any(|e| e.contains(&label.display().to_string()) && e.contains("more than this")), "{errors:?}");
    // A photo claiming 100000x100000 pixels.
    let photo = tmp.path().join("big.png");
    std::fs::write(&photo, lying_png(100_000, 100_000, 8, 2)).unwrap();
    let err = format!("{:#}", robust_ssl::input::decode_image(&photo).unwrap_err());
    assert!(err.contains("big.png") && err.contains("limit"), "{err}");
    // User-given sizes.
    let err = "resize100000x100000".parse::<robust_ssl::data::transform::Transform>().unwrap_err().to_string();
    assert!(err.contains("unknown transform 'resize100000x100000'") && err.contains("16384"), "{err}");
    let err = format!("{:#}", open("synthetic-seg:4x100000", Split::Train).err().unwrap());
    assert!(err.contains("4x100000") && err.contains("at most 4096"), "{err}");
}

/// `arrays:FILE.safetensors`: f32 images as they are, u8 images divided by 255, class labels,
/// label maps and depths per sample; pixels outside [0, 1], NaN, labels of another length and
/// negative classes refused, naming the file.
#[test]
fn arrays_files() {
    let tmp = tempfile::tempdir().unwrap();
    let write = |name: &str, tensors: Vec<(&str, Tensor)>| -> String {
        let path = tmp.path().join(name);
        let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        candle_core::safetensors::save(&map, &path).unwrap();
        format!("arrays:{}", path.display())
    };
    let pixels: Vec<f32> = (0..2 * 3 * 4 * 5).map(|i| (i % 7) as f32 / 6.0).collect();
    let images = Tensor::from_vec(pixels.clone(), (2, 3, 4, 5), &Device::Cpu).unwrap();
    let spec = write("cls.safetensors", vec![("images", images.clone()), ("labels", Tensor::new(&[3i64, 7], &Device::Cpu).unwrap())]);
    let ds = open(&spec, Split::Test).unwrap();
    assert_eq!((ds.len(), ds.num_classes()), (2, Some(8)));
    let s = ds.get(1).unwrap();
    assert_eq!(s.image.flatten_all().unwrap().to_vec1::<f32>().unwrap(), pixels[60..]);
    assert!(matches!(s.target, Target::Class(7)));

    let bytes: Vec<u8> = (0..2 * 3 * 4 * 5).map(|i| (i * 11 % 256) as u8).collect();
    let maps: Vec<i64> = (0..2 * 4 * 5).map(|i| i % 4).collect();
    let spec = write(
        "seg.safetensors",
        vec![
            ("images", Tensor::from_vec(bytes.clone(), (2, 3, 4, 5), &Device::Cpu).unwrap()),
            ("labels", Tensor::from_vec(maps.clone(), (2, 4, 5), &Device::Cpu).unwrap()),
        ],
    );
    let s = open(&spec, Split::Val).unwrap().get(0).unwrap();
    let want: Vec<f32> = bytes[..60].iter().map(|&b| b as f32 / 255.0).collect();
    assert_eq!(s.image.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
    let Target::Segmentation { labels, height, width } = s.target else { panic!("not a label map") };
    assert_eq!((labels, height, width), (maps[..20].iter().map(|&v| v as u32).collect(), 4, 5));

    let depths: Vec<f32> = (0..2 * 4 * 5).map(|i| i as f32 * 0.25).collect();
    let spec = write(
        "depth.safetensors",
        vec![("images", images.clone()), ("labels", Tensor::from_vec(depths.clone(), (2, 4, 5), &Device::Cpu).unwrap())],
    );
    let Target::Depth { metres, .. } = open(&spec, Split::Test).unwrap().get(1).unwrap().target else { panic!("not a depth map") };
    assert_eq!(metres, depths[20..]);

    let refused = |name: &str, tensors: Vec<(&str, Tensor)>, needle: &str| {
        let spec = write(name, tensors);
        let err = format!("{:#}", open(&spec, Split::Test).err().unwrap());
        assert!(err.contains(name) && err.contains(needle), "{err}");
    };
    let mut nan = pixels.clone();
    nan[5] = f32::NAN;
    refused("nan.safetensors", vec![("images", Tensor::from_vec(nan, (2, 3, 4, 5), &Device::Cpu).unwrap())], "[0, 1]");
    refused("scaled.safetensors", vec![("images", (images.clone() * 255.0).unwrap())], "[0, 1]");
    refused("short.safetensors", vec![("images", images.clone()), ("labels", Tensor::new(&[1i64], &Device::Cpu).unwrap())], "for 2 images");
    refused(
        "negative.safetensors",
        vec![("images", images.clone()), ("labels", Tensor::new(&[1i64, -2], &Device::Cpu).unwrap())],
        "not a class",
    );
    refused("none.safetensors", vec![("pixels", images)], "no tensor 'images'");
}
