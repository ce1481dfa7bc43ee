//! The LAPIC conformance suite (`vlapic-vmm conformance`): every
//! conformance guest under the userspace LAPIC (vlapic) and KVM's
//! in-kernel LAPIC, xAPIC-only and x2APIC CPUID, 1 and 2 CPUs (the
//! 4-CPU runs are in the `conformance` command's default matrix). Fails
//! on any userspace FAIL, a crashed or timed-out run, or a difference
//! between the backends that is not a documented KVM departure.
//!
//! Needs /dev/kvm; without it prints `SKIP: no /dev/kvm`. The guests are
//! built by `guests/build.sh` (set VLAPIC_GUEST_DIR to use prebuilt ones).

mod common;
use common::*;

use std::process::Command;

#[test]
fn conformance_user_vs_kernel_1_and_2_cpus() {
    if !kvm_available() {
        return;
    }
    let dir = guest_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_vlapic-vmm"))
        .arg("conformance")
        .args(["--cpus-list", "1,2", "--x2apic", "both", "--diff-only"])
        .arg("--guest-dir")
        .arg(dir)
        .args(["--timeout", "300"])
        .env_remove("VLAPIC_KVM_DEVICE")
        .output()
        .expect("running vlapic-vmm conformance");
    let so = String::from_utf8_lossy(&out.stdout);
    let se = String::from_utf8_lossy(&out.stderr);
    println!("{so}");
    assert!(
        so.contains("conformance: ") && so.contains(": OK"),
        "conformance failed (status {:?})\nstdout:\n{so}\nstderr:\n{se}",
        out.status.code()
    );
    assert_eq!(out.status.code(), Some(0), "{so}\n{se}");
    // The suite really ran: at least 100 distinct checks, all guests.
    let distinct: usize = so
        .lines()
        .find_map(|l| l.strip_prefix("conformance: "))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(distinct >= 100, "only {distinct} distinct checks\n{so}");
    for g in ["conf_basic", "conf_timer", "conf_ipi"] {
        assert!(so.contains(&format!("== {g} --cpus 2 --x2apic on")), "{so}");
    }
}
