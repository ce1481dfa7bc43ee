//! End-to-end tests: run guests under the `vlapic-vmm` binary.
//!
//! Needs /dev/kvm; without it every test prints `SKIP: no /dev/kvm` and
//! returns. The Rust guests are built by `guests/build.sh` (run here once
//! per test run; set VLAPIC_GUEST_DIR to use prebuilt ones instead).

mod common;
use common::*;

use std::path::PathBuf;
use std::process::{Command, Output};

use vlapic_vmm::loader::testing::make_elf;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tmpfile(name: &str, data: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vlapic-vmm-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn assert_guest_passed(out: &Output) {
    let so = text(&out.stdout);
    let se = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "guest did not pass\nstdout:\n{so}\nstderr:\n{se}"
    );
    assert!(!so.contains("FAIL:"), "{so}");
    assert!(so.contains(" passed, 0 failed"), "{so}");
}

fn hello() -> String {
    guest_dir().join("hello.elf").to_string_lossy().into_owned()
}

#[test]
fn hello_kernel_irqchip() {
    if !kvm_available() {
        return;
    }
    let out = vmm(&[
        "--kernel",
        &hello(),
        "--irqchip",
        "kernel",
        "--timeout",
        "60",
    ]);
    assert_guest_passed(&out);
    let so = text(&out.stdout);
    assert!(so.contains("PASS: self-IPI 0x40 delivered once"), "{so}");
}

#[test]
fn hello_user_vlapic() {
    if !kvm_available() {
        return;
    }
    for x2apic in ["on", "off"] {
        for tsc_deadline in ["on", "off"] {
            for chip in ["user", "kernel"] {
                let out = vmm(&[
                    "--kernel",
                    &hello(),
                    "--irqchip",
                    chip,
                    "--x2apic",
                    x2apic,
                    "--tsc-deadline",
                    tsc_deadline,
                    "--timeout",
                    "60",
                    "--stats",
                ]);
                assert_guest_passed(&out);
                let so = text(&out.stdout);
                let what = format!("{chip} x2apic={x2apic} tsc-deadline={tsc_deadline}");
                for line in [
                    "PASS: self-IPI 0x40 delivered once",
                    "PASS: one-shot timer fired once",
                    "PASS: one-shot timer not early",
                    "PASS: periodic timer fired 3 times",
                    "PASS: NMI IPI to own APIC ID delivered with IF=0",
                    "PASS: relocated APIC answers at the new base",
                    "PASS: old APIC page does not decode after relocation",
                ] {
                    assert!(so.contains(line), "{what}: {line}\n{so}");
                }
                assert_eq!(
                    so.contains("PASS: x2APIC SELF_IPI 0x43 delivered"),
                    x2apic == "on",
                    "{what}\n{so}"
                );
                assert_eq!(
                    so.contains("PASS: TSC-deadline timer not early"),
                    tsc_deadline == "on",
                    "{what}\n{so}"
                );
                if chip == "user" {
                    // The LAPIC was reached through MMIO and MSR exits and
                    // KVM_INTERRUPT, and it is vlapic.
                    let se = text(&out.stderr);
                    assert!(se.contains("\"mmio_write\""), "{se}");
                    assert!(se.contains("\"rdmsr\""), "{se}");
                    assert!(se.contains("vlapic Stats {"), "{se}");
                    assert!(se.contains("fabric FabricStats {"), "{se}");
                    assert!(!se.contains("stub LAPIC"), "{se}");
                    assert!(se.contains(" 1 NMIs"), "{se}");
                }
            }
        }
    }
}

#[test]
fn default_irqchip_is_vlapic() {
    if !kvm_available() {
        return;
    }
    let out = vmm(&["--kernel", &hello(), "--timeout", "60", "--stats"]);
    assert_guest_passed(&out);
    let se = text(&out.stderr);
    assert!(se.contains("vlapic Stats {"), "{se}");
    assert!(text(&out.stdout).contains("PASS: one-shot timer fired once"));
}

#[test]
fn smp_stub_lapic() {
    if !kvm_available() {
        return;
    }
    let smp = guest_dir().join("smp.elf").to_string_lossy().into_owned();
    let out = vmm(&[
        "--kernel",
        &smp,
        "--irqchip",
        "stub",
        "--cpus",
        "2",
        // The stub has no logical destinations.
        "--x2apic",
        "off",
        "--timeout",
        "60",
        "--stats",
    ]);
    assert_guest_passed(&out);
    let se = text(&out.stderr);
    assert!(se.contains("using the minimal stub LAPIC"), "{se}");
    assert!(se.contains("\"mmio_write\""), "{se}");
}

#[test]
fn hello_with_idle_aps_and_serial_file() {
    if !kvm_available() {
        return;
    }
    for chip in ["kernel", "user"] {
        let path =
            std::env::temp_dir().join(format!("vlapic-serial-{}-{chip}.txt", std::process::id()));
        let arg = format!("file:{}", path.display());
        let out = vmm(&[
            "--kernel",
            &hello(),
            "--irqchip",
            chip,
            "--cpus",
            "3",
            "--serial",
            &arg,
            "--timeout",
            "60",
        ]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        let serial = std::fs::read_to_string(&path).unwrap();
        assert!(serial.contains("cpu 0 of 3"), "{serial}");
        assert!(serial.contains(" passed, 0 failed"), "{serial}");
        assert!(text(&out.stdout).is_empty());
        let _ = std::fs::remove_file(&path);
    }
}

#[test]
fn flat_real_mode_debug_exit_and_trace() {
    if !kvm_available() {
        return;
    }
    // mov al, 5; out 0xf4, al
    let p = tmpfile("rm.bin", &[0xb0, 0x05, 0xe6, 0xf4]);
    let out = vmm(&[
        "--kernel",
        p.to_str().unwrap(),
        "--format",
        "flat",
        "--irqchip",
        "kernel",
        "--trace",
        "--timeout",
        "20",
    ]);
    assert_eq!(out.status.code(), Some(11), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("out port 0xf4"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn multiboot_entry_state() {
    if !kvm_available() {
        return;
    }
    // a.out-kludge multiboot image loaded at 1 MiB; 32-bit code checks
    // EAX == 0x2BADB002 and EBX == mbi with flags bit 0 and mem_lower 640.
    let load: u32 = 0x10_0000;
    let entry = load + 48;
    let mut img = Vec::new();
    let magic: u32 = 0x1bad_b002;
    let flags: u32 = 1 << 16;
    for v in [
        magic,
        flags,
        0u32.wrapping_sub(magic).wrapping_sub(flags),
        load,
        load,
        0,
        0,
        entry,
    ] {
        img.extend_from_slice(&v.to_le_bytes());
    }
    img.resize(48, 0);
    let code: &[u8] = &[
        0x3d, 0x02, 0xb0, 0xad, 0x2b, // cmp eax, 0x2badb002
        0x75, 0x13, // jne fail
        0xf6, 0x03, 0x01, // test byte [ebx], 1
        0x74, 0x0e, // jz fail
        0x81, 0x7b, 0x04, 0x80, 0x02, 0x00, 0x00, // cmp dword [ebx+4], 640
        0x75, 0x05, // jne fail
        0xb0, 0x10, // mov al, 0x10
        0xe6, 0xf4, // out 0xf4, al
        0xf4, // hlt
        0xb0, 0x20, // fail: mov al, 0x20
        0xe6, 0xf4, // out 0xf4, al
        0xf4,
    ];
    img.extend_from_slice(code);
    let p = tmpfile("mb.bin", &img);
    let out = vmm(&[
        "--kernel",
        p.to_str().unwrap(),
        "--irqchip",
        "kernel",
        "--timeout",
        "20",
    ]);
    assert_eq!(out.status.code(), Some(0x21), "{}", text(&out.stderr));
}

#[test]
fn triple_fault_is_reported() {
    if !kvm_available() {
        return;
    }
    // Long mode with an empty IDT: UD2 -> #UD -> #GP -> #DF -> shutdown.
    let elf = make_elf(true, 0x10_0000, 0x10_0000, &[0x0f, 0x0b], 0);
    let p = tmpfile("tf.elf", &elf);
    for irqchip in ["kernel", "user"] {
        let out = vmm(&[
            "--kernel",
            p.to_str().unwrap(),
            "--irqchip",
            irqchip,
            "--timeout",
            "20",
        ]);
        let se = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{irqchip}: {se}");
        assert!(se.contains("triple fault"), "{irqchip}: {se}");
        assert!(se.contains("rip=0x0000000000100000"), "{irqchip}: {se}");
        assert!(se.contains("code at rip: 0f 0b"), "{irqchip}: {se}");
        // The vCPU's LAPIC, decoded (reset state: software-disabled SVR).
        assert!(se.contains("LAPIC:"), "{irqchip}: {se}");
        assert!(se.contains("SVR"), "{irqchip}: {se}");
        assert!(se.contains("0x000000ff"), "{irqchip}: {se}");
    }
}

#[test]
fn emulation_failure_or_fault_is_reported() {
    if !kvm_available() {
        return;
    }
    // INT3 in long mode: kvm_pvm cannot emulate it (emulation failure);
    // a hardware KVM delivers #BP through an empty IDT (triple fault).
    let elf = make_elf(true, 0x10_0000, 0x10_0000, &[0xcc, 0xf4], 0);
    let p = tmpfile("int3.elf", &elf);
    let out = vmm(&[
        "--kernel",
        p.to_str().unwrap(),
        "--irqchip",
        "kernel",
        "--timeout",
        "20",
    ]);
    let se = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{se}");
    if se.contains("emulation failure") {
        assert!(se.contains("RIP 0x100000"), "{se}");
        assert!(se.contains("instruction bytes cc"), "{se}");
    } else {
        assert!(se.contains("triple fault"), "{se}");
    }
}

#[test]
fn timeout_and_errors() {
    if !kvm_available() {
        return;
    }
    // cli; hlt; jmp $-3
    let p = tmpfile("hang.bin", &[0xfa, 0xf4, 0xeb, 0xfd]);
    for chip in ["kernel", "user"] {
        let out = vmm(&[
            "--kernel",
            p.to_str().unwrap(),
            "--format",
            "flat",
            "--irqchip",
            chip,
            "--timeout",
            "0.5",
        ]);
        assert_eq!(
            out.status.code(),
            Some(vlapic_vmm::EXIT_TIMEOUT),
            "{}",
            text(&out.stderr)
        );
    }
    let bad = tmpfile("bad.bin", b"not a kernel");
    let out = vmm(&["--kernel", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("bad kernel image"));
    let out = vmm(&["--kernel", "/nonexistent/kernel"]);
    assert_eq!(out.status.code(), Some(2));
    let out = vmm(&["--cpus", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--kernel PATH is required"));
}

#[test]
fn missing_kvm_device_is_reported() {
    // Works with or without KVM: point the VMM at a device that does not exist.
    let elf = make_elf(true, 0x10_0000, 0x10_0000, &[0xf4], 0);
    let p = tmpfile("nokvm.elf", &elf);
    let out = Command::new(env!("CARGO_BIN_EXE_vlapic-vmm"))
        .args(["--kernel", p.to_str().unwrap()])
        .env("VLAPIC_KVM_DEVICE", "/nonexistent/kvm")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let se = text(&out.stderr);
    assert!(
        se.contains("KVM is not available") && se.contains("does not exist"),
        "{se}"
    );
}

#[test]
fn smp_startup_and_ipis() {
    if !kvm_available() {
        return;
    }
    let smp = guest_dir().join("smp.elf").to_string_lossy().into_owned();
    for chip in ["kernel", "user"] {
        for cpus in ["1", "2", "4", "8"] {
            let out = vmm(&[
                "--kernel",
                &smp,
                "--irqchip",
                chip,
                "--cpus",
                cpus,
                "--timeout",
                "60",
            ]);
            assert_guest_passed(&out);
            let so = text(&out.stdout);
            if cpus == "1" {
                assert!(so.contains("SKIP"), "{chip} {cpus}: {so}");
                continue;
            }
            assert!(
                so.contains("PASS: all APs came online"),
                "{chip} {cpus}: {so}"
            );
            assert!(
                so.contains("PASS: every AP got the BSP's fixed IPI"),
                "{chip} {cpus}: {so}"
            );
            for line in [
                "PASS: AP 1 restarted by INIT/SIPI/SIPI while running",
                "PASS: ping-pong: 300 HLT-to-HLT round trips",
                "PASS: every AP switched to x2APIC mode",
                "PASS: every AP got an x2APIC physical IPI",
                "PASS: BSP got an x2APIC IPI from every AP",
                "PASS: every AP got an x2APIC logical (cluster 0) IPI",
            ] {
                assert!(so.contains(line), "{chip} {cpus}: {line}\n{so}");
            }
        }
        // Without x2APIC in CPUID the x2APIC phase is skipped.
        let out = vmm(&[
            "--kernel",
            &smp,
            "--irqchip",
            chip,
            "--cpus",
            "3",
            "--x2apic",
            "off",
            "--timeout",
            "60",
        ]);
        assert_guest_passed(&out);
        let so = text(&out.stdout);
        assert!(
            so.contains("SKIP: every AP switched to x2APIC mode"),
            "{chip}: {so}"
        );
        assert!(so.contains("PASS: all APs came online"), "{chip}: {so}");
    }
}

#[test]
fn exitcost_runs() {
    if !kvm_available() {
        return;
    }
    let g = guest_dir()
        .join("exitcost.elf")
        .to_string_lossy()
        .into_owned();
    for chip in ["kernel", "user"] {
        let out = vmm(&["--kernel", &g, "--irqchip", chip, "--timeout", "60"]);
        assert_guest_passed(&out);
        assert!(text(&out.stdout).contains("bench: OUT to an unclaimed port"));
    }
}
