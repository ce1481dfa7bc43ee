//! Property tests: conversion never panics on arbitrary bytes, blob ->
//! typed -> blob is the identity, and ApicState -> KVM -> ApicState is the
//! identity for states built through `vlapic::LocalApic` operations.

use proptest::prelude::*;
use vlapic::{ApicConfig, ApicState, Interrupt, LocalApic, Lvt, Register, RunState, TriggerMode};
use vlapic_kvm::convert::non_volatile_diff;
use vlapic_kvm::{
    from_kvm, get_klapic_reg, set_klapic_reg, to_kvm, to_kvm_with, Extras, IdFormat, KvmLapic,
    KvmLapicState, KvmProfile, TimerExact,
};

fn format() -> impl Strategy<Value = IdFormat> {
    prop_oneof![Just(IdFormat::Legacy), Just(IdFormat::Full32)]
}

fn blob() -> impl Strategy<Value = [u8; 1024]> {
    proptest::collection::vec(any::<u8>(), 1024).prop_map(|v| v.try_into().unwrap())
}

fn extras() -> impl Strategy<Value = Extras> {
    (
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u8>()),
        any::<u32>(),
        any::<[bool; 2]>(),
        any::<bool>(),
        any::<[bool; 4]>(),
        proptest::option::of(any::<u8>()),
        proptest::option::of((any::<bool>(), any::<u64>())),
    )
        .prop_map(
            |(apic_id, xapic_id, esr_pending, lint, wfs, p, sipi, timer)| Extras {
                apic_id,
                xapic_id,
                esr_pending,
                lint_levels: lint,
                run_state: if wfs {
                    RunState::WaitForSipi
                } else {
                    RunState::Running
                },
                pending_nmi: p[0],
                pending_smi: p[1],
                pending_init: p[2],
                pending_sipi: sipi,
                pending_extint: p[3],
                timer: timer.map(|(running, elapsed_cycles)| TimerExact {
                    running,
                    elapsed_cycles,
                }),
            },
        )
}

/// Small, mostly-zero variants of the arbitrary inputs, so that the paths
/// past the first checks are reached too.
fn apic_base() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        prop_oneof![
            Just(0xFEE0_0000u64),
            Just(0xFEE0_0800),
            Just(0xFEE0_0900),
            Just(0xFEE0_0C00),
            Just(0xFEE0_0D00)
        ],
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// `from_kvm` only ever returns Ok or Err; what it accepts is stable
    /// under `to_kvm` + `from_kvm`.
    #[test]
    fn from_kvm_never_panics(
        bytes in blob(),
        base in apic_base(),
        tsc in any::<u64>(),
        fmt in format(),
        x in extras(),
        clean_id in any::<bool>(),
    ) {
        let mut k = KvmLapic::from_bytes(&bytes);
        if clean_id {
            // Reach past the ID/TPR/APR checks more often.
            k.write(Register::Id, k.read(Register::Id) & 0xFF00_0000);
            k.write(Register::Tpr, k.read(Register::Tpr) & 0xFF);
            k.write(Register::Apr, 0);
        }
        let _ = k.to_string();
        let st = KvmLapicState { lapic: k.into(), apic_base: base, tsc_deadline: tsc };
        let mut x = x;
        for x in [x, Extras { timer: None, apic_id: None, ..x }] {
            if let Ok(s) = from_kvm(&st, fmt, &x) {
                let back = to_kvm_with(&s, &KvmProfile::of(&k, fmt));
                prop_assert_eq!(from_kvm(&back, fmt, &x), Ok(s));
            }
        }
        x.timer = None;
        let _ = from_kvm(&st, fmt, &x);
    }

    /// Blob -> typed view -> blob is the identity, through every typed
    /// getter.
    #[test]
    fn blob_typed_blob_identity(bytes in blob()) {
        let k = KvmLapic::from_bytes(&bytes);
        prop_assert_eq!(k.to_bytes(), bytes);
        let raw: kvm_bindings::kvm_lapic_state = k.into();
        prop_assert_eq!(KvmLapic::from(raw), k);

        // Rebuild from the decoded registers plus the stray words.
        let mut r = KvmLapic::new();
        r.write(Register::Id, k.read(Register::Id));
        r.write(Register::Version, k.version());
        r.write(Register::Tpr, k.read(Register::Tpr));
        r.write(Register::Apr, k.read(Register::Apr));
        r.write(Register::Ppr, k.read(Register::Ppr));
        r.write(Register::Eoi, k.read(Register::Eoi));
        r.write(Register::Rrd, k.read(Register::Rrd));
        r.write(Register::Ldr, k.ldr());
        r.write(Register::Dfr, k.dfr());
        r.write(Register::Svr, k.svr().into_bits());
        for n in 0..8u8 {
            r.write(Register::Isr(n), k.isr().0[n as usize]);
            r.write(Register::Tmr(n), k.tmr().0[n as usize]);
            r.write(Register::Irr(n), k.irr().0[n as usize]);
        }
        r.write(Register::Esr, k.esr());
        for l in Lvt::ALL {
            r.write(l.register(), k.lvt(l).into_bits());
        }
        r.write(Register::IcrLow, k.icr().into_bits() as u32);
        r.write(Register::IcrHigh, (k.icr().into_bits() >> 32) as u32);
        r.write(Register::TimerInitialCount, k.timer_initial_count());
        r.write(Register::TimerCurrentCount, k.timer_current_count());
        r.write(Register::TimerDivide, k.read(Register::TimerDivide));
        r.write(Register::SelfIpi, k.read(Register::SelfIpi));
        let mut raw = r.into();
        for (off, v) in k.stray_words() {
            set_klapic_reg(&mut raw, off, v).unwrap();
        }
        prop_assert_eq!(KvmLapic::from(raw).to_bytes(), bytes);
        let kraw = kvm_bindings::kvm_lapic_state::from(k);
        for off in 0..1021 {
            prop_assert_eq!(
                get_klapic_reg(&kraw, off).unwrap(),
                u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap())
            );
        }
    }

    /// A KVM-like blob (registers only, xAPIC mode, CMCI announced) goes
    /// through vlapic and back unchanged outside the volatile bytes.
    #[test]
    fn kvm_like_blob_round_trip(bytes in blob(), bsp in any::<bool>(), fmt in format()) {
        let mut k = KvmLapic::new();
        let src = KvmLapic::from_bytes(&bytes);
        for r in Register::ALL {
            if !matches!(r, Register::Eoi | Register::Rrd | Register::SelfIpi | Register::Apr) {
                k.write(r, src.read(r));
            }
        }
        k.write(Register::Id, k.read(Register::Id) & 0xFF00_0000);
        k.write(Register::Tpr, k.read(Register::Tpr) & 0xFF);
        k.write(Register::Version, 0x0006_0014);
        // What from_kvm documents as dropped: LVT status bits (delivery
        // status; remote IRR of an entry that is not level-triggered) and
        // the ICR's reserved bits.
        for l in Lvt::ALL {
            let mut v = k.read(l.register()) & !(1 << 12);
            if v & (1 << 15) == 0 {
                v &= !(1 << 14);
            }
            k.write(l.register(), v);
        }
        k.write(Register::IcrLow, k.read(Register::IcrLow) & vlapic::regs::Icr::LOW_WRITABLE);
        k.write(Register::IcrHigh, k.read(Register::IcrHigh) & 0xFF00_0000);
        let st = KvmLapicState {
            lapic: k.into(),
            apic_base: 0xFEE0_0800 | if bsp { 0x100 } else { 0 },
            tsc_deadline: 0,
        };
        let s = from_kvm(&st, fmt, &Extras::default()).unwrap();
        let back = to_kvm_with(&s, &KvmProfile::of(&k, fmt));
        prop_assert_eq!(non_volatile_diff(&k, &back.view()), vec![]);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Mmio(u16, u32),
    Msr(u16, u64),
    Accept(u8, bool),
    Ack,
    Eoi,
    Lint(u8, bool),
    Base(u8),
    Advance(u32),
    Init,
    /// LVT Timer mode (0 one-shot, 1 periodic, 2 TSC-deadline), TDCR, TMICT.
    Timer(u8, u32, u32),
    TscDeadline(u64),
}

fn op() -> impl Strategy<Value = Op> {
    // Registers that hold state, with values that keep the APIC busy.
    let reg = prop_oneof![
        Just(0x020u16),
        Just(0x080),
        Just(0x0B0),
        Just(0x0D0),
        Just(0x0E0),
        Just(0x0F0),
        Just(0x280),
        Just(0x2F0),
        Just(0x300),
        Just(0x310),
        Just(0x320),
        Just(0x330),
        Just(0x340),
        Just(0x350),
        Just(0x360),
        Just(0x370),
        Just(0x380),
        Just(0x3E0),
    ];
    let value = prop_oneof![
        any::<u32>(),
        0u32..0x100,
        (0u32..0x100).prop_map(|v| v | 0x100),
        (0u32..0x0002_0000),
        Just(0x0F00_0000),
    ];
    prop_oneof![
        4 => (reg, value).prop_map(|(r, v)| Op::Mmio(r, v)),
        3 => (0u8..3, 0u32..16, any::<u32>()).prop_map(|(m, d, c)| Op::Timer(m, d, c)),
        1 => any::<u64>().prop_map(Op::TscDeadline),
        2 => (0x800u16..0x840, any::<u64>()).prop_map(|(m, v)| Op::Msr(m, v)),
        3 => (16u8..=255, any::<bool>()).prop_map(|(v, l)| Op::Accept(v, l)),
        1 => Just(Op::Ack),
        1 => Just(Op::Eoi),
        1 => (0u8..2, any::<bool>()).prop_map(|(p, l)| Op::Lint(p, l)),
        1 => (0u8..4).prop_map(Op::Base),
        2 => (0u32..5_000_000).prop_map(Op::Advance),
        1 => (0u8..10).prop_map(|_| Op::Advance(0)),
        1 => (0u8..8).prop_map(|n| if n == 0 { Op::Init } else { Op::Ack }),
    ]
}

fn run(cfg: ApicConfig, ops: &[Op]) -> (LocalApic, u64) {
    let mut a = LocalApic::new(cfg);
    let mut now = 0u64;
    // Start software-enabled so the LVT writes stick.
    a.mmio_write(now, 0xF0, &0x1FFu32.to_le_bytes());
    for op in ops {
        match *op {
            Op::Mmio(off, v) => {
                let _ = a.mmio_write(now, off as u64, &v.to_le_bytes());
            }
            Op::Msr(m, v) => {
                let _ = a.msr_write(now, m as u32, v);
            }
            Op::Accept(v, level) => a.accept(Interrupt {
                trigger: TriggerMode::from_bit(level),
                ..Interrupt::fixed(v)
            }),
            Op::Ack => {
                let _ = a.acknowledge();
            }
            Op::Eoi => {
                let _ = a.mmio_write(now, 0xB0, &0u32.to_le_bytes());
            }
            Op::Lint(p, l) => a.set_lint(p, l),
            Op::Base(b) => {
                let v = [0xFEE0_0000u64, 0xFEE0_0800, 0xFEE0_0C00, 0xFEE0_0800][b as usize];
                let _ = a.host_set_apic_base(v | (a.apic_base() & 0x100));
            }
            Op::Advance(ns) => {
                now += ns as u64;
                a.advance(now);
            }
            Op::Init => a.init_reset(),
            Op::Timer(mode, div, count) => {
                let vector = 0x40 + mode as u32;
                let w = |a: &mut LocalApic, off: u64, v: u32| {
                    let _ = a.mmio_write(now, off, &v.to_le_bytes());
                    let _ = a.msr_write(now, 0x800 + (off as u32 >> 4), v as u64);
                };
                w(&mut a, 0x320, vector | (mode as u32) << 17);
                w(&mut a, 0x3E0, div);
                w(&mut a, 0x380, count);
            }
            Op::TscDeadline(t) => {
                let _ = a.msr_write(now, 0x6E0, t);
            }
        }
    }
    (a, now)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// ApicState -> KVM -> ApicState is the identity (with the extras KVM
    /// keeps elsewhere), for states reached through LocalApic operations.
    #[test]
    fn apic_state_kvm_apic_state_identity(
        id in prop_oneof![0u32..4, 0u32..0x300, any::<u32>()],
        bsp in any::<bool>(),
        cmci in any::<bool>(),
        fmt in format(),
        ops in proptest::collection::vec(op(), 0..40),
        later in 0u64..3_000_000,
    ) {
        let cfg = ApicConfig::new(id).with_bsp(bsp).with_cmci(cmci).with_min_periodic_ns(0);
        let (mut a, now) = run(cfg, &ops);
        // `save` does not run the timer: advance first, or an expired
        // one-shot is saved as running past its end (which `validate`
        // refuses).
        a.advance(now + later);
        let s: ApicState = a.save(now + later);
        prop_assert_eq!(a.validate(&s), Ok(()));
        let k = to_kvm(&s, fmt);
        let back = from_kvm(&k, fmt, &Extras::of(&s));
        prop_assert_eq!(back, Ok(s));
        // And without the exact timer: the same, up to the sub-tick rest.
        let x = Extras { timer: None, ..Extras::of(&s) };
        let d = from_kvm(&k, fmt, &x).unwrap();
        prop_assert_eq!(d.timer_running, s.timer_running || (s.timer_initial_count != 0
            && vlapic::regs::LvtEntry::from_bits(s.lvt[Lvt::Timer.index()]).timer_mode()
                == vlapic::TimerMode::Periodic));
        if s.timer_running {
            prop_assert!(d.timer_elapsed_cycles <= s.timer_elapsed_cycles);
            let div = vlapic::regs::DivideConfig::from_register(s.timer_divide).divisor() as u64;
            prop_assert!(s.timer_elapsed_cycles - d.timer_elapsed_cycles < div.max(1)
                || k.view().timer_current_count() == 0);
        }
        prop_assert_eq!(LocalApic::new(cfg).validate(&d), Ok(()));
    }
}

proptest! {
    /// Typed setters on arbitrary values: Ok and the getter gives the value
    /// back, or Err and the blob is unchanged.
    #[test]
    fn setters_accept_or_leave_unchanged(bytes in blob(), v in any::<u32>(), hi in any::<u32>(), fmt in format()) {
        use vlapic::regs::{Icr, LvtEntry, Svr};
        let k0 = KvmLapic::from_bytes(&bytes);
        macro_rules! check {
            ($set:expr, $get:expr, $want:expr) => {{
                let mut k = k0;
                #[allow(clippy::redundant_closure_call)]
                match ($set)(&mut k) {
                    Ok(()) => prop_assert_eq!(($get)(&k), $want),
                    Err(_) => prop_assert_eq!(k, k0),
                }
            }};
        }
        check!(|k: &mut KvmLapic| k.set_version(v), |k: &KvmLapic| k.version(), v);
        check!(|k: &mut KvmLapic| k.set_dfr(v), |k: &KvmLapic| k.dfr(), v);
        check!(|k: &mut KvmLapic| k.set_svr(Svr::from_bits(v)), |k: &KvmLapic| k.svr().into_bits(), v);
        check!(|k: &mut KvmLapic| k.set_esr(v), |k: &KvmLapic| k.esr(), v);
        check!(|k: &mut KvmLapic| k.set_timer_divide(v), |k: &KvmLapic| k.read(Register::TimerDivide), v);
        check!(|k: &mut KvmLapic| k.set_x2apic_id(v, fmt), |k: &KvmLapic| k.x2apic_id(fmt), v);
        let set = vlapic::VectorSet([v, hi, v, hi, v, hi, v, hi]);
        check!(|k: &mut KvmLapic| k.set_irr(set), |k: &KvmLapic| k.irr(), set);
        check!(|k: &mut KvmLapic| k.set_isr(set), |k: &KvmLapic| k.isr(), set);
        check!(|k: &mut KvmLapic| k.set_tmr(set), |k: &KvmLapic| k.tmr(), set);
        let icr = (hi as u64) << 32 | v as u64;
        check!(|k: &mut KvmLapic| k.set_icr(Icr::from_bits(icr)), |k: &KvmLapic| k.icr().into_bits(), icr);
        for l in Lvt::ALL {
            check!(|k: &mut KvmLapic| k.set_lvt(l, LvtEntry::from_bits(v)), |k: &KvmLapic| k.lvt(l).into_bits(), v);
            // Small values reach the delivery-mode checks.
            let small = v & 0x0007_FFFF;
            check!(|k: &mut KvmLapic| k.set_lvt(l, LvtEntry::from_bits(small)), |k: &KvmLapic| k.lvt(l).into_bits(), small);
        }
    }
}
