//! `conf_ioapic`: the IOAPIC (0xFEC00000) and the external-interrupt path
//! end to end: registers (version, ID, redirection entry masks and
//! read-only bits), edge and level lines raised through the VMM's IRQ test
//! port (0x5A0: `pin | level << 8`, bit 9 = pulse), remote IRR, masking,
//! re-delivery after EOI, polarity, the serial port's IRQ 4, physical /
//! logical / lowest-priority destinations (`--cpus 2+`), directed EOI
//! (suppress-EOI-broadcast + the IOAPIC EOI register, version 0x20) and
//! the version 0x11 behaviour. Runs in xAPIC mode on every backend
//! (`--irqchip user|split|kernel`); what does not apply prints SKIP.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

use guest_support::apic::{self, reg};
use guest_support::cpu;
use guest_support::idt;
use guest_support::smp;
use guest_support::test;
use guest_support::{out, BootInfo};

const IOAPIC: u64 = 0xfec0_0000;
const IOWIN: u64 = IOAPIC + 0x10;
const IOEOI: u64 = IOAPIC + 0x40;
const TEST_PORT: u16 = 0x5a0;
const LEVEL: u32 = 1 << 8;
const PULSE: u32 = 1 << 9;

const MASKED: u32 = 1 << 16;
const TRIG_LEVEL: u32 = 1 << 15;
const REMOTE_IRR: u32 = 1 << 14;
const ACTIVE_LOW: u32 = 1 << 13;
const DELIVS: u32 = 1 << 12;
const LOGICAL: u32 = 1 << 11;
const LOWEST: u32 = 1 << 8;

const MAXC: usize = 8;
static GOT: [[AtomicU32; 256]; MAXC] = [const { [const { AtomicU32::new(0) }; 256] }; MAXC];
/// Pin the AP's handler deasserts (a driver acknowledging its device).
static AP_ACK_PIN: AtomicU32 = AtomicU32::new(0xff);
const AP_LEVEL_VEC: u8 = 0x61;

fn hook(v: u8) {
    let i = smp::cpu_index() as usize;
    if let Some(row) = GOT.get(i) {
        let c = &row[usize::from(v)];
        c.store(c.load(Relaxed) + 1, Relaxed);
    }
    if v == AP_LEVEL_VEC {
        let p = AP_ACK_PIN.load(Relaxed);
        if p < 24 {
            line(p as u8, false);
        }
    }
}

/// Check names carry `x2apic: ` in x2APIC mode (none in xAPIC mode).
fn pfx() -> &'static str {
    if apic::is_x2apic() {
        "x2apic: "
    } else {
        ""
    }
}

fn ck(name: &str, cond: bool) -> bool {
    test::check_pfx(pfx(), name, cond)
}

fn ckeq(name: &str, got: u64, want: u64) -> bool {
    test::check_eq_pfx(pfx(), name, got, want)
}

fn sk(name: &str, why: &str) {
    test::skip_pfx(pfx(), name, why)
}

static X2_REQ: AtomicU32 = AtomicU32::new(0);
static X2_DONE: [AtomicU32; MAXC] = [const { AtomicU32::new(0) }; MAXC];

fn got(i: usize, v: u8) -> u32 {
    GOT[i][usize::from(v)].load(Relaxed)
}

fn ioread(r: u8) -> u32 {
    unsafe {
        cpu::mmio_write32(IOAPIC, u32::from(r));
        cpu::mmio_read32(IOWIN)
    }
}

fn iowrite(r: u8, v: u32) {
    unsafe {
        cpu::mmio_write32(IOAPIC, u32::from(r));
        cpu::mmio_write32(IOWIN, v);
    }
}

fn rte_lo(pin: u8) -> u32 {
    ioread(0x10 + 2 * pin)
}

/// Programs a redirection entry: high half (destination) first.
fn rte(pin: u8, lo: u32, dest: u32) {
    iowrite(0x11 + 2 * pin, dest << 24);
    iowrite(0x10 + 2 * pin, lo);
}

fn line(pin: u8, high: bool) {
    unsafe { cpu::outl(TEST_PORT, u32::from(pin) | if high { LEVEL } else { 0 }) };
}

fn pulse(pin: u8) {
    unsafe { cpu::outl(TEST_PORT, u32::from(pin) | PULSE) };
}

/// Waits until CPU `i` got vector `v` more than `base` times (100 ms).
fn wait_got(i: usize, v: u8, base: u32) -> bool {
    cpu::wait_us(100_000, || got(i, v) > base)
}

/// Lets stray deliveries arrive.
fn settle() {
    cpu::delay_us(3000);
}

fn ap_main(id: u32) {
    let i = id as usize;
    apic::write(reg::LVT_LINT0, 0x10000);
    apic::write(reg::LVT_LINT1, 0x10000);
    apic::write(reg::DFR, 0xffff_ffff);
    if i < 8 {
        apic::write(reg::LDR, 1 << (24 + i));
    }
    loop {
        cpu::cli();
        if i < MAXC && X2_REQ.load(Relaxed) != 0 && X2_DONE[i].load(Relaxed) == 0 {
            // Switch this AP to x2APIC (the accessors' mode is global and
            // follows when the BSP switches).
            cpu::wrmsr(
                apic::MSR_APIC_BASE,
                apic::base_msr() | (1 << 10) | (1 << 11),
            );
            X2_DONE[i].store(1, Relaxed);
        }
        cpu::sti_hlt();
    }
}

#[no_mangle]
pub fn guest_main(boot: &BootInfo) {
    let n = (boot.cpus as usize).min(MAXC);
    out().s("conf_ioapic: ").dec(n as u64).s(" cpus").nl();
    // An OS masks the 8259 (KVM's in-kernel PIC also sees ISA IRQs) and
    // LINT0 (KVM's BSP resets it to ExtINT).
    unsafe {
        cpu::outb(0x21, 0xff);
        cpu::outb(0xa1, 0xff);
    }
    idt::set_hook(Some(hook));
    apic::sw_enable(0xff);
    apic::write(reg::LVT_LINT0, 0x10000);
    apic::write(reg::LVT_LINT1, 0x10000);
    apic::write(reg::DFR, 0xffff_ffff);
    apic::write(reg::LDR, 1 << 24);
    cpu::sti();

    let ver = registers();
    edge();
    level();
    polarity();
    serial();
    let aps = start_aps(n);
    destinations(n, aps);
    directed_eoi(ver);
    x2apic(n, aps, ver);
    cpu::cli();
    out().s("conf_ioapic: done").nl();
}

fn registers() -> u32 {
    let v = ioread(0x01);
    let ver = v & 0xff;
    out()
        .s("conf_ioapic: IOAPIC version register ")
        .hex(u64::from(v))
        .nl();
    ck(
        "version register: version is 0x11 or 0x20",
        ver == 0x11 || ver == 0x20,
    );
    ckeq(
        "version register: 24 redirection entries (bits 23:16 = 23)",
        u64::from((v >> 16) & 0xff),
        23,
    );
    if ver == 0x20 {
        ck("version register: 0x20 (with EOI register)", true);
    } else {
        sk(
            "version register: 0x20 (with EOI register)",
            "IOAPIC version 0x11",
        );
    }
    let lvr24 = apic::read(reg::VERSION) & (1 << 24) != 0;
    ck(
        "LAPIC offers suppress-EOI-broadcast only with an IOAPIC EOI register",
        !lvr24 || ver == 0x20,
    );
    let id = ioread(0x00);
    iowrite(0x00, 0x0a00_0000);
    let id2 = ioread(0x00);
    iowrite(0x00, id);
    ckeq(
        "ID register: bits 27:24 writable",
        u64::from(id2 & 0x0f00_0000),
        0x0a00_0000,
    );
    ck(
        "reset: every redirection entry masked",
        (0..24u8).all(|p| rte_lo(p) & MASKED != 0),
    );
    // Writable fields read back; delivery status and remote IRR are
    // read-only.
    iowrite(0x10 + 2 * 16, MASKED | 0xaf55);
    ckeq(
        "RTE: writable low bits read back",
        u64::from(rte_lo(16) & 0x1_afff),
        0x1_af55,
    );
    iowrite(
        0x10 + 2 * 16,
        MASKED | TRIG_LEVEL | DELIVS | REMOTE_IRR | 0x40,
    );
    ckeq(
        "RTE: delivery status and remote IRR are read-only",
        u64::from(rte_lo(16) & (DELIVS | REMOTE_IRR)),
        0,
    );
    iowrite(0x11 + 2 * 16, 0xab00_0000);
    ckeq(
        "RTE: destination (bits 63:56) read back",
        u64::from(ioread(0x11 + 2 * 16) >> 24),
        0xab,
    );
    rte(16, MASKED, 0);
    ver
}

fn edge() {
    let (p, v) = (16u8, 0x41u8);
    rte(p, u32::from(v), 0);
    let b = got(0, v);
    pulse(p);
    let ok = wait_got(0, v, b);
    settle();
    ck("edge: a pulse delivers", ok);
    ckeq("edge: exactly once", u64::from(got(0, v) - b), 1);
    let b = got(0, v);
    line(p, true);
    wait_got(0, v, b);
    settle();
    let high = got(0, v) - b;
    line(p, false);
    settle();
    ck(
        "edge: a line held high delivers once, the falling edge nothing",
        high == 1 && got(0, v) - b == 1,
    );
    ckeq(
        "edge: remote IRR stays clear",
        u64::from(rte_lo(p) & REMOTE_IRR),
        0,
    );
    // Masked: the edge is lost.
    rte(p, MASKED | u32::from(v), 0);
    let b = got(0, v);
    pulse(p);
    settle();
    rte(p, u32::from(v), 0);
    settle();
    ckeq(
        "edge: an edge while masked is lost (not delivered on unmask)",
        u64::from(got(0, v) - b),
        0,
    );
    // Several pins at once.
    let pins = [(16u8, 0x41u8), (17, 0x42), (18, 0x43)];
    for (p, v) in pins {
        rte(p, u32::from(v), 0);
    }
    let base: [u32; 3] = core::array::from_fn(|k| got(0, pins[k].1));
    cpu::cli();
    for (p, _) in pins {
        pulse(p);
    }
    cpu::sti();
    cpu::wait_us(100_000, || (0..3).all(|k| got(0, pins[k].1) > base[k]));
    settle();
    ck(
        "edge: three pins pulsed together each deliver once",
        (0..3).all(|k| got(0, pins[k].1) - base[k] == 1),
    );
    for (p, _) in pins {
        rte(p, MASKED, 0);
    }
}

fn level() {
    let (p, v) = (19u8, 0x51u8);
    idt::set_auto_eoi(false);
    rte(p, TRIG_LEVEL | u32::from(v), 0);
    let b = got(0, v);
    line(p, true);
    ck("level: asserting the line delivers", wait_got(0, v, b));
    ck(
        "level: remote IRR set while in service",
        rte_lo(p) & REMOTE_IRR != 0,
    );
    ck(
        "level: LAPIC TMR bit set for the vector",
        apic::bit(reg::TMR0, v),
    );
    settle();
    ckeq(
        "level: no redelivery before EOI",
        u64::from(got(0, v) - b),
        1,
    );
    // EOI with the line still asserted: delivered again.
    apic::eoi();
    ck(
        "level: EOI with the line still asserted redelivers",
        wait_got(0, v, b + 1),
    );
    ck(
        "level: remote IRR set again after redelivery",
        rte_lo(p) & REMOTE_IRR != 0,
    );
    line(p, false);
    apic::eoi();
    settle();
    ckeq(
        "level: EOI with the line low clears remote IRR",
        u64::from(rte_lo(p) & REMOTE_IRR),
        0,
    );
    ckeq(
        "level: no delivery after EOI with the line low",
        u64::from(got(0, v) - b),
        2,
    );
    // Masked while asserted: nothing; unmasking delivers.
    rte(p, MASKED | TRIG_LEVEL | u32::from(v), 0);
    let b = got(0, v);
    line(p, true);
    settle();
    ckeq(
        "level: an asserted line does not deliver while masked",
        u64::from(got(0, v) - b),
        0,
    );
    rte(p, TRIG_LEVEL | u32::from(v), 0);
    ck(
        "level: unmasking an asserted line delivers",
        wait_got(0, v, b),
    );
    // Masked while in service; EOI; unmask with the line still high.
    rte(p, MASKED | TRIG_LEVEL | u32::from(v), 0);
    apic::eoi();
    settle();
    ckeq(
        "level: EOI while masked clears remote IRR",
        u64::from(rte_lo(p) & REMOTE_IRR),
        0,
    );
    ckeq(
        "level: no delivery while masked after EOI",
        u64::from(got(0, v) - b),
        1,
    );
    rte(p, TRIG_LEVEL | u32::from(v), 0);
    ck(
        "level: unmasking after EOI with the line still high delivers",
        wait_got(0, v, b + 1),
    );
    // Switching the entry to edge clears remote IRR.
    rte(p, u32::from(v), 0);
    ckeq(
        "level: switching the entry to edge clears remote IRR",
        u64::from(rte_lo(p) & REMOTE_IRR),
        0,
    );
    line(p, false);
    apic::eoi();
    rte(p, MASKED, 0);
    settle();
    idt::set_auto_eoi(true);
}

fn polarity() {
    let (p, v) = (20u8, 0x52u8);
    idt::set_auto_eoi(false);
    rte(p, MASKED | ACTIVE_LOW | TRIG_LEVEL | u32::from(v), 0);
    line(p, true);
    rte(p, ACTIVE_LOW | TRIG_LEVEL | u32::from(v), 0);
    let b = got(0, v);
    settle();
    ckeq(
        "polarity: active-low line held high does not deliver",
        u64::from(got(0, v) - b),
        0,
    );
    line(p, false);
    ck(
        "polarity: active-low line pulled low delivers",
        wait_got(0, v, b),
    );
    line(p, true);
    apic::eoi();
    settle();
    ckeq(
        "polarity: EOI after release clears remote IRR",
        u64::from(rte_lo(p) & REMOTE_IRR),
        0,
    );
    // The line is high; switching the (masked) entry from active-high to
    // active-low deasserts it: unmasking delivers nothing.
    rte(p, MASKED | TRIG_LEVEL | u32::from(v), 0);
    rte(p, MASKED | ACTIVE_LOW | TRIG_LEVEL | u32::from(v), 0);
    let b = got(0, v);
    rte(p, ACTIVE_LOW | TRIG_LEVEL | u32::from(v), 0);
    settle();
    let n = got(0, v) - b;
    rte(p, MASKED, 0);
    line(p, false);
    for _ in 0..n {
        apic::eoi();
    }
    ckeq(
        "polarity: the asserted state follows a polarity change while the line is high",
        u64::from(n),
        0,
    );
    settle();
    idt::set_auto_eoi(true);
}

fn serial() {
    let (p, v) = (4u8, 0x44u8);
    rte(p, u32::from(v), 0);
    let b = got(0, v);
    // IER: THR-empty interrupt; the transmitter is empty, so it fires.
    unsafe { cpu::outb(0x3f9, 0x02) };
    let ok = wait_got(0, v, b);
    let iir = unsafe { cpu::inb(0x3fa) };
    unsafe { cpu::outb(0x3f9, 0x00) };
    settle();
    ck("serial: THR-empty interrupt arrives on IOAPIC pin 4", ok);
    ckeq(
        "serial: IIR identifies THR empty",
        u64::from(iir & 0x0f),
        0x02,
    );
    rte(p, MASKED, 0);
}

fn start_aps(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    smp::set_ap_main(ap_main);
    let up = smp::start_aps(n as u32 - 1, 2_000_000);
    ckeq("APs started", u64::from(up), n as u64 - 1);
    cpu::delay_us(5000);
    up == n as u32 - 1
}

/// Physical, logical, lowest-priority and AP-level checks, then directed
/// EOI, in x2APIC mode (IDs = CPU index, logical = cluster 0, bit i).
fn x2apic(n: usize, aps: bool, ver: u32) {
    if cpu::cpuid(1, 0).ecx & (1 << 21) == 0 {
        apic::set_mode_x2apic(true);
        sk("IOAPIC checks", "CPUID.1:ECX.x2APIC is clear");
        apic::set_mode_x2apic(false);
        return;
    }
    if aps {
        X2_REQ.store(1, Relaxed);
        apic::send_ipi(0, apic::ICR_OTHERS | 0xf0);
        let all = cpu::wait_us(200_000, || (1..n).all(|i| X2_DONE[i].load(Relaxed) != 0));
        apic::enable_x2apic();
        ck("every AP switches to x2APIC", all);
        if !all {
            return;
        }
    } else {
        apic::enable_x2apic();
    }
    destinations(n, aps);
    directed_eoi(ver);
}

fn destinations(n: usize, aps: bool) {
    if !aps {
        for name in [
            "physical destination: only the addressed CPU",
            "logical destination: only the selected CPU",
            "logical destination: several CPUs",
            "IOAPIC lowest priority: exactly one CPU gets it",
            "IOAPIC lowest priority: the CPU with the lowest TPR gets it",
            "level to an AP: handler deasserts, its EOI clears remote IRR",
        ] {
            sk(name, "needs --cpus 2");
        }
        return;
    }
    let p = 21u8;
    // Pulses pin 21 routed by `lo`/`dest`; waits until `want` CPUs (the
    // first `want`, or any one if 0) got it, then for strays.
    let deliver = |lo: u32, dest: u32, v: u8, want: usize| -> [u32; MAXC] {
        let b: [u32; MAXC] = core::array::from_fn(|i| got(i, v));
        rte(p, lo | u32::from(v), dest);
        pulse(p);
        cpu::wait_us(100_000, || match want {
            0 => (0..n).any(|i| got(i, v) > b[i]),
            w => (0..n).filter(|&i| got(i, v) > b[i]).count() >= w,
        });
        settle();
        rte(p, MASKED, 0);
        core::array::from_fn(|i| got(i, v) - b[i])
    };
    let g = deliver(0, 1, 0x62, 1);
    ck(
        "physical destination: only the addressed CPU",
        (0..n).all(|i| g[i] == u32::from(i == 1)),
    );
    let g = deliver(LOGICAL, 0x02, 0x63, 1);
    ck(
        "logical destination: only the selected CPU",
        (0..n).all(|i| g[i] == u32::from(i == 1)),
    );
    let g = deliver(LOGICAL, 0x03, 0x64, 2);
    ck(
        "logical destination: several CPUs",
        (0..n).all(|i| g[i] == u32::from(i < 2)),
    );
    // Lowest priority among CPUs 0 and 1: the BSP raises its TPR.
    apic::write(reg::TPR, 0x40);
    let g = deliver(LOGICAL | LOWEST, 0x03, 0x65, 0);
    apic::write(reg::TPR, 0);
    ckeq(
        "IOAPIC lowest priority: exactly one CPU gets it",
        u64::from(g.iter().sum::<u32>()),
        1,
    );
    ck(
        "IOAPIC lowest priority: the CPU with the lowest TPR gets it",
        g[1] == 1,
    );
    // Level-triggered to AP 1: its handler deasserts the line, its EOI
    // (broadcast) clears remote IRR.
    let p = 22u8;
    AP_ACK_PIN.store(u32::from(p), Relaxed);
    let b = got(1, AP_LEVEL_VEC);
    rte(p, TRIG_LEVEL | u32::from(AP_LEVEL_VEC), 1);
    line(p, true);
    let ok = wait_got(1, AP_LEVEL_VEC, b);
    // The AP deasserts and EOIs after its hook counted: wait for that
    // (it may be preempted on a loaded host), then for strays.
    cpu::wait_us(100_000, || rte_lo(p) & REMOTE_IRR == 0);
    settle();
    let (cnt, irr) = (got(1, AP_LEVEL_VEC) - b, rte_lo(p) & REMOTE_IRR);
    if !ck(
        "level to an AP: handler deasserts, its EOI clears remote IRR",
        ok && cnt == 1 && irr == 0,
    ) {
        out()
            .s("  deliveries ")
            .dec(u64::from(cnt))
            .s(", RTE remote IRR ")
            .hex(u64::from(irr))
            .nl();
    }
    rte(p, MASKED, 0);
    AP_ACK_PIN.store(0xff, Relaxed);
}

fn directed_eoi(ver: u32) {
    let (p, v) = (23u8, 0x71u8);
    idt::set_auto_eoi(false);
    let lvr24 = apic::read(reg::VERSION) & (1 << 24) != 0;
    if !lvr24 {
        sk(
            "directed EOI: SVR bit 12 writable",
            "LAPIC version bit 24 clear",
        );
        sk(
            "directed EOI: LAPIC EOI leaves remote IRR set with suppress-EOI-broadcast",
            "LAPIC version bit 24 clear",
        );
        sk(
            "directed EOI: IOAPIC EOI register clears remote IRR",
            "LAPIC version bit 24 clear",
        );
        sk(
            "directed EOI: IOAPIC EOI register with the line asserted redelivers",
            "LAPIC version bit 24 clear",
        );
    } else {
        let svr = apic::read(reg::SVR);
        apic::write(reg::SVR, svr | (1 << 12));
        ck(
            "directed EOI: SVR bit 12 writable",
            apic::read(reg::SVR) & (1 << 12) != 0,
        );
        rte(p, TRIG_LEVEL | u32::from(v), 0);
        let b = got(0, v);
        line(p, true);
        let ok = wait_got(0, v, b);
        apic::eoi();
        settle();
        ck(
            "directed EOI: LAPIC EOI leaves remote IRR set with suppress-EOI-broadcast",
            ok && rte_lo(p) & REMOTE_IRR != 0 && got(0, v) - b == 1,
        );
        if ver == 0x20 {
            // Line still high: the EOI register clears remote IRR and the
            // IOAPIC sends again.
            unsafe { cpu::mmio_write32(IOEOI, u32::from(v)) };
            ck(
                "directed EOI: IOAPIC EOI register with the line asserted redelivers",
                wait_got(0, v, b + 1),
            );
            line(p, false);
            apic::eoi();
            unsafe { cpu::mmio_write32(IOEOI, u32::from(v)) };
            settle();
            ckeq(
                "directed EOI: IOAPIC EOI register clears remote IRR",
                u64::from(rte_lo(p) & REMOTE_IRR),
                0,
            );
        } else {
            sk(
                "directed EOI: IOAPIC EOI register clears remote IRR",
                "IOAPIC version 0x11",
            );
            sk(
                "directed EOI: IOAPIC EOI register with the line asserted redelivers",
                "IOAPIC version 0x11",
            );
            line(p, false);
        }
        apic::write(reg::SVR, svr & !(1 << 12));
        rte(p, MASKED, 0);
    }
    // Version 0x11: no EOI register; remote IRR clears only by the LAPIC's
    // broadcast.
    if ver == 0x11 {
        rte(p, TRIG_LEVEL | u32::from(v), 0);
        let b = got(0, v);
        line(p, true);
        let ok = wait_got(0, v, b);
        line(p, false);
        unsafe { cpu::mmio_write32(IOEOI, u32::from(v)) };
        settle();
        let kept = rte_lo(p) & REMOTE_IRR != 0;
        apic::eoi();
        settle();
        ck("version 0x11: EOI register write is ignored", ok && kept);
        ckeq(
            "version 0x11: LAPIC EOI broadcast clears remote IRR",
            u64::from(rte_lo(p) & REMOTE_IRR),
            0,
        );
        rte(p, MASKED, 0);
    } else {
        sk(
            "version 0x11: EOI register write is ignored",
            "IOAPIC version 0x20",
        );
        sk(
            "version 0x11: LAPIC EOI broadcast clears remote IRR",
            "IOAPIC version 0x20",
        );
    }
    idt::set_auto_eoi(true);
}
