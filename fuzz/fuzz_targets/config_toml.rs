#![no_main]
//! `keyhost::fuzzing::config_toml`: see fuzz/README.md.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keyhost::fuzzing::config_toml(data));
