//! The APIC timer (SDM 11.5.4 "APIC Timer"): one-shot, periodic and
//! TSC-deadline modes, the divide configuration and the current count.
//!
//! The timer never reads a clock. Every operation takes `now`, nanoseconds
//! on the embedder's monotonic clock; [`TimeBase`] converts it to APIC bus
//! cycles (the timer's input before the divider) and to guest TSC ticks.
//! The count is kept in whole bus cycles, so reads, divide changes and
//! save/restore are exact and repeatable.

use crate::regs::{DivideConfig, TimerMode};

const NS_PER_SEC: u128 = 1_000_000_000;

/// Conversion between the embedder's clock (ns) and the APIC's clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct TimeBase {
    /// APIC timer input clock in Hz (the "bus clock" before the divider).
    pub bus_hz: u64,
    /// Guest TSC frequency in Hz.
    pub tsc_hz: u64,
    /// Guest TSC value at `now == 0`, two's complement: a guest TSC that
    /// started after the embedder's time 0 gives a negative value.
    pub tsc_offset: u64,
}

impl TimeBase {
    /// Bus cycles elapsed at `now_ns` (floor).
    #[inline]
    pub fn cycles_at(&self, now_ns: u64) -> u64 {
        sat64(now_ns as u128 * self.bus_hz.max(1) as u128 / NS_PER_SEC)
    }

    /// First instant (ns) at which `cycles_at` reaches `cycles`.
    #[inline]
    pub fn ns_at_cycles(&self, cycles: u64) -> u64 {
        sat64(div_ceil(
            cycles as u128 * NS_PER_SEC,
            self.bus_hz.max(1) as u128,
        ))
    }

    /// Guest TSC at `now_ns` (modulo 2^64).
    #[inline]
    pub fn tsc_at(&self, now_ns: u64) -> u64 {
        self.guest_tsc(now_ns) as u64
    }

    /// Guest TSC at `now_ns` without wrapping: `tsc_offset` is the guest
    /// TSC at time 0 as a two's-complement signed value (negative when the
    /// guest TSC started after the embedder's time 0).
    #[inline]
    fn guest_tsc(&self, now_ns: u64) -> i128 {
        let ticks = now_ns as u128 * self.tsc_hz.max(1) as u128 / NS_PER_SEC;
        self.tsc_offset as i64 as i128 + ticks as i128
    }

    /// Whether the guest TSC at `now_ns` has reached `deadline` (an
    /// unsigned 64-bit TSC value, compared as the CPU does).
    #[inline]
    pub fn tsc_reached(&self, now_ns: u64, deadline: u64) -> bool {
        self.guest_tsc(now_ns) >= deadline as i128
    }

    /// First instant (ns) at which the guest TSC reaches `deadline` (0 if
    /// it already had at time 0; saturates for deadlines centuries away).
    #[inline]
    pub fn ns_at_tsc(&self, deadline: u64) -> u64 {
        let ticks = deadline as i128 - self.tsc_offset as i64 as i128;
        if ticks <= 0 {
            return 0;
        }
        sat64(div_ceil(
            ticks as u128 * NS_PER_SEC,
            self.tsc_hz.max(1) as u128,
        ))
    }

    /// Bus cycles in `ns` nanoseconds (rounded up).
    pub fn cycles_in_ns(&self, ns: u64) -> u64 {
        sat64(div_ceil(
            ns as u128 * self.bus_hz.max(1) as u128,
            NS_PER_SEC,
        ))
    }
}

#[inline]
fn sat64(v: u128) -> u64 {
    if v > u64::MAX as u128 {
        u64::MAX
    } else {
        v as u64
    }
}

#[inline]
fn div_ceil(a: u128, b: u128) -> u128 {
    a.div_ceil(b)
}

/// The timer's state. Plain data: the snapshot is derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApicTimer {
    /// TMICT.
    initial_count: u32,
    /// TDCR.
    divide: DivideConfig,
    /// Mode from LVT Timer bits 18:17.
    mode: TimerMode,
    /// Position in the current period; `None` when the count is 0
    /// (stopped, or one-shot expired).
    period_start: Option<Anchor>,
    /// IA32_TSC_DEADLINE; 0 = disarmed.
    tsc_deadline: u64,
    /// Smallest periodic period, in bus cycles.
    min_period_cycles: u64,
}

/// Where the count stood at a known bus cycle: `done` cycles of the
/// current period had elapsed at bus cycle `cycle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Anchor {
    cycle: u64,
    done: u64,
}

impl Anchor {
    #[inline]
    fn start(cycle: u64) -> Self {
        Anchor { cycle, done: 0 }
    }
    /// Cycles elapsed in the current period at bus cycle `now_c`.
    #[inline]
    fn elapsed(&self, now_c: u64) -> u64 {
        self.done.saturating_add(now_c.saturating_sub(self.cycle))
    }
}

/// Timer fields carried in a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimerSnapshot {
    /// TMICT.
    pub initial_count: u32,
    /// TDCR.
    pub divide: u32,
    /// Whether the count is running.
    pub running: bool,
    /// Bus cycles into the current period.
    pub elapsed_cycles: u64,
    /// IA32_TSC_DEADLINE.
    pub tsc_deadline: u64,
}

impl ApicTimer {
    /// A stopped timer in one-shot mode with divide-by-2 (the reset state).
    pub const fn new(min_period_cycles: u64) -> Self {
        ApicTimer {
            initial_count: 0,
            divide: DivideConfig::from_register(0),
            mode: TimerMode::OneShot,
            period_start: None,
            tsc_deadline: 0,
            min_period_cycles,
        }
    }

    /// Back to the reset state (keeps the configured minimum period).
    pub fn reset(&mut self) {
        *self = ApicTimer::new(self.min_period_cycles);
    }

    /// TMICT.
    pub fn initial_count(&self) -> u32 {
        self.initial_count
    }

    /// TDCR register value.
    pub fn divide(&self) -> DivideConfig {
        self.divide
    }

    /// Current mode.
    pub fn mode(&self) -> TimerMode {
        self.mode
    }

    /// Whether a one-shot or periodic count is running.
    pub fn is_running(&self) -> bool {
        self.period_start.is_some()
    }

    /// Length of one count in bus cycles (TMICT * divisor).
    #[inline]
    fn count_cycles(&self) -> u64 {
        self.initial_count as u64 * self.divide.divisor() as u64
    }

    /// Length of the interval after which the timer fires, in bus cycles:
    /// periodic mode never goes below the minimum period.
    #[inline]
    fn interval_cycles(&self) -> u64 {
        match self.mode {
            TimerMode::Periodic => self.count_cycles().max(self.min_period_cycles).max(1),
            _ => self.count_cycles(),
        }
    }

    /// TMCCT at `now` (SDM 11.5.4): counts down at bus clock / divisor; 0
    /// when stopped, after a one-shot expired, and in TSC-deadline mode.
    pub fn current_count(&self, tb: &TimeBase, now: u64) -> u32 {
        let Some(anchor) = self.period_start else {
            return 0;
        };
        if self.mode == TimerMode::TscDeadline {
            return 0;
        }
        let elapsed = anchor.elapsed(tb.cycles_at(now));
        let interval = self.interval_cycles();
        let into = match self.mode {
            TimerMode::Periodic => elapsed % interval,
            _ if elapsed >= interval => return 0,
            _ => elapsed,
        };
        let ticks = into / self.divide.divisor() as u64;
        (self.initial_count as u64).saturating_sub(ticks) as u32
    }

    /// Runs the timer up to `now`. Returns whether it fired (at most once:
    /// missed periodic expiries are coalesced into one interrupt, as an IRR
    /// bit would coalesce them anyway).
    pub fn advance(&mut self, tb: &TimeBase, now: u64) -> bool {
        match self.mode {
            TimerMode::TscDeadline => {
                if self.tsc_deadline != 0 && tb.tsc_reached(now, self.tsc_deadline) {
                    self.tsc_deadline = 0;
                    return true;
                }
                false
            }
            TimerMode::Periodic => {
                let Some(anchor) = self.period_start else {
                    return false;
                };
                let now_c = tb.cycles_at(now);
                let elapsed = anchor.elapsed(now_c);
                let interval = self.interval_cycles();
                if elapsed < interval {
                    return false;
                }
                self.period_start = Some(Anchor {
                    cycle: now_c,
                    done: elapsed % interval,
                });
                true
            }
            TimerMode::OneShot | TimerMode::Reserved => {
                let Some(anchor) = self.period_start else {
                    return false;
                };
                if anchor.elapsed(tb.cycles_at(now)) >= self.interval_cycles() {
                    self.period_start = None;
                    return true;
                }
                false
            }
        }
    }

    /// The instant (ns) at which the timer next fires, if armed.
    pub fn next_expiry(&self, tb: &TimeBase) -> Option<u64> {
        match self.mode {
            TimerMode::TscDeadline => {
                (self.tsc_deadline != 0).then(|| tb.ns_at_tsc(self.tsc_deadline))
            }
            _ => {
                let anchor = self.period_start?;
                let remaining = self.interval_cycles().saturating_sub(anchor.done);
                Some(tb.ns_at_cycles(anchor.cycle.saturating_add(remaining)))
            }
        }
    }

    /// A TMICT write: starts counting down from `value`; 0 stops the
    /// timer. Ignored in TSC-deadline mode (SDM 11.5.4.1).
    pub fn write_initial_count(&mut self, tb: &TimeBase, now: u64, value: u32) {
        if self.mode == TimerMode::TscDeadline {
            return;
        }
        self.initial_count = value;
        self.period_start = (value != 0).then(|| Anchor::start(tb.cycles_at(now)));
    }

    /// A TDCR write. A running count keeps its current value and continues
    /// at the new rate (the remainder is rescaled, as KVM and Xen do).
    pub fn write_divide(&mut self, tb: &TimeBase, now: u64, value: u32) {
        let new = DivideConfig::from_register(value);
        if let Some(anchor) = self.period_start {
            let now_c = tb.cycles_at(now);
            let into = anchor.elapsed(now_c) % self.interval_cycles().max(1);
            let ticks_done = into / self.divide.divisor() as u64;
            // In the stretched tail of a clamped periodic period the count
            // already reads 0: it stays 0, and the cycles waited so far
            // still count towards the minimum period (rescaling the ticks
            // past TMICT would end the period at once).
            let initial = self.initial_count as u64;
            let done = if ticks_done >= initial {
                into.max(initial * new.divisor() as u64)
            } else {
                ticks_done * new.divisor() as u64
            };
            self.divide = new;
            self.period_start = Some(Anchor { cycle: now_c, done });
        } else {
            self.divide = new;
        }
    }

    /// The LVT Timer mode changed (call after [`ApicTimer::advance`]).
    /// Entering or leaving TSC-deadline mode disarms the timer and clears
    /// TMICT and the deadline; one-shot <-> periodic keeps TMICT and the
    /// running count.
    pub fn set_mode(&mut self, tb: &TimeBase, now: u64, mode: TimerMode) {
        if mode == self.mode {
            return;
        }
        let was_deadline = self.mode == TimerMode::TscDeadline;
        let is_deadline = mode == TimerMode::TscDeadline;
        if was_deadline != is_deadline {
            self.initial_count = 0;
            self.period_start = None;
            self.tsc_deadline = 0;
            self.mode = mode;
            return;
        }
        // Keep the count: start the new mode from the current period.
        if let Some(anchor) = self.period_start {
            let interval = self.interval_cycles().max(1);
            let now_c = tb.cycles_at(now);
            self.period_start = Some(Anchor {
                cycle: now_c,
                done: anchor.elapsed(now_c) % interval,
            });
        }
        self.mode = mode;
    }

    /// IA32_TSC_DEADLINE read: the armed deadline, 0 outside TSC-deadline
    /// mode or after it fired.
    pub fn tsc_deadline(&self) -> u64 {
        if self.mode == TimerMode::TscDeadline {
            self.tsc_deadline
        } else {
            0
        }
    }

    /// IA32_TSC_DEADLINE write: arms (0 disarms); ignored outside
    /// TSC-deadline mode. Call [`ApicTimer::advance`] after it so that a
    /// deadline in the past fires at once.
    pub fn write_tsc_deadline(&mut self, value: u64) {
        if self.mode == TimerMode::TscDeadline {
            self.tsc_deadline = value;
        }
    }

    /// Captures the timer at `now`.
    pub fn snapshot(&self, tb: &TimeBase, now: u64) -> TimerSnapshot {
        TimerSnapshot {
            initial_count: self.initial_count,
            divide: self.divide.register(),
            running: self.period_start.is_some(),
            elapsed_cycles: self
                .period_start
                .map(|a| a.elapsed(tb.cycles_at(now)))
                .unwrap_or(0),
            tsc_deadline: self.tsc_deadline,
        }
    }

    /// Rebuilds the timer from a snapshot taken earlier, resuming the
    /// remainder at `now`. `mode` comes from the restored LVT Timer.
    pub fn restore(&mut self, tb: &TimeBase, now: u64, mode: TimerMode, snap: &TimerSnapshot) {
        self.mode = mode;
        self.initial_count = snap.initial_count;
        self.divide = DivideConfig::from_register(snap.divide);
        self.tsc_deadline = snap.tsc_deadline;
        self.period_start = snap.running.then(|| Anchor {
            cycle: tb.cycles_at(now),
            done: snap.elapsed_cycles,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TB: TimeBase = TimeBase {
        bus_hz: 1_000_000_000,
        tsc_hz: 2_000_000_000,
        tsc_offset: 1000,
    };

    fn timer(mode: TimerMode) -> ApicTimer {
        let mut t = ApicTimer::new(0);
        t.set_mode(&TB, 0, mode);
        t
    }

    #[test]
    fn divide_configuration_table() {
        let cases = [
            (0b0000, 2),
            (0b0001, 4),
            (0b0010, 8),
            (0b0011, 16),
            (0b1000, 32),
            (0b1001, 64),
            (0b1010, 128),
            (0b1011, 1),
        ];
        for (reg, div) in cases {
            assert_eq!(DivideConfig::from_register(reg).divisor(), div, "{reg:#b}");
        }
        assert_eq!(DivideConfig::from_register(0xFFFF_FFF4).register(), 0);
    }

    #[test]
    fn one_shot_counts_down_and_stays_zero() {
        let mut t = timer(TimerMode::OneShot);
        t.write_divide(&TB, 0, 0b1011); // /1
        t.write_initial_count(&TB, 100, 1000);
        assert_eq!(t.current_count(&TB, 100), 1000);
        assert_eq!(t.current_count(&TB, 600), 500);
        assert_eq!(t.next_expiry(&TB), Some(1100));
        assert!(!t.advance(&TB, 1099));
        assert!(t.advance(&TB, 1100));
        assert_eq!(t.current_count(&TB, 1100), 0);
        assert!(!t.advance(&TB, 5000));
        assert_eq!(t.next_expiry(&TB), None);
    }

    #[test]
    fn periodic_reloads_and_coalesces_missed_periods() {
        let mut t = timer(TimerMode::Periodic);
        t.write_divide(&TB, 0, 0b1011);
        t.write_initial_count(&TB, 0, 100);
        assert!(t.advance(&TB, 350)); // 3 periods missed: one fire
        assert_eq!(t.next_expiry(&TB), Some(400));
        assert_eq!(t.current_count(&TB, 350), 50);
        assert!(!t.advance(&TB, 399));
        assert!(t.advance(&TB, 400));
    }

    #[test]
    fn periodic_minimum_period_clamps_interval() {
        let mut t = ApicTimer::new(1000);
        t.set_mode(&TB, 0, TimerMode::Periodic);
        t.write_divide(&TB, 0, 0b1011);
        t.write_initial_count(&TB, 0, 1);
        assert_eq!(t.next_expiry(&TB), Some(1000));
    }

    #[test]
    fn divide_change_rescales_remainder() {
        let mut t = timer(TimerMode::OneShot);
        t.write_divide(&TB, 0, 0b0000); // /2
        t.write_initial_count(&TB, 0, 1000);
        assert_eq!(t.current_count(&TB, 400), 800);
        t.write_divide(&TB, 400, 0b0001); // /4
        assert_eq!(t.current_count(&TB, 400), 800);
        assert_eq!(t.current_count(&TB, 800), 700);
        assert_eq!(t.next_expiry(&TB), Some(400 + 800 * 4));
    }

    #[test]
    fn tsc_deadline_fires_and_reads_zero() {
        let mut t = timer(TimerMode::TscDeadline);
        t.write_tsc_deadline(1000 + 2000); // 1000 ns after 0
        assert_eq!(t.next_expiry(&TB), Some(1000));
        assert!(!t.advance(&TB, 999));
        assert!(t.advance(&TB, 1000));
        assert_eq!(t.tsc_deadline(), 0);
    }

    #[test]
    fn tsc_deadline_ignores_tmict_and_is_zero_outside_mode() {
        let mut t = timer(TimerMode::TscDeadline);
        t.write_initial_count(&TB, 0, 500);
        assert_eq!(t.initial_count(), 0);
        let mut o = timer(TimerMode::OneShot);
        o.write_tsc_deadline(5);
        assert_eq!(o.tsc_deadline(), 0);
    }

    #[test]
    fn tsc_deadline_with_wrapped_offset() {
        // The guest TSC started 1 ms after the embedder's time 0.
        let tb = TimeBase {
            bus_hz: 1_000_000_000,
            tsc_hz: 1_000_000_000,
            tsc_offset: 0u64.wrapping_sub(1_000_000),
        };
        let mut t = ApicTimer::new(0);
        t.set_mode(&tb, 0, TimerMode::TscDeadline);
        t.write_tsc_deadline(2_000_000);
        assert_eq!(t.next_expiry(&tb), Some(3_000_000));
        assert!(!t.advance(&tb, 0), "not fired at time 0");
        assert!(!t.advance(&tb, 2_999_999));
        assert!(t.advance(&tb, 3_000_000));
    }

    #[test]
    fn tsc_deadline_far_future_is_not_past() {
        // IA32_TSC_DEADLINE compares unsigned: a deadline 2^63 ahead is
        // far in the future, not in the past.
        let mut t = ApicTimer::new(0);
        t.set_mode(&TB, 0, TimerMode::TscDeadline);
        t.write_tsc_deadline(1000 + (1 << 63) - 1);
        assert!(!t.advance(&TB, 2000));
        assert!(t.next_expiry(&TB).unwrap() > 1 << 40);
        t.write_tsc_deadline(u64::MAX);
        assert!(!t.advance(&TB, u64::MAX / 4));
        assert_eq!(t.next_expiry(&TB), Some(u64::MAX.div_ceil(2) - 500));
    }

    #[test]
    fn snapshot_restore_resumes_remainder() {
        let mut t = timer(TimerMode::OneShot);
        t.write_divide(&TB, 0, 0b1011);
        t.write_initial_count(&TB, 0, 1000);
        let s = t.snapshot(&TB, 300);
        let mut u = ApicTimer::new(0);
        u.restore(&TB, 10_000, TimerMode::OneShot, &s);
        assert_eq!(u.current_count(&TB, 10_000), 700);
        assert_eq!(u.snapshot(&TB, 10_000), s);
    }
}
