#![no_main]
//! `keyhost::fuzzing::emulator_jwt`: see fuzz/README.md.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| keyhost::fuzzing::emulator_jwt(data));
