//! Per-vCPU control block: run state (INIT / SIPI), halt parking, wake-ups,
//! kicks out of `KVM_RUN`, stop; plus the VM clock and the timer service
//! that wakes vCPUs when their LAPIC timer deadline passes.
//!
//! # Kick protocol
//!
//! A vCPU thread in `KVM_RUN` only leaves the guest on an exit. To get it
//! out at once, another thread sends it `SIGRTMIN`
//! ([`VcpuControl::kick`]). The signal handler sets `kvm_run.immediate_exit`
//! through a thread-local pointer to the vCPU's `kvm_run`, so a signal
//! that lands just before the `KVM_RUN` ioctl still makes it return
//! `EINTR` immediately; the vCPU loop then clears `immediate_exit`.
//! Kicks are only sent while the vCPU is between [`VcpuControl::enter_guest`]
//! and [`VcpuControl::exit_guest`]; since the vCPU polls its LAPIC *after*
//! `enter_guest` (SeqCst on both sides), an update made before a skipped
//! kick is always seen.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_run;

/// The monotonic clock of the VM, in nanoseconds since VM creation. All
/// LAPIC times (`now_ns`, deadlines) use it.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }
    /// Nanoseconds since the clock started.
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    /// The [`Instant`] for a clock value.
    pub fn instant_at(&self, ns: u64) -> Instant {
        self.start + Duration::from_nanos(ns)
    }
}

/// Architectural run state of a vCPU as far as the VMM is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// AP after power-on: waits for INIT (SIPIs are ignored).
    WaitForInit,
    /// After INIT: waits for a Start-up IPI.
    WaitForSipi,
    /// Executing guest code (possibly halted inside the VMM).
    Running,
    /// The VM is shutting down.
    Stopped,
}

/// What the vCPU thread must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave the loop.
    Stop,
    /// An INIT arrived: reset to the INIT state, then wait for SIPI.
    Init,
    /// Keep running the guest.
    Run,
    /// The VMM asked the vCPU to stop at this exit boundary
    /// ([`VcpuControl::request_pause`], irqchip switch: `crate::migrate`).
    Pause,
}

/// Why [`VcpuControl::park`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// [`VcpuControl::wake`] was called (interrupt, NMI, ...).
    Woken,
    /// The deadline passed.
    Timeout,
    /// INIT or stop is pending; call [`VcpuControl::next_action`].
    Control,
}

#[derive(Debug)]
struct Inner {
    state: RunState,
    init_pending: bool,
    sipi_pending: Option<u8>,
    wake_pending: bool,
    stop: bool,
    pause: bool,
}

/// Control block shared between a vCPU thread and everybody who needs to
/// poke it (other vCPUs' LAPICs sending IPIs, the timer service, the VM).
#[derive(Debug)]
pub struct VcpuControl {
    index: u32,
    inner: Mutex<Inner>,
    cv: Condvar,
    thread: Mutex<Option<libc::pthread_t>>,
    in_guest: AtomicBool,
    kicks: AtomicU64,
    timeouts: AtomicU64,
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VcpuControl {
    /// Control blocks for `cpus` vCPUs at power-on: vCPU 0 (the BSP)
    /// running, the APs waiting for INIT.
    pub fn for_vcpus(cpus: u32) -> Arc<Vec<Arc<VcpuControl>>> {
        Arc::new(
            (0..cpus)
                .map(|i| {
                    Arc::new(VcpuControl::new(
                        i,
                        if i == 0 {
                            RunState::Running
                        } else {
                            RunState::WaitForInit
                        },
                    ))
                })
                .collect(),
        )
    }

    /// A control block; the BSP starts [`RunState::Running`], APs
    /// [`RunState::WaitForInit`] (userspace LAPIC only; with KVM's
    /// in-kernel LAPIC, KVM does this itself).
    pub fn new(index: u32, initial: RunState) -> Self {
        VcpuControl {
            index,
            inner: Mutex::new(Inner {
                state: initial,
                init_pending: false,
                sipi_pending: None,
                wake_pending: false,
                stop: false,
                pause: false,
            }),
            cv: Condvar::new(),
            thread: Mutex::new(None),
            in_guest: AtomicBool::new(false),
            kicks: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
        }
    }

    /// vCPU index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Current run state.
    pub fn state(&self) -> RunState {
        lock(&self.inner).state
    }

    /// Records the run state the vCPU thread's LAPIC put it in (a mirror
    /// for backends that model INIT/SIPI themselves).
    pub fn set_state(&self, state: RunState) {
        let mut g = lock(&self.inner);
        if !g.stop {
            g.state = state;
        }
    }

    /// Number of signals sent so far (statistics).
    pub fn kicks(&self) -> u64 {
        self.kicks.load(Ordering::Relaxed)
    }

    /// Number of [`VcpuControl::park`] calls that ended on their deadline
    /// (host timer wake-ups of a halted vCPU; statistics).
    pub fn park_timeouts(&self) -> u64 {
        self.timeouts.load(Ordering::Relaxed)
    }

    // ----- called by other threads -----

    /// Delivers INIT (level assert). The vCPU resets and waits for SIPI.
    pub fn send_init(&self) {
        {
            let mut g = lock(&self.inner);
            if g.stop {
                return;
            }
            g.init_pending = true;
            g.sipi_pending = None;
        }
        self.cv.notify_all();
        self.kick();
    }

    /// Delivers a Start-up IPI. Acted on only if the vCPU is waiting for
    /// SIPI (or has an INIT pending that will put it there); ignored
    /// otherwise, and only the first SIPI after an INIT counts.
    pub fn send_sipi(&self, vector: u8) {
        {
            let mut g = lock(&self.inner);
            let waiting = g.state == RunState::WaitForSipi || g.init_pending;
            if g.stop || !waiting || g.sipi_pending.is_some() {
                return;
            }
            g.sipi_pending = Some(vector);
        }
        self.cv.notify_all();
    }

    /// Something (an interrupt, an NMI, a timer) may now be deliverable:
    /// wake the vCPU from HLT and kick it out of `KVM_RUN`.
    pub fn wake(&self) {
        crate::profile::waking(|| {
            lock(&self.inner).wake_pending = true;
            self.cv.notify_all();
            self.kick();
        })
    }

    /// Stops the vCPU (VM shutdown).
    pub fn stop(&self) {
        {
            let mut g = lock(&self.inner);
            g.stop = true;
            g.state = RunState::Stopped;
        }
        self.cv.notify_all();
        // Always signal: the thread may be blocked in KVM_RUN in-kernel.
        self.signal();
    }

    /// Asks the vCPU thread to stop at the next exit boundary and report
    /// [`Action::Pause`] (used by `crate::migrate`). Always signals, like
    /// [`VcpuControl::stop`]: a vCPU halted inside KVM's in-kernel LAPIC
    /// stays in `KVM_RUN`, and a signal that lands before the entry sets
    /// `immediate_exit`, so the request is never missed.
    pub fn request_pause(&self) {
        {
            let mut g = lock(&self.inner);
            if g.stop {
                return;
            }
            g.pause = true;
        }
        self.cv.notify_all();
        self.signal();
    }

    /// Gets the vCPU out of `KVM_RUN` if it is in it.
    pub fn kick(&self) {
        if self.in_guest.load(Ordering::SeqCst) {
            crate::profile::kicking(|| self.signal());
        }
    }

    fn signal(&self) {
        let g = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = *g {
            self.kicks.fetch_add(1, Ordering::Relaxed);
            // SAFETY: the id was recorded by the vCPU thread itself and is
            // removed (under this lock) before that thread ends, so the
            // thread is alive while we hold the lock.
            unsafe {
                libc::pthread_kill(t, kick_signal());
            }
        }
    }

    // ----- called by the vCPU thread -----

    /// Records the calling thread as this vCPU's thread (for kicks).
    pub fn bind_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(unsafe { libc::pthread_self() });
    }

    /// Forgets the vCPU thread (called by it before it ends): no more
    /// signals are sent to it.
    pub fn unbind_thread(&self) {
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.in_guest.store(false, Ordering::SeqCst);
    }

    /// Marks the start of a guest-entry sequence (before polling the LAPIC).
    pub fn enter_guest(&self) {
        self.in_guest.store(true, Ordering::SeqCst);
    }

    /// Marks that the vCPU left `KVM_RUN`.
    pub fn exit_guest(&self) {
        self.in_guest.store(false, Ordering::SeqCst);
    }

    /// What to do next (checked at the top of the vCPU loop).
    pub fn next_action(&self) -> Action {
        let mut g = lock(&self.inner);
        if g.stop {
            Action::Stop
        } else if g.pause {
            g.pause = false;
            Action::Pause
        } else if g.init_pending {
            g.init_pending = false;
            g.state = RunState::WaitForSipi;
            Action::Init
        } else {
            Action::Run
        }
    }

    /// Blocks while the vCPU waits for INIT / SIPI. Returns the SIPI vector
    /// (the state is then [`RunState::Running`]), or `None` on stop (or if
    /// called while already running, which the vCPU loop never does).
    pub fn wait_for_startup(&self) -> Option<u8> {
        let mut g = lock(&self.inner);
        loop {
            if g.stop {
                return None;
            }
            if g.init_pending {
                g.init_pending = false;
                g.state = RunState::WaitForSipi;
            }
            match g.state {
                RunState::WaitForSipi => {
                    if let Some(v) = g.sipi_pending.take() {
                        g.state = RunState::Running;
                        return Some(v);
                    }
                }
                RunState::WaitForInit => g.sipi_pending = None,
                RunState::Running => return None,
                RunState::Stopped => return None,
            }
            g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Parks a halted vCPU until [`VcpuControl::wake`], INIT, stop or
    /// `deadline`. The caller checks its LAPIC for deliverable work before
    /// parking; a wake that raced with that check is not lost.
    pub fn park(&self, deadline: Option<Instant>) -> Wake {
        let mut g = lock(&self.inner);
        loop {
            if g.stop || g.init_pending || g.pause {
                return Wake::Control;
            }
            if g.wake_pending {
                g.wake_pending = false;
                return Wake::Woken;
            }
            match deadline {
                None => g = self.cv.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        self.timeouts.fetch_add(1, Ordering::Relaxed);
                        return Wake::Timeout;
                    }
                    g = self
                        .cv
                        .wait_timeout(g, d - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// Clears a pending wake (the vCPU is about to re-check everything).
    pub fn clear_wake(&self) {
        lock(&self.inner).wake_pending = false;
    }
}

// ----- signal plumbing -----

thread_local! {
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal used for kicks (SIGRTMIN).
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Async-signal-safe: a const thread-local read and a volatile byte store.
    let p = KVM_RUN_PTR.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: the pointer is the live kvm_run mapping of this thread's
        // vCPU; it is cleared (ThreadRunGuard) before the vCPU fd is dropped.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*p).immediate_exit), 1) };
    }
}

/// Installs the kick signal handler (once per process).
pub fn install_kick_handler() -> std::io::Result<()> {
    static ONCE: Once = Once::new();
    static mut RESULT: i32 = 0;
    ONCE.call_once(|| {
        let r = vmm_sys_util::signal::register_signal_handler(kick_signal(), kick_handler);
        // SAFETY: written once inside call_once, read after it.
        unsafe { RESULT = r.err().map(|e| e.errno()).unwrap_or(0) };
    });
    // SAFETY: call_once has completed, no concurrent writer.
    let r = unsafe { RESULT };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::from_raw_os_error(r))
    }
}

/// Registers `run` as this thread's `kvm_run` for the kick handler; the
/// registration is removed when the guard is dropped.
pub struct ThreadRunGuard(());

impl ThreadRunGuard {
    /// Registers the mapping. `run` must stay valid until the guard drops.
    pub fn new(run: *mut kvm_run) -> Self {
        KVM_RUN_PTR.with(|c| c.set(run));
        ThreadRunGuard(())
    }
}

/// Points the kick handler of this thread at another `kvm_run` (the
/// vCPU fd was replaced, `crate::migrate`); null: none. The previous
/// mapping may be unmapped once this returns.
pub fn set_thread_kvm_run(run: *mut kvm_run) {
    KVM_RUN_PTR.with(|c| c.set(run));
}

impl Drop for ThreadRunGuard {
    fn drop(&mut self) {
        KVM_RUN_PTR.with(|c| c.set(std::ptr::null_mut()));
    }
}

// ----- timer service -----

/// Asks Linux not to batch this thread's timed waits (the default timer
/// slack is 50 us, which would delay every LAPIC timer interrupt).
pub fn set_precise_timers() {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer; no memory is passed.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// One thread that wakes vCPUs whose LAPIC timer deadline has passed
/// while they run guest code (halted vCPUs wait with a timeout instead).
#[derive(Debug)]
pub struct TimerService {
    clock: Clock,
    state: Mutex<(Vec<Option<u64>>, bool)>,
    cv: Condvar,
    wakeups: AtomicU64,
    fired: AtomicU64,
    cpu_ns: AtomicU64,
    /// The deadline the thread sleeps until (`u64::MAX`: none); written
    /// and read under `state`'s lock.
    sleeping_until: AtomicU64,
}

/// Counters of the [`TimerService`] thread.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TimerStats {
    /// Times the thread woke up (deadline reached, arm, or spurious).
    pub wakeups: u64,
    /// vCPU wakes it sent (deadlines that passed).
    pub fired: u64,
    /// CPU time the thread used so far, in ns.
    pub cpu_ns: u64,
}

/// CPU time of the calling thread in ns.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

impl TimerService {
    /// Starts the service thread for `vcpus`.
    pub fn start(clock: Clock, vcpus: Vec<Arc<VcpuControl>>) -> Arc<TimerService> {
        let svc = Arc::new(TimerService {
            clock,
            state: Mutex::new((vec![None; vcpus.len()], false)),
            cv: Condvar::new(),
            wakeups: AtomicU64::new(0),
            fired: AtomicU64::new(0),
            cpu_ns: AtomicU64::new(0),
            sleeping_until: AtomicU64::new(0),
        });
        let s = svc.clone();
        std::thread::Builder::new()
            .name("vlapic-timers".into())
            .spawn(move || s.run(&vcpus))
            .expect("spawning the timer thread");
        svc
    }

    /// Sets (or clears) vCPU `cpu`'s next deadline in clock nanoseconds.
    pub fn arm(&self, cpu: usize, deadline: Option<u64>) {
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = g.0.get_mut(cpu) {
            if *slot != deadline {
                *slot = deadline;
                // Wake the thread only if it sleeps past the new deadline
                // (not on every re-arm after a fire: that doubled its
                // wake-ups under periodic timers).
                if deadline.is_some_and(|n| n < self.sleeping_until.load(Ordering::Relaxed)) {
                    self.cv.notify_all();
                }
            }
        }
    }

    /// The thread's counters.
    pub fn stats(&self) -> TimerStats {
        TimerStats {
            wakeups: self.wakeups.load(Ordering::Relaxed),
            fired: self.fired.load(Ordering::Relaxed),
            cpu_ns: self.cpu_ns.load(Ordering::Relaxed),
        }
    }

    /// Stops the service thread.
    pub fn shutdown(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        self.cv.notify_all();
    }

    fn run(&self, vcpus: &[Arc<VcpuControl>]) {
        set_precise_timers();
        let mut g = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if g.1 {
                return;
            }
            let now = self.clock.now_ns();
            let mut next: Option<u64> = None;
            for (i, slot) in g.0.iter_mut().enumerate() {
                if let Some(d) = *slot {
                    if d <= now {
                        *slot = None;
                        if let Some(v) = vcpus.get(i) {
                            self.fired.fetch_add(1, Ordering::Relaxed);
                            v.wake();
                        }
                    } else {
                        next = Some(next.map_or(d, |n: u64| n.min(d)));
                    }
                }
            }
            self.sleeping_until
                .store(next.unwrap_or(u64::MAX), Ordering::Relaxed);
            g = match next {
                None => self.cv.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(d) => {
                    let wait = Duration::from_nanos(d.saturating_sub(self.clock.now_ns()));
                    self.cv
                        .wait_timeout(g, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
            self.wakeups.fetch_add(1, Ordering::Relaxed);
            self.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ap_init_sipi_state_machine() {
        let c = Arc::new(VcpuControl::new(1, RunState::WaitForInit));
        // SIPI before INIT is ignored.
        c.send_sipi(0x10);
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.wait_for_startup());
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.state(), RunState::WaitForInit);
        c.send_init();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(c.state(), RunState::WaitForSipi);
        c.send_sipi(0x9a);
        c.send_sipi(0x55); // second SIPI ignored
        assert_eq!(t.join().unwrap(), Some(0x9a));
        assert_eq!(c.state(), RunState::Running);
        // SIPI while running is ignored; INIT while running resets.
        c.send_sipi(0x77);
        assert_eq!(c.next_action(), Action::Run);
        c.send_init();
        c.send_sipi(0x42);
        assert_eq!(c.next_action(), Action::Init);
        assert_eq!(c.wait_for_startup(), Some(0x42));
    }

    #[test]
    fn stop_releases_waiters() {
        let c = Arc::new(VcpuControl::new(1, RunState::WaitForInit));
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.wait_for_startup());
        std::thread::sleep(Duration::from_millis(10));
        c.stop();
        assert_eq!(t.join().unwrap(), None);
        assert_eq!(c.next_action(), Action::Stop);
        assert_eq!(c.park(None), Wake::Control);
    }

    #[test]
    fn park_wake_timeout() {
        let c = Arc::new(VcpuControl::new(0, RunState::Running));
        let t0 = Instant::now();
        assert_eq!(c.park(Some(t0 + Duration::from_millis(20))), Wake::Timeout);
        assert!(t0.elapsed() >= Duration::from_millis(20));
        assert_eq!(c.park_timeouts(), 1);
        // A wake before park is not lost.
        c.wake();
        assert_eq!(c.park(None), Wake::Woken);
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.park(None));
        std::thread::sleep(Duration::from_millis(10));
        c.wake();
        assert_eq!(t.join().unwrap(), Wake::Woken);
    }

    #[test]
    fn timer_service_wakes() {
        let clock = Clock::new();
        let c = Arc::new(VcpuControl::new(0, RunState::Running));
        let svc = TimerService::start(clock, vec![c.clone()]);
        let t0 = Instant::now();
        svc.arm(0, Some(clock.now_ns() + 30_000_000));
        assert_eq!(c.park(Some(t0 + Duration::from_secs(5))), Wake::Woken);
        assert!(t0.elapsed() >= Duration::from_millis(29));
        let st = svc.stats();
        assert_eq!(st.fired, 1);
        assert!(st.wakeups >= 1 && st.cpu_ns > 0, "{st:?}");
        svc.arm(0, None);
        svc.shutdown();
    }

    #[test]
    fn timer_service_wakes_only_for_an_earlier_deadline() {
        let clock = Clock::new();
        let c: Vec<_> = (0..2)
            .map(|i| Arc::new(VcpuControl::new(i, RunState::Running)))
            .collect();
        let svc = TimerService::start(clock, c.clone());
        std::thread::sleep(Duration::from_millis(20));
        let now = clock.now_ns();
        svc.arm(0, Some(now + 2_000_000_000));
        std::thread::sleep(Duration::from_millis(20));
        let w = svc.stats().wakeups;
        assert!(w >= 1);
        // Later than what the thread sleeps until: no wake-up.
        svc.arm(1, Some(now + 3_000_000_000));
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(svc.stats().wakeups, w);
        // Earlier: wakes it, and it fires on time.
        svc.arm(1, Some(clock.now_ns() + 10_000_000));
        assert_eq!(
            c[1].park(Some(Instant::now() + Duration::from_secs(5))),
            Wake::Woken
        );
        assert_eq!(svc.stats().fired, 1);
        svc.shutdown();
    }

    #[test]
    fn kick_sets_immediate_exit() {
        install_kick_handler().unwrap();
        let c = Arc::new(VcpuControl::new(0, RunState::Running));
        let c2 = c.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            // SAFETY: kvm_run is plain data; a zeroed one is a valid stand-in.
            let mut run: kvm_run = unsafe { std::mem::zeroed() };
            let _g = ThreadRunGuard::new(&mut run);
            c2.bind_current_thread();
            c2.enter_guest();
            tx.send(()).unwrap();
            let t0 = Instant::now();
            // SAFETY: reading our own local through a volatile load.
            while unsafe { std::ptr::read_volatile(&run.immediate_exit) } == 0 {
                assert!(t0.elapsed() < Duration::from_secs(5));
                std::thread::yield_now();
            }
        });
        rx.recv().unwrap();
        c.kick();
        t.join().unwrap();
        assert_eq!(c.kicks(), 1);
    }
}
