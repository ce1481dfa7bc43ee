//! Hostile guest: the `abuse` guest (see `guests/abuse`) throws random
//! and invalid APIC traffic, APIC base flips, IPI / timer / INIT-SIPI
//! storms at the LAPIC from several vCPUs while a control vCPU checks it
//! keeps running. The LAPIC is guest-facing, so a VMM panic or stall
//! would be a host-side denial of service. Asserted here, per run:
//!
//! - the guest reported success (exit status 1, `0 failed`);
//! - the run finished within a wall-clock bound;
//! - the VMM process's host cost stayed bounded: its user CPU time (the
//!   VMM's own code; guest execution counts as system time with KVM),
//!   its peak RSS (from `wait4`'s rusage of the child), and, with the
//!   userspace LAPIC, the timer thread's wake-ups and CPU time and the
//!   halted vCPUs' timer wake-ups (`--stats` summary): a TMICT=1
//!   periodic timer may wake the host at most once per minimum period
//!   (200 us) per vCPU;
//! - the LAPIC counted what it rejected (`--stats` summary line).
//!
//! Runs under `--irqchip user` (vlapic) and `--irqchip kernel` (KVM's
//! LAPIC, the reference: same guest, same checks). Needs /dev/kvm, else
//! prints `SKIP: no /dev/kvm`. Guests are built by `guests/build.sh`
//! (or taken from `VLAPIC_GUEST_DIR`).

mod common;
use common::*;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const CPUS: u32 = 4;
/// The guest runs about 5 s of guest time; generous for a loaded host.
const WALL_LIMIT: Duration = Duration::from_secs(60);
/// Peak RSS of the VMM (64 MiB guest RAM, mostly untouched; ~3 MiB seen).
const RSS_LIMIT_KIB: u64 = 256 * 1024;
/// Minimum periodic timer period the LAPIC enforces (vlapic default).
const MIN_PERIOD_US: f64 = 200.0;

/// One finished VMM run.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    wall: Duration,
    user_s: f64,
    sys_s: f64,
    max_rss_kib: u64,
}

/// Runs the VMM and collects its exit status and its own rusage
/// (`wait4`). A watchdog kills it if it outlives `WALL_LIMIT` by far.
#[allow(clippy::zombie_processes)] // reaped by wait4, not Child::wait
fn run_vmm(args: &[&str]) -> Run {
    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vlapic-vmm"))
        .args(args)
        .env_remove("VLAPIC_KVM_DEVICE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning vlapic-vmm");
    let pid = child.id() as libc::pid_t;
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let ro = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let re = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d2 = done.clone();
    let watchdog = std::thread::spawn(move || {
        let limit = WALL_LIMIT * 2;
        let t = Instant::now();
        while t.elapsed() < limit {
            if d2.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: kill takes plain integers; the child is not reaped yet
        // (only wait4 below reaps it), so the pid is still ours.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    });
    let mut status = 0;
    // SAFETY: getrusage-style out parameters we own; zeroed is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing into locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let wall = t0.elapsed();
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    watchdog.join().unwrap();
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Run {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        stdout: ro.join().unwrap(),
        stderr: re.join().unwrap(),
        wall,
        user_s: secs(ru.ru_utime),
        sys_s: secs(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss.max(0) as u64,
    }
}

/// The `key=value` pairs of the VMM's `--stats` summary line.
fn summary(stderr: &str) -> BTreeMap<String, String> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("vlapic-vmm: summary: "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stderr}"));
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn num(s: &BTreeMap<String, String>, key: &str) -> f64 {
    s.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("summary has no number {key}: {s:?}"))
}

/// Runs `abuse` under `chip` and checks everything that does not depend
/// on the LAPIC implementation; returns the run and its summary.
fn abuse(chip: &str) -> (Run, BTreeMap<String, String>) {
    let elf = guest_dir().join("abuse.elf");
    let cpus = CPUS.to_string();
    let run = run_vmm(&[
        "--kernel",
        elf.to_str().unwrap(),
        "--cpus",
        &cpus,
        "--irqchip",
        chip,
        "--stats",
        "--timeout",
        &WALL_LIMIT.as_secs().to_string(),
    ]);
    let ctx = format!(
        "irqchip {chip}: exit {:?}, wall {:.2} s, user {:.2} s, sys {:.2} s, max RSS {} KiB\nstdout:\n{}\nstderr:\n{}",
        run.code, run.wall.as_secs_f64(), run.user_s, run.sys_s, run.max_rss_kib, run.stdout, run.stderr
    );
    println!(
        "abuse irqchip {chip}: wall {:.2} s, user {:.3} s, sys {:.2} s, max RSS {} KiB",
        run.wall.as_secs_f64(),
        run.user_s,
        run.sys_s,
        run.max_rss_kib
    );
    assert_eq!(run.code, Some(1), "guest did not pass: {ctx}");
    assert!(!run.stdout.contains("FAIL:"), "{ctx}");
    assert!(run.stdout.contains(" passed, 0 failed"), "{ctx}");
    assert!(run.wall < WALL_LIMIT, "too slow: {ctx}");
    // The VMM's own code: guest execution is system time under KVM.
    let wall = run.wall.as_secs_f64();
    assert!(
        run.user_s <= 0.5 * wall + 1.0,
        "VMM user CPU not bounded: {ctx}"
    );
    // Nothing can use more than every vCPU thread plus the VMM's threads.
    assert!(
        run.user_s + run.sys_s <= (f64::from(CPUS) + 2.0) * wall + 1.0,
        "{ctx}"
    );
    assert!(run.max_rss_kib <= RSS_LIMIT_KIB, "RSS not bounded: {ctx}");
    let s = summary(&run.stderr);
    println!("abuse irqchip {chip}: {s:?}");
    (run, s)
}

/// The two runs share two host cores with everything else: not at once.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn abuse_user_vlapic() {
    if !kvm_available() {
        return;
    }
    let _g = serial();
    let (run, s) = abuse("user");
    let ctx = format!("{s:?}\nstdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let wall_s = num(&s, "wall_s").max(run.wall.as_secs_f64());
    // Host timer wake-ups: at most one per minimum period per vCPU (the
    // guest's TMICT=1 periodic timers), doubled for halted vCPUs whose
    // park timeout and timer-thread wake can both fire, plus slack.
    let per_cpu = wall_s * 1e6 / MIN_PERIOD_US;
    let cap = 2.0 * f64::from(CPUS) * per_cpu + 1000.0;
    for key in ["timer_wakeups", "timer_fired", "park_timeouts"] {
        assert!(num(&s, key) <= cap, "{key} above {cap}: {ctx}");
    }
    assert!(
        num(&s, "timer_thread_ms") <= 0.25 * wall_s * 1000.0,
        "timer thread busy: {ctx}"
    );
    // What the LAPIC rejected was counted.
    for key in [
        "mmio_bad_access",
        "illegal_register",
        "read_only_write",
        "gp",
        "illegal_vector",
        "dropped",
        "sipi_ignored",
        "timer_clamped",
    ] {
        assert!(num(&s, key) > 0.0, "{key} not counted: {ctx}");
    }
    assert!(num(&s, "rejected") >= num(&s, "gp"), "{ctx}");
    for line in [
        "PASS: control cpu survived the abuse",
        "PASS: cpu 3: answers an IPI after the INIT/SIPI storm",
        "PASS: cpu 1: masked TMICT=1 periodic timer delivers nothing",
        "PASS: cpu 2: TMICT=1 periodic timer fires, at most once per 200 us",
        "PASS: control cpu one-shot timer",
    ] {
        assert!(run.stdout.contains(line), "missing {line:?}: {ctx}");
    }
}

#[test]
fn abuse_kernel_irqchip_reference() {
    if !kvm_available() {
        return;
    }
    let _g = serial();
    let (_run, s) = abuse("kernel");
    assert_eq!(s.get("rejected").map(String::as_str), Some("n/a"), "{s:?}");
}

/// A LAPIC that panics on vCPU 0's first ICR write: a stand-in for a
/// model bug that guest input reaches.
struct PanicOnIcr {
    inner: Box<dyn vlapic_vmm::lapic_backend::LapicBackend>,
    armed: bool,
}

impl vlapic_vmm::lapic_backend::LapicBackend for PanicOnIcr {
    fn mmio_base(&self) -> Option<u64> {
        self.inner.mmio_base()
    }
    fn mmio_read(&mut self, now_ns: u64, offset: u64, data: &mut [u8]) {
        self.inner.mmio_read(now_ns, offset, data)
    }
    fn mmio_write(&mut self, now_ns: u64, offset: u64, data: &[u8]) {
        assert!(!(self.armed && offset == 0x300), "injected LAPIC bug");
        self.inner.mmio_write(now_ns, offset, data)
    }
    fn msr_read(&mut self, now_ns: u64, msr: u32) -> Result<u64, vlapic_vmm::lapic_backend::Gp> {
        self.inner.msr_read(now_ns, msr)
    }
    fn msr_write(
        &mut self,
        now_ns: u64,
        msr: u32,
        value: u64,
    ) -> Result<(), vlapic_vmm::lapic_backend::Gp> {
        self.inner.msr_write(now_ns, msr, value)
    }
    fn poll(&mut self, now_ns: u64) -> vlapic_vmm::lapic_backend::Pending {
        self.inner.poll(now_ns)
    }
    fn acknowledge(&mut self, now_ns: u64) -> u8 {
        self.inner.acknowledge(now_ns)
    }
    fn take_nmi(&mut self) -> bool {
        self.inner.take_nmi()
    }
    fn models_run_state(&self) -> bool {
        self.inner.models_run_state()
    }
    fn take_init(&mut self) -> bool {
        self.inner.take_init()
    }
    fn take_sipi(&mut self) -> Option<u8> {
        self.inner.take_sipi()
    }
    fn next_deadline_ns(&self) -> Option<u64> {
        self.inner.next_deadline_ns()
    }
    fn cr8(&self) -> u8 {
        self.inner.cr8()
    }
    fn set_cr8(&mut self, now_ns: u64, cr8: u8) {
        self.inner.set_cr8(now_ns, cr8)
    }
}

/// A panic in a vCPU thread ends the VM with an error at once (it used
/// to leave the VMM waiting forever for that vCPU).
#[test]
fn vcpu_panic_ends_the_vm() {
    if !kvm_available() {
        return;
    }
    let _g = serial();
    let elf = guest_dir().join("abuse.elf");
    let cfg = match vlapic_vmm::args::parse([
        "--kernel",
        elf.to_str().unwrap(),
        "--cpus",
        "2",
        "--serial",
        "none",
    ])
    .unwrap()
    {
        vlapic_vmm::args::Command::Run(c) => c,
        other => panic!("{other:?}"),
    };
    let inner = vlapic_vmm::vlapic_backend::VlapicBackend::factory();
    let factory: vlapic_vmm::lapic_backend::BackendFactory = std::sync::Arc::new(move |ctx| {
        Box::new(PanicOnIcr {
            inner: inner(ctx),
            armed: ctx.cpu == 0,
        }) as Box<dyn vlapic_vmm::lapic_backend::LapicBackend>
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(vlapic_vmm::run(&cfg, Some(factory)).map_err(|e| e.to_string()));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the VMM hung after a vCPU thread panicked");
    let e = r.expect_err("a panicking vCPU must end the VM with an error");
    assert!(e.contains("vCPU 0: panic: injected LAPIC bug"), "{e}");
}
