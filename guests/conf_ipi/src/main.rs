//! `conf_ipi`: multi-CPU conformance checks (spec sections 6 and 7 for
//! the APs): INIT/SIPI/SIPI bring-up of every AP from real mode, the
//! APs' INIT-state registers, IPIs in every destination mode (physical,
//! broadcast, logical flat, logical cluster, x2APIC cluster, shorthands),
//! lowest priority, NMI, xAPIC ID changes and shared IDs, INIT
//! (assert/de-assert) and SIPI rules. xAPIC first, then x2APIC if
//! offered. Needs `--cpus 2` or more (4 covers everything); with one CPU
//! it prints SKIP lines.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

use guest_support::apic::{self, reg};
use guest_support::conf::{self, eq, ok, skip};
use guest_support::cpu;
use guest_support::idt;
use guest_support::smp;
use guest_support::{out, BootInfo};

const MAXC: usize = 8;
const WAKE: u8 = 0xf0;
const EN: u64 = 1 << 11;
const EXTD: u64 = 1 << 10;

static GOT: [[AtomicU32; 256]; MAXC] = [const { [const { AtomicU32::new(0) }; 256] }; MAXC];
static NMI: [AtomicU32; MAXC] = [const { AtomicU32::new(0) }; MAXC];
static ENTRIES: [AtomicU32; MAXC] = [const { AtomicU32::new(0) }; MAXC];
/// INIT-state registers recorded by each AP before it enables its APIC.
static EARLY: [[AtomicU32; 16]; MAXC] = [const { [const { AtomicU32::new(0) }; 16] }; MAXC];
const EARLY_REGS: [u32; 14] = [
    reg::ID,
    reg::TPR,
    reg::LDR,
    reg::DFR,
    reg::SVR,
    reg::LVT_TIMER,
    0x330,
    0x340,
    reg::LVT_LINT0,
    reg::LVT_LINT1,
    reg::LVT_ERROR,
    reg::TMICT,
    reg::TDCR,
    reg::ICR,
];
const E_IRR_ISR: usize = 14;
const E_BASE: usize = 15;

// Command mailbox BSP -> AP.
static SEQ: [AtomicU32; MAXC] = [const { AtomicU32::new(0) }; MAXC];
static DONE: [AtomicU32; MAXC] = [const { AtomicU32::new(0) }; MAXC];
static OP: [AtomicU32; MAXC] = [const { AtomicU32::new(0) }; MAXC];
static A: [AtomicU32; MAXC] = [const { AtomicU32::new(0) }; MAXC];
static B: [AtomicU32; MAXC] = [const { AtomicU32::new(0) }; MAXC];
static RES: [AtomicU32; MAXC] = [const { AtomicU32::new(0) }; MAXC];

const OP_WRITE: u32 = 1;
const OP_READ: u32 = 2;
const OP_SEND: u32 = 3;
const OP_X2APIC: u32 = 4;

fn hook(v: u8) {
    let i = smp::cpu_index() as usize;
    if let Some(row) = GOT.get(i) {
        let c = &row[usize::from(v)];
        c.store(c.load(Relaxed) + 1, Relaxed);
    }
}

fn nmi() {
    let i = smp::cpu_index() as usize;
    if let Some(c) = NMI.get(i) {
        c.store(c.load(Relaxed) + 1, Relaxed);
    }
}

/// What an AP restarted by INIT/SIPI in x2APIC mode saw (see
/// `x2apic_init`): APIC_BASE, ID, LDR, TPR, SVR, LVT timer; and a count.
static X2INIT: [AtomicU32; 6] = [const { AtomicU32::new(0) }; 6];
static X2INIT_N: AtomicU32 = AtomicU32::new(0);

fn early(id: u32) {
    let i = id as usize;
    if i >= MAXC {
        // The trampoline reads the ID through the xAPIC window, which
        // does not decode in x2APIC mode (all ones: ID 0xFF): an AP
        // restarted in x2APIC mode lands here.
        if apic::is_x2apic() {
            for (k, r) in [reg::ID, reg::LDR, reg::TPR, reg::SVR, reg::LVT_TIMER]
                .iter()
                .enumerate()
            {
                X2INIT[k + 1].store(apic::read(*r), Relaxed);
            }
            X2INIT[0].store(apic::base_msr() as u32, Relaxed);
            X2INIT_N.store(X2INIT_N.load(Relaxed) + 1, Relaxed);
        }
        return;
    }
    for (k, r) in EARLY_REGS.iter().enumerate() {
        EARLY[i][k].store(apic::read(*r), Relaxed);
    }
    let busy = conf::any_bit(reg::IRR0) || conf::any_bit(reg::ISR0) || conf::any_bit(reg::TMR0);
    EARLY[i][E_IRR_ISR].store(u32::from(busy), Relaxed);
    EARLY[i][E_BASE].store(apic::base_msr() as u32, Relaxed);
    ENTRIES[i].store(ENTRIES[i].load(Relaxed) + 1, Relaxed);
}

fn ap_main(id: u32) {
    let i = id as usize;
    if i >= MAXC {
        return;
    }
    let mut seen = SEQ[i].load(Relaxed);
    loop {
        cpu::cli();
        let s = SEQ[i].load(Relaxed);
        if s != seen {
            seen = s;
            let (a, b) = (A[i].load(Relaxed), B[i].load(Relaxed));
            match OP[i].load(Relaxed) {
                OP_WRITE => apic::write(a, b),
                OP_READ => RES[i].store(apic::read(a), Relaxed),
                OP_SEND => apic::send_ipi(a, b),
                OP_X2APIC => {
                    let base = apic::base_msr();
                    RES[i].store(
                        u32::from(cpu::wrmsr_safe(apic::MSR_APIC_BASE, base | EN | EXTD).is_ok()),
                        Relaxed,
                    );
                }
                _ => {}
            }
            DONE[i].store(s, Relaxed);
            continue;
        }
        cpu::sti_hlt();
    }
}

/// Runs a command on AP `i` (woken by an IPI to APIC ID `dest`); returns
/// its result or `None` on timeout.
fn cmd_to(i: usize, dest: u32, op: u32, a: u32, b: u32) -> Option<u32> {
    cmd_wake(i, dest, u32::from(WAKE), op, a, b)
}

/// [`cmd_to`] with ICR low `wake` as the wake-up IPI (an NMI reaches a
/// software-disabled APIC).
fn cmd_wake(i: usize, dest: u32, wake: u32, op: u32, a: u32, b: u32) -> Option<u32> {
    OP[i].store(op, Relaxed);
    A[i].store(a, Relaxed);
    B[i].store(b, Relaxed);
    let s = SEQ[i].load(Relaxed) + 1;
    SEQ[i].store(s, Relaxed);
    apic::send_ipi(dest, wake);
    cpu::wait_us(200_000, || DONE[i].load(Relaxed) == s).then(|| RES[i].load(Relaxed))
}

fn cmd(i: usize, op: u32, a: u32, b: u32) -> Option<u32> {
    cmd_to(i, i as u32, op, a, b)
}

fn got(i: usize, v: u8) -> u32 {
    GOT[i][usize::from(v)].load(Relaxed)
}

/// Waits for `want(i)` delivery pattern of vector `v` (then a little
/// more for strays) and reports whether every CPU got it exactly
/// `want(i)` times (since `base`).
fn expect(n: usize, v: u8, base: &[u32; MAXC], want: impl Fn(usize) -> u32) -> bool {
    cpu::wait_us(100_000, || (0..n).all(|i| got(i, v) - base[i] >= want(i)));
    cpu::delay_us(2000);
    let okk = (0..n).all(|i| got(i, v) - base[i] == want(i));
    if !okk {
        let o = out().s("  vector ").hex(u64::from(v)).s(" per cpu:");
        for i in 0..n {
            o.s(" ").dec(u64::from(got(i, v) - base[i]));
        }
        out().nl();
    }
    okk
}

fn snap(v: u8) -> [u32; MAXC] {
    let mut b = [0; MAXC];
    for (i, x) in b.iter_mut().enumerate() {
        *x = got(i, v);
    }
    b
}

/// Sends vector `v` with ICR low `lo` (plus `v`) to `dest` and checks
/// that CPU i got it `want(i)` times.
fn ipi(n: usize, dest: u32, lo: u32, v: u8, want: impl Fn(usize) -> u32) -> bool {
    let b = snap(v);
    apic::send_ipi(dest, lo | u32::from(v));
    expect(n, v, &b, want)
}

#[no_mangle]
pub fn guest_main(boot: &BootInfo) {
    let n = (boot.cpus as usize).min(MAXC);
    out().s("conf_ipi: ").dec(n as u64).s(" cpus").nl();
    if n < 2 {
        skip("IPI and AP checks", "needs --cpus 2 or more");
        apic::set_mode_x2apic(true);
        skip("IPI and AP checks", "needs --cpus 2 or more");
        apic::set_mode_x2apic(false);
        return;
    }
    idt::set_hook(Some(hook));
    idt::set_nmi_hook(Some(nmi));
    smp::set_ap_early(early);
    smp::set_ap_main(ap_main);
    apic::sw_enable(0xff);
    cpu::sti();
    let up = smp::start_aps(n as u32 - 1, 2_000_000);
    eq(
        "INIT/SIPI/SIPI starts every AP from real mode",
        u64::from(up),
        n as u64 - 1,
    );
    if up != n as u32 - 1 {
        return;
    }
    ap_reset_values(n);
    xapic_ipis(n);
    init_sipi(n);
    if conf::x2apic_offered() {
        x2apic_ipis(n);
    } else {
        apic::set_mode_x2apic(true);
        skip("IPI checks", "CPUID.1:ECX.x2APIC is clear");
        apic::set_mode_x2apic(false);
    }
    cpu::cli();
    out().s("conf_ipi: done").nl();
}

fn every_ap(n: usize, k: usize, f: impl Fn(usize, u32) -> bool) -> bool {
    (1..n).all(|i| f(i, EARLY[i][k].load(Relaxed)))
}

fn ap_reset_values(n: usize) {
    ok(
        "AP reset: APIC_BASE = 0xFEE00800 (EN, no BSP bit)",
        every_ap(n, E_BASE, |_, v| v == 0xfee0_0800),
    );
    ok(
        "AP reset: ID = initial APIC ID",
        every_ap(n, 0, |i, v| v == (i as u32) << 24),
    );
    ok("AP reset: TPR = 0", every_ap(n, 1, |_, v| v == 0));
    ok("AP reset: LDR = 0", every_ap(n, 2, |_, v| v == 0));
    ok(
        "AP reset: DFR = 0xFFFFFFFF",
        every_ap(n, 3, |_, v| v == 0xffff_ffff),
    );
    ok("AP reset: SVR = 0xFF", every_ap(n, 4, |_, v| v == 0xff));
    ok(
        "AP reset: every LVT = 0x10000",
        (5..11).all(|k| every_ap(n, k, |_, v| v == 0x10000)),
    );
    ok(
        "AP reset: TMICT and TDCR = 0",
        every_ap(n, 11, |_, v| v == 0) && every_ap(n, 12, |_, v| v == 0),
    );
    ok(
        "AP reset: IRR, ISR, TMR empty",
        every_ap(n, E_IRR_ISR, |_, v| v == 0),
    );
}

fn set_all(n: usize, r: u32, f: impl Fn(usize) -> u32) {
    apic::write(r, f(0));
    for i in 1..n {
        cmd(i, OP_WRITE, r, f(i));
    }
}

fn common_ipis(n: usize, bcast: u32) {
    let odd = |i: usize| (i & 1) as u32;
    // Physical, each AP.
    let mut all = true;
    for t in 1..n {
        all &= ipi(n, t as u32, 0, 0x50 + t as u8, |i| u32::from(i == t));
    }
    ok("physical IPI reaches exactly its target AP", all);
    let mut all = true;
    for t in 1..n {
        let v = 0x58 + t as u8;
        let b = snap(v);
        cmd(t, OP_SEND, 0, u32::from(v));
        all &= expect(n, v, &b, |i| u32::from(i == 0));
    }
    ok("physical IPI from each AP reaches the BSP", all);
    ok(
        "physical broadcast reaches every CPU",
        ipi(n, bcast, 0, 0x60, |_| 1),
    );
    ok(
        "shorthand all-including-self reaches every CPU",
        ipi(n, 0, apic::ICR_ALL, 0x61, |_| 1),
    );
    ok(
        "shorthand all-excluding-self reaches every other CPU",
        ipi(n, 0, apic::ICR_OTHERS, 0x62, |i| u32::from(i != 0)),
    );
    ok(
        "shorthand self reaches only the sender",
        ipi(n, 0, apic::ICR_SELF, 0x63, |i| u32::from(i == 0)),
    );
    // NMI to every AP, with TPR raised on the target.
    set_all(n, reg::TPR, |i| if i == 0 { 0 } else { 0xe0 });
    let nb: [u32; MAXC] = core::array::from_fn(|i| NMI[i].load(Relaxed));
    for t in 1..n {
        // The vector field of an NMI is ignored.
        apic::send_ipi(t as u32, apic::ICR_NMI | 0x33);
    }
    let nmi_ok = cpu::wait_us(100_000, || (1..n).all(|i| NMI[i].load(Relaxed) > nb[i]));
    cpu::delay_us(1000);
    ok(
        "NMI IPI reaches each AP regardless of its TPR and vector field",
        nmi_ok
            && (1..n).all(|i| NMI[i].load(Relaxed) == nb[i] + 1 && got(i, 0x33) == 0)
            && NMI[0].load(Relaxed) == nb[0],
    );
    set_all(n, reg::TPR, |_| 0);
    let _ = odd;
}

fn xapic_ipis(n: usize) {
    common_ipis(n, 0xff);
    let odd = |i: usize| (i & 1) as u32;
    // Logical flat.
    set_all(n, reg::DFR, |_| 0xffff_ffff);
    set_all(n, reg::LDR, |i| 1 << (24 + i));
    let odd_mask: u32 = (0..n).filter(|i| i & 1 == 1).map(|i| 1 << i).sum();
    ok(
        "logical flat: LDR bitmap AND destination",
        ipi(n, odd_mask, 1 << 11, 0x64, odd),
    );
    ok(
        "logical flat: destination 0xFF reaches every CPU",
        ipi(n, 0xff, 1 << 11, 0x65, |_| 1),
    );
    ok(
        "logical flat: destination 0 reaches nobody",
        ipi(n, 0, 1 << 11, 0x66, |_| 0),
    );
    // Lowest priority among all: the last AP has the lowest TPR.
    let lowest = n - 1;
    set_all(n, reg::TPR, |i| {
        if i == lowest {
            0x10
        } else {
            0x20 + 0x10 * i as u32
        }
    });
    let b = snap(0x90);
    apic::send_ipi(0xff, (1 << 11) | (1 << 8) | 0x90);
    cpu::wait_us(100_000, || (0..n).any(|i| got(i, 0x90) > b[i]));
    cpu::delay_us(3000);
    let total: u32 = (0..n).map(|i| got(i, 0x90) - b[i]).sum();
    eq(
        "lowest priority: exactly one CPU gets it",
        u64::from(total),
        1,
    );
    ok(
        "lowest priority: the CPU with the lowest TPR gets it",
        got(lowest, 0x90) - b[lowest] == 1,
    );
    let lp = |v: u8| -> [u32; MAXC] {
        let b = snap(v);
        apic::send_ipi(0xff, (1 << 11) | (1 << 8) | u32::from(v));
        cpu::wait_us(100_000, || (0..n).any(|i| got(i, v) > b[i]));
        cpu::delay_us(3000);
        core::array::from_fn(|i| got(i, v) - b[i])
    };
    set_all(n, reg::TPR, |_| 0);
    let g = lp(0x91);
    eq(
        "lowest priority with equal priorities: exactly one CPU gets it",
        u64::from(g.iter().sum::<u32>()),
        1,
    );
    // A software-disabled APIC is not a candidate.
    set_all(n, reg::TPR, |i| if i == lowest { 0x10 } else { 0x30 });
    cmd(lowest, OP_WRITE, reg::SVR, 0xff);
    let g = lp(0x92);
    cmd_wake(lowest, lowest as u32, apic::ICR_NMI, OP_WRITE, reg::SVR, 0x1ff);
    ok(
        "lowest priority skips a software-disabled APIC",
        g.iter().sum::<u32>() == 1 && g[lowest] == 0,
    );
    set_all(n, reg::TPR, |_| 0);
    // Logical cluster: cluster 1 + (i & 1), member bit i >> 1.
    set_all(n, reg::DFR, |_| 0x0fff_ffff);
    set_all(n, reg::LDR, |i| {
        ((1 + (i as u32 & 1)) << 28) | (1 << (24 + (i >> 1)))
    });
    ok(
        "logical cluster: cluster ID and member bits match",
        ipi(n, 0x2f, 1 << 11, 0x67, odd),
    );
    ok(
        "logical cluster: one member of one cluster",
        ipi(n, 0x11, 1 << 11, 0x68, |i| u32::from(i == 0)),
    );
    ok(
        "logical cluster: cluster 0xF reaches that member of every cluster",
        ipi(n, 0xf1, 1 << 11, 0x69, |i| u32::from(i < 2)),
    );
    ok(
        "logical cluster: destination 0xFF reaches every CPU",
        ipi(n, 0xff, 1 << 11, 0x6a, |_| 1),
    );
    set_all(n, reg::DFR, |_| 0xffff_ffff);
    set_all(n, reg::LDR, |_| 0);
    // xAPIC ID changes.
    cmd(1, OP_WRITE, reg::ID, 0x21 << 24);
    let follows = ipi(n, 0x21, 0, 0x6b, |i| u32::from(i == 1));
    let old = ipi(n, 1, 0, 0x6c, |_| 0);
    cmd_to(1, 0x21, OP_WRITE, reg::ID, 1 << 24);
    ok("physical IPI follows a changed xAPIC ID", follows);
    ok("physical IPI to the old xAPIC ID reaches nobody", old);
    if n >= 3 {
        cmd(2, OP_WRITE, reg::ID, 1 << 24);
        let both = ipi(n, 1, 0, 0x6d, |i| u32::from(i == 1 || i == 2));
        cmd_to(2, 1, OP_WRITE, reg::ID, 2 << 24);
        ok("two APICs sharing an xAPIC ID both receive", both);
    } else {
        skip("two APICs sharing an xAPIC ID both receive", "needs 3 CPUs");
    }
}

fn init_sipi(n: usize) {
    let t = n - 1;
    let marker = 0x7100 as *mut u8;
    // Real-mode stub at 0x7000: mov byte cs:[0x100], 0x77; jmp 0x0800:0000.
    let stub: [u8; 11] = [
        0x2e, 0xc6, 0x06, 0x00, 0x01, 0x77, 0xea, 0x00, 0x00, 0x00, 0x08,
    ];
    unsafe {
        core::ptr::copy_nonoverlapping(stub.as_ptr(), 0x7000 as *mut u8, stub.len());
        core::ptr::write_volatile(marker, 0);
    }
    cmd(t, OP_WRITE, reg::TPR, 0x20);
    cmd(t, OP_WRITE, reg::LVT_TIMER, 0x31);
    cmd(t, OP_WRITE, reg::LDR, 0x0f00_0000);
    let e0 = ENTRIES[t].load(Relaxed);
    // INIT level de-assert: no reset.
    apic::send_ipi(t as u32, apic::ICR_INIT | (1 << 15));
    cpu::delay_us(3000);
    ok(
        "INIT level de-assert does not reset the target",
        cmd(t, OP_READ, reg::TPR, 0) == Some(0x20) && ENTRIES[t].load(Relaxed) == e0,
    );
    apic::send_ipi(t as u32, apic::ICR_STARTUP | 0x07);
    cpu::delay_us(5000);
    ok(
        "SIPI to a running AP is ignored",
        unsafe { core::ptr::read_volatile(marker) } == 0
            && ENTRIES[t].load(Relaxed) == e0
            && cmd(t, OP_READ, reg::TPR, 0) == Some(0x20),
    );
    // Software-disable the target: fixed IPIs are dropped, INIT and
    // SIPI still work.
    cmd(t, OP_WRITE, reg::SVR, 0xff);
    ok(
        "fixed IPI to a software-disabled AP is dropped",
        ipi(n, t as u32, 0, 0x6f, |_| 0),
    );
    apic::send_ipi(t as u32, apic::ICR_INIT | apic::ICR_ASSERT);
    cpu::delay_us(10_000);
    ok(
        "after INIT the AP waits for SIPI",
        ENTRIES[t].load(Relaxed) == e0,
    );
    apic::send_ipi(t as u32, apic::ICR_STARTUP | 0x07);
    let up = cpu::wait_us(500_000, || ENTRIES[t].load(Relaxed) > e0);
    ok(
        "SIPI starts the AP in real mode at CS = vector << 8",
        up && unsafe { core::ptr::read_volatile(marker) } == 0x77,
    );
    ok("INIT and SIPI accepted while software-disabled", up);
    let e = |k: usize| EARLY[t][k].load(Relaxed);
    eq("INIT reset: TPR = 0", u64::from(e(1)), 0);
    eq("INIT reset: LVT timer = 0x10000", u64::from(e(5)), 0x10000);
    eq("INIT reset: LDR = 0", u64::from(e(2)), 0);
    eq("INIT reset: SVR = 0xFF", u64::from(e(4)), 0xff);
    eq("INIT keeps the APIC ID", u64::from(e(0)), (t as u64) << 24);
    eq(
        "INIT keeps APIC_BASE",
        u64::from(EARLY[t][E_BASE].load(Relaxed)),
        0xfee0_0800,
    );
    cpu::delay_us(2000);
    unsafe { core::ptr::write_volatile(marker, 0) };
    let e1 = ENTRIES[t].load(Relaxed);
    apic::send_ipi(t as u32, apic::ICR_STARTUP | 0x07);
    cpu::delay_us(5000);
    ok(
        "a second SIPI after start-up is ignored",
        unsafe { core::ptr::read_volatile(marker) } == 0 && ENTRIES[t].load(Relaxed) == e1,
    );
    ok(
        "restarted AP answers IPIs",
        ipi(n, t as u32, 0, 0x6e, |i| u32::from(i == t)),
    );
}

fn x2apic_ipis(n: usize) {
    let mut sw = true;
    for i in 1..n {
        sw &= cmd(i, OP_X2APIC, 0, 0) == Some(1);
    }
    apic::enable_x2apic();
    ok("every AP switches to x2APIC", sw);
    let mut ids = true;
    let mut ldrs = true;
    for i in 1..n {
        ids &= cmd(i, OP_READ, reg::ID, 0) == Some(i as u32);
        ldrs &= cmd(i, OP_READ, reg::LDR, 0) == Some(1 << i);
    }
    ok("AP x2APIC ID = CPU index", ids);
    ok("AP x2APIC LDR derived from its ID", ldrs);
    common_ipis(n, 0xffff_ffff);
    let odd = |i: usize| (i & 1) as u32;
    let odd_mask: u32 = (0..n).filter(|i| i & 1 == 1).map(|i| 1 << i).sum();
    ok(
        "x2APIC cluster: cluster 0 member bits",
        ipi(n, odd_mask, 1 << 11, 0x64, odd),
    );
    ok(
        "x2APIC cluster: another cluster ID reaches nobody",
        ipi(n, (1 << 16) | 0xffff, 1 << 11, 0x65, |_| 0),
    );
    ok(
        "x2APIC logical 0xFFFFFFFF reaches every CPU",
        ipi(n, 0xffff_ffff, 1 << 11, 0x66, |_| 1),
    );
    ok(
        "x2APIC physical to an absent ID reaches nobody",
        ipi(n, 0x100, 0, 0x67, |_| 0),
    );
    x2apic_init(n);
}

/// INIT in x2APIC mode keeps the mode, the 32-bit ID and the LDR and
/// resets the rest. The restarted AP cannot find its ID (see `early`)
/// and stays idle afterwards, so this runs last.
fn x2apic_init(n: usize) {
    let t = n - 1;
    cmd(t, OP_WRITE, reg::TPR, 0x20);
    cmd(t, OP_WRITE, reg::LVT_TIMER, 0x31);
    let n0 = X2INIT_N.load(Relaxed);
    apic::send_ipi(t as u32, apic::ICR_INIT | apic::ICR_ASSERT);
    cpu::delay_us(10_000);
    apic::send_ipi(t as u32, apic::ICR_STARTUP | 0x08);
    let up = cpu::wait_us(500_000, || X2INIT_N.load(Relaxed) > n0);
    let g = |k: usize| if up { u64::from(X2INIT[k].load(Relaxed)) } else { 0xdead };
    ok("x2APIC INIT/SIPI restarts the AP", up);
    eq("x2APIC INIT keeps x2APIC mode (EN, EXTD)", g(0) & 0xc00, 0xc00);
    eq("x2APIC INIT keeps the 32-bit ID", g(1), t as u64);
    eq("x2APIC INIT keeps the LDR", g(2), 1 << t);
    eq("x2APIC INIT resets TPR", g(3), 0);
    eq("x2APIC INIT resets SVR to 0xFF", g(4), 0xff);
    eq("x2APIC INIT resets the LVT timer", g(5), 0x10000);
}
