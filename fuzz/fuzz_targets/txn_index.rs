//! Fuzz target: see `ferrolog_fuzz::txn_index` for what it feeds and checks.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ferrolog_fuzz::txn_index(data));
