//! Spec section 5: the APIC timer. Time is driven exactly by the test
//! (1 GHz bus clock: one bus cycle per ns; TSC at 2 GHz).

mod common;
use common::*;
use vlapic::{ApicConfig, LocalApic};

const ONE_SHOT: u32 = 0x00000;
const PERIODIC: u32 = 0x20000;
const DEADLINE: u32 = 0x40000;
const DIV1: u32 = 0b1011;

fn apic() -> LocalApic {
    let mut a = LocalApic::new(
        ApicConfig::new(0)
            .with_bsp(true)
            .with_min_periodic_ns(0)
            .with_tsc_frequency_hz(2_000_000_000)
            .with_tsc_offset(1_000_000),
    );
    w(&mut a, SVR, 0x1FF);
    a
}

fn fired(a: &mut LocalApic, now: u64) -> bool {
    let got = a.poll(now).interrupt == Some(0x40);
    if got {
        a.acknowledge();
        a.mmio_write(now, EOI, &0u32.to_le_bytes());
    }
    got
}

#[test]
fn divide_configuration_uses_bits_0_1_3_and_other_bits_read_0() {
    let mut a = apic();
    let table = [
        (0b0000u32, 2u64),
        (0b0001, 4),
        (0b0010, 8),
        (0b0011, 16),
        (0b1000, 32),
        (0b1001, 64),
        (0b1010, 128),
        (0b1011, 1),
    ];
    for (bits, div) in table {
        w(&mut a, TDCR, bits | 0xFFF0);
        assert_eq!(r(&mut a, TDCR), bits);
        wt(&mut a, 0, TMICT, 1000);
        assert_eq!(rt(&mut a, 100 * div, TMCCT), 900, "divide {div}");
    }
    w(&mut a, TDCR, 0b0100);
    assert_eq!(r(&mut a, TDCR), 0);
}

#[test]
fn initial_count_write_starts_and_zero_stops() {
    let mut a = apic();
    w(&mut a, TDCR, DIV1);
    w(&mut a, LVT_TIMER, ONE_SHOT | 0x40);
    wt(&mut a, 10, TMICT, 100);
    assert_eq!(rt(&mut a, 10, TMCCT), 100);
    assert_eq!(a.next_timer_deadline(), Some(110));
    wt(&mut a, 50, TMICT, 0);
    assert_eq!(rt(&mut a, 50, TMCCT), 0);
    assert_eq!(a.next_timer_deadline(), None);
    assert!(!fired(&mut a, 1000));
}

#[test]
fn one_shot_counts_down_fires_once_then_reads_zero() {
    let mut a = apic();
    w(&mut a, TDCR, 0b0001); // /4
    w(&mut a, LVT_TIMER, ONE_SHOT | 0x40);
    wt(&mut a, 0, TMICT, 250);
    assert_eq!(rt(&mut a, 400, TMCCT), 150);
    assert!(!fired(&mut a, 999));
    assert!(fired(&mut a, 1000));
    assert_eq!(rt(&mut a, 1000, TMCCT), 0);
    assert!(!fired(&mut a, 5000));
    assert_eq!(rt(&mut a, 5000, TMCCT), 0);
    assert_eq!(r(&mut a, TMICT), 250);
}

#[test]
fn periodic_reloads_initial_count() {
    let mut a = apic();
    w(&mut a, TDCR, DIV1);
    w(&mut a, LVT_TIMER, PERIODIC | 0x40);
    wt(&mut a, 0, TMICT, 100);
    for k in 1..=5u64 {
        assert!(!fired(&mut a, 100 * k - 1));
        assert!(fired(&mut a, 100 * k), "period {k}");
        assert_eq!(rt(&mut a, 100 * k + 30, TMCCT), 70);
    }
}

#[test]
fn timer_runs_while_masked_only_interrupt_suppressed() {
    let mut a = apic();
    w(&mut a, TDCR, DIV1);
    w(&mut a, LVT_TIMER, PERIODIC | 0x10040);
    wt(&mut a, 0, TMICT, 100);
    assert!(!fired(&mut a, 250));
    assert_eq!(rt(&mut a, 250, TMCCT), 50);
    wt(&mut a, 250, LVT_TIMER, PERIODIC | 0x40);
    assert!(fired(&mut a, 300));
}

#[test]
fn switching_one_shot_and_periodic_keeps_count() {
    let mut a = apic();
    w(&mut a, TDCR, DIV1);
    w(&mut a, LVT_TIMER, ONE_SHOT | 0x40);
    wt(&mut a, 0, TMICT, 100);
    wt(&mut a, 30, LVT_TIMER, PERIODIC | 0x40);
    assert_eq!(r(&mut a, TMICT), 100);
    assert_eq!(rt(&mut a, 30, TMCCT), 70);
    assert!(fired(&mut a, 100));
    assert!(fired(&mut a, 200), "now periodic");
    wt(&mut a, 250, LVT_TIMER, ONE_SHOT | 0x40);
    assert_eq!(rt(&mut a, 250, TMCCT), 50);
    assert!(fired(&mut a, 300));
    assert!(!fired(&mut a, 400), "one-shot again: no reload");
}

#[test]
fn divide_change_mid_count_rescales_remainder() {
    let mut a = apic();
    w(&mut a, TDCR, 0b0000); // /2
    w(&mut a, LVT_TIMER, ONE_SHOT | 0x40);
    wt(&mut a, 0, TMICT, 1000);
    assert_eq!(rt(&mut a, 600, TMCCT), 700);
    wt(&mut a, 600, TDCR, 0b0010); // /8
    assert_eq!(rt(&mut a, 600, TMCCT), 700);
    assert_eq!(rt(&mut a, 1400, TMCCT), 600);
    assert_eq!(a.next_timer_deadline(), Some(600 + 700 * 8));
}

#[test]
fn tsc_deadline_mode_ignores_tmict_and_reads_zero_count() {
    let mut a = apic();
    w(&mut a, LVT_TIMER, DEADLINE | 0x40);
    w(&mut a, TMICT, 500);
    assert_eq!(r(&mut a, TMICT), 0);
    assert_eq!(r(&mut a, TMCCT), 0);
    assert_eq!(a.next_timer_deadline(), None);
}

#[test]
fn entering_or_leaving_tsc_deadline_disarms_and_clears() {
    let mut a = apic();
    w(&mut a, TDCR, DIV1);
    w(&mut a, LVT_TIMER, ONE_SHOT | 0x40);
    w(&mut a, TMICT, 500);
    w(&mut a, LVT_TIMER, DEADLINE | 0x40);
    assert_eq!(r(&mut a, TMICT), 0);
    assert_eq!(a.next_timer_deadline(), None);
    a.msr_write(0, MSR_TSC_DEADLINE, 5_000_000).unwrap();
    assert!(a.next_timer_deadline().is_some());
    w(&mut a, LVT_TIMER, ONE_SHOT | 0x40);
    assert_eq!(a.next_timer_deadline(), None);
    w(&mut a, LVT_TIMER, DEADLINE | 0x40);
    assert_eq!(a.msr_read(0, MSR_TSC_DEADLINE), Ok(0), "deadline cleared");
}

#[test]
fn tsc_deadline_msr_reads_zero_and_ignores_writes_outside_mode() {
    let mut a = apic();
    a.msr_write(0, MSR_TSC_DEADLINE, 5_000_000).unwrap();
    assert_eq!(a.msr_read(0, MSR_TSC_DEADLINE), Ok(0));
    assert_eq!(a.next_timer_deadline(), None);
    let mut n = LocalApic::new(cfg(0).with_tsc_deadline(false));
    assert!(n.msr_read(0, MSR_TSC_DEADLINE).is_err());
}

#[test]
fn tsc_deadline_fires_at_deadline_and_then_reads_zero() {
    let mut a = apic();
    w(&mut a, LVT_TIMER, DEADLINE | 0x40);
    // Guest TSC = 1_000_000 + 2 * ns.
    a.msr_write(0, MSR_TSC_DEADLINE, 1_000_000 + 2 * 5000)
        .unwrap();
    assert_eq!(a.next_timer_deadline(), Some(5000));
    assert_eq!(a.msr_read(4999, MSR_TSC_DEADLINE), Ok(1_010_000));
    assert!(!fired(&mut a, 4999));
    assert!(fired(&mut a, 5000));
    assert_eq!(a.msr_read(5000, MSR_TSC_DEADLINE), Ok(0));
}

#[test]
fn tsc_deadline_zero_disarms() {
    let mut a = apic();
    w(&mut a, LVT_TIMER, DEADLINE | 0x40);
    a.msr_write(0, MSR_TSC_DEADLINE, 2_000_000).unwrap();
    a.msr_write(10, MSR_TSC_DEADLINE, 0).unwrap();
    assert_eq!(a.next_timer_deadline(), None);
    assert!(!fired(&mut a, 10_000_000));
}

#[test]
fn tsc_deadline_in_the_past_fires_at_once() {
    let mut a = apic();
    w(&mut a, LVT_TIMER, DEADLINE | 0x40);
    a.msr_write(1000, MSR_TSC_DEADLINE, 5).unwrap();
    assert_eq!(
        a.work().interrupt,
        Some(0x40),
        "latched by the write itself"
    );
    assert_eq!(a.msr_read(1000, MSR_TSC_DEADLINE), Ok(0));
}

#[test]
fn short_periods_are_clamped_and_late_polls_fire_once() {
    let mut a = LocalApic::new(ApicConfig::new(0).with_min_periodic_ns(100_000));
    w(&mut a, SVR, 0x1FF);
    w(&mut a, TDCR, DIV1);
    w(&mut a, LVT_TIMER, PERIODIC | 0x40);
    wt(&mut a, 0, TMICT, 1);
    assert_eq!(a.next_timer_deadline(), Some(100_000));
    assert_eq!(a.stats().timer_clamped, 1);
    // A poll a year late costs one fire, not billions of loop iterations.
    let late = 365 * 24 * 3600 * 1_000_000_000u64;
    assert!(fired(&mut a, late));
    assert!(!fired(&mut a, late));
    assert!(a.next_timer_deadline().unwrap() > late);
}

#[test]
fn timer_uses_only_embedder_time() {
    // Two APICs driven with the same times give identical results.
    let run = || {
        let mut a = apic();
        w(&mut a, LVT_TIMER, PERIODIC | 0x40);
        wt(&mut a, 7, TMICT, 12345);
        (0..50)
            .map(|k| {
                let t = k * 10_007;
                (rt(&mut a, t, TMCCT), fired(&mut a, t))
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}

#[test]
fn timer_interrupt_uses_lvt_vector_and_counts_illegal_vector_as_error() {
    let mut a = apic();
    w(&mut a, TDCR, DIV1);
    w(&mut a, LVT_TIMER, 0x08);
    wt(&mut a, 0, TMICT, 10);
    assert_eq!(a.poll(10).interrupt, None);
    assert_eq!(esr(&mut a), vlapic::regs::esr::RECEIVE_ILLEGAL_VECTOR);
}
