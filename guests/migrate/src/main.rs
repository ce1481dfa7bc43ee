//! `migrate`: LAPIC work that must survive irqchip switches (KVM's
//! in-kernel LAPIC <-> vlapic) done by `vlapic-vmm --switch-irqchip-after`.
//!
//! Every CPU (1 or 2; x2APIC if CPUID offers it, else xAPIC) runs a loop
//! until the VMM's switch port (0x5C0: switches done | planned << 16) says
//! all switches happened, plus a settle time:
//!
//! - a timer: with 2 CPUs, CPU 0 a periodic APIC timer (TDCR /4, 4 ms) and
//!   CPU 1 a TSC-deadline timer re-armed in its handler on an absolute
//!   3 ms schedule; with 1 CPU the timer changes kind every two switches
//!   (periodic across switches 1 and 2, TSC deadline across 3 and 4) after
//!   a settle time (switches more than 300 ms apart). Per timer segment:
//!   periodic ticks vs elapsed TSC (ticks coalesced within one switch
//!   generation excused), deadline interrupts vs deadlines passed, no
//!   deadline early;
//! - self-IPIs (ICR shorthand self, and the x2APIC SELF IPI register),
//!   one at a time with a sequence count: each delivered exactly once;
//! - with 2 CPUs, fixed IPIs to the other CPU, same rule;
//! - registers read back unchanged on every iteration: ID, version, TPR,
//!   PPR (= TPR, nothing in service), CR8, LDR, DFR (xAPIC), SVR, the LVTs,
//!   TDCR, TMICT, TMCCT within the period, the TSC deadline (armed or 0),
//!   ESR = 0.
//!
//! Results per switch "generation" (interrupts, IPIs, register reads in
//! each) are printed by the BSP, then the summary; exit via debug-exit.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use guest_support::apic::{self, reg};
use guest_support::conf;
use guest_support::cpu;
use guest_support::idt;
use guest_support::smp;
use guest_support::test::{check, check_eq};
use guest_support::{out, BootInfo};

const PERIODIC_VEC: u8 = 0x40;
const DEADLINE_VEC: u8 = 0x41;
const SELF_VEC: u8 = 0x50;
const X_VEC: u8 = 0x51;
const ERROR_VEC: u8 = 0x33;
const TPR: u32 = 0x10;
const PERIOD_MS: u64 = 4;
const DEADLINE_MS: u64 = 3;
const SETTLE_MS: u64 = 300;
const LOST_MS: u64 = 300;
const MAX_MS: u64 = 30_000;
const MIGRATE_PORT: u16 = 0x5c0;
/// At most one IPI of each kind per this many microseconds: a flood of
/// higher vectors starves the timer's (KVM's LAPIC coalesced most ticks
/// of a 4 ms periodic timer on 2 busy vCPUs here).
const IPI_GAP_US: u64 = 1000;
const NCPU: usize = 2;
const NGEN: usize = 17;

type Counters = [AtomicU32; NCPU];
const Z: AtomicU32 = AtomicU32::new(0);
const Z64: AtomicU64 = AtomicU64::new(0);

static CUR_GEN: Counters = [Z; NCPU];
static TICKS: Counters = [Z; NCPU];
/// Periodic ticks the CPU could not take in time (the previous one was
/// still pending: coalesced), counted only within one switch generation
/// (host load, not a switch); a tick lost at a switch is not excused.
static COALESCED: Counters = [Z; NCPU];
static LAST_TICK: [AtomicU64; NCPU] = [Z64; NCPU];
static SEG_START: [AtomicU64; NCPU] = [Z64; NCPU];
static LAST_TICK_GEN: Counters = [Z; NCPU];
static PERIOD_TSC: AtomicU64 = AtomicU64::new(0);
static DL_FIRED: Counters = [Z; NCPU];
static DL_EARLY: Counters = [Z; NCPU];
static DL_NEXT: [AtomicU64; NCPU] = [Z64; NCPU];
static DL_PERIOD: AtomicU64 = AtomicU64::new(0);
static SELF_SENT: Counters = [Z; NCPU];
static SELF_RECV: Counters = [Z; NCPU];
static SELF_DUP: Counters = [Z; NCPU];
static SELF_LOST: Counters = [Z; NCPU];
static X_SENT: Counters = [Z; NCPU];
static X_RECV: Counters = [Z; NCPU];
static X_DUP: Counters = [Z; NCPU];
static X_LOST: Counters = [Z; NCPU];
static ERRORS: Counters = [Z; NCPU];
static SPURIOUS: Counters = [Z; NCPU];
static MISMATCHES: Counters = [Z; NCPU];
static FIRST_BAD: [[AtomicU64; 4]; NCPU] = [const { [Z64; 4] }; NCPU];
static DONE: Counters = [Z; NCPU];
static GO: AtomicU32 = AtomicU32::new(0);
static START_GEN: Counters = [Z; NCPU];
static END_GEN: Counters = [Z; NCPU];
static TIMER_GEN: [[AtomicU32; NGEN]; NCPU] = [const { [Z; NGEN] }; NCPU];
static SELF_GEN: [[AtomicU32; NGEN]; NCPU] = [const { [Z; NGEN] }; NCPU];
static X_GEN: [[AtomicU32; NGEN]; NCPU] = [const { [Z; NGEN] }; NCPU];
static REGS_GEN: [[AtomicU32; NGEN]; NCPU] = [const { [Z; NGEN] }; NCPU];
/// Timer segments, checked and printed by the BSP: per CPU up to 8 of
/// (kind, first gen, last gen, count, expected, early).
static SEGS: [[[AtomicU64; 6]; 8]; NCPU] = [const { [const { [Z64; 6] }; 8] }; NCPU];
static NSEGS: Counters = [Z; NCPU];

fn inc(c: &AtomicU32) {
    c.store(c.load(Relaxed) + 1, Relaxed);
}

fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: port input, no memory.
    unsafe {
        core::arch::asm!("in eax, dx", in("dx") port, out("eax") v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// (switches done, planned).
fn switches() -> (u32, u32) {
    let v = inl(MIGRATE_PORT);
    if v == 0xffff_ffff {
        return (0, 0);
    }
    (v & 0xffff, v >> 16)
}

fn ms_tsc(ms: u64) -> u64 {
    ms * cpu::tsc_khz()
}

fn hook(v: u8) {
    let c = smp::cpu_index() as usize % NCPU;
    let g = (CUR_GEN[c].load(Relaxed) as usize).min(NGEN - 1);
    match v {
        PERIODIC_VEC => {
            inc(&TICKS[c]);
            inc(&TIMER_GEN[c][g]);
            let now = cpu::rdtsc();
            let gen = switches().0;
            // Index of the period that ended last, on the TSC schedule
            // since the timer started: more than one since the last tick
            // means ticks were coalesced.
            let p = PERIOD_TSC.load(Relaxed).max(1);
            let m = (now - SEG_START[c].load(Relaxed)) / p;
            let (last, lg) = (LAST_TICK[c].load(Relaxed), LAST_TICK_GEN[c].load(Relaxed));
            // Signed: a late tick followed by a prompt one (jitter, or
            // the timer's phase drifting against the TSC schedule) nets 0.
            if lg == gen {
                let k = &COALESCED[c];
                let d = m as i64 - last as i64 - 1;
                k.store((i64::from(k.load(Relaxed) as i32) + d) as u32, Relaxed);
            }
            LAST_TICK[c].store(m, Relaxed);
            LAST_TICK_GEN[c].store(gen, Relaxed);
        }
        DEADLINE_VEC => {
            let now = cpu::rdtsc();
            let due = DL_NEXT[c].load(Relaxed);
            if due != 0 {
                if now < due {
                    inc(&DL_EARLY[c]);
                }
                inc(&DL_FIRED[c]);
                inc(&TIMER_GEN[c][g]);
                let next = due + DL_PERIOD.load(Relaxed);
                DL_NEXT[c].store(next, Relaxed);
                cpu::wrmsr(apic::MSR_TSC_DEADLINE, next);
            }
        }
        SELF_VEC => {
            inc(&SELF_RECV[c]);
            inc(&SELF_GEN[c][g]);
            if SELF_RECV[c].load(Relaxed) > SELF_SENT[c].load(Relaxed) {
                inc(&SELF_DUP[c]);
            }
        }
        X_VEC => {
            inc(&X_RECV[c]);
            inc(&X_GEN[c][g]);
            if X_RECV[c].load(Relaxed) > X_SENT[1 - c].load(Relaxed) {
                inc(&X_DUP[c]);
            }
        }
        ERROR_VEC => inc(&ERRORS[c]),
        0xff => inc(&SPURIOUS[c]),
        _ => {}
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Periodic,
    Deadline,
}

/// The timer CPU `c` runs in switch generation `g`.
fn kind_for(c: usize, cpus: usize, g: u32) -> Kind {
    let pick = if cpus > 1 { c as u32 } else { (g / 2) % 2 };
    if pick == 0 {
        Kind::Periodic
    } else {
        Kind::Deadline
    }
}

/// Registers checked every iteration: (offset, expected).
const CHECKED: [u32; 13] = [
    reg::ID,
    reg::VERSION,
    reg::TPR,
    reg::LDR,
    reg::SVR,
    reg::LVT_TIMER,
    0x330,
    0x340,
    reg::LVT_LINT0,
    reg::LVT_LINT1,
    reg::LVT_ERROR,
    reg::TDCR,
    reg::TMICT,
];

struct Cpu {
    c: usize,
    cpus: usize,
    kind: Kind,
    expect: [u32; 13],
    dfr: Option<u32>,
    seg_start: u64,
    seg_gen: u32,
    period_tsc: u64,
}

impl Cpu {
    fn start_timer(&mut self, kind: Kind, gen: u32) {
        self.kind = kind;
        let now;
        match kind {
            Kind::Periodic => {
                apic::write(reg::LVT_TIMER, u32::from(PERIODIC_VEC) | (1 << 17));
                apic::write(reg::TDCR, 0b0001);
                TICKS[self.c].store(0, Relaxed);
                COALESCED[self.c].store(0, Relaxed);
                now = cpu::rdtsc();
                SEG_START[self.c].store(now, Relaxed);
                LAST_TICK[self.c].store(0, Relaxed);
                LAST_TICK_GEN[self.c].store(switches().0, Relaxed);
                apic::write(reg::TMICT, (conf::bus_khz() * PERIOD_MS / 4) as u32);
            }
            Kind::Deadline => {
                apic::write(reg::TMICT, 0);
                apic::write(reg::TDCR, 0b1010);
                apic::write(reg::LVT_TIMER, u32::from(DEADLINE_VEC) | (2 << 17));
                DL_FIRED[self.c].store(0, Relaxed);
                DL_EARLY[self.c].store(0, Relaxed);
                now = cpu::rdtsc();
                let first = now + DL_PERIOD.load(Relaxed);
                DL_NEXT[self.c].store(first, Relaxed);
                cpu::wrmsr(apic::MSR_TSC_DEADLINE, first);
            }
        }
        self.seg_start = now;
        self.seg_gen = gen;
        for (i, off) in CHECKED.iter().enumerate() {
            self.expect[i] = apic::read(*off);
        }
    }

    /// Stops the timer and records the segment.
    fn stop_timer(&mut self, gen: u32) {
        let c = self.c;
        cpu::cli();
        let now = cpu::rdtsc();
        let (count, expected, early) = match self.kind {
            Kind::Periodic => {
                apic::write(reg::TMICT, 0);
                let n = u64::from(TICKS[c].load(Relaxed));
                let k = (COALESCED[c].load(Relaxed) as i32).max(0) as u64;
                (n, (now - self.seg_start) / self.period_tsc, k)
            }
            Kind::Deadline => {
                cpu::wrmsr(apic::MSR_TSC_DEADLINE, 0);
                let first = self.seg_start + DL_PERIOD.load(Relaxed);
                let passed = if now >= first {
                    (now - first) / DL_PERIOD.load(Relaxed) + 1
                } else {
                    0
                };
                DL_NEXT[c].store(0, Relaxed);
                (
                    u64::from(DL_FIRED[c].load(Relaxed)),
                    passed,
                    u64::from(DL_EARLY[c].load(Relaxed)),
                )
            }
        };
        apic::write(reg::LVT_TIMER, 1 << 16);
        cpu::sti();
        let n = NSEGS[c].load(Relaxed) as usize;
        if n < 8 {
            let s = &SEGS[c][n];
            s[0].store(self.kind as u64, Relaxed);
            s[1].store(u64::from(self.seg_gen), Relaxed);
            s[2].store(u64::from(gen), Relaxed);
            s[3].store(count, Relaxed);
            s[4].store(expected, Relaxed);
            s[5].store(early, Relaxed);
            NSEGS[c].store(n as u32 + 1, Relaxed);
        }
    }

    fn bad(&self, gen: u32, off: u32, got: u64, want: u64) {
        let c = self.c;
        if MISMATCHES[c].load(Relaxed) == 0 {
            let f = &FIRST_BAD[c];
            f[0].store(u64::from(gen), Relaxed);
            f[1].store(u64::from(off), Relaxed);
            f[2].store(got, Relaxed);
            f[3].store(want, Relaxed);
        }
        inc(&MISMATCHES[c]);
    }

    /// Reads every checked register back (IF=0); true if all match.
    fn check_regs(&self, gen: u32) -> bool {
        let before = MISMATCHES[self.c].load(Relaxed);
        for (i, off) in CHECKED.iter().enumerate() {
            let v = apic::read(*off);
            if v != self.expect[i] {
                self.bad(gen, *off, u64::from(v), u64::from(self.expect[i]));
            }
        }
        let ppr = apic::read(reg::PPR);
        if ppr != TPR {
            self.bad(gen, reg::PPR, u64::from(ppr), u64::from(TPR));
        }
        let cr8 = cpu::read_cr8();
        if cr8 != u64::from(TPR >> 4) {
            self.bad(gen, 0xc8, cr8, u64::from(TPR >> 4));
        }
        if let Some(d) = self.dfr {
            let v = apic::read(reg::DFR);
            if v != d {
                self.bad(gen, reg::DFR, u64::from(v), u64::from(d));
            }
        }
        let esr = conf::esr();
        if esr != 0 {
            self.bad(gen, reg::ESR, u64::from(esr), 0);
        }
        match self.kind {
            Kind::Periodic => {
                let cc = apic::read(reg::TMCCT);
                let init = self.expect[12];
                if cc == 0 || cc > init {
                    self.bad(gen, reg::TMCCT, u64::from(cc), u64::from(init));
                }
            }
            Kind::Deadline => {
                let d = cpu::rdmsr(apic::MSR_TSC_DEADLINE);
                let want = DL_NEXT[self.c].load(Relaxed);
                if d != want && d != 0 {
                    self.bad(gen, 0x6e0, d, want);
                }
            }
        }
        MISMATCHES[self.c].load(Relaxed) == before
    }

    fn run(&mut self) {
        let c = self.c;
        let peer = 1 - c.min(1);
        let x2 = apic::is_x2apic();
        let t0 = cpu::rdtsc();
        let (g0, planned) = switches();
        START_GEN[c].store(g0, Relaxed);
        CUR_GEN[c].store(g0, Relaxed);
        self.start_timer(kind_for(c, self.cpus, g0), g0);
        let mut gen = g0;
        let mut gen_at = t0;
        let mut self_at = t0;
        let mut x_at = t0;
        let mut use_self_reg = false;
        cpu::sti();
        loop {
            let now = cpu::rdtsc();
            let (g, _) = switches();
            if g != gen {
                gen = g;
                gen_at = now;
                CUR_GEN[c].store(g, Relaxed);
            }
            let settled = now - gen_at >= ms_tsc(SETTLE_MS);
            if (gen >= planned && settled) || now - t0 > ms_tsc(MAX_MS) {
                break;
            }
            // One CPU: change the timer kind once the switch has settled.
            let want = kind_for(c, self.cpus, gen);
            if want != self.kind && settled {
                self.stop_timer(gen);
                self.start_timer(want, gen);
            }
            // Self-IPI, one at a time.
            let (ss, sr) = (SELF_SENT[c].load(Relaxed), SELF_RECV[c].load(Relaxed));
            if sr >= ss && now - self_at >= IPI_GAP_US * cpu::tsc_khz() / 1000 {
                SELF_SENT[c].store(ss + 1, Relaxed);
                self_at = now;
                if x2 && use_self_reg {
                    cpu::wrmsr(0x83f, u64::from(SELF_VEC));
                } else {
                    apic::send_ipi(0, apic::ICR_SELF | u32::from(SELF_VEC));
                }
                use_self_reg = !use_self_reg;
            } else if sr < ss && now - self_at > ms_tsc(LOST_MS) {
                inc(&SELF_LOST[c]);
                SELF_SENT[c].store(sr, Relaxed);
            }
            // IPI to the other CPU, one at a time.
            if self.cpus > 1 && DONE[peer].load(Relaxed) == 0 {
                let (xs, xr) = (X_SENT[c].load(Relaxed), X_RECV[peer].load(Relaxed));
                if xr >= xs && now - x_at >= IPI_GAP_US * cpu::tsc_khz() / 1000 {
                    X_SENT[c].store(xs + 1, Relaxed);
                    x_at = now;
                    apic::send_ipi(peer as u32, u32::from(X_VEC));
                } else if xr < xs && now - x_at > ms_tsc(LOST_MS) {
                    inc(&X_LOST[c]);
                    X_SENT[c].store(xr, Relaxed);
                }
            }
            cpu::cli();
            if self.check_regs(gen) {
                inc(&REGS_GEN[c][(gen as usize).min(NGEN - 1)]);
            }
            cpu::sti_hlt();
        }
        self.stop_timer(gen);
        END_GEN[c].store(gen, Relaxed);
        // Let the last IPIs land.
        cpu::wait_us(LOST_MS * 1000, || {
            SELF_RECV[c].load(Relaxed) >= SELF_SENT[c].load(Relaxed)
        });
        DONE[c].store(1, Relaxed);
    }
}

fn setup(c: usize, cpus: usize) -> Cpu {
    idt::set_hook(Some(hook));
    apic::write(reg::SVR, 0x1ff);
    apic::write(reg::TPR, TPR);
    apic::write(reg::LVT_LINT0, 0x1_0032);
    apic::write(reg::LVT_LINT1, 0x1_0400);
    apic::write(reg::LVT_ERROR, u32::from(ERROR_VEC));
    apic::write(0x330, 0x1_0035);
    apic::write(0x340, 0x1_0034);
    let dfr = if apic::is_x2apic() {
        None
    } else {
        apic::write(reg::DFR, 0xffff_ffff);
        apic::write(reg::LDR, 1 << (24 + c));
        Some(0xffff_ffff)
    };
    conf::esr();
    let khz = cpu::tsc_khz();
    Cpu {
        c,
        cpus,
        kind: Kind::Periodic,
        expect: [0; 13],
        dfr,
        seg_start: 0,
        seg_gen: 0,
        period_tsc: khz * PERIOD_MS,
    }
}

fn ap_main(id: u32) {
    while GO.load(Relaxed) == 0 {
        cpu::pause();
    }
    if GO.load(Relaxed) == 2 {
        cpu::wrmsr(
            apic::MSR_APIC_BASE,
            cpu::rdmsr(apic::MSR_APIC_BASE) | (1 << 10) | (1 << 11),
        );
    }
    let mut me = setup(id as usize % NCPU, 2);
    me.run();
}

#[no_mangle]
pub fn guest_main(boot: &BootInfo) {
    let cpus = (boot.cpus as usize).clamp(1, NCPU);
    let x2 = conf::x2apic_offered();
    DL_PERIOD.store(ms_tsc(DEADLINE_MS), Relaxed);
    PERIOD_TSC.store(ms_tsc(PERIOD_MS), Relaxed);
    let (g, planned) = switches();
    out()
        .s("migrate: ")
        .dec(cpus as u64)
        .s(" cpu(s), ")
        .s(if x2 { "x2APIC" } else { "xAPIC" })
        .s(", switches done ")
        .dec(u64::from(g))
        .s(" of ")
        .dec(u64::from(planned))
        .nl();
    check("the VMM plans irqchip switches (port 0x5c0)", planned > 0);
    if !conf::tsc_deadline_offered() {
        check("CPUID offers the TSC-deadline timer", false);
        return;
    }
    apic::sw_enable(0xff);
    if cpus > 1 {
        smp::set_ap_main(ap_main);
        let up = smp::start_aps(1, 1_000_000);
        check_eq("AP online", u64::from(up), 1);
    }
    if x2 {
        apic::enable_x2apic();
        GO.store(2, Relaxed);
    } else {
        GO.store(1, Relaxed);
    }
    let mut me = setup(0, cpus);
    me.run();
    if cpus > 1 {
        cpu::wait_us(5_000_000, || DONE[1].load(Relaxed) != 0);
        check("AP finished its loop", DONE[1].load(Relaxed) != 0);
        cpu::delay_us(LOST_MS * 1000);
    }
    cpu::cli();
    report(cpus, planned);
}

fn report(cpus: usize, planned: u32) {
    for c in 0..cpus {
        let p = if c == 0 { "cpu0: " } else { "cpu1: " };
        let (g0, g1) = (START_GEN[c].load(Relaxed), END_GEN[c].load(Relaxed));
        out()
            .s(p)
            .s("ran from switch ")
            .dec(u64::from(g0))
            .s(" to ")
            .dec(u64::from(g1))
            .nl();
        check_pfx(p, "saw every planned switch", g1 == planned && g0 < planned);
        for g in g0..=g1.min(NGEN as u32 - 1) {
            let gi = g as usize;
            let (t, s, x, r) = (
                TIMER_GEN[c][gi].load(Relaxed),
                SELF_GEN[c][gi].load(Relaxed),
                X_GEN[c][gi].load(Relaxed),
                REGS_GEN[c][gi].load(Relaxed),
            );
            out()
                .s(p)
                .s("after switch ")
                .dec(u64::from(g))
                .s(": timer interrupts ")
                .dec(u64::from(t))
                .s(", self-IPIs ")
                .dec(u64::from(s))
                .s(", IPIs from the other CPU ")
                .dec(u64::from(x))
                .s(", clean register read-backs ")
                .dec(u64::from(r))
                .nl();
            let ok = t > 0 && s > 0 && r > 0 && (cpus == 1 || x > 0);
            check_pfx(
                p,
                "timer, IPIs and register read-backs in every generation",
                ok,
            );
        }
        let n = NSEGS[c].load(Relaxed) as usize;
        for i in 0..n.min(8) {
            let s = &SEGS[c][i];
            let (kind, ga, gb, count, expected, early) = (
                s[0].load(Relaxed),
                s[1].load(Relaxed),
                s[2].load(Relaxed),
                s[3].load(Relaxed),
                s[4].load(Relaxed),
                s[5].load(Relaxed),
            );
            let name = if kind == Kind::Periodic as u64 {
                "periodic APIC timer"
            } else {
                "TSC-deadline timer"
            };
            out()
                .s(p)
                .s(name)
                .s(" across switches ")
                .dec(ga)
                .s("..")
                .dec(gb)
                .s(": ")
                .dec(count)
                .s(" interrupts, ")
                .dec(expected)
                .s(" expected from the TSC")
                .nl();
            // Periodic: ticks coalesced within a generation (host load)
            // are excused, a tick lost at a switch is not; 1 for the
            // segment's ends. Deadline: none early, none lost (the
            // schedule is absolute, late ones catch up).
            let periodic = kind == Kind::Periodic as u64;
            let excused = if periodic { early } else { 0 };
            if periodic {
                out()
                    .s(p)
                    .s("  (")
                    .dec(early)
                    .s(" ticks coalesced within a generation: host load)")
                    .nl();
            }
            let ok = count <= expected + 1
                && count + 1 + excused >= expected
                && (periodic || early == 0);
            check_pfx(
                p,
                "timer interrupts match the elapsed TSC (none lost, none extra, none early)",
                ok,
            );
        }
        let (ss, sr) = (SELF_SENT[c].load(Relaxed), SELF_RECV[c].load(Relaxed));
        out()
            .s(p)
            .s("self-IPIs sent ")
            .dec(u64::from(ss))
            .s(" received ")
            .dec(u64::from(sr))
            .s(" lost ")
            .dec(u64::from(SELF_LOST[c].load(Relaxed)))
            .s(" duplicated ")
            .dec(u64::from(SELF_DUP[c].load(Relaxed)))
            .nl();
        check_pfx(
            p,
            "every self-IPI delivered exactly once",
            ss == sr && SELF_LOST[c].load(Relaxed) == 0 && SELF_DUP[c].load(Relaxed) == 0 && ss > 0,
        );
        if cpus > 1 {
            let peer = 1 - c;
            let (xs, xr) = (X_SENT[peer].load(Relaxed), X_RECV[c].load(Relaxed));
            out()
                .s(p)
                .s("IPIs from the other CPU sent ")
                .dec(u64::from(xs))
                .s(" received ")
                .dec(u64::from(xr))
                .s(" lost ")
                .dec(u64::from(X_LOST[peer].load(Relaxed)))
                .s(" duplicated ")
                .dec(u64::from(X_DUP[c].load(Relaxed)))
                .nl();
            check_pfx(
                p,
                "every IPI from the other CPU delivered exactly once",
                xs == xr
                    && X_LOST[peer].load(Relaxed) == 0
                    && X_DUP[c].load(Relaxed) == 0
                    && xs > 0,
            );
        }
        let m = MISMATCHES[c].load(Relaxed);
        if m != 0 {
            let f = &FIRST_BAD[c];
            out()
                .s(p)
                .s("first register mismatch after switch ")
                .dec(f[0].load(Relaxed))
                .s(": offset ")
                .hex(f[1].load(Relaxed))
                .s(" got ")
                .hex(f[2].load(Relaxed))
                .s(" want ")
                .hex(f[3].load(Relaxed))
                .nl();
        }
        check_eq_pfx(p, "register read-back mismatches", u64::from(m), 0);
        check_eq_pfx(
            p,
            "LVT error interrupts",
            u64::from(ERRORS[c].load(Relaxed)),
            0,
        );
        check_eq_pfx(
            p,
            "spurious interrupts",
            u64::from(SPURIOUS[c].load(Relaxed)),
            0,
        );
    }
}

use guest_support::test::{check_eq_pfx, check_pfx};
