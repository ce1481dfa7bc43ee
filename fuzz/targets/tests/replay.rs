//! Stable-toolchain replay of every fuzz target: the committed seeds
//! (`fuzz/seeds/<target>`), libFuzzer's working corpus and crash artifacts
//! if present (`fuzz/corpus/<target>`, `fuzz/artifacts/<target>`), and
//! deterministic pseudo-random inputs (`HOSTILE_CASES`, default 10000).

use std::path::PathBuf;
use vlapic_fuzz_targets::input::{run_dir, run_random};
use vlapic_fuzz_targets::TARGETS;

fn cases() -> usize {
    std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn replay(name: &str) {
    let (_, f) = TARGETS.iter().find(|(n, _)| *n == name).unwrap();
    let mut n = 0;
    for sub in ["seeds", "corpus", "artifacts"] {
        n += run_dir(&fuzz_dir().join(sub).join(name), f);
    }
    eprintln!("{name}: {n} files replayed");
    let seed = name.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01B3)
    });
    run_random(
        seed,
        cases(),
        if name == "kvm_blob" || name == "restore" {
            1400
        } else {
            600
        },
        f,
    );
}

#[test]
fn lapic_ops() {
    replay("lapic_ops");
}

#[test]
fn fabric() {
    replay("fabric");
}

#[test]
fn restore() {
    replay("restore");
}

#[test]
fn kvm_blob() {
    replay("kvm_blob");
}

#[test]
fn ioapic() {
    replay("ioapic");
}
