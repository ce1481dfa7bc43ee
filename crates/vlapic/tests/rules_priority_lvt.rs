//! Spec section 3 (priorities, acceptance, EOI) and section 4 (SVR, ESR,
//! LVT).

mod common;
use common::*;
use vlapic::regs::esr::{RECEIVE_ILLEGAL_VECTOR, SEND_ILLEGAL_VECTOR};
use vlapic::{ApicConfig, DeliveryMode, Fault, Interrupt, LocalApic, Lvt, Message};

// ---- Section 3 -------------------------------------------------------

#[test]
fn ppr_is_tpr_or_isrv_class() {
    let mut a = xapic(0);
    w(&mut a, TPR, 0x35);
    assert_eq!(r(&mut a, PPR), 0x35);
    self_ipi(&mut a, 0x72);
    assert_eq!(take(&mut a), Some(0x72));
    assert_eq!(r(&mut a, PPR), 0x70);
    w(&mut a, TPR, 0x7F);
    assert_eq!(r(&mut a, PPR), 0x7F);
}

#[test]
fn cr8_is_tpr_bits_7_4() {
    let mut a = xapic(0);
    w(&mut a, TPR, 0x9C);
    assert_eq!(a.cr8(), 9);
    a.set_cr8(3);
    assert_eq!(r(&mut a, TPR), 0x30);
}

#[test]
fn irr_vector_deliverable_only_if_class_above_ppr() {
    let mut a = xapic(0);
    w(&mut a, TPR, 0x50);
    self_ipi(&mut a, 0x5F);
    assert_eq!(a.poll(0).interrupt, None);
    self_ipi(&mut a, 0x60);
    assert_eq!(a.poll(0).interrupt, Some(0x60));
    w(&mut a, TPR, 0x4F);
    assert_eq!(take(&mut a), Some(0x60));
    assert_eq!(a.poll(0).interrupt, None); // 0x5F below in-service 0x60
    w(&mut a, EOI, 0);
    assert_eq!(take(&mut a), Some(0x5F));
}

#[test]
fn highest_vector_is_delivered_first() {
    let mut a = xapic(0);
    for v in [0x31u8, 0xE0, 0x80, 0x20] {
        self_ipi(&mut a, v);
    }
    let mut order = Vec::new();
    while let Some(v) = take(&mut a) {
        order.push(v);
        w(&mut a, EOI, 0);
    }
    assert_eq!(order, vec![0xE0, 0x80, 0x31, 0x20]);
}

#[test]
fn acknowledge_moves_irr_to_isr_and_raises_ppr() {
    let mut a = xapic(0);
    self_ipi(&mut a, 0x45);
    assert_eq!(a.acknowledge(), 0x45);
    assert_eq!(r(&mut a, IRR0 + 0x20), 0);
    assert_eq!(r(&mut a, ISR0 + 0x20), 1 << 5);
    assert_eq!(r(&mut a, PPR), 0x40);
}

#[test]
fn acknowledge_after_masking_gives_spurious_vector_and_no_isr() {
    let mut a = xapic(0);
    w(&mut a, SVR, 0x1EF);
    self_ipi(&mut a, 0x45);
    assert_eq!(a.poll(0).interrupt, Some(0x45));
    w(&mut a, TPR, 0x50); // raised between "pending" and INTA
    assert_eq!(a.acknowledge(), 0xEF);
    for n in 0..8 {
        assert_eq!(r(&mut a, ISR0 + 0x10 * n), 0);
    }
    assert_eq!(r(&mut a, IRR0 + 0x20), 1 << 5);
}

#[test]
fn nested_interrupts_eoi_clears_highest_isr_first() {
    let mut a = xapic(0);
    self_ipi(&mut a, 0x40);
    assert_eq!(take(&mut a), Some(0x40));
    self_ipi(&mut a, 0x90);
    assert_eq!(take(&mut a), Some(0x90));
    w(&mut a, EOI, 0);
    assert_eq!(r(&mut a, ISR0 + 0x40), 0);
    assert_eq!(r(&mut a, ISR0 + 0x20), 1);
    assert_eq!(r(&mut a, PPR), 0x40);
}

#[test]
fn eoi_with_empty_isr_changes_nothing() {
    let mut a = xapic(0);
    self_ipi(&mut a, 0x40);
    let before = a.save(0);
    assert_eq!(w(&mut a, EOI, 0), None);
    assert_eq!(a.save(0), before);
}

#[test]
fn level_triggered_eoi_is_broadcast_edge_is_not() {
    let mut a = xapic(0);
    a.accept(Interrupt::fixed_level(0x61));
    a.accept(Interrupt::fixed(0x51));
    assert_eq!(take(&mut a), Some(0x61));
    assert_eq!(w(&mut a, EOI, 0), Some(Message::Eoi { vector: 0x61 }));
    assert_eq!(take(&mut a), Some(0x51));
    assert_eq!(w(&mut a, EOI, 0), None);
}

#[test]
fn suppress_eoi_broadcast_only_when_supported() {
    let mut s = LocalApic::new(cfg(0).with_suppress_eoi_broadcast(true));
    w(&mut s, SVR, 0x11FF);
    assert_eq!(r(&mut s, SVR), 0x11FF);
    s.accept(Interrupt::fixed_level(0x61));
    assert_eq!(take(&mut s), Some(0x61));
    assert_eq!(w(&mut s, EOI, 0), None);
    assert!(s.interrupt_registers().isr.is_empty());
    // Without support bit 12 does not stick and EOIs are broadcast.
    let mut n = xapic(0);
    w(&mut n, SVR, 0x11FF);
    assert_eq!(r(&mut n, SVR), 0x1FF);
    n.accept(Interrupt::fixed_level(0x61));
    assert_eq!(take(&mut n), Some(0x61));
    assert_eq!(w(&mut n, EOI, 0), Some(Message::Eoi { vector: 0x61 }));
}

#[test]
fn x2apic_nonzero_eoi_raises_gp() {
    let mut a = x2apic(0);
    a.msr_write(0, 0x83F, 0x40).unwrap();
    assert_eq!(take(&mut a), Some(0x40));
    assert_eq!(a.msr_write(0, msr(EOI), 1), Err(Fault::Gp));
    assert!(a.interrupt_registers().isr.contains(0x40));
    assert_eq!(a.msr_write(0, msr(EOI), 0), Ok(None));
    assert!(a.interrupt_registers().isr.is_empty());
}

#[test]
fn tmr_follows_trigger_mode_of_each_accepted_message() {
    let mut a = xapic(0);
    a.accept(Interrupt::fixed_level(0x70));
    assert_eq!(r(&mut a, TMR0 + 0x30), 1 << 16);
    assert_eq!(take(&mut a), Some(0x70));
    w(&mut a, EOI, 0);
    a.accept(Interrupt::fixed(0x70));
    assert_eq!(r(&mut a, TMR0 + 0x30), 0);
}

#[test]
fn illegal_vector_send_sets_esr_bit_5_and_sends_nothing() {
    let mut a = xapic(0);
    w(&mut a, ICR_HI, 0x0100_0000);
    assert_eq!(w(&mut a, ICR_LO, 0x0F), None);
    assert_eq!(esr(&mut a), SEND_ILLEGAL_VECTOR);
    // NMI ignores the vector field: vector 0 is fine.
    assert!(matches!(w(&mut a, ICR_LO, 0x400), Some(Message::Ipi(_))));
    assert_eq!(esr(&mut a), 0);
}

#[test]
fn illegal_vector_receive_sets_esr_bit_6_and_is_not_latched() {
    let mut a = xapic(0);
    a.accept(Interrupt::fixed(3));
    assert!(a.interrupt_registers().irr.is_empty());
    assert_eq!(esr(&mut a), RECEIVE_ILLEGAL_VECTOR);
}

#[test]
fn x2apic_self_ipi_with_illegal_vector_is_a_send_error() {
    // SDM 11.5.3: "a write to the ICR ... or to SELF IPI register (x2APIC
    // mode only) with an illegal vector" sets Send Illegal Vector.
    let mut x = x2apic(0);
    x.msr_write(0, 0x83F, 0x0E).unwrap();
    assert!(x.interrupt_registers().irr.is_empty());
    x.msr_write(0, msr(ESR), 0).unwrap();
    assert_eq!(x.msr_read(0, msr(ESR)), Ok(SEND_ILLEGAL_VECTOR as u64));
}

#[test]
fn vectors_16_to_31_are_legal() {
    let mut a = xapic(0);
    for v in [16u8, 31] {
        self_ipi(&mut a, v);
        assert_eq!(take(&mut a), Some(v));
        w(&mut a, EOI, 0);
    }
    assert_eq!(esr(&mut a), 0);
}

// ---- Section 4 -------------------------------------------------------

#[test]
fn svr_reset_value_and_writable_bits() {
    let mut a = LocalApic::new(cfg(0));
    assert_eq!(r(&mut a, SVR), 0xFF);
    w(&mut a, SVR, 0xFFFF_FFFF);
    assert_eq!(r(&mut a, SVR), 0x3FF); // vector, enable, focus; no 10-11, no 12
}

#[test]
fn software_disable_masks_every_lvt_and_keeps_them_masked() {
    let mut a = xapic(0);
    for off in [
        LVT_TIMER,
        LVT_THERMAL,
        LVT_PERF,
        LVT_LINT0,
        LVT_LINT1,
        LVT_ERROR,
    ] {
        w(&mut a, off, 0x40);
    }
    w(&mut a, SVR, 0xFF);
    for off in [
        LVT_TIMER,
        LVT_THERMAL,
        LVT_PERF,
        LVT_LINT0,
        LVT_LINT1,
        LVT_ERROR,
    ] {
        assert_eq!(r(&mut a, off) & 0x10000, 0x10000, "{off:#x}");
        w(&mut a, off, 0x41);
        assert_eq!(r(&mut a, off), 0x10041, "write while disabled {off:#x}");
    }
    // Re-enabling does not unmask.
    w(&mut a, SVR, 0x1FF);
    assert_eq!(r(&mut a, LVT_TIMER), 0x10041);
}

#[test]
fn software_disabled_drops_fixed_but_accepts_nmi_smi_init_sipi() {
    let mut a = LocalApic::new(cfg(1));
    a.accept(Interrupt::fixed(0x40));
    a.accept(Interrupt {
        delivery_mode: DeliveryMode::LowestPriority,
        ..Interrupt::fixed(0x41)
    });
    assert!(a.interrupt_registers().irr.is_empty());
    a.accept(Interrupt::of_mode(DeliveryMode::Nmi));
    a.accept(Interrupt::of_mode(DeliveryMode::Smi));
    let w0 = a.poll(0);
    assert!(w0.nmi && w0.smi);
    a.accept(Interrupt::of_mode(DeliveryMode::Init));
    a.accept(Interrupt::startup(0x9A));
    let w1 = a.poll(0);
    assert!(w1.init);
    assert_eq!(w1.sipi, Some(0x9A));
    assert_eq!(a.stats().dropped, 2);
}

#[test]
fn esr_is_a_write_then_read_latch() {
    let mut a = xapic(0);
    a.accept(Interrupt::fixed(1));
    assert_eq!(
        r(&mut a, ESR),
        0,
        "errors stay pending until ESR is written"
    );
    w(&mut a, ESR, 0);
    assert_eq!(r(&mut a, ESR), RECEIVE_ILLEGAL_VECTOR);
    w(&mut a, ESR, 0);
    assert_eq!(r(&mut a, ESR), 0, "the write cleared the pending errors");
}

#[test]
fn x2apic_esr_accepts_only_zero() {
    let mut a = x2apic(0);
    assert_eq!(a.msr_write(0, msr(ESR), 1), Err(Fault::Gp));
    assert_eq!(a.msr_write(0, msr(ESR), 0), Ok(None));
}

#[test]
fn new_error_fires_unmasked_lvt_error() {
    let mut a = xapic(0);
    w(&mut a, LVT_ERROR, 0xFE);
    w(&mut a, 0x060, 0); // illegal register
    assert_eq!(take(&mut a), Some(0xFE));
    // Masked: no interrupt.
    w(&mut a, LVT_ERROR, 0x100FE);
    a.accept(Interrupt::fixed(2));
    assert_eq!(a.poll(0).interrupt, None);
}

#[test]
fn illegal_lvt_error_vector_does_not_recurse() {
    let mut a = xapic(0);
    w(&mut a, LVT_ERROR, 0x05);
    a.accept(Interrupt::fixed(2));
    assert!(a.interrupt_registers().irr.is_empty());
    assert_eq!(esr(&mut a), RECEIVE_ILLEGAL_VECTOR);
}

#[test]
fn lvt_write_masks_per_entry() {
    let mut a = LocalApic::new(cfg(0).with_cmci(true));
    w(&mut a, SVR, 0x1FF);
    let all = 0xFFFF_FFFF;
    let cases = [
        (LVT_TIMER, 0x0007_00FF),
        (LVT_THERMAL, 0x0001_07FF),
        (LVT_PERF, 0x0001_07FF),
        (LVT_CMCI, 0x0001_07FF),
        (LVT_LINT0, 0x0001_A7FF),
        (LVT_LINT1, 0x0001_A7FF),
        (LVT_ERROR, 0x0001_00FF),
    ];
    for (off, mask) in cases {
        w(&mut a, off, all);
        assert_eq!(r(&mut a, off), mask, "{off:#x}");
        w(&mut a, off, 0x10000);
    }
    // Without TSC-deadline, timer bit 18 is not writable.
    let mut n = LocalApic::new(cfg(0).with_tsc_deadline(false));
    w(&mut n, SVR, 0x1FF);
    w(&mut n, LVT_TIMER, all);
    assert_eq!(r(&mut n, LVT_TIMER), 0x0003_00FF);
}

#[test]
fn lint_edge_entry_delivers_on_rising_edge_with_polarity() {
    let mut a = xapic(0);
    w(&mut a, LVT_LINT1, 0x0000_0042);
    a.set_lint(1, true);
    assert_eq!(take(&mut a), Some(0x42));
    w(&mut a, EOI, 0);
    a.set_lint(1, true); // still high: no new edge
    assert_eq!(take(&mut a), None);
    a.set_lint(1, false);
    assert_eq!(take(&mut a), None);
    // Active low: the falling edge delivers.
    w(&mut a, LVT_LINT1, 0x0000_2043);
    a.set_lint(1, true);
    a.set_lint(1, false);
    assert_eq!(take(&mut a), Some(0x43));
}

#[test]
fn lint_level_fixed_sets_remote_irr_until_eoi_and_redelivers() {
    let mut a = xapic(0);
    w(&mut a, LVT_LINT0, 0x0000_8044);
    a.set_lint(0, true);
    assert_eq!(r(&mut a, LVT_LINT0) & (1 << 14), 1 << 14);
    assert_eq!(take(&mut a), Some(0x44));
    a.set_lint(0, true);
    assert_eq!(a.poll(0).interrupt, None, "remote IRR blocks redelivery");
    w(&mut a, EOI, 0);
    assert_eq!(take(&mut a), Some(0x44), "still asserted: delivered again");
    a.set_lint(0, false);
    w(&mut a, EOI, 0);
    assert_eq!(
        r(&mut a, LVT_LINT0) & (1 << 14),
        0,
        "EOI cleared remote IRR"
    );
    assert_eq!(a.poll(0).interrupt, None);
}

#[test]
fn lint0_extint_pending_while_asserted() {
    let mut a = xapic(0);
    w(&mut a, LVT_LINT0, 0x700);
    a.set_lint(0, true);
    assert!(a.poll(0).extint);
    a.set_lint(0, false);
    assert!(!a.poll(0).extint);
    w(&mut a, LVT_LINT0, 0x10700);
    a.set_lint(0, true);
    assert!(!a.poll(0).extint, "masked");
}

#[test]
fn lint_nmi_entry_delivers_nmi() {
    let mut a = xapic(0);
    w(&mut a, LVT_LINT1, 0x400);
    a.set_lint(1, true);
    assert!(a.take_nmi());
    assert!(!a.take_nmi());
}

#[test]
fn hardware_disabled_lint_pins_act_as_intr_and_nmi() {
    let mut a = xapic(0);
    a.msr_write(0, MSR_APIC_BASE, 0xFEE0_0000).unwrap();
    a.set_lint(0, true);
    assert!(a.poll(0).extint);
    a.set_lint(1, true);
    assert!(a.poll(0).nmi);
}

#[test]
fn perfmon_interrupt_masks_its_lvt_entry() {
    let mut a = xapic(0);
    w(&mut a, LVT_PERF, 0x4D);
    a.fire_lvt(Lvt::Perfmon);
    assert_eq!(take(&mut a), Some(0x4D));
    assert_eq!(r(&mut a, LVT_PERF), 0x1004D);
    w(&mut a, EOI, 0);
    a.fire_lvt(Lvt::Perfmon);
    assert_eq!(a.poll(0).interrupt, None);
}

#[test]
fn thermal_and_cmci_deliver_per_entry() {
    let mut a = LocalApic::new(ApicConfig::new(0).with_cmci(true));
    w(&mut a, SVR, 0x1FF);
    w(&mut a, LVT_THERMAL, 0x200); // SMI
    a.fire_lvt(Lvt::Thermal);
    assert!(a.take_smi());
    w(&mut a, LVT_CMCI, 0x5B);
    a.fire_lvt(Lvt::Cmci);
    assert_eq!(take(&mut a), Some(0x5B));
}
