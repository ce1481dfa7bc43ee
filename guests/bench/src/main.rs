//! `bench`: per-operation APIC microbenchmarks, timed with the TSC inside
//! the guest, for `vlapic-vmm bench` (which runs this guest under both
//! LAPIC backends and compares).
//!
//! Every operation is timed one call at a time (`RDTSC` before and
//! after), `n` times; the guest prints the median, p10 and p90 in TSC
//! cycles and in ns (TSC frequency from `cpu::tsc_khz`):
//!
//! ```text
//! BENCHINFO: tsc_khz 2596134 cpus 2 x2apic 1 tsc_deadline 1
//! BENCH: <name> <median_cyc> <p10_cyc> <p90_cyc> <n> <median_ns> <p10_ns> <p90_ns> <phase>
//! BENCHSKIP: <name> (<why>)
//! BENCHFAIL: <name> (<why>)
//! ```
//!
//! Before an operation's loop the guest writes its phase number to port
//! [`PHASE_PORT`] and 0 after it, so that the VMM's `--profile` can count
//! the exits (of all vCPUs) and time the userspace work inside each
//! loop. The port is otherwise unclaimed (ignored).
//!
//! Guest code runs emulated on this project's KVM (kvm_pvm), so even
//! the `null` row (two back-to-back `RDTSC`s) costs about a microsecond:
//! every row includes it. Latency rows (`*_latency`) are not round
//! trips but the delay from the programmed expiry to the handler.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use guest_support::apic::{self, reg};
use guest_support::{conf, cpu, idt, out, smp, BootInfo};

/// The phase port watched by `vlapic-vmm --profile`.
pub const PHASE_PORT: u16 = 0x5b0;
/// Port for the bare-exit baseline: nothing claims it.
const IGNORED_PORT: u16 = 0x80;

const MAX_N: usize = 1000;
/// One access per sample.
const N_ACCESS: usize = 1000;
/// Interrupt round trips.
const N_IRQ: usize = 400;
/// Timer latencies (each waits at least `TIMER_US`).
const N_TIMER: usize = 200;
/// How far ahead timers are programmed.
const TIMER_US: u64 = 50;

const SELF_V: u8 = 0x40;
const EOI_V: u8 = 0x41;
const PING: u8 = 0x50;
const PONG: u8 = 0x51;
const WAKE: u8 = 0x52;
const TSCDL_V: u8 = 0x60;
const ONESHOT_V: u8 = 0x61;

const EN: u64 = 1 << 11;
const EXTD: u64 = 1 << 10;

/// TSC at the entry of the last timer handler.
static TIMER_TSC: AtomicU64 = AtomicU64::new(0);
/// BSP -> AP command: 1 = switch to x2APIC.
static AP_CMD: AtomicU32 = AtomicU32::new(0);
static AP_ACK: AtomicU32 = AtomicU32::new(0);
static PHASE: AtomicU32 = AtomicU32::new(0);

fn hook(v: u8) {
    match v {
        TSCDL_V | ONESHOT_V => TIMER_TSC.store(cpu::rdtsc(), Relaxed),
        PING if smp::cpu_index() != 0 => apic::send_ipi(0, u32::from(PONG)),
        _ => {}
    }
}

fn ap_main(_id: u32) {
    loop {
        cpu::sti_hlt();
        if AP_CMD.load(Relaxed) == 1 && AP_ACK.load(Relaxed) == 0 {
            // Not apic::enable_x2apic(): its mode flag is shared with the
            // BSP, which switches (and sets it) after this ACK.
            cpu::wrmsr(apic::MSR_APIC_BASE, apic::base_msr() | EN | EXTD);
            AP_ACK.store(1, Relaxed);
        }
    }
}

fn set_phase(p: u32) {
    // SAFETY: port I/O to a port the VMM ignores (or profiles).
    unsafe { cpu::outl(PHASE_PORT, p) };
}

/// Spins (no PAUSE: finer than one emulated PAUSE) until `cond`, at most
/// `us` microseconds.
fn spin_until(us: u64, cond: impl Fn() -> bool) -> bool {
    let end = cpu::rdtsc().wrapping_add(us * cpu::tsc_khz() / 1000);
    loop {
        if cond() {
            return true;
        }
        if (cpu::rdtsc().wrapping_sub(end) as i64) >= 0 {
            return cond();
        }
    }
}

fn ns(cycles: u64, khz: u64) -> u64 {
    (u128::from(cycles) * 1_000_000 / u128::from(khz.max(1))) as u64
}

/// Runs `f` `n` times (each call returns one sample in cycles, or `None`
/// if the operation did not complete) and prints the `BENCH:` line.
fn bench(name: &str, n: usize, mut f: impl FnMut(usize) -> Option<u64>) {
    let phase = PHASE.load(Relaxed) + 1;
    PHASE.store(phase, Relaxed);
    let n = n.min(MAX_N);
    // 8 KiB on the 64 KiB boot stack.
    let mut buf = [0u64; MAX_N];
    let s = &mut buf;
    set_phase(phase);
    let mut got = 0;
    for i in 0..n {
        match f(i) {
            Some(c) => {
                s[got] = c;
                got += 1;
            }
            None => break,
        }
    }
    set_phase(0);
    if got < n {
        out()
            .s("BENCHFAIL: ")
            .s(name)
            .s(" (operation did not complete, after ")
            .dec(got as u64)
            .s(" samples)")
            .nl();
        return;
    }
    let s = &mut s[..n];
    s.sort_unstable();
    let (med, p10, p90) = (s[n / 2], s[n / 10], s[n * 9 / 10]);
    let khz = cpu::tsc_khz();
    out()
        .s("BENCH: ")
        .s(name)
        .c(b' ')
        .dec(med)
        .c(b' ')
        .dec(p10)
        .c(b' ')
        .dec(p90)
        .c(b' ')
        .dec(n as u64)
        .c(b' ')
        .dec(ns(med, khz))
        .c(b' ')
        .dec(ns(p10, khz))
        .c(b' ')
        .dec(ns(p90, khz))
        .c(b' ')
        .dec(u64::from(phase))
        .nl();
}

fn skip(name: &str, why: &str) {
    PHASE.store(PHASE.load(Relaxed) + 1, Relaxed);
    out().s("BENCHSKIP: ").s(name).s(" (").s(why).s(")").nl();
}

/// Times one call of `op`.
fn timed(op: impl FnOnce()) -> Option<u64> {
    let t0 = cpu::rdtsc();
    op();
    Some(cpu::rdtsc().wrapping_sub(t0))
}

/// Sends a fixed self-IPI: one ICR write in either mode (the self
/// shorthand needs no destination, so no ICR2 write in xAPIC mode).
fn send_self(v: u8) {
    let lo = apic::ICR_SELF | u32::from(v);
    if apic::is_x2apic() {
        apic::send_ipi(0, lo);
    } else {
        apic::write(reg::ICR, lo);
    }
}

/// Self-IPI, handler (auto EOI), back: one round trip.
fn self_ipi() -> Option<u64> {
    let before = idt::count(SELF_V);
    let t0 = cpu::rdtsc();
    send_self(SELF_V);
    spin_until(100_000, || idt::count(SELF_V) != before).then(|| cpu::rdtsc().wrapping_sub(t0))
}

/// EOI of an in-service vector (auto EOI off; the self-IPI before it is
/// not timed).
fn eoi_only() -> Option<u64> {
    let before = idt::count(EOI_V);
    send_self(EOI_V);
    if !spin_until(100_000, || idt::count(EOI_V) != before) {
        return None;
    }
    timed(apic::eoi)
}

/// IPI to CPU 1, whose handler IPIs back: one round trip.
fn ping_pong() -> Option<u64> {
    let before = idt::count(PONG);
    let t0 = cpu::rdtsc();
    apic::send_ipi(1, u32::from(PING));
    spin_until(100_000, || idt::count(PONG) != before).then(|| cpu::rdtsc().wrapping_sub(t0))
}

/// Runs the access, interrupt and IPI rows of the current APIC mode.
fn apic_rows(mode: &str, two_cpus: bool) {
    let name = |op: &str| -> Name { Name::new(op, mode) };
    bench(name("tpr_read").get(), N_ACCESS, |_| {
        timed(|| {
            core::hint::black_box(apic::read(reg::TPR));
        })
    });
    bench(name("tpr_write").get(), N_ACCESS, |i| {
        let v = if i & 1 == 0 { 0x20 } else { 0 };
        timed(|| apic::write(reg::TPR, v))
    });
    apic::write(reg::TPR, 0);
    idt::set_auto_eoi(false);
    bench(name("eoi").get(), N_ACCESS, |_| eoi_only());
    idt::set_auto_eoi(true);
    bench(name("self_ipi_eoi").get(), N_IRQ, |_| self_ipi());
    if two_cpus {
        bench(name("ipi_pingpong").get(), N_IRQ, |_| ping_pong());
    } else {
        skip(name("ipi_pingpong").get(), "needs --cpus 2");
    }
}

/// A `<op>_<mode>` name in a fixed buffer (no allocator).
struct Name {
    buf: [u8; 48],
    len: usize,
}

impl Name {
    fn new(op: &str, mode: &str) -> Self {
        let mut n = Name {
            buf: [0; 48],
            len: 0,
        };
        for b in op.bytes().chain(core::iter::once(b'_')).chain(mode.bytes()) {
            if n.len < n.buf.len() {
                n.buf[n.len] = b;
                n.len += 1;
            }
        }
        n
    }
    fn get(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("?")
    }
}

/// Waits for the next timer interrupt (spinning, or in HLT) and returns
/// the handler's TSC minus `expiry` (0 if it came early, counted).
fn timer_wait(before: u32, vector: u8, expiry: u64, halt: bool, early: &mut u32) -> Option<u64> {
    let arrived = if halt {
        // CLI, check, STI;HLT: an interrupt between the check and the
        // HLT would otherwise leave the CPU halted for good.
        let mut ok = false;
        for _ in 0..1000 {
            cpu::cli();
            if idt::count(vector) != before {
                ok = true;
                break;
            }
            cpu::sti_hlt();
        }
        cpu::sti();
        ok
    } else {
        spin_until(100_000, || idt::count(vector) != before)
    };
    if !arrived {
        return None;
    }
    let t = TIMER_TSC.load(Relaxed);
    if t < expiry {
        *early += 1;
        return Some(0);
    }
    Some(t - expiry)
}

fn note_early(name: &str, early: u32) {
    if early > 0 {
        out()
            .s("BENCHNOTE: ")
            .s(name)
            .s(" (")
            .dec(u64::from(early))
            .s(" interrupts before the programmed time)")
            .nl();
    }
}

fn timer_rows() {
    let khz = cpu::tsc_khz();
    let ahead = TIMER_US * khz / 1000;
    if conf::tsc_deadline_offered() {
        apic::write(reg::LVT_TIMER, u32::from(TSCDL_V) | (2 << 17));
        bench("tscdl_arm_to_irq", N_TIMER, |_| {
            // A deadline already passed when written: the interrupt is due
            // at once; WRMSR to handler entry.
            let before = idt::count(TSCDL_V);
            let t0 = cpu::rdtsc();
            cpu::wrmsr(apic::MSR_TSC_DEADLINE, t0);
            let mut early = 0;
            timer_wait(before, TSCDL_V, t0, false, &mut early)
        });
        for (name, halt) in [("tscdl_latency", false), ("tscdl_latency_hlt", true)] {
            let mut early = 0;
            bench(name, N_TIMER, |_| {
                let before = idt::count(TSCDL_V);
                let dl = cpu::rdtsc() + ahead;
                cpu::wrmsr(apic::MSR_TSC_DEADLINE, dl);
                timer_wait(before, TSCDL_V, dl, halt, &mut early)
            });
            note_early(name, early);
        }
        cpu::wrmsr(apic::MSR_TSC_DEADLINE, 0);
    } else {
        for n in ["tscdl_arm_to_irq", "tscdl_latency", "tscdl_latency_hlt"] {
            skip(n, "no TSC-deadline timer in CPUID");
        }
    }
    // One-shot: the programmed expiry is the TSC read just before the
    // TMICT write plus TIMER_US (the timer starts during that write).
    apic::write(reg::LVT_TIMER, 1 << 16);
    apic::write(reg::TDCR, 0xb);
    apic::write(reg::LVT_TIMER, u32::from(ONESHOT_V));
    let count = (conf::bus_khz() * TIMER_US / 1000) as u32;
    let mut early = 0;
    bench("oneshot_latency", N_TIMER, |_| {
        let before = idt::count(ONESHOT_V);
        let t0 = cpu::rdtsc();
        apic::write(reg::TMICT, count);
        timer_wait(before, ONESHOT_V, t0 + ahead, false, &mut early)
    });
    note_early("oneshot_latency", early);
    apic::write(reg::TMICT, 0);
    apic::write(reg::LVT_TIMER, 1 << 16);
}

#[no_mangle]
pub fn guest_main(boot: &BootInfo) {
    let khz = cpu::tsc_khz();
    let x2 = conf::x2apic_offered();
    out()
        .s("BENCHINFO: tsc_khz ")
        .dec(khz)
        .s(" cpus ")
        .dec(boot.cpus)
        .s(" x2apic ")
        .dec(u64::from(x2))
        .s(" tsc_deadline ")
        .dec(u64::from(conf::tsc_deadline_offered()))
        .nl();
    apic::sw_enable(0xff);
    idt::reset();
    idt::set_hook(Some(hook));
    let two = boot.cpus >= 2 && {
        smp::set_ap_main(ap_main);
        smp::start_aps(1, 1_000_000) >= 1
    };
    if boot.cpus >= 2 && !two {
        out().s("BENCHNOTE: the AP did not come up").nl();
    }
    cpu::sti();

    bench("null", N_ACCESS, |_| timed(|| {}));
    bench("exit_out", N_ACCESS, |_| {
        // SAFETY: OUT to a port no device claims.
        timed(|| unsafe { cpu::outb(IGNORED_PORT, 0) })
    });
    bench("cpuid", N_ACCESS, |_| {
        timed(|| {
            core::hint::black_box(cpu::cpuid(0, 0));
        })
    });
    bench("cr8_read", N_ACCESS, |_| {
        timed(|| {
            core::hint::black_box(cpu::read_cr8());
        })
    });
    bench("tpr_write_cr8", N_ACCESS, |i| {
        let v = if i & 1 == 0 { 2 } else { 0 };
        timed(|| cpu::write_cr8(v))
    });
    cpu::write_cr8(0);
    apic_rows("xapic", two);
    timer_rows();

    if x2 {
        if two {
            AP_CMD.store(1, Relaxed);
            apic::send_ipi(1, u32::from(WAKE));
            if !spin_until(1_000_000, || AP_ACK.load(Relaxed) == 1) {
                out().s("BENCHNOTE: the AP did not switch to x2APIC").nl();
            }
        }
        apic::enable_x2apic();
        apic_rows("x2apic", two && AP_ACK.load(Relaxed) == 1);
    } else {
        for n in [
            "tpr_read_x2apic",
            "tpr_write_x2apic",
            "eoi_x2apic",
            "self_ipi_eoi_x2apic",
            "ipi_pingpong_x2apic",
        ] {
            skip(n, "no x2APIC in CPUID");
        }
    }
    cpu::cli();
    out().s("BENCHDONE").nl();
}
