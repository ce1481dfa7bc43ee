//! `--profile`: where the time of each exit to userspace goes, per
//! benchmark phase.
//!
//! Off by default: every hook starts with one relaxed atomic load and
//! returns. When on ([`enable`], from `--profile`):
//!
//! - the vCPU loop calls [`before_run`] / [`after_run`] around `KVM_RUN`
//!   (host TSC), [`exit`] for every exit it counts, [`port_out`] for
//!   every port write and [`parked`] for the time it slept in HLT or
//!   wait-for-SIPI;
//! - every [`LapicBackend`] is wrapped ([`wrap`]) so that the time spent
//!   in its calls is measured too: the exit's own APIC access
//!   (`mmio_*`, `msr_*`, `set_cr8`) and the per-entry work (`poll`,
//!   `acknowledge`, timer and CR8 queries, ...);
//! - a guest writes a phase number to [`PHASE_PORT`] (0 = none): every
//!   exit, on any vCPU, counts toward the phase current when it happened
//!   (the marker writes themselves are not counted).
//!
//! Per phase: exits by kind, `KVM_RUN`s, time inside `KVM_RUN` (guest
//! execution and KVM's own work), userspace time per exit (from the
//! return of `KVM_RUN` to the next call, minus parked time: decode,
//! devices, LAPIC, injection ioctls, timer arming), and the backend's
//! share of it. [`report`] prints one parseable `PROFILE:` line per phase
//! (to stderr at the end of the run).
//!
//! Each vCPU thread accumulates in a thread-local and merges into the
//! global table at [`flush`] (the end of its loop); nothing is shared per
//! exit. Times are host TSC cycles converted to ns with a rate measured
//! between [`enable`] and [`report`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::lapic_backend::{BackendFactory, Gp, LapicBackend, Pending};

/// Port a guest writes its phase number to (`guests/bench`).
pub const PHASE_PORT: u16 = 0x5b0;

static ENABLED: AtomicBool = AtomicBool::new(false);
static PHASE: AtomicU32 = AtomicU32::new(0);
static TOTALS: Mutex<BTreeMap<u32, PhaseStats>> = Mutex::new(BTreeMap::new());
static START: OnceLock<(Instant, u64)> = OnceLock::new();

/// What one phase cost (all vCPUs).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PhaseStats {
    /// Exits by kind (as `--stats` names them).
    pub exits: BTreeMap<&'static str, u64>,
    /// `KVM_RUN` calls that returned in this phase.
    pub runs: u64,
    /// Host TSC cycles inside `KVM_RUN`.
    pub run_cycles: u64,
    /// Host TSC cycles in userspace between `KVM_RUN`s (parks excluded).
    pub user_cycles: u64,
    /// Time parked (HLT, wait-for-SIPI), ns.
    pub parked_ns: u64,
    /// Backend cycles for the exit's own access (MMIO, MSR, CR8).
    pub access_cycles: u64,
    /// Backend cycles for the per-entry work (poll, acknowledge,
    /// deadline and CR8 queries, run state).
    pub entry_cycles: u64,
    /// Backend calls.
    pub lapic_calls: u64,
    /// Cycles spent waking other vCPUs (`VcpuControl::wake`: condvar
    /// notify, signal), usually inside a backend call: VMM plumbing, not
    /// emulation.
    pub wake_cycles: u64,
    /// Wakes.
    pub wakes: u64,
    /// Of the wake time: signalling a vCPU out of `KVM_RUN`
    /// (`pthread_kill`).
    pub kick_cycles: u64,
    /// Signals sent.
    pub kicks: u64,
    /// Cycles in the `KVM_INTERRUPT` ioctl (injection).
    pub inject_cycles: u64,
    /// Injections.
    pub injects: u64,
}

impl PhaseStats {
    fn add(&mut self, o: &PhaseStats) {
        for (k, v) in &o.exits {
            *self.exits.entry(k).or_insert(0) += v;
        }
        self.runs += o.runs;
        self.run_cycles += o.run_cycles;
        self.user_cycles += o.user_cycles;
        self.parked_ns += o.parked_ns;
        self.access_cycles += o.access_cycles;
        self.entry_cycles += o.entry_cycles;
        self.lapic_calls += o.lapic_calls;
        self.wake_cycles += o.wake_cycles;
        self.wakes += o.wakes;
        self.kick_cycles += o.kick_cycles;
        self.kicks += o.kicks;
        self.inject_cycles += o.inject_cycles;
        self.injects += o.injects;
    }

    /// Total exits.
    pub fn total_exits(&self) -> u64 {
        self.exits.values().sum()
    }
}

#[derive(Default)]
struct Local {
    /// Finished phases of this thread.
    stats: BTreeMap<u32, PhaseStats>,
    /// The phase of the exit being handled, and its numbers so far (one
    /// map lookup per phase change, not per event).
    phase: u32,
    cur: PhaseStats,
    /// TSC when `KVM_RUN` returned (None before the first run).
    out_at: Option<u64>,
    run_at: u64,
    /// Parked during this exit's handling, ns.
    parked_ns: u64,
    /// The exit being handled is a phase marker: not counted.
    marker: bool,
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

#[inline]
fn tsc() -> u64 {
    // SAFETY: RDTSC has no preconditions (x86_64 only, as the VMM).
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[inline]
fn on() -> bool {
    ENABLED.load(Relaxed)
}

fn with(f: impl FnOnce(&mut Local)) {
    LOCAL.with(|l| f(&mut l.borrow_mut()));
}

impl Local {
    /// Switches to phase `p` (keeping the numbers of the old one).
    fn switch(&mut self, p: u32) {
        if p != self.phase {
            let old = std::mem::take(&mut self.cur);
            self.stats.entry(self.phase).or_default().add(&old);
            self.phase = p;
        }
    }
}

/// Cost of the timing itself (`RDTSC`; `RDTSC`), in cycles: the least
/// of many tries, subtracted from every timed backend call.
static OVERHEAD: AtomicU64 = AtomicU64::new(0);

/// Turns profiling on for this process. Takes about 20 ms: measures the
/// host TSC rate and the cost of a timing.
pub fn enable() {
    START.get_or_init(|| (Instant::now(), tsc()));
    let mut min = u64::MAX;
    for _ in 0..10_000 {
        let t0 = tsc();
        min = min.min(tsc().saturating_sub(t0));
    }
    OVERHEAD.store(min, Relaxed);
    std::thread::sleep(Duration::from_millis(20));
    let _ = cycles_per_us();
    ENABLED.store(true, Relaxed);
}

/// Whether profiling is on.
pub fn enabled() -> bool {
    on()
}

/// Wraps every backend the factory makes in a timing layer (when on).
pub fn wrap(factory: BackendFactory) -> BackendFactory {
    if !on() {
        return factory;
    }
    Arc::new(move |ctx| Box::new(Profiled(factory(ctx))) as Box<dyn LapicBackend>)
}

/// Right before `KVM_RUN`.
#[inline]
pub fn before_run() {
    if !on() {
        return;
    }
    let now = tsc();
    with(|l| {
        if let Some(t) = l.out_at.take() {
            if !l.marker {
                let parked = l.parked_ns;
                let s = &mut l.cur;
                s.user_cycles += now.saturating_sub(t).saturating_sub(ns_to_cycles(parked));
                s.parked_ns += parked;
            }
        }
        l.parked_ns = 0;
        l.marker = false;
        l.run_at = now;
    });
}

/// Right after `KVM_RUN` returned.
#[inline]
pub fn after_run() {
    if !on() {
        return;
    }
    let now = tsc();
    with(|l| {
        l.switch(PHASE.load(Relaxed));
        let s = &mut l.cur;
        s.runs += 1;
        s.run_cycles += now.saturating_sub(l.run_at);
        l.out_at = Some(now);
    });
}

/// An exit of `kind` was handled.
#[inline]
pub fn exit(kind: &'static str) {
    if !on() {
        return;
    }
    with(|l| {
        if !l.marker {
            *l.cur.exits.entry(kind).or_insert(0) += 1;
        }
    });
}

/// A guest port write (the phase marker is [`PHASE_PORT`]).
#[inline]
pub fn port_out(port: u16, data: &[u8]) {
    if !on() || port != PHASE_PORT {
        return;
    }
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    PHASE.store(u32::from_le_bytes(b), Relaxed);
    with(|l| l.marker = true);
}

/// The vCPU slept this long while handling the current exit.
#[inline]
pub fn parked(d: Duration) {
    if !on() {
        return;
    }
    with(|l| l.parked_ns += d.as_nanos() as u64);
}

/// VMM work timed apart from the backend calls.
#[derive(Clone, Copy)]
enum Extra {
    Wake,
    Kick,
    Inject,
}

#[inline]
fn extra<R>(e: Extra, f: impl FnOnce() -> R) -> R {
    if !on() {
        return f();
    }
    let t0 = tsc();
    let r = f();
    let dt = tsc().saturating_sub(t0);
    with(|l| {
        let s = &mut l.cur;
        let (c, n) = match e {
            Extra::Wake => (&mut s.wake_cycles, &mut s.wakes),
            Extra::Kick => (&mut s.kick_cycles, &mut s.kicks),
            Extra::Inject => (&mut s.inject_cycles, &mut s.injects),
        };
        *c += dt;
        *n += 1;
    });
    r
}

/// Runs `f` (a vCPU wake: `VcpuControl::wake`) and accounts its time to
/// the calling thread.
#[inline]
pub fn waking<R>(f: impl FnOnce() -> R) -> R {
    extra(Extra::Wake, f)
}

/// Runs `f` (a kick signal to a vCPU thread in `KVM_RUN`), timed.
#[inline]
pub fn kicking<R>(f: impl FnOnce() -> R) -> R {
    extra(Extra::Kick, f)
}

/// Runs `f` (the `KVM_INTERRUPT` ioctl), timed.
#[inline]
pub fn injecting<R>(f: impl FnOnce() -> R) -> R {
    extra(Extra::Inject, f)
}

/// Merges this thread's numbers into the process-wide table.
pub fn flush() {
    if !on() {
        return;
    }
    with(|l| {
        let cur = std::mem::take(&mut l.cur);
        l.stats.entry(l.phase).or_default().add(&cur);
        let mut t = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
        for (p, s) in std::mem::take(&mut l.stats) {
            t.entry(p).or_default().add(&s);
        }
    });
}

/// Host TSC cycles per microsecond, measured since [`enable`].
fn cycles_per_us() -> f64 {
    static RATE: OnceLock<f64> = OnceLock::new();
    *RATE.get_or_init(|| {
        let Some(&(i0, t0)) = START.get() else {
            return 1000.0;
        };
        // At least 20 ms of history for a stable rate.
        let el = i0.elapsed();
        if el < Duration::from_millis(20) {
            std::thread::sleep(Duration::from_millis(20) - el);
        }
        let (el, t) = (i0.elapsed(), tsc());
        (t.wrapping_sub(t0)) as f64 / (el.as_nanos() as f64 / 1000.0)
    })
}

fn ns_to_cycles(ns: u64) -> u64 {
    if ns == 0 {
        return 0;
    }
    (ns as f64 * cycles_per_us() / 1000.0) as u64
}

fn cycles_to_ns(c: u64) -> f64 {
    c as f64 * 1000.0 / cycles_per_us()
}

/// The merged table (after every vCPU thread flushed).
pub fn totals() -> BTreeMap<u32, PhaseStats> {
    TOTALS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// One `PROFILE:` line per phase:
///
/// `PROFILE: phase P exits N runs R user_ns U access_ns A entry_ns E
/// run_ns K parked_ns Z calls C wake_ns W wakes N kick_ns S kicks M
/// inject_ns I injects J kinds k1=n1,k2=n2`
///
/// (totals over the phase; `user_ns` is the userspace time between
/// `KVM_RUN`s without parked time, `access_ns` + `entry_ns` the part of
/// it inside the LAPIC backend, `wake_ns` the time spent waking vCPUs,
/// mostly inside those backend calls, `kick_ns` the signals among them,
/// `inject_ns` the `KVM_INTERRUPT` ioctls).
/// Wakes from the timer service thread are not included (it has no
/// phase).
pub fn report() -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "PROFILE: host_tsc_mhz {:.1} timing_overhead_cycles {} (phase 0 = outside any marked phase)",
        cycles_per_us(),
        OVERHEAD.load(Relaxed)
    );
    for (p, st) in totals() {
        let kinds: Vec<String> = st.exits.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(
            s,
            "PROFILE: phase {p} exits {} runs {} user_ns {:.0} access_ns {:.0} entry_ns {:.0} run_ns {:.0} parked_ns {} calls {} wake_ns {:.0} wakes {} kick_ns {:.0} kicks {} inject_ns {:.0} injects {} kinds {}",
            st.total_exits(),
            st.runs,
            cycles_to_ns(st.user_cycles),
            cycles_to_ns(st.access_cycles),
            cycles_to_ns(st.entry_cycles),
            cycles_to_ns(st.run_cycles),
            st.parked_ns,
            st.lapic_calls,
            cycles_to_ns(st.wake_cycles),
            st.wakes,
            cycles_to_ns(st.kick_cycles),
            st.kicks,
            cycles_to_ns(st.inject_cycles),
            st.injects,
            if kinds.is_empty() { "-".into() } else { kinds.join(",") },
        );
    }
    s
}

/// Which bucket a backend call's time goes to.
#[derive(Clone, Copy)]
enum Bucket {
    Access,
    Entry,
}

#[inline]
fn timed<R>(b: Bucket, f: impl FnOnce() -> R) -> R {
    let t0 = tsc();
    let r = f();
    let dt = tsc()
        .saturating_sub(t0)
        .saturating_sub(OVERHEAD.load(Relaxed));
    with(|l| {
        let s = &mut l.cur;
        match b {
            Bucket::Access => s.access_cycles += dt,
            Bucket::Entry => s.entry_cycles += dt,
        }
        s.lapic_calls += 1;
    });
    r
}

/// A backend whose calls are timed.
struct Profiled(Box<dyn LapicBackend>);

impl LapicBackend for Profiled {
    fn save_state(&mut self, now_ns: u64) -> Option<vlapic::ApicState> {
        self.0.save_state(now_ns)
    }
    fn restore_state(&mut self, now_ns: u64, state: &vlapic::ApicState) -> Result<(), String> {
        self.0.restore_state(now_ns, state)
    }
    fn mmio_base(&self) -> Option<u64> {
        timed(Bucket::Access, || self.0.mmio_base())
    }
    fn mmio_read(&mut self, now_ns: u64, offset: u64, data: &mut [u8]) {
        timed(Bucket::Access, || self.0.mmio_read(now_ns, offset, data))
    }
    fn mmio_write(&mut self, now_ns: u64, offset: u64, data: &[u8]) {
        timed(Bucket::Access, || self.0.mmio_write(now_ns, offset, data))
    }
    fn msr_read(&mut self, now_ns: u64, msr: u32) -> Result<u64, Gp> {
        timed(Bucket::Access, || self.0.msr_read(now_ns, msr))
    }
    fn msr_write(&mut self, now_ns: u64, msr: u32, value: u64) -> Result<(), Gp> {
        timed(Bucket::Access, || self.0.msr_write(now_ns, msr, value))
    }
    fn poll(&mut self, now_ns: u64) -> Pending {
        timed(Bucket::Entry, || self.0.poll(now_ns))
    }
    fn pending_interrupt(&mut self, now_ns: u64) -> Option<u8> {
        timed(Bucket::Entry, || self.0.pending_interrupt(now_ns))
    }
    fn acknowledge(&mut self, now_ns: u64) -> u8 {
        timed(Bucket::Entry, || self.0.acknowledge(now_ns))
    }
    fn take_nmi(&mut self) -> bool {
        timed(Bucket::Entry, || self.0.take_nmi())
    }
    fn models_run_state(&self) -> bool {
        self.0.models_run_state()
    }
    fn take_init(&mut self) -> bool {
        timed(Bucket::Entry, || self.0.take_init())
    }
    fn take_sipi(&mut self) -> Option<u8> {
        timed(Bucket::Entry, || self.0.take_sipi())
    }
    fn next_deadline_ns(&self) -> Option<u64> {
        timed(Bucket::Entry, || self.0.next_deadline_ns())
    }
    fn cr8(&self) -> u8 {
        timed(Bucket::Entry, || self.0.cr8())
    }
    fn set_cr8(&mut self, now_ns: u64, cr8: u8) {
        timed(Bucket::Access, || self.0.set_cr8(now_ns, cr8))
    }
    fn report(&self) -> Option<String> {
        self.0.report()
    }
    fn vm_report(&self) -> Option<String> {
        self.0.vm_report()
    }
    fn rejections(&self) -> Option<vlapic::Stats> {
        self.0.rejections()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_records_nothing() {
        // Fresh thread: the global flag is off unless a test enabled it;
        // this test only checks the hooks are callable and cheap.
        before_run();
        after_run();
        exit("io_out");
        port_out(PHASE_PORT, &[1, 0, 0, 0]);
        parked(Duration::from_micros(1));
        if !enabled() {
            assert!(totals().is_empty());
        }
    }

    #[test]
    fn phases_count_exits_and_skip_markers() {
        enable();
        std::thread::spawn(|| {
            before_run();
            after_run();
            port_out(PHASE_PORT, &7u32.to_le_bytes());
            exit("io_out"); // the marker itself
            before_run();
            after_run();
            exit("mmio_write");
            before_run();
            after_run();
            exit("mmio_write");
            port_out(PHASE_PORT, &0u32.to_le_bytes());
            exit("io_out");
            before_run();
            flush();
        })
        .join()
        .unwrap();
        let t = totals();
        let p = t.get(&7).expect("phase 7");
        assert_eq!(p.exits.get("mmio_write"), Some(&2));
        assert_eq!(p.exits.get("io_out"), None);
        assert!(report().contains("PROFILE: phase 7 exits 2 "));
    }
}
