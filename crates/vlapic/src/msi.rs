//! Message signalled interrupts (SDM 11.11 "Message Signalled Interrupts")
//! and IOAPIC redirection entries, decoded into the ([`Destination`],
//! [`Interrupt`]) pair the local APICs (and [`crate::fabric`]) route.
//!
//! ## Address (SDM Figure 11-24)
//!
//! | bits  | field |
//! |-------|-------|
//! | 31:20 | `0xFEE` |
//! | 19:12 | destination ID bits 7:0 |
//! | 11:5  | *extended destination ID*: destination bits 14:8 (see below) |
//! | 3     | RH, redirection hint |
//! | 2     | DM, destination mode (1 = logical) |
//!
//! ## Data (SDM Figure 11-25)
//!
//! | bits  | field |
//! |-------|-------|
//! | 15    | trigger mode (1 = level) |
//! | 14    | level (1 = assert; only meaningful for level-triggered) |
//! | 10:8  | delivery mode |
//! | 7:0   | vector |
//!
//! ## Destinations above 255
//!
//! An x2APIC guest without interrupt remapping can only reach APIC IDs
//! above 255 through the *extended destination ID* that Linux, QEMU and
//! KVM agree on (`KVM_FEATURE_MSI_EXT_DEST_ID`): address bits 11:5, which
//! are reserved on hardware, carry destination bits 14:8, for IDs up to
//! 32767. A message whose destination is above 255 is routed in x2APIC
//! format (32-bit destination, broadcast only `0xFFFF_FFFF`); one at or
//! below 255 is an xAPIC-format message, where `0xFF` is the broadcast.
//! [`MsiOptions::address_high_destination`] optionally also accepts KVM's
//! `KVM_X2APIC_API_USE_32BIT_IDS` form (destination bits 31:8 in address
//! bits 63:40, i.e. the high address word's bits 31:8).
//!
//! ```
//! use vlapic::msi::{decode, encode};
//! use vlapic::{DeliveryMode, Destination, Interrupt, TriggerMode};
//!
//! // Vector 0x41, fixed, edge, physical destination 3.
//! let m = decode(0xFEE0_3000, 0x0041).unwrap();
//! assert_eq!(m.destination, Destination::physical(3));
//! assert_eq!(m.interrupt, Interrupt::fixed(0x41));
//!
//! // x2APIC ID 1000 needs the extended destination ID (bits 11:5).
//! let (addr, data) = encode(&Destination::physical_x2apic(1000), &Interrupt::fixed(0x30), false).unwrap();
//! assert_eq!(addr, 0xFEE0_0000 | (1000 & 0xFF) << 12 | (1000 >> 8) << 5);
//! let back = decode(addr, data).unwrap();
//! assert_eq!(back.destination, Destination::physical_x2apic(1000));
//! assert_eq!(back.interrupt.delivery_mode, DeliveryMode::Fixed);
//! assert_eq!(back.interrupt.trigger, TriggerMode::Edge);
//! ```

use crate::ipi::{Destination, Interrupt};
use crate::regs::{DeliveryMode, DestinationMode, Shorthand, TriggerMode};

/// The interrupt window MSIs are written to: address bits 31:20 = `0xFEE`.
pub const MSI_ADDRESS_BASE: u64 = 0xFEE0_0000;
/// Mask of the fixed part of the address (bits 31:20).
pub const MSI_ADDRESS_MASK: u64 = 0xFFF0_0000;
/// Address bit 3: redirection hint.
pub const MSI_ADDR_REDIRECTION_HINT: u64 = 1 << 3;
/// Address bit 2: destination mode (1 = logical).
pub const MSI_ADDR_DEST_MODE_LOGICAL: u64 = 1 << 2;
/// Data bit 14: level (assert).
pub const MSI_DATA_LEVEL_ASSERT: u32 = 1 << 14;
/// Data bit 15: trigger mode (1 = level).
pub const MSI_DATA_TRIGGER_LEVEL: u32 = 1 << 15;
/// Highest destination the extended destination ID (address bits 11:5) can
/// carry.
pub const MSI_MAX_EXTENDED_DESTINATION: u32 = 0x7FFF;

/// Why an MSI could not be decoded or encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MsiError {
    /// The address is not in the `0xFEExxxxx` interrupt window.
    NotInterruptAddress(u64),
    /// Encoding: the destination does not fit an MSI (above 32767, or the
    /// x2APIC-format ID 255, which an MSI would turn into a broadcast).
    DestinationNotEncodable(u32),
    /// Encoding: MSIs carry no shorthand.
    Shorthand,
}

impl core::fmt::Display for MsiError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MsiError::NotInterruptAddress(a) => {
                write!(f, "MSI address {a:#x} is not in the 0xFEExxxxx window")
            }
            MsiError::DestinationNotEncodable(d) => {
                write!(f, "destination {d:#x} cannot be encoded in an MSI")
            }
            MsiError::Shorthand => f.write_str("MSIs carry no destination shorthand"),
        }
    }
}

/// How to read the destination of an MSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MsiOptions {
    /// Address bits 11:5 are destination bits 14:8 (the extended
    /// destination ID). On by default; turn off to treat those bits as
    /// reserved (ignored), as hardware without the paravirtual feature does.
    pub extended_destination_id: bool,
    /// Address bits 63:40 (bits 31:8 of the high address word) are
    /// destination bits 31:8, as with KVM's `KVM_X2APIC_API_USE_32BIT_IDS`.
    /// Off by default: then any high address bit makes the address invalid.
    pub address_high_destination: bool,
}

impl Default for MsiOptions {
    fn default() -> Self {
        MsiOptions {
            extended_destination_id: true,
            address_high_destination: false,
        }
    }
}

/// A decoded MSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodedMsi {
    /// Where it goes (never a shorthand).
    pub destination: Destination,
    /// What it delivers.
    pub interrupt: Interrupt,
    /// Redirection hint (address bit 3): the message may go to one of the
    /// destinations chosen by priority. The fabric treats RH=1 like the
    /// lowest-priority delivery mode (as KVM does).
    pub redirection_hint: bool,
}

impl DecodedMsi {
    /// Whether the message is delivered to exactly one of its destinations,
    /// chosen by lowest priority: lowest-priority delivery mode, or the
    /// redirection hint on a Fixed message.
    pub fn lowest_priority(&self) -> bool {
        self.interrupt.delivery_mode == DeliveryMode::LowestPriority
            || (self.redirection_hint && self.interrupt.delivery_mode == DeliveryMode::Fixed)
    }
}

/// Decodes an MSI with the default [`MsiOptions`] (extended destination ID
/// on).
pub fn decode(address: u64, data: u32) -> Result<DecodedMsi, MsiError> {
    decode_with(address, data, MsiOptions::default())
}

/// Decodes an MSI address/data pair.
///
/// The level bit is honoured only for level-triggered messages (an
/// edge-triggered message always asserts), so a level-triggered INIT with
/// level 0 is the no-op INIT de-assert. Data bits 31:16 and 13:11 are
/// ignored.
pub fn decode_with(address: u64, data: u32, opts: MsiOptions) -> Result<DecodedMsi, MsiError> {
    let high = address >> 32;
    if address & MSI_ADDRESS_MASK != MSI_ADDRESS_BASE
        || (high != 0 && !opts.address_high_destination)
    {
        return Err(MsiError::NotInterruptAddress(address));
    }
    let mut dest = ((address >> 12) & 0xFF) as u32;
    if opts.extended_destination_id {
        dest |= (((address >> 5) & 0x7F) as u32) << 8;
    }
    if opts.address_high_destination {
        dest |= (high as u32) & 0xFFFF_FF00;
    }
    let destination = Destination {
        shorthand: Shorthand::None,
        mode: if address & MSI_ADDR_DEST_MODE_LOGICAL != 0 {
            DestinationMode::Logical
        } else {
            DestinationMode::Physical
        },
        id: dest,
        x2apic_format: dest > 0xFF,
    };
    let level = data & MSI_DATA_TRIGGER_LEVEL != 0;
    let interrupt = Interrupt {
        vector: data as u8,
        delivery_mode: DeliveryMode::from_bits((data >> 8) as u8),
        trigger: TriggerMode::from_bit(level),
        assert: !level || data & MSI_DATA_LEVEL_ASSERT != 0,
    };
    Ok(DecodedMsi {
        destination,
        interrupt,
        redirection_hint: address & MSI_ADDR_REDIRECTION_HINT != 0,
    })
}

/// Encodes a destination and interrupt as an MSI `(address, data)` pair,
/// using the extended destination ID for destinations 256..=32767.
///
/// Errors: a shorthand; a destination above 32767; the x2APIC-format ID
/// 255 (it would decode as the xAPIC broadcast). The x2APIC broadcast
/// `0xFFFF_FFFF` is encoded as the xAPIC broadcast `0xFF`, which reaches
/// the same APICs.
pub fn encode(
    destination: &Destination,
    interrupt: &Interrupt,
    redirection_hint: bool,
) -> Result<(u64, u32), MsiError> {
    if destination.shorthand != Shorthand::None {
        return Err(MsiError::Shorthand);
    }
    let id = if destination.x2apic_format {
        match destination.id {
            crate::ipi::X2APIC_BROADCAST => 0xFF,
            0xFF => return Err(MsiError::DestinationNotEncodable(0xFF)),
            id if id > MSI_MAX_EXTENDED_DESTINATION => {
                return Err(MsiError::DestinationNotEncodable(id))
            }
            id => id,
        }
    } else {
        destination.id & 0xFF
    };
    let mut address = MSI_ADDRESS_BASE | ((id as u64 & 0xFF) << 12) | ((id as u64 >> 8) << 5);
    if destination.mode == DestinationMode::Logical {
        address |= MSI_ADDR_DEST_MODE_LOGICAL;
    }
    if redirection_hint {
        address |= MSI_ADDR_REDIRECTION_HINT;
    }
    let mut data = interrupt.vector as u32 | (interrupt.delivery_mode.into_bits() as u32) << 8;
    if interrupt.trigger == TriggerMode::Level {
        data |= MSI_DATA_TRIGGER_LEVEL;
        if interrupt.assert {
            data |= MSI_DATA_LEVEL_ASSERT;
        }
    } else {
        data |= MSI_DATA_LEVEL_ASSERT;
    }
    Ok((address, data))
}

/// One IOAPIC redirection table entry (82093AA datasheet, 3.2.4), decoded
/// into the message the IOAPIC sends when its pin is asserted.
///
/// Layout: vector 7:0, delivery mode 10:8, destination mode 11 (logical),
/// delivery status 12, polarity 13 (active low), remote IRR 14, trigger 15
/// (level), mask 16, destination 63:56, and the extended destination ID in
/// bits 55:49 (destination bits 14:8, the same paravirtual extension as
/// the MSI address bits 11:5).
///
/// ```
/// use vlapic::msi::IoApicRedirection;
/// use vlapic::{Destination, Interrupt};
///
/// // Pin routed to APIC 2, vector 0x61, level triggered, unmasked.
/// let rte = IoApicRedirection::from_bits(0x0200_0000_0000_8061);
/// let (dest, irq) = rte.message().unwrap();
/// assert_eq!(dest, Destination::physical(2));
/// assert_eq!(irq, Interrupt::fixed_level(0x61));
/// assert!(IoApicRedirection::from_bits(0x0001_0061).message().is_none()); // masked
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IoApicRedirection(pub u64);

impl IoApicRedirection {
    /// Wraps a raw 64-bit entry.
    pub const fn from_bits(bits: u64) -> Self {
        IoApicRedirection(bits)
    }

    /// The raw entry.
    pub const fn into_bits(self) -> u64 {
        self.0
    }

    /// Vector (bits 7:0).
    pub const fn vector(self) -> u8 {
        self.0 as u8
    }

    /// Delivery mode (bits 10:8).
    pub const fn delivery_mode(self) -> DeliveryMode {
        DeliveryMode::from_bits((self.0 >> 8) as u8)
    }

    /// Logical destination mode (bit 11).
    pub const fn logical(self) -> bool {
        self.0 & (1 << 11) != 0
    }

    /// Active-low polarity (bit 13).
    pub const fn active_low(self) -> bool {
        self.0 & (1 << 13) != 0
    }

    /// Remote IRR (bit 14): a level-triggered interrupt was accepted and
    /// its EOI has not come back yet.
    pub const fn remote_irr(self) -> bool {
        self.0 & (1 << 14) != 0
    }

    /// Level triggered (bit 15).
    pub const fn level_triggered(self) -> bool {
        self.0 & (1 << 15) != 0
    }

    /// Masked (bit 16).
    pub const fn masked(self) -> bool {
        self.0 & (1 << 16) != 0
    }

    /// Destination: bits 63:56, plus the extended destination ID in bits
    /// 55:49 as destination bits 14:8.
    pub const fn destination_id(self) -> u32 {
        ((self.0 >> 56) as u32 & 0xFF) | (((self.0 >> 49) as u32 & 0x7F) << 8)
    }

    /// The message the IOAPIC sends for an asserted pin, or `None` when the
    /// entry is masked. The caller keeps the remote-IRR protocol: for a
    /// level-triggered entry it sets remote IRR when it sends and clears it
    /// on the matching EOI ([`crate::Message::Eoi`]), and does not send again
    /// while remote IRR is set.
    pub fn message(self) -> Option<(Destination, Interrupt)> {
        if self.masked() {
            return None;
        }
        Some(ioapic_message(
            self.destination_id(),
            self.logical(),
            self.vector(),
            self.delivery_mode(),
            self.level_triggered(),
        ))
    }
}

/// The message an IOAPIC (or any interrupt controller that speaks the
/// APIC bus protocol) sends: `dest` is physical or logical, above 255 in
/// x2APIC format; a level-triggered Fixed message sets the target's TMR bit
/// so that its EOI is broadcast back.
///
/// ```
/// use vlapic::msi::ioapic_message;
/// use vlapic::{DeliveryMode, TriggerMode};
/// let (dest, irq) = ioapic_message(0x21, true, 0x70, DeliveryMode::LowestPriority, true);
/// assert_eq!(dest.id, 0x21);
/// assert_eq!(irq.trigger, TriggerMode::Level);
/// assert!(irq.assert);
/// ```
pub const fn ioapic_message(
    dest: u32,
    logical: bool,
    vector: u8,
    delivery_mode: DeliveryMode,
    level_triggered: bool,
) -> (Destination, Interrupt) {
    (
        Destination {
            shorthand: Shorthand::None,
            mode: if logical {
                DestinationMode::Logical
            } else {
                DestinationMode::Physical
            },
            id: dest,
            x2apic_format: dest > 0xFF,
        },
        Interrupt {
            vector,
            delivery_mode,
            trigger: TriggerMode::from_bit(level_triggered),
            assert: true,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_field() {
        // Logical, RH, dest 0x0F, level-triggered assert, lowest priority,
        // vector 0x99.
        let m = decode(0xFEE0_F00C, 0xC199).unwrap();
        assert_eq!(m.destination, Destination::logical(0x0F, false));
        assert!(m.redirection_hint);
        assert!(m.lowest_priority());
        assert_eq!(m.interrupt.vector, 0x99);
        assert_eq!(m.interrupt.delivery_mode, DeliveryMode::LowestPriority);
        assert_eq!(m.interrupt.trigger, TriggerMode::Level);
        assert!(m.interrupt.assert);
    }

    #[test]
    fn rejects_addresses_outside_the_window() {
        assert_eq!(
            decode(0xFED0_0000, 0x30),
            Err(MsiError::NotInterruptAddress(0xFED0_0000))
        );
        assert!(decode(0x1_FEE0_0000, 0x30).is_err());
        assert!(decode(0, 0).is_err());
    }

    #[test]
    fn extended_destination_id() {
        // dest bits 14:8 = 0x7F, 7:0 = 0xFF -> 0x7FFF (x2APIC format, not a
        // broadcast).
        let m = decode(0xFEEF_FFE0, 0x30).unwrap();
        assert_eq!(m.destination, Destination::physical_x2apic(0x7FFF));
        assert!(!m.destination.is_broadcast());
        // Turned off: the bits are ignored and 0xFF is the xAPIC broadcast.
        let opts = MsiOptions {
            extended_destination_id: false,
            ..Default::default()
        };
        let m = decode_with(0xFEEF_FFE0, 0x30, opts).unwrap();
        assert_eq!(m.destination, Destination::physical(0xFF));
        assert!(m.destination.is_broadcast());
    }

    #[test]
    fn address_high_destination() {
        let opts = MsiOptions {
            extended_destination_id: false,
            address_high_destination: true,
        };
        let m = decode_with(0x0001_2300_FEE4_5000, 0x30, opts).unwrap();
        assert_eq!(m.destination.id, 0x0001_2345);
        assert!(m.destination.x2apic_format);
    }

    #[test]
    fn edge_ignores_level_bit_and_level_deassert_is_kept() {
        let m = decode(0xFEE0_0000, 0x0030).unwrap();
        assert!(m.interrupt.assert);
        let m = decode(0xFEE0_0000, 0x8500).unwrap();
        assert!(m.interrupt.is_init_deassert());
    }

    #[test]
    fn encode_round_trips_and_refuses_the_unencodable() {
        for id in [0u32, 1, 0xFE, 0x100, 0x1234, 0x7FFF] {
            let d = Destination {
                x2apic_format: id > 0xFF,
                ..Destination::physical_x2apic(id)
            };
            let (a, data) = encode(&d, &Interrupt::fixed_level(0x55), true).unwrap();
            let m = decode(a, data).unwrap();
            assert_eq!(m.destination, d);
            assert_eq!(m.interrupt, Interrupt::fixed_level(0x55));
            assert!(m.redirection_hint);
        }
        assert_eq!(
            encode(
                &Destination::physical_x2apic(0x8000),
                &Interrupt::fixed(0x30),
                false
            ),
            Err(MsiError::DestinationNotEncodable(0x8000))
        );
        assert!(encode(
            &Destination::physical_x2apic(0xFF),
            &Interrupt::fixed(0x30),
            false
        )
        .is_err());
        let mut sh = Destination::physical(1);
        sh.shorthand = Shorthand::AllIncludingSelf;
        assert_eq!(
            encode(&sh, &Interrupt::fixed(0x30), false),
            Err(MsiError::Shorthand)
        );
        // The x2APIC broadcast becomes the xAPIC broadcast.
        let (a, _) = encode(
            &Destination::physical_x2apic(crate::ipi::X2APIC_BROADCAST),
            &Interrupt::fixed(0x30),
            false,
        )
        .unwrap();
        assert!(decode(a, 0x30).unwrap().destination.is_broadcast());
    }

    #[test]
    fn ioapic_rte_with_extended_destination() {
        // dest 7:0 = 0x34 in 63:56, bits 14:8 = 0x12 in 55:49.
        let rte = IoApicRedirection::from_bits((0x34u64 << 56) | (0x12u64 << 49) | 0x8000 | 0x40);
        assert_eq!(rte.destination_id(), 0x1234);
        let (d, i) = rte.message().unwrap();
        assert_eq!(d, Destination::physical_x2apic(0x1234));
        assert_eq!(i, Interrupt::fixed_level(0x40));
        assert!(rte.level_triggered() && !rte.logical() && !rte.masked());
    }
}
