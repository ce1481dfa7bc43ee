//! Register map and register layouts (SDM Vol. 3, 11.4.1 "The Local APIC
//! Block Diagram", Table 11-1 "Local APIC Register Address Map" and 11.12.1.2
//! "x2APIC Register Address Space", Table 11-6).
//!
//! Every register layout is defined exactly once here, as a typed bitfield,
//! and reused by the MMIO path, the MSR path and the saved state.

use bitfield_struct::bitfield;

/// Size of the xAPIC register page.
pub const APIC_PAGE_SIZE: u64 = 0x1000;
/// Default physical base of the xAPIC MMIO page (SDM 11.4.1).
pub const APIC_DEFAULT_BASE: u64 = 0xFEE0_0000;
/// First x2APIC MSR (SDM 11.12.1.2).
pub const X2APIC_MSR_BASE: u32 = 0x800;
/// Last x2APIC MSR.
pub const X2APIC_MSR_LAST: u32 = 0x8FF;
/// `IA32_APIC_BASE` MSR.
pub const MSR_IA32_APIC_BASE: u32 = 0x1B;
/// `IA32_TSC_DEADLINE` MSR (SDM 11.5.4.1).
pub const MSR_IA32_TSC_DEADLINE: u32 = 0x6E0;
/// Value of the version register's version field (integrated APIC, xAPIC).
pub const APIC_VERSION: u32 = 0x14;

/// One architectural local APIC register, by its SDM name.
///
/// The MMIO offset of a register is [`Register::offset`]; its x2APIC MSR is
/// `0x800 + offset / 16`. Registers that exist only in one mode are decoded
/// by [`Register::from_offset`] (xAPIC) and [`Register::from_x2apic_msr`]
/// (x2APIC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Register {
    /// Local APIC ID (0x020).
    Id,
    /// Local APIC version (0x030).
    Version,
    /// Task priority, TPR (0x080).
    Tpr,
    /// Arbitration priority, APR (0x090; xAPIC only).
    Apr,
    /// Processor priority, PPR (0x0A0).
    Ppr,
    /// End of interrupt (0x0B0; write-only).
    Eoi,
    /// Remote read (0x0C0; xAPIC only).
    Rrd,
    /// Logical destination, LDR (0x0D0).
    Ldr,
    /// Destination format, DFR (0x0E0; xAPIC only).
    Dfr,
    /// Spurious interrupt vector, SVR (0x0F0).
    Svr,
    /// In-service register word `n` (0x100 + 0x10 * n).
    Isr(u8),
    /// Trigger mode register word `n` (0x180 + 0x10 * n).
    Tmr(u8),
    /// Interrupt request register word `n` (0x200 + 0x10 * n).
    Irr(u8),
    /// Error status, ESR (0x280).
    Esr,
    /// LVT corrected machine check interrupt (0x2F0).
    LvtCmci,
    /// Interrupt command, low half (0x300); the whole 64-bit ICR in x2APIC.
    IcrLow,
    /// Interrupt command, high half (0x310; xAPIC only).
    IcrHigh,
    /// LVT timer (0x320).
    LvtTimer,
    /// LVT thermal sensor (0x330).
    LvtThermal,
    /// LVT performance monitoring counters (0x340).
    LvtPerfmon,
    /// LVT LINT0 (0x350).
    LvtLint0,
    /// LVT LINT1 (0x360).
    LvtLint1,
    /// LVT error (0x370).
    LvtError,
    /// Timer initial count, TMICT (0x380).
    TimerInitialCount,
    /// Timer current count, TMCCT (0x390; read-only).
    TimerCurrentCount,
    /// Timer divide configuration, TDCR (0x3E0).
    TimerDivide,
    /// SELF IPI (0x3F0; x2APIC only, write-only).
    SelfIpi,
}

impl Register {
    /// Decodes the register at `offset` (already aligned to 16 bytes) in the
    /// xAPIC page. Returns `None` for reserved offsets and for registers
    /// that exist only in x2APIC mode (SELF IPI).
    pub const fn from_offset(offset: u32) -> Option<Register> {
        if offset & 0xF != 0 {
            return None;
        }
        Some(match offset {
            0x020 => Register::Id,
            0x030 => Register::Version,
            0x080 => Register::Tpr,
            0x090 => Register::Apr,
            0x0A0 => Register::Ppr,
            0x0B0 => Register::Eoi,
            0x0C0 => Register::Rrd,
            0x0D0 => Register::Ldr,
            0x0E0 => Register::Dfr,
            0x0F0 => Register::Svr,
            0x100..=0x170 => Register::Isr(((offset - 0x100) >> 4) as u8),
            0x180..=0x1F0 => Register::Tmr(((offset - 0x180) >> 4) as u8),
            0x200..=0x270 => Register::Irr(((offset - 0x200) >> 4) as u8),
            0x280 => Register::Esr,
            0x2F0 => Register::LvtCmci,
            0x300 => Register::IcrLow,
            0x310 => Register::IcrHigh,
            0x320 => Register::LvtTimer,
            0x330 => Register::LvtThermal,
            0x340 => Register::LvtPerfmon,
            0x350 => Register::LvtLint0,
            0x360 => Register::LvtLint1,
            0x370 => Register::LvtError,
            0x380 => Register::TimerInitialCount,
            0x390 => Register::TimerCurrentCount,
            0x3E0 => Register::TimerDivide,
            _ => return None,
        })
    }

    /// Decodes an x2APIC MSR (0x800-0x8FF). Returns `None` for MSRs that
    /// are not assigned in x2APIC mode (APR, RRD, DFR, ICR2 and gaps).
    pub const fn from_x2apic_msr(msr: u32) -> Option<Register> {
        if msr < X2APIC_MSR_BASE || msr > X2APIC_MSR_LAST {
            return None;
        }
        let offset = (msr - X2APIC_MSR_BASE) << 4;
        match offset {
            0x3F0 => Some(Register::SelfIpi),
            0x090 | 0x0C0 | 0x0E0 | 0x310 => None,
            _ => Register::from_offset(offset),
        }
    }

    /// The register's offset in the xAPIC page.
    pub const fn offset(self) -> u32 {
        match self {
            Register::Id => 0x020,
            Register::Version => 0x030,
            Register::Tpr => 0x080,
            Register::Apr => 0x090,
            Register::Ppr => 0x0A0,
            Register::Eoi => 0x0B0,
            Register::Rrd => 0x0C0,
            Register::Ldr => 0x0D0,
            Register::Dfr => 0x0E0,
            Register::Svr => 0x0F0,
            Register::Isr(n) => 0x100 + ((n as u32 & 7) << 4),
            Register::Tmr(n) => 0x180 + ((n as u32 & 7) << 4),
            Register::Irr(n) => 0x200 + ((n as u32 & 7) << 4),
            Register::Esr => 0x280,
            Register::LvtCmci => 0x2F0,
            Register::IcrLow => 0x300,
            Register::IcrHigh => 0x310,
            Register::LvtTimer => 0x320,
            Register::LvtThermal => 0x330,
            Register::LvtPerfmon => 0x340,
            Register::LvtLint0 => 0x350,
            Register::LvtLint1 => 0x360,
            Register::LvtError => 0x370,
            Register::TimerInitialCount => 0x380,
            Register::TimerCurrentCount => 0x390,
            Register::TimerDivide => 0x3E0,
            Register::SelfIpi => 0x3F0,
        }
    }

    /// The register's x2APIC MSR number (meaningful for registers that exist
    /// in x2APIC mode).
    pub const fn x2apic_msr(self) -> u32 {
        X2APIC_MSR_BASE + (self.offset() >> 4)
    }

    /// The LVT entry this register holds, if it is an LVT register.
    pub const fn lvt(self) -> Option<crate::lvt::Lvt> {
        use crate::lvt::Lvt;
        Some(match self {
            Register::LvtCmci => Lvt::Cmci,
            Register::LvtTimer => Lvt::Timer,
            Register::LvtThermal => Lvt::Thermal,
            Register::LvtPerfmon => Lvt::Perfmon,
            Register::LvtLint0 => Lvt::Lint0,
            Register::LvtLint1 => Lvt::Lint1,
            Register::LvtError => Lvt::Error,
            _ => return None,
        })
    }

    /// Every register with a distinct offset, in address order (useful to
    /// dump or copy the page).
    pub const ALL: [Register; 48] = {
        let mut all = [Register::Id; 48];
        let head = [
            Register::Id,
            Register::Version,
            Register::Tpr,
            Register::Apr,
            Register::Ppr,
            Register::Eoi,
            Register::Rrd,
            Register::Ldr,
            Register::Dfr,
            Register::Svr,
        ];
        let mut i = 0;
        while i < head.len() {
            all[i] = head[i];
            i += 1;
        }
        let mut n = 0;
        while n < 8 {
            all[10 + n] = Register::Isr(n as u8);
            all[18 + n] = Register::Tmr(n as u8);
            all[26 + n] = Register::Irr(n as u8);
            n += 1;
        }
        let tail = [
            Register::Esr,
            Register::LvtCmci,
            Register::IcrLow,
            Register::IcrHigh,
            Register::LvtTimer,
            Register::LvtThermal,
            Register::LvtPerfmon,
            Register::LvtLint0,
            Register::LvtLint1,
            Register::LvtError,
            Register::TimerInitialCount,
            Register::TimerCurrentCount,
            Register::TimerDivide,
            Register::SelfIpi,
        ];
        let mut j = 0;
        while j < tail.len() {
            all[34 + j] = tail[j];
            j += 1;
        }
        all
    };
}

/// Delivery mode field of an LVT entry, an ICR or an MSI (SDM 11.5.1,
/// 11.6.1, 11.11.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[repr(u8)]
pub enum DeliveryMode {
    /// 000: the vector in the entry.
    Fixed = 0,
    /// 001: lowest priority (ICR and MSI only).
    LowestPriority = 1,
    /// 010: system management interrupt.
    Smi = 2,
    /// 011: reserved encoding.
    Reserved3 = 3,
    /// 100: non-maskable interrupt.
    Nmi = 4,
    /// 101: INIT.
    Init = 5,
    /// 110: start-up IPI (ICR only).
    StartUp = 6,
    /// 111: external interrupt (LINT0/LINT1 LVT entries).
    ExtInt = 7,
}

impl DeliveryMode {
    /// Decodes a 3-bit delivery mode.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            0 => Self::Fixed,
            1 => Self::LowestPriority,
            2 => Self::Smi,
            3 => Self::Reserved3,
            4 => Self::Nmi,
            5 => Self::Init,
            6 => Self::StartUp,
            _ => Self::ExtInt,
        }
    }
    /// Encodes to the 3-bit field.
    pub const fn into_bits(self) -> u8 {
        self as u8
    }
}

/// Timer mode field of LVT Timer, bits 18:17 (SDM 11.5.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[repr(u8)]
pub enum TimerMode {
    /// 00: one-shot using TMICT.
    OneShot = 0,
    /// 01: periodic, reloading TMICT.
    Periodic = 1,
    /// 10: TSC-deadline (IA32_TSC_DEADLINE).
    TscDeadline = 2,
    /// 11: reserved; this model runs it as one-shot.
    Reserved = 3,
}

impl TimerMode {
    /// Decodes the 2-bit field.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::OneShot,
            1 => Self::Periodic,
            2 => Self::TscDeadline,
            _ => Self::Reserved,
        }
    }
    /// Encodes to the 2-bit field.
    pub const fn into_bits(self) -> u8 {
        self as u8
    }
}

/// A local vector table entry (SDM 11.5.1, Figure 11-8). Not every field
/// exists in every entry: [`crate::lvt::Lvt::write_mask`] gives the writable
/// bits of each.
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct LvtEntry {
    /// Bits 7:0: vector.
    pub vector: u8,
    /// Bits 10:8: delivery mode (not in LVT Timer / LVT Error).
    #[bits(3)]
    pub delivery_mode: DeliveryMode,
    #[bits(1)]
    __: u8,
    /// Bit 12: delivery status (read-only; always idle here).
    pub delivery_pending: bool,
    /// Bit 13: input pin polarity, 1 = active low (LINT0/LINT1).
    pub active_low: bool,
    /// Bit 14: remote IRR (read-only; LINT0/LINT1 level-triggered Fixed).
    pub remote_irr: bool,
    /// Bit 15: trigger mode, 1 = level (LINT0/LINT1).
    pub level_triggered: bool,
    /// Bit 16: mask.
    pub masked: bool,
    /// Bits 18:17: timer mode (LVT Timer only).
    #[bits(2)]
    pub timer_mode: TimerMode,
    #[bits(13)]
    __: u16,
}

/// LVT entry value after reset: masked, everything else zero.
pub const LVT_RESET: u32 = 1 << 16;

/// Spurious-interrupt vector register (SDM 11.9, Figure 11-23).
#[bitfield(u32)]
#[derive(PartialEq, Eq, Hash)]
pub struct Svr {
    /// Bits 7:0: spurious vector.
    pub vector: u8,
    /// Bit 8: APIC software enable.
    pub software_enabled: bool,
    /// Bit 9: focus processor checking disabled.
    pub focus_check_disabled: bool,
    #[bits(2)]
    __: u8,
    /// Bit 12: suppress EOI broadcasts.
    pub suppress_eoi_broadcast: bool,
    #[bits(19)]
    __: u32,
}

/// Reset value of the SVR.
pub const SVR_RESET: u32 = 0xFF;

/// Trigger mode of an interrupt message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum TriggerMode {
    /// Edge triggered.
    #[default]
    Edge,
    /// Level triggered (sets TMR; EOI is broadcast).
    Level,
}

impl TriggerMode {
    /// From the trigger bit.
    pub const fn from_bit(level: bool) -> Self {
        if level {
            TriggerMode::Level
        } else {
            TriggerMode::Edge
        }
    }
}

/// Destination mode of an IPI or MSI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum DestinationMode {
    /// Destination is an APIC ID.
    #[default]
    Physical,
    /// Destination is matched against LDR (and DFR in xAPIC).
    Logical,
}

/// Destination shorthand of the ICR, bits 19:18 (SDM 11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[repr(u8)]
pub enum Shorthand {
    /// 00: the destination field selects the targets.
    #[default]
    None = 0,
    /// 01: the sender only.
    SelfOnly = 1,
    /// 10: every APIC including the sender.
    AllIncludingSelf = 2,
    /// 11: every APIC but the sender.
    AllExcludingSelf = 3,
}

impl Shorthand {
    /// Decodes the 2-bit field.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 3 {
            0 => Self::None,
            1 => Self::SelfOnly,
            2 => Self::AllIncludingSelf,
            _ => Self::AllExcludingSelf,
        }
    }
    /// Encodes to the 2-bit field.
    pub const fn into_bits(self) -> u8 {
        self as u8
    }
}

/// The interrupt command register (SDM 11.6.1, Figure 11-12 and, for
/// x2APIC, Figure 11-28). In xAPIC mode the destination is bits 63:56; in
/// x2APIC mode it is bits 63:32.
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct Icr {
    /// Bits 7:0: vector (SIPI: start page).
    pub vector: u8,
    /// Bits 10:8: delivery mode.
    #[bits(3)]
    pub delivery_mode: DeliveryMode,
    /// Bit 11: destination mode, 1 = logical.
    pub logical: bool,
    /// Bit 12: delivery status (always reads 0 here: delivery is immediate).
    pub delivery_pending: bool,
    #[bits(1)]
    __: u8,
    /// Bit 14: level, 1 = assert.
    pub assert: bool,
    /// Bit 15: trigger mode, 1 = level.
    pub level_triggered: bool,
    #[bits(2)]
    __: u8,
    /// Bits 19:18: destination shorthand.
    #[bits(2)]
    pub shorthand: Shorthand,
    #[bits(12)]
    __: u16,
    /// Bits 63:32: destination (x2APIC); xAPIC uses bits 63:56.
    pub destination: u32,
}

impl Icr {
    /// Bits of the low half that hold state (everything but delivery status
    /// and reserved bits).
    pub const LOW_WRITABLE: u32 = 0x000C_CFFF;
    /// Reserved bits of the x2APIC ICR whose setting raises #GP (SDM 11.12.9).
    pub const X2APIC_RESERVED: u64 = 0xFFF3_2000;
    /// The xAPIC destination (ICR bits 63:56).
    pub const fn xapic_destination(self) -> u8 {
        (self.destination() >> 24) as u8
    }
}

/// `IA32_APIC_BASE` MSR (SDM 11.4.4, Figure 11-5).
#[bitfield(u64)]
#[derive(PartialEq, Eq, Hash)]
pub struct ApicBase {
    #[bits(8)]
    __: u8,
    /// Bit 8: this processor is the bootstrap processor.
    pub bsp: bool,
    #[bits(1)]
    __: u8,
    /// Bit 10: x2APIC mode enable (EXTD).
    pub x2apic: bool,
    /// Bit 11: APIC global enable (EN).
    pub enabled: bool,
    /// Bits 63:12: page number of the xAPIC MMIO base.
    #[bits(52)]
    pub page: u64,
}

impl ApicBase {
    /// Physical address of the xAPIC page.
    pub const fn address(self) -> u64 {
        self.page() << 12
    }
    /// Bits that are reserved whatever MAXPHYADDR is (0-7, 9).
    pub const ALWAYS_RESERVED: u64 = 0x2FF;
}

/// Divide configuration register (SDM 11.5.4, Figure 11-10): bits 0, 1 and
/// 3 select the divisor; every other bit reads 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DivideConfig(u32);

impl DivideConfig {
    /// Writable bits.
    pub const MASK: u32 = 0b1011;
    /// From a register write (other bits are dropped).
    pub const fn from_register(value: u32) -> Self {
        DivideConfig(value & Self::MASK)
    }
    /// The register value.
    pub const fn register(self) -> u32 {
        self.0
    }
    /// The divisor: 0b0000=2, 0001=4, 0010=8, 0011=16, 1000=32, 1001=64,
    /// 1010=128, 1011=1.
    pub const fn divisor(self) -> u32 {
        let sel = (self.0 & 3) | ((self.0 >> 1) & 4);
        // sel 0..=6 -> 2 << sel, sel 7 -> 1.
        if sel == 7 {
            1
        } else {
            2 << sel
        }
    }
}

/// Error status register bits (SDM 11.5.3, Figure 11-9).
pub mod esr {
    /// Bit 0: send checksum error (P6/Pentium only; never set here).
    pub const SEND_CHECKSUM: u32 = 1 << 0;
    /// Bit 1: receive checksum error (never set here).
    pub const RECEIVE_CHECKSUM: u32 = 1 << 1;
    /// Bit 2: send accept error (never set here).
    pub const SEND_ACCEPT: u32 = 1 << 2;
    /// Bit 3: receive accept error (never set here).
    pub const RECEIVE_ACCEPT: u32 = 1 << 3;
    /// Bit 4: redirectable IPI (lowest priority without support).
    pub const REDIRECTABLE_IPI: u32 = 1 << 4;
    /// Bit 5: send illegal vector.
    pub const SEND_ILLEGAL_VECTOR: u32 = 1 << 5;
    /// Bit 6: received illegal vector.
    pub const RECEIVE_ILLEGAL_VECTOR: u32 = 1 << 6;
    /// Bit 7: illegal register address.
    pub const ILLEGAL_REGISTER: u32 = 1 << 7;
    /// Every bit this model can set.
    pub const VALID: u32 = 0xFF;
}
