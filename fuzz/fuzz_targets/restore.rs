#![no_main]
use libfuzzer_sys::fuzz_target;

// Structured ApicState (first byte even) or serde_json bytes (odd).
fuzz_target!(|data: &[u8]| vlapic_fuzz_targets::serde_restore::run(data));
