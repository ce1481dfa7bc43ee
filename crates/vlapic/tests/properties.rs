//! Property tests: invariants that hold after any sequence of guest and
//! host operations, and save -> restore -> save being the identity.

use proptest::prelude::*;
use vlapic::priority::ppr;
use vlapic::{ApicConfig, DeliveryMode, Interrupt, LocalApic, Lvt, TriggerMode};

#[derive(Debug, Clone)]
enum Op {
    MmioWrite(u16, u32),
    MmioWriteReg(u8, u32),
    MmioRead(u16, u8),
    MsrWrite(u16, u64),
    MsrRead(u16),
    ApicBase(u64),
    Advance(u32),
    Accept(u8, u8, bool),
    Ack,
    Eoi,
    Lint(u8, bool),
    Fire(u8),
    Cr8(u8),
    TscDeadline(u64),
}

/// Registers that matter, weighted toward interesting ones.
const REG_OFFSETS: [u16; 16] = [
    0x020, 0x080, 0x0B0, 0x0D0, 0x0E0, 0x0F0, 0x280, 0x300, 0x310, 0x320, 0x350, 0x360, 0x370,
    0x380, 0x3E0, 0x340,
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u16..0x1010, any::<u32>()).prop_map(|(o, v)| Op::MmioWrite(o, v)),
        (0u8..16, any::<u32>()).prop_map(|(i, v)| Op::MmioWriteReg(i, v)),
        (0u16..0x1010, 0u8..9).prop_map(|(o, l)| Op::MmioRead(o, l)),
        (0x800u16..0x840, any::<u64>()).prop_map(|(m, v)| Op::MsrWrite(m, v)),
        (0x800u16..0x840).prop_map(Op::MsrRead),
        prop_oneof![
            Just(0xFEE0_0800u64),
            Just(0xFEE0_0C00),
            Just(0xFEE0_0000),
            Just(0xFEE0_0400),
            any::<u64>()
        ]
        .prop_map(Op::ApicBase),
        (0u32..2_000_000).prop_map(Op::Advance),
        (any::<u8>(), 0u8..8, any::<bool>()).prop_map(|(v, m, l)| Op::Accept(v, m, l)),
        Just(Op::Ack),
        Just(Op::Eoi),
        (0u8..3, any::<bool>()).prop_map(|(p, l)| Op::Lint(p, l)),
        (0u8..7).prop_map(Op::Fire),
        (0u8..16).prop_map(Op::Cr8),
        any::<u64>().prop_map(Op::TscDeadline),
    ]
}

fn config() -> ApicConfig {
    ApicConfig::new(3)
        .with_cmci(true)
        .with_suppress_eoi_broadcast(true)
        .with_min_periodic_ns(1000)
}

fn apply(a: &mut LocalApic, now: &mut u64, op: &Op) {
    match *op {
        Op::MmioWrite(o, v) => {
            a.mmio_write(*now, o as u64, &v.to_le_bytes());
        }
        Op::MmioWriteReg(i, v) => {
            let off = REG_OFFSETS[i as usize % REG_OFFSETS.len()];
            // Keep the APIC software-enabled most of the time.
            let v = if off == 0x0F0 { v | 0x100 } else { v };
            a.mmio_write(*now, off as u64, &v.to_le_bytes());
        }
        Op::MmioRead(o, l) => {
            let mut buf = vec![0u8; l as usize];
            a.mmio_read(*now, o as u64, &mut buf);
        }
        Op::MsrWrite(m, v) => {
            let _ = a.msr_write(*now, m as u32, v);
        }
        Op::MsrRead(m) => {
            let _ = a.msr_read(*now, m as u32);
        }
        Op::ApicBase(v) => {
            let _ = a.msr_write(*now, 0x1B, v);
        }
        Op::Advance(dt) => {
            *now += dt as u64;
            a.advance(*now);
        }
        Op::Accept(v, m, level) => a.accept(Interrupt {
            vector: v,
            delivery_mode: DeliveryMode::from_bits(m),
            trigger: TriggerMode::from_bit(level),
            assert: true,
        }),
        Op::Ack => {
            if a.poll(*now).interrupt.is_some() {
                a.acknowledge();
            }
        }
        Op::Eoi => {
            let _ = a.msr_write(*now, 0x80B, 0);
            a.mmio_write(*now, 0xB0, &[0, 0, 0, 0]);
        }
        Op::Lint(p, l) => a.set_lint(p, l),
        Op::Fire(i) => a.fire_lvt(Lvt::ALL[i as usize % 7]),
        Op::Cr8(v) => a.set_cr8(v as u64),
        Op::TscDeadline(v) => {
            let _ = a.msr_write(*now, 0x6E0, v);
        }
    }
}

fn check_invariants(a: &LocalApic, now: u64) -> Result<(), TestCaseError> {
    let regs = a.interrupt_registers();
    // PPR follows the SDM formula.
    prop_assert_eq!(a.ppr(), ppr(a.tpr(), regs.isr.highest().unwrap_or(0)));
    // Illegal vectors are never latched.
    prop_assert!(!regs.irr.has_illegal() && !regs.isr.has_illegal() && !regs.tmr.has_illegal());
    // In-service vectors nest strictly by priority class.
    let classes: Vec<u8> = regs.isr.iter().map(|v| v >> 4).collect();
    let mut dedup = classes.clone();
    dedup.dedup();
    prop_assert_eq!(
        classes.len(),
        dedup.len(),
        "two in-service vectors share a class"
    );
    // A reported interrupt is the highest IRR vector, above PPR's class.
    if let Some(v) = a.work().interrupt {
        prop_assert_eq!(Some(v), regs.irr.highest());
        prop_assert!(v >> 4 > a.ppr() >> 4);
    }
    // The timer never reports an expiry in the past after being advanced,
    // and its count never exceeds TMICT.
    if let Some(t) = a.next_timer_deadline() {
        prop_assert!(t > now, "expiry {} not after now {}", t, now);
    }
    let cur = a.read_register(now, vlapic::Register::TimerCurrentCount);
    let init = a.read_register(now, vlapic::Register::TimerInitialCount);
    prop_assert!(cur <= init);
    // The state is always one restore accepts.
    let s = a.save(now);
    prop_assert_eq!(a.validate(&s), Ok(()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_any_operation_sequence(ops in prop::collection::vec(op(), 1..120)) {
        let mut a = LocalApic::new(config());
        a.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
        let mut now = 0u64;
        for op in &ops {
            apply(&mut a, &mut now, op);
            a.advance(now);
            check_invariants(&a, now)?;
        }
    }

    #[test]
    fn save_restore_save_is_identity(ops in prop::collection::vec(op(), 0..80), later in 0u64..1_000_000_000) {
        let mut a = LocalApic::new(config());
        a.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
        let mut now = 0u64;
        for op in &ops {
            apply(&mut a, &mut now, op);
        }
        let saved = a.save(now);
        let mut b = LocalApic::new(config());
        b.restore(now + later, &saved).unwrap();
        prop_assert_eq!(b.save(now + later), saved);
        // And the restored APIC behaves the same from there on.
        let mut a2 = a.clone();
        let mut b2 = b.clone();
        a2.advance(now + 5000);
        b2.advance(now + later + 5000);
        prop_assert_eq!(a2.work(), b2.work());
    }
}
