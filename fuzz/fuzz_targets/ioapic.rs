#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vlapic_fuzz_targets::ioapic::run(data));
