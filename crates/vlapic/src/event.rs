//! What the APIC hands back to its embedder: bus messages from register
//! writes, the work the vCPU must do, guest faults, and counters of
//! rejected guest input.

use crate::ipi::Ipi;
use crate::mode::ApicMode;

/// A message a register write puts on the bus, for the embedder (or the
/// fabric) to carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Message {
    /// An IPI from the ICR, to route to its destinations. Self-only
    /// shorthand IPIs never leave the APIC; "all including self" comes
    /// back to the sender through the router like any other target.
    Ipi(Ipi),
    /// EOI of a level-triggered vector, to broadcast to the IOAPIC(s) so
    /// they clear remote IRR (SDM 11.8.5). Not sent when the guest
    /// suppressed EOI broadcasts (SVR bit 12).
    Eoi {
        /// The vector that was in service.
        vector: u8,
    },
    /// `IA32_APIC_BASE` changed the mode or the MMIO base: the embedder
    /// moves (or removes) its MMIO window.
    ApicBaseChanged {
        /// New `IA32_APIC_BASE` value.
        apic_base: u64,
        /// New mode.
        mode: ApicMode,
    },
}

/// A guest access the architecture answers with an exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// General-protection fault, #GP(0).
    Gp,
}

impl core::fmt::Display for Fault {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Fault::Gp => f.write_str("#GP(0)"),
        }
    }
}

/// Processor run state as far as the APIC is concerned (SDM 9.4 and
/// 11.4.7.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum RunState {
    /// Running (or halted): takes interrupts.
    #[default]
    Running,
    /// After INIT (or power-on, for an AP): waits for a start-up IPI.
    WaitForSipi,
}

/// Work the vCPU must do, from [`crate::LocalApic::poll`]. Nothing here
/// is consumed by looking: take each with the matching call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Work {
    /// Highest deliverable maskable vector (take it with
    /// [`crate::LocalApic::acknowledge`] when the CPU can accept it).
    pub interrupt: Option<u8>,
    /// An NMI is pending ([`crate::LocalApic::take_nmi`]).
    pub nmi: bool,
    /// An SMI is pending ([`crate::LocalApic::take_smi`]).
    pub smi: bool,
    /// INIT was received: the APIC already did its INIT reset; the vCPU
    /// resets its registers ([`crate::LocalApic::take_init`]).
    pub init: bool,
    /// A start-up IPI arrived while waiting for one: start in real mode at
    /// `CS = vector << 8, IP = 0` ([`crate::LocalApic::take_sipi`]).
    pub sipi: Option<u8>,
    /// External interrupt (ExtINT via LINT0 or a message): ask the 8259
    /// for the vector.
    pub extint: bool,
    /// The processor is in wait-for-SIPI: it must not run.
    pub wait_for_sipi: bool,
}

impl Work {
    /// Whether there is anything to do that would wake a halted vCPU.
    pub fn wakes(&self) -> bool {
        self.interrupt.is_some()
            || self.nmi
            || self.smi
            || self.init
            || self.sipi.is_some()
            || self.extint
    }
}

/// Counters of guest input the APIC rejected or dropped, for metrics and
/// for finding misbehaving guests. Every counted event is also logged with
/// the `log` crate at `debug` level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Stats {
    /// MMIO accesses of an unsupported size or alignment (writes dropped,
    /// reads answered byte-wise).
    pub mmio_bad_access: u64,
    /// MMIO accesses while the xAPIC window does not decode (x2APIC or
    /// disabled mode).
    pub mmio_not_decoded: u64,
    /// Accesses to offsets that are not registers (ESR bit 7).
    pub illegal_register: u64,
    /// Writes to read-only registers, dropped.
    pub read_only_write: u64,
    /// Guest accesses answered with #GP.
    pub gp: u64,
    /// Illegal vectors (0-15) sent or received.
    pub illegal_vector: u64,
    /// Fixed/lowest-priority interrupts dropped because the APIC is
    /// software- or hardware-disabled, or messages with a delivery mode the
    /// receiver cannot take.
    pub dropped: u64,
    /// Start-up IPIs ignored outside wait-for-SIPI.
    pub sipi_ignored: u64,
    /// Periodic timer periods stretched to the minimum period (counted
    /// when a TMICT, TDCR or LVT Timer write programs one).
    pub timer_clamped: u64,
}
