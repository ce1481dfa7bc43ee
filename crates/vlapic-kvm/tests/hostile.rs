//! Hostile input on the stable toolchain: the `kvm_blob` fuzz target's
//! logic (`fuzz/targets/src/kvm_blob.rs`, shared with the libFuzzer binary)
//! on the committed seeds (`fuzz/seeds/kvm_blob`) and on deterministic
//! pseudo-random inputs (`HOSTILE_CASES`, default 10000).

#[allow(dead_code)]
#[path = "../../../fuzz/targets/src/input.rs"]
mod input;

#[allow(dead_code)]
#[path = "../../../fuzz/targets/src/check.rs"]
mod check;

#[allow(dead_code)]
#[path = "../../../fuzz/targets/src/lapic_ops.rs"]
mod lapic_ops;

#[allow(dead_code)]
#[path = "../../../fuzz/targets/src/kvm_blob.rs"]
mod kvm_blob;

#[test]
fn kvm_blob_hostile() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/kvm_blob");
    assert!(input::run_dir(&dir, kvm_blob::run) > 0, "no seeds");
    let cases = std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    input::run_random(4, cases, 1400, kvm_blob::run);
}
