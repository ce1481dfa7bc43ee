//! `hello`: the first vlapic-vmm guest. Prints, reads fw_cfg, checks the
//! APIC ID and version, takes a self-IPI (xAPIC ICR, fixed, vector 0x40,
//! shorthand self) through the IDT, checks TPR masking and EOI, checks
//! that an x2APIC MSR raises #GP in xAPIC mode, checks the APIC timer
//! (one-shot, periodic, TSC-deadline) against RDTSC, and exits via port
//! 0xF4.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

use guest_support::apic::{self, reg};
use guest_support::cpu;
use guest_support::idt;
use guest_support::{check, check_eq, fw_cfg, out, skip, BootInfo};

const VEC: u8 = 0x40;
const TIMER_VEC: u8 = 0x45;
/// RDTSC when the last timer interrupt arrived.
static TIMER_TSC: AtomicU64 = AtomicU64::new(0);

fn timer_hook(v: u8) {
    if v == TIMER_VEC {
        TIMER_TSC.store(cpu::rdtsc(), Relaxed);
    }
}

/// TSC cycles -> microseconds.
fn tsc_us(cycles: u64, khz: u64) -> u64 {
    cycles.saturating_mul(1000) / khz.max(1)
}

#[no_mangle]
pub fn guest_main(boot: &BootInfo) {
    out()
        .s("hello: vlapic test guest on cpu ")
        .dec(boot.cpu)
        .s(" of ")
        .dec(boot.cpus)
        .s(", ")
        .dec(boot.ram >> 20)
        .s(" MiB")
        .nl();

    check("fw_cfg signature is QEMU", fw_cfg::signature() == *b"QEMU");
    check_eq(
        "fw_cfg NB_CPUS = boot cpus",
        fw_cfg::read_le(0x05, 2),
        boot.cpus,
    );
    check_eq(
        "fw_cfg RAM_SIZE = boot ram",
        fw_cfg::read_le(0x03, 8),
        boot.ram,
    );

    let base = apic::base_msr();
    out().s("IA32_APIC_BASE = ").hex(base).nl();
    check(
        "APIC globally enabled (APIC_BASE.EN)",
        base & (1 << 11) != 0,
    );
    check("BSP flag set on cpu 0", base & (1 << 8) != 0);
    check_eq("APIC base is 0xfee00000", base & !0xfff, apic::XAPIC_BASE);
    let cpuid_id = cpu::cpuid(1, 0).ebx >> 24;
    check_eq(
        "APIC ID = CPUID.1:EBX[31:24]",
        u64::from(apic::id()),
        u64::from(cpuid_id),
    );
    check_eq(
        "APIC version is 0x14",
        u64::from(apic::read(reg::VERSION) & 0xff),
        0x14,
    );

    apic::sw_enable(0xff);
    idt::reset();
    cpu::sti();

    // Self-IPI through the ICR, delivered through the IDT, auto-EOI'd.
    apic::send_ipi(0, apic::ICR_SELF | u32::from(VEC));
    cpu::wait_us(100_000, || idt::count(VEC) >= 1);
    check_eq(
        "self-IPI 0x40 delivered once",
        u64::from(idt::count(VEC)),
        1,
    );
    check("ISR clear after EOI", !apic::bit(reg::ISR0, VEC));
    check("IRR clear after delivery", !apic::bit(reg::IRR0, VEC));

    // TPR above the vector's class holds it in IRR.
    apic::write(reg::TPR, 0x50);
    apic::send_ipi(0, apic::ICR_SELF | u32::from(VEC));
    cpu::wait_us(2_000, || idt::count(VEC) >= 2);
    check_eq(
        "self-IPI held while TPR=0x50",
        u64::from(idt::count(VEC)),
        1,
    );
    check("held vector pending in IRR", apic::bit(reg::IRR0, VEC));
    check_eq("CR8 mirrors TPR", cpu::read_cr8(), 5);
    apic::write(reg::TPR, 0);
    cpu::wait_us(100_000, || idt::count(VEC) >= 2);
    check_eq(
        "held self-IPI delivered after TPR=0",
        u64::from(idt::count(VEC)),
        2,
    );

    // In xAPIC mode the x2APIC MSRs fault.
    check_eq(
        "RDMSR 0x802 in xAPIC mode raises #GP",
        cpu::rdmsr_safe(0x802).err().map_or(0, u64::from),
        13,
    );
    if cpu::cpuid(1, 0).ecx & (1 << 24) != 0 {
        // LVT timer is in one-shot mode: the deadline MSR reads 0 and
        // ignores writes.
        cpu::wrmsr(apic::MSR_TSC_DEADLINE, cpu::rdtsc() + 1_000_000_000);
        check_eq(
            "IA32_TSC_DEADLINE reads 0 outside TSC-deadline mode",
            cpu::rdmsr(apic::MSR_TSC_DEADLINE),
            0,
        );
    } else {
        skip("IA32_TSC_DEADLINE", "CPUID.1:ECX.TSC_DEADLINE is clear");
    }
    nmi_check();
    relocation_check();
    timer_checks();
    x2apic_checks();
    cpu::cli();
    out().s("hello: done").nl();
}

fn x2apic_checks() {
    let base = apic::base_msr();
    if cpu::cpuid(1, 0).ecx & (1 << 21) == 0 {
        skip("x2APIC checks", "CPUID.1:ECX.x2APIC is clear");
        check_eq(
            "setting EXTD without CPUID x2APIC raises #GP",
            cpu::wrmsr_safe(apic::MSR_APIC_BASE, base | (1 << 10))
                .err()
                .map_or(0, u64::from),
            13,
        );
        return;
    }
    apic::enable_x2apic();
    check(
        "x2APIC mode enabled (APIC_BASE.EXTD)",
        apic::base_msr() & (1 << 10) != 0,
    );
    let id = cpu::rdmsr(0x802) as u32;
    check_eq(
        "x2APIC ID = CPUID.0xB:EDX",
        u64::from(id),
        u64::from(cpu::cpuid(0xb, 0).edx),
    );
    check_eq(
        "x2APIC LDR derived from the ID",
        cpu::rdmsr(0x80d),
        u64::from(((id >> 4) << 16) | (1 << (id & 0xf))),
    );
    cpu::sti();
    cpu::wrmsr(0x83f, 0x43);
    cpu::wait_us(100_000, || idt::count(0x43) >= 1);
    check_eq(
        "x2APIC SELF_IPI 0x43 delivered",
        u64::from(idt::count(0x43)),
        1,
    );
    apic::send_ipi(0, apic::ICR_SELF | 0x44);
    cpu::wait_us(100_000, || idt::count(0x44) >= 1);
    check_eq(
        "x2APIC ICR self-IPI 0x44 delivered",
        u64::from(idt::count(0x44)),
        1,
    );
    check_eq(
        "RDMSR SELF_IPI (write-only) raises #GP",
        cpu::rdmsr_safe(0x83f).err().map_or(0, u64::from),
        13,
    );
    check_eq(
        "RDMSR ICR2 0x831 raises #GP",
        cpu::rdmsr_safe(0x831).err().map_or(0, u64::from),
        13,
    );
    // Not checked here: the SDM says a non-zero x2APIC EOI write raises
    // #GP, but KVM's in-kernel LAPIC (the reference) accepts it.
}

/// The APIC timer against RDTSC: one-shot and periodic at the bus clock
/// CPUID 0x40000010 EBX advertises, and the TSC-deadline timer. Timing
/// is coarse here (emulated CPL0), so the checks are: not early (1%
/// slack for clock rounding), and not later than 50 ms.
fn timer_checks() {
    let hv = cpu::cpuid(0x4000_0000, 0).eax;
    let bus_khz = if hv >= 0x4000_0010 {
        u64::from(cpu::cpuid(0x4000_0010, 0).ebx)
    } else {
        0
    };
    let khz = cpu::tsc_khz();
    if bus_khz == 0 {
        skip(
            "APIC timer checks",
            "no APIC bus frequency in CPUID 0x40000010",
        );
        return;
    }
    idt::set_hook(Some(timer_hook));
    const LATE_US: u64 = 50_000;

    // Current count: a 1 s one-shot counts down (reads are far apart
    // here, so use a long period), and initial count 0 stops it.
    apic::write(reg::TDCR, 0xb);
    apic::write(reg::LVT_TIMER, u32::from(TIMER_VEC));
    let long = (bus_khz * 1000) as u32;
    apic::write(reg::TMICT, long);
    let cc1 = apic::read(reg::TMCCT);
    let cc2 = apic::read(reg::TMCCT);
    check(
        "one-shot: current count counts down from the initial count",
        cc1 > 0 && cc1 < long && cc2 < cc1,
    );
    apic::write(reg::TMICT, 0);
    check_eq(
        "initial count 0 stops the timer (current count 0)",
        u64::from(apic::read(reg::TMCCT)),
        0,
    );

    // One-shot, divide by 1, 2 ms.
    let us = 2_000;
    let before = idt::count(TIMER_VEC);
    let t0 = cpu::rdtsc();
    apic::write(reg::TMICT, (bus_khz * us / 1000) as u32);
    cpu::wait_us(LATE_US * 4, || idt::count(TIMER_VEC) > before);
    check_eq(
        "one-shot timer fired once",
        u64::from(idt::count(TIMER_VEC) - before),
        1,
    );
    let took = tsc_us(TIMER_TSC.load(Relaxed).wrapping_sub(t0), khz);
    out()
        .s("one-shot 2000 us: interrupt after ")
        .dec(took)
        .s(" us")
        .nl();
    check("one-shot timer not early", took >= us - us / 100);
    check("one-shot timer within 50 ms", took <= us + LATE_US);
    check_eq(
        "one-shot: current count 0 after expiry",
        u64::from(apic::read(reg::TMCCT)),
        0,
    );
    cpu::delay_us(3_000);
    check_eq(
        "one-shot timer does not fire again",
        u64::from(idt::count(TIMER_VEC) - before),
        1,
    );

    // Periodic, divide by 2, 1 ms period: three interrupts.
    let period = 1_000;
    apic::write(reg::TDCR, 0x0);
    apic::write(reg::LVT_TIMER, u32::from(TIMER_VEC) | (1 << 17));
    let before = idt::count(TIMER_VEC);
    let t0 = cpu::rdtsc();
    apic::write(reg::TMICT, (bus_khz * period / 2000) as u32);
    let got = cpu::wait_us(LATE_US * 4, || idt::count(TIMER_VEC) - before >= 3);
    let t3 = TIMER_TSC.load(Relaxed);
    apic::write(reg::TMICT, 0);
    check("periodic timer fired 3 times", got);
    let took = tsc_us(t3.wrapping_sub(t0), khz);
    out()
        .s("periodic 3 x 1000 us: third interrupt after ")
        .dec(took)
        .s(" us")
        .nl();
    check(
        "periodic timer: 3 periods not early",
        took >= 3 * period - 3 * period / 100,
    );
    let n = idt::count(TIMER_VEC);
    cpu::delay_us(3_000);
    check_eq(
        "periodic timer stopped by initial count 0",
        u64::from(idt::count(TIMER_VEC)),
        u64::from(n),
    );

    // TSC deadline, 2 ms ahead.
    if cpu::cpuid(1, 0).ecx & (1 << 24) == 0 {
        skip("TSC-deadline timer", "CPUID.1:ECX.TSC_Deadline is clear");
    } else {
        apic::write(reg::LVT_TIMER, u32::from(TIMER_VEC) | (2 << 17));
        let before = idt::count(TIMER_VEC);
        // Read-back with a deadline 1 s away (reads are far apart here).
        let far = cpu::rdtsc() + 1_000_000 * khz / 1000;
        cpu::wrmsr(apic::MSR_TSC_DEADLINE, far);
        check_eq(
            "IA32_TSC_DEADLINE reads back the armed deadline",
            cpu::rdmsr(apic::MSR_TSC_DEADLINE),
            far,
        );
        // Rewriting moves the deadline: 2 ms from now.
        let deadline = cpu::rdtsc() + 2_000 * khz / 1000;
        cpu::wrmsr(apic::MSR_TSC_DEADLINE, deadline);
        cpu::wait_us(LATE_US * 4, || idt::count(TIMER_VEC) > before);
        check_eq(
            "TSC-deadline timer fired once",
            u64::from(idt::count(TIMER_VEC) - before),
            1,
        );
        let at = TIMER_TSC.load(Relaxed);
        let late = at.wrapping_sub(deadline) as i64;
        out()
            .s("TSC deadline: interrupt at deadline ")
            .s(if late < 0 { "- " } else { "+ " })
            .dec(tsc_us(late.unsigned_abs(), khz))
            .s(" us")
            .nl();
        // Slack: 20 us for the VMM's TSC <-> clock mapping.
        check(
            "TSC-deadline timer not early (RDTSC in the handler >= deadline)",
            late >= -(20 * khz as i64 / 1000),
        );
        check(
            "TSC-deadline timer within 50 ms",
            late <= (LATE_US * khz / 1000) as i64,
        );
        check_eq(
            "IA32_TSC_DEADLINE reads 0 after it fired",
            cpu::rdmsr(apic::MSR_TSC_DEADLINE),
            0,
        );
        // A deadline in the past fires at once.
        let before = idt::count(TIMER_VEC);
        cpu::wrmsr(apic::MSR_TSC_DEADLINE, cpu::rdtsc() - 1);
        cpu::wait_us(LATE_US, || idt::count(TIMER_VEC) > before);
        check_eq(
            "TSC deadline in the past fires at once",
            u64::from(idt::count(TIMER_VEC) - before),
            1,
        );
    }
    apic::write(reg::LVT_TIMER, (1 << 16) | u32::from(TIMER_VEC));
    idt::set_hook(None);
}

/// An NMI IPI to this CPU's own APIC ID (physical destination) arrives
/// even with IF=0. It is caught with the fault fix-up: the handler
/// resumes at label 2 and records vector 2; without an NMI the loop runs
/// out and nothing is recorded.
fn nmi_check() {
    let id = apic::id();
    cpu::cli();
    idt::arm_fault();
    unsafe {
        core::arch::asm!(
            "lea {t}, [rip + 2f]",
            "mov qword ptr [rip + {fix}], {t}",
            "mov dword ptr [{icr2}], {dest:e}",
            "mov dword ptr [{icr}], {lo:e}",
            "mov ecx, 20000",
            "3:",
            "pause",
            "dec ecx",
            "jnz 3b",
            "2:",
            t = out(reg) _,
            fix = sym idt::FAULT_FIXUP,
            icr2 = in(reg) apic::XAPIC_BASE + u64::from(reg::ICR2),
            icr = in(reg) apic::XAPIC_BASE + u64::from(reg::ICR),
            dest = in(reg) id << 24,
            lo = in(reg) apic::ICR_NMI | apic::ICR_ASSERT,
            out("ecx") _,
            options(nostack),
        );
    }
    let got = idt::take_fault();
    cpu::sti();
    check_eq(
        "NMI IPI to own APIC ID delivered with IF=0 (vector 2)",
        got.map_or(0xff, u64::from),
        2,
    );
}

/// IA32_APIC_BASE moves the xAPIC MMIO window: the registers answer at
/// the new base and the old page no longer decodes; moving back restores
/// it.
fn relocation_check() {
    const NEW: u64 = 0xfed0_0000;
    let base = apic::base_msr();
    let id_old = unsafe { cpu::mmio_read32(apic::XAPIC_BASE + u64::from(reg::ID)) };
    cpu::wrmsr(apic::MSR_APIC_BASE, (base & 0xfff) | NEW);
    check_eq(
        "APIC_BASE relocated to 0xfed00000",
        apic::base_msr() & !0xfff,
        NEW,
    );
    let id_new = unsafe { cpu::mmio_read32(NEW + u64::from(reg::ID)) };
    let ver_new = unsafe { cpu::mmio_read32(NEW + u64::from(reg::VERSION)) } & 0xff;
    let old = unsafe { cpu::mmio_read32(apic::XAPIC_BASE + u64::from(reg::VERSION)) };
    cpu::wrmsr(apic::MSR_APIC_BASE, base);
    check(
        "relocated APIC answers at the new base (ID, version 0x14)",
        id_new == id_old && ver_new == 0x14,
    );
    check(
        "old APIC page does not decode after relocation",
        old & 0xff != 0x14,
    );
    check_eq(
        "APIC answers at the default base again after moving back",
        u64::from(apic::read(reg::VERSION) & 0xff),
        0x14,
    );
}
