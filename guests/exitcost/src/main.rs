//! `exitcost`: measures, with the TSC, what common operations cost in
//! this VM (exits to the VMM, in-kernel exits, APIC accesses, a self-IPI
//! round trip, plain guest instructions) and prints `bench:` lines.

#![no_std]
#![no_main]

use guest_support::apic::{self, reg};
use guest_support::cpu;
use guest_support::idt;
use guest_support::{check, out, BootInfo};

fn report(name: &str, iters: u64, cycles: u64, khz: u64) {
    let ns = cycles * 1_000_000 / khz.max(1) / iters.max(1);
    out()
        .s("bench: ")
        .s(name)
        .s(": ")
        .dec(ns)
        .s(" ns/op (")
        .dec(iters)
        .s(" ops)")
        .nl();
}

fn measure(name: &str, iters: u64, khz: u64, f: impl Fn()) {
    let t0 = cpu::rdtsc();
    for _ in 0..iters {
        f();
    }
    report(name, iters, cpu::rdtsc().wrapping_sub(t0), khz);
}

#[no_mangle]
pub fn guest_main(_boot: &BootInfo) {
    let khz = cpu::tsc_khz();
    out().s("bench: TSC ").dec(khz).s(" kHz").nl();
    measure("loop iteration (guest code only)", 20_000, khz, || unsafe {
        core::arch::asm!("", options(nomem, nostack));
    });
    measure(
        "OUT to an unclaimed port (exit to VMM)",
        1000,
        khz,
        || unsafe { cpu::outb(0x80, 0) },
    );
    measure("CPUID (in-kernel exit)", 1000, khz, || {
        core::hint::black_box(cpu::cpuid(0, 0));
    });
    measure("RDMSR IA32_APIC_BASE", 1000, khz, || {
        core::hint::black_box(cpu::rdmsr(apic::MSR_APIC_BASE));
    });
    measure("xAPIC TPR read (MMIO)", 1000, khz, || {
        core::hint::black_box(apic::read(reg::TPR));
    });
    measure("xAPIC TPR write (MMIO)", 1000, khz, || {
        apic::write(reg::TPR, 0)
    });
    apic::sw_enable(0xff);
    idt::reset();
    cpu::sti();
    let n = 200u64;
    let t0 = cpu::rdtsc();
    let mut ok = true;
    for i in 0..n {
        apic::send_ipi(0, apic::ICR_SELF | 0x40);
        ok &= cpu::wait_us(100_000, || u64::from(idt::count(0x40)) > i);
    }
    report(
        "self-IPI round trip (ICR write .. handler .. EOI)",
        n,
        cpu::rdtsc().wrapping_sub(t0),
        khz,
    );
    let t0 = cpu::rdtsc();
    for i in 0..n {
        apic::send_ipi(0, apic::ICR_SELF | 0x41);
        let mut spins = 0u32;
        while u64::from(idt::count(0x41)) <= i && spins < 1_000_000 {
            spins += 1;
        }
        ok &= u64::from(idt::count(0x41)) > i;
    }
    report(
        "self-IPI round trip, spinning without PAUSE",
        n,
        cpu::rdtsc().wrapping_sub(t0),
        khz,
    );
    measure("PAUSE", 1000, khz, cpu::pause);
    check("every self-IPI arrived", ok);
    cpu::cli();
}
