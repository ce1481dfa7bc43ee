//! Helpers shared by the conformance guests (`conf_*`): check names are
//! printed with a mode prefix (`xapic: ` / `x2apic: `) so the same check
//! run in both modes has two stable names.

use crate::apic::{self, reg};
use crate::cpu;
use crate::test;

/// #GP vector.
pub const GP: u8 = 13;

/// CPUID.1:ECX.x2APIC.
pub fn x2apic_offered() -> bool {
    cpu::cpuid(1, 0).ecx & (1 << 21) != 0
}

/// CPUID.1:ECX.TSC-deadline.
pub fn tsc_deadline_offered() -> bool {
    cpu::cpuid(1, 0).ecx & (1 << 24) != 0
}

/// APIC bus (timer input) frequency in kHz: CPUID 0x40000010 EBX, else
/// KVM's 1 GHz.
pub fn bus_khz() -> u64 {
    let hv = cpu::cpuid(0x4000_0000, 0);
    if hv.eax >= 0x4000_0010 {
        let b = cpu::cpuid(0x4000_0010, 0).ebx;
        if b != 0 {
            return u64::from(b);
        }
    }
    1_000_000
}

/// Whether `r` is a #GP.
pub fn is_gp<T>(r: Result<T, u8>) -> bool {
    matches!(r, Err(GP))
}

/// The check-name prefix for the current mode.
pub fn pfx() -> &'static str {
    if apic::is_x2apic() {
        "x2apic: "
    } else {
        "xapic: "
    }
}

/// `check` with the mode prefix.
pub fn ok(name: &str, cond: bool) -> bool {
    test::check_pfx(pfx(), name, cond)
}

/// `check_eq` with the mode prefix.
pub fn eq(name: &str, got: u64, want: u64) -> bool {
    test::check_eq_pfx(pfx(), name, got, want)
}

/// `skip` with the mode prefix.
pub fn skip(name: &str, why: &str) {
    test::skip_pfx(pfx(), name, why)
}

/// Reports a failure with a detail value, with the mode prefix.
pub fn fail(name: &str, detail: &str, v: u64) {
    test::fail_pfx(pfx(), name, detail, v)
}

/// TSC ticks to nanoseconds.
pub fn tsc_to_ns(t: u64) -> u64 {
    (u128::from(t) * 1_000_000 / u128::from(cpu::tsc_khz().max(1))) as u64
}

/// Nanoseconds to TSC ticks.
pub fn ns_to_tsc(ns: u64) -> u64 {
    (u128::from(ns) * u128::from(cpu::tsc_khz()) / 1_000_000) as u64
}

/// ESR after the latching write (write 0, then read).
pub fn esr() -> u32 {
    apic::write(reg::ESR, 0);
    apic::read(reg::ESR)
}

/// Whether any bit of the 256-bit register at `first` is set.
pub fn any_bit(first: u32) -> bool {
    (0..8).any(|i| apic::read(first + 0x10 * i) != 0)
}

/// Switches xAPIC -> disabled -> xAPIC (a full APIC reset per the spec)
/// and tells the accessors.
pub fn reset_to_xapic() {
    let b = apic::base_msr() & !((1 << 10) | (1 << 11));
    cpu::wrmsr(apic::MSR_APIC_BASE, b);
    cpu::wrmsr(apic::MSR_APIC_BASE, b | (1 << 11));
    apic::set_mode_x2apic(false);
}
