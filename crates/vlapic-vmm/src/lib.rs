//! `vlapic-vmm`: a small KVM-based VMM that runs test guests with the local
//! APIC either in KVM (`--irqchip kernel`, or `split` with this VMM's
//! IOAPIC) or in userspace (`--irqchip user`: `vlapic`, behind
//! [`lapic_backend::LapicBackend`], and `vioapic`).
//!
//! Modules:
//! - [`args`]: command line; [`conformance`]: the `conformance` subcommand.
//! - [`layout`], [`loader`], [`boot`]: guest memory, ELF64 / multiboot /
//!   flat loaders, initial CPU state (page tables, GDT, modes).
//! - [`cpuid`]: per-vCPU CPUID.
//! - [`devices`]: serial (IRQ 4), isa-debug-exit, fw_cfg, the IOAPIC
//!   (`vioapic`, user and split modes), interrupt lines and the IRQ test
//!   port 0x5A0.
//! - [`control`]: per-vCPU control block (INIT/SIPI, park/wake, kick),
//!   VM clock, timer service.
//! - [`lapic_backend`]: the userspace-LAPIC seam (and the minimal stub).
//! - [`vlapic_backend`]: the real userspace LAPIC, `vlapic` + its fabric.
//! - [`vcpu`]: the vCPU thread loop; [`vm`]: VM setup and [`vm::run`].
//! - [`migrate`]: moving a running guest between KVM's LAPIC and vlapic
//!   (`--switch-irqchip-after`).
//! - [`profile`]: `--profile`, per-phase exit cost accounting; [`bench`](mod@bench):
//!   the `bench` subcommand (guest microbenchmarks, both backends).

#![warn(missing_docs)]

pub mod args;
pub mod bench;
pub mod boot;
pub mod conformance;
pub mod control;
pub mod cpuid;
pub mod devices;
pub mod error;
pub mod lapic_backend;
pub mod layout;
pub mod loader;
pub mod migrate;
pub mod profile;
pub mod summary;
pub mod vcpu;
pub mod vlapic_backend;
pub mod vm;

pub use error::{Error, Result};
pub use vm::{run, EXIT_TIMEOUT};

/// Exit status of the VMM process on a VMM or guest error.
pub const EXIT_ERROR: i32 = 2;
