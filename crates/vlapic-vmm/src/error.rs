//! Error type of the VMM.

use std::fmt;

/// Everything that can stop the VMM before or while running a guest.
#[derive(Debug)]
pub enum Error {
    /// Bad command line.
    Args(String),
    /// `/dev/kvm` cannot be opened.
    NoKvm(String),
    /// A KVM ioctl failed.
    Kvm {
        /// What the VMM was doing.
        what: &'static str,
        /// The errno KVM returned.
        err: kvm_ioctls::Error,
    },
    /// Guest memory could not be set up.
    Memory(String),
    /// The kernel image could not be read or is not a supported format.
    Image(String),
    /// An I/O error of the VMM itself (serial file, ...).
    Io(String, std::io::Error),
    /// A vCPU stopped with a condition the VMM cannot continue from
    /// (triple fault, emulation failure, unsupported exit, ...). The text
    /// carries the reason, the vCPU, RIP and a register dump.
    Guest(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Args(s) => write!(f, "invalid arguments: {s}"),
            Error::NoKvm(s) => write!(f, "KVM is not available: {s}"),
            Error::Kvm { what, err } => write!(f, "KVM error while {what}: {err}"),
            Error::Memory(s) => write!(f, "guest memory: {s}"),
            Error::Image(s) => write!(f, "bad kernel image: {s}"),
            Error::Io(what, e) => write!(f, "{what}: {e}"),
            Error::Guest(s) => write!(f, "guest stopped: {s}"),
        }
    }
}

impl std::error::Error for Error {}

/// Result alias used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Helper: map a KVM error with a description of the operation.
pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |err| Error::Kvm { what, err }
}
