//! The local vector table (SDM 11.5.1): which entry has which fields, and
//! what an entry delivers.

use crate::regs::{DeliveryMode, LvtEntry, Register, TimerMode};

/// One entry of the local vector table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[repr(u8)]
pub enum Lvt {
    /// Corrected machine-check error interrupt (only with CMCI).
    Cmci = 0,
    /// APIC timer.
    Timer = 1,
    /// Thermal sensor.
    Thermal = 2,
    /// Performance-monitoring counter overflow.
    Perfmon = 3,
    /// Local interrupt pin 0.
    Lint0 = 4,
    /// Local interrupt pin 1.
    Lint1 = 5,
    /// APIC internal error.
    Error = 6,
}

/// Number of LVT entries this model stores (CMCI included).
pub const LVT_COUNT: usize = 7;

const VECTOR: u32 = 0xFF;
const DELIVERY_MODE: u32 = 0x700;
const POLARITY: u32 = 1 << 13;
const TRIGGER: u32 = 1 << 15;
const MASK: u32 = 1 << 16;
const TIMER_PERIODIC: u32 = 1 << 17;
const TIMER_TSC_DEADLINE: u32 = 1 << 18;
/// Read-only status bits (delivery status 12, remote IRR 14).
pub const LVT_READ_ONLY: u32 = (1 << 12) | (1 << 14);

impl Lvt {
    /// All entries, in storage order.
    pub const ALL: [Lvt; LVT_COUNT] = [
        Lvt::Cmci,
        Lvt::Timer,
        Lvt::Thermal,
        Lvt::Perfmon,
        Lvt::Lint0,
        Lvt::Lint1,
        Lvt::Error,
    ];

    /// The register holding this entry.
    pub const fn register(self) -> Register {
        match self {
            Lvt::Cmci => Register::LvtCmci,
            Lvt::Timer => Register::LvtTimer,
            Lvt::Thermal => Register::LvtThermal,
            Lvt::Perfmon => Register::LvtPerfmon,
            Lvt::Lint0 => Register::LvtLint0,
            Lvt::Lint1 => Register::LvtLint1,
            Lvt::Error => Register::LvtError,
        }
    }

    /// Index in storage order.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Bits software can write (SDM 11.5.1, Figure 11-8):
    /// Timer = vector, mask, mode (bit 17; bit 18 too when TSC-deadline is
    /// offered); Thermal/PerfMon/CMCI = vector, delivery mode, mask;
    /// LINT0/LINT1 = vector, delivery mode, polarity, trigger, mask;
    /// Error = vector, mask.
    pub const fn write_mask(self, tsc_deadline: bool) -> u32 {
        match self {
            Lvt::Timer => {
                VECTOR | MASK | TIMER_PERIODIC | if tsc_deadline { TIMER_TSC_DEADLINE } else { 0 }
            }
            Lvt::Cmci | Lvt::Thermal | Lvt::Perfmon => VECTOR | DELIVERY_MODE | MASK,
            Lvt::Lint0 | Lvt::Lint1 => VECTOR | DELIVERY_MODE | POLARITY | TRIGGER | MASK,
            Lvt::Error => VECTOR | MASK,
        }
    }

    /// What this entry delivers when it fires, or `None` when its delivery
    /// mode is not one this entry can use (reserved encodings; INIT/ExtINT
    /// from CMCI, thermal or PerfMon; SDM 11.5.1 "Delivery Mode").
    pub fn delivery(self, entry: LvtEntry) -> Option<LvtDelivery> {
        let vector = entry.vector();
        match self {
            Lvt::Timer | Lvt::Error => Some(LvtDelivery::Fixed {
                vector,
                level: false,
            }),
            Lvt::Cmci | Lvt::Thermal | Lvt::Perfmon => match entry.delivery_mode() {
                DeliveryMode::Fixed => Some(LvtDelivery::Fixed {
                    vector,
                    level: false,
                }),
                DeliveryMode::Smi => Some(LvtDelivery::Smi),
                DeliveryMode::Nmi => Some(LvtDelivery::Nmi),
                _ => None,
            },
            Lvt::Lint0 | Lvt::Lint1 => match entry.delivery_mode() {
                DeliveryMode::Fixed => Some(LvtDelivery::Fixed {
                    vector,
                    level: entry.level_triggered(),
                }),
                DeliveryMode::Smi => Some(LvtDelivery::Smi),
                DeliveryMode::Nmi => Some(LvtDelivery::Nmi),
                DeliveryMode::Init => Some(LvtDelivery::Init),
                DeliveryMode::ExtInt => Some(LvtDelivery::ExtInt),
                _ => None,
            },
        }
    }

    /// Timer mode of an LVT Timer value.
    pub const fn timer_mode(entry: LvtEntry) -> TimerMode {
        entry.timer_mode()
    }
}

/// What an LVT entry delivers to its own processor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LvtDelivery {
    /// A maskable interrupt with this vector; `level` for level-triggered
    /// LINT entries.
    Fixed {
        /// Vector.
        vector: u8,
        /// Level triggered.
        level: bool,
    },
    /// SMI.
    Smi,
    /// NMI.
    Nmi,
    /// INIT.
    Init,
    /// External interrupt: the vector comes from the external controller.
    ExtInt,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lvt_write_masks_per_entry() {
        assert_eq!(Lvt::Timer.write_mask(false), 0x0003_00FF);
        assert_eq!(Lvt::Timer.write_mask(true), 0x0007_00FF);
        assert_eq!(Lvt::Thermal.write_mask(true), 0x0001_07FF);
        assert_eq!(Lvt::Perfmon.write_mask(true), 0x0001_07FF);
        assert_eq!(Lvt::Cmci.write_mask(true), 0x0001_07FF);
        assert_eq!(Lvt::Lint0.write_mask(true), 0x0001_A7FF);
        assert_eq!(Lvt::Lint1.write_mask(true), 0x0001_A7FF);
        assert_eq!(Lvt::Error.write_mask(true), 0x0001_00FF);
    }

    #[test]
    fn lvt_delivery_modes_by_entry() {
        let e = |raw: u32| LvtEntry::from_bits(raw);
        // Timer ignores the delivery-mode bits: always Fixed.
        assert_eq!(
            Lvt::Timer.delivery(e(0x430)),
            Some(LvtDelivery::Fixed {
                vector: 0x30,
                level: false
            })
        );
        assert_eq!(Lvt::Thermal.delivery(e(0x400)), Some(LvtDelivery::Nmi));
        assert_eq!(Lvt::Thermal.delivery(e(0x700)), None);
        assert_eq!(Lvt::Perfmon.delivery(e(0x500)), None);
        assert_eq!(Lvt::Lint0.delivery(e(0x700)), Some(LvtDelivery::ExtInt));
        assert_eq!(Lvt::Lint1.delivery(e(0x400)), Some(LvtDelivery::Nmi));
        assert_eq!(Lvt::Lint0.delivery(e(0x500)), Some(LvtDelivery::Init));
        assert_eq!(Lvt::Lint0.delivery(e(0x300)), None);
        assert_eq!(
            Lvt::Lint0.delivery(e(0x8041)),
            Some(LvtDelivery::Fixed {
                vector: 0x41,
                level: true
            })
        );
    }
}
