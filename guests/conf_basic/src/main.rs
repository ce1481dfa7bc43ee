//! `conf_basic`: single-CPU conformance checks of the local APIC (spec
//! sections 1-4 and 7 for the BSP): reset values, register file and
//! access paths, IA32_APIC_BASE modes and their #GP cases, ID/LDR/DFR,
//! TPR/PPR/CR8, priority order and nesting, EOI, TMR, SVR and software
//! disable, ESR and LVT Error, illegal vectors, LVT write masks. The
//! mode-independent part runs in xAPIC mode and again in x2APIC mode
//! (names prefixed `xapic: ` / `x2apic: `); without CPUID x2APIC the
//! x2APIC part prints SKIP lines.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU8, Ordering::Relaxed};

use guest_support::apic::{self, reg};
use guest_support::conf::{self, eq, is_gp, ok, skip};
use guest_support::cpu::{self, mmio_read16, mmio_read32, mmio_read8, mmio_write32, mmio_write8};
use guest_support::idt;
use guest_support::{out, BootInfo};

const EN: u64 = 1 << 11;
const EXTD: u64 = 1 << 10;
const BSP: u64 = 1 << 8;
const XB: u64 = apic::XAPIC_BASE;

/// LVT registers other than CMCI: timer, thermal, perfmon, LINT0, LINT1, error.
const LVTS: [(u32, &str); 6] = [
    (reg::LVT_TIMER, "timer"),
    (0x330, "thermal"),
    (0x340, "perfmon"),
    (reg::LVT_LINT0, "LINT0"),
    (reg::LVT_LINT1, "LINT1"),
    (reg::LVT_ERROR, "error"),
];

// What the interrupt hook does (see `hook`).
static SCENARIO: AtomicU8 = AtomicU8::new(0);
static REC: [AtomicU32; 8] = [const { AtomicU32::new(0) }; 8];
static NMIS: AtomicU32 = AtomicU32::new(0);

const S_NONE: u8 = 0;
const S_PPR: u8 = 1;
const S_NEST: u8 = 2;
const S_EOI: u8 = 3;
const S_TMR: u8 = 4;

fn rec(i: usize, v: u32) {
    REC[i].store(v, Relaxed);
}
fn got(i: usize) -> u32 {
    REC[i].load(Relaxed)
}

fn self_ipi(v: u8) {
    apic::send_ipi(0, apic::ICR_SELF | u32::from(v));
}

fn wait_count(v: u8, n: u32) -> bool {
    cpu::wait_us(20_000, || idt::count(v) >= n)
}

fn hook(v: u8) {
    match (SCENARIO.load(Relaxed), v) {
        (S_PPR, 0x61) => {
            rec(0, apic::read(reg::PPR));
            rec(1, u32::from(apic::bit(reg::ISR0, 0x61)));
            rec(2, u32::from(apic::bit(reg::IRR0, 0x61)));
            apic::write(reg::TPR, 0x72);
            rec(3, apic::read(reg::PPR));
            apic::write(reg::TPR, 0x35);
        }
        (S_NEST, 0x46) => {
            self_ipi(0x4b);
            self_ipi(0x93);
            cpu::sti();
            cpu::wait_us(20_000, || idt::count(0x93) >= 1);
            cpu::delay_us(500);
            cpu::cli();
            rec(0, idt::count(0x93));
            rec(1, idt::count(0x4b));
        }
        (S_EOI, 0x47) => {
            self_ipi(0x94);
            cpu::sti();
            cpu::wait_us(20_000, || idt::count(0x94) >= 1);
            cpu::cli();
            rec(
                0,
                u32::from(apic::bit(reg::ISR0, 0x47)) | u32::from(apic::bit(reg::ISR0, 0x94)) << 1,
            );
            rec(1, apic::read(reg::PPR));
            apic::eoi();
            rec(
                2,
                u32::from(apic::bit(reg::ISR0, 0x47)) | u32::from(apic::bit(reg::ISR0, 0x94)) << 1,
            );
            rec(3, apic::read(reg::PPR));
            apic::eoi();
            rec(
                4,
                u32::from(apic::bit(reg::ISR0, 0x47)) | u32::from(apic::bit(reg::ISR0, 0x94)) << 1,
            );
        }
        (S_TMR, 0x48) => {
            let n = idt::count(0x48);
            rec(n as usize & 7, u32::from(apic::bit(reg::TMR0, 0x48)) | 2);
        }
        _ => {}
    }
}

fn nmi() {
    NMIS.store(NMIS.load(Relaxed) + 1, Relaxed);
}

#[no_mangle]
pub fn guest_main(boot: &BootInfo) {
    out()
        .s("conf_basic: cpu ")
        .dec(boot.cpu)
        .s(" of ")
        .dec(boot.cpus)
        .nl();
    idt::set_hook(Some(hook));
    idt::set_nmi_hook(Some(nmi));
    reset_values();
    apic_base_xapic();
    apic::sw_enable(0xff);
    xapic_registers();
    lvt_masks();
    common();
    if conf::x2apic_offered() {
        apic::enable_x2apic();
        x2apic_entry();
        x2apic_registers();
        lvt_masks();
        common();
        x2apic_exit();
    } else {
        apic::set_mode_x2apic(true);
        for s in [
            "entry and ID/LDR",
            "register #GP rules",
            "LVT masks",
            "priority/EOI/SVR/ESR",
            "leaving x2APIC",
        ] {
            skip(s, "CPUID.1:ECX.x2APIC is clear");
        }
        apic::set_mode_x2apic(false);
        let b = apic::base_msr();
        ok(
            "EXTD without CPUID x2APIC raises #GP",
            is_gp(cpu::wrmsr_safe(apic::MSR_APIC_BASE, b | EXTD)),
        );
    }
    cpu::cli();
    out().s("conf_basic: done").nl();
}

/// Spec 7: power-on values on the BSP (nothing has touched the APIC yet).
fn reset_values() {
    eq(
        "reset: APIC_BASE on the BSP",
        apic::base_msr(),
        XB | EN | BSP,
    );
    eq(
        "reset: ID = CPUID initial APIC ID",
        u64::from(apic::read(reg::ID)),
        u64::from(cpu::cpuid(1, 0).ebx >> 24) << 24,
    );
    let ver = apic::read(reg::VERSION);
    eq("reset: version 0x14", u64::from(ver & 0xff), 0x14);
    let maxlvt = (ver >> 16) & 0xff;
    ok("reset: max LVT entry is 5 or 6", maxlvt == 5 || maxlvt == 6);
    for (r, n) in [
        (reg::TPR, "reset: TPR = 0"),
        (reg::PPR, "reset: PPR = 0"),
        (reg::LDR, "reset: LDR = 0"),
        (reg::ESR, "reset: ESR = 0"),
        (reg::ICR, "reset: ICR = 0"),
        (reg::ICR2, "reset: ICR2 = 0"),
        (reg::TMICT, "reset: TMICT = 0"),
        (reg::TMCCT, "reset: TMCCT = 0"),
        (reg::TDCR, "reset: TDCR = 0"),
    ] {
        eq(n, u64::from(apic::read(r)), 0);
    }
    eq("reset: CR8 = 0", cpu::read_cr8(), 0);
    eq(
        "reset: DFR = 0xFFFFFFFF",
        u64::from(apic::read(reg::DFR)),
        0xffff_ffff,
    );
    eq("reset: SVR = 0xFF", u64::from(apic::read(reg::SVR)), 0xff);
    ok("reset: IRR empty", !conf::any_bit(reg::IRR0));
    ok("reset: ISR empty", !conf::any_bit(reg::ISR0));
    ok("reset: TMR empty", !conf::any_bit(reg::TMR0));
    eq(
        "reset: LVT timer = 0x10000",
        u64::from(apic::read(reg::LVT_TIMER)),
        0x10000,
    );
    eq(
        "reset: LVT thermal = 0x10000",
        u64::from(apic::read(0x330)),
        0x10000,
    );
    eq(
        "reset: LVT perfmon = 0x10000",
        u64::from(apic::read(0x340)),
        0x10000,
    );
    eq(
        "reset: LVT LINT0 = 0x10000",
        u64::from(apic::read(reg::LVT_LINT0)),
        0x10000,
    );
    eq(
        "reset: LVT LINT1 = 0x10000",
        u64::from(apic::read(reg::LVT_LINT1)),
        0x10000,
    );
    eq(
        "reset: LVT error = 0x10000",
        u64::from(apic::read(reg::LVT_ERROR)),
        0x10000,
    );
    if maxlvt >= 6 {
        eq(
            "reset: LVT CMCI = 0x10000",
            u64::from(apic::read(0x2f0)),
            0x10000,
        );
    } else {
        conf::skip("reset: LVT CMCI = 0x10000", "no CMCI LVT (max LVT 5)");
    }
}

fn maxphyaddr() -> u32 {
    if cpu::cpuid(0x8000_0000, 0).eax >= 0x8000_0008 {
        cpu::cpuid(0x8000_0008, 0).eax & 0xff
    } else {
        36
    }
}

/// Spec 2 from xAPIC mode: reserved bits, invalid state, BSP bit,
/// hardware disable / re-enable, base relocation.
fn apic_base_xapic() {
    let b = apic::base_msr();
    let m = apic::MSR_APIC_BASE;
    ok(
        "APIC_BASE: reserved bits 0-7 raise #GP",
        is_gp(cpu::wrmsr_safe(m, b | 0x1)),
    );
    ok(
        "APIC_BASE: reserved bit 9 raises #GP",
        is_gp(cpu::wrmsr_safe(m, b | 0x200)),
    );
    let mp = maxphyaddr();
    if mp < 52 {
        ok(
            "APIC_BASE: bit above MAXPHYADDR raises #GP",
            is_gp(cpu::wrmsr_safe(m, b | (1u64 << mp))),
        );
    } else {
        conf::skip(
            "APIC_BASE: bit above MAXPHYADDR raises #GP",
            "MAXPHYADDR is 52",
        );
    }
    ok(
        "APIC_BASE: EN=0 EXTD=1 (invalid) raises #GP",
        is_gp(cpu::wrmsr_safe(m, (b & !EN) | EXTD)),
    );
    eq(
        "APIC_BASE: unchanged after refused writes",
        apic::base_msr(),
        b,
    );
    let _ = cpu::wrmsr_safe(m, b & !BSP);
    ok(
        "APIC_BASE: guest cannot clear the BSP bit",
        apic::base_msr() & BSP != 0,
    );
    let _ = cpu::wrmsr_safe(m, b);

    // Dirty some state, then hardware-disable and re-enable.
    apic::sw_enable(0xff);
    apic::write(reg::TPR, 0x20);
    apic::write(reg::LVT_TIMER, 0x30);
    apic::write(reg::LDR, 0x0100_0000);
    apic::write(reg::DFR, 0x0fff_ffff);
    apic::write(reg::TDCR, 0xb);
    apic::write(reg::ID, 0x0b00_0000);
    cpu::wrmsr(m, b & !EN);
    eq(
        "APIC_BASE: hardware disable reads EN=0",
        apic::base_msr() & (EN | EXTD),
        0,
    );
    if conf::x2apic_offered() {
        ok(
            "APIC_BASE: disabled -> x2APIC raises #GP",
            is_gp(cpu::wrmsr_safe(m, b | EN | EXTD)),
        );
    } else {
        conf::skip("APIC_BASE: disabled -> x2APIC raises #GP", "no x2APIC");
    }
    ok(
        "APIC_BASE: disabled -> EXTD only raises #GP",
        is_gp(cpu::wrmsr_safe(m, (b & !EN) | EXTD)),
    );
    ok(
        "APIC_BASE: disabled -> xAPIC allowed",
        cpu::wrmsr_safe(m, b | EN).is_ok(),
    );
    eq(
        "re-enable: ID back to the initial ID",
        u64::from(apic::read(reg::ID)),
        u64::from(cpu::cpuid(1, 0).ebx >> 24) << 24,
    );
    eq(
        "re-enable: TPR reset to 0",
        u64::from(apic::read(reg::TPR)),
        0,
    );
    eq(
        "re-enable: SVR reset to 0xFF",
        u64::from(apic::read(reg::SVR)),
        0xff,
    );
    eq(
        "re-enable: LVT timer reset to 0x10000",
        u64::from(apic::read(reg::LVT_TIMER)),
        0x10000,
    );
    eq(
        "re-enable: LDR reset to 0",
        u64::from(apic::read(reg::LDR)),
        0,
    );
    eq(
        "re-enable: DFR reset to 0xFFFFFFFF",
        u64::from(apic::read(reg::DFR)),
        0xffff_ffff,
    );
    eq(
        "re-enable: TDCR reset to 0",
        u64::from(apic::read(reg::TDCR)),
        0,
    );
    // Whatever the backend kept, go on from a clean state.
    apic::write(reg::TPR, 0);
    apic::write(reg::LVT_TIMER, 0x10000);
    apic::write(reg::LDR, 0);
    apic::write(reg::DFR, 0xffff_ffff);
    apic::write(reg::TDCR, 0);
    apic::write(reg::ID, u32::from(cpu::cpuid(1, 0).ebx >> 24 << 24));

    // Relocation of the xAPIC window.
    const NB: u64 = 0xfeb0_0000;
    let _ = cpu::wrmsr_safe(m, NB | EN | BSP);
    let id_new = unsafe { mmio_read32(NB + 0x20) };
    unsafe { mmio_write32(NB + 0x80, 0x30) };
    let tpr_new = unsafe { mmio_read32(NB + 0x80) };
    let old_tpr = unsafe { mmio_read32(XB + 0x80) };
    cpu::wrmsr(m, b);
    ok(
        "APIC_BASE: relocated xAPIC window decodes (ID, TPR)",
        id_new == apic::read(reg::ID) && tpr_new == 0x30,
    );
    ok(
        "APIC_BASE: old window stops decoding after relocation",
        old_tpr != 0x30,
    );
    eq(
        "APIC_BASE: registers kept across relocation",
        u64::from(apic::read(reg::TPR)),
        0x30,
    );
    apic::write(reg::TPR, 0);
}

/// Spec 1, xAPIC specifics.
fn xapic_registers() {
    let id = apic::read(reg::ID);
    ok(
        "MMIO 1-byte read returns that byte",
        unsafe { mmio_read8(XB + 0x23) } == (id >> 24) as u8,
    );
    let ver = apic::read(reg::VERSION);
    ok(
        "MMIO 2-byte read returns those bytes",
        unsafe { mmio_read16(XB + 0x32) } == (ver >> 16) as u16,
    );
    unsafe { mmio_write8(XB + 0x80, 0x40) };
    eq(
        "MMIO 1-byte write is dropped",
        u64::from(apic::read(reg::TPR)),
        0,
    );
    unsafe { mmio_write32(XB + 0x84, 0x40) };
    eq(
        "MMIO misaligned 4-byte write is dropped",
        u64::from(apic::read(reg::TPR)),
        0,
    );
    conf::esr();
    eq(
        "MMIO read of a non-register offset (0x40) gives 0",
        u64::from(unsafe { mmio_read32(XB + 0x40) }),
        0,
    );
    ok(
        "ESR illegal register address (bit 7) after access to 0x40",
        conf::esr() & 0x80 != 0,
    );
    conf::esr();
    apic::write(reg::VERSION, 0);
    eq(
        "VERSION is read-only",
        u64::from(apic::read(reg::VERSION)),
        u64::from(ver),
    );
    apic::write(reg::PPR, 0xf0);
    eq("PPR is read-only", u64::from(apic::read(reg::PPR)), 0);
    apic::write(reg::ICR2, 0xffff_ffff);
    eq(
        "ICR2 keeps only bits 31:24",
        u64::from(apic::read(reg::ICR2)),
        0xff00_0000,
    );
    apic::write(reg::ICR2, 0);
    apic::write(reg::LDR, 0xffff_ffff);
    eq(
        "LDR keeps only bits 31:24",
        u64::from(apic::read(reg::LDR)),
        0xff00_0000,
    );
    apic::write(reg::LDR, 0);
    apic::write(reg::DFR, 0);
    eq(
        "DFR keeps bits 31:28, 27:0 read as 1",
        u64::from(apic::read(reg::DFR)),
        0x0fff_ffff,
    );
    apic::write(reg::DFR, 0xffff_ffff);
    apic::write(reg::TPR, 0x1ff);
    eq(
        "TPR keeps only bits 7:0",
        u64::from(apic::read(reg::TPR)),
        0xff,
    );
    apic::write(reg::TPR, 0);

    // ID is writable and IPIs follow it.
    idt::reset();
    cpu::sti();
    apic::write(reg::ID, 0x0a12_3456);
    eq(
        "ID write keeps bits 31:24",
        u64::from(apic::read(reg::ID)),
        0x0a00_0000,
    );
    apic::send_ipi(0x0a, 0x42);
    apic::send_ipi(id >> 24, 0x43);
    wait_count(0x42, 1);
    cpu::delay_us(1000);
    eq(
        "physical IPI to the new (written) ID is delivered",
        u64::from(idt::count(0x42)),
        1,
    );
    eq(
        "physical IPI to the old ID is not delivered",
        u64::from(idt::count(0x43)),
        0,
    );
    apic::write(reg::ID, id);
    cpu::cli();
}

/// Spec 4: LVT write masks (run in each mode, APIC software-enabled).
fn lvt_masks() {
    let x2 = apic::is_x2apic();
    let lvt = |r: u32, v: u32| {
        if x2 {
            // Reserved bits #GP in x2APIC (spec); write only legal bits.
            let _ = cpu::wrmsr_safe(0x800 + (r >> 4), u64::from(v));
        } else {
            apic::write(r, v);
        }
        let g = apic::read(r);
        apic::write(r, 0x10000);
        g
    };
    let (all, timer, lint) = if x2 {
        (0x107ff, 0x300ff, 0x1a7ff)
    } else {
        (0xffff_efff, 0xfffb_efff, 0xffff_afff)
    };
    eq(
        "LVT timer keeps vector, mask, periodic mode",
        u64::from(lvt(reg::LVT_TIMER, timer)),
        0x300ff,
    );
    let t = lvt(reg::LVT_TIMER, 0x500ef);
    eq(
        "LVT timer TSC-deadline mode bit writable iff offered",
        u64::from(t & 0x40000 != 0),
        u64::from(conf::tsc_deadline_offered()),
    );
    eq(
        "LVT thermal keeps vector, delivery mode, mask",
        u64::from(lvt(0x330, all)),
        0x107ff,
    );
    eq(
        "LVT perfmon keeps vector, delivery mode, mask",
        u64::from(lvt(0x340, all)),
        0x107ff,
    );
    eq(
        "LVT LINT0 keeps vector, mode, polarity, trigger, mask",
        u64::from(lvt(reg::LVT_LINT0, lint)),
        0x1a7ff,
    );
    eq(
        "LVT LINT1 keeps vector, mode, polarity, trigger, mask",
        u64::from(lvt(reg::LVT_LINT1, lint)),
        0x1a7ff,
    );
    eq(
        "LVT error keeps vector, mask",
        u64::from(lvt(reg::LVT_ERROR, if x2 { 0x100ff } else { all })),
        0x100ff,
    );
    let mut ds = 0;
    for (r, _) in LVTS {
        ds |= lvt(r, 0x11030) & 0x1000;
    }
    eq("LVT delivery-status bit 12 is read-only", u64::from(ds), 0);
    eq(
        "LVT LINT0 remote-IRR bit 14 is read-only",
        u64::from(lvt(reg::LVT_LINT0, 0x14030) & 0x4000),
        0,
    );
    let maxlvt = (apic::read(reg::VERSION) >> 16) & 0xff;
    if maxlvt >= 6 {
        eq(
            "LVT CMCI keeps vector, delivery mode, mask",
            u64::from(lvt(0x2f0, all)),
            0x107ff,
        );
    } else {
        skip("LVT CMCI keeps vector, delivery mode, mask", "no CMCI LVT");
    }
}

/// Spec 3 and 4, in the current mode.
fn common() {
    idt::reset();
    idt::set_auto_eoi(true);
    apic::sw_enable(0xff);
    let x2 = apic::is_x2apic();

    // TPR, PPR, CR8.
    apic::write(reg::TPR, 0x35);
    eq("TPR reads back 0x35", u64::from(apic::read(reg::TPR)), 0x35);
    eq(
        "PPR = TPR with ISR empty",
        u64::from(apic::read(reg::PPR)),
        0x35,
    );
    eq("CR8 = TPR[7:4]", cpu::read_cr8(), 3);
    cpu::write_cr8(7);
    eq(
        "CR8 write sets TPR = CR8 << 4",
        u64::from(apic::read(reg::TPR)),
        0x70,
    );
    cpu::write_cr8(0);

    // Masking by priority class.
    apic::write(reg::TPR, 0x50);
    cpu::sti();
    self_ipi(0x5f);
    self_ipi(0x60);
    wait_count(0x60, 1);
    cpu::delay_us(1000);
    eq(
        "vector above the TPR class is delivered",
        u64::from(idt::count(0x60)),
        1,
    );
    eq(
        "vector in the TPR class is held",
        u64::from(idt::count(0x5f)),
        0,
    );
    ok("held vector stays in IRR", apic::bit(reg::IRR0, 0x5f));
    // EOI with an empty ISR changes nothing.
    apic::eoi();
    ok(
        "EOI with empty ISR changes nothing",
        apic::bit(reg::IRR0, 0x5f) && !conf::any_bit(reg::ISR0) && apic::read(reg::PPR) == 0x50,
    );
    apic::write(reg::TPR, 0);
    wait_count(0x5f, 1);
    eq(
        "held vector delivered once TPR drops",
        u64::from(idt::count(0x5f)),
        1,
    );

    // PPR while a vector is in service.
    apic::write(reg::TPR, 0x35);
    SCENARIO.store(S_PPR, Relaxed);
    self_ipi(0x61);
    wait_count(0x61, 1);
    SCENARIO.store(S_NONE, Relaxed);
    eq("PPR = ISRV class when above TPR", u64::from(got(0)), 0x60);
    ok(
        "in-service vector: ISR set, IRR clear",
        got(1) == 1 && got(2) == 0,
    );
    eq(
        "PPR = TPR when TPR class >= ISRV class",
        u64::from(got(3)),
        0x72,
    );
    eq(
        "PPR back to TPR after EOI",
        u64::from(apic::read(reg::PPR)),
        0x35,
    );
    apic::write(reg::TPR, 0);

    // Highest vector first.
    cpu::cli();
    idt::reset();
    for v in [0x45, 0x92, 0x71, 0x50] {
        self_ipi(v);
    }
    cpu::sti();
    wait_count(0x45, 1);
    let mut log = [0u8; 64];
    let n = idt::log(&mut log);
    ok(
        "pending vectors delivered highest first",
        n == 4 && log[..4] == [0x92, 0x71, 0x50, 0x45],
    );

    // Nesting.
    SCENARIO.store(S_NEST, Relaxed);
    self_ipi(0x46);
    wait_count(0x4b, 1);
    SCENARIO.store(S_NONE, Relaxed);
    eq(
        "higher class preempts an in-service vector",
        u64::from(got(0)),
        1,
    );
    eq("same class does not preempt", u64::from(got(1)), 0);
    eq(
        "same-class vector delivered after EOI",
        u64::from(idt::count(0x4b)),
        1,
    );

    // EOI order (no auto-EOI).
    idt::set_auto_eoi(false);
    SCENARIO.store(S_EOI, Relaxed);
    self_ipi(0x47);
    wait_count(0x47, 1);
    cpu::delay_us(200);
    SCENARIO.store(S_NONE, Relaxed);
    idt::set_auto_eoi(true);
    eq("nested: both vectors in ISR", u64::from(got(0)), 3);
    eq(
        "nested: PPR = class of the higher one",
        u64::from(got(1)),
        0x90,
    );
    eq("EOI clears the highest ISR bit first", u64::from(got(2)), 1);
    eq(
        "PPR drops to the remaining in-service class",
        u64::from(got(3)),
        0x40,
    );
    eq(
        "second EOI clears the remaining ISR bit",
        u64::from(got(4)),
        0,
    );

    // TMR follows the trigger mode of accepted messages.
    SCENARIO.store(S_TMR, Relaxed);
    for r in REC.iter() {
        r.store(0, Relaxed);
    }
    let before = idt::count(0x48);
    apic::send_ipi(0, apic::ICR_SELF | (1 << 15) | apic::ICR_ASSERT | 0x48);
    wait_count(0x48, before + 1);
    self_ipi(0x48);
    wait_count(0x48, before + 2);
    SCENARIO.store(S_NONE, Relaxed);
    eq(
        "level-triggered IPI sets TMR",
        u64::from(got((before as usize + 1) & 7)),
        3,
    );
    eq(
        "edge-triggered IPI clears TMR",
        u64::from(got((before as usize + 2) & 7)),
        2,
    );
    ok(
        "TMR clear after EOI of the edge vector",
        !apic::bit(reg::TMR0, 0x48),
    );

    // Vectors 16-31 are legal.
    cpu::cli();
    for (v, n) in [
        (0x10u8, "vector 0x10 is accepted and delivered"),
        (0x1f, "vector 0x1F is accepted and delivered"),
    ] {
        self_ipi(v);
        let c = cpu::irq_window_catching(3000);
        eq(n, c.map_or(0, u64::from), u64::from(v));
        if apic::bit(reg::ISR0, v) {
            apic::eoi();
        }
    }

    // Illegal vectors: sender side.
    conf::esr();
    self_ipi(3);
    ok(
        "IPI with illegal vector 3 not latched in IRR",
        !apic::bit(reg::IRR0, 3),
    );
    ok("ESR reads 0 until written", apic::read(reg::ESR) == 0);
    let c = cpu::irq_window_catching(3000);
    ok("IPI with illegal vector 3 not delivered", c.is_none());
    if apic::bit(reg::ISR0, 3) {
        apic::eoi();
    }
    let e = conf::esr();
    eq(
        "ESR send illegal vector (bit 5) latched by the write",
        u64::from(e & 0x20),
        0x20,
    );
    eq("ESR cleared by the next write", u64::from(conf::esr()), 0);
    if x2 {
        cpu::wrmsr(0x83f, 5);
        let c = cpu::irq_window_catching(3000);
        ok("SELF_IPI with illegal vector 5 not delivered", c.is_none());
        if apic::bit(reg::ISR0, 5) {
            apic::eoi();
        }
        // SDM "x2APIC Differences in Error Handling": a SELF IPI write
        // with an illegal vector sets Send Illegal Vector (bit 6 may
        // also be set: the ESR table counts self-interrupts as received).
        let e = conf::esr();
        if !ok("SELF_IPI illegal vector sets ESR bit 5", e & 0x20 != 0) {
            out().s("  ESR ").hex(u64::from(e)).nl();
        }
    }
    // Receiver side: an LVT with an illegal vector.
    apic::write(reg::TDCR, 0xb);
    apic::write(reg::LVT_TIMER, 3);
    apic::write(reg::TMICT, 1000);
    cpu::delay_us(500);
    let c = cpu::irq_window_catching(3000);
    ok("LVT timer with illegal vector 3 not delivered", c.is_none());
    if apic::bit(reg::ISR0, 3) {
        apic::eoi();
    }
    eq(
        "ESR receive illegal vector (bit 6) latched",
        u64::from(conf::esr() & 0x40),
        0x40,
    );
    apic::write(reg::LVT_TIMER, 0x10000);
    apic::write(reg::TMICT, 0);
    apic::write(reg::TDCR, 0);
    // LVT Error fires on a new error.
    apic::write(reg::LVT_ERROR, 0xe0);
    idt::reset();
    self_ipi(6);
    let c = cpu::irq_window_catching(3000);
    if apic::bit(reg::ISR0, 6) {
        apic::eoi();
    }
    cpu::sti();
    wait_count(0xe0, 1);
    cpu::cli();
    ok(
        "illegal vector 6 not delivered (LVT Error armed)",
        c.is_none(),
    );
    eq(
        "LVT Error interrupt on a new error",
        u64::from(idt::count(0xe0)),
        1,
    );
    conf::esr();
    // Illegal LVT Error vector must not recurse.
    apic::write(reg::LVT_ERROR, 4);
    self_ipi(7);
    let c1 = cpu::irq_window_catching(3000);
    let c2 = cpu::irq_window_catching(300);
    while conf::any_bit(reg::ISR0) {
        apic::eoi();
    }
    apic::write(reg::LVT_ERROR, 0x10000);
    ok(
        "illegal LVT Error vector does not recurse",
        c1.is_none() && c2.is_none(),
    );
    eq(
        "ESR after the illegal LVT Error vector has bits 5 and 6",
        u64::from(conf::esr() & 0x60),
        0x60,
    );
    eq("ESR clear after the final write", u64::from(conf::esr()), 0);

    // SVR.
    let ver = apic::read(reg::VERSION);
    apic::write(reg::SVR, 0x3ff);
    eq(
        "SVR bits 0-9 writable",
        u64::from(apic::read(reg::SVR)),
        0x3ff,
    );
    let _ = if x2 {
        cpu::wrmsr_safe(0x80f, 0x11ff)
    } else {
        apic::write(reg::SVR, 0x11ff);
        Ok(())
    };
    eq(
        "SVR[12] writable iff VERSION[24]",
        u64::from(apic::read(reg::SVR) >> 12 & 1),
        u64::from(ver >> 24 & 1),
    );
    apic::write(reg::SVR, 0x1ef);
    eq(
        "spurious vector field writable",
        u64::from(apic::read(reg::SVR)),
        0x1ef,
    );
    apic::write(reg::SVR, 0x1ff);

    // Software disable.
    for (r, v) in [
        (reg::LVT_TIMER, 0x30),
        (0x330, 0x31),
        (0x340, 0x32),
        (reg::LVT_LINT1, 0x33),
        (reg::LVT_ERROR, 0x34),
    ] {
        apic::write(r, v);
    }
    apic::write(reg::SVR, 0xff);
    ok(
        "SVR software disable masks every LVT",
        LVTS.iter().all(|&(r, _)| apic::read(r) & 0x10000 != 0),
    );
    apic::write(reg::LVT_TIMER, 0x35);
    ok(
        "LVT writes stay masked while software-disabled",
        apic::read(reg::LVT_TIMER) & 0x10000 != 0,
    );
    idt::reset();
    cpu::sti();
    self_ipi(0x52);
    cpu::delay_us(1000);
    ok(
        "fixed IPI dropped while software-disabled",
        !apic::bit(reg::IRR0, 0x52) && idt::count(0x52) == 0,
    );
    let n0 = NMIS.load(Relaxed);
    apic::send_ipi(apic::id(), apic::ICR_NMI);
    cpu::wait_us(20_000, || NMIS.load(Relaxed) > n0);
    eq(
        "NMI IPI accepted while software-disabled",
        u64::from(NMIS.load(Relaxed) - n0),
        1,
    );
    apic::write(reg::SVR, 0x1ff);
    cpu::delay_us(1000);
    eq(
        "dropped fixed IPI not delivered after re-enable",
        u64::from(idt::count(0x52)),
        0,
    );
    ok(
        "re-enable does not unmask the LVTs",
        apic::read(reg::LVT_TIMER) & 0x10000 != 0,
    );
    for (r, _) in LVTS {
        apic::write(r, 0x10000);
    }
    // NMI ignores TPR.
    apic::write(reg::TPR, 0xff);
    apic::send_ipi(apic::id(), apic::ICR_NMI);
    cpu::wait_us(20_000, || NMIS.load(Relaxed) > n0 + 1);
    eq("NMI IPI ignores TPR", u64::from(NMIS.load(Relaxed) - n0), 2);
    apic::write(reg::TPR, 0);
    // ICR reads back, delivery status 0.
    self_ipi(0x53);
    let icr = apic::read(reg::ICR);
    wait_count(0x53, 1);
    eq("ICR delivery status reads 0", u64::from(icr & 0x1000), 0);
    eq(
        "ICR reads back the command",
        u64::from(icr & !0x1000),
        u64::from(apic::ICR_SELF | 0x53),
    );
    cpu::cli();
}

/// Entering x2APIC mode: ID, LDR, and the xAPIC window.
fn x2apic_entry() {
    eq(
        "APIC_BASE EN|EXTD after entering x2APIC",
        apic::base_msr() & (EN | EXTD),
        EN | EXTD,
    );
    let id = cpu::rdmsr(0x802) as u32;
    eq(
        "ID = CPUID.0xB:EDX x2APIC ID",
        u64::from(id),
        u64::from(cpu::cpuid(0xb, 0).edx),
    );
    eq(
        "LDR derived from the ID",
        cpu::rdmsr(0x80d),
        u64::from(((id >> 4) << 16) | (1 << (id & 0xf))),
    );
    unsafe { mmio_write32(XB + 0x80, 0x30) };
    eq(
        "MMIO TPR write ignored in x2APIC mode",
        u64::from(apic::read(reg::TPR)),
        0,
    );
    apic::write(reg::TPR, 0);
}

/// Spec 1, x2APIC MSR rules.
fn x2apic_registers() {
    let w = |msr: u32, v: u64| is_gp(cpu::wrmsr_safe(msr, v));
    let r = |msr: u32| is_gp(cpu::rdmsr_safe(msr));
    ok("WRMSR ID (read-only) raises #GP", w(0x802, 0));
    ok("WRMSR VERSION raises #GP", w(0x803, 0));
    ok("WRMSR PPR raises #GP", w(0x80a, 0));
    ok("WRMSR LDR raises #GP", w(0x80d, 0));
    ok("WRMSR ISR0 raises #GP", w(0x810, 0));
    ok("WRMSR IRR0 raises #GP", w(0x820, 0));
    ok("WRMSR TMCCT raises #GP", w(0x839, 0));
    ok("RDMSR EOI (write-only) raises #GP", r(0x80b));
    ok("RDMSR SELF_IPI (write-only) raises #GP", r(0x83f));
    ok("RDMSR ICR2 (0x831) raises #GP", r(0x831));
    ok("WRMSR ICR2 (0x831) raises #GP", w(0x831, 0));
    ok("RDMSR DFR (0x80E) raises #GP", r(0x80e));
    ok("WRMSR DFR (0x80E) raises #GP", w(0x80e, 0));
    ok("RDMSR unassigned 0x804 raises #GP", r(0x804));
    ok("WRMSR unassigned 0x804 raises #GP", w(0x804, 0));
    ok("WRMSR TPR bits 63:32 raises #GP", w(0x808, 1 << 32));
    ok(
        "WRMSR LVT timer bits 63:32 raises #GP",
        w(0x832, (1 << 32) | 0x10000),
    );
    ok("WRMSR TPR reserved bit 8 raises #GP", w(0x808, 0x100));
    ok(
        "WRMSR LVT timer reserved bit 20 raises #GP",
        w(0x832, 0x110000),
    );
    ok("WRMSR SVR reserved bit 13 raises #GP", w(0x80f, 0x21ff));
    ok("WRMSR SELF_IPI reserved bit 8 raises #GP", w(0x83f, 0x1f0));
    ok("WRMSR ESR non-zero raises #GP", w(0x828, 1));
    ok("WRMSR EOI non-zero raises #GP", w(0x80b, 1));
    apic::write(reg::TPR, 0);
    while conf::any_bit(reg::ISR0) {
        apic::eoi();
    }
    // 64-bit ICR: one WRMSR sends; reads back whole.
    idt::reset();
    cpu::sti();
    let id = u64::from(apic::id());
    let icr = (id << 32) | 0x49;
    cpu::wrmsr(0x830, icr);
    wait_count(0x49, 1);
    eq(
        "one 64-bit ICR WRMSR sends (physical to self)",
        u64::from(idt::count(0x49)),
        1,
    );
    eq(
        "ICR reads back all 64 bits",
        cpu::rdmsr(0x830) & !0x1000,
        icr,
    );
    cpu::wrmsr(0x83f, 0x4a);
    wait_count(0x4a, 1);
    eq(
        "SELF_IPI delivers its vector",
        u64::from(idt::count(0x4a)),
        1,
    );
    cpu::cli();
}

/// Leaving x2APIC mode: only through disabled.
fn x2apic_exit() {
    let b = apic::base_msr();
    let m = apic::MSR_APIC_BASE;
    ok(
        "x2APIC -> xAPIC raises #GP",
        is_gp(cpu::wrmsr_safe(m, b & !EXTD)),
    );
    eq(
        "still x2APIC after the refused write",
        apic::base_msr() & (EN | EXTD),
        EN | EXTD,
    );
    apic::write(reg::TPR, 0x40);
    let dis = cpu::wrmsr_safe(m, b & !(EN | EXTD)).is_ok();
    let en = cpu::wrmsr_safe(m, (b & !EXTD) | EN).is_ok();
    let base = apic::base_msr();
    // Read through the xAPIC window now.
    apic::set_mode_x2apic(false);
    let id = apic::read(reg::ID);
    let ldr = apic::read(reg::LDR);
    let tpr = apic::read(reg::TPR);
    apic::set_mode_x2apic(true);
    ok("x2APIC -> disabled allowed", dis);
    ok("disabled -> xAPIC allowed after x2APIC", en);
    eq("back in xAPIC: APIC_BASE EN only", base & (EN | EXTD), EN);
    eq(
        "back in xAPIC: ID = initial ID << 24",
        u64::from(id),
        u64::from(cpu::cpuid(1, 0).ebx >> 24) << 24,
    );
    eq("back in xAPIC: LDR reset to 0", u64::from(ldr), 0);
    eq("back in xAPIC: TPR reset to 0", u64::from(tpr), 0);
    apic::set_mode_x2apic(false);
}
