//! Fuzz target logic for vlapic, vioapic and vlapic-kvm, shared by the
//! libFuzzer binaries (`fuzz/fuzz_targets/*.rs`, nightly, `cargo fuzz`),
//! by this crate's replay tests (stable) and, through `#[path]` includes,
//! by the `tests/hostile.rs` files of the library crates (stable, CI).
//!
//! Each module has `pub fn run(data: &[u8])`: decodes a configuration and
//! an operation sequence from the bytes ([`input::Input`]), runs it, and
//! panics when an invariant is violated. The modules only use `super::`
//! paths and the library crates, so that they can be included elsewhere.

pub mod check;
pub mod fabric;
pub mod input;
pub mod ioapic;
pub mod kvm_blob;
pub mod lapic_ops;
pub mod restore;
pub mod serde_restore;

/// A target's entry point.
pub type Target = fn(&[u8]);

/// Every target by name, as `cargo fuzz` knows them.
pub const TARGETS: [(&str, Target); 5] = [
    ("lapic_ops", lapic_ops::run),
    ("fabric", fabric::run),
    ("restore", serde_restore::run),
    ("kvm_blob", kvm_blob::run),
    ("ioapic", ioapic::run),
];
