//! The `--stats` summary line: what the userspace LAPIC rejected (the sum
//! of `vlapic::Stats` over the vCPUs), host timer wake-ups, and the VMM
//! process's own CPU time and peak memory. It is what shows that a
//! hostile guest costs the host a bounded amount (see the `abuse` guest
//! and `tests/abuse.rs`).
//!
//! Format: `summary: key=value ...`, one line, stable keys.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::control::{TimerService, VcpuControl};
use crate::vcpu::VcpuStats;

/// CPU time and peak RSS of this process (all threads).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Usage {
    /// User CPU seconds.
    pub user_s: f64,
    /// System CPU seconds (for a KVM VMM this includes guest execution).
    pub sys_s: f64,
    /// Peak resident set size in KiB.
    pub max_rss_kib: u64,
}

/// `getrusage(RUSAGE_SELF)`.
pub fn usage() -> Usage {
    // SAFETY: getrusage fills the struct we own; zeroed is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Usage::default();
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Usage {
        user_s: secs(ru.ru_utime),
        sys_s: secs(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss.max(0) as u64,
    }
}

/// Sum of the vCPUs' rejection counters (`None` if no backend counts).
pub fn rejected(stats: &[Option<VcpuStats>]) -> Option<vlapic::Stats> {
    let mut any = false;
    let mut t = vlapic::Stats::default();
    for s in stats.iter().flatten().filter_map(|s| s.rejected.as_ref()) {
        any = true;
        t.mmio_bad_access += s.mmio_bad_access;
        t.mmio_not_decoded += s.mmio_not_decoded;
        t.illegal_register += s.illegal_register;
        t.read_only_write += s.read_only_write;
        t.gp += s.gp;
        t.illegal_vector += s.illegal_vector;
        t.dropped += s.dropped;
        t.sipi_ignored += s.sipi_ignored;
        t.timer_clamped += s.timer_clamped;
    }
    any.then_some(t)
}

/// The summary line (without the `vlapic-vmm: ` prefix).
pub fn line(
    stats: &[Option<VcpuStats>],
    controls: &[Arc<VcpuControl>],
    timers: Option<&TimerService>,
    wall: Duration,
) -> String {
    let u = usage();
    let mut s = format!(
        "summary: wall_s={:.3} user_s={:.3} sys_s={:.3} max_rss_kib={}",
        wall.as_secs_f64(),
        u.user_s,
        u.sys_s,
        u.max_rss_kib
    );
    let park_timeouts: u64 = controls.iter().map(|c| c.park_timeouts()).sum();
    let kicks: u64 = controls.iter().map(|c| c.kicks()).sum();
    let _ = write!(s, " kicks={kicks} park_timeouts={park_timeouts}");
    if let Some(t) = timers {
        let t = t.stats();
        let _ = write!(
            s,
            " timer_wakeups={} timer_fired={} timer_thread_ms={:.1}",
            t.wakeups,
            t.fired,
            t.cpu_ns as f64 / 1e6
        );
    }
    match rejected(stats) {
        Some(r) => {
            let total = r.mmio_bad_access
                + r.mmio_not_decoded
                + r.illegal_register
                + r.read_only_write
                + r.gp
                + r.illegal_vector
                + r.dropped
                + r.sipi_ignored
                + r.timer_clamped;
            let _ = write!(
                s,
                " rejected={total} mmio_bad_access={} mmio_not_decoded={} illegal_register={} read_only_write={} gp={} illegal_vector={} dropped={} sipi_ignored={} timer_clamped={}",
                r.mmio_bad_access,
                r.mmio_not_decoded,
                r.illegal_register,
                r.read_only_write,
                r.gp,
                r.illegal_vector,
                r.dropped,
                r.sipi_ignored,
                r.timer_clamped
            );
        }
        None => s.push_str(" rejected=n/a"),
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_formats() {
        let mk = |gp, dropped| VcpuStats {
            rejected: Some(vlapic::Stats {
                gp,
                dropped,
                ..Default::default()
            }),
            ..Default::default()
        };
        let stats = vec![Some(mk(2, 1)), None, Some(mk(3, 0))];
        let r = rejected(&stats).unwrap();
        assert_eq!((r.gp, r.dropped), (5, 1));
        let l = line(&stats, &[], None, Duration::from_millis(1500));
        assert!(l.starts_with("summary: wall_s=1.500 "), "{l}");
        assert!(l.contains(" rejected=6 ") && l.contains(" gp=5 "), "{l}");
        assert!(l.contains(" park_timeouts=0"), "{l}");
        assert!(usage().max_rss_kib > 0);
        assert!(line(&[None], &[], None, Duration::ZERO).ends_with(" rejected=n/a"));
    }
}
