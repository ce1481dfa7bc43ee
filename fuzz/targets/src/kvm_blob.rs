//! Target `kvm_blob`: `vlapic_kvm::from_kvm` on arbitrary 1 KiB blobs
//! (raw, or a valid state's blob with a few words replaced), arbitrary
//! `IA32_APIC_BASE` and TSC deadline, both x2APIC ID formats, and default,
//! exact or arbitrary `Extras`. Never panics; when the result is a state
//! the vCPU's configuration accepts (`validate`), restoring it works, and
//! converting back gives a blob equal to the input on every register word
//! outside `VOLATILE_RANGES` (words that are not registers are reported by
//! `stray_words` and not compared; see `EXPECTED_LOSSY`).

use super::check::{self, Checks};
use super::input::Input;
use super::lapic_ops;
use vlapic::{ApicConfig, ApicMode, LocalApic, Register, RunState};
use vlapic_kvm::convert::{is_volatile, non_volatile_diff};
use vlapic_kvm::{
    from_kvm, to_kvm, to_kvm_with, Extras, IdFormat, KvmLapic, KvmLapicState, KvmProfile,
    TimerExact, KVM_LAPIC_SIZE,
};

/// Register words `ApicState` does not hold, so a KVM -> vlapic -> KVM
/// round trip writes 0 there: the write-only EOI and SELF IPI slots and
/// the RRD (KVM never sets them either).
pub const EXPECTED_LOSSY: [usize; 3] = [0x0B0, 0x0C0, 0x3F0];

/// Bits of the register word at `off` that `from_kvm` drops on purpose:
/// LVT delivery status (12) and remote IRR (14) of an edge entry, and the
/// ICR bits that are not state (reserved bits, delivery status, and in
/// xAPIC mode ICR2 bits 23:0).
pub fn dropped_bits(off: usize, was: u32, x2: bool) -> u32 {
    match off {
        0x2F0 | 0x320..=0x370 => (1 << 12) | if was & (1 << 15) == 0 { 1 << 14 } else { 0 },
        0x300 if x2 => vlapic::regs::Icr::X2APIC_RESERVED as u32 | (1 << 12),
        0x300 => !vlapic::regs::Icr::LOW_WRITABLE,
        0x310 if !x2 => 0x00FF_FFFF,
        _ => 0,
    }
}

fn blob(inp: &mut Input) -> KvmLapic {
    if inp.bool() {
        let mut bytes = [0u8; KVM_LAPIC_SIZE];
        let src = inp.bytes(KVM_LAPIC_SIZE);
        bytes[..src.len()].copy_from_slice(src);
        return KvmLapic::from_bytes(&bytes);
    }
    // A blob of a reachable state, then a few registers replaced.
    let mut now = 0;
    let mut a = LocalApic::new(lapic_ops::config(inp));
    a.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
    for _ in 0..inp.below(8) {
        lapic_ops::step(&mut a, &mut now, inp);
    }
    let ids = if inp.bool() {
        IdFormat::Full32
    } else {
        IdFormat::Legacy
    };
    let mut k = to_kvm(&a.save(now), ids).view();
    for _ in 0..inp.below(4) {
        let reg = Register::ALL[inp.below(Register::ALL.len() as u32) as usize];
        let v = lapic_ops::value32(inp);
        k.write(reg, v);
    }
    k
}

fn extras(inp: &mut Input) -> Extras {
    match inp.below(3) {
        0 => Extras::default(),
        1 => Extras {
            apic_id: inp.bool().then(|| inp.u32()),
            xapic_id: inp.bool().then(|| inp.u8()),
            esr_pending: inp.u8() as u32 & if inp.bool() { 0xEC } else { 0xFF },
            lint_levels: [inp.bool(), inp.bool()],
            run_state: if inp.bool() {
                RunState::Running
            } else {
                RunState::WaitForSipi
            },
            pending_nmi: inp.bool(),
            pending_smi: inp.bool(),
            pending_init: inp.bool(),
            pending_sipi: inp.bool().then(|| inp.u8()),
            pending_extint: inp.bool(),
            timer: inp.bool().then(|| TimerExact {
                running: inp.bool(),
                elapsed_cycles: inp.u32() as u64,
            }),
        },
        _ => Extras {
            apic_id: Some(inp.u8() as u32),
            ..Extras::default()
        },
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let ids = if inp.bool() {
        IdFormat::Full32
    } else {
        IdFormat::Legacy
    };
    let apic_base = lapic_ops::apic_base_value(&mut inp);
    let tsc_deadline = if inp.bool() { 0 } else { inp.u64() };
    let x = extras(&mut inp);
    let view = blob(&mut inp);
    let k = KvmLapicState {
        lapic: view.into(),
        apic_base,
        tsc_deadline,
    };
    // Display and the typed getters never panic either.
    let _ = format!("{view}");
    let _ = view.stray_words().count();
    let Ok(s) = from_kvm(&k, ids, &x) else {
        return;
    };
    // What a VMM would do next: restore into the vCPU's APIC.
    let cfg = ApicConfig::new(s.apic_id)
        .with_cmci(view.has_cmci())
        .with_suppress_eoi_broadcast(true);
    let mut a = LocalApic::new(cfg);
    if a.validate(&s).is_err() {
        return;
    }
    let now = 1_000_000;
    a.restore(now, &s).expect("validated state refused");
    assert_eq!(
        a.save(now),
        s,
        "restore(from_kvm(blob)).save() != from_kvm(blob)"
    );
    a.advance(now);
    check::apic(&a, now, Checks::VALIDATED);
    // Back to KVM with the blob's own profile: every register word outside
    // the volatile ranges is what it was.
    let back = to_kvm_with(&s, &KvmProfile::of(&view, ids));
    assert_eq!(back.apic_base, apic_base);
    assert_eq!(back.tsc_deadline, tsc_deadline);
    let x2 = ApicMode::of(vlapic::regs::ApicBase::from_bits(apic_base)) == Some(ApicMode::X2Apic);
    for (off, was, now) in non_volatile_diff(&view, &back.view()) {
        assert!(!is_volatile(off));
        let is_reg = off % 16 == 0 && Register::from_offset(off as u32).is_some();
        if !is_reg || EXPECTED_LOSSY.contains(&off) {
            continue;
        }
        // x2APIC: the LDR is derived from the ID (as KVM does on SET).
        if x2 && off == 0x0D0 {
            continue;
        }
        // Bits `from_kvm` documents as dropped (status, reserved).
        let ignored = dropped_bits(off, was, x2);
        if (was ^ now) & !ignored == 0 {
            continue;
        }
        // Without CMCI (version max LVT 5) KVM leaves 0x2F0 at 0 and
        // ApicState holds the reset value there (documented in
        // vlapic_kvm::convert): a blob with 0x10000 there comes back as 0.
        if off == 0x2F0 && !view.has_cmci() && was & !ignored == vlapic::regs::LVT_RESET && now == 0
        {
            continue;
        }
        panic!(
            "register word {off:#05x} was {was:#010x}, round trip gives {now:#010x} \
             (apic_base {apic_base:#x}, {ids:?}, {x:?})\n{s:#x?}"
        );
    }
    // And the state survives its own round trip exactly.
    let again = from_kvm(&back, ids, &Extras::of(&s)).expect("own blob refused");
    assert_eq!(again, s, "ApicState -> KVM -> ApicState changed the state");
}
