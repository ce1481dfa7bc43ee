//! Local APIC access in xAPIC (MMIO) or x2APIC (MSR) mode.

use core::sync::atomic::{AtomicBool, Ordering::Relaxed};

use crate::cpu::{mmio_read32, mmio_write32, rdmsr, wrmsr};

/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1b;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// Default xAPIC MMIO base.
pub const XAPIC_BASE: u64 = 0xfee0_0000;

/// Register offsets (xAPIC MMIO offsets; x2APIC MSR = 0x800 + off/16).
pub mod reg {
    /// APIC ID.
    pub const ID: u32 = 0x20;
    /// Version.
    pub const VERSION: u32 = 0x30;
    /// Task priority.
    pub const TPR: u32 = 0x80;
    /// Processor priority.
    pub const PPR: u32 = 0xa0;
    /// End of interrupt.
    pub const EOI: u32 = 0xb0;
    /// Logical destination.
    pub const LDR: u32 = 0xd0;
    /// Destination format (xAPIC only).
    pub const DFR: u32 = 0xe0;
    /// Spurious interrupt vector.
    pub const SVR: u32 = 0xf0;
    /// In-service register, first of 8.
    pub const ISR0: u32 = 0x100;
    /// Trigger mode register, first of 8.
    pub const TMR0: u32 = 0x180;
    /// Interrupt request register, first of 8.
    pub const IRR0: u32 = 0x200;
    /// Error status.
    pub const ESR: u32 = 0x280;
    /// Interrupt command (low).
    pub const ICR: u32 = 0x300;
    /// Interrupt command (high, xAPIC only).
    pub const ICR2: u32 = 0x310;
    /// LVT timer.
    pub const LVT_TIMER: u32 = 0x320;
    /// LVT LINT0.
    pub const LVT_LINT0: u32 = 0x350;
    /// LVT LINT1.
    pub const LVT_LINT1: u32 = 0x360;
    /// LVT error.
    pub const LVT_ERROR: u32 = 0x370;
    /// Timer initial count.
    pub const TMICT: u32 = 0x380;
    /// Timer current count.
    pub const TMCCT: u32 = 0x390;
    /// Timer divide configuration.
    pub const TDCR: u32 = 0x3e0;
    /// Self IPI (x2APIC only).
    pub const SELF_IPI: u32 = 0x3f0;
}

/// ICR shorthand "self".
pub const ICR_SELF: u32 = 1 << 18;
/// ICR shorthand "all including self".
pub const ICR_ALL: u32 = 2 << 18;
/// ICR shorthand "all excluding self".
pub const ICR_OTHERS: u32 = 3 << 18;
/// ICR level assert.
pub const ICR_ASSERT: u32 = 1 << 14;
/// ICR delivery mode NMI.
pub const ICR_NMI: u32 = 4 << 8;
/// ICR delivery mode INIT.
pub const ICR_INIT: u32 = 5 << 8;
/// ICR delivery mode Start-up.
pub const ICR_STARTUP: u32 = 6 << 8;

static X2APIC: AtomicBool = AtomicBool::new(false);

/// Whether accesses currently go through x2APIC MSRs.
pub fn is_x2apic() -> bool {
    X2APIC.load(Relaxed)
}

/// IA32_APIC_BASE value.
pub fn base_msr() -> u64 {
    rdmsr(MSR_APIC_BASE)
}

/// Switches the APIC to x2APIC mode (EN | EXTD).
pub fn enable_x2apic() {
    wrmsr(MSR_APIC_BASE, base_msr() | (1 << 10) | (1 << 11));
    X2APIC.store(true, Relaxed);
}

/// Tells the accessors which mode the APIC is in (e.g. after a mode
/// change done by hand).
pub fn set_mode_x2apic(on: bool) {
    X2APIC.store(on, Relaxed);
}

/// Reads register `off`.
pub fn read(off: u32) -> u32 {
    if is_x2apic() {
        rdmsr(0x800 + (off >> 4)) as u32
    } else {
        unsafe { mmio_read32(XAPIC_BASE + u64::from(off)) }
    }
}

/// Writes register `off`.
pub fn write(off: u32, v: u32) {
    if is_x2apic() {
        wrmsr(0x800 + (off >> 4), u64::from(v))
    } else {
        unsafe { mmio_write32(XAPIC_BASE + u64::from(off), v) }
    }
}

/// Sends an IPI: `lo` = ICR[31:0], `dest` = destination APIC ID.
pub fn send_ipi(dest: u32, lo: u32) {
    if is_x2apic() {
        wrmsr(0x830, (u64::from(dest) << 32) | u64::from(lo));
    } else {
        write(reg::ICR2, dest << 24);
        write(reg::ICR, lo);
    }
}

/// Writes EOI.
pub fn eoi() {
    write(reg::EOI, 0);
}

/// Software-enables the APIC with spurious vector `spurious`.
pub fn sw_enable(spurious: u8) {
    write(reg::SVR, 0x100 | u32::from(spurious));
}

/// This CPU's APIC ID (xAPIC: bits 31:24; x2APIC: whole register).
pub fn id() -> u32 {
    let v = read(reg::ID);
    if is_x2apic() {
        v
    } else {
        v >> 24
    }
}

/// Whether bit `vector` is set in the 256-bit register starting at `first`.
pub fn bit(first: u32, vector: u8) -> bool {
    read(first + 0x10 * (u32::from(vector) / 32)) & (1 << (vector % 32)) != 0
}
