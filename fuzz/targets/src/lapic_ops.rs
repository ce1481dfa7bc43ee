//! Target `lapic_ops`: one local APIC with a random configuration, driven
//! by any sequence of guest accesses (MMIO of any size and offset, any
//! MSR, APIC_BASE) and host/device calls (time, accept, acknowledge, EOI,
//! LINT, fire_lvt, CR8, INIT/reset, TSC offset, save/restore), with every
//! invariant of `check::apic` checked after every step.

use super::check::{self, Checks};
use super::input::Input;
use vlapic::ipi::decode_icr;
use vlapic::regs::Icr;
use vlapic::{ApicConfig, ApicMode, DeliveryMode, Interrupt, LocalApic, Lvt, Message, TriggerMode};

/// Time never goes beyond this (2^60 ns, ~36 years), so that the
/// embedder's clock is plausible.
pub const MAX_NOW: u64 = 1 << 60;

/// Whether host `IA32_APIC_BASE` writes may set bits at or above
/// MAXPHYADDR (a bug, fixed in 572c85f, made `save()` unrestorable then;
/// `false` steps around it).
pub const HOST_APIC_BASE_ABOVE_MAXPHYADDR: bool = true;

/// Whether host x2APIC -> xAPIC moves may happen with an ICR destination
/// that has bits 23:0 set (a bug, fixed in 572c85f, made `save()`
/// unrestorable then; `false` steps around it).
pub const HOST_X2APIC_TO_XAPIC_WITH_ICR: bool = true;

/// Whether host `IA32_APIC_BASE` writes may make an APIC that waits for
/// SIPI the BSP (the fabric's inbox merge then differed from sequential
/// delivery; fixed: INIT always leaves the BSP running).
pub const BSP_IN_WAIT_FOR_SIPI: bool = true;

/// Register offsets worth hitting with aligned 4-byte writes.
pub const REG_OFFSETS: [u16; 26] = [
    0x020, 0x030, 0x080, 0x090, 0x0A0, 0x0B0, 0x0D0, 0x0E0, 0x0F0, 0x100, 0x180, 0x200, 0x280,
    0x2F0, 0x300, 0x310, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370, 0x380, 0x390, 0x3E0, 0x3F0,
];

/// A random configuration (features on/off, clocks, IDs).
pub fn config(inp: &mut Input) -> ApicConfig {
    let flags = inp.u8();
    let id = match inp.below(4) {
        0 => inp.u8() as u32 & 7,
        1 => inp.u8() as u32,
        2 => inp.u32(),
        _ => 0,
    };
    let hz = |inp: &mut Input| match inp.below(6) {
        0 => 100_000_000,
        1 => 25_000_000,
        2 => 3_000_000_000,
        3 => inp.u32() as u64 + 1,
        4 => (inp.u64() % (1 << 34)) + 1,
        _ => 1_000_000_000,
    };
    let bus = hz(inp);
    let tsc = hz(inp);
    let tsc_offset = match inp.below(4) {
        0 => inp.u64(),
        1 => inp.u32() as u64,
        _ => 0,
    };
    let min_periodic = match inp.below(4) {
        0 => 0,
        1 => 1000,
        2 => inp.u32() as u64,
        _ => 200_000,
    };
    let maxphys = match inp.below(4) {
        0 => inp.u8(),
        1 => 36,
        2 => 52,
        _ => 46,
    };
    ApicConfig::new(id)
        .with_bsp(flags & 1 != 0)
        .with_x2apic(flags & 2 == 0)
        .with_tsc_deadline(flags & 4 == 0)
        .with_cmci(flags & 8 != 0)
        .with_suppress_eoi_broadcast(flags & 16 != 0)
        .with_bus_frequency_hz(bus)
        .with_tsc_frequency_hz(tsc)
        .with_tsc_offset(tsc_offset)
        .with_min_periodic_ns(min_periodic)
        .with_max_phys_addr_bits(maxphys)
}

/// An `IA32_APIC_BASE` value, biased to the meaningful ones.
pub fn apic_base_value(inp: &mut Input) -> u64 {
    let canonical = inp.pick(&[
        0xFEE0_0000u64,
        0xFEE0_0800,
        0xFEE0_0900,
        0xFEE0_0C00,
        0xFEE0_0D00,
        0xFEE0_0400,
        0xFED0_0800,
    ]);
    match inp.below(4) {
        0 => inp.u64(),
        1 => canonical ^ (1u64 << inp.below(64)),
        _ => canonical,
    }
}

/// An MSR number, biased to the APIC ones.
pub fn msr(inp: &mut Input) -> u32 {
    match inp.below(8) {
        0 => 0x1B,
        1 => 0x6E0,
        2 => 0x840 + inp.below(0xC0),
        3 => inp.u32(),
        _ => 0x800 + inp.below(0x40),
    }
}

/// A 32-bit register value, biased.
pub fn value32(inp: &mut Input) -> u32 {
    match inp.below(6) {
        0 => 0,
        1 => 0x1FF,
        2 => inp.u8() as u32,
        3 => (inp.u8() as u32) << 24,
        _ => inp.u32(),
    }
}

/// A time step, bounded.
pub fn dt(inp: &mut Input) -> u64 {
    match inp.below(5) {
        0 => inp.u8() as u64,
        1 => inp.u16() as u64 * 16,
        2 => inp.u32() as u64,
        3 => inp.u64() % (1 << 40),
        _ => 1 + inp.u16() as u64,
    }
}

/// An interrupt message as a device or another APIC would send it.
pub fn interrupt(inp: &mut Input) -> Interrupt {
    let vector = match inp.below(3) {
        0 => inp.u8() & 0x1F,
        _ => inp.u8(),
    };
    let b = inp.u8();
    Interrupt {
        vector,
        delivery_mode: DeliveryMode::from_bits(b & 7),
        trigger: TriggerMode::from_bit(b & 8 != 0),
        assert: b & 16 == 0,
    }
}

/// The initial time of a run.
pub fn start_time(inp: &mut Input) -> u64 {
    match inp.below(4) {
        0 => inp.u64() % (1 << 56),
        1 => inp.u32() as u64,
        _ => 0,
    }
}

/// Applies one operation decoded from `inp` to `a` at `*now` (which it may
/// advance). Returns the bus message the operation produced, if any.
pub fn step(a: &mut LocalApic, now: &mut u64, inp: &mut Input) -> Option<Message> {
    let t = *now;
    let before = check::stats_total(a.stats());
    let op = inp.u8() % 24;
    let mut access_len = 1u64;
    let msg = match op {
        // MMIO write: mostly aligned 4-byte writes to registers.
        0..=3 => {
            let off = match inp.below(4) {
                0 => inp.u16() as u64 & 0x1FFF,
                1 => inp.u64(),
                _ => inp.pick(&REG_OFFSETS) as u64,
            };
            let len = inp.pick(&[4usize, 4, 4, 4, 1, 2, 3, 8, 0, 16]);
            let mut v = value32(inp);
            if off == 0x0F0 && inp.below(4) != 0 {
                v |= 0x100; // keep it software-enabled most of the time
            }
            let mut data = [0u8; 16];
            data[..4].copy_from_slice(&v.to_le_bytes());
            if len > 4 {
                let extra = inp.bytes(len - 4);
                data[4..4 + extra.len()].copy_from_slice(extra);
            }
            a.mmio_write(t, off, &data[..len])
        }
        4 | 5 => {
            let off = match inp.below(3) {
                0 => inp.u64(),
                _ => inp.u16() as u64 & 0x1FFF,
            };
            let len = inp.below(17) as usize;
            access_len = len as u64 + 1;
            let mut buf = [0u8; 16];
            a.mmio_read(t, off, &mut buf[..len]);
            None
        }
        6..=8 => {
            let m = msr(inp);
            let v = match inp.below(4) {
                0 => inp.u64(),
                1 => 0,
                _ => value32(inp) as u64,
            };
            let v = if m == 0x1B { apic_base_value(inp) } else { v };
            a.msr_write(t, m, v).ok().flatten()
        }
        9 => {
            let m = msr(inp);
            let _ = a.msr_read(t, m);
            None
        }
        10 => {
            let v = apic_base_value(inp);
            let old = a.apic_base();
            let r = a.write_apic_base(t, v);
            if r.is_ok() {
                // The BSP bit is the platform's.
                assert_eq!(
                    a.apic_base() & 0x100,
                    old & 0x100,
                    "guest changed the BSP bit"
                );
            }
            r.ok().flatten()
        }
        11 => {
            let mut v = apic_base_value(inp);
            if !HOST_APIC_BASE_ABOVE_MAXPHYADDR {
                // Was a bug (crates/vlapic/tests/hostile.rs,
                // `host_apic_base_above_maxphyaddr_breaks_save`), fixed in
                // 572c85f: this switch keeps the host write inside
                // MAXPHYADDR should it come back.
                let phys = a.config().max_phys_addr_bits.clamp(32, 52);
                v &= (1u64 << phys) - 1;
            }
            if !BSP_IN_WAIT_FOR_SIPI && a.run_state() == vlapic::RunState::WaitForSipi {
                // Known issue (crates/vlapic/tests/hostile.rs,
                // `fabric_sipi_then_init_to_bsp_in_wait_for_sipi`): keep
                // the BSP bit of an APIC waiting for SIPI.
                v = (v & !0x100) | (a.apic_base() & 0x100);
            }
            let to_xapic = v & 0xC00 == 0x800;
            if a.mode() == ApicMode::X2Apic
                && to_xapic
                && (a.save(t).icr >> 32) & 0x00FF_FFFF != 0
                && !HOST_X2APIC_TO_XAPIC_WITH_ICR
            {
                // Was a bug (crates/vlapic/tests/hostile.rs,
                // `host_x2apic_to_xapic_keeps_32bit_icr_destination`),
                // fixed in 572c85f.
                return None;
            }
            a.host_set_apic_base(v).ok().flatten()
        }
        12 => {
            *now = now.saturating_add(dt(inp)).min(MAX_NOW);
            a.advance(*now);
            None
        }
        13 => {
            a.accept(interrupt(inp));
            None
        }
        14 => {
            // The CPU takes an interrupt: what poll reported is what it gets.
            let w = a.poll(t);
            let isr_before = a.interrupt_registers().isr;
            let v = a.acknowledge();
            match w.interrupt {
                Some(want) => {
                    assert_eq!(v, want, "acknowledge gave {v:#x}, poll said {want:#x}");
                    assert!(
                        a.interrupt_registers().isr.contains(v),
                        "acknowledged vector not in service"
                    );
                }
                None => assert_eq!(
                    a.interrupt_registers().isr,
                    isr_before,
                    "spurious acknowledge changed ISR"
                ),
            }
            None
        }
        15 => {
            // EOI, the way the mode allows.
            let isr = a.interrupt_registers().isr;
            let m = match a.mode() {
                ApicMode::X2Apic => a.msr_write(t, 0x80B, 0).ok().flatten(),
                _ => a.mmio_write(t, 0xB0, &0u32.to_le_bytes()),
            };
            if a.mode() != ApicMode::Disabled {
                let mut want = isr;
                if let Some(h) = isr.highest() {
                    want.remove(h);
                }
                // A level LINT re-delivery may set IRR, never ISR.
                assert_eq!(a.interrupt_registers().isr, want, "EOI did not clear ISRV");
            }
            m
        }
        16 => {
            a.set_lint(inp.u8() % 3, inp.bool());
            None
        }
        17 => {
            a.fire_lvt(Lvt::ALL[inp.below(7) as usize]);
            None
        }
        18 => {
            match inp.below(3) {
                0 => a.set_tpr(inp.u8()),
                _ => {
                    let v = if inp.bool() {
                        inp.u64()
                    } else {
                        inp.u8() as u64 & 0xF
                    };
                    a.set_cr8(v)
                }
            }
            None
        }
        19 => {
            // The vCPU takes the other events.
            match inp.below(6) {
                0 => {
                    a.take_nmi();
                }
                1 => {
                    a.take_smi();
                }
                2 => {
                    a.take_init();
                }
                3 => {
                    a.take_sipi();
                }
                4 => a.acknowledge_extint(),
                _ => match inp.below(8) {
                    0 => a.reset(),
                    _ => a.init_reset(),
                },
            }
            None
        }
        20 => {
            // An IPI from some other APIC, decoded from an arbitrary ICR.
            let icr = Icr::from_bits(inp.u64());
            let ipi = decode_icr(icr, inp.bool(), inp.u32());
            a.deliver_ipi(&ipi, inp.bool());
            None
        }
        21 => {
            a.set_tsc_offset(match inp.below(3) {
                0 => inp.u64(),
                _ => inp.u32() as u64,
            });
            None
        }
        22 => {
            // Save and restore in place (a live migration to itself).
            let s = a.save(t);
            let later = (*now).saturating_add(inp.u16() as u64).min(MAX_NOW);
            a.restore(later, &s).expect("restore of own save failed");
            *now = later;
            None
        }
        _ => {
            // x2APIC register write with a plausible value.
            let reg = 0x800 + inp.pick(&REG_OFFSETS) as u32 / 16;
            let v = if reg == 0x830 {
                inp.u64() & 0xFFFF_FFFF_000C_CFFF
            } else {
                value32(inp) as u64
            };
            a.msr_write(t, reg, v).ok().flatten()
        }
    };
    let after = check::stats_total(a.stats());
    assert!(
        after - before <= 4 + 2 * access_len,
        "one operation bumped the rejection counters by {}",
        after - before
    );
    msg
}

/// Checks what a write returned.
pub fn check_message(a: &LocalApic, msg: &Option<Message>) {
    match msg {
        Some(Message::Ipi(ipi)) => {
            assert!(
                !ipi.interrupt.has_illegal_vector(),
                "IPI with an illegal vector left the APIC: {ipi:?}"
            );
            assert!(
                !matches!(
                    ipi.interrupt.delivery_mode,
                    DeliveryMode::Reserved3 | DeliveryMode::ExtInt
                ),
                "IPI with a reserved delivery mode left the APIC: {ipi:?}"
            );
            assert!(
                !ipi.interrupt.is_init_deassert(),
                "INIT de-assert left the APIC"
            );
        }
        Some(Message::Eoi { vector }) => {
            assert!(*vector >= 16, "EOI broadcast of illegal vector {vector}");
        }
        Some(Message::ApicBaseChanged { apic_base, mode }) => {
            assert_eq!(*apic_base, a.apic_base(), "ApicBaseChanged disagrees");
            assert_eq!(*mode, a.mode(), "ApicBaseChanged mode disagrees");
        }
        None => {}
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let cfg = config(&mut inp);
    let mut a = LocalApic::new(cfg);
    let mut now = start_time(&mut inp);
    if inp.below(4) != 0 {
        a.mmio_write(now, 0xF0, &0x1FFu32.to_le_bytes());
    }
    a.advance(now);
    check::apic(&a, now, Checks::ALL);
    let mut steps = 0;
    while !inp.is_empty() && steps < 512 {
        let msg = step(&mut a, &mut now, &mut inp);
        check_message(&a, &msg);
        a.advance(now);
        check::apic(&a, now, Checks::ALL);
        steps += 1;
    }
}
