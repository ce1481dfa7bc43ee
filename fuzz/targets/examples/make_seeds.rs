//! Writes the committed seed corpus (`fuzz/seeds/<target>/*`): short,
//! meaningful operation sequences encoded for each target's decoder (see
//! the decoders in `src/` for the byte layout), JSON of real saved states
//! and KVM blobs of real states.
//!
//! `cargo run --manifest-path fuzz/targets/Cargo.toml --example make_seeds`

use std::fs;
use std::path::PathBuf;
use vlapic::{ApicConfig, LocalApic};
use vlapic_kvm::{to_kvm, IdFormat};

fn out(target: &str, name: &str, bytes: &[u8]) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../seeds")
        .join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

/// lapic_ops prefix: config flags, default clocks, time 0, SVR enabled.
fn lapic_prefix(flags: u8) -> Vec<u8> {
    vec![flags, 3, 5, 5, 3, 3, 3, 2, 1]
}

/// MMIO write of `v` to REG_OFFSETS[idx] (4 bytes, aligned).
fn mmio(idx: u8, v: u32) -> Vec<u8> {
    let mut b = vec![0, 2, idx, 0, 4];
    b.extend_from_slice(&v.to_le_bytes());
    if idx == 8 {
        b.push(1);
    }
    b
}

fn advance(ns: u32) -> Vec<u8> {
    let mut b = vec![12, 2];
    b.extend_from_slice(&ns.to_le_bytes());
    b
}

const ACK: u8 = 14;
const EOI: u8 = 15;

fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn lapic_ops() {
    let t = "lapic_ops";
    // Self IPI, acknowledge, EOI (xAPIC, BSP).
    out(
        t,
        "self_ipi",
        &seq(&[lapic_prefix(1), mmio(14, 0x0004_0050), vec![ACK, EOI]]),
    );
    // Periodic timer, divide by 1, 1000 cycles; fires, acknowledged.
    out(
        t,
        "timer_periodic",
        &seq(&[
            lapic_prefix(1),
            mmio(16, 0x0002_0030),
            mmio(24, 0xB),
            mmio(22, 1000),
            advance(5000),
            vec![ACK, EOI],
            advance(300_000),
            vec![ACK],
        ]),
    );
    // x2APIC: enable, SELF IPI, TPR, acknowledge, EOI.
    out(
        t,
        "x2apic_self_ipi",
        &seq(&[
            lapic_prefix(1),
            vec![6, 0, 1, 3, 2],
            vec![23, 25, 2, 0x61],
            vec![23, 2, 2, 0x40],
            vec![ACK, EOI],
        ]),
    );
    // TSC deadline.
    let mut dl = vec![6, 1, 0];
    dl.extend_from_slice(&5000u64.to_le_bytes());
    out(
        t,
        "tsc_deadline",
        &seq(&[
            lapic_prefix(1),
            mmio(16, 0x0004_0040),
            dl,
            advance(10_000),
            vec![ACK, EOI],
        ]),
    );
    // Level-triggered LINT0, EOI re-delivery.
    out(
        t,
        "lint0_level",
        &seq(&[
            lapic_prefix(1),
            mmio(19, 0x8070),
            vec![16, 0, 1, ACK, EOI, ACK, 16, 0, 0, EOI],
        ]),
    );
    // Hardware disable and re-enable; AP with CMCI and suppress-EOI.
    out(
        t,
        "disable_reenable",
        &seq(&[lapic_prefix(0x18), mmio(13, 0x50), vec![10, 0, 2, 10, 1, 2]]),
    );
    // Illegal register read, ESR latch, illegal vector self IPI.
    out(
        t,
        "errors",
        &seq(&[
            lapic_prefix(1),
            mmio(18, 0x33),
            vec![4, 1, 0x40, 0x00, 4],
            mmio(14, 0x0004_0005),
            mmio(12, 0),
        ]),
    );
}

fn fabric() {
    let t = "fabric";
    // 4 vCPUs, default flags, IDs = index.
    let head = vec![2, 0, 3];
    let sync_all = vec![0, 10, 0, 0, 1];
    let ipi = |from: u8, dest: u8, vector: u8, dm: u8| {
        vec![from, 5, 0, 5, dest, 1, 0, 1, vector - 0x20, 0, dm, 0x40]
    };
    out(
        t,
        "fixed_ipi",
        &seq(&[head.clone(), ipi(0, 1, 0x40, 0), sync_all.clone()]),
    );
    out(
        t,
        "lowest_priority_broadcast",
        &seq(&[
            head.clone(),
            vec![1, 5, 0, 0, 1, 0, 1, 0x10, 0, 1, 0x40],
            sync_all.clone(),
        ]),
    );
    out(
        t,
        "init_sipi",
        &seq(&[
            head.clone(),
            ipi(0, 1, 0x20, 5),
            ipi(0, 1, 0x20, 6),
            sync_all.clone(),
        ]),
    );
    out(
        t,
        "msi_and_logical",
        &seq(&[
            head.clone(),
            vec![0, 7, 1, 2, 1, 0, 1, 1, 0x55, 0, 0],
            vec![1, 3, 1, 1, 5],
            vec![0, 5, 1, 1, 1, 1, 0, 1, 0x30, 1, 0x40],
            sync_all.clone(),
        ]),
    );
    // 8 vCPUs, round robin, x2APIC boot.
    out(
        t,
        "x2apic_rr",
        &seq(&[vec![6, 0x88, 3], ipi(2, 5, 0x44, 0), sync_all]),
    );
}

fn ioapic() {
    let t = "ioapic";
    let head = vec![0, 0, 0];
    let select = |idx: u8| vec![0, 0, 1, idx - 0x10, 0, 0, 0];
    let write = |v: u32| {
        let mut b = vec![1, 0];
        b.extend_from_slice(&v.to_le_bytes());
        b
    };
    out(
        t,
        "level_eoi",
        &seq(&[
            head.clone(),
            select(0x18),
            write(0x8034),
            vec![5, 1, 4, 1],
            vec![8, 0x34, 1],
            vec![8, 0x34, 0],
            vec![5, 1, 4, 0],
        ]),
    );
    out(
        t,
        "edge_pulse",
        &seq(&[head.clone(), select(0x14), write(0x40), vec![7, 2]]),
    );
    out(
        t,
        "v11_restore",
        &seq(&[
            vec![0, 0, 1],
            select(0x12),
            write(0xA050),
            vec![5, 1, 1, 1],
            vec![9, 1, 1, 14],
        ]),
    );
}

fn states() -> Vec<(&'static str, vlapic::ApicState)> {
    let mut v = Vec::new();
    let bsp = LocalApic::new(ApicConfig::new(0).with_bsp(true));
    v.push(("reset_bsp", bsp.save(0)));
    let mut a = LocalApic::new(ApicConfig::new(1).with_cmci(true));
    a.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
    a.mmio_write(0, 0x320, &0x2_0030u32.to_le_bytes());
    a.mmio_write(0, 0x380, &100_000u32.to_le_bytes());
    a.mmio_write(0, 0x300, &0x4_0041u32.to_le_bytes());
    a.mmio_write(0, 0x300, &0x4_8062u32.to_le_bytes());
    a.acknowledge();
    v.push(("timer_isr", a.save(1234)));
    let mut x = LocalApic::new(ApicConfig::new(0x1_0005).with_bsp(true));
    x.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
    x.write_apic_base(0, 0xFEE0_0D00).unwrap();
    x.msr_write(0, 0x832, 0x4_0050).unwrap();
    x.msr_write(0, 0x6E0, 0).unwrap();
    v.push(("x2apic", x.save(0)));
    v
}

fn restore_and_kvm() {
    for (name, s) in states() {
        let mut b = vec![1u8];
        b.extend_from_slice(&[0u8; 32]);
        b.extend_from_slice(&serde_json::to_vec(&s).unwrap());
        out("restore", &format!("json_{name}"), &b);
        for (ids, tag) in [(IdFormat::Legacy, 0u8), (IdFormat::Full32, 1)] {
            let k = to_kvm(&s, ids);
            let base_idx = match k.apic_base {
                0xFEE0_0900 => 2,
                0xFEE0_0D00 => 4,
                _ => 1,
            };
            let mut b = vec![tag, base_idx, 2, 1, 0, 1];
            b.extend_from_slice(&k.view().to_bytes());
            out("kvm_blob", &format!("{name}_{tag}"), &b);
        }
    }
    // Structured restore seeds: a mutated valid state, an arbitrary one.
    out(
        "restore",
        "structured_mutated",
        &[0, 0, 3, 5, 5, 3, 3, 3, 2, 0, 4, 0, 5, 0],
    );
    out(
        "restore",
        "structured_arbitrary",
        &[0, 0, 3, 5, 5, 3, 3, 3, 2, 1, 1, 1, 0],
    );
}

fn main() {
    lapic_ops();
    fabric();
    ioapic();
    restore_and_kvm();
}
