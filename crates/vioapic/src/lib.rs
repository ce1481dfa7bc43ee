//! # vioapic: a virtual I/O APIC
//!
//! The other half of the external-interrupt path of [`vlapic`]: an I/O APIC
//! in the style of the Intel 82093AA, in both versions VMMs meet:
//!
//! - version 0x11, the classic one: no EOI register; level-triggered
//!   interrupts complete when a local APIC broadcasts the EOI;
//! - version 0x20, with the EOI register at offset 0x40, which makes the
//!   local APIC's suppress-EOI-broadcast (directed EOI) usable: the OS
//!   writes the vector there itself.
//!
//! Registers are reached through the MMIO window (IOREGSEL at 0x00, IOWIN
//! at 0x10, EOI at 0x40): ID (index 0), version (1), arbitration (2) and
//! the redirection table (0x10 + 2n low, 0x11 + 2n high), 24 pins by
//! default. Each entry holds vector, delivery mode, destination mode,
//! polarity, remote IRR, trigger, mask and destination, with the extended
//! destination ID in bits 55:49 for x2APIC IDs up to 32767 (the layout
//! Linux, QEMU and KVM use).
//!
//! Interrupts leave as [`IoApicMessage`]s (a [`vlapic::Destination`] and a
//! [`vlapic::Interrupt`]) handed to a sink the embedder supplies, typically
//! the `vlapic` fabric. Like `vlapic` it is `no_std`, has no `unsafe`, and
//! never panics on guest input.
//!
//! ```
//! use vioapic::{IoApic, IoApicConfig};
//!
//! let mut io = IoApic::new(IoApicConfig::default());
//! let mut sent = Vec::new();
//! // Guest: route pin 4 to APIC 0, vector 0x34, edge, unmasked.
//! io.mmio_write(0x00, &[0x18], &mut |m| sent.push(m));
//! io.mmio_write(0x10, &0x34u32.to_le_bytes(), &mut |m| sent.push(m));
//! // Device raises the line.
//! io.set_pin(4, true, &mut |m| sent.push(m));
//! assert_eq!(sent.len(), 1);
//! assert_eq!(sent[0].interrupt.vector, 0x34);
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use vlapic::msi::IoApicRedirection;
use vlapic::{Destination, Interrupt};

/// Default MMIO base of the first I/O APIC.
pub const IOAPIC_DEFAULT_BASE: u64 = 0xFEC0_0000;
/// Size of the MMIO window the model decodes.
pub const IOAPIC_MMIO_SIZE: u64 = 0x100;
/// Pins of the 82093AA.
pub const DEFAULT_PINS: u8 = 24;
/// Most pins this model supports.
pub const MAX_PINS: usize = 32;

/// IOREGSEL offset.
pub const IOREGSEL: u64 = 0x00;
/// IOWIN offset.
pub const IOWIN: u64 = 0x10;
/// EOI register offset (version 0x20 only).
pub const IOEOI: u64 = 0x40;

/// Register index of the ID register.
pub const REG_ID: u8 = 0x00;
/// Register index of the version register.
pub const REG_VERSION: u8 = 0x01;
/// Register index of the arbitration register.
pub const REG_ARBITRATION: u8 = 0x02;
/// Register index of the first redirection entry (low half).
pub const REG_REDIRECTION: u8 = 0x10;

/// Writable bits of a redirection entry: vector, delivery mode,
/// destination mode, polarity, trigger, mask, and the destination with the
/// extended destination ID (bits 63:48). Delivery status (12) and remote
/// IRR (14) are read-only.
pub const RTE_WRITABLE: u64 = 0xFFFF_0000_0001_AFFF;
const REMOTE_IRR: u64 = 1 << 14;
const MASK: u64 = 1 << 16;

/// Which I/O APIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum IoApicVersion {
    /// Version 0x11 (82093AA): no EOI register.
    V11,
    /// Version 0x20: EOI register at 0x40; pair it with a local APIC that
    /// offers suppress-EOI-broadcast (`ApicConfig::suppress_eoi_broadcast`).
    V20,
}

impl IoApicVersion {
    /// The value in the version register's low byte.
    pub const fn number(self) -> u32 {
        match self {
            IoApicVersion::V11 => 0x11,
            IoApicVersion::V20 => 0x20,
        }
    }

    /// Whether the EOI register exists.
    pub const fn has_eoi_register(self) -> bool {
        matches!(self, IoApicVersion::V20)
    }
}

/// Configuration of one I/O APIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct IoApicConfig {
    /// ID after reset (bits 27:24 of the ID register).
    pub id: u8,
    /// Number of pins (1 to 32).
    pub pins: u8,
    /// Version.
    pub version: IoApicVersion,
}

impl Default for IoApicConfig {
    fn default() -> Self {
        IoApicConfig {
            id: 0,
            pins: DEFAULT_PINS,
            version: IoApicVersion::V20,
        }
    }
}

/// An interrupt message the I/O APIC sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoApicMessage {
    /// The pin it came from.
    pub pin: u8,
    /// Where it goes.
    pub destination: Destination,
    /// What it delivers (level-triggered entries send level messages,
    /// which set the target's TMR so its EOI comes back).
    pub interrupt: Interrupt,
}

/// Counters of guest input the model dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct IoApicStats {
    /// MMIO accesses of an unsupported size, offset or alignment.
    pub bad_access: u64,
    /// Accesses through IOWIN to a register index that does not exist.
    pub bad_register: u64,
    /// Writes to the EOI register of a version 0x11 I/O APIC.
    pub eoi_register_absent: u64,
    /// Edges lost because the pin was masked.
    pub masked_edges: u64,
    /// Messages sent.
    pub sent: u64,
}

/// A virtual I/O APIC.
#[derive(Debug, Clone)]
pub struct IoApic {
    cfg: IoApicConfig,
    id: u8,
    ioregsel: u8,
    rte: [u64; MAX_PINS],
    /// Electrical input levels, one bit per pin.
    levels: u32,
    stats: IoApicStats,
}

/// Current version of [`IoApicState`].
pub const IOAPIC_STATE_VERSION: u32 = 1;

/// Everything an I/O APIC holds, as plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct IoApicState {
    /// [`IOAPIC_STATE_VERSION`].
    pub version: u32,
    /// ID register bits 27:24.
    pub id: u8,
    /// IOREGSEL.
    pub ioregsel: u8,
    /// Redirection entries (remote IRR included); entries past the pin
    /// count are 0.
    pub redirection: [u64; MAX_PINS],
    /// Electrical input levels, one bit per pin.
    pub levels: u32,
}

/// Why [`IoApic::restore`] refused a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoApicStateError {
    /// Unknown format version.
    Version(u32),
    /// ID above 15.
    Id(u8),
    /// A redirection entry has reserved bits set, remote IRR on an edge
    /// entry, or an entry beyond the pin count is used.
    Redirection(u8),
    /// An input level is set for a pin that does not exist.
    Levels(u32),
}

impl core::fmt::Display for IoApicStateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            IoApicStateError::Version(v) => write!(f, "unknown IOAPIC state version {v}"),
            IoApicStateError::Id(v) => write!(f, "IOAPIC ID {v} above 15"),
            IoApicStateError::Redirection(p) => write!(f, "invalid redirection entry {p}"),
            IoApicStateError::Levels(l) => write!(f, "input levels {l:#x} for missing pins"),
        }
    }
}

/// Whether an entry behaves level-triggered: only Fixed and lowest-priority
/// entries do; NMI, SMI, INIT and ExtINT are edge-sensitive whatever the
/// trigger bit says (82093AA datasheet 3.2.4), so they never set remote IRR.
fn level_sensitive(e: IoApicRedirection) -> bool {
    e.level_triggered()
        && matches!(
            e.delivery_mode(),
            vlapic::DeliveryMode::Fixed | vlapic::DeliveryMode::LowestPriority
        )
}

impl IoApic {
    /// An I/O APIC in its reset state: every entry masked, ID from the
    /// configuration. The pin count is clamped to 1..=32.
    pub fn new(cfg: IoApicConfig) -> Self {
        let cfg = IoApicConfig {
            pins: cfg.pins.clamp(1, MAX_PINS as u8),
            id: cfg.id & 0xF,
            ..cfg
        };
        IoApic {
            cfg,
            id: cfg.id,
            ioregsel: 0,
            rte: [MASK; MAX_PINS],
            levels: 0,
            stats: IoApicStats::default(),
        }
    }

    /// Back to the reset state (input levels are kept: they are wires).
    pub fn reset(&mut self) {
        let levels = self.levels;
        *self = IoApic::new(self.cfg);
        self.levels = levels;
    }

    /// The configuration.
    pub fn config(&self) -> &IoApicConfig {
        &self.cfg
    }

    /// Counters.
    pub fn stats(&self) -> &IoApicStats {
        &self.stats
    }

    /// The redirection entry of `pin`.
    pub fn redirection(&self, pin: u8) -> Option<IoApicRedirection> {
        (pin < self.cfg.pins).then(|| IoApicRedirection::from_bits(self.rte[pin as usize]))
    }

    fn pins(&self) -> usize {
        self.cfg.pins as usize
    }

    // ------------------------------------------------------------------
    // Registers
    // ------------------------------------------------------------------

    /// Reads the register at `index` (as through IOWIN).
    pub fn read_register(&mut self, index: u8) -> u32 {
        match index {
            REG_ID => (self.id as u32) << 24,
            REG_VERSION => self.cfg.version.number() | ((self.cfg.pins as u32 - 1) << 16),
            REG_ARBITRATION => (self.id as u32) << 24,
            i if i >= REG_REDIRECTION && ((i - REG_REDIRECTION) as usize) < 2 * self.pins() => {
                let n = (i - REG_REDIRECTION) as usize;
                let e = self.rte[n / 2];
                if n % 2 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => {
                self.stats.bad_register += 1;
                log::debug!("ioapic: read of register {index:#x}");
                0
            }
        }
    }

    /// Writes the register at `index` (as through IOWIN). Unmasking a
    /// level-triggered entry whose line is asserted delivers at once.
    pub fn write_register(&mut self, index: u8, value: u32, sink: &mut impl FnMut(IoApicMessage)) {
        match index {
            REG_ID => self.id = ((value >> 24) & 0xF) as u8,
            REG_VERSION | REG_ARBITRATION => {}
            i if i >= REG_REDIRECTION && ((i - REG_REDIRECTION) as usize) < 2 * self.pins() => {
                let n = (i - REG_REDIRECTION) as usize;
                let pin = n / 2;
                let old = self.rte[pin];
                let new = if n % 2 == 0 {
                    (old & !0xFFFF_FFFF) | (value as u64)
                } else {
                    (old & 0xFFFF_FFFF) | ((value as u64) << 32)
                };
                let mut e = (new & RTE_WRITABLE) | (old & REMOTE_IRR);
                if !level_sensitive(IoApicRedirection::from_bits(e)) {
                    e &= !REMOTE_IRR;
                }
                self.rte[pin] = e;
                self.service_level(pin as u8, sink);
            }
            _ => {
                self.stats.bad_register += 1;
                log::debug!("ioapic: write of register {index:#x}");
            }
        }
    }

    /// A guest MMIO read at `offset` in the window. IOREGSEL and IOWIN
    /// answer 1, 2 or 4-byte reads inside the register; everything else
    /// reads 0 (and is counted).
    pub fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        let reg = offset & !0xF;
        let within = offset & 0xF;
        if !matches!(len, 1 | 2 | 4) || within + len > 4 {
            self.stats.bad_access += 1;
            log::debug!("ioapic: MMIO read of {len} bytes at {offset:#x}");
            return;
        }
        let value = match reg {
            IOREGSEL => self.ioregsel as u32,
            IOWIN => self.read_register(self.ioregsel),
            _ => {
                self.stats.bad_access += 1;
                0
            }
        };
        let bytes = value.to_le_bytes();
        data.copy_from_slice(&bytes[within as usize..(within + len) as usize]);
    }

    /// A guest MMIO write at `offset`. IOREGSEL takes a 1, 2 or 4-byte
    /// write (its low byte); IOWIN and EOI take aligned 4-byte writes;
    /// everything else is dropped and counted.
    pub fn mmio_write(&mut self, offset: u64, data: &[u8], sink: &mut impl FnMut(IoApicMessage)) {
        match (offset, data.len()) {
            (IOREGSEL, 1 | 2 | 4) => self.ioregsel = data[0],
            (IOWIN, 4) => {
                let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.write_register(self.ioregsel, v, sink);
            }
            (IOEOI, 4) => {
                if self.cfg.version.has_eoi_register() {
                    self.eoi(data[0], sink);
                } else {
                    self.stats.eoi_register_absent += 1;
                    log::debug!("ioapic: EOI register write on version 0x11");
                }
            }
            _ => {
                self.stats.bad_access += 1;
                log::debug!(
                    "ioapic: dropped MMIO write of {} bytes at {offset:#x}",
                    data.len()
                );
            }
        }
    }

    // ------------------------------------------------------------------
    // Pins and EOI
    // ------------------------------------------------------------------

    /// Sets the electrical level of `pin` (true = high). An entry is
    /// asserted when the level differs from its polarity (active-low
    /// entries are asserted when low). Edge-triggered entries send on the
    /// transition to asserted (an edge while masked is lost); level-
    /// triggered ones send while asserted, unmasked and remote IRR is
    /// clear. Pins beyond the pin count are ignored.
    pub fn set_pin(&mut self, pin: u8, high: bool, sink: &mut impl FnMut(IoApicMessage)) {
        if pin as usize >= self.pins() {
            return;
        }
        let bit = 1u32 << pin;
        let was_high = self.levels & bit != 0;
        if high {
            self.levels |= bit;
        } else {
            self.levels &= !bit;
        }
        let e = IoApicRedirection::from_bits(self.rte[pin as usize]);
        if level_sensitive(e) {
            self.service_level(pin, sink);
        } else {
            let asserted = high != e.active_low();
            let was_asserted = was_high != e.active_low();
            if asserted && !was_asserted {
                if e.masked() {
                    self.stats.masked_edges += 1;
                } else {
                    self.send(pin, sink);
                }
            }
        }
    }

    /// A pulse on an edge-triggered line: asserted, then deasserted.
    pub fn pulse(&mut self, pin: u8, sink: &mut impl FnMut(IoApicMessage)) {
        let active_low = self.redirection(pin).is_some_and(|e| e.active_low());
        self.set_pin(pin, !active_low, sink);
        self.set_pin(pin, active_low, sink);
    }

    /// Whether `pin` is asserted (its level differs from its polarity).
    pub fn asserted(&self, pin: u8) -> bool {
        match self.redirection(pin) {
            Some(e) => (self.levels & (1 << pin) != 0) != e.active_low(),
            None => false,
        }
    }

    /// An EOI for `vector`: from a local APIC's broadcast
    /// (`vlapic::Message::Eoi`) or the EOI register. Clears remote IRR of
    /// every level-triggered entry with that vector and sends again if the
    /// line is still asserted.
    pub fn eoi(&mut self, vector: u8, sink: &mut impl FnMut(IoApicMessage)) {
        for pin in 0..self.pins() {
            let e = IoApicRedirection::from_bits(self.rte[pin]);
            if e.vector() == vector && e.remote_irr() {
                self.rte[pin] &= !REMOTE_IRR;
                self.service_level(pin as u8, sink);
            }
        }
    }

    /// Level-triggered entry: send if asserted, unmasked, remote IRR clear.
    fn service_level(&mut self, pin: u8, sink: &mut impl FnMut(IoApicMessage)) {
        let e = IoApicRedirection::from_bits(self.rte[pin as usize]);
        if level_sensitive(e) && !e.masked() && !e.remote_irr() && self.asserted(pin) {
            self.send(pin, sink);
        }
    }

    fn send(&mut self, pin: u8, sink: &mut impl FnMut(IoApicMessage)) {
        let e = IoApicRedirection::from_bits(self.rte[pin as usize]);
        let Some((destination, mut interrupt)) = e.message() else {
            return;
        };
        if level_sensitive(e) {
            self.rte[pin as usize] |= REMOTE_IRR;
        } else {
            interrupt.trigger = vlapic::TriggerMode::Edge;
        }
        self.stats.sent += 1;
        sink(IoApicMessage {
            pin,
            destination,
            interrupt,
        });
    }

    // ------------------------------------------------------------------
    // Save / restore
    // ------------------------------------------------------------------

    /// The complete state.
    pub fn save(&self) -> IoApicState {
        IoApicState {
            version: IOAPIC_STATE_VERSION,
            id: self.id,
            ioregsel: self.ioregsel,
            redirection: self.rte,
            levels: self.levels,
        }
    }

    /// Restores a saved state after validating it; on error nothing
    /// changes. No message is sent: a pending level with remote IRR clear
    /// is sent at the next pin change, unmask or EOI, as on hardware.
    pub fn restore(&mut self, s: &IoApicState) -> Result<(), IoApicStateError> {
        if s.version != IOAPIC_STATE_VERSION {
            return Err(IoApicStateError::Version(s.version));
        }
        if s.id > 0xF {
            return Err(IoApicStateError::Id(s.id));
        }
        for (pin, e) in s.redirection.iter().enumerate() {
            let r = IoApicRedirection::from_bits(*e);
            let bad = e & !(RTE_WRITABLE | REMOTE_IRR) != 0
                || (r.remote_irr() && !level_sensitive(r))
                || (pin >= self.pins() && *e != MASK && *e != 0);
            if bad {
                return Err(IoApicStateError::Redirection(pin as u8));
            }
        }
        let valid_levels = if self.pins() == 32 {
            u32::MAX
        } else {
            (1u32 << self.pins()) - 1
        };
        if s.levels & !valid_levels != 0 {
            return Err(IoApicStateError::Levels(s.levels));
        }
        self.id = s.id;
        self.ioregsel = s.ioregsel;
        self.rte = s.redirection;
        self.levels = s.levels;
        Ok(())
    }
}
