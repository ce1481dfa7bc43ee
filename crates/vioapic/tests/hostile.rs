//! Hostile input on the stable toolchain: the `ioapic` fuzz target's logic
//! (`fuzz/targets/src/ioapic.rs`, shared with the libFuzzer binary) on the
//! committed seeds (`fuzz/seeds/ioapic`) and on deterministic
//! pseudo-random inputs (`HOSTILE_CASES`, default 10000).

#[allow(dead_code)]
#[path = "../../../fuzz/targets/src/input.rs"]
mod input;

#[allow(dead_code)]
#[path = "../../../fuzz/targets/src/ioapic.rs"]
mod ioapic;

#[test]
fn ioapic_hostile() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/ioapic");
    assert!(input::run_dir(&dir, ioapic::run) > 0, "no seeds");
    let cases = std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    input::run_random(5, cases, 600, ioapic::run);
}
