//! Interrupt messages, the ICR and destination matching (SDM 11.6
//! "Issuing Interrupt-Processor Interrupts", 11.6.2 "Determining IPI
//! Destination", 11.12.9 "ICR Operation in x2APIC Mode", 11.12.10 "Determining
//! IPI Destination in x2APIC Mode").

use crate::mode::ApicMode;
use crate::regs::{DeliveryMode, DestinationMode, Icr, Shorthand, TriggerMode};

/// An interrupt as a local APIC receives it: from an IPI, an MSI, an
/// IOAPIC, or its own LVT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Interrupt {
    /// Vector (Fixed, lowest priority; the start page for Start-up).
    pub vector: u8,
    /// Delivery mode.
    pub delivery_mode: DeliveryMode,
    /// Trigger mode: level-triggered Fixed interrupts set TMR and their EOI
    /// is broadcast.
    pub trigger: TriggerMode,
    /// Level: `false` only for the INIT level de-assert message.
    pub assert: bool,
}

impl Interrupt {
    /// An edge-triggered Fixed interrupt.
    pub const fn fixed(vector: u8) -> Self {
        Interrupt {
            vector,
            delivery_mode: DeliveryMode::Fixed,
            trigger: TriggerMode::Edge,
            assert: true,
        }
    }

    /// A level-triggered Fixed interrupt (as from an IOAPIC level pin).
    pub const fn fixed_level(vector: u8) -> Self {
        Interrupt {
            vector,
            delivery_mode: DeliveryMode::Fixed,
            trigger: TriggerMode::Level,
            assert: true,
        }
    }

    /// An interrupt of `delivery_mode` with no vector (NMI, SMI, INIT).
    pub const fn of_mode(delivery_mode: DeliveryMode) -> Self {
        Interrupt {
            vector: 0,
            delivery_mode,
            trigger: TriggerMode::Edge,
            assert: true,
        }
    }

    /// A start-up IPI for the page `vector << 12`.
    pub const fn startup(vector: u8) -> Self {
        Interrupt {
            vector,
            delivery_mode: DeliveryMode::StartUp,
            trigger: TriggerMode::Edge,
            assert: true,
        }
    }

    /// Whether this is the INIT level de-assert message (INIT, level 0,
    /// trigger level), which resets nothing (SDM 11.6.1).
    pub const fn is_init_deassert(&self) -> bool {
        matches!(self.delivery_mode, DeliveryMode::Init)
            && !self.assert
            && matches!(self.trigger, TriggerMode::Level)
    }

    /// Whether the vector of this message matters and is one of the
    /// illegal vectors 0-15 (Fixed and lowest priority only, SDM 11.5.3).
    pub const fn has_illegal_vector(&self) -> bool {
        matches!(
            self.delivery_mode,
            DeliveryMode::Fixed | DeliveryMode::LowestPriority
        ) && self.vector < 16
    }
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Destination {
    /// ICR shorthand (`None` for MSIs and IOAPIC messages).
    pub shorthand: Shorthand,
    /// Physical or logical.
    pub mode: DestinationMode,
    /// Destination field: 8 bits in xAPIC format, 32 bits in x2APIC format.
    pub id: u32,
    /// Whether `id` is a 32-bit x2APIC destination (sent by an x2APIC-mode
    /// APIC, or an MSI with an extended destination ID above 255).
    pub x2apic_format: bool,
}

/// xAPIC broadcast destination.
pub const XAPIC_BROADCAST: u32 = 0xFF;
/// x2APIC broadcast destination.
pub const X2APIC_BROADCAST: u32 = 0xFFFF_FFFF;

/// The addressing state of a receiving APIC: what destination matching
/// looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ApicIdentity {
    /// Mode of the receiving APIC.
    pub mode: ApicMode,
    /// xAPIC ID register bits 31:24 (writable in xAPIC mode).
    pub xapic_id: u8,
    /// x2APIC ID (the initial APIC ID).
    pub x2apic_id: u32,
    /// LDR as the guest reads it.
    pub ldr: u32,
    /// DFR (xAPIC only).
    pub dfr: u32,
}

impl Destination {
    /// A physical destination in xAPIC format.
    pub const fn physical(id: u8) -> Self {
        Destination {
            shorthand: Shorthand::None,
            mode: DestinationMode::Physical,
            id: id as u32,
            x2apic_format: false,
        }
    }

    /// A physical destination in x2APIC format.
    pub const fn physical_x2apic(id: u32) -> Self {
        Destination {
            shorthand: Shorthand::None,
            mode: DestinationMode::Physical,
            id,
            x2apic_format: true,
        }
    }

    /// A logical destination (`x2apic_format` selects 32-bit matching).
    pub const fn logical(id: u32, x2apic_format: bool) -> Self {
        Destination {
            shorthand: Shorthand::None,
            mode: DestinationMode::Logical,
            id,
            x2apic_format,
        }
    }

    /// Whether the destination field is the broadcast value of its format.
    pub const fn is_broadcast(&self) -> bool {
        if self.x2apic_format {
            self.id == X2APIC_BROADCAST
        } else {
            self.id & 0xFF == XAPIC_BROADCAST
        }
    }

    /// Whether the destination *field* selects `target` (shorthands are
    /// the router's business: it knows which APIC sent the message).
    ///
    /// Rules (SDM 11.6.2, 11.12.10):
    /// - a hardware-disabled APIC matches nothing;
    /// - the broadcast value of the format (0xFF, 0xFFFFFFFF) matches all,
    ///   in both physical and logical mode;
    /// - physical: equal ID (an xAPIC target compares its 8-bit ID, an
    ///   x2APIC target its 32-bit ID), so aliased xAPIC IDs all receive;
    /// - logical, x2APIC target: `dest[31:16] == LDR[31:16]` and
    ///   `dest[15:0] & LDR[15:0] != 0`;
    /// - logical, xAPIC target: flat model (`DFR[31:28]` = 0xF)
    ///   `LDR[31:24] & dest != 0`; cluster model (0x0) `dest[7:4]` equal to
    ///   `LDR[31:28]` or 0xF (all clusters) and `dest[3:0] & LDR[27:24] != 0`;
    ///   any other model matches nothing. A 32-bit destination above 0xFF
    ///   never matches an xAPIC target.
    pub fn matches(&self, target: &ApicIdentity) -> bool {
        if target.mode == ApicMode::Disabled {
            return false;
        }
        if self.is_broadcast() {
            return true;
        }
        let x2 = target.mode == ApicMode::X2Apic;
        match self.mode {
            DestinationMode::Physical => {
                if x2 {
                    self.id == target.x2apic_id
                } else {
                    self.id == target.xapic_id as u32
                }
            }
            DestinationMode::Logical => {
                if x2 {
                    (self.id >> 16) == (target.ldr >> 16) && (self.id & target.ldr & 0xFFFF) != 0
                } else {
                    if self.id > 0xFF {
                        return false;
                    }
                    let dest = self.id as u8;
                    let logical_id = (target.ldr >> 24) as u8;
                    match target.dfr >> 28 {
                        0xF => logical_id & dest != 0,
                        0x0 => {
                            let cluster = dest >> 4;
                            (cluster == 0xF || cluster == logical_id >> 4)
                                && (dest & logical_id & 0xF) != 0
                        }
                        _ => false,
                    }
                }
            }
        }
    }
}

/// An interrupt message sent through the ICR, for the embedder or the
/// fabric to route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Ipi {
    /// APIC ID of the sender (x2APIC ID in x2APIC mode, xAPIC ID otherwise).
    pub source_id: u32,
    /// Where it goes (with the shorthand).
    pub destination: Destination,
    /// What it delivers.
    pub interrupt: Interrupt,
}

/// Decodes the fields of an ICR value as a message (SDM 11.6.1). `x2apic`
/// selects the destination format: bits 63:32 in x2APIC mode, bits 63:56
/// in xAPIC mode.
pub fn decode_icr(icr: Icr, x2apic: bool, source_id: u32) -> Ipi {
    let id = if x2apic {
        icr.destination()
    } else {
        icr.xapic_destination() as u32
    };
    Ipi {
        source_id,
        destination: Destination {
            shorthand: icr.shorthand(),
            mode: if icr.logical() {
                DestinationMode::Logical
            } else {
                DestinationMode::Physical
            },
            id,
            x2apic_format: x2apic,
        },
        interrupt: Interrupt {
            vector: icr.vector(),
            delivery_mode: icr.delivery_mode(),
            trigger: TriggerMode::from_bit(icr.level_triggered()),
            assert: icr.assert(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xapic(id: u8, ldr: u32, dfr: u32) -> ApicIdentity {
        ApicIdentity {
            mode: ApicMode::XApic,
            xapic_id: id,
            x2apic_id: id as u32,
            ldr,
            dfr,
        }
    }

    fn x2apic(id: u32) -> ApicIdentity {
        ApicIdentity {
            mode: ApicMode::X2Apic,
            xapic_id: id as u8,
            x2apic_id: id,
            ldr: ((id >> 4) << 16) | (1 << (id & 0xF)),
            dfr: 0xFFFF_FFFF,
        }
    }

    #[test]
    fn physical_xapic_matches_id_and_broadcast() {
        let t = xapic(3, 0, !0);
        assert!(Destination::physical(3).matches(&t));
        assert!(!Destination::physical(4).matches(&t));
        assert!(Destination::physical(0xFF).matches(&t));
    }

    #[test]
    fn physical_x2apic_matches_32bit_id_and_broadcast() {
        let t = x2apic(0x1234);
        assert!(Destination::physical_x2apic(0x1234).matches(&t));
        assert!(!Destination::physical_x2apic(0x34).matches(&t));
        assert!(Destination::physical_x2apic(X2APIC_BROADCAST).matches(&t));
        // 0xFF is not a broadcast in x2APIC format.
        assert!(!Destination::physical_x2apic(0xFF).matches(&x2apic(1)));
    }

    #[test]
    fn logical_flat_is_bitmap_and() {
        let t = xapic(0, 0x0400_0000, 0xFFFF_FFFF);
        assert!(Destination::logical(0x04, false).matches(&t));
        assert!(Destination::logical(0x0C, false).matches(&t));
        assert!(!Destination::logical(0x03, false).matches(&t));
    }

    #[test]
    fn logical_cluster_needs_cluster_and_member() {
        let t = xapic(0, 0x2100_0000, 0x0FFF_FFFF); // cluster 2, member bit 0
        assert!(Destination::logical(0x21, false).matches(&t));
        assert!(!Destination::logical(0x31, false).matches(&t));
        assert!(!Destination::logical(0x22, false).matches(&t));
        // Cluster 0xF addresses every cluster.
        assert!(Destination::logical(0xF1, false).matches(&t));
        assert!(!Destination::logical(0xF2, false).matches(&t));
    }

    #[test]
    fn logical_x2apic_cluster() {
        let t = x2apic(0x23); // cluster 2, bit 3
        assert!(Destination::logical(0x0002_0008, true).matches(&t));
        assert!(!Destination::logical(0x0003_0008, true).matches(&t));
        assert!(!Destination::logical(0x0002_0004, true).matches(&t));
    }

    #[test]
    fn disabled_apic_matches_nothing() {
        let mut t = xapic(0, 0, !0);
        t.mode = ApicMode::Disabled;
        assert!(!Destination::physical(0xFF).matches(&t));
        assert!(!Destination::physical(0).matches(&t));
    }

    #[test]
    fn icr_decode_fields() {
        let icr = Icr::from_bits(0x0300_0000_000C_4D31);
        let ipi = decode_icr(icr, false, 7);
        assert_eq!(ipi.interrupt.vector, 0x31);
        assert_eq!(ipi.interrupt.delivery_mode, DeliveryMode::Init);
        assert_eq!(ipi.destination.mode, DestinationMode::Logical);
        assert!(ipi.interrupt.assert);
        assert_eq!(ipi.interrupt.trigger, TriggerMode::Edge);
        assert_eq!(ipi.destination.shorthand, Shorthand::AllExcludingSelf);
        assert_eq!(ipi.destination.id, 3);
        let x2 = decode_icr(icr, true, 7);
        assert_eq!(x2.destination.id, 0x0300_0000);
    }

    #[test]
    fn init_deassert_recognised() {
        let i = Interrupt {
            vector: 0,
            delivery_mode: DeliveryMode::Init,
            trigger: TriggerMode::Level,
            assert: false,
        };
        assert!(i.is_init_deassert());
        assert!(!Interrupt::of_mode(DeliveryMode::Init).is_init_deassert());
    }
}
