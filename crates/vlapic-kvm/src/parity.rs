//! Drop-in equivalents of vmm-reference's `kvm_lapic_state` helpers
//! (`vm-vcpu-ref` `x86_64::interrupts`): same names, same behaviour.
//!
//! They read and write a little-endian `u32` at any byte offset whose 4
//! bytes fit in the 1 KiB blob (offsets 0..=1020; no alignment check), and
//! return [`Error::InvalidRegisterOffset`] otherwise, never panicking (an
//! offset near `usize::MAX` does not overflow). `set_klapic_delivery_mode`
//! replaces bits 10:8 of the word like vmm-reference does, without checking
//! that the register has a delivery-mode field: use
//! [`crate::KvmLapic::set_lvt`] for a checked write.
//!
//! Existing code switches over by changing its `use` line:
//!
//! ```
//! use kvm_bindings::kvm_lapic_state;
//! use vlapic::DeliveryMode;
//! use vlapic_kvm::{
//!     get_klapic_reg, set_klapic_delivery_mode, APIC_LVT0_REG_OFFSET, APIC_LVT1_REG_OFFSET,
//! };
//!
//! let mut klapic = kvm_lapic_state::default();
//! set_klapic_delivery_mode(&mut klapic, APIC_LVT0_REG_OFFSET, DeliveryMode::ExtInt).unwrap();
//! set_klapic_delivery_mode(&mut klapic, APIC_LVT1_REG_OFFSET, DeliveryMode::Nmi).unwrap();
//! assert_eq!(get_klapic_reg(&klapic, 0x350).unwrap(), 0x700);
//! assert_eq!(get_klapic_reg(&klapic, 0x360).unwrap(), 0x400);
//! assert!(get_klapic_reg(&klapic, 1021).is_err());
//! ```

use kvm_bindings::kvm_lapic_state;
use vlapic::DeliveryMode;

use crate::error::{Error, Result};

/// Offset of LVT LINT0 in `kvm_lapic_state`.
pub const APIC_LVT0_REG_OFFSET: usize = 0x350;
/// Offset of LVT LINT1 in `kvm_lapic_state`.
pub const APIC_LVT1_REG_OFFSET: usize = 0x360;

fn range(reg_offset: usize) -> Result<core::ops::Range<usize>> {
    match reg_offset.checked_add(4) {
        Some(end) if end <= crate::KVM_LAPIC_SIZE => Ok(reg_offset..end),
        _ => Err(Error::InvalidRegisterOffset(reg_offset)),
    }
}

/// The `u32` (little endian) at byte `reg_offset` of the blob.
///
/// ```
/// let k = kvm_bindings::kvm_lapic_state::default();
/// assert_eq!(vlapic_kvm::get_klapic_reg(&k, 1020), Ok(0));
/// assert!(vlapic_kvm::get_klapic_reg(&k, 1021).is_err());
/// ```
pub fn get_klapic_reg(klapic: &kvm_lapic_state, reg_offset: usize) -> Result<u32> {
    let r = range(reg_offset)?;
    let mut b = [0u8; 4];
    for (d, s) in b.iter_mut().zip(klapic.regs[r].iter()) {
        *d = *s as u8;
    }
    Ok(u32::from_le_bytes(b))
}

/// Writes `value` (little endian) at byte `reg_offset` of the blob.
///
/// ```
/// let mut k = kvm_bindings::kvm_lapic_state::default();
/// vlapic_kvm::set_klapic_reg(&mut k, 0x80, 0x20).unwrap();
/// assert_eq!(vlapic_kvm::get_klapic_reg(&k, 0x80), Ok(0x20));
/// assert!(vlapic_kvm::set_klapic_reg(&mut k, 1021, 0).is_err());
/// ```
pub fn set_klapic_reg(klapic: &mut kvm_lapic_state, reg_offset: usize, value: u32) -> Result<()> {
    let r = range(reg_offset)?;
    for (d, s) in klapic.regs[r].iter_mut().zip(value.to_le_bytes()) {
        *d = s as _;
    }
    Ok(())
}

/// Replaces the delivery-mode field (bits 10:8) of the word at
/// `reg_offset` with `mode`, keeping every other bit.
///
/// ```
/// use vlapic::DeliveryMode;
/// let mut k = kvm_bindings::kvm_lapic_state::default();
/// vlapic_kvm::set_klapic_reg(&mut k, 0x350, 0x0001_0420).unwrap();
/// vlapic_kvm::set_klapic_delivery_mode(&mut k, 0x350, DeliveryMode::ExtInt).unwrap();
/// assert_eq!(vlapic_kvm::get_klapic_reg(&k, 0x350), Ok(0x0001_0720));
/// ```
pub fn set_klapic_delivery_mode(
    klapic: &mut kvm_lapic_state,
    reg_offset: usize,
    mode: DeliveryMode,
) -> Result<()> {
    let reg = get_klapic_reg(klapic, reg_offset)?;
    set_klapic_reg(
        klapic,
        reg_offset,
        (reg & !0x700) | ((mode.into_bits() as u32) << 8),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_up_to_1020_work() {
        let mut k = kvm_lapic_state::default();
        for off in [0, 1, 3, 0x350, 1019, 1020] {
            set_klapic_reg(&mut k, off, 0xA1B2_C3D4).unwrap();
            assert_eq!(get_klapic_reg(&k, off), Ok(0xA1B2_C3D4), "{off}");
        }
        assert!(set_klapic_delivery_mode(&mut k, 1020, DeliveryMode::ExtInt).is_ok());
        assert_eq!(k.regs[1021] as u8 & 7, 7);
    }

    #[test]
    fn offsets_from_1021_are_refused() {
        let mut k = kvm_lapic_state::default();
        for off in [1021, 1022, 1023, 1024, 4096, usize::MAX - 3, usize::MAX] {
            assert_eq!(
                get_klapic_reg(&k, off),
                Err(Error::InvalidRegisterOffset(off))
            );
            assert_eq!(
                set_klapic_reg(&mut k, off, 1),
                Err(Error::InvalidRegisterOffset(off))
            );
            assert_eq!(
                set_klapic_delivery_mode(&mut k, off, DeliveryMode::Nmi),
                Err(Error::InvalidRegisterOffset(off))
            );
        }
        assert_eq!(k, kvm_lapic_state::default());
    }

    #[test]
    fn unaligned_access_is_little_endian_bytes() {
        let mut k = kvm_lapic_state::default();
        set_klapic_reg(&mut k, 0x351, 0x0403_0201).unwrap();
        assert_eq!(k.regs[0x351..0x355], [1, 2, 3, 4]);
        assert_eq!(get_klapic_reg(&k, 0x350), Ok(0x0302_0100));
    }

    #[test]
    fn delivery_mode_replaces_bits_10_8_only() {
        let mut k = kvm_lapic_state::default();
        set_klapic_reg(&mut k, APIC_LVT1_REG_OFFSET, 0xFFFF_FFFF).unwrap();
        set_klapic_delivery_mode(&mut k, APIC_LVT1_REG_OFFSET, DeliveryMode::Nmi).unwrap();
        assert_eq!(get_klapic_reg(&k, APIC_LVT1_REG_OFFSET), Ok(0xFFFF_FCFF));
        for (mode, bits) in [
            (DeliveryMode::Fixed, 0),
            (DeliveryMode::Smi, 2),
            (DeliveryMode::Nmi, 4),
            (DeliveryMode::Init, 5),
            (DeliveryMode::ExtInt, 7),
        ] {
            set_klapic_delivery_mode(&mut k, APIC_LVT0_REG_OFFSET, mode).unwrap();
            assert_eq!(get_klapic_reg(&k, APIC_LVT0_REG_OFFSET), Ok(bits << 8));
        }
    }
}
