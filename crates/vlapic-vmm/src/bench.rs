//! `vlapic-vmm bench`: runs the `bench` guest (`guests/bench`) under
//! the userspace LAPIC (vlapic, `--irqchip user`) and KVM's in-kernel
//! LAPIC (`--irqchip kernel`), `--runs` times each (interleaved), every
//! run with `--profile`, and prints:
//!
//! 1. per operation: the median guest-measured time of each backend
//!    (with the spread: lowest p10 and highest p90 over the runs), the
//!    ratio user/kernel, the exits to userspace per operation under each
//!    backend, and each median as a multiple of the bare exit (`exit_out`,
//!    an OUT to a port nobody claims);
//! 2. for the userspace LAPIC, per operation: userspace time per exit,
//!    the LAPIC backend's part of it (the exit's access, and the per-entry
//!    poll/acknowledge work), that part as a share of the userspace time
//!    and of a whole bare-exit round trip as the guest sees it;
//! 3. the machine and the load average around every run.
//!
//! Every run is this same binary spawned as a subprocess (as
//! `conformance` does); the guest prints `BENCH:` lines
//! (`guests/bench/src/main.rs`), the VMM `PROFILE:` lines
//! ([`crate::profile`]). No timing is judged here: the command fails
//! only if a run fails or an operation has no number under a backend.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// The two LAPIC backends compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// vlapic in userspace (`--irqchip user`).
    User,
    /// KVM's in-kernel LAPIC (`--irqchip kernel`).
    Kernel,
}

/// The operations of the bench guest, in its order, with a description.
/// Rows are the guest's `BENCH:` names; the phase number of row `i` is
/// `i + 1`.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("null", "two back-to-back RDTSCs (timing overhead, in every row)"),
    ("exit_out", "bare exit to userspace: OUT to an ignored port"),
    ("cpuid", "CPUID (exit handled inside KVM)"),
    ("cr8_read", "MOV from CR8"),
    ("tpr_write_cr8", "TPR write via MOV to CR8"),
    ("tpr_read_xapic", "TPR read, xAPIC MMIO"),
    ("tpr_write_xapic", "TPR write, xAPIC MMIO"),
    ("eoi_xapic", "EOI alone (a vector in service), xAPIC MMIO; each iteration also sends the (untimed) self-IPI: 1 more exit"),
    ("self_ipi_eoi_xapic", "self-IPI + handler + EOI round trip, xAPIC"),
    ("ipi_pingpong_xapic", "IPI ping-pong with vCPU 1 (halted), xAPIC"),
    ("tscdl_arm_to_irq", "TSC-deadline: WRMSR of a past deadline -> handler entry"),
    ("tscdl_latency", "TSC-deadline: deadline -> handler entry (spinning, +50 us)"),
    ("tscdl_latency_hlt", "TSC-deadline: deadline -> handler entry (in HLT, +50 us)"),
    ("oneshot_latency", "one-shot timer: programmed expiry -> handler entry (+50 us)"),
    ("tpr_read_x2apic", "TPR read, x2APIC RDMSR"),
    ("tpr_write_x2apic", "TPR write, x2APIC WRMSR"),
    ("eoi_x2apic", "EOI alone, x2APIC WRMSR; plus the untimed self-IPI: 1 more exit"),
    ("self_ipi_eoi_x2apic", "self-IPI + handler + EOI round trip, x2APIC"),
    ("ipi_pingpong_x2apic", "IPI ping-pong with vCPU 1 (halted), x2APIC"),
];

/// Options of the subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Runs per backend.
    pub runs: u32,
    /// vCPUs (2 for the ping-pong rows).
    pub cpus: u32,
    /// Directory with `bench.elf`.
    pub guest_dir: PathBuf,
    /// The VMM binary to spawn.
    pub vmm: PathBuf,
    /// Per-run timeout in seconds.
    pub timeout: u64,
    /// Also print every run's `BENCH:` and `PROFILE:` lines.
    pub raw: bool,
}

/// Usage of the subcommand.
pub const USAGE: &str = "\
usage: vlapic-vmm bench [options]

  --runs N             runs per backend (default 3)
  --cpus N             vCPUs (default 2; 1 skips the IPI ping-pong rows)
  --guest-dir DIR      where bench.elf is (default $VLAPIC_GUEST_DIR, else
                       target/guests next to this binary's target dir)
  --vmm PATH           VMM binary to run (default: this one)
  --timeout SECONDS    per run (default 120)
  --raw                also print every run's BENCH:/PROFILE: lines

Runs the bench guest (guests/bench) under --irqchip user (vlapic) and
--irqchip kernel (KVM), interleaved, each with --profile, and prints per
operation the median guest-measured time of both backends (spread: lowest
p10 .. highest p90 over the runs), user/kernel, exits to userspace per
operation, each as a multiple of a bare exit, and the userspace LAPIC's
share of each exit. Exit status 0 when every run completed and every
operation has a number under both backends (or is skipped by both), 1
otherwise, 2 on usage errors.";

fn flag(b: Backend) -> &'static str {
    match b {
        Backend::User => "user",
        Backend::Kernel => "kernel",
    }
}

use crate::conformance::default_guest_dir;

/// Parses the subcommand's arguments (after `bench`); `None` = help.
pub fn parse_args<I, S>(args: I) -> Result<Option<Options>, String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let vmm = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut o = Options {
        runs: 3,
        cpus: 2,
        guest_dir: PathBuf::new(),
        vmm,
        timeout: 120,
        raw: false,
    };
    let mut dir = None;
    let mut it = args.into_iter().map(Into::into);
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        let num = |v: String, lo: u64, hi: u64| -> Result<u64, String> {
            v.parse::<u64>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| format!("{flag}: expected {lo}..={hi}, got {v:?}"))
        };
        match flag.as_str() {
            "--help" | "-h" => return Ok(None),
            "--runs" => o.runs = num(value()?, 1, 1000)? as u32,
            "--cpus" => o.cpus = num(value()?, 1, 255)? as u32,
            "--guest-dir" => dir = Some(PathBuf::from(value()?)),
            "--vmm" => o.vmm = PathBuf::from(value()?),
            "--timeout" => o.timeout = num(value()?, 1, 86_400)?,
            "--raw" => o.raw = true,
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    o.guest_dir = dir.unwrap_or_else(|| default_guest_dir(&o.vmm));
    Ok(Some(o))
}

/// One `BENCH:` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// Median, p10, p90 in TSC cycles.
    pub cycles: [u64; 3],
    /// Median, p10, p90 in ns.
    pub ns: [u64; 3],
    /// Iterations.
    pub n: u64,
    /// Phase number (for the `PROFILE:` lines).
    pub phase: u32,
}

/// One `PROFILE:` line (totals over a phase).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PhaseProfile {
    /// Exits to userspace.
    pub exits: u64,
    /// `KVM_RUN`s.
    pub runs: u64,
    /// Userspace time between `KVM_RUN`s (parks excluded), ns.
    pub user_ns: f64,
    /// LAPIC backend time for the exits' own accesses, ns.
    pub access_ns: f64,
    /// LAPIC backend time for the per-entry work, ns.
    pub entry_ns: f64,
    /// Time waking other vCPUs (inside the backend calls), ns.
    pub wake_ns: f64,
    /// Of which signalling them out of `KVM_RUN`, ns.
    pub kick_ns: f64,
    /// `KVM_INTERRUPT` ioctls, ns.
    pub inject_ns: f64,
    /// Exits by kind.
    pub kinds: String,
}

/// What one guest run printed.
#[derive(Debug, Clone, Default)]
pub struct RunResult {
    /// `BENCH:` lines by name.
    pub samples: BTreeMap<String, Sample>,
    /// `BENCHSKIP:` names with the reason.
    pub skipped: BTreeMap<String, String>,
    /// `BENCHFAIL:` lines and other problems.
    pub failures: Vec<String>,
    /// `PROFILE:` lines by phase.
    pub profile: BTreeMap<u32, PhaseProfile>,
    /// Guest TSC kHz (`BENCHINFO:`).
    pub tsc_khz: u64,
    /// Guest printed `BENCHDONE`.
    pub done: bool,
    /// Load average (1, 5, 15 min) before and after.
    pub load: [(f64, f64, f64); 2],
    /// Wall time.
    pub elapsed: Duration,
    /// The raw output (stdout then stderr).
    pub raw: String,
}

fn field<T: std::str::FromStr>(it: &mut std::str::SplitWhitespace<'_>) -> Option<T> {
    it.next()?.parse().ok()
}

/// Parses a run's guest output (`BENCH*:` lines) and VMM stderr
/// (`PROFILE:` lines).
pub fn parse_output(stdout: &str, stderr: &str) -> RunResult {
    let mut r = RunResult::default();
    for line in stdout.lines().map(str::trim_end) {
        if let Some(rest) = line.strip_prefix("BENCH: ") {
            let mut it = rest.split_whitespace();
            let name = it.next().unwrap_or("").to_string();
            let vals: Vec<u64> = it.filter_map(|v| v.parse().ok()).collect();
            if let [m, p10, p90, n, mn, p10n, p90n, ph] = vals[..] {
                r.samples.insert(
                    name,
                    Sample {
                        cycles: [m, p10, p90],
                        ns: [mn, p10n, p90n],
                        n,
                        phase: ph as u32,
                    },
                );
            } else {
                r.failures.push(format!("unparsable line: {line}"));
            }
        } else if let Some(rest) = line.strip_prefix("BENCHSKIP: ") {
            let (n, why) = rest.split_once(' ').unwrap_or((rest, ""));
            r.skipped.insert(n.to_string(), why.to_string());
        } else if let Some(rest) = line.strip_prefix("BENCHFAIL: ") {
            r.failures.push(rest.to_string());
        } else if let Some(rest) = line.strip_prefix("BENCHINFO: ") {
            let mut it = rest.split_whitespace();
            while let Some(k) = it.next() {
                if k == "tsc_khz" {
                    r.tsc_khz = field(&mut it).unwrap_or(0);
                }
            }
        } else if line == "BENCHDONE" {
            r.done = true;
        } else if line.starts_with("FAIL: ") {
            r.failures.push(line.to_string());
        }
    }
    for line in stderr.lines() {
        let Some(rest) = line.strip_prefix("PROFILE: phase ") else {
            continue;
        };
        let mut it = rest.split_whitespace();
        let Some(phase) = field::<u32>(&mut it) else {
            continue;
        };
        let mut p = PhaseProfile::default();
        while let Some(k) = it.next() {
            match k {
                "exits" => p.exits = field(&mut it).unwrap_or(0),
                "runs" => p.runs = field(&mut it).unwrap_or(0),
                "user_ns" => p.user_ns = field(&mut it).unwrap_or(0.0),
                "access_ns" => p.access_ns = field(&mut it).unwrap_or(0.0),
                "entry_ns" => p.entry_ns = field(&mut it).unwrap_or(0.0),
                "wake_ns" => p.wake_ns = field(&mut it).unwrap_or(0.0),
                "kick_ns" => p.kick_ns = field(&mut it).unwrap_or(0.0),
                "inject_ns" => p.inject_ns = field(&mut it).unwrap_or(0.0),
                "kinds" => p.kinds = it.next().unwrap_or("").to_string(),
                _ => {}
            }
        }
        r.profile.insert(phase, p);
    }
    r
}

fn loadavg() -> (f64, f64, f64) {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = s
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    match v[..] {
        [a, b, c] => (a, b, c),
        _ => (0.0, 0.0, 0.0),
    }
}

/// Runs the bench guest once under `backend`.
pub fn run_once(o: &Options, backend: Backend) -> RunResult {
    let elf = o.guest_dir.join("bench.elf");
    let before = loadavg();
    let t0 = Instant::now();
    let out = Command::new(&o.vmm)
        .arg("--kernel")
        .arg(&elf)
        .args(["--irqchip", flag(backend)])
        .args(["--cpus", &o.cpus.to_string()])
        .args(["--timeout", &o.timeout.to_string()])
        .args(["--serial", "stdout", "--profile"])
        .output();
    let elapsed = t0.elapsed();
    let after = loadavg();
    let mut r = match out {
        Err(e) => RunResult {
            failures: vec![format!("cannot run {}: {e}", o.vmm.display())],
            ..Default::default()
        },
        Ok(out) => {
            let (so, se) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            let mut r = parse_output(&so, &se);
            // The guest exits through isa-debug-exit with 0: status 1.
            if out.status.code() != Some(1) {
                let tail: Vec<&str> = se.lines().rev().take(5).collect();
                r.failures.push(format!(
                    "VMM exit status {:?}: {}",
                    out.status.code(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                ));
            }
            if !r.done {
                r.failures
                    .push("the guest did not finish (no BENCHDONE)".into());
            }
            r.raw = format!("{so}{se}");
            r
        }
    };
    r.load = [before, after];
    r.elapsed = elapsed;
    r
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// One operation under one backend, over all runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Median of the runs' medians, ns.
    pub median_ns: f64,
    /// Lowest p10 over the runs, ns.
    pub p10_ns: f64,
    /// Highest p90 over the runs, ns.
    pub p90_ns: f64,
    /// Lowest and highest run median, ns.
    pub run_range: (f64, f64),
    /// Median in TSC cycles (median of the runs' medians).
    pub median_cycles: f64,
    /// Runs with a number.
    pub runs: usize,
    /// Exits to userspace per operation (all runs' totals).
    pub exits_per_op: Option<f64>,
    /// `KVM_RUN`s per operation.
    pub runs_per_op: Option<f64>,
    /// Userspace ns per exit.
    pub user_ns_per_exit: Option<f64>,
    /// LAPIC backend ns per exit (access + entry, wakes of other vCPUs
    /// excluded).
    pub lapic_ns_per_exit: Option<f64>,
    /// Waking other vCPUs, ns per exit.
    pub wake_ns_per_exit: Option<f64>,
    /// Of which kick signals, ns per exit.
    pub kick_ns_per_exit: Option<f64>,
    /// `KVM_INTERRUPT`, ns per exit.
    pub inject_ns_per_exit: Option<f64>,
    /// Of which the exit's own access.
    pub access_ns_per_exit: Option<f64>,
    /// Exit kinds of the first profiled run.
    pub kinds: String,
}

/// Summarises `op` over `runs`.
pub fn summarize(op: &str, runs: &[RunResult]) -> Option<Summary> {
    let got: Vec<(&RunResult, &Sample)> = runs
        .iter()
        .filter_map(|r| r.samples.get(op).map(|s| (r, s)))
        .collect();
    if got.is_empty() {
        return None;
    }
    let mut meds: Vec<f64> = got.iter().map(|(_, s)| s.ns[0] as f64).collect();
    let mut cyc: Vec<f64> = got.iter().map(|(_, s)| s.cycles[0] as f64).collect();
    let mut s = Summary {
        median_ns: median(&mut meds)?,
        p10_ns: got
            .iter()
            .map(|(_, s)| s.ns[1] as f64)
            .fold(f64::INFINITY, f64::min),
        p90_ns: got.iter().map(|(_, s)| s.ns[2] as f64).fold(0.0, f64::max),
        run_range: (meds[0], meds[meds.len() - 1]),
        median_cycles: median(&mut cyc)?,
        runs: got.len(),
        ..Default::default()
    };
    let (mut n, mut p) = (0u64, PhaseProfile::default());
    for (r, smp) in &got {
        if let Some(pp) = r.profile.get(&smp.phase) {
            n += smp.n;
            p.exits += pp.exits;
            p.runs += pp.runs;
            p.user_ns += pp.user_ns;
            p.access_ns += pp.access_ns;
            p.entry_ns += pp.entry_ns;
            p.wake_ns += pp.wake_ns;
            p.kick_ns += pp.kick_ns;
            p.inject_ns += pp.inject_ns;
            if s.kinds.is_empty() {
                s.kinds = pp.kinds.clone();
            }
        } else if !r.profile.is_empty() {
            // Profiled run, no exit in this phase at all.
            n += smp.n;
        }
    }
    if n > 0 {
        s.exits_per_op = Some(p.exits as f64 / n as f64);
        s.runs_per_op = Some(p.runs as f64 / n as f64);
        if p.exits > 0 {
            let e = p.exits as f64;
            s.user_ns_per_exit = Some(p.user_ns / e);
            s.lapic_ns_per_exit = Some((p.access_ns + p.entry_ns - p.wake_ns).max(0.0) / e);
            s.access_ns_per_exit = Some(p.access_ns / e);
            s.wake_ns_per_exit = Some(p.wake_ns / e);
            s.kick_ns_per_exit = Some(p.kick_ns / e);
            s.inject_ns_per_exit = Some(p.inject_ns / e);
        }
    }
    Some(s)
}

/// Formats ns as `12.3 us` / `950 ns` / `1.23 ms`.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 10e3 {
        format!("{:.1} us", ns / 1e3)
    } else if ns >= 1e3 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".into(), f)
}

/// The host: CPU model, CPU count, kernel.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let virt = if cpuinfo.contains(" vmx") || cpuinfo.contains(" svm") {
        "KVM with hardware virtualization"
    } else {
        "nested kvm_pvm (software KVM, no vmx/svm; guest CPL0 code emulated)"
    };
    format!("{model}, {cpus} CPUs, Linux {}, {virt}", kernel.trim())
}

/// Renders the report (markdown tables) for finished runs.
pub fn render(o: &Options, user: &[RunResult], kernel: &[RunResult]) -> (String, Vec<String>) {
    let mut s = String::new();
    let mut missing = Vec::new();
    let bare_u = summarize("exit_out", user);
    let bare_k = summarize("exit_out", kernel);
    let _ = writeln!(s, "Machine: {}", machine());
    let _ = writeln!(
        s,
        "Runs: {} per backend, {} vCPU(s), guest {}; times are guest TSC medians over each operation's iterations, then the median over the runs; spread = lowest p10 .. highest p90 over the runs.\n",
        o.runs,
        o.cpus,
        o.guest_dir.join("bench.elf").display()
    );
    let _ = writeln!(
        s,
        "| operation | user (vlapic) median (p10-p90) | kernel (KVM) median (p10-p90) | user/kernel | exits to userspace/op, user | exits to userspace/op, kernel | user / bare exit | kernel / bare exit |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for (op, _) in OPERATIONS {
        let (u, k) = (summarize(op, user), summarize(op, kernel));
        let skipped = |rs: &[RunResult]| rs.iter().any(|r| r.skipped.contains_key(*op));
        match (&u, &k) {
            (None, None) if skipped(user) && skipped(kernel) => {
                let _ = writeln!(s, "| {op} | skipped | skipped | | | | | |");
                continue;
            }
            (Some(_), Some(_)) => {}
            _ => missing.push(op.to_string()),
        }
        let cell = |x: &Option<Summary>| {
            x.as_ref().map_or_else(
                || "-".into(),
                |x| {
                    format!(
                        "{} ({}-{})",
                        fmt_ns(x.median_ns),
                        fmt_ns(x.p10_ns),
                        fmt_ns(x.p90_ns)
                    )
                },
            )
        };
        let ratio = match (&u, &k) {
            (Some(u), Some(k)) if k.median_ns > 0.0 => format!("{:.2}", u.median_ns / k.median_ns),
            _ => "-".into(),
        };
        let mult = |x: &Option<Summary>, b: &Option<Summary>| match (x, b) {
            (Some(x), Some(b)) if b.median_ns > 0.0 => format!("{:.2}x", x.median_ns / b.median_ns),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {op} | {} | {} | {ratio} | {} | {} | {} | {} |",
            cell(&u),
            cell(&k),
            opt(u.as_ref().and_then(|x| x.exits_per_op), |v| format!(
                "{v:.2}"
            )),
            opt(k.as_ref().and_then(|x| x.exits_per_op), |v| format!(
                "{v:.2}"
            )),
            mult(&u, &bare_u),
            mult(&k, &bare_k),
        );
    }
    let _ = writeln!(s, "\nOperations:");
    for (op, what) in OPERATIONS {
        let _ = writeln!(s, "- `{op}`: {what}");
    }

    let bare_ns = bare_u.as_ref().map(|b| b.median_ns);
    let _ = writeln!(
        s,
        "\nUserspace LAPIC (vlapic), host side (`--profile`): per exit to userspace, the userspace time between KVM_RUNs (decode, devices, LAPIC, injection ioctls, timer arming; parked time excluded), the LAPIC backend's part of it (vlapic and its fabric: the exit's own access + the per-entry poll/acknowledge/queries; waking other vCPUs - condvar notify, signal - is shown apart, as VMM plumbing, and so is the injection ioctl), that part as a share of the userspace time and of a whole bare exit round trip as the guest measures it (`exit_out` median {}).\n",
        opt(bare_ns, fmt_ns)
    );
    let _ = writeln!(
        s,
        "| operation | exits/op | KVM_RUNs/op | userspace ns/exit | LAPIC ns/exit | KVM_INTERRUPT ns/exit | vCPU wakes ns/exit (signals) | LAPIC share of userspace | LAPIC share of a bare exit | exit kinds (one run) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
    for (op, _) in OPERATIONS {
        let Some(u) = summarize(op, user) else {
            continue;
        };
        let share = match (u.lapic_ns_per_exit, u.user_ns_per_exit) {
            (Some(l), Some(t)) if t > 0.0 => format!("{:.1}%", 100.0 * l / t),
            _ => "-".into(),
        };
        let share_bare = match (u.lapic_ns_per_exit, bare_ns) {
            (Some(l), Some(b)) if b > 0.0 => format!("{:.2}%", 100.0 * l / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {op} | {} | {} | {} | {} | {} | {} ({}) | {share} | {share_bare} | {} |",
            opt(u.exits_per_op, |v| format!("{v:.2}")),
            opt(u.runs_per_op, |v| format!("{v:.2}")),
            opt(u.user_ns_per_exit, |v| format!("{v:.0}")),
            opt(u.lapic_ns_per_exit, |v| format!("{v:.0}")),
            opt(u.inject_ns_per_exit, |v| format!("{v:.0}")),
            opt(u.wake_ns_per_exit, |v| format!("{v:.0}")),
            opt(u.kick_ns_per_exit, |v| format!("{v:.0}")),
            if u.kinds.is_empty() { "-" } else { &u.kinds },
        );
    }

    let _ = writeln!(s, "\nRun-to-run range of the medians:");
    for (op, _) in OPERATIONS {
        let (u, k) = (summarize(op, user), summarize(op, kernel));
        if u.is_none() && k.is_none() {
            continue;
        }
        let r = |x: &Option<Summary>| {
            x.as_ref().map_or_else(
                || "-".into(),
                |x| {
                    format!(
                        "{}..{} ({} runs)",
                        fmt_ns(x.run_range.0),
                        fmt_ns(x.run_range.1),
                        x.runs
                    )
                },
            )
        };
        let _ = writeln!(s, "- {op}: user {}, kernel {}", r(&u), r(&k));
    }
    let _ = writeln!(s, "\nLoad average (1/5/15 min) before -> after each run:");
    for (name, rs) in [("user", user), ("kernel", kernel)] {
        for (i, r) in rs.iter().enumerate() {
            let [(a, b, c), (d, e, f)] = r.load;
            let _ = writeln!(
                s,
                "- {name} run {}: {a:.2} {b:.2} {c:.2} -> {d:.2} {e:.2} {f:.2} ({:.1} s){}",
                i + 1,
                r.elapsed.as_secs_f64(),
                if r.failures.is_empty() {
                    String::new()
                } else {
                    format!(" FAILED: {}", r.failures.join("; "))
                }
            );
        }
    }
    (s, missing)
}

/// Entry point of `vlapic-vmm bench ARGS...`; returns the exit status.
pub fn main<I, S>(args: I) -> i32
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let o = match parse_args(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{USAGE}");
            return 0;
        }
        Err(e) => {
            eprintln!("vlapic-vmm bench: {e}\n\n{USAGE}");
            return 2;
        }
    };
    let elf = o.guest_dir.join("bench.elf");
    if !elf.is_file() {
        eprintln!(
            "vlapic-vmm bench: {} not found (build the guests with guests/build.sh, or --guest-dir)",
            elf.display()
        );
        return 2;
    }
    let (mut user, mut kernel) = (Vec::new(), Vec::new());
    for i in 0..o.runs {
        for b in [Backend::User, Backend::Kernel] {
            let r = run_once(&o, b);
            eprintln!(
                "vlapic-vmm bench: run {}/{} {}: {:.1} s, load {:.2}{}",
                i + 1,
                o.runs,
                flag(b),
                r.elapsed.as_secs_f64(),
                r.load[0].0,
                if r.failures.is_empty() {
                    String::new()
                } else {
                    format!(", FAILED: {}", r.failures.join("; "))
                }
            );
            if o.raw {
                for l in r
                    .raw
                    .lines()
                    .filter(|l| l.starts_with("BENCH") || l.starts_with("PROFILE"))
                {
                    println!("[{} run {}] {l}", flag(b), i + 1);
                }
            }
            match b {
                Backend::User => user.push(r),
                Backend::Kernel => kernel.push(r),
            }
        }
    }
    let (text, missing) = render(&o, &user, &kernel);
    println!("{text}");
    let failed = user
        .iter()
        .chain(kernel.iter())
        .any(|r| !r.failures.is_empty());
    if !missing.is_empty() {
        println!(
            "MISSING: no number under both backends for: {}",
            missing.join(", ")
        );
    }
    if failed || !missing.is_empty() {
        1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "BENCHINFO: tsc_khz 2000000 cpus 2 x2apic 1 tsc_deadline 1\n\
BENCH: null 4000 3900 4100 1000 2000 1950 2050 1\n\
BENCH: exit_out 20000 19000 22000 1000 10000 9500 11000 2\n\
BENCHSKIP: ipi_pingpong_xapic (needs --cpus 2)\n\
BENCHDONE\n";
    const ERR: &str = "PROFILE: host_tsc_mhz 2600.0 (phase 0 = outside any marked phase)\n\
PROFILE: phase 2 exits 1000 runs 1001 user_ns 2000000 access_ns 0 entry_ns 300000 run_ns 8000000 parked_ns 0 calls 4000 kinds io_out=1000\n";

    #[test]
    fn parses_and_summarizes() {
        let r = parse_output(OUT, ERR);
        assert!(r.done && r.failures.is_empty());
        assert_eq!(r.tsc_khz, 2_000_000);
        assert_eq!(r.samples["exit_out"].ns, [10000, 9500, 11000]);
        assert!(r.skipped.contains_key("ipi_pingpong_xapic"));
        assert_eq!(r.profile[&2].exits, 1000);
        let s = summarize("exit_out", &[r.clone(), r]).unwrap();
        assert_eq!(s.median_ns, 10000.0);
        assert_eq!(s.exits_per_op, Some(1.0));
        assert_eq!(s.user_ns_per_exit, Some(2000.0));
        assert_eq!(s.lapic_ns_per_exit, Some(300.0));
        assert_eq!(s.kinds, "io_out=1000");
    }

    #[test]
    fn args() {
        let o = parse_args(["--runs", "1", "--cpus=1", "--guest-dir", "/x"])
            .unwrap()
            .unwrap();
        assert_eq!((o.runs, o.cpus), (1, 1));
        assert_eq!(o.guest_dir, PathBuf::from("/x"));
        assert!(parse_args(["--runs", "0"]).is_err());
        assert!(parse_args(["--bogus"]).is_err());
        assert_eq!(parse_args(["--help"]).unwrap(), None);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_ns(950.0), "950 ns");
        assert_eq!(fmt_ns(1234.0), "1.23 us");
        assert_eq!(fmt_ns(12345.0), "12.3 us");
        assert_eq!(fmt_ns(1_234_567.0), "1.23 ms");
    }
}
