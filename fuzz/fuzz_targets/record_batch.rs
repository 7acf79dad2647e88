//! Fuzz target: see `ferrolog_fuzz::record_batch` for what it feeds and checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrolog_fuzz::record_batch(data));
