//! `hello`: the first vlapic-vmm guest. Prints, reads fw_cfg, checks the
//! APIC ID and version, takes a self-IPI (xAPIC ICR, fixed, vector 0x40,
//! shorthand self) through the IDT, checks TPR masking and EOI, checks
//! that an x2APIC MSR raises #GP in xAPIC mode, and exits via port 0xF4.

#![no_std]
#![no_main]

use guest_support::apic::{self, reg};
use guest_support::cpu;
use guest_support::idt;
use guest_support::{check, check_eq, fw_cfg, out, skip, BootInfo};

const VEC: u8 = 0x40;

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
