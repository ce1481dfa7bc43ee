//! The crate's error type.

use core::fmt;

use vlapic::{DeliveryMode, Register};

use crate::view::IdFormat;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Why an access or a conversion was refused. Nothing in this crate panics
/// on bad input: every refusal is one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// `offset + 4` is past the end of the 1 KiB blob (vmm-reference's
    /// `InvalidRegisterOffset`): offsets 1021 and up.
    InvalidRegisterOffset(usize),
    /// The value has bits set outside the register's layout (reserved or
    /// read-only bits, bits this register does not have).
    ReservedBits {
        /// The register.
        register: Register,
        /// The refused value (64-bit for the ICR).
        value: u64,
    },
    /// A delivery mode this register cannot use (SDM 11.5.1, 11.6.1).
    DeliveryMode {
        /// The register.
        register: Register,
        /// The refused mode.
        mode: DeliveryMode,
    },
    /// LVT Timer mode 11b (reserved).
    ReservedTimerMode(u32),
    /// Remote IRR set on an edge-triggered LINT entry.
    RemoteIrrOnEdge(Register),
    /// A vector 0-15 (illegal) in an IRR/ISR/TMR value.
    IllegalVector {
        /// First word of the register (ISR 0, TMR 0 or IRR 0).
        register: Register,
        /// The lowest illegal vector present.
        vector: u8,
    },
    /// The x2APIC ID does not fit the ID format (legacy: 8 bits).
    IdFormat {
        /// The refused ID.
        id: u32,
        /// The format.
        format: IdFormat,
    },
    /// The ID register disagrees with the APIC ID given in the extras.
    IdMismatch {
        /// ID register.
        register: u32,
        /// The expected APIC ID.
        apic_id: u32,
    },
    /// A register value that `vlapic::ApicState` cannot hold (it would not
    /// survive `from_kvm` + `to_kvm`).
    Unrepresentable {
        /// The register.
        register: Register,
        /// Its value.
        value: u32,
    },
    /// `IA32_APIC_BASE` has the invalid EN=0/EXTD=1 combination.
    ApicBase(u64),
    /// The exact timer in [`crate::Extras`] does not give the blob's TMCCT.
    TimerMismatch {
        /// TMCCT in the blob.
        tmcct: u32,
        /// TMCCT the exact timer gives.
        expected: u32,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidRegisterOffset(o) => {
                write!(f, "register offset {o} is out of range (must be <= 1020)")
            }
            Error::ReservedBits { register, value } => {
                write!(f, "{register:?}: value {value:#x} sets reserved bits")
            }
            Error::DeliveryMode { register, mode } => {
                write!(f, "{register:?}: delivery mode {mode:?} not allowed")
            }
            Error::ReservedTimerMode(v) => write!(f, "LVT Timer {v:#x}: reserved timer mode 11b"),
            Error::RemoteIrrOnEdge(r) => write!(f, "{r:?}: remote IRR set on an edge entry"),
            Error::IllegalVector { register, vector } => {
                write!(f, "{register:?}: illegal vector {vector:#04x}")
            }
            Error::IdFormat { id, format } => {
                write!(f, "x2APIC ID {id:#x} does not fit the {format:?} ID format")
            }
            Error::IdMismatch { register, apic_id } => {
                write!(
                    f,
                    "ID register {register:#x} does not match APIC ID {apic_id:#x}"
                )
            }
            Error::Unrepresentable { register, value } => {
                write!(f, "{register:?} value {value:#x} cannot be represented")
            }
            Error::ApicBase(v) => write!(f, "invalid IA32_APIC_BASE {v:#x} (EN=0, EXTD=1)"),
            Error::TimerMismatch { tmcct, expected } => write!(
                f,
                "TMCCT {tmcct:#x} does not match the exact timer state (gives {expected:#x})"
            ),
        }
    }
}

impl std::error::Error for Error {}
