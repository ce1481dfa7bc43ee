//! Target `ioapic`: a `vioapic::IoApic` (random version, pin count, ID)
//! driven by arbitrary MMIO accesses (any offset and size), register
//! writes, pin levels and pulses, EOIs (broadcast or the EOI register) and
//! save/restore. Checks after every step:
//!
//! - remote IRR only on level-triggered entries, and it only appears when
//!   a level message for that pin was sent in the same step;
//! - no lost level interrupt: an asserted, unmasked level entry always has
//!   remote IRR set (it was sent);
//! - every message comes from an unmasked entry of an existing pin and
//!   matches that entry (`IoApicRedirection::message`); a level message
//!   sets remote IRR; at most one message per pin per step;
//! - redirection entries read back as written (writable bits) through
//!   IOWIN; the version register is right;
//! - save -> restore -> save is the identity; arbitrary states are either
//!   refused without change or restored exactly.

use super::input::Input;
use vioapic::{IoApic, IoApicConfig, IoApicMessage, IoApicState, IoApicVersion, MAX_PINS};
use vlapic::TriggerMode;

fn check(io: &IoApic, before: &IoApicState, sent: &[IoApicMessage]) {
    let pins = io.config().pins;
    let after = io.save();
    let mut per_pin = [0u32; MAX_PINS];
    for m in sent {
        assert!(m.pin < pins, "message from missing pin {}", m.pin);
        per_pin[m.pin as usize] += 1;
        let e = io.redirection(m.pin).unwrap();
        assert!(!e.masked(), "message from masked pin {}: {m:?}", m.pin);
        let (dest, mut irq) = e.message().expect("unmasked entry has a message");
        if !matches!(
            irq.delivery_mode,
            vlapic::DeliveryMode::Fixed | vlapic::DeliveryMode::LowestPriority
        ) {
            // NMI/SMI/INIT/ExtINT are sent edge-triggered.
            irq.trigger = TriggerMode::Edge;
        }
        assert_eq!(
            (dest, irq),
            (m.destination, m.interrupt),
            "message differs from entry"
        );
        if irq.trigger == TriggerMode::Level {
            assert!(e.remote_irr(), "level message without remote IRR");
        }
    }
    for pin in 0..pins {
        let e = io.redirection(pin).unwrap();
        assert!(
            per_pin[pin as usize] <= 1,
            "pin {pin} sent {} messages in one step",
            per_pin[pin as usize]
        );
        if e.remote_irr() {
            assert!(
                e.level_triggered(),
                "remote IRR on edge entry {pin}: {:#x}",
                e.0
            );
            let was = before.redirection[pin as usize] & (1 << 14) != 0;
            if !was {
                assert!(
                    sent.iter().any(|m| m.pin == pin),
                    "remote IRR of pin {pin} set without a message"
                );
            }
        }
        // Only Fixed / lowest-priority entries are level-sensitive (NMI,
        // SMI, INIT, ExtINT are edge-sensitive whatever the trigger bit).
        let level_sensitive = e.level_triggered()
            && matches!(
                e.delivery_mode(),
                vlapic::DeliveryMode::Fixed | vlapic::DeliveryMode::LowestPriority
            );
        if level_sensitive && !e.masked() && io.asserted(pin) {
            assert!(
                e.remote_irr(),
                "asserted level pin {pin} not sent (entry {:#x})",
                e.0
            );
        }
    }
    for pin in pins as usize..MAX_PINS {
        assert_eq!(
            after.redirection[pin], before.redirection[pin],
            "entry past the pins changed"
        );
    }
    // Save/restore identity.
    let mut other = IoApic::new(*io.config());
    other.restore(&after).expect("own state refused");
    assert_eq!(other.save(), after, "save -> restore -> save differs");
}

/// The target.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let cfg = IoApicConfig {
        id: inp.u8(),
        pins: if inp.bool() { inp.u8() } else { 24 },
        version: if inp.bool() {
            IoApicVersion::V11
        } else {
            IoApicVersion::V20
        },
    };
    let mut io = IoApic::new(cfg);
    let pins = io.config().pins;
    assert!((1..=MAX_PINS as u8).contains(&pins));
    let mut steps = 0;
    while !inp.is_empty() && steps < 512 {
        steps += 1;
        let before = io.save();
        let mut sent = Vec::new();
        let mut sink = |m: IoApicMessage| sent.push(m);
        match inp.u8() % 10 {
            0 => {
                // Select a register (any width).
                let len = inp.pick(&[1usize, 1, 2, 4, 3, 8]);
                let idx = if inp.bool() {
                    0x10 + inp.below(2 * pins as u32 + 2) as u8
                } else {
                    inp.u8()
                };
                io.mmio_write(
                    0,
                    &[idx, inp.u8(), inp.u8(), inp.u8(), 0, 0, 0, 0][..len],
                    &mut sink,
                );
            }
            1 | 2 => {
                // Write IOWIN; check the entry reads back.
                let v = match inp.below(4) {
                    0 => inp.u32(),
                    1 => {
                        inp.u8() as u32
                            | (inp.u8() as u32 & 0xE7) << 8
                            | (inp.u8() as u32 & 1) << 16
                    }
                    2 => (inp.u8() as u32) << 24,
                    _ => 0x10000,
                };
                io.mmio_write(0x10, &v.to_le_bytes(), &mut sink);
                let sel = before.ioregsel;
                if sel >= 0x10 && ((sel - 0x10) as u32) < 2 * pins as u32 {
                    let pin = (sel - 0x10) / 2;
                    let raw = io.save().redirection[pin as usize];
                    let half = if sel & 1 == 0 {
                        raw as u32
                    } else {
                        (raw >> 32) as u32
                    };
                    let writable = if sel & 1 == 0 {
                        vioapic::RTE_WRITABLE as u32
                    } else {
                        (vioapic::RTE_WRITABLE >> 32) as u32
                    };
                    assert_eq!(
                        half & writable,
                        v & writable,
                        "entry {pin} does not read back"
                    );
                    let mut rd = [0u8; 4];
                    io.mmio_read(0x10, &mut rd);
                    assert_eq!(
                        u32::from_le_bytes(rd),
                        half,
                        "IOWIN read disagrees with state"
                    );
                }
            }
            3 => {
                let off = if inp.bool() {
                    inp.u64()
                } else {
                    inp.u8() as u64
                };
                let len = inp.below(9) as usize;
                let mut buf = [0u8; 8];
                io.mmio_read(off, &mut buf[..len]);
            }
            4 => {
                let off = if inp.bool() {
                    inp.u64()
                } else {
                    inp.pick(&[0u64, 0x10, 0x40, 0x20, 0x14])
                };
                let len = inp.below(9) as usize;
                let bytes = [inp.u8(), inp.u8(), inp.u8(), inp.u8(), inp.u8(), 0, 0, 0];
                io.mmio_write(off, &bytes[..len], &mut sink);
            }
            5 | 6 => {
                let pin = if inp.below(8) == 0 {
                    inp.u8()
                } else {
                    inp.below(pins as u32) as u8
                };
                io.set_pin(pin, inp.bool(), &mut sink);
            }
            7 => {
                let pin = inp.u8() % (pins + 2);
                io.pulse(pin, &mut sink);
            }
            8 => {
                let vector = inp.u8();
                if inp.bool() {
                    io.eoi(vector, &mut sink);
                } else {
                    io.mmio_write(0x40, &(vector as u32).to_le_bytes(), &mut sink);
                }
            }
            _ => {
                // Restore an arbitrary (or slightly changed) state.
                let mut s = io.save();
                match inp.below(3) {
                    0 => {
                        s.version = if inp.below(8) == 0 {
                            inp.u32()
                        } else {
                            s.version
                        };
                        s.id = inp.u8() & if inp.bool() { 0xF } else { 0xFF };
                        s.ioregsel = inp.u8();
                        s.levels = inp.u32();
                        for e in s.redirection.iter_mut() {
                            if inp.bool() {
                                *e = inp.u64();
                            }
                        }
                    }
                    1 => {
                        let p = inp.below(MAX_PINS as u32) as usize;
                        s.redirection[p] ^= 1 << inp.below(64);
                    }
                    _ => s.levels ^= 1 << inp.below(32),
                }
                let old = io.save();
                match io.restore(&s) {
                    Ok(()) => assert_eq!(io.save(), s, "restored state differs"),
                    Err(_) => assert_eq!(io.save(), old, "refused restore changed the IOAPIC"),
                }
                // No message on restore; check the invariants only where
                // the restored state is one operations can reach.
                assert!(sent.is_empty(), "restore sent messages");
                let reachable = (0..pins).all(|p| {
                    let e = io.redirection(p).unwrap();
                    !e.level_triggered() || e.masked() || !io.asserted(p) || e.remote_irr()
                });
                if !reachable {
                    // "A pending level with remote IRR clear is sent at the
                    // next pin change, unmask or EOI": do an EOI-free unmask
                    // rewrite of every entry to get back to steady state.
                    for p in 0..pins {
                        let low = io.save().redirection[p as usize] as u32;
                        io.write_register(0x10 + 2 * p, low, &mut |_| {});
                    }
                }
                continue;
            }
        }
        check(&io, &before, &sent);
    }
}
