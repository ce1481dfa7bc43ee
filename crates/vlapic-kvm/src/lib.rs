//! # vlapic-kvm: KVM's `kvm_lapic_state`, typed, and converted to and from vlapic
//!
//! KVM's in-kernel local APIC is saved and restored with `KVM_GET_LAPIC` /
//! `KVM_SET_LAPIC` as a 1 KiB blob ([`kvm_bindings::kvm_lapic_state`]): the
//! first 1 KiB of the xAPIC register page, each register at its xAPIC offset.
//! `IA32_APIC_BASE` and `IA32_TSC_DEADLINE` travel separately as MSRs, and the
//! run state and pending events live in `kvm_mp_state` / `kvm_vcpu_events`.
//!
//! This crate gives:
//!
//! - [`KvmLapic`]: a typed view of the blob, every register by name, with
//!   setters that refuse values outside the register's layout. It reuses the
//!   register layouts of [`vlapic::regs`] (no layout is defined twice).
//! - [`get_klapic_reg`], [`set_klapic_reg`], [`set_klapic_delivery_mode`]:
//!   drop-in equivalents of vmm-reference's helpers of the same names.
//! - `Display` for [`KvmLapic`]: one decoded line per register, and
//!   [`decode()`] (behind the `klapic-decode FILE` binary) for saved blobs.
//! - [`to_kvm`] / [`from_kvm`]: conversion between [`vlapic::ApicState`] and
//!   KVM's state ([`KvmLapicState`]), with both x2APIC ID formats
//!   ([`IdFormat`]), the derived x2APIC LDR and the live timer count.
//!   What KVM does not carry in the blob comes in (and goes out) as
//!   [`Extras`].
//!
//! ```
//! use vlapic::{ApicConfig, LocalApic};
//! use vlapic_kvm::{from_kvm, to_kvm, Extras, IdFormat};
//!
//! let mut apic = LocalApic::new(ApicConfig::new(1));
//! apic.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes()); // SVR: software enable
//! let saved = apic.save(0);
//! let kvm = to_kvm(&saved, IdFormat::Full32);
//! assert_eq!(kvm.view().svr().software_enabled(), true);
//! let back = from_kvm(&kvm, IdFormat::Full32, &Extras::of(&saved)).unwrap();
//! assert_eq!(back, saved);
//! ```
//!
//! See the [`convert`] module for what is volatile (TMCCT, PPR, the version
//! register, ...) and which `ApicState` fields have no KVM equivalent.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod convert;
pub mod decode;
mod display;
mod error;
pub mod parity;
pub mod view;

pub use convert::{
    from_kvm, to_kvm, to_kvm_with, Extras, KvmLapicState, KvmProfile, TimerExact, VOLATILE_RANGES,
};
pub use decode::{decode, parse_blob, DecodeError};
pub use error::{Error, Result};
pub use parity::{
    get_klapic_reg, set_klapic_delivery_mode, set_klapic_reg, APIC_LVT0_REG_OFFSET,
    APIC_LVT1_REG_OFFSET,
};
pub use view::{IdFormat, KvmLapic, KVM_LAPIC_SIZE};

pub use kvm_bindings::kvm_lapic_state;
