//! APIC operating modes and `IA32_APIC_BASE` (SDM 11.4.4 and 11.12.5
//! "x2APIC State Transitions", Figure 11-31).

use crate::regs::ApicBase;
use crate::Fault;

/// The operating mode selected by `IA32_APIC_BASE` EN (bit 11) and EXTD
/// (bit 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum ApicMode {
    /// EN=0, EXTD=0: hardware disabled; no MMIO, no MSRs, LINT pins act as
    /// INTR/NMI.
    Disabled,
    /// EN=1, EXTD=0: xAPIC, registers in MMIO.
    XApic,
    /// EN=1, EXTD=1: x2APIC, registers as MSRs 0x800-0x8FF.
    X2Apic,
}

impl ApicMode {
    /// The mode an `IA32_APIC_BASE` value selects; `None` for the invalid
    /// EN=0, EXTD=1.
    pub const fn of(base: ApicBase) -> Option<ApicMode> {
        match (base.enabled(), base.x2apic()) {
            (false, false) => Some(ApicMode::Disabled),
            (true, false) => Some(ApicMode::XApic),
            (true, true) => Some(ApicMode::X2Apic),
            (false, true) => None,
        }
    }
}

/// Checks an `IA32_APIC_BASE` value against the reserved bits: bits 0-7
/// and 9, bits at or above `max_phys_bits`, and EXTD when x2APIC is not
/// offered.
pub fn check_reserved(value: u64, max_phys_bits: u8, x2apic_offered: bool) -> Result<(), Fault> {
    let phys = max_phys_bits.clamp(32, 52);
    let mut reserved = ApicBase::ALWAYS_RESERVED | !((1u64 << phys) - 1);
    if !x2apic_offered {
        reserved |= 1 << 10;
    }
    if value & reserved != 0 {
        return Err(Fault::Gp);
    }
    Ok(())
}

/// Whether a guest may move from `from` to `to` (SDM Figure 11-31): legal
/// moves are disabled -> xAPIC, xAPIC -> x2APIC, any -> disabled, and
/// staying in the same mode; x2APIC -> xAPIC and disabled -> x2APIC are
/// not.
pub const fn transition_allowed(from: ApicMode, to: ApicMode) -> bool {
    !matches!(
        (from, to),
        (ApicMode::X2Apic, ApicMode::XApic) | (ApicMode::Disabled, ApicMode::X2Apic)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ApicMode::*;

    #[test]
    fn mode_from_en_extd() {
        let b = |en, x2| ApicBase::new().with_enabled(en).with_x2apic(x2);
        assert_eq!(ApicMode::of(b(false, false)), Some(Disabled));
        assert_eq!(ApicMode::of(b(true, false)), Some(XApic));
        assert_eq!(ApicMode::of(b(true, true)), Some(X2Apic));
        assert_eq!(ApicMode::of(b(false, true)), None);
    }

    #[test]
    fn legal_and_illegal_transitions() {
        assert!(transition_allowed(Disabled, XApic));
        assert!(transition_allowed(XApic, X2Apic));
        assert!(transition_allowed(X2Apic, Disabled));
        assert!(transition_allowed(XApic, Disabled));
        assert!(!transition_allowed(X2Apic, XApic));
        assert!(!transition_allowed(Disabled, X2Apic));
    }

    #[test]
    fn reserved_bits_fault() {
        assert!(check_reserved(0xFEE0_0900, 46, true).is_ok());
        assert_eq!(check_reserved(0xFEE0_0901, 46, true), Err(Fault::Gp));
        assert_eq!(
            check_reserved(0xFEE0_0A00 | 0x200, 46, true),
            Err(Fault::Gp)
        );
        assert_eq!(check_reserved(1 << 46, 46, true), Err(Fault::Gp));
        assert_eq!(check_reserved(0xFEE0_0C00, 46, false), Err(Fault::Gp));
    }
}
