#![no_main]
//! `keyhost::fuzzing::pem_import`: see fuzz/README.md.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keyhost::fuzzing::pem_import(data));
