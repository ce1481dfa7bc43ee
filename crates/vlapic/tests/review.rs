//! Adversarial review (SDM Vol. 3 APIC chapter, /work/shared/spec/lapic-behaviour.md):
//! one minimal reproducer per finding, named after the rule it checks.
//! Tests that document a deliberate difference or a judgment call left
//! open are `#[ignore]`d with the reason.

mod common;
use common::*;
use vlapic::{DeliveryMode, Interrupt};

/// Spec 2: "Hardware disable resets the APIC to its INIT state" - the
/// APIC's registers. A pending NMI is the processor's (SDM 11.4.3: with
/// IA32_APIC_BASE[11] = 0 the processor still takes NMIs, LINT1 is NMI),
/// so clearing IA32_APIC_BASE.EN must not lose an NMI accepted before it
/// (e.g. one held while the guest is in its NMI handler).
#[test]
fn hardware_disable_keeps_pending_nmi_smi_init() {
    let mut a = xapic(1);
    a.accept(Interrupt::of_mode(DeliveryMode::Nmi));
    a.accept(Interrupt::of_mode(DeliveryMode::Smi));
    assert!(a.poll(0).nmi && a.poll(0).smi);
    a.msr_write(0, MSR_APIC_BASE, 0xFEE0_0000).unwrap();
    let work = a.poll(0);
    assert!(work.nmi, "pending NMI lost by APIC hardware disable");
    assert!(work.smi, "pending SMI lost by APIC hardware disable");
    assert!(a.take_nmi());
    // An INIT already accepted (the APIC did its reset, the vCPU has not
    // yet) must still reach the vCPU.
    let mut b = xapic(1);
    b.accept(Interrupt::of_mode(DeliveryMode::Init));
    b.msr_write(0, MSR_APIC_BASE, 0xFEE0_0000).unwrap();
    assert!(b.poll(0).init, "pending INIT lost by APIC hardware disable");
    // The state stays restorable.
    let s = a.save(0);
    assert_eq!(a.validate(&s), Ok(()));
}
