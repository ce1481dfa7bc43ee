//! `vlapic-vmm bench --runs 1`: the bench guest runs under both LAPIC
//! backends and every operation gets a number under each (or is skipped
//! by both). No timing is judged: the machine is shared and emulated.
//!
//! Needs /dev/kvm; without it prints `SKIP: no /dev/kvm`. The guests are
//! built by `guests/build.sh` (set VLAPIC_GUEST_DIR to use prebuilt ones).

mod common;
use common::*;

use std::process::Command;

use vlapic_vmm::bench::OPERATIONS;

/// Whether a table cell starts with a number and a unit (`12.3 us`).
fn has_number(cell: &str) -> bool {
    let mut w = cell.split_whitespace();
    matches!(
        (w.next().map(str::parse::<f64>), w.next()),
        (Some(Ok(_)), Some("ns" | "us" | "ms"))
    )
}

#[test]
fn bench_one_run_every_operation_has_numbers() {
    if !kvm_available() {
        return;
    }
    let dir = guest_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_vlapic-vmm"))
        .args(["bench", "--runs", "1", "--cpus", "2", "--timeout", "300"])
        .arg("--guest-dir")
        .arg(dir)
        .env_remove("VLAPIC_KVM_DEVICE")
        .output()
        .expect("running vlapic-vmm bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "vlapic-vmm bench failed ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    for (op, _) in OPERATIONS {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {op} |")))
            .unwrap_or_else(|| panic!("no table row for {op}:\n{stdout}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // "", op, user, kernel, ratio, exits user, exits kernel, ...
        assert!(
            has_number(cells[2]) && has_number(cells[3]),
            "{op}: no number under both backends: {row}"
        );
        // The userspace backend's exits were counted (--profile).
        assert!(
            cells[5].parse::<f64>().is_ok(),
            "{op}: no exit count: {row}"
        );
    }
    // The bare exit costs one exit under both backends; an xAPIC TPR
    // read one under vlapic and none under KVM's LAPIC.
    let cell = |op: &str, i: usize| -> f64 {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&format!("| {op} |")))
            .unwrap();
        row.split('|')
            .map(str::trim)
            .nth(i)
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(cell("exit_out", 5), 1.0);
    assert_eq!(cell("exit_out", 6), 1.0);
    assert_eq!(cell("tpr_read_xapic", 5), 1.0);
    assert_eq!(cell("tpr_read_xapic", 6), 0.0);
    assert!(stdout.contains("Machine: "), "{stdout}");
}
