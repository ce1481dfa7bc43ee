//! # vlapic: a complete, exact virtual x86 local APIC
//!
//! `vlapic` models one vCPU's local APIC as the Intel SDM (Vol. 3, chapter
//! "Advanced Programmable Interrupt Controller") describes it: xAPIC MMIO
//! and x2APIC MSR access, `IA32_APIC_BASE` with the full mode state machine,
//! TPR/PPR, IRR/ISR/TMR, EOI with broadcast and suppression, the LVT with
//! LINT pins, the timer in one-shot, periodic and TSC-deadline modes, ICR
//! decoding into IPI messages, INIT/SIPI, ESR, reset, and a versioned state
//! for save/restore.
//!
//! It is `no_std`, has no `unsafe`, never reads a clock (every call that
//! needs time takes `now`, nanoseconds on the embedder's monotonic clock),
//! and never panics on guest input: bad accesses give #GP ([`Fault`]), an
//! ESR bit, or a dropped write, and are counted in [`Stats`] and logged.
//!
//! ## Embedding
//!
//! The vCPU thread owns its [`LocalApic`]. On an APIC exit it calls
//! [`LocalApic::mmio_read`]/[`LocalApic::mmio_write`] or
//! [`LocalApic::msr_read`]/[`LocalApic::msr_write`]; writes may return a
//! [`Message`] (an IPI to route, an EOI for the IOAPIC, a moved MMIO base).
//! Before entering the guest it calls [`LocalApic::poll`] and injects what
//! the returned [`Work`] says, and arms a host timer for
//! [`LocalApic::next_timer_deadline`].
//!
//! ```
//! use vlapic::{ApicConfig, LocalApic, Message};
//!
//! let mut cpu0 = LocalApic::new(ApicConfig::new(0).with_bsp(true));
//! let mut cpu1 = LocalApic::new(ApicConfig::new(1));
//! for apic in [&mut cpu0, &mut cpu1] {
//!     apic.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes()); // SVR: enable
//! }
//! // CPU 0 sends vector 0x50 to APIC ID 1.
//! cpu0.mmio_write(0, 0x310, &(1u32 << 24).to_le_bytes());
//! let msg = cpu0.mmio_write(0, 0x300, &0x50u32.to_le_bytes());
//! let Some(Message::Ipi(ipi)) = msg else { panic!() };
//! assert!(cpu1.deliver_ipi(&ipi, false));
//! assert!(!cpu0.deliver_ipi(&ipi, true));
//! // CPU 1 takes it and signals EOI.
//! assert_eq!(cpu1.poll(0).interrupt, Some(0x50));
//! assert_eq!(cpu1.acknowledge(), 0x50);
//! cpu1.mmio_write(0, 0xB0, &0u32.to_le_bytes());
//! assert!(cpu1.interrupt_registers().isr.is_empty());
//! ```
//!
//! ## Modules
//!
//! One per SDM concept, data flowing one way (access -> decode -> register
//! -> effect): [`regs`] (register map and layouts), [`mode`]
//! (`IA32_APIC_BASE`), [`priority`] (TPR/PPR, IRR/ISR/TMR, EOI), [`lvt`],
//! [`timer`], [`ipi`] (ICR, destinations), [`snapshot`], and `apic` (the
//! register handlers and access paths that tie them together).
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

mod apic;
pub mod config;
pub mod event;
#[cfg(feature = "fabric")]
pub mod fabric;
pub mod ipi;
pub mod lvt;
pub mod mode;
pub mod msi;
pub mod priority;
pub mod regs;
pub mod snapshot;
pub mod timer;
pub mod vapic;
pub mod vector;

pub use apic::LocalApic;
pub use config::ApicConfig;
pub use event::{Fault, Message, RunState, Stats, Work};
pub use ipi::{ApicIdentity, Destination, Interrupt, Ipi};
pub use lvt::Lvt;
pub use mode::ApicMode;
pub use regs::{DeliveryMode, DestinationMode, Register, Shorthand, TimerMode, TriggerMode};
pub use snapshot::{ApicState, StateError, STATE_VERSION};
pub use vector::VectorSet;
