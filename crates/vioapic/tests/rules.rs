//! Every register and rule of the I/O APIC, and the level-triggered path
//! end to end with `vlapic` local APICs.

use proptest::prelude::*;
use vioapic::*;
use vlapic::{ApicConfig, DeliveryMode, DestinationMode, LocalApic, Message, TriggerMode};

fn io() -> IoApic {
    IoApic::new(IoApicConfig::default())
}

fn write_reg(io: &mut IoApic, index: u8, value: u32, out: &mut Vec<IoApicMessage>) {
    io.mmio_write(IOREGSEL, &[index], &mut |m| out.push(m));
    io.mmio_write(IOWIN, &value.to_le_bytes(), &mut |m| out.push(m));
}

fn read_reg(io: &mut IoApic, index: u8) -> u32 {
    io.mmio_write(IOREGSEL, &[index], &mut |_| panic!("no message on select"));
    let mut b = [0u8; 4];
    io.mmio_read(IOWIN, &mut b);
    u32::from_le_bytes(b)
}

fn route(io: &mut IoApic, pin: u8, entry: u64, out: &mut Vec<IoApicMessage>) {
    write_reg(io, 0x11 + 2 * pin, (entry >> 32) as u32, out);
    write_reg(io, 0x10 + 2 * pin, entry as u32, out);
}

const LEVEL: u64 = 1 << 15;
const MASKED: u64 = 1 << 16;
const LOW: u64 = 1 << 13;

#[test]
fn id_register_bits_27_24_are_writable() {
    let mut io = io();
    let mut out = vec![];
    write_reg(&mut io, REG_ID, 0xFFFF_FFFF, &mut out);
    assert_eq!(read_reg(&mut io, REG_ID), 0x0F00_0000);
    assert_eq!(read_reg(&mut io, REG_ARBITRATION), 0x0F00_0000);
}

#[test]
fn version_register_reports_version_and_max_entry() {
    let mut v20 = io();
    assert_eq!(read_reg(&mut v20, REG_VERSION), 0x0017_0020);
    let mut v11 = IoApic::new(IoApicConfig {
        version: IoApicVersion::V11,
        pins: 8,
        id: 2,
    });
    assert_eq!(read_reg(&mut v11, REG_VERSION), 0x0007_0011);
    let mut out = vec![];
    write_reg(&mut v11, REG_VERSION, 0, &mut out);
    assert_eq!(read_reg(&mut v11, REG_VERSION), 0x0007_0011, "read-only");
}

#[test]
fn reset_masks_every_entry() {
    let mut io = io();
    for pin in 0..24u8 {
        assert_eq!(read_reg(&mut io, 0x10 + 2 * pin), 0x0001_0000);
        assert_eq!(read_reg(&mut io, 0x11 + 2 * pin), 0);
    }
}

#[test]
fn redirection_entry_fields_and_read_only_bits() {
    let mut io = io();
    let mut out = vec![];
    route(&mut io, 3, 0xFFFF_FFFF_FFFF_FFFF, &mut out);
    let e = (read_reg(&mut io, 0x17) as u64) << 32 | read_reg(&mut io, 0x16) as u64;
    assert_eq!(e, RTE_WRITABLE, "delivery status and reserved bits read 0");
    let r = io.redirection(3).unwrap();
    assert_eq!(r.vector(), 0xFF);
    assert_eq!(r.delivery_mode(), DeliveryMode::ExtInt);
    assert!(r.logical() && r.active_low() && r.level_triggered() && r.masked());
    assert!(!r.remote_irr());
    assert_eq!(r.destination_id(), 0x7FFF);
}

#[test]
fn registers_beyond_the_table_read_zero_and_are_counted() {
    let mut io = io();
    assert_eq!(read_reg(&mut io, 0x10 + 48), 0);
    assert_eq!(read_reg(&mut io, 0x03), 0);
    assert_eq!(io.stats().bad_register, 2);
}

#[test]
fn odd_mmio_accesses_are_defined() {
    let mut io = io();
    let mut out = vec![];
    io.mmio_write(IOWIN, &[1, 2], &mut |m| out.push(m));
    io.mmio_write(0x20, &[1, 2, 3, 4], &mut |m| out.push(m));
    io.mmio_write(IOWIN + 1, &[1, 2, 3, 4], &mut |m| out.push(m));
    let mut b = [0xAAu8; 8];
    io.mmio_read(IOWIN, &mut b);
    assert_eq!(b, [0; 8]);
    assert_eq!(io.stats().bad_access, 4);
    // A byte read of IOREGSEL works.
    io.mmio_write(IOREGSEL, &[0x12], &mut |m| out.push(m));
    let mut one = [0u8; 1];
    io.mmio_read(IOREGSEL, &mut one);
    assert_eq!(one[0], 0x12);
    assert!(out.is_empty());
}

#[test]
fn edge_pin_sends_on_rising_edge_only() {
    let mut io = io();
    let mut out = vec![];
    route(&mut io, 1, 0x0300_0000_0000_0031, &mut out);
    io.set_pin(1, true, &mut |m| out.push(m));
    io.set_pin(1, true, &mut |m| out.push(m));
    io.set_pin(1, false, &mut |m| out.push(m));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].pin, 1);
    assert_eq!(out[0].destination.id, 3);
    assert_eq!(out[0].destination.mode, DestinationMode::Physical);
    assert_eq!(out[0].interrupt.trigger, TriggerMode::Edge);
    io.pulse(1, &mut |m| out.push(m));
    assert_eq!(out.len(), 2);
}

#[test]
fn active_low_polarity_inverts_the_line() {
    let mut io = io();
    let mut out = vec![];
    io.set_pin(2, true, &mut |m| out.push(m)); // idle high
    route(&mut io, 2, LOW | 0x32, &mut out);
    io.set_pin(2, false, &mut |m| out.push(m));
    assert_eq!(out.len(), 1);
    assert!(io.asserted(2));
}

#[test]
fn masked_edge_is_lost() {
    let mut io = io();
    let mut out = vec![];
    route(&mut io, 5, MASKED | 0x35, &mut out);
    io.pulse(5, &mut |m| out.push(m));
    route(&mut io, 5, 0x35, &mut out);
    assert!(out.is_empty());
    assert_eq!(io.stats().masked_edges, 1);
}

#[test]
fn level_pin_sets_remote_irr_and_waits_for_eoi() {
    let mut io = io();
    let mut out = vec![];
    route(&mut io, 9, LEVEL | 0x49, &mut out);
    io.set_pin(9, true, &mut |m| out.push(m));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].interrupt.trigger, TriggerMode::Level);
    assert!(io.redirection(9).unwrap().remote_irr());
    assert_eq!(read_reg(&mut io, 0x22) & (1 << 14), 1 << 14);
    // Still asserted, remote IRR set: nothing more.
    io.set_pin(9, true, &mut |m| out.push(m));
    assert_eq!(out.len(), 1);
    // A guest write of the entry cannot clear remote IRR.
    write_reg(&mut io, 0x22, (LEVEL | 0x49) as u32, &mut out);
    assert!(io.redirection(9).unwrap().remote_irr());
    // EOI of another vector: nothing.
    io.eoi(0x48, &mut |m| out.push(m));
    assert_eq!(out.len(), 1);
    // EOI while still asserted: re-delivery.
    io.eoi(0x49, &mut |m| out.push(m));
    assert_eq!(out.len(), 2);
    io.set_pin(9, false, &mut |m| out.push(m));
    io.eoi(0x49, &mut |m| out.push(m));
    assert_eq!(out.len(), 2);
    assert!(!io.redirection(9).unwrap().remote_irr());
}

#[test]
fn level_programmed_nmi_is_edge_sensitive() {
    // 82093AA 3.2.4: NMI, SMI, INIT and ExtINT are edge-sensitive whatever
    // the trigger bit says: no remote IRR, so no pin stuck without an EOI.
    let mut io = io();
    let mut out = vec![];
    route(&mut io, 6, LEVEL | (4 << 8), &mut out);
    io.set_pin(6, true, &mut |m| out.push(m));
    io.set_pin(6, true, &mut |m| out.push(m));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].interrupt.delivery_mode, DeliveryMode::Nmi);
    assert!(!io.redirection(6).unwrap().remote_irr());
    io.set_pin(6, false, &mut |m| out.push(m));
    io.set_pin(6, true, &mut |m| out.push(m));
    assert_eq!(out.len(), 2, "the next rising edge delivers again");
}

#[test]
fn unmasking_with_pending_level_delivers() {
    let mut io = io();
    let mut out = vec![];
    route(&mut io, 7, LEVEL | MASKED | 0x47, &mut out);
    io.set_pin(7, true, &mut |m| out.push(m));
    assert!(out.is_empty());
    route(&mut io, 7, LEVEL | 0x47, &mut out);
    assert_eq!(out.len(), 1);
}

#[test]
fn switching_to_edge_clears_remote_irr() {
    let mut io = io();
    let mut out = vec![];
    route(&mut io, 7, LEVEL | 0x47, &mut out);
    io.set_pin(7, true, &mut |m| out.push(m));
    route(&mut io, 7, 0x47, &mut out);
    assert!(!io.redirection(7).unwrap().remote_irr());
}

#[test]
fn eoi_register_only_in_version_0x20() {
    let mut v20 = io();
    let mut out = vec![];
    route(&mut v20, 0, LEVEL | 0x60, &mut out);
    v20.set_pin(0, true, &mut |m| out.push(m));
    v20.mmio_write(IOEOI, &0x60u32.to_le_bytes(), &mut |m| out.push(m));
    assert_eq!(out.len(), 2, "EOI register re-delivers the asserted level");
    let mut v11 = IoApic::new(IoApicConfig {
        version: IoApicVersion::V11,
        ..IoApicConfig::default()
    });
    let mut out = vec![];
    route(&mut v11, 0, LEVEL | 0x60, &mut out);
    v11.set_pin(0, true, &mut |m| out.push(m));
    v11.mmio_write(IOEOI, &0x60u32.to_le_bytes(), &mut |m| out.push(m));
    assert_eq!(out.len(), 1);
    assert!(v11.redirection(0).unwrap().remote_irr());
    assert_eq!(v11.stats().eoi_register_absent, 1);
}

#[test]
fn several_simultaneous_edges_each_send() {
    let mut io = io();
    let mut out = vec![];
    for pin in 0..4u8 {
        route(&mut io, pin, 0x50 + pin as u64, &mut out);
    }
    for pin in 0..4u8 {
        io.set_pin(pin, true, &mut |m| out.push(m));
    }
    let vectors: Vec<u8> = out.iter().map(|m| m.interrupt.vector).collect();
    assert_eq!(vectors, vec![0x50, 0x51, 0x52, 0x53]);
}

#[test]
fn every_destination_mode_and_extended_id() {
    let mut io = io();
    let mut out = vec![];
    // Logical, lowest priority.
    route(&mut io, 0, 0x0F00_0000_0000_0930, &mut out);
    // Physical, extended destination ID: APIC 0x1234 -> bits 55:49 = 0x12, 63:56 = 0x34.
    route(
        &mut io,
        1,
        (0x34u64 << 56) | (0x12u64 << 49) | 0x31,
        &mut out,
    );
    io.set_pin(0, true, &mut |m| out.push(m));
    io.set_pin(1, true, &mut |m| out.push(m));
    assert_eq!(out[0].destination.mode, DestinationMode::Logical);
    assert_eq!(out[0].interrupt.delivery_mode, DeliveryMode::LowestPriority);
    assert_eq!(out[0].destination.id, 0x0F);
    assert_eq!(out[1].destination.id, 0x1234);
    assert!(out[1].destination.x2apic_format);
}

#[test]
fn save_restore_round_trip_and_validation() {
    let mut io = io();
    let mut out = vec![];
    route(&mut io, 9, LEVEL | 0x49, &mut out);
    io.set_pin(9, true, &mut |m| out.push(m));
    let s = io.save();
    let mut other = IoApic::new(IoApicConfig::default());
    other.restore(&s).unwrap();
    assert_eq!(other.save(), s);
    // It continues where it was: the EOI re-delivers.
    other.eoi(0x49, &mut |m| out.push(m));
    assert_eq!(out.len(), 2);
    let mut bad = s;
    bad.redirection[9] &= !LEVEL; // remote IRR on an edge entry
    assert_eq!(other.restore(&bad), Err(IoApicStateError::Redirection(9)));
    let mut bad = s;
    bad.levels = 1 << 30;
    assert!(matches!(
        other.restore(&bad),
        Err(IoApicStateError::Levels(_))
    ));
    let mut bad = s;
    bad.version = 7;
    assert!(other.restore(&bad).is_err());
    assert_eq!(other.save(), s, "failed restores changed nothing");
}

// ---- End to end with vlapic -----------------------------------------------

fn lapic(id: u32, seoi: bool) -> LocalApic {
    let mut a = LocalApic::new(
        ApicConfig::new(id)
            .with_bsp(id == 0)
            .with_suppress_eoi_broadcast(seoi),
    );
    a.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
    a
}

fn deliver(apics: &mut [LocalApic], m: IoApicMessage) {
    for a in apics.iter_mut() {
        if m.destination.matches(&a.identity()) {
            a.accept(m.interrupt);
        }
    }
}

#[test]
fn level_interrupt_round_trip_through_lapic_eoi_broadcast() {
    let mut io = io();
    let mut apics = vec![lapic(0, false), lapic(1, false)];
    let mut out = vec![];
    route(&mut io, 10, (1u64 << 56) | LEVEL | 0x6A, &mut out);
    io.set_pin(10, true, &mut |m| out.push(m));
    for m in out.drain(..) {
        deliver(&mut apics, m);
    }
    assert!(apics[1].interrupt_registers().tmr.contains(0x6A));
    assert_eq!(apics[1].poll(0).interrupt, Some(0x6A));
    assert_eq!(apics[1].acknowledge(), 0x6A);
    // The device is still asserting; the OS EOIs: the broadcast reaches the
    // IOAPIC, which re-delivers.
    let msg = apics[1].mmio_write(0, 0xB0, &[0; 4]);
    assert_eq!(msg, Some(Message::Eoi { vector: 0x6A }));
    io.eoi(0x6A, &mut |m| out.push(m));
    assert_eq!(out.len(), 1, "retrigger after EOI");
    for m in out.drain(..) {
        deliver(&mut apics, m);
    }
    assert_eq!(apics[1].acknowledge(), 0x6A);
    // Now the device deasserts before the EOI: no more.
    io.set_pin(10, false, &mut |m| out.push(m));
    if let Some(Message::Eoi { vector }) = apics[1].mmio_write(0, 0xB0, &[0; 4]) {
        io.eoi(vector, &mut |m| out.push(m));
    }
    assert!(out.is_empty());
    assert!(!io.redirection(10).unwrap().remote_irr());
    assert!(
        apics[0].interrupt_registers().irr.is_empty(),
        "APIC 0 not targeted"
    );
}

#[test]
fn directed_eoi_with_suppress_eoi_broadcast() {
    let mut io = io();
    let mut apics = vec![lapic(0, true)];
    apics[0].mmio_write(0, 0xF0, &0x11FFu32.to_le_bytes()); // SVR bit 12
    let mut out = vec![];
    route(&mut io, 3, LEVEL | 0x73, &mut out);
    io.set_pin(3, true, &mut |m| out.push(m));
    for m in out.drain(..) {
        deliver(&mut apics, m);
    }
    assert_eq!(apics[0].acknowledge(), 0x73);
    assert_eq!(apics[0].mmio_write(0, 0xB0, &[0; 4]), None, "no broadcast");
    assert!(io.redirection(3).unwrap().remote_irr(), "still waiting");
    io.set_pin(3, false, &mut |m| out.push(m));
    // The OS writes the IOAPIC's EOI register itself.
    io.mmio_write(IOEOI, &0x73u32.to_le_bytes(), &mut |m| out.push(m));
    assert!(!io.redirection(3).unwrap().remote_irr());
    assert!(out.is_empty());
}

#[test]
fn lowest_priority_through_the_fabric_message_shape() {
    let mut io = io();
    let mut out = vec![];
    route(
        &mut io,
        0,
        (0x03u64 << 56) | (1 << 11) | (1 << 8) | 0x40,
        &mut out,
    );
    io.pulse(0, &mut |m| out.push(m));
    assert_eq!(out[0].interrupt.delivery_mode, DeliveryMode::LowestPriority);
    assert_eq!(out[0].destination.mode, DestinationMode::Logical);
}

// ---- Property: remote IRR / EOI pairing -----------------------------------

#[derive(Debug, Clone)]
enum Op {
    Pin(u8, bool),
    Eoi(u8),
    Route(u8, u8, bool, bool),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4, any::<bool>()).prop_map(|(p, l)| Op::Pin(p, l)),
        (0x40u8..0x44).prop_map(Op::Eoi),
        (0u8..4, 0x40u8..0x44, any::<bool>(), any::<bool>())
            .prop_map(|(p, v, l, m)| Op::Route(p, v, l, m)),
    ]
}

proptest! {
    /// Remote IRR is set exactly when a level message was sent and its EOI
    /// has not come back; a level entry never has two messages outstanding;
    /// an asserted, unmasked level entry without remote IRR does not exist
    /// after any operation.
    #[test]
    fn remote_irr_pairs_with_eoi(ops in prop::collection::vec(op(), 1..100)) {
        let mut io = io();
        let mut outstanding = [false; 4];
        for op in ops {
            let mut sent = vec![];
            match op {
                Op::Pin(p, l) => io.set_pin(p, l, &mut |m| sent.push(m)),
                Op::Eoi(v) => {
                    for p in 0..4 {
                        let e = io.redirection(p).unwrap();
                        if e.vector() == v && e.remote_irr() {
                            outstanding[p as usize] = false;
                        }
                    }
                    io.eoi(v, &mut |m| sent.push(m));
                }
                Op::Route(p, v, l, m) => {
                    let e = (v as u64) | if l { LEVEL } else { 0 } | if m { MASKED } else { 0 };
                    write_reg(&mut io, 0x10 + 2 * p, e as u32, &mut sent);
                    if !l { outstanding[p as usize] = false; }
                }
            }
            for m in &sent {
                if m.interrupt.trigger == TriggerMode::Level {
                    prop_assert!(!outstanding[m.pin as usize], "two level messages outstanding");
                    outstanding[m.pin as usize] = true;
                }
            }
            for p in 0..4u8 {
                let e = io.redirection(p).unwrap();
                if e.level_triggered() {
                    prop_assert_eq!(e.remote_irr(), outstanding[p as usize]);
                    prop_assert!(!(io.asserted(p) && !e.masked() && !e.remote_irr()));
                } else {
                    prop_assert!(!e.remote_irr());
                }
            }
        }
    }
}
