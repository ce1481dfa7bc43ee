//! Spec section 6 (IPIs and destinations, on the APIC side; routing across
//! many vCPUs is the fabric's) and section 8 (save/restore).

mod common;
use common::*;
use vlapic::{
    ApicConfig, ApicMode, DeliveryMode, Destination, DestinationMode, Interrupt, Ipi, LocalApic,
    Message, RunState, Shorthand, StateError, TriggerMode,
};

fn sent(m: Option<Message>) -> Ipi {
    match m {
        Some(Message::Ipi(ipi)) => ipi,
        other => panic!("expected an IPI, got {other:?}"),
    }
}

#[test]
fn icr_write_decodes_every_field() {
    let mut a = xapic(2);
    w(&mut a, ICR_HI, 0x0F00_0000);
    // vector 0x31, lowest priority, logical, assert, level, no shorthand.
    let ipi = sent(w(
        &mut a,
        ICR_LO,
        0x31 | (1 << 8) | (1 << 11) | (1 << 14) | (1 << 15),
    ));
    assert_eq!(ipi.source_id, 2);
    assert_eq!(ipi.interrupt.vector, 0x31);
    assert_eq!(ipi.interrupt.delivery_mode, DeliveryMode::LowestPriority);
    assert_eq!(ipi.interrupt.trigger, TriggerMode::Level);
    assert!(ipi.interrupt.assert);
    assert_eq!(ipi.destination.mode, DestinationMode::Logical);
    assert_eq!(ipi.destination.shorthand, Shorthand::None);
    assert_eq!(ipi.destination.id, 0x0F);
    assert!(!ipi.destination.x2apic_format);
    for (sh, want) in [
        (2u32, Shorthand::AllIncludingSelf),
        (3, Shorthand::AllExcludingSelf),
    ] {
        let ipi = sent(w(&mut a, ICR_LO, 0x40 | (sh << 18)));
        assert_eq!(ipi.destination.shorthand, want);
    }
}

#[test]
fn self_shorthand_is_delivered_locally() {
    let mut a = xapic(0);
    assert_eq!(self_ipi(&mut a, 0x66), None);
    assert_eq!(take(&mut a), Some(0x66));
    // NMI to self (Linux uses it).
    assert_eq!(w(&mut a, ICR_LO, 0x0004_0400), None);
    assert!(a.take_nmi());
}

#[test]
fn shorthands_select_sender_and_others() {
    let mut me = xapic(0);
    let mut other = xapic(1);
    let all_incl = sent(w(&mut me, ICR_LO, 0x0008_0041));
    assert!(me.deliver_ipi(&all_incl, true));
    assert!(other.deliver_ipi(&all_incl, false));
    let all_excl = sent(w(&mut me, ICR_LO, 0x000C_0042));
    assert!(!me.deliver_ipi(&all_excl, true));
    assert!(other.deliver_ipi(&all_excl, false));
    assert_eq!(take(&mut me), Some(0x41));
    assert_eq!(take(&mut other), Some(0x42));
}

#[test]
fn physical_destinations_and_broadcast_per_mode() {
    let mut x = xapic(3);
    let mut x2 = x2apic(0x300);
    let ipi = |d: Destination| Ipi {
        source_id: 0,
        destination: d,
        interrupt: Interrupt::fixed(0x50),
    };
    assert!(x.deliver_ipi(&ipi(Destination::physical(3)), false));
    assert!(!x.deliver_ipi(&ipi(Destination::physical(4)), false));
    assert!(x.deliver_ipi(&ipi(Destination::physical(0xFF)), false));
    assert!(x2.deliver_ipi(&ipi(Destination::physical_x2apic(0x300)), false));
    assert!(!x2.deliver_ipi(&ipi(Destination::physical_x2apic(0x00)), false));
    assert!(x2.deliver_ipi(&ipi(Destination::physical_x2apic(0xFFFF_FFFF)), false));
}

#[test]
fn aliased_xapic_ids_all_receive() {
    let mut a = xapic(1);
    let mut b = xapic(2);
    w(&mut b, ID, 0x0100_0000);
    let ipi = sent({
        let mut s = xapic(0);
        w(&mut s, ICR_HI, 0x0100_0000);
        w(&mut s, ICR_LO, 0x55)
    });
    assert!(a.deliver_ipi(&ipi, false));
    assert!(b.deliver_ipi(&ipi, false));
}

#[test]
fn logical_flat_and_cluster_through_registers() {
    let mut a = xapic(1);
    w(&mut a, LDR, 0x0200_0000);
    let flat = |dest: u32| Ipi {
        source_id: 0,
        destination: Destination::logical(dest, false),
        interrupt: Interrupt::fixed(0x50),
    };
    assert!(a.deliver_ipi(&flat(0x03), false));
    assert!(!a.deliver_ipi(&flat(0x05), false));
    w(&mut a, DFR, 0x0FFF_FFFF); // cluster model
    w(&mut a, LDR, 0x3200_0000); // cluster 3, member bit 1
    assert!(a.deliver_ipi(&flat(0x32), false));
    assert!(!a.deliver_ipi(&flat(0x22), false));
    assert!(a.deliver_ipi(&flat(0xF2), false));
    assert!(!a.deliver_ipi(&flat(0x31), false));
}

#[test]
fn hardware_disabled_apic_is_never_a_target() {
    let mut a = xapic(1);
    a.msr_write(0, MSR_APIC_BASE, 0xFEE0_0000).unwrap();
    let b = Ipi {
        source_id: 0,
        destination: Destination {
            shorthand: Shorthand::AllExcludingSelf,
            ..Destination::physical(0xFF)
        },
        interrupt: Interrupt::of_mode(DeliveryMode::Nmi),
    };
    assert!(!a.deliver_ipi(&b, false));
    assert!(!a.take_nmi());
}

#[test]
fn init_assert_resets_and_ap_waits_for_sipi() {
    let mut ap = LocalApic::new(cfg(1));
    ap.accept(Interrupt::startup(0x10)); // no INIT yet... AP starts waiting
    assert_eq!(ap.take_sipi(), Some(0x10));
    assert_eq!(ap.run_state(), RunState::Running);
    w(&mut ap, SVR, 0x1FF);
    w(&mut ap, TPR, 0x40);
    ap.accept(Interrupt::of_mode(DeliveryMode::Init));
    assert!(ap.poll(0).init);
    assert!(ap.poll(0).wait_for_sipi);
    assert_eq!(r(&mut ap, TPR), 0);
    assert_eq!(r(&mut ap, SVR), 0xFF);
    // The BSP runs again after INIT (no wait-for-SIPI).
    let mut bsp = xapic(0);
    bsp.accept(Interrupt::of_mode(DeliveryMode::Init));
    assert!(bsp.take_init());
    assert_eq!(bsp.run_state(), RunState::Running);
}

#[test]
fn init_level_deassert_does_not_reset() {
    let mut s = xapic(0);
    // INIT, level de-assert (level=0, trigger=level), all excluding self.
    assert_eq!(w(&mut s, ICR_LO, 0x000C_8500), None);
    let mut ap = xapic(1);
    w(&mut ap, TPR, 0x40);
    ap.accept(Interrupt {
        vector: 0,
        delivery_mode: DeliveryMode::Init,
        trigger: TriggerMode::Level,
        assert: false,
    });
    assert!(!ap.take_init());
    assert_eq!(r(&mut ap, TPR), 0x40);
}

#[test]
fn startup_only_in_wait_for_sipi_and_later_sipis_ignored() {
    let mut ap = xapic(1);
    ap.accept(Interrupt::startup(0x12));
    let mut ap = LocalApic::new(cfg(1));
    ap.accept(Interrupt::of_mode(DeliveryMode::Init));
    assert!(ap.take_init());
    ap.accept(Interrupt::startup(0x9F));
    ap.accept(Interrupt::startup(0x77));
    assert_eq!(ap.take_sipi(), Some(0x9F));
    assert_eq!(ap.take_sipi(), None);
    assert_eq!(ap.stats().sipi_ignored, 1);
    let mut running = xapic(2);
    running.accept(Interrupt::of_mode(DeliveryMode::Init));
    running.accept(Interrupt::startup(0x20));
    running.take_sipi();
    running.accept(Interrupt::startup(0x30));
    assert_eq!(running.take_sipi(), None);
}

#[test]
fn nmi_smi_init_sipi_ignore_vector_and_tpr() {
    let mut a = xapic(0);
    w(&mut a, TPR, 0xFF);
    a.accept(Interrupt {
        vector: 0x02,
        ..Interrupt::of_mode(DeliveryMode::Nmi)
    });
    a.accept(Interrupt {
        vector: 0x00,
        ..Interrupt::of_mode(DeliveryMode::Smi)
    });
    let work = a.poll(0);
    assert!(work.nmi && work.smi);
    assert_eq!(
        esr(&mut a),
        0,
        "vector 2/0 is not an illegal-vector error here"
    );
}

#[test]
fn sipi_via_icr_carries_vector() {
    let mut bsp = xapic(0);
    w(&mut bsp, ICR_HI, 0x0100_0000);
    let init = sent(w(&mut bsp, ICR_LO, 0x0000_4500));
    let sipi = sent(w(&mut bsp, ICR_LO, 0x0000_4608));
    let mut ap = LocalApic::new(cfg(1));
    assert!(ap.deliver_ipi(&init, false));
    assert!(ap.deliver_ipi(&sipi, false));
    let work = ap.poll(0);
    assert!(work.init);
    assert_eq!(work.sipi, Some(0x08));
}

// ---- Section 8: save/restore --------------------------------------------

fn busy_apic() -> LocalApic {
    let mut a = LocalApic::new(
        ApicConfig::new(5)
            .with_cmci(true)
            .with_suppress_eoi_broadcast(true)
            .with_min_periodic_ns(0),
    );
    w(&mut a, SVR, 0x11FF);
    w(&mut a, TPR, 0x20);
    w(&mut a, LDR, 0x0800_0000);
    w(&mut a, LVT_LINT0, 0x8035);
    a.set_lint(0, true);
    a.accept(Interrupt::fixed_level(0x90));
    a.accept(Interrupt::fixed(0x61));
    assert_eq!(take(&mut a), Some(0x90));
    a.accept(Interrupt::fixed(4)); // pending ESR
    w(&mut a, TDCR, 0b0001);
    w(&mut a, LVT_TIMER, 0x20000 | 0x44);
    wt(&mut a, 0, TMICT, 1000);
    a.accept(Interrupt::of_mode(DeliveryMode::Nmi));
    a
}

#[test]
fn restore_mid_count_resumes_remainder_not_a_full_period() {
    let a = busy_apic();
    let saved = a.save(1500); // 375 of 1000 ticks at /4
    let mut b = LocalApic::new(
        ApicConfig::new(5)
            .with_cmci(true)
            .with_suppress_eoi_broadcast(true)
            .with_min_periodic_ns(0),
    );
    b.restore(1_000_000, &saved).unwrap();
    assert_eq!(rt(&mut b, 1_000_000, TMCCT), 625);
    assert_eq!(b.next_timer_deadline(), Some(1_000_000 + 625 * 4));
}

#[test]
fn save_restore_keeps_hidden_state() {
    let a = busy_apic();
    let saved = a.save(100);
    assert_ne!(saved.esr_pending, 0);
    let mut b = LocalApic::new(
        ApicConfig::new(0)
            .with_cmci(true)
            .with_suppress_eoi_broadcast(true),
    );
    b.restore(100, &saved).unwrap();
    assert_eq!(b.save(100), saved);
    assert_eq!(b.id(), 5);
    assert!(b.take_nmi());
    assert_eq!(esr(&mut b), vlapic::regs::esr::RECEIVE_ILLEGAL_VECTOR);
    // SVR bit 12 (suppress EOI broadcast) came back too: no broadcast.
    assert_eq!(w(&mut b, EOI, 0), None);
    assert_eq!(take(&mut b), Some(0x61));
}

#[test]
fn restore_rejects_inconsistent_state_and_changes_nothing() {
    let a = busy_apic();
    let good = a.save(0);
    let mut b = LocalApic::new(
        ApicConfig::new(5)
            .with_cmci(true)
            .with_suppress_eoi_broadcast(true),
    );
    let before = b.save(0);
    type Case = (vlapic::ApicState, fn(&StateError) -> bool);
    let cases: Vec<Case> = vec![
        (
            {
                let mut s = good;
                s.version = 99;
                s
            },
            |e| matches!(e, StateError::Version(99)),
        ),
        (
            {
                let mut s = good;
                s.apic_base = 0xFEE0_0400;
                s
            },
            |e| matches!(e, StateError::ApicBase(_)),
        ),
        (
            {
                let mut s = good;
                s.apic_base |= 1;
                s
            },
            |e| matches!(e, StateError::ApicBase(_)),
        ),
        (
            {
                let mut s = good;
                s.ldr = 0x0800_0001;
                s
            },
            |e| matches!(e, StateError::Ldr(_)),
        ),
        (
            {
                let mut s = good;
                s.dfr = 0;
                s
            },
            |e| matches!(e, StateError::Dfr(_)),
        ),
        (
            {
                let mut s = good;
                s.svr = 0x4FF;
                s
            },
            |e| matches!(e, StateError::Svr(_)),
        ),
        (
            {
                let mut s = good;
                s.irr.insert(3);
                s
            },
            |e| matches!(e, StateError::IllegalVector),
        ),
        (
            {
                let mut s = good;
                s.esr = 0x100;
                s
            },
            |e| matches!(e, StateError::Esr(_)),
        ),
        (
            {
                let mut s = good;
                s.lvt[6] = 0x700;
                s
            },
            |e| matches!(e, StateError::Lvt(..)),
        ),
        (
            {
                let mut s = good;
                s.icr = 1 << 12;
                s
            },
            |e| matches!(e, StateError::Icr(_)),
        ),
        (
            {
                let mut s = good;
                s.timer_divide = 4;
                s
            },
            |e| matches!(e, StateError::TimerDivide(_)),
        ),
        (
            {
                let mut s = good;
                s.timer_running = true;
                s.timer_initial_count = 0;
                s
            },
            |e| matches!(e, StateError::Timer),
        ),
        (
            {
                let mut s = good;
                s.tsc_deadline = 5;
                s
            },
            |e| matches!(e, StateError::Timer),
        ),
        (
            {
                let mut s = good;
                s.run_state = RunState::WaitForSipi;
                s.pending_sipi = Some(1);
                s
            },
            |e| matches!(e, StateError::RunState),
        ),
    ];
    for (i, (state, check)) in cases.iter().enumerate() {
        let err = b
            .restore(0, state)
            .expect_err(&format!("case {i} accepted"));
        assert!(check(&err), "case {i}: {err}");
        assert_eq!(b.save(0), before, "case {i} changed the APIC");
    }
    let mut no_x2 = LocalApic::new(ApicConfig::new(5).with_x2apic(false));
    let mut x = x2apic(5);
    let s = x.save(0);
    x.reset();
    assert_eq!(no_x2.restore(0, &s), Err(StateError::X2ApicNotOffered));
}

#[test]
fn x2apic_state_round_trips() {
    let mut a = x2apic(0x77);
    a.msr_write(0, 0x83F, 0x99).unwrap();
    a.msr_write(0, msr(ICR_LO), (5u64 << 32) | 0x41).unwrap();
    let s = a.save(0);
    let mut b = LocalApic::new(ApicConfig::new(0));
    b.restore(0, &s).unwrap();
    assert_eq!(b.mode(), ApicMode::X2Apic);
    assert_eq!(b.save(0), s);
    assert_eq!(b.msr_read(0, msr(ICR_LO)), Ok((5u64 << 32) | 0x41));
}
