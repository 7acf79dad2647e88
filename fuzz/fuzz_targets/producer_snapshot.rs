//! Fuzz target: see `ferrolog_fuzz::producer_snapshot` for what it feeds and checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrolog_fuzz::producer_snapshot(data));
