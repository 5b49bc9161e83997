//! Dataset readers on small files in the exact native formats (tools/gen_data_fixtures.py, which
//! decodes them with the official loaders' numpy semantics), their errors on bad files, and the
//! real Fashion-MNIST that Debian's dataset-fashion-mnist ships (installed by scripts/fetch-assets.sh).

use std::path::{Path, PathBuf};

use candle_core::Device;
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
    ];
    for (kind, dir, split, expected) in cases {
        let ds = open(&spec(kind, dir), split).unwrap_or_else(|e| panic!("{expected}: {e:#}"));
        check_against_reference(ds.as_ref(), expected);
    }
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
