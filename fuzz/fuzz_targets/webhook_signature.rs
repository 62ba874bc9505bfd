#![no_main]
//! `keyhost::fuzzing::webhook_signature`: see fuzz/README.md.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keyhost::fuzzing::webhook_signature(data));
