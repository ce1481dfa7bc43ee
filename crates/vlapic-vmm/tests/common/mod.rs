//! Helpers shared by the VMM's integration tests: KVM detection (with the
//! `SKIP: no /dev/kvm` line the test command counts), the built guests, and
//! running the `vlapic-vmm` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// Whether /dev/kvm can be opened read-write; prints `SKIP: no /dev/kvm`
/// when it cannot (the caller then returns).
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        println!("SKIP: no /dev/kvm");
    }
    ok
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// Directory with the built guests: `VLAPIC_GUEST_DIR`, or built once per
/// test binary by `guests/build.sh` (a no-op when up to date).
pub fn guest_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Ok(d) = std::env::var("VLAPIC_GUEST_DIR") {
            return PathBuf::from(d);
        }
        let root = workspace_root();
        let out = Command::new("bash")
            .arg(root.join("guests/build.sh"))
            .output()
            .expect("running guests/build.sh");
        assert!(
            out.status.success(),
            "guests/build.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        root.join("target/guests")
    })
}

/// Runs the `vlapic-vmm` binary with `args` (the real KVM device).
pub fn vmm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vlapic-vmm"))
        .args(args)
        .env_remove("VLAPIC_KVM_DEVICE")
        .output()
        .expect("running vlapic-vmm")
}
