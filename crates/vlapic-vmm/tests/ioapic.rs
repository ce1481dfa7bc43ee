//! End-to-end IOAPIC tests: `conf_ioapic` under `--irqchip user` (vlapic +
//! vioapic), `split` (KVM's LAPIC + vioapic) and `kernel` (KVM's LAPIC and
//! IOAPIC), and the `decode` subcommand.
//!
//! Needs /dev/kvm; without it every test prints `SKIP: no /dev/kvm` and
//! returns. Guests are built by `guests/build.sh` (once per test run; set
//! VLAPIC_GUEST_DIR to use prebuilt ones). Userspace must pass every
//! check; with KVM's LAPIC (split, kernel) a FAIL is accepted only if the
//! conformance runner documents it as a known KVM departure
//! (`vlapic_vmm::conformance::departure`).

mod common;
use common::*;

use vlapic_vmm::conformance::{departure, parse_output, Status};

/// Runs conf_ioapic; returns its checks and the whole stdout.
fn run(irqchip: &str, extra: &[&str]) -> (Vec<(String, Status)>, String, String) {
    let elf = guest_dir().join("conf_ioapic.elf");
    let elf = elf.to_str().unwrap();
    let mut args = vec![
        "--kernel",
        elf,
        "--irqchip",
        irqchip,
        "--timeout",
        "120",
        "--stats",
    ];
    args.extend_from_slice(extra);
    let out = vmm(&args);
    let so = String::from_utf8_lossy(&out.stdout).into_owned();
    let se = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        matches!(out.status.code(), Some(1) | Some(3)) && so.contains(" passed, "),
        "{irqchip} {extra:?}: status {:?}\n{so}\n{se}",
        out.status.code()
    );
    (parse_output(&so), so, se)
}

fn fails(checks: &[(String, Status)]) -> Vec<&str> {
    checks
        .iter()
        .filter(|(_, s)| matches!(s, Status::Fail(_)))
        .map(|(n, _)| n.as_str())
        .collect()
}

fn status<'a>(checks: &'a [(String, Status)], name: &str) -> &'a Status {
    checks
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no check {name:?}"))
}

#[test]
fn user_mode_passes_everything() {
    if !kvm_available() {
        return;
    }
    for v in ["0x20", "0x11"] {
        let (c, so, se) = run("user", &["--cpus", "2", "--ioapic-version", v]);
        assert!(fails(&c).is_empty(), "--ioapic-version {v}:\n{so}");
        assert!(c.len() > 40, "{so}");
        let got = status(&c, "directed EOI: IOAPIC EOI register clears remote IRR");
        if v == "0x20" {
            assert_eq!(got, &Status::Pass, "{so}");
        } else {
            assert!(matches!(got, Status::Skip(_)), "{so}");
            assert!(so.contains("version register 0x170011"), "{so}");
        }
        // Every message was delivered; EOI broadcasts came back.
        assert!(se.contains("undelivered: 0"), "{se}");
        assert!(!se.contains("eois: 0,"), "{se}");
    }
    // One CPU: the destination checks skip.
    let (c, so, _) = run("user", &["--cpus", "1"]);
    assert!(fails(&c).is_empty(), "{so}");
    assert!(matches!(
        status(&c, "physical destination: only the addressed CPU"),
        Status::Skip(_)
    ));
}

#[test]
fn split_and_kernel_fail_only_on_documented_kvm_departures() {
    if !kvm_available() {
        return;
    }
    for (mode, extra) in [
        ("split", &["--cpus", "2"][..]),
        ("split", &["--cpus", "2", "--ioapic-version", "0x11"][..]),
        ("kernel", &["--cpus", "2"][..]),
    ] {
        let (c, so, se) = run(mode, extra);
        let bad: Vec<&str> = fails(&c)
            .into_iter()
            .filter(|n| departure(n).is_none())
            .collect();
        assert!(
            bad.is_empty(),
            "{mode} {extra:?}: undocumented FAILs {bad:?}\n{so}"
        );
        // Edge delivery, remote IRR, destinations and the serial IRQ work
        // with KVM's LAPIC too.
        for name in [
            "edge: exactly once",
            "edge: three pins pulsed together each deliver once",
            "level: remote IRR set while in service",
            "level: LAPIC TMR bit set for the vector",
            "serial: THR-empty interrupt arrives on IOAPIC pin 4",
            "physical destination: only the addressed CPU",
            "logical destination: several CPUs",
            "IOAPIC lowest priority: exactly one CPU gets it",
        ] {
            assert_eq!(
                status(&c, name),
                &Status::Pass,
                "{mode} {extra:?}: {name}\n{so}"
            );
        }
        if mode == "split" {
            // Our IOAPIC: MSIs through KVM_SIGNAL_MSI, EOIs as exits, GSI
            // routes installed.
            assert!(se.contains("ioapic IoApicDeviceStats"), "{se}");
            assert!(!se.contains("route_updates: 0"), "{se}");
            assert!(!se.contains("eois: 0,"), "{se}");
            let ver = if extra.contains(&"0x11") { 0x11 } else { 0x20 };
            assert!(
                so.contains(&format!("version register 0x1700{ver:02x}")),
                "{so}"
            );
            if ver == 0x20 {
                // KVM honours suppress-EOI-broadcast (KVM_X2APIC_ENABLE_SUPPRESS_EOI_BROADCAST).
                assert_eq!(
                    status(
                        &c,
                        "directed EOI: LAPIC EOI leaves remote IRR set with suppress-EOI-broadcast"
                    ),
                    &Status::Pass,
                    "{so}"
                );
            }
        } else {
            assert!(so.contains("version register 0x170011"), "{so}");
        }
    }
}

#[test]
fn decode_subcommand() {
    let dir = std::env::temp_dir().join(format!("vlapic-vmm-ioapic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("lapic.bin");
    let mut blob = vec![0u8; 1024];
    blob[0x30] = 0x14; // version 0x14
    std::fs::write(&p, &blob).unwrap();
    let out = vmm(&["decode", p.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!out.stdout.is_empty());
    let out = vmm(&["decode", dir.join("missing").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let out = vmm(&["decode"]);
    assert_eq!(out.status.code(), Some(2));
}
