//! Conversion between [`vlapic::ApicState`] and KVM's LAPIC state.
//!
//! KVM's side ([`KvmLapicState`]) is the 1 KiB `kvm_lapic_state` of
//! `KVM_GET_LAPIC`/`KVM_SET_LAPIC`, `IA32_APIC_BASE` (MSR 0x1B) and
//! `IA32_TSC_DEADLINE` (MSR 0x6E0), read with `KVM_GET_MSRS`, and the
//! [`IdFormat`] the VM uses (`KVM_X2APIC_API_USE_32BIT_IDS` or not).
//!
//! # Field by field
//!
//! | `ApicState` | KVM |
//! | --- | --- |
//! | `apic_base` | MSR 0x1B |
//! | `apic_id` | the vCPU ID. In x2APIC mode also the ID register (whole with [`IdFormat::Full32`], `id << 24` truncated to 8 bits with [`IdFormat::Legacy`]). In xAPIC mode not in the blob: [`Extras::apic_id`], else the xAPIC ID |
//! | `xapic_id` | ID register bits 31:24 (xAPIC mode). In x2APIC mode not in the blob: [`Extras::xapic_id`], else the low 8 bits of the APIC ID |
//! | `tpr`, `ldr`, `dfr`, `svr`, `esr` | their registers. In x2APIC mode the LDR is derived from the ID (KVM does the same on `KVM_SET_LAPIC`) |
//! | `irr`, `isr`, `tmr` | their 8 registers each |
//! | `lvt` | the 7 LVT registers. Without CMCI (version register max LVT 5) KVM leaves 0x2F0 at 0; `ApicState` holds the reset value 0x10000 there |
//! | `icr` | 0x300 (low) and 0x310 (bits 63:32), in both modes |
//! | `timer_initial_count`, `timer_divide` | TMICT, TDCR |
//! | `timer_running`, `timer_elapsed_cycles` | derived from TMICT, TMCCT, TDCR and the timer mode (below), or exact from [`Extras::timer`] |
//! | `tsc_deadline` | MSR 0x6E0 |
//! | `esr_pending` | none: KVM has no ESR latch. [`Extras::esr_pending`] |
//! | `lint_levels` | none (KVM keeps the PIC's INTR line elsewhere). [`Extras::lint_levels`] |
//! | `run_state`, `pending_sipi` | `kvm_mp_state` + `kvm_vcpu_events.sipi_vector` ([`Extras::from_kvm_vcpu`]) |
//! | `pending_nmi`, `pending_smi`, `pending_init` | `kvm_vcpu_events` `nmi.pending`, `smi.pending`, `smi.latched_init` |
//! | `pending_extint` | none (the PIC's pending interrupt). [`Extras::pending_extint`] |
//!
//! # The timer
//!
//! `KVM_GET_LAPIC` stores in TMCCT the count at that instant:
//! `remaining_ns / divisor` (KVM's bus clock is 1 GHz). A one-shot timer
//! that expired reads 0; TSC-deadline mode reads 0. On `KVM_SET_LAPIC`,
//! KVM restarts the count at TMCCT (TMCCT 0: a periodic timer restarts a
//! full period, a one-shot fires at once; TMCCT above the period: a full
//! period).
//!
//! [`from_kvm`] derives, with TMICT `i`, TMCCT `c` and divisor `d`:
//! TSC-deadline mode or `i == 0`: stopped. One-shot, `c == 0`: expired,
//! stopped. `0 < c <= i`: running, `elapsed = (i - c) * d` bus cycles.
//! Periodic with `c == 0` or `c > i` (only KVM's clamped short periods give
//! `c > i`): running from the start of a period, as KVM restarts it.
//! [`to_kvm`] writes the count vlapic would read: `i - elapsed / d`,
//! 0 when stopped. The sub-tick remainder `elapsed % d` does not fit TMCCT:
//! carry it in [`Extras::timer`] for an exact round trip.
//!
//! # Volatile fields
//!
//! Bytes of the blob that KVM recomputes or ignores, and that a
//! KVM -> vlapic -> KVM round trip need not reproduce: [`VOLATILE_RANGES`].
//!
//! # KVM behaviour worth knowing (measured here unless noted)
//!
//! - Reset: version 0x50014 (6 LVTs, 0x2F0 left at 0), DFR 0xFFFFFFFF,
//!   SVR 0xFF, LVTs 0x10000, but the BSP's LVT LINT0 is 0x700 (ExtINT,
//!   unmasked: KVM's `LINT0_REENABLED` quirk) while the APIC is
//!   software-disabled. vlapic's `validate` refuses that combination.
//! - `KVM_SET_LAPIC` computes PPR before it recounts the ISR: a GET right
//!   after a SET can show PPR = TPR with a higher vector in service.
//! - Hardware disable (EN=0) keeps every register (vlapic, like the SDM,
//!   does an INIT reset); re-enable resets only the xAPIC ID.
//! - x2APIC mode: the ID is `id << 24` (legacy) or whole (32-bit IDs, and
//!   then `KVM_SET_LAPIC` fails with `EINVAL` on any other ID); the LDR is
//!   derived; the ICR's high half is at 0x310 and also at 0x304.
//! - Restoring a one-shot with TMICT != 0 and TMCCT 0 (expired) makes KVM
//!   fire it again at once (from KVM's `set_target_expiration`, not
//!   measured: the vCPUs are not run).
//! - KVM keeps timer expiries it has not yet put into IRR in a counter
//!   outside `kvm_lapic_state` (it injects them at the next vCPU entry).
//!   A one-shot or TSC-deadline timer that expired after the vCPU's last
//!   entry therefore reads as "expired" with no IRR bit, and [`from_kvm`]
//!   cannot recover the interrupt: save KVM's LAPIC right after a
//!   `KVM_RUN` returned (as `vlapic-vmm`'s migration does), or set the
//!   LVT Timer vector in IRR yourself when the expiry is known to be
//!   undelivered. (Measured by `vlapic-vmm --switch-irqchip-after`.)

use kvm_bindings::{
    kvm_lapic_state, kvm_mp_state, kvm_vcpu_events, KVM_MP_STATE_INIT_RECEIVED,
    KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_SIPI_RECEIVED, KVM_MP_STATE_UNINITIALIZED,
    KVM_VCPUEVENT_VALID_NMI_PENDING, KVM_VCPUEVENT_VALID_SIPI_VECTOR, KVM_VCPUEVENT_VALID_SMM,
};
use vlapic::regs::{ApicBase, Icr, LvtEntry, TimerMode, APIC_VERSION, LVT_RESET};
use vlapic::{ApicMode, ApicState, LocalApic, Lvt, Register, RunState, STATE_VERSION};

use crate::error::{Error, Result};
use crate::view::{IdFormat, KvmLapic};

/// Byte ranges of `kvm_lapic_state` that are volatile: recomputed by KVM
/// (and by [`to_kvm`]) rather than restored, so two snapshots of the same
/// state may differ there.
///
/// - TMCCT (0x390): the live count, a function of the time of the read.
/// - PPR (0x0A0): KVM recomputes it from TPR and ISR on `KVM_SET_LAPIC`;
///   [`to_kvm`] computes it the same way, [`from_kvm`] ignores it.
/// - Version (0x030): KVM rewrites it on `KVM_SET_LAPIC` from the vCPU's
///   CPUID and MCG_CAP; [`to_kvm`] writes what [`KvmProfile::version`] says.
/// - 0x304..0x308: where KVM keeps the high half of the 64-bit x2APIC ICR
///   internally (not split); userspace's copy is ICR2 at 0x310.
///   [`to_kvm`] mirrors ICR2 there in x2APIC mode, as KVM's own GET does.
pub const VOLATILE_RANGES: [(usize, usize); 4] = [
    (0x030, 0x034),
    (0x0A0, 0x0A4),
    (0x304, 0x308),
    (0x390, 0x394),
];

/// KVM's LAPIC state for one vCPU: the register blob and the two MSRs that
/// travel separately.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvmLapicState {
    /// `KVM_GET_LAPIC` / `KVM_SET_LAPIC` blob.
    pub lapic: kvm_lapic_state,
    /// `IA32_APIC_BASE` (MSR 0x1B).
    pub apic_base: u64,
    /// `IA32_TSC_DEADLINE` (MSR 0x6E0).
    pub tsc_deadline: u64,
}

// `kvm_lapic_state` is plain bytes: equality is total.
impl Eq for KvmLapicState {}

impl KvmLapicState {
    /// The typed view of the blob (a copy).
    pub fn view(&self) -> KvmLapic {
        KvmLapic::from(self.lapic)
    }
}

/// The exact timer position, which TMCCT only approximates to a whole
/// tick (see the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimerExact {
    /// `ApicState::timer_running`.
    pub running: bool,
    /// `ApicState::timer_elapsed_cycles`.
    pub elapsed_cycles: u64,
}

/// What [`from_kvm`] needs beyond the blob and the two MSRs: the
/// `ApicState` fields KVM does not keep in `kvm_lapic_state`.
///
/// [`Extras::default`] means "nothing pending, running, IDs from the
/// registers". [`Extras::of`] takes them from an `ApicState` (for exact
/// round trips); [`Extras::from_kvm_vcpu`] from KVM's other vCPU state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extras {
    /// The initial (x2APIC) APIC ID, i.e. KVM's vCPU ID. `None`: from the ID
    /// register (x2APIC mode; with [`IdFormat::Legacy`] only 8 bits) or the
    /// xAPIC ID. When given, an x2APIC-mode ID register must agree with it.
    pub apic_id: Option<u32>,
    /// The xAPIC ID kept while in x2APIC mode (where the register holds
    /// the x2APIC ID). `None`: the low 8 bits of the APIC ID.
    pub xapic_id: Option<u8>,
    /// Errors collected since the last ESR write (KVM has no latch).
    pub esr_pending: u32,
    /// LINT0/LINT1 input levels.
    pub lint_levels: [bool; 2],
    /// Running, or waiting for SIPI.
    pub run_state: RunState,
    /// Pending NMI.
    pub pending_nmi: bool,
    /// Pending SMI.
    pub pending_smi: bool,
    /// Pending (latched) INIT.
    pub pending_init: bool,
    /// Pending start-up vector.
    pub pending_sipi: Option<u8>,
    /// Latched ExtINT.
    pub pending_extint: bool,
    /// The exact timer; `None`: derived from TMCCT. When given, it must
    /// give the blob's TMCCT ([`Error::TimerMismatch`] otherwise).
    pub timer: Option<TimerExact>,
}

impl Extras {
    /// Everything `state` holds that the KVM blob does not.
    pub fn of(state: &ApicState) -> Self {
        Extras {
            apic_id: Some(state.apic_id),
            xapic_id: Some(state.xapic_id),
            esr_pending: state.esr_pending,
            lint_levels: state.lint_levels,
            run_state: state.run_state,
            pending_nmi: state.pending_nmi,
            pending_smi: state.pending_smi,
            pending_init: state.pending_init,
            pending_sipi: state.pending_sipi,
            pending_extint: state.pending_extint,
            timer: Some(TimerExact {
                running: state.timer_running,
                elapsed_cycles: state.timer_elapsed_cycles,
            }),
        }
    }

    /// From the vCPU ID, `KVM_GET_MP_STATE` and `KVM_GET_VCPU_EVENTS`.
    ///
    /// `UNINITIALIZED` (a fresh AP) and `INIT_RECEIVED` become wait-for-SIPI;
    /// `SIPI_RECEIVED` becomes running with the pending start-up vector from
    /// `sipi_vector`; everything else (runnable, halted, ...) running.
    /// `nmi.pending`, `smi.pending` and `smi.latched_init` give the pending
    /// NMI, SMI and INIT. No ESR latch, LINT levels or ExtINT: zero.
    ///
    /// Those three events then live in two places: the `ApicState` built
    /// from these extras and the `kvm_vcpu_events` they came from. An
    /// embedder that restores the same events into another VM must clear
    /// them on one side (e.g. `events.nmi.pending = 0` before restoring),
    /// or the NMI is delivered twice.
    ///
    /// ```
    /// use kvm_bindings::{kvm_mp_state, kvm_vcpu_events, KVM_MP_STATE_UNINITIALIZED};
    /// use vlapic::RunState;
    /// let mp = kvm_mp_state { mp_state: KVM_MP_STATE_UNINITIALIZED };
    /// let x = vlapic_kvm::Extras::from_kvm_vcpu(1, &mp, &kvm_vcpu_events::default());
    /// assert_eq!(x.run_state, RunState::WaitForSipi);
    /// assert_eq!(x.apic_id, Some(1));
    /// ```
    pub fn from_kvm_vcpu(vcpu_id: u32, mp: &kvm_mp_state, events: &kvm_vcpu_events) -> Self {
        let (run_state, pending_sipi) = match mp.mp_state {
            KVM_MP_STATE_UNINITIALIZED | KVM_MP_STATE_INIT_RECEIVED => {
                (RunState::WaitForSipi, None)
            }
            KVM_MP_STATE_SIPI_RECEIVED => (RunState::Running, Some(events.sipi_vector as u8)),
            _ => (RunState::Running, None),
        };
        Extras {
            apic_id: Some(vcpu_id),
            run_state,
            pending_sipi,
            pending_nmi: events.nmi.pending != 0,
            pending_smi: events.smi.pending != 0,
            pending_init: events.smi.latched_init != 0,
            ..Extras::default()
        }
    }
}

/// The `kvm_mp_state` that matches `state`'s run state: wait-for-SIPI is
/// `INIT_RECEIVED` (KVM only takes a SIPI there), a pending start-up vector
/// `SIPI_RECEIVED` (with [`apply_to_vcpu_events`] for the vector), otherwise
/// `RUNNABLE`.
///
/// ```
/// use vlapic::{ApicConfig, LocalApic};
/// let ap = LocalApic::new(ApicConfig::new(1)).save(0);
/// assert_eq!(vlapic_kvm::convert::kvm_mp_state_of(&ap).mp_state,
///            kvm_bindings::KVM_MP_STATE_INIT_RECEIVED);
/// ```
pub fn kvm_mp_state_of(state: &ApicState) -> kvm_mp_state {
    let mp_state = if state.pending_sipi.is_some() {
        KVM_MP_STATE_SIPI_RECEIVED
    } else if state.run_state == RunState::WaitForSipi {
        KVM_MP_STATE_INIT_RECEIVED
    } else {
        KVM_MP_STATE_RUNNABLE
    };
    kvm_mp_state { mp_state }
}

/// Writes `state`'s pending NMI and start-up vector into `events` (and
/// sets their valid flags). The pending SMI and latched INIT are written
/// only if `events` already has `KVM_VCPUEVENT_VALID_SMM` (i.e. came from
/// `KVM_GET_VCPU_EVENTS`), so that the SMM state beside them is KVM's own.
///
/// The pending NMI is merged (an NMI KVM already has pending stays). A
/// pending INIT can only travel in `smi.latched_init`; without
/// `KVM_VCPUEVENT_VALID_SMM` it is not written, so deliver a pending INIT
/// (`LocalApic::take_init` and the vCPU reset) before converting.
pub fn apply_to_vcpu_events(state: &ApicState, events: &mut kvm_vcpu_events) {
    events.nmi.pending |= state.pending_nmi as u8;
    events.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING;
    if let Some(v) = state.pending_sipi {
        events.sipi_vector = v as u32;
        events.flags |= KVM_VCPUEVENT_VALID_SIPI_VECTOR;
    }
    if events.flags & KVM_VCPUEVENT_VALID_SMM != 0 {
        events.smi.pending = state.pending_smi as u8;
        events.smi.latched_init = state.pending_init as u8;
    }
}

/// What [`to_kvm_with`] needs to know about the target vCPU that
/// `ApicState` does not say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvmProfile {
    /// x2APIC ID format of the VM.
    pub ids: IdFormat,
    /// Version register to write (volatile: KVM rewrites it on SET). `None`:
    /// version 0x14, 7 LVTs if LVT CMCI is not at its reset value (else 6),
    /// suppress-EOI-broadcast support if SVR bit 12 is set.
    pub version: Option<u32>,
}

impl KvmProfile {
    /// The profile of a blob KVM produced (its ID format and version).
    pub fn of(lapic: &KvmLapic, ids: IdFormat) -> Self {
        KvmProfile {
            ids,
            version: Some(lapic.version()),
        }
    }
}

/// The timer mode of an LVT Timer value.
fn timer_mode(lvt_timer: u32) -> TimerMode {
    LvtEntry::from_bits(lvt_timer).timer_mode()
}

/// TMCCT as vlapic reads it for a saved timer.
fn tmcct_of(initial: u32, divide: u32, mode: TimerMode, running: bool, elapsed: u64) -> u32 {
    if !running || mode == TimerMode::TscDeadline || initial == 0 {
        return 0;
    }
    let div = vlapic::regs::DivideConfig::from_register(divide).divisor() as u64;
    (initial as u64).saturating_sub(elapsed / div) as u32
}

/// Timer position from TMICT/TMCCT/TDCR (see the [module docs](self)).
fn derive_timer(initial: u32, current: u32, divide: u32, mode: TimerMode) -> TimerExact {
    let stopped = TimerExact::default();
    if mode == TimerMode::TscDeadline || initial == 0 {
        return stopped;
    }
    let div = vlapic::regs::DivideConfig::from_register(divide).divisor() as u64;
    let periodic = mode == TimerMode::Periodic;
    if current == 0 && !periodic {
        return stopped;
    }
    let elapsed = if current == 0 || current > initial {
        0
    } else {
        (initial - current) as u64 * div
    };
    TimerExact {
        running: true,
        elapsed_cycles: elapsed,
    }
}

/// Converts a vlapic state to KVM's, with the default [`KvmProfile`] for
/// `ids`. Never fails: every `ApicState` has a blob (what `ApicState` holds
/// that the blob cannot is in [`Extras::of`]).
///
/// ```
/// use vlapic::{ApicConfig, LocalApic, Register};
/// use vlapic_kvm::{to_kvm, IdFormat};
/// let bsp = LocalApic::new(ApicConfig::new(0).with_bsp(true)).save(0);
/// let k = to_kvm(&bsp, IdFormat::Legacy);
/// assert_eq!(k.apic_base, 0xFEE0_0900);
/// assert_eq!(k.view().read(Register::Version), 0x0005_0014);
/// assert_eq!(k.view().dfr(), 0xFFFF_FFFF);
/// ```
pub fn to_kvm(state: &ApicState, ids: IdFormat) -> KvmLapicState {
    to_kvm_with(state, &KvmProfile { ids, version: None })
}

/// [`to_kvm`] with an explicit [`KvmProfile`].
pub fn to_kvm_with(s: &ApicState, profile: &KvmProfile) -> KvmLapicState {
    let mut k = KvmLapic::new();
    let base = ApicBase::from_bits(s.apic_base);
    let x2 = ApicMode::of(base) == Some(ApicMode::X2Apic);
    let cmci_used = s.lvt[Lvt::Cmci.index()] != LVT_RESET;
    let version = profile.version.unwrap_or(
        APIC_VERSION
            | if cmci_used { 6 << 16 } else { 5 << 16 }
            | if s.svr & (1 << 12) != 0 { 1 << 24 } else { 0 },
    );
    k.write(Register::Version, version);
    let cmci = (((version >> 16) & 0xFF) + 1) >= 7;

    let id = if x2 {
        match profile.ids {
            IdFormat::Full32 => s.apic_id,
            IdFormat::Legacy => s.apic_id << 24,
        }
    } else {
        (s.xapic_id as u32) << 24
    };
    k.write(Register::Id, id);
    k.write(Register::Tpr, s.tpr as u32);
    k.write(
        Register::Ppr,
        vlapic::priority::ppr(s.tpr, s.isr.highest().unwrap_or(0)) as u32,
    );
    k.write(Register::Ldr, s.ldr);
    k.write(Register::Dfr, s.dfr);
    k.write(Register::Svr, s.svr);
    k.set_vectors_raw(Register::Isr, s.isr);
    k.set_vectors_raw(Register::Tmr, s.tmr);
    k.set_vectors_raw(Register::Irr, s.irr);
    k.write(Register::Esr, s.esr);
    for lvt in Lvt::ALL {
        let mut v = s.lvt[lvt.index()];
        if lvt == Lvt::Cmci && !cmci && v == LVT_RESET {
            v = 0; // KVM never writes the entry it does not have.
        }
        k.write(lvt.register(), v);
    }
    k.set_icr_raw(s.icr);
    if x2 {
        // KVM's own copy of the 64-bit ICR's high half (VOLATILE_RANGES).
        k.set_word(0x304, (s.icr >> 32) as u32);
    }
    k.write(Register::TimerInitialCount, s.timer_initial_count);
    k.write(Register::TimerDivide, s.timer_divide);
    let mode = timer_mode(s.lvt[Lvt::Timer.index()]);
    k.write(
        Register::TimerCurrentCount,
        tmcct_of(
            s.timer_initial_count,
            s.timer_divide,
            mode,
            s.timer_running,
            s.timer_elapsed_cycles,
        ),
    );
    KvmLapicState {
        lapic: k.into(),
        apic_base: s.apic_base,
        tsc_deadline: s.tsc_deadline,
    }
}

fn unrepresentable(register: Register, value: u32) -> Error {
    Error::Unrepresentable { register, value }
}

/// Converts KVM's state to a vlapic state. `ids` is the VM's x2APIC ID
/// format, `extras` the state KVM keeps outside the blob.
///
/// Refuses (never panics on) a blob `ApicState` cannot hold: the invalid
/// EN=0/EXTD=1 `IA32_APIC_BASE`; an xAPIC ID register with bits 23:0 set;
/// an x2APIC ID register that disagrees with `extras.apic_id` (or, Legacy,
/// has bits 23:0 set); TPR above bit 7; a non-zero APR (KVM never sets it);
/// an exact timer in `extras` that does not give the blob's TMCCT. It does
/// not judge values `ApicState` can hold: check the result with
/// [`LocalApic::validate`] against the vCPU's configuration.
///
/// ```
/// use vlapic::{ApicConfig, LocalApic};
/// use vlapic_kvm::{from_kvm, to_kvm, Extras, IdFormat};
/// let saved = LocalApic::new(ApicConfig::new(0).with_bsp(true)).save(0);
/// let k = to_kvm(&saved, IdFormat::Legacy);
/// let back = from_kvm(&k, IdFormat::Legacy, &Extras::default()).unwrap();
/// assert_eq!(back, saved);
/// ```
pub fn from_kvm(k: &KvmLapicState, ids: IdFormat, extras: &Extras) -> Result<ApicState> {
    let v = k.view();
    let base = ApicBase::from_bits(k.apic_base);
    let mode = ApicMode::of(base).ok_or(Error::ApicBase(k.apic_base))?;
    let x2 = mode == ApicMode::X2Apic;

    let id_reg = v.read(Register::Id);
    let (apic_id, xapic_id) = if x2 {
        let apic_id = match ids {
            IdFormat::Full32 => {
                if let Some(want) = extras.apic_id {
                    if want != id_reg {
                        return Err(Error::IdMismatch {
                            register: id_reg,
                            apic_id: want,
                        });
                    }
                }
                id_reg
            }
            IdFormat::Legacy => {
                if id_reg & 0x00FF_FFFF != 0 {
                    return Err(unrepresentable(Register::Id, id_reg));
                }
                match extras.apic_id {
                    Some(want) if want << 24 != id_reg => {
                        return Err(Error::IdMismatch {
                            register: id_reg,
                            apic_id: want,
                        })
                    }
                    Some(want) => want,
                    None => id_reg >> 24,
                }
            }
        };
        (apic_id, extras.xapic_id.unwrap_or(apic_id as u8))
    } else {
        if id_reg & 0x00FF_FFFF != 0 {
            return Err(unrepresentable(Register::Id, id_reg));
        }
        let xapic_id = (id_reg >> 24) as u8;
        (extras.apic_id.unwrap_or(xapic_id as u32), xapic_id)
    };

    let tpr = v.read(Register::Tpr);
    if tpr > 0xFF {
        return Err(unrepresentable(Register::Tpr, tpr));
    }
    let apr = v.read(Register::Apr);
    if apr != 0 {
        return Err(unrepresentable(Register::Apr, apr));
    }
    let ldr = if x2 {
        LocalApic::x2apic_ldr(apic_id)
    } else {
        v.ldr()
    };

    let mut lvt = [0u32; vlapic::lvt::LVT_COUNT];
    for l in Lvt::ALL {
        let mut raw = v.read(l.register());
        // KVM keeps bits a guest wrote that vlapic never holds: delivery
        // status (bit 12, always idle here) and remote IRR on an entry
        // that is not level-triggered. Both are status, not state: drop them.
        raw &= !(1 << 12);
        if raw & (1 << 15) == 0 {
            raw &= !(1 << 14);
        }
        lvt[l.index()] = raw;
    }
    if !v.has_cmci() && lvt[Lvt::Cmci.index()] == 0 {
        lvt[Lvt::Cmci.index()] = LVT_RESET;
    }

    let initial = v.timer_initial_count();
    let current = v.timer_current_count();
    let divide = v.read(Register::TimerDivide);
    let tmode = timer_mode(lvt[Lvt::Timer.index()]);
    let timer = match extras.timer {
        Some(t) => {
            let expected = tmcct_of(initial, divide, tmode, t.running, t.elapsed_cycles);
            if expected != current {
                return Err(Error::TimerMismatch {
                    tmcct: current,
                    expected,
                });
            }
            t
        }
        None => derive_timer(initial, current, divide, tmode),
    };

    Ok(ApicState {
        version: STATE_VERSION,
        apic_id,
        apic_base: k.apic_base,
        xapic_id,
        tpr: tpr as u8,
        ldr,
        dfr: v.dfr(),
        svr: v.read(Register::Svr),
        irr: v.irr(),
        isr: v.isr(),
        tmr: v.tmr(),
        esr: v.esr(),
        esr_pending: extras.esr_pending,
        lvt,
        // KVM stores the guest's ICR low half verbatim (reserved bits too);
        // only the architectural fields are state.
        icr: if x2 {
            v.icr().into_bits() & !(Icr::X2APIC_RESERVED | 1 << 12)
        } else {
            v.icr().into_bits() & (0xFF00_0000_0000_0000 | Icr::LOW_WRITABLE as u64)
        },
        timer_initial_count: initial,
        timer_divide: divide,
        timer_running: timer.running,
        timer_elapsed_cycles: timer.elapsed_cycles,
        tsc_deadline: k.tsc_deadline,
        lint_levels: extras.lint_levels,
        run_state: extras.run_state,
        pending_nmi: extras.pending_nmi,
        pending_smi: extras.pending_smi,
        pending_init: extras.pending_init,
        pending_sipi: extras.pending_sipi,
        pending_extint: extras.pending_extint,
    })
}

/// Whether byte `offset` of the blob is in [`VOLATILE_RANGES`].
///
/// ```
/// assert!(vlapic_kvm::convert::is_volatile(0x390));
/// assert!(!vlapic_kvm::convert::is_volatile(0x380));
/// ```
pub fn is_volatile(offset: usize) -> bool {
    VOLATILE_RANGES
        .iter()
        .any(|&(a, b)| (a..b).contains(&offset))
}

/// Offsets (4-byte aligned) where two blobs differ outside
/// [`VOLATILE_RANGES`], with both values: empty when they hold the same
/// state.
pub fn non_volatile_diff(a: &KvmLapic, b: &KvmLapic) -> Vec<(usize, u32, u32)> {
    (0..crate::KVM_LAPIC_SIZE)
        .step_by(4)
        .filter(|o| !is_volatile(*o))
        .filter_map(|o| {
            let (x, y) = (a.word(o), b.word(o));
            (x != y).then_some((o, x, y))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlapic::{ApicConfig, VectorSet};

    fn bsp() -> LocalApic {
        LocalApic::new(ApicConfig::new(0).with_bsp(true))
    }

    fn w(a: &mut LocalApic, off: u64, v: u32) {
        a.mmio_write(0, off, &v.to_le_bytes());
    }

    #[test]
    fn reset_state_matches_kvm_reset_blob() {
        let s = bsp().save(0);
        let k = to_kvm(&s, IdFormat::Legacy);
        let v = k.view();
        assert_eq!(v.version(), 0x0005_0014);
        assert_eq!(v.read(Register::LvtCmci), 0);
        assert_eq!(v.read(Register::LvtLint0), 0x10000);
        assert_eq!(v.svr().into_bits(), 0xFF);
        assert_eq!(v.dfr(), !0);
        assert_eq!(v.stray_words().count(), 0);
        let back = from_kvm(&k, IdFormat::Legacy, &Extras::default()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn x2apic_ids_both_formats() {
        let mut a = LocalApic::new(ApicConfig::new(0x1_0203).with_bsp(true));
        a.host_set_apic_base(0xFEE0_0D00).unwrap();
        let s = a.save(0);
        let full = to_kvm(&s, IdFormat::Full32);
        assert_eq!(full.view().read(Register::Id), 0x1_0203);
        assert_eq!(full.view().ldr(), LocalApic::x2apic_ldr(0x1_0203));
        let legacy = to_kvm(&s, IdFormat::Legacy);
        assert_eq!(legacy.view().read(Register::Id), 0x0300_0000);
        // Full32 is self-describing; Legacy needs the vCPU ID.
        let f = from_kvm(&full, IdFormat::Full32, &Extras::default()).unwrap();
        assert_eq!(f.apic_id, 0x1_0203);
        let x = Extras {
            apic_id: Some(0x1_0203),
            ..Extras::default()
        };
        let l = from_kvm(&legacy, IdFormat::Legacy, &x).unwrap();
        assert_eq!(l, s);
        let l2 = from_kvm(&legacy, IdFormat::Legacy, &Extras::default()).unwrap();
        assert_eq!(l2.apic_id, 3);
        // Wrong ID.
        let bad = Extras {
            apic_id: Some(7),
            ..Extras::default()
        };
        assert!(matches!(
            from_kvm(&full, IdFormat::Full32, &bad),
            Err(Error::IdMismatch { .. })
        ));
        assert!(matches!(
            from_kvm(&legacy, IdFormat::Legacy, &bad),
            Err(Error::IdMismatch { .. })
        ));
        // Legacy blob read as Full32 gives another ID; and vice versa fails.
        assert!(from_kvm(&full, IdFormat::Legacy, &Extras::default()).is_err());
    }

    #[test]
    fn x2apic_ldr_is_derived_and_icr_high_mirrored() {
        let mut a = LocalApic::new(ApicConfig::new(0x25).with_bsp(true));
        a.host_set_apic_base(0xFEE0_0D00).unwrap();
        a.msr_write(0, 0x830, 0x0000_0011_0000_00F0).unwrap();
        let s = a.save(0);
        let mut k = to_kvm(&s, IdFormat::Full32);
        let v = k.view();
        assert_eq!(v.read(Register::IcrHigh), 0x11);
        assert_eq!(v.word(0x304), 0x11);
        // A stale LDR in the blob is replaced by the derived one, as KVM does.
        let mut v2 = v;
        v2.set_ldr(0);
        k.lapic = v2.into();
        let back = from_kvm(&k, IdFormat::Full32, &Extras::of(&s)).unwrap();
        assert_eq!(back.ldr, LocalApic::x2apic_ldr(0x25));
        assert_eq!(back, s);
    }

    #[test]
    fn cmci_in_use_raises_version() {
        let mut s = bsp().save(0);
        s.lvt[Lvt::Cmci.index()] = 0x0000_00F3;
        let k = to_kvm(&s, IdFormat::Legacy);
        assert_eq!(k.view().version(), 0x0006_0014);
        assert_eq!(k.view().read(Register::LvtCmci), 0xF3);
        assert_eq!(
            from_kvm(&k, IdFormat::Legacy, &Extras::default()).unwrap(),
            s
        );
        // With a CMCI profile the reset value is written as is.
        let s = bsp().save(0);
        let k = to_kvm_with(
            &s,
            &KvmProfile {
                ids: IdFormat::Legacy,
                version: Some(0x0006_0014),
            },
        );
        assert_eq!(k.view().read(Register::LvtCmci), LVT_RESET);
        assert_eq!(
            from_kvm(&k, IdFormat::Legacy, &Extras::default()).unwrap(),
            s
        );
    }

    #[test]
    fn timer_running_one_shot_round_trips_at_tick_boundaries() {
        let mut a = bsp();
        w(&mut a, 0x3E0, 0b0001); // /4
        w(&mut a, 0x380, 1000);
        let s = a.save(400); // 400 cycles = 100 ticks
        let k = to_kvm(&s, IdFormat::Legacy);
        assert_eq!(k.view().timer_current_count(), 900);
        let back = from_kvm(&k, IdFormat::Legacy, &Extras::default()).unwrap();
        assert_eq!(back, s);
        // Mid-tick: TMCCT alone loses the remainder, the extras keep it.
        let s = a.save(402);
        let k = to_kvm(&s, IdFormat::Legacy);
        assert_eq!(k.view().timer_current_count(), 900);
        let d = from_kvm(&k, IdFormat::Legacy, &Extras::default()).unwrap();
        assert_eq!(d.timer_elapsed_cycles, 400);
        let e = Extras {
            timer: Some(TimerExact {
                running: true,
                elapsed_cycles: 402,
            }),
            ..Extras::default()
        };
        assert_eq!(from_kvm(&k, IdFormat::Legacy, &e).unwrap(), s);
        // An exact timer that contradicts TMCCT is refused.
        let e = Extras {
            timer: Some(TimerExact {
                running: true,
                elapsed_cycles: 800,
            }),
            ..Extras::default()
        };
        assert_eq!(
            from_kvm(&k, IdFormat::Legacy, &e),
            Err(Error::TimerMismatch {
                tmcct: 900,
                expected: 800
            })
        );
    }

    #[test]
    fn timer_derivation_cases() {
        let os = TimerMode::OneShot;
        let p = TimerMode::Periodic;
        let stopped = TimerExact::default();
        let run = |e| TimerExact {
            running: true,
            elapsed_cycles: e,
        };
        assert_eq!(derive_timer(0, 0, 0, os), stopped);
        assert_eq!(derive_timer(0, 5, 0, os), stopped);
        assert_eq!(derive_timer(100, 0, 0, os), stopped); // expired
        assert_eq!(derive_timer(100, 100, 0, os), run(0));
        assert_eq!(derive_timer(100, 1, 0, os), run(198));
        assert_eq!(derive_timer(100, 500, 0, os), run(0)); // KVM restarts
        assert_eq!(derive_timer(100, 0, 0, p), run(0)); // KVM restarts
        assert_eq!(derive_timer(100, 500, 0b1011, p), run(0)); // clamped
        assert_eq!(derive_timer(100, 40, 0b1011, p), run(60));
        assert_eq!(derive_timer(100, 40, 0, TimerMode::TscDeadline), stopped);
        assert_eq!(
            derive_timer(u32::MAX, 1, 0b1010, os).elapsed_cycles,
            (u32::MAX as u64 - 1) * 128
        );
    }

    #[test]
    fn tsc_deadline_travels_as_msr() {
        let mut a = bsp();
        w(&mut a, 0x320, 0x0004_00EF);
        a.msr_write(0, 0x6E0, 123_456_789).unwrap();
        let s = a.save(0);
        let k = to_kvm(&s, IdFormat::Legacy);
        assert_eq!(k.tsc_deadline, 123_456_789);
        assert_eq!(k.view().timer_current_count(), 0);
        assert_eq!(
            from_kvm(&k, IdFormat::Legacy, &Extras::default()).unwrap(),
            s
        );
    }

    #[test]
    fn unrepresentable_blobs_are_refused() {
        let s = bsp().save(0);
        let base = to_kvm(&s, IdFormat::Legacy);
        let with = |f: &dyn Fn(&mut KvmLapic)| {
            let mut v = base.view();
            f(&mut v);
            KvmLapicState {
                lapic: v.into(),
                ..base
            }
        };
        let x = Extras::default();
        let e = |k: &KvmLapicState| from_kvm(k, IdFormat::Legacy, &x);
        assert!(matches!(
            e(&with(&|v| v.write(Register::Id, 0x0100_0001))),
            Err(Error::Unrepresentable { .. })
        ));
        assert!(e(&with(&|v| v.write(Register::Tpr, 0x100))).is_err());
        assert!(e(&with(&|v| v.write(Register::Apr, 0x10))).is_err());
        let bad_base = KvmLapicState {
            apic_base: 0xFEE0_0400,
            ..base
        };
        assert_eq!(e(&bad_base), Err(Error::ApicBase(0xFEE0_0400)));
        // Representable even if invalid: validation is the core's job.
        let odd = with(&|v| {
            v.write(Register::Irr(0), 0x1);
            v.write(Register::TimerDivide, 0xFFFF_FFFF);
        });
        let st = e(&odd).unwrap();
        assert_eq!(st.irr, VectorSet([1, 0, 0, 0, 0, 0, 0, 0]));
        assert!(bsp().validate(&st).is_err());
    }

    #[test]
    fn extras_from_kvm_vcpu_and_back() {
        let mut ev = kvm_vcpu_events::default();
        ev.nmi.pending = 1;
        ev.smi.pending = 1;
        ev.smi.latched_init = 1;
        ev.sipi_vector = 0x9A;
        let x = Extras::from_kvm_vcpu(
            3,
            &kvm_mp_state {
                mp_state: KVM_MP_STATE_SIPI_RECEIVED,
            },
            &ev,
        );
        assert_eq!(x.pending_sipi, Some(0x9A));
        assert_eq!(x.run_state, RunState::Running);
        assert!(x.pending_nmi && x.pending_smi && x.pending_init);
        for (mp, rs) in [
            (KVM_MP_STATE_RUNNABLE, RunState::Running),
            (kvm_bindings::KVM_MP_STATE_HALTED, RunState::Running),
            (KVM_MP_STATE_INIT_RECEIVED, RunState::WaitForSipi),
            (KVM_MP_STATE_UNINITIALIZED, RunState::WaitForSipi),
        ] {
            let x = Extras::from_kvm_vcpu(0, &kvm_mp_state { mp_state: mp }, &ev);
            assert_eq!(x.run_state, rs);
            assert_eq!(x.pending_sipi, None);
        }
        let mut s = bsp().save(0);
        s.pending_nmi = true;
        s.pending_sipi = Some(0x10);
        assert_eq!(kvm_mp_state_of(&s).mp_state, KVM_MP_STATE_SIPI_RECEIVED);
        let mut out = kvm_vcpu_events::default();
        apply_to_vcpu_events(&s, &mut out);
        assert_eq!(out.nmi.pending, 1);
        assert_eq!(out.sipi_vector, 0x10);
        assert_eq!(out.smi.pending, 0); // no VALID_SMM: untouched
        out.flags |= KVM_VCPUEVENT_VALID_SMM;
        s.pending_smi = true;
        apply_to_vcpu_events(&s, &mut out);
        assert_eq!(out.smi.pending, 1);
    }

    #[test]
    fn volatile_ranges_and_diff() {
        let a = KvmLapic::new();
        let mut b = a;
        b.write(Register::TimerCurrentCount, 5);
        b.write(Register::Ppr, 5);
        assert!(non_volatile_diff(&a, &b).is_empty());
        b.write(Register::Tpr, 5);
        assert_eq!(non_volatile_diff(&a, &b), vec![(0x80, 0, 5)]);
    }
}
