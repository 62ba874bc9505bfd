#![no_main]
//! `keyhost::fuzzing::doctor_jwt`: see fuzz/README.md.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keyhost::fuzzing::doctor_jwt(data));
