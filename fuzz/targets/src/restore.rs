//! Target `restore`: `LocalApic::restore` from an arbitrary `ApicState`
//! (every field arbitrary, or a valid saved state with a few fields
//! replaced). Either an error that changes nothing, or an APIC whose
//! `save()` equals the input and that keeps the invariants under a few
//! operations. (`serde_restore` adds the JSON path.)

use super::check::{self, Checks};
use super::input::Input;
use super::lapic_ops;
use vlapic::{ApicState, LocalApic, RunState, VectorSet, STATE_VERSION};

fn vectors(inp: &mut Input) -> VectorSet {
    match inp.below(4) {
        0 => VectorSet([
            inp.u32(),
            inp.u32(),
            inp.u32(),
            inp.u32(),
            inp.u32(),
            inp.u32(),
            inp.u32(),
            inp.u32(),
        ]),
        1 => VectorSet::EMPTY,
        _ => {
            let mut v = VectorSet::EMPTY;
            for _ in 0..inp.below(4) {
                v.insert(inp.u8());
            }
            v
        }
    }
}

/// A state with every field from the input.
pub fn arbitrary_state(inp: &mut Input) -> ApicState {
    ApicState {
        version: if inp.below(16) == 0 {
            inp.u32()
        } else {
            STATE_VERSION
        },
        apic_id: match inp.below(3) {
            0 => inp.u32(),
            _ => inp.u8() as u32,
        },
        apic_base: lapic_ops::apic_base_value(inp),
        xapic_id: inp.u8(),
        tpr: inp.u8(),
        ldr: if inp.bool() {
            inp.u32()
        } else {
            (inp.u8() as u32) << 24
        },
        dfr: if inp.bool() { inp.u32() } else { 0xFFFF_FFFF },
        svr: lapic_ops::value32(inp),
        irr: vectors(inp),
        isr: vectors(inp),
        tmr: vectors(inp),
        esr: if inp.bool() {
            inp.u32()
        } else {
            inp.u8() as u32
        },
        esr_pending: if inp.bool() {
            inp.u32()
        } else {
            inp.u8() as u32
        },
        lvt: core::array::from_fn(|_| match inp.below(4) {
            0 => inp.u32(),
            1 => 0x10000,
            _ => inp.u32() & 0x0007_FFFF,
        }),
        icr: if inp.bool() {
            inp.u64()
        } else {
            inp.u32() as u64 & 0x000C_CFFF
        },
        timer_initial_count: inp.u32(),
        timer_divide: inp.u32() & if inp.bool() { 0xB } else { !0 },
        timer_running: inp.bool(),
        timer_elapsed_cycles: match inp.below(3) {
            0 => inp.u64(),
            1 => 0,
            _ => inp.u32() as u64,
        },
        tsc_deadline: if inp.bool() { 0 } else { inp.u64() },
        lint_levels: [inp.bool(), inp.bool()],
        run_state: if inp.bool() {
            RunState::Running
        } else {
            RunState::WaitForSipi
        },
        pending_nmi: inp.bool(),
        pending_smi: inp.bool(),
        pending_init: inp.bool(),
        pending_sipi: if inp.bool() { Some(inp.u8()) } else { None },
        pending_extint: inp.bool(),
    }
}

/// A valid state reached by operations, then a few fields replaced.
pub fn mutated_state(inp: &mut Input, cfg: vlapic::ApicConfig, now: &mut u64) -> ApicState {
    let mut a = LocalApic::new(cfg);
    a.mmio_write(*now, 0xF0, &0x1FFu32.to_le_bytes());
    for _ in 0..inp.below(12) {
        lapic_ops::step(&mut a, now, inp);
    }
    let mut s = a.save(*now);
    let other = arbitrary_state(inp);
    for _ in 0..inp.below(4) {
        match inp.below(27) {
            0 => s.version = other.version,
            1 => s.apic_id = other.apic_id,
            2 => s.apic_base = other.apic_base,
            3 => s.xapic_id = other.xapic_id,
            4 => s.tpr = other.tpr,
            5 => s.ldr = other.ldr,
            6 => s.dfr = other.dfr,
            7 => s.svr = other.svr,
            8 => s.irr = other.irr,
            9 => s.isr = other.isr,
            10 => s.tmr = other.tmr,
            11 => s.esr = other.esr,
            12 => s.esr_pending = other.esr_pending,
            13 => s.lvt[inp.below(7) as usize] = other.lvt[0],
            14 => s.icr = other.icr,
            15 => s.timer_initial_count = other.timer_initial_count,
            16 => s.timer_divide = other.timer_divide,
            17 => s.timer_running = other.timer_running,
            18 => s.timer_elapsed_cycles = other.timer_elapsed_cycles,
            19 => s.tsc_deadline = other.tsc_deadline,
            20 => s.lint_levels = other.lint_levels,
            21 => s.run_state = other.run_state,
            22 => s.pending_nmi = other.pending_nmi,
            23 => s.pending_smi = other.pending_smi,
            24 => s.pending_init = other.pending_init,
            25 => s.pending_sipi = other.pending_sipi,
            _ => s.pending_extint = other.pending_extint,
        }
    }
    s
}

/// Restores `s` into an APIC with configuration `cfg` at `now` and checks
/// the contract; then runs the rest of `inp` as operations.
pub fn check_restore(cfg: vlapic::ApicConfig, s: &ApicState, now: u64, inp: &mut Input) {
    let mut b = LocalApic::new(cfg);
    // Something in it, to see that a refused restore changes nothing.
    b.mmio_write(0, 0x80, &0x20u32.to_le_bytes());
    let before = b.save(now);
    let valid = b.validate(s);
    match b.restore(now, s) {
        Err(e) => {
            assert_eq!(valid, Err(e), "validate and restore disagree");
            assert_eq!(b.save(now), before, "a refused restore changed the APIC");
        }
        Ok(()) => {
            assert_eq!(valid, Ok(()), "validate and restore disagree");
            assert_eq!(
                b.save(now),
                *s,
                "save() after restore differs from the input"
            );
            let mut now = now;
            b.advance(now);
            check::apic(&b, now, Checks::VALIDATED);
            for _ in 0..8 {
                if inp.is_empty() {
                    break;
                }
                lapic_ops::step(&mut b, &mut now, inp);
                b.advance(now);
                check::apic(&b, now, Checks::VALIDATED);
            }
        }
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let cfg = lapic_ops::config(&mut inp);
    let mut now = lapic_ops::start_time(&mut inp);
    let s = if inp.bool() {
        arbitrary_state(&mut inp)
    } else {
        mutated_state(&mut inp, cfg, &mut now)
    };
    let later = now
        .saturating_add(lapic_ops::dt(&mut inp))
        .min(lapic_ops::MAX_NOW);
    check_restore(cfg, &s, later, &mut inp);
}
