//! Helpers shared by the rule tests.
#![allow(dead_code)]

use vlapic::{ApicConfig, LocalApic, Message};

pub const ID: u64 = 0x020;
pub const VERSION: u64 = 0x030;
pub const TPR: u64 = 0x080;
pub const APR: u64 = 0x090;
pub const PPR: u64 = 0x0A0;
pub const EOI: u64 = 0x0B0;
pub const LDR: u64 = 0x0D0;
pub const DFR: u64 = 0x0E0;
pub const SVR: u64 = 0x0F0;
pub const ISR0: u64 = 0x100;
pub const TMR0: u64 = 0x180;
pub const IRR0: u64 = 0x200;
pub const ESR: u64 = 0x280;
pub const LVT_CMCI: u64 = 0x2F0;
pub const ICR_LO: u64 = 0x300;
pub const ICR_HI: u64 = 0x310;
pub const LVT_TIMER: u64 = 0x320;
pub const LVT_THERMAL: u64 = 0x330;
pub const LVT_PERF: u64 = 0x340;
pub const LVT_LINT0: u64 = 0x350;
pub const LVT_LINT1: u64 = 0x360;
pub const LVT_ERROR: u64 = 0x370;
pub const TMICT: u64 = 0x380;
pub const TMCCT: u64 = 0x390;
pub const TDCR: u64 = 0x3E0;

pub const MSR_APIC_BASE: u32 = 0x1B;
pub const MSR_TSC_DEADLINE: u32 = 0x6E0;

/// x2APIC MSR for an xAPIC offset.
pub const fn msr(offset: u64) -> u32 {
    0x800 + (offset >> 4) as u32
}

/// A BSP APIC, x2APIC/TSC-deadline offered, no timer clamp.
pub fn cfg(id: u32) -> ApicConfig {
    ApicConfig::new(id)
        .with_bsp(id == 0)
        .with_min_periodic_ns(0)
}

/// A software-enabled xAPIC.
pub fn xapic(id: u32) -> LocalApic {
    let mut a = LocalApic::new(cfg(id));
    w(&mut a, SVR, 0x1FF);
    a
}

/// A software-enabled x2APIC.
pub fn x2apic(id: u32) -> LocalApic {
    let mut a = xapic(id);
    a.msr_write(
        0,
        MSR_APIC_BASE,
        0xFEE0_0C00 | if id == 0 { 0x100 } else { 0 },
    )
    .unwrap();
    a
}

pub fn w(a: &mut LocalApic, off: u64, val: u32) -> Option<Message> {
    a.mmio_write(0, off, &val.to_le_bytes())
}

pub fn wt(a: &mut LocalApic, now: u64, off: u64, val: u32) -> Option<Message> {
    a.mmio_write(now, off, &val.to_le_bytes())
}

pub fn r(a: &mut LocalApic, off: u64) -> u32 {
    rt(a, 0, off)
}

pub fn rt(a: &mut LocalApic, now: u64, off: u64) -> u32 {
    let mut b = [0u8; 4];
    a.mmio_read(now, off, &mut b);
    u32::from_le_bytes(b)
}

/// Reads ESR the way software must: write, then read.
pub fn esr(a: &mut LocalApic) -> u32 {
    w(a, ESR, 0);
    r(a, ESR)
}

/// Self-IPI of `vector` through the xAPIC ICR.
pub fn self_ipi(a: &mut LocalApic, vector: u8) -> Option<Message> {
    w(a, ICR_LO, 0x0004_0000 | vector as u32)
}

/// Takes the pending interrupt, returning the vector the CPU got.
pub fn take(a: &mut LocalApic) -> Option<u8> {
    a.poll(0).interrupt.map(|_| a.acknowledge())
}
