//! Spec section 2 (IA32_APIC_BASE and modes) and section 7 (reset values).

mod common;
use common::*;
use vlapic::{ApicConfig, ApicMode, DeliveryMode, Fault, Interrupt, LocalApic, Message, RunState};

const EN: u64 = 1 << 11;
const EXTD: u64 = 1 << 10;
const BSP: u64 = 1 << 8;
const BASE: u64 = 0xFEE0_0000;

#[test]
fn apic_base_selects_disabled_xapic_x2apic_and_rejects_extd_without_en() {
    let mut a = xapic(1);
    assert_eq!(a.mode(), ApicMode::XApic);
    a.msr_write(0, MSR_APIC_BASE, BASE | EN | EXTD).unwrap();
    assert_eq!(a.mode(), ApicMode::X2Apic);
    assert_eq!(a.msr_write(0, MSR_APIC_BASE, BASE | EXTD), Err(Fault::Gp));
    a.msr_write(0, MSR_APIC_BASE, BASE).unwrap();
    assert_eq!(a.mode(), ApicMode::Disabled);
}

#[test]
fn legal_transitions_disabled_to_xapic_to_x2apic_to_disabled() {
    let mut a = xapic(1);
    a.msr_write(0, MSR_APIC_BASE, BASE).unwrap();
    a.msr_write(0, MSR_APIC_BASE, BASE | EN).unwrap();
    a.msr_write(0, MSR_APIC_BASE, BASE | EN | EXTD).unwrap();
    a.msr_write(0, MSR_APIC_BASE, BASE | EN | EXTD).unwrap(); // same mode
    a.msr_write(0, MSR_APIC_BASE, BASE).unwrap();
    assert_eq!(a.mode(), ApicMode::Disabled);
    a.msr_write(0, MSR_APIC_BASE, BASE | EN).unwrap();
    a.msr_write(0, MSR_APIC_BASE, BASE).unwrap();
    assert_eq!(a.mode(), ApicMode::Disabled);
}

#[test]
fn x2apic_to_xapic_and_disabled_to_x2apic_raise_gp() {
    let mut a = x2apic(1);
    assert_eq!(a.msr_write(0, MSR_APIC_BASE, BASE | EN), Err(Fault::Gp));
    assert_eq!(a.mode(), ApicMode::X2Apic);
    a.msr_write(0, MSR_APIC_BASE, BASE).unwrap();
    assert_eq!(
        a.msr_write(0, MSR_APIC_BASE, BASE | EN | EXTD),
        Err(Fault::Gp)
    );
    assert_eq!(a.mode(), ApicMode::Disabled);
}

#[test]
fn apic_base_reserved_bits_raise_gp() {
    let mut a = xapic(1);
    for bit in (0..8).chain([9, 46, 63]) {
        assert_eq!(
            a.msr_write(0, MSR_APIC_BASE, BASE | EN | (1 << bit)),
            Err(Fault::Gp),
            "bit {bit}"
        );
    }
    let mut n = LocalApic::new(cfg(1).with_x2apic(false));
    assert_eq!(
        n.msr_write(0, MSR_APIC_BASE, BASE | EN | EXTD),
        Err(Fault::Gp)
    );
    assert_eq!(n.mode(), ApicMode::XApic);
}

#[test]
fn bsp_bit_set_on_bsp_only_and_guest_cannot_change_it() {
    let mut bsp = LocalApic::new(cfg(0));
    let mut ap = LocalApic::new(cfg(1));
    assert_eq!(bsp.msr_read(0, MSR_APIC_BASE), Ok(BASE | EN | BSP));
    assert_eq!(ap.msr_read(0, MSR_APIC_BASE), Ok(BASE | EN));
    bsp.msr_write(0, MSR_APIC_BASE, BASE | EN).unwrap();
    ap.msr_write(0, MSR_APIC_BASE, BASE | EN | BSP).unwrap();
    assert_eq!(bsp.msr_read(0, MSR_APIC_BASE), Ok(BASE | EN | BSP));
    assert_eq!(ap.msr_read(0, MSR_APIC_BASE), Ok(BASE | EN));
}

#[test]
fn hardware_disable_resets_to_init_state() {
    let mut a = xapic(1);
    w(&mut a, TPR, 0x20);
    w(&mut a, LVT_TIMER, 0x30);
    w(&mut a, TMICT, 1000);
    self_ipi(&mut a, 0x50);
    a.msr_write(0, MSR_APIC_BASE, BASE).unwrap();
    assert_eq!(a.poll(0).interrupt, None);
    a.accept(Interrupt::fixed(0x60)); // ignored while disabled
    a.msr_write(0, MSR_APIC_BASE, BASE | EN).unwrap();
    assert_eq!(r(&mut a, TPR), 0);
    assert_eq!(r(&mut a, LVT_TIMER), 0x10000);
    assert_eq!(r(&mut a, TMICT), 0);
    assert_eq!(r(&mut a, SVR), 0xFF);
    assert_eq!(r(&mut a, IRR0 + 0x20), 0);
    assert_eq!(r(&mut a, IRR0 + 0x30), 0);
}

#[test]
fn reenable_starts_in_xapic_with_initial_id() {
    let mut a = xapic(3);
    w(&mut a, ID, 0x0700_0000);
    a.msr_write(0, MSR_APIC_BASE, BASE | EN | EXTD).unwrap();
    a.msr_write(0, MSR_APIC_BASE, BASE).unwrap();
    a.msr_write(0, MSR_APIC_BASE, BASE | EN).unwrap();
    assert_eq!(a.mode(), ApicMode::XApic);
    assert_eq!(r(&mut a, ID), 0x0300_0000);
    assert_eq!(r(&mut a, LDR), 0);
}

#[test]
fn entering_x2apic_uses_32_bit_id_and_derives_ldr() {
    let mut a = LocalApic::new(cfg(0x123));
    w(&mut a, ID, 0x0500_0000);
    w(&mut a, LDR, 0x0100_0000);
    a.msr_write(0, MSR_APIC_BASE, BASE | EN | EXTD).unwrap();
    assert_eq!(a.msr_read(0, msr(ID)), Ok(0x123));
    assert_eq!(a.msr_read(0, msr(LDR)), Ok((0x12 << 16) | (1 << 3)));
}

#[test]
fn host_write_bypasses_transition_checks() {
    let mut a = x2apic(1);
    assert_eq!(a.msr_write(0, MSR_APIC_BASE, BASE | EN), Err(Fault::Gp));
    a.host_set_apic_base(BASE | EN).unwrap();
    assert_eq!(a.mode(), ApicMode::XApic);
    a.host_set_apic_base(BASE).unwrap();
    a.host_set_apic_base(BASE | EN | EXTD).unwrap();
    assert_eq!(a.mode(), ApicMode::X2Apic);
    assert_eq!(a.host_set_apic_base(BASE | EXTD), Err(Fault::Gp));
}

#[test]
fn moving_the_xapic_base_moves_the_window() {
    let mut a = xapic(1);
    let m = a.msr_write(0, MSR_APIC_BASE, 0xFED0_0000 | EN).unwrap();
    assert_eq!(
        m,
        Some(Message::ApicBaseChanged {
            apic_base: 0xFED0_0000 | EN,
            mode: ApicMode::XApic
        })
    );
    assert_eq!(a.mmio_base(), Some(0xFED0_0000));
    // Same value again: nothing to remap.
    assert_eq!(a.msr_write(0, MSR_APIC_BASE, 0xFED0_0000 | EN), Ok(None));
}

fn check_power_on_values(a: &mut LocalApic, id: u32, bsp: bool) {
    assert_eq!(
        a.msr_read(0, MSR_APIC_BASE),
        Ok(BASE | EN | if bsp { BSP } else { 0 })
    );
    assert_eq!(r(a, ID), id << 24);
    for off in [TPR, PPR, ICR_LO, ICR_HI, TMICT, TMCCT, TDCR, LDR, ESR] {
        assert_eq!(r(a, off), 0, "{off:#x}");
    }
    for n in 0..8 {
        assert_eq!(r(a, IRR0 + 0x10 * n), 0);
        assert_eq!(r(a, ISR0 + 0x10 * n), 0);
        assert_eq!(r(a, TMR0 + 0x10 * n), 0);
    }
    assert_eq!(r(a, DFR), 0xFFFF_FFFF);
    for off in [
        LVT_TIMER,
        LVT_THERMAL,
        LVT_PERF,
        LVT_LINT0,
        LVT_LINT1,
        LVT_ERROR,
    ] {
        assert_eq!(r(a, off), 0x0001_0000, "{off:#x}");
    }
    assert_eq!(r(a, SVR), 0xFF);
}

#[test]
fn power_on_reset_values_bsp_and_ap() {
    let mut bsp = LocalApic::new(cfg(0));
    check_power_on_values(&mut bsp, 0, true);
    assert_eq!(bsp.run_state(), RunState::Running);
    let mut ap = LocalApic::new(cfg(2));
    check_power_on_values(&mut ap, 2, false);
    assert_eq!(ap.run_state(), RunState::WaitForSipi);
    // reset() returns there from anywhere.
    let mut x = x2apic(0);
    w(&mut x, TPR, 0x10);
    x.reset();
    check_power_on_values(&mut x, 0, true);
}

#[test]
fn init_resets_registers_but_keeps_base_mode_and_id() {
    let mut a = LocalApic::new(ApicConfig::new(1).with_min_periodic_ns(0));
    a.msr_write(0, MSR_APIC_BASE, 0xFED0_0000 | EN).unwrap();
    a.mmio_write(0, ID, &0x0600_0000u32.to_le_bytes());
    a.mmio_write(0, SVR, &0x1FFu32.to_le_bytes());
    a.mmio_write(0, TPR, &0x30u32.to_le_bytes());
    a.mmio_write(0, LDR, &0x0100_0000u32.to_le_bytes());
    a.mmio_write(0, DFR, &0x0FFF_FFFFu32.to_le_bytes());
    a.accept(Interrupt::of_mode(DeliveryMode::Init));
    assert_eq!(a.msr_read(0, MSR_APIC_BASE), Ok(0xFED0_0000 | EN));
    assert_eq!(r(&mut a, ID), 0x0600_0000);
    assert_eq!(r(&mut a, TPR), 0);
    assert_eq!(r(&mut a, LDR), 0);
    assert_eq!(r(&mut a, DFR), 0xFFFF_FFFF);
    assert_eq!(r(&mut a, SVR), 0xFF);
    assert!(a.take_init());
    assert_eq!(a.run_state(), RunState::WaitForSipi);
}
