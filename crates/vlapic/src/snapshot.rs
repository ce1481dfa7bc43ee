//! Save and restore: a plain, versioned state struct that captures
//! everything needed to continue exactly, including the hidden state
//! (`IA32_APIC_BASE`, the timer remainder or deadline, the pending ESR,
//! wait-for-SIPI and pending events).

use crate::apic::{LocalApic, Pending};
use crate::event::RunState;
use crate::lvt::{Lvt, LVT_COUNT, LVT_READ_ONLY};
use crate::mode::{self, ApicMode};
use crate::priority::InterruptRegisters;
use crate::regs::{esr, ApicBase, DivideConfig, Icr, LvtEntry, Svr, TimerMode, LVT_RESET};
use crate::timer::TimerSnapshot;
use crate::vector::VectorSet;

/// Current version of [`ApicState`].
pub const STATE_VERSION: u32 = 1;

/// Everything one local APIC holds, as plain data.
///
/// Registers are stored as the guest reads them (xAPIC layout), the timer
/// as the bus cycles already elapsed in the current period (restoring
/// resumes the remainder, not a full period), the TSC deadline as the
/// absolute guest TSC value.
///
/// ```
/// use vlapic::{ApicConfig, LocalApic};
/// let mut a = LocalApic::new(ApicConfig::new(1));
/// a.mmio_write(0, 0x380, &1000u32.to_le_bytes()); // TMICT
/// let saved = a.save(400);
/// let mut b = LocalApic::new(ApicConfig::new(1));
/// b.restore(10_000, &saved).unwrap();
/// assert_eq!(b.save(10_000), saved);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ApicState {
    /// [`STATE_VERSION`] of the writer.
    pub version: u32,
    /// Initial APIC ID (the x2APIC ID).
    pub apic_id: u32,
    /// `IA32_APIC_BASE` (mode, base, BSP).
    pub apic_base: u64,
    /// xAPIC ID register bits 31:24.
    pub xapic_id: u8,
    /// TPR.
    pub tpr: u8,
    /// LDR.
    pub ldr: u32,
    /// DFR.
    pub dfr: u32,
    /// SVR.
    pub svr: u32,
    /// IRR.
    pub irr: VectorSet,
    /// ISR.
    pub isr: VectorSet,
    /// TMR.
    pub tmr: VectorSet,
    /// ESR as the guest reads it.
    pub esr: u32,
    /// Errors collected since the last ESR write (hidden).
    pub esr_pending: u32,
    /// LVT entries in the order CMCI, Timer, Thermal, PerfMon, LINT0,
    /// LINT1, Error.
    pub lvt: [u32; LVT_COUNT],
    /// ICR: low half, and ICR2 (xAPIC) or the destination (x2APIC) above.
    pub icr: u64,
    /// TMICT.
    pub timer_initial_count: u32,
    /// TDCR.
    pub timer_divide: u32,
    /// Whether a one-shot or periodic count is running.
    pub timer_running: bool,
    /// Bus cycles elapsed in the current period when saved.
    pub timer_elapsed_cycles: u64,
    /// `IA32_TSC_DEADLINE` (0 = disarmed).
    pub tsc_deadline: u64,
    /// LINT0/LINT1 input levels.
    pub lint_levels: [bool; 2],
    /// Running or waiting for SIPI.
    pub run_state: RunState,
    /// Pending NMI.
    pub pending_nmi: bool,
    /// Pending SMI.
    pub pending_smi: bool,
    /// Pending INIT (the APIC side of the reset is done).
    pub pending_init: bool,
    /// Pending start-up vector.
    pub pending_sipi: Option<u8>,
    /// Latched ExtINT message.
    pub pending_extint: bool,
}

/// Why a state was refused by [`LocalApic::restore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    /// Written by an unknown format version.
    Version(u32),
    /// `IA32_APIC_BASE` has reserved bits or the invalid EN=0/EXTD=1.
    ApicBase(u64),
    /// x2APIC mode without x2APIC in the configuration.
    X2ApicNotOffered,
    /// LDR does not fit the mode (x2APIC: not derived from the ID; xAPIC:
    /// bits 23:0 set).
    Ldr(u32),
    /// DFR bits 27:0 are not all ones.
    Dfr(u32),
    /// SVR has reserved (or unsupported) bits set.
    Svr(u32),
    /// A vector 0-15 is set in IRR, ISR or TMR.
    IllegalVector,
    /// ESR or the pending ESR has undefined bits set.
    Esr(u32),
    /// An LVT entry has bits outside its layout (or remote IRR without
    /// level trigger), or CMCI is used without CMCI. An entry unmasked
    /// while the APIC is software-disabled is accepted (KVM's BSP reset
    /// state has LVT LINT0 = 0x700 with SVR = 0xFF).
    Lvt(Lvt, u32),
    /// ICR has reserved bits set.
    Icr(u64),
    /// TDCR has reserved bits set.
    TimerDivide(u32),
    /// The timer fields contradict each other or the LVT Timer mode.
    Timer,
    /// A pending SIPI while waiting for SIPI, or similar.
    RunState,
}

impl core::fmt::Display for StateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StateError::Version(v) => write!(f, "unknown state version {v}"),
            StateError::ApicBase(v) => write!(f, "invalid IA32_APIC_BASE {v:#x}"),
            StateError::X2ApicNotOffered => f.write_str("x2APIC mode but x2APIC not offered"),
            StateError::Ldr(v) => write!(f, "LDR {v:#x} inconsistent with the mode"),
            StateError::Dfr(v) => write!(f, "invalid DFR {v:#x}"),
            StateError::Svr(v) => write!(f, "invalid SVR {v:#x}"),
            StateError::IllegalVector => f.write_str("vector 0-15 set in IRR/ISR/TMR"),
            StateError::Esr(v) => write!(f, "invalid ESR bits {v:#x}"),
            StateError::Lvt(l, v) => write!(f, "invalid LVT {l:?} value {v:#x}"),
            StateError::Icr(v) => write!(f, "invalid ICR {v:#x}"),
            StateError::TimerDivide(v) => write!(f, "invalid TDCR {v:#x}"),
            StateError::Timer => f.write_str("inconsistent timer state"),
            StateError::RunState => f.write_str("inconsistent run state / pending events"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for StateError {}

impl LocalApic {
    /// Captures the complete state at `now`.
    pub fn save(&self, now: u64) -> ApicState {
        let t: TimerSnapshot = self.timer.snapshot(&self.tb, now);
        ApicState {
            version: STATE_VERSION,
            apic_id: self.cfg.apic_id,
            apic_base: self.base.into_bits(),
            xapic_id: self.xapic_id,
            tpr: self.tpr,
            ldr: self.ldr,
            dfr: self.dfr,
            svr: self.svr.into_bits(),
            irr: self.irq.irr,
            isr: self.irq.isr,
            tmr: self.irq.tmr,
            esr: self.esr,
            esr_pending: self.esr_pending,
            lvt: self.lvt.map(|e| e.into_bits()),
            icr: self.icr.into_bits(),
            timer_initial_count: t.initial_count,
            timer_divide: t.divide,
            timer_running: t.running,
            timer_elapsed_cycles: t.elapsed_cycles,
            tsc_deadline: t.tsc_deadline,
            lint_levels: self.lint_level,
            run_state: self.run_state,
            pending_nmi: self.pending.nmi,
            pending_smi: self.pending.smi,
            pending_init: self.pending.init,
            pending_sipi: self.pending.sipi,
            pending_extint: self.pending.extint,
        }
    }

    /// Checks `state` against this APIC's configuration without changing
    /// anything.
    pub fn validate(&self, s: &ApicState) -> Result<(), StateError> {
        if s.version != STATE_VERSION {
            return Err(StateError::Version(s.version));
        }
        let base = ApicBase::from_bits(s.apic_base);
        mode::check_reserved(s.apic_base, self.cfg.max_phys_addr_bits, true)
            .map_err(|_| StateError::ApicBase(s.apic_base))?;
        let m = ApicMode::of(base).ok_or(StateError::ApicBase(s.apic_base))?;
        if m == ApicMode::X2Apic && !self.cfg.x2apic {
            return Err(StateError::X2ApicNotOffered);
        }
        match m {
            ApicMode::X2Apic => {
                if s.ldr != LocalApic::x2apic_ldr(s.apic_id) {
                    return Err(StateError::Ldr(s.ldr));
                }
            }
            _ => {
                if s.ldr & 0x00FF_FFFF != 0 {
                    return Err(StateError::Ldr(s.ldr));
                }
            }
        }
        if s.dfr & 0x0FFF_FFFF != 0x0FFF_FFFF {
            return Err(StateError::Dfr(s.dfr));
        }
        let svr_mask = 0x3FF
            | if self.cfg.suppress_eoi_broadcast {
                1 << 12
            } else {
                0
            };
        if s.svr & !svr_mask != 0 {
            return Err(StateError::Svr(s.svr));
        }
        if s.irr.has_illegal() || s.isr.has_illegal() || s.tmr.has_illegal() {
            return Err(StateError::IllegalVector);
        }
        for v in [s.esr, s.esr_pending] {
            if v & !esr::VALID != 0 {
                return Err(StateError::Esr(v));
            }
        }
        for lvt in Lvt::ALL {
            let raw = s.lvt[lvt.index()];
            let e = LvtEntry::from_bits(raw);
            let mut allowed = lvt.write_mask(self.cfg.tsc_deadline);
            if matches!(lvt, Lvt::Lint0 | Lvt::Lint1) {
                allowed |= LVT_READ_ONLY & !(1 << 12);
            }
            // An unmasked entry while software-disabled cannot arise from
            // guest writes here, but is a legal state elsewhere (KVM's BSP
            // reset has LVT LINT0 = 0x700 with SVR = 0xFF): accepted.
            let bad = raw & !allowed != 0
                || (lvt == Lvt::Cmci && !self.cfg.cmci && raw != LVT_RESET)
                || (e.remote_irr() && !e.level_triggered());
            if bad {
                return Err(StateError::Lvt(lvt, raw));
            }
        }
        let icr = Icr::from_bits(s.icr);
        let icr_bad = match m {
            ApicMode::X2Apic => s.icr & (Icr::X2APIC_RESERVED | 1 << 12) != 0,
            _ => (s.icr as u32) & !Icr::LOW_WRITABLE != 0 || icr.destination() & 0x00FF_FFFF != 0,
        };
        if icr_bad {
            return Err(StateError::Icr(s.icr));
        }
        if s.timer_divide & !DivideConfig::MASK != 0 {
            return Err(StateError::TimerDivide(s.timer_divide));
        }
        let tmode = LvtEntry::from_bits(s.lvt[Lvt::Timer.index()]).timer_mode();
        if tmode == TimerMode::TscDeadline {
            if s.timer_initial_count != 0 || s.timer_running {
                return Err(StateError::Timer);
            }
        } else if s.tsc_deadline != 0 {
            return Err(StateError::Timer);
        }
        if s.timer_running {
            // Elapsed may reach the interval: a state saved after the
            // expiry but before the APIC was advanced fires on the next
            // advance, exactly as it would have without the save.
            if s.timer_initial_count == 0 {
                return Err(StateError::Timer);
            }
        } else if s.timer_elapsed_cycles != 0 {
            return Err(StateError::Timer);
        }
        if s.pending_sipi.is_some() && s.run_state == RunState::WaitForSipi {
            return Err(StateError::RunState);
        }
        Ok(())
    }

    /// Restores a state saved by [`LocalApic::save`] (possibly on another
    /// host), resuming the timer at `now`. The state's APIC ID and BSP bit
    /// replace the configuration's; the features offered stay. On error
    /// nothing changes.
    pub fn restore(&mut self, now: u64, s: &ApicState) -> Result<(), StateError> {
        self.validate(s)?;
        let base = ApicBase::from_bits(s.apic_base);
        self.cfg.apic_id = s.apic_id;
        self.cfg.bsp = base.bsp();
        self.base = base;
        self.mode = ApicMode::of(base).unwrap_or(ApicMode::Disabled);
        self.xapic_id = s.xapic_id;
        self.tpr = s.tpr;
        self.ldr = s.ldr;
        self.dfr = s.dfr;
        self.svr = Svr::from_bits(s.svr);
        self.irq = InterruptRegisters {
            irr: s.irr,
            isr: s.isr,
            tmr: s.tmr,
        };
        self.esr = s.esr;
        self.esr_pending = s.esr_pending;
        self.lvt = s.lvt.map(LvtEntry::from_bits);
        self.icr = Icr::from_bits(s.icr);
        let tmode = self.lvt[Lvt::Timer.index()].timer_mode();
        self.timer.restore(
            &self.tb,
            now,
            tmode,
            &TimerSnapshot {
                initial_count: s.timer_initial_count,
                divide: s.timer_divide,
                running: s.timer_running,
                elapsed_cycles: s.timer_elapsed_cycles,
                tsc_deadline: s.tsc_deadline,
            },
        );
        self.lint_level = s.lint_levels;
        self.run_state = s.run_state;
        self.pending = Pending {
            nmi: s.pending_nmi,
            smi: s.pending_smi,
            init: s.pending_init,
            sipi: s.pending_sipi,
            extint: s.pending_extint,
        };
        Ok(())
    }
}
