//! Thin wrappers over privileged x86 instructions.

use core::arch::asm;

/// `OUT imm8/dx, al`.
#[inline(always)]
pub unsafe fn outb(port: u16, v: u8) {
    asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags));
}
/// `OUT dx, ax`.
#[inline(always)]
pub unsafe fn outw(port: u16, v: u16) {
    asm!("out dx, ax", in("dx") port, in("ax") v, options(nomem, nostack, preserves_flags));
}
/// `OUT dx, eax`.
#[inline(always)]
pub unsafe fn outl(port: u16, v: u32) {
    asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags));
}
/// `IN al, dx`.
#[inline(always)]
pub unsafe fn inb(port: u16) -> u8 {
    let v: u8;
    asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack, preserves_flags));
    v
}

/// `RDMSR` (faults with #GP on a refused MSR; see [`rdmsr_safe`]).
#[inline(always)]
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    unsafe {
        asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// `WRMSR`.
#[inline(always)]
pub fn wrmsr(msr: u32, v: u64) {
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// `RDMSR` that catches an exception: `Err(vector)` (13 = #GP) if it faulted.
pub fn rdmsr_safe(msr: u32) -> Result<u64, u8> {
    let (lo, hi): (u32, u32);
    crate::idt::arm_fault();
    unsafe {
        asm!(
            "lea {t}, [rip + 2f]",
            "mov qword ptr [rip + {fix}], {t}",
            "rdmsr",
            "2:",
            t = out(reg) _,
            fix = sym crate::idt::FAULT_FIXUP,
            in("ecx") msr, out("eax") lo, out("edx") hi,
            options(nostack),
        )
    };
    crate::idt::take_fault().map_or(Ok((u64::from(hi) << 32) | u64::from(lo)), Err)
}

/// `WRMSR` that catches an exception: `Err(vector)` if it faulted.
pub fn wrmsr_safe(msr: u32, v: u64) -> Result<(), u8> {
    crate::idt::arm_fault();
    unsafe {
        asm!(
            "lea {t}, [rip + 2f]",
            "mov qword ptr [rip + {fix}], {t}",
            "wrmsr",
            "2:",
            t = out(reg) _,
            fix = sym crate::idt::FAULT_FIXUP,
            in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32,
            options(nostack),
        )
    };
    crate::idt::take_fault().map_or(Ok(()), Err)
}

/// `RDTSC`.
#[inline(always)]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// `HLT` (returns after the next interrupt if IF=1).
#[inline(always)]
pub fn hlt() {
    unsafe { asm!("hlt", options(nomem, nostack, preserves_flags)) };
}

/// `STI; HLT`: enables interrupts and halts atomically (no lost wake-up).
#[inline(always)]
pub fn sti_hlt() {
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
}

/// `STI`.
#[inline(always)]
pub fn sti() {
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// `CLI`.
#[inline(always)]
pub fn cli() {
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// `PAUSE`.
#[inline(always)]
pub fn pause() {
    unsafe { asm!("pause", options(nomem, nostack, preserves_flags)) };
}

/// Reads CR8 (TPR[7:4]).
#[inline(always)]
pub fn read_cr8() -> u64 {
    let v: u64;
    unsafe { asm!("mov {}, cr8", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Writes CR8.
#[inline(always)]
pub fn write_cr8(v: u64) {
    unsafe { asm!("mov cr8, {}", in(reg) v, options(nomem, nostack, preserves_flags)) };
}

/// Current CS selector.
#[inline(always)]
pub fn cs() -> u16 {
    let v: u16;
    unsafe { asm!("mov {0:x}, cs", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// CPUID result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cpuid {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

/// `CPUID` leaf/subleaf.
pub fn cpuid(leaf: u32, sub: u32) -> Cpuid {
    let (eax, ebx, ecx, edx): (u32, u32, u32, u32);
    unsafe {
        asm!(
            "mov {t:r}, rbx",
            "cpuid",
            "xchg {t:r}, rbx",
            t = out(reg) ebx,
            inout("eax") leaf => eax,
            inout("ecx") sub => ecx,
            out("edx") edx,
            options(nomem, nostack, preserves_flags),
        )
    };
    Cpuid { eax, ebx, ecx, edx }
}

/// Volatile 32-bit MMIO read.
#[inline(always)]
pub unsafe fn mmio_read32(addr: u64) -> u32 {
    core::ptr::read_volatile(addr as *const u32)
}

/// Volatile 32-bit MMIO write.
#[inline(always)]
pub unsafe fn mmio_write32(addr: u64, v: u32) {
    core::ptr::write_volatile(addr as *mut u32, v)
}

/// Guest TSC frequency in kHz, from the hypervisor timing leaf
/// 0x40000010, else CPUID 0x15, else a 2 GHz guess.
pub fn tsc_khz() -> u64 {
    let hv = cpuid(0x4000_0000, 0);
    if hv.eax >= 0x4000_0010 {
        let t = cpuid(0x4000_0010, 0).eax;
        if t != 0 {
            return u64::from(t);
        }
    }
    if cpuid(0, 0).eax >= 0x15 {
        let l = cpuid(0x15, 0);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return u64::from(l.ecx) / 1000 * u64::from(l.ebx) / u64::from(l.eax);
        }
    }
    2_000_000
}

/// Spins until `cond` holds or `us` microseconds (TSC) have passed.
/// Returns the final value of `cond`.
pub fn wait_us(us: u64, cond: impl Fn() -> bool) -> bool {
    let end = rdtsc().wrapping_add(us.saturating_mul(tsc_khz()) / 1000);
    loop {
        if cond() {
            return true;
        }
        if (rdtsc().wrapping_sub(end) as i64) >= 0 {
            return cond();
        }
        pause();
    }
}

/// Busy-waits `us` microseconds.
pub fn delay_us(us: u64) {
    wait_us(us, || false);
}

/// Volatile 8-bit MMIO read.
#[inline(always)]
pub unsafe fn mmio_read8(addr: u64) -> u8 {
    core::ptr::read_volatile(addr as *const u8)
}

/// Volatile 16-bit MMIO read.
#[inline(always)]
pub unsafe fn mmio_read16(addr: u64) -> u16 {
    core::ptr::read_volatile(addr as *const u16)
}

/// Volatile 8-bit MMIO write.
#[inline(always)]
pub unsafe fn mmio_write8(addr: u64, v: u8) {
    core::ptr::write_volatile(addr as *mut u8, v)
}

/// Opens an interrupt window (`STI`, about `spins` `PAUSE`s, `CLI`) in
/// which an interrupt arriving on an exception vector (0-31, e.g. an
/// APIC that accepted an illegal vector) is caught instead of being
/// reported as an unexpected exception: returns `Some(vector)` then.
/// Interrupts on vectors >= 32 are handled normally. Use only for
/// vectors whose exception pushes no error code. Leaves IF = 0.
pub fn irq_window_catching(spins: u32) -> Option<u8> {
    crate::idt::arm_fault();
    unsafe {
        core::arch::asm!(
            "lea {t}, [rip + 2f]",
            "mov qword ptr [rip + {fix}], {t}",
            "sti",
            "3:",
            "pause",
            "dec {n:e}",
            "jnz 3b",
            "2:",
            "cli",
            t = out(reg) _,
            n = inout(reg) spins.max(1) => _,
            fix = sym crate::idt::FAULT_FIXUP,
            options(nostack),
        )
    };
    crate::idt::take_fault()
}
