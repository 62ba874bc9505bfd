#![no_main]
//! `keyhost::fuzzing::json_body`: see fuzz/README.md.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keyhost::fuzzing::json_body(data));
