//! Fuzzes the ade20k reader: see tests/common/hostile.rs (`Reader::Ade20k`).
#![no_main]

#[path = "../../tests/common/bounded_alloc.rs"]
mod bounded_alloc;
#[path = "../../tests/common/hostile.rs"]
mod hostile;

#[global_allocator]
static ALLOC: bounded_alloc::BoundedAlloc = bounded_alloc::BoundedAlloc;

const READER: hostile::Reader = hostile::Reader::Ade20k;

libfuzzer_sys::fuzz_target!(init: hostile::fuzz_init(READER), |data: &[u8]| hostile::fuzz_one(READER, data));
