//! [`KvmLapic`]: a typed view of `kvm_lapic_state`.
//!
//! The blob is the first 1 KiB of the xAPIC page: register `r` is the
//! little-endian `u32` at [`Register::offset`]. Getters decode with the
//! layouts of [`vlapic::regs`]; setters refuse values outside a register's
//! layout with an [`Error`] and leave the blob unchanged. The raw accessors
//! [`KvmLapic::read`] / [`KvmLapic::write`] take anything.

use kvm_bindings::kvm_lapic_state;
use vlapic::regs::{esr, DivideConfig, Icr, LvtEntry, Svr, TimerMode};
use vlapic::{DeliveryMode, LocalApic, Lvt, Register, VectorSet};

use crate::error::{Error, Result};

/// Size of `kvm_lapic_state` in bytes.
pub const KVM_LAPIC_SIZE: usize = 1024;

/// How KVM stores the x2APIC ID in the ID register of the blob while the
/// APIC is in x2APIC mode (`kvm_apic_state_fixup`). In xAPIC mode the ID
/// register always holds the 8-bit xAPIC ID in bits 31:24.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IdFormat {
    /// Without `KVM_X2APIC_API_USE_32BIT_IDS`: `KVM_GET_LAPIC` returns
    /// `x2apic_id << 24` (only the low 8 bits survive) and `KVM_SET_LAPIC`
    /// ignores the register (KVM uses the vCPU ID).
    #[default]
    Legacy,
    /// With `KVM_X2APIC_API_USE_32BIT_IDS` (enabled with `KVM_CAP_X2APIC_API`
    /// on the VM): the whole 32-bit x2APIC ID; `KVM_SET_LAPIC` fails with
    /// `EINVAL` unless it equals the vCPU ID.
    Full32,
}

impl IdFormat {
    /// The format selected by the `KVM_CAP_X2APIC_API` flags a VMM enabled
    /// (`args[0]` of `kvm_enable_cap`).
    ///
    /// ```
    /// use vlapic_kvm::IdFormat;
    /// assert_eq!(IdFormat::from_x2apic_api_flags(1), IdFormat::Full32);
    /// assert_eq!(IdFormat::from_x2apic_api_flags(2), IdFormat::Legacy);
    /// ```
    pub const fn from_x2apic_api_flags(flags: u64) -> Self {
        if flags & kvm_bindings::KVM_X2APIC_API_USE_32BIT_IDS as u64 != 0 {
            IdFormat::Full32
        } else {
            IdFormat::Legacy
        }
    }
}

/// Bits of the version register that hold something (version, max LVT
/// entry, suppress-EOI-broadcast support).
pub(crate) const VERSION_MASK: u32 = 0x01FF_00FF;
/// Bits of the SVR that can be set (vector, enable, focus, suppress EOI).
pub(crate) const SVR_MASK: u32 = 0x0000_13FF;
/// Remote IRR bit of LINT entries.
const REMOTE_IRR: u32 = 1 << 14;

/// Checks an LVT entry value against its layout: only the entry's fields
/// (remote IRR too on LINT0/LINT1, only with level trigger), a delivery
/// mode the entry can use, not the reserved timer mode 11b. TSC-deadline
/// mode is accepted (the blob does not say whether it is offered).
///
/// ```
/// use vlapic::{regs::LvtEntry, Lvt};
/// use vlapic_kvm::view::check_lvt;
/// assert!(check_lvt(Lvt::Lint0, LvtEntry::from_bits(0x700)).is_ok()); // ExtINT
/// assert!(check_lvt(Lvt::Thermal, LvtEntry::from_bits(0x700)).is_err()); // ExtINT
/// assert!(check_lvt(Lvt::Error, LvtEntry::from_bits(0x400)).is_err()); // no mode field
/// ```
pub fn check_lvt(lvt: Lvt, entry: LvtEntry) -> Result<()> {
    let raw = entry.into_bits();
    let register = lvt.register();
    let mut allowed = lvt.write_mask(true);
    if matches!(lvt, Lvt::Lint0 | Lvt::Lint1) {
        allowed |= REMOTE_IRR;
    }
    if raw & !allowed != 0 {
        return Err(Error::ReservedBits {
            register,
            value: raw as u64,
        });
    }
    if lvt == Lvt::Timer && entry.timer_mode() == TimerMode::Reserved {
        return Err(Error::ReservedTimerMode(raw));
    }
    if lvt.delivery(entry).is_none() {
        return Err(Error::DeliveryMode {
            register,
            mode: entry.delivery_mode(),
        });
    }
    if entry.remote_irr() && !entry.level_triggered() {
        return Err(Error::RemoteIrrOnEdge(register));
    }
    Ok(())
}

/// Checks an ICR value: no reserved or read-only bits in the low half
/// (delivery status included), and a delivery mode the ICR can send
/// (not 011b, not ExtINT 111b). Bits 63:32 are the destination (x2APIC:
/// all of them; xAPIC: 63:56) and are all accepted.
///
/// ```
/// use vlapic::regs::Icr;
/// use vlapic_kvm::view::check_icr;
/// assert!(check_icr(Icr::from_bits(0x0000_0001_0000_4500)).is_ok()); // INIT
/// assert!(check_icr(Icr::from_bits(0x700)).is_err()); // ExtINT
/// ```
pub fn check_icr(icr: Icr) -> Result<()> {
    let low = icr.into_bits() as u32;
    if low & !Icr::LOW_WRITABLE != 0 {
        return Err(Error::ReservedBits {
            register: Register::IcrLow,
            value: icr.into_bits(),
        });
    }
    match icr.delivery_mode() {
        mode @ (DeliveryMode::Reserved3 | DeliveryMode::ExtInt) => Err(Error::DeliveryMode {
            register: Register::IcrLow,
            mode,
        }),
        _ => Ok(()),
    }
}

/// A typed view of KVM's `kvm_lapic_state` (it owns a copy: 1 KiB).
///
/// ```
/// use vlapic::regs::LvtEntry;
/// use vlapic::{DeliveryMode, Lvt};
/// use vlapic_kvm::KvmLapic;
///
/// let mut k = KvmLapic::new();
/// k.set_lvt(Lvt::Lint0, LvtEntry::new().with_delivery_mode(DeliveryMode::ExtInt)).unwrap();
/// assert_eq!(k.read(vlapic::Register::LvtLint0), 0x700);
/// // LVT Error has no delivery-mode field.
/// assert!(k.set_lvt(Lvt::Error, LvtEntry::from_bits(0x400)).is_err());
/// let raw: kvm_bindings::kvm_lapic_state = k.into();
/// assert_eq!(KvmLapic::from(raw), k);
/// ```
#[derive(Clone, Copy, PartialEq)]
pub struct KvmLapic {
    state: kvm_lapic_state,
}

impl Default for KvmLapic {
    fn default() -> Self {
        Self::new()
    }
}

impl Eq for KvmLapic {}

impl From<kvm_lapic_state> for KvmLapic {
    fn from(state: kvm_lapic_state) -> Self {
        KvmLapic { state }
    }
}

impl From<KvmLapic> for kvm_lapic_state {
    fn from(v: KvmLapic) -> Self {
        v.state
    }
}

impl From<[u8; KVM_LAPIC_SIZE]> for KvmLapic {
    fn from(bytes: [u8; KVM_LAPIC_SIZE]) -> Self {
        Self::from_bytes(&bytes)
    }
}

impl core::fmt::Debug for KvmLapic {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Only the non-zero words, by offset: 1 KiB of bytes is unreadable.
        let mut m = f.debug_map();
        for off in (0..KVM_LAPIC_SIZE).step_by(4) {
            let v = self.word(off);
            if v != 0 {
                m.entry(&format_args!("{off:#05x}"), &format_args!("{v:#010x}"));
            }
        }
        m.finish()
    }
}

impl KvmLapic {
    /// An all-zero blob.
    pub fn new() -> Self {
        KvmLapic {
            state: kvm_lapic_state::default(),
        }
    }

    /// From raw bytes (as saved by a VMM).
    ///
    /// ```
    /// let mut bytes = [0u8; 1024];
    /// bytes[0xF0] = 0xFF;
    /// assert_eq!(vlapic_kvm::KvmLapic::from_bytes(&bytes).svr().vector(), 0xFF);
    /// ```
    pub fn from_bytes(bytes: &[u8; KVM_LAPIC_SIZE]) -> Self {
        let mut state = kvm_lapic_state::default();
        for (d, s) in state.regs.iter_mut().zip(bytes.iter()) {
            *d = *s as _;
        }
        KvmLapic { state }
    }

    /// From a byte slice, which must be exactly 1024 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        let arr: &[u8; KVM_LAPIC_SIZE] = bytes.try_into().ok()?;
        Some(Self::from_bytes(arr))
    }

    /// The raw bytes.
    pub fn to_bytes(&self) -> [u8; KVM_LAPIC_SIZE] {
        let mut out = [0u8; KVM_LAPIC_SIZE];
        for (d, s) in out.iter_mut().zip(self.state.regs.iter()) {
            *d = *s as u8;
        }
        out
    }

    /// The KVM structure (for `VcpuFd::set_lapic`).
    pub fn as_raw(&self) -> &kvm_lapic_state {
        &self.state
    }

    /// The KVM structure, mutable.
    pub fn as_raw_mut(&mut self) -> &mut kvm_lapic_state {
        &mut self.state
    }

    /// Little-endian word at a 4-byte-aligned `offset` below 1024
    /// (callers guarantee it).
    pub(crate) fn word(&self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        for (i, d) in b.iter_mut().enumerate() {
            *d = self.state.regs[(offset + i) % KVM_LAPIC_SIZE] as u8;
        }
        u32::from_le_bytes(b)
    }

    pub(crate) fn set_word(&mut self, offset: usize, value: u32) {
        for (i, s) in value.to_le_bytes().iter().enumerate() {
            self.state.regs[(offset + i) % KVM_LAPIC_SIZE] = *s as _;
        }
    }

    // ------------------------------------------------------------------
    // Raw access by register
    // ------------------------------------------------------------------

    /// Raw value of `reg` (SELF IPI, write-only, reads its slot at 0x3F0).
    pub fn read(&self, reg: Register) -> u32 {
        self.word(reg.offset() as usize)
    }

    /// Writes `value` to `reg` without any check.
    pub fn write(&mut self, reg: Register, value: u32) {
        self.set_word(reg.offset() as usize, value)
    }

    // ------------------------------------------------------------------
    // ID, version, priorities
    // ------------------------------------------------------------------

    /// xAPIC ID: bits 31:24 of the ID register (xAPIC mode).
    pub fn xapic_id(&self) -> u8 {
        (self.read(Register::Id) >> 24) as u8
    }

    /// Sets the ID register to an xAPIC ID (bits 23:0 cleared).
    pub fn set_xapic_id(&mut self, id: u8) {
        self.write(Register::Id, (id as u32) << 24)
    }

    /// The x2APIC ID as stored in `format` (x2APIC mode). With
    /// [`IdFormat::Legacy`] only its low 8 bits are there.
    pub fn x2apic_id(&self, format: IdFormat) -> u32 {
        let raw = self.read(Register::Id);
        match format {
            IdFormat::Legacy => raw >> 24,
            IdFormat::Full32 => raw,
        }
    }

    /// Stores an x2APIC ID in `format`; an ID above 0xFF does not fit
    /// [`IdFormat::Legacy`] and is refused.
    ///
    /// ```
    /// use vlapic_kvm::{IdFormat, KvmLapic};
    /// let mut k = KvmLapic::new();
    /// k.set_x2apic_id(0x1234, IdFormat::Full32).unwrap();
    /// assert_eq!(k.read(vlapic::Register::Id), 0x1234);
    /// assert!(k.set_x2apic_id(0x1234, IdFormat::Legacy).is_err());
    /// k.set_x2apic_id(0x12, IdFormat::Legacy).unwrap();
    /// assert_eq!(k.read(vlapic::Register::Id), 0x1200_0000);
    /// ```
    pub fn set_x2apic_id(&mut self, id: u32, format: IdFormat) -> Result<()> {
        let raw = match format {
            IdFormat::Legacy if id > 0xFF => return Err(Error::IdFormat { id, format }),
            IdFormat::Legacy => id << 24,
            IdFormat::Full32 => id,
        };
        self.write(Register::Id, raw);
        Ok(())
    }

    /// Version register.
    pub fn version(&self) -> u32 {
        self.read(Register::Version)
    }

    /// Sets the version register; bits 15:8 and 31:25 are reserved.
    pub fn set_version(&mut self, value: u32) -> Result<()> {
        if value & !VERSION_MASK != 0 {
            return Err(Error::ReservedBits {
                register: Register::Version,
                value: value as u64,
            });
        }
        self.write(Register::Version, value);
        Ok(())
    }

    /// Number of LVT entries the version register announces (max LVT + 1).
    pub fn lvt_count(&self) -> u32 {
        ((self.version() >> 16) & 0xFF) + 1
    }

    /// Whether the version register announces the LVT CMCI entry (7 LVTs).
    pub fn has_cmci(&self) -> bool {
        self.lvt_count() >= 7
    }

    /// TPR (bits 7:0).
    pub fn tpr(&self) -> u8 {
        self.read(Register::Tpr) as u8
    }

    /// Sets TPR.
    pub fn set_tpr(&mut self, tpr: u8) {
        self.write(Register::Tpr, tpr as u32)
    }

    /// APR (bits 7:0; KVM always keeps 0).
    pub fn apr(&self) -> u8 {
        self.read(Register::Apr) as u8
    }

    /// Sets APR.
    pub fn set_apr(&mut self, apr: u8) {
        self.write(Register::Apr, apr as u32)
    }

    /// PPR (bits 7:0). Volatile: KVM recomputes it from TPR and ISR.
    pub fn ppr(&self) -> u8 {
        self.read(Register::Ppr) as u8
    }

    /// Sets PPR.
    pub fn set_ppr(&mut self, ppr: u8) {
        self.write(Register::Ppr, ppr as u32)
    }

    /// PPR as KVM computes it from TPR and the highest ISR vector.
    pub fn computed_ppr(&self) -> u8 {
        vlapic::priority::ppr(self.tpr(), self.isr().highest().unwrap_or(0))
    }

    // ------------------------------------------------------------------
    // Logical destination
    // ------------------------------------------------------------------

    /// LDR, raw.
    pub fn ldr(&self) -> u32 {
        self.read(Register::Ldr)
    }

    /// xAPIC logical ID (LDR bits 31:24).
    pub fn logical_id(&self) -> u8 {
        (self.ldr() >> 24) as u8
    }

    /// Sets the xAPIC LDR from a logical ID (bits 23:0 cleared).
    pub fn set_logical_id(&mut self, id: u8) {
        self.write(Register::Ldr, (id as u32) << 24)
    }

    /// Sets the LDR an x2APIC with `x2apic_id` has (derived, SDM 11.12.10.2).
    pub fn set_x2apic_ldr(&mut self, x2apic_id: u32) {
        self.write(Register::Ldr, LocalApic::x2apic_ldr(x2apic_id))
    }

    /// Sets the LDR raw (x2APIC layout: any value).
    pub fn set_ldr(&mut self, ldr: u32) {
        self.write(Register::Ldr, ldr)
    }

    /// DFR, raw.
    pub fn dfr(&self) -> u32 {
        self.read(Register::Dfr)
    }

    /// Sets DFR: bits 27:0 must be all ones and the model (31:28) flat
    /// (0xF) or cluster (0x0).
    pub fn set_dfr(&mut self, dfr: u32) -> Result<()> {
        let model = dfr >> 28;
        if dfr & 0x0FFF_FFFF != 0x0FFF_FFFF || (model != 0 && model != 0xF) {
            return Err(Error::ReservedBits {
                register: Register::Dfr,
                value: dfr as u64,
            });
        }
        self.write(Register::Dfr, dfr);
        Ok(())
    }

    // ------------------------------------------------------------------
    // SVR, IRR/ISR/TMR, ESR
    // ------------------------------------------------------------------

    /// SVR.
    pub fn svr(&self) -> Svr {
        Svr::from_bits(self.read(Register::Svr))
    }

    /// Sets SVR; bits 11:10 and 31:13 are reserved.
    pub fn set_svr(&mut self, svr: Svr) -> Result<()> {
        let v = svr.into_bits();
        if v & !SVR_MASK != 0 {
            return Err(Error::ReservedBits {
                register: Register::Svr,
                value: v as u64,
            });
        }
        self.write(Register::Svr, v);
        Ok(())
    }

    fn vectors(&self, first: fn(u8) -> Register) -> VectorSet {
        let mut words = [0u32; 8];
        for (n, w) in words.iter_mut().enumerate() {
            *w = self.read(first(n as u8));
        }
        VectorSet(words)
    }

    fn set_vectors(&mut self, first: fn(u8) -> Register, set: VectorSet) -> Result<()> {
        if set.has_illegal() {
            return Err(Error::IllegalVector {
                register: first(0),
                vector: set.0[0].trailing_zeros() as u8,
            });
        }
        self.set_vectors_raw(first, set);
        Ok(())
    }

    pub(crate) fn set_vectors_raw(&mut self, first: fn(u8) -> Register, set: VectorSet) {
        for (n, w) in set.0.iter().enumerate() {
            self.write(first(n as u8), *w);
        }
    }

    /// ISR (0x100-0x170).
    pub fn isr(&self) -> VectorSet {
        self.vectors(Register::Isr)
    }

    /// Sets ISR; vectors 0-15 are illegal and refused.
    pub fn set_isr(&mut self, set: VectorSet) -> Result<()> {
        self.set_vectors(Register::Isr, set)
    }

    /// TMR (0x180-0x1F0).
    pub fn tmr(&self) -> VectorSet {
        self.vectors(Register::Tmr)
    }

    /// Sets TMR; vectors 0-15 are illegal and refused.
    pub fn set_tmr(&mut self, set: VectorSet) -> Result<()> {
        self.set_vectors(Register::Tmr, set)
    }

    /// IRR (0x200-0x270).
    pub fn irr(&self) -> VectorSet {
        self.vectors(Register::Irr)
    }

    /// Sets IRR; vectors 0-15 are illegal and refused.
    pub fn set_irr(&mut self, set: VectorSet) -> Result<()> {
        self.set_vectors(Register::Irr, set)
    }

    /// ESR as the guest reads it.
    pub fn esr(&self) -> u32 {
        self.read(Register::Esr)
    }

    /// Sets ESR; bits above 7 are reserved.
    pub fn set_esr(&mut self, value: u32) -> Result<()> {
        if value & !esr::VALID != 0 {
            return Err(Error::ReservedBits {
                register: Register::Esr,
                value: value as u64,
            });
        }
        self.write(Register::Esr, value);
        Ok(())
    }

    // ------------------------------------------------------------------
    // LVT
    // ------------------------------------------------------------------

    /// An LVT entry.
    pub fn lvt(&self, lvt: Lvt) -> LvtEntry {
        LvtEntry::from_bits(self.read(lvt.register()))
    }

    /// Sets an LVT entry, after [`check_lvt`].
    pub fn set_lvt(&mut self, lvt: Lvt, entry: LvtEntry) -> Result<()> {
        check_lvt(lvt, entry)?;
        self.write(lvt.register(), entry.into_bits());
        Ok(())
    }

    /// LVT CMCI (0x2F0).
    pub fn lvt_cmci(&self) -> LvtEntry {
        self.lvt(Lvt::Cmci)
    }
    /// Sets LVT CMCI (Fixed, SMI or NMI).
    pub fn set_lvt_cmci(&mut self, e: LvtEntry) -> Result<()> {
        self.set_lvt(Lvt::Cmci, e)
    }
    /// LVT Timer (0x320).
    pub fn lvt_timer(&self) -> LvtEntry {
        self.lvt(Lvt::Timer)
    }
    /// Sets LVT Timer (vector, mask, timer mode other than 11b).
    pub fn set_lvt_timer(&mut self, e: LvtEntry) -> Result<()> {
        self.set_lvt(Lvt::Timer, e)
    }
    /// LVT Thermal (0x330).
    pub fn lvt_thermal(&self) -> LvtEntry {
        self.lvt(Lvt::Thermal)
    }
    /// Sets LVT Thermal (Fixed, SMI or NMI).
    pub fn set_lvt_thermal(&mut self, e: LvtEntry) -> Result<()> {
        self.set_lvt(Lvt::Thermal, e)
    }
    /// LVT PerfMon (0x340).
    pub fn lvt_perfmon(&self) -> LvtEntry {
        self.lvt(Lvt::Perfmon)
    }
    /// Sets LVT PerfMon (Fixed, SMI or NMI).
    pub fn set_lvt_perfmon(&mut self, e: LvtEntry) -> Result<()> {
        self.set_lvt(Lvt::Perfmon, e)
    }
    /// LVT LINT0 (0x350).
    pub fn lvt_lint0(&self) -> LvtEntry {
        self.lvt(Lvt::Lint0)
    }
    /// Sets LVT LINT0 (Fixed, SMI, NMI, INIT or ExtINT).
    pub fn set_lvt_lint0(&mut self, e: LvtEntry) -> Result<()> {
        self.set_lvt(Lvt::Lint0, e)
    }
    /// LVT LINT1 (0x360).
    pub fn lvt_lint1(&self) -> LvtEntry {
        self.lvt(Lvt::Lint1)
    }
    /// Sets LVT LINT1 (Fixed, SMI, NMI, INIT or ExtINT).
    pub fn set_lvt_lint1(&mut self, e: LvtEntry) -> Result<()> {
        self.set_lvt(Lvt::Lint1, e)
    }
    /// LVT Error (0x370).
    pub fn lvt_error(&self) -> LvtEntry {
        self.lvt(Lvt::Error)
    }
    /// Sets LVT Error (vector and mask only).
    pub fn set_lvt_error(&mut self, e: LvtEntry) -> Result<()> {
        self.set_lvt(Lvt::Error, e)
    }

    // ------------------------------------------------------------------
    // ICR
    // ------------------------------------------------------------------

    /// The 64-bit ICR: low half at 0x300, ICR2 (bits 63:32) at 0x310, as
    /// KVM presents it to userspace in both modes.
    pub fn icr(&self) -> Icr {
        Icr::from_bits(
            self.read(Register::IcrLow) as u64 | (self.read(Register::IcrHigh) as u64) << 32,
        )
    }

    /// Sets the ICR (0x300 and 0x310), after [`check_icr`].
    pub fn set_icr(&mut self, icr: Icr) -> Result<()> {
        check_icr(icr)?;
        self.set_icr_raw(icr.into_bits());
        Ok(())
    }

    pub(crate) fn set_icr_raw(&mut self, icr: u64) {
        self.write(Register::IcrLow, icr as u32);
        self.write(Register::IcrHigh, (icr >> 32) as u32);
    }

    // ------------------------------------------------------------------
    // Timer
    // ------------------------------------------------------------------

    /// TMICT.
    pub fn timer_initial_count(&self) -> u32 {
        self.read(Register::TimerInitialCount)
    }

    /// Sets TMICT.
    pub fn set_timer_initial_count(&mut self, count: u32) {
        self.write(Register::TimerInitialCount, count)
    }

    /// TMCCT. In a `KVM_GET_LAPIC` result: the remaining count at that
    /// instant. On `KVM_SET_LAPIC`: where the restored count starts.
    pub fn timer_current_count(&self) -> u32 {
        self.read(Register::TimerCurrentCount)
    }

    /// Sets TMCCT.
    pub fn set_timer_current_count(&mut self, count: u32) {
        self.write(Register::TimerCurrentCount, count)
    }

    /// TDCR (divisor from bits 0, 1 and 3).
    pub fn timer_divide(&self) -> DivideConfig {
        DivideConfig::from_register(self.read(Register::TimerDivide))
    }

    /// Sets TDCR; only bits 0, 1 and 3 exist.
    ///
    /// ```
    /// let mut k = vlapic_kvm::KvmLapic::new();
    /// k.set_timer_divide(0b1011).unwrap();
    /// assert_eq!(k.timer_divide().divisor(), 1);
    /// assert!(k.set_timer_divide(0b0100).is_err());
    /// ```
    pub fn set_timer_divide(&mut self, value: u32) -> Result<()> {
        if value & !DivideConfig::MASK != 0 {
            return Err(Error::ReservedBits {
                register: Register::TimerDivide,
                value: value as u64,
            });
        }
        self.write(Register::TimerDivide, value);
        Ok(())
    }

    /// Bits of the blob that are set outside the registers of the register
    /// map (reserved offsets, the unused upper bytes of each 16-byte slot).
    /// KVM's own blobs have none, except the 64-bit x2APIC ICR's high half
    /// at 0x304 (see [`crate::VOLATILE_RANGES`]).
    pub fn stray_words(&self) -> impl Iterator<Item = (usize, u32)> + '_ {
        (0..KVM_LAPIC_SIZE).step_by(4).filter_map(move |off| {
            let is_reg = off % 16 == 0 && Register::from_offset(off as u32).is_some();
            let v = self.word(off);
            (!is_reg && v != 0).then_some((off, v))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlapic::Shorthand;

    #[test]
    fn raw_bytes_round_trip_and_little_endian() {
        let mut k = KvmLapic::new();
        k.write(Register::Svr, 0x1234_01FF);
        let b = k.to_bytes();
        assert_eq!(&b[0xF0..0xF4], &[0xFF, 0x01, 0x34, 0x12]);
        assert_eq!(KvmLapic::from_bytes(&b), k);
        assert_eq!(KvmLapic::from_slice(&b[..]), Some(k));
        assert_eq!(KvmLapic::from_slice(&b[..1023]), None);
    }

    #[test]
    fn ids_both_formats() {
        let mut k = KvmLapic::new();
        k.set_xapic_id(0x42);
        assert_eq!(k.read(Register::Id), 0x4200_0000);
        assert_eq!(k.xapic_id(), 0x42);
        assert_eq!(k.x2apic_id(IdFormat::Legacy), 0x42);
        k.set_x2apic_id(0xFFFF_FFFE, IdFormat::Full32).unwrap();
        assert_eq!(k.x2apic_id(IdFormat::Full32), 0xFFFF_FFFE);
        assert_eq!(
            k.set_x2apic_id(0x100, IdFormat::Legacy),
            Err(Error::IdFormat {
                id: 0x100,
                format: IdFormat::Legacy
            })
        );
        // Refused: unchanged.
        assert_eq!(k.x2apic_id(IdFormat::Full32), 0xFFFF_FFFE);
        k.set_x2apic_id(0xFF, IdFormat::Legacy).unwrap();
        assert_eq!(k.read(Register::Id), 0xFF00_0000);
    }

    #[test]
    fn version_tpr_apr_ppr() {
        let mut k = KvmLapic::new();
        k.set_version(0x0005_0014).unwrap();
        assert_eq!(k.lvt_count(), 6);
        assert!(!k.has_cmci());
        k.set_version(0x0106_0014).unwrap();
        assert!(k.has_cmci());
        assert!(k.set_version(0x0005_0114).is_err());
        assert!(k.set_version(0x0205_0014).is_err());
        assert_eq!(k.version(), 0x0106_0014);
        k.set_tpr(0x35);
        assert_eq!(k.tpr(), 0x35);
        assert_eq!(k.read(Register::Tpr), 0x35);
        k.set_apr(0x10);
        assert_eq!(k.apr(), 0x10);
        k.set_ppr(0x20);
        assert_eq!(k.ppr(), 0x20);
        let mut isr = VectorSet::EMPTY;
        isr.insert(0x61);
        k.set_isr(isr).unwrap();
        assert_eq!(k.computed_ppr(), 0x60);
        k.set_tpr(0x71);
        assert_eq!(k.computed_ppr(), 0x71);
    }

    #[test]
    fn ldr_dfr() {
        let mut k = KvmLapic::new();
        k.set_logical_id(0x81);
        assert_eq!(k.ldr(), 0x8100_0000);
        assert_eq!(k.logical_id(), 0x81);
        k.set_x2apic_ldr(0x23);
        assert_eq!(k.ldr(), 0x0002_0008);
        k.set_ldr(0xDEAD_BEEF);
        assert_eq!(k.ldr(), 0xDEAD_BEEF);
        k.set_dfr(0xFFFF_FFFF).unwrap();
        k.set_dfr(0x0FFF_FFFF).unwrap();
        assert_eq!(k.dfr(), 0x0FFF_FFFF);
        assert!(k.set_dfr(0xFFFF_FFFE).is_err());
        assert!(k.set_dfr(0x5FFF_FFFF).is_err());
        assert_eq!(k.dfr(), 0x0FFF_FFFF);
    }

    #[test]
    fn svr_and_esr() {
        let mut k = KvmLapic::new();
        let svr = Svr::new()
            .with_vector(0xEF)
            .with_software_enabled(true)
            .with_suppress_eoi_broadcast(true);
        k.set_svr(svr).unwrap();
        assert_eq!(k.svr(), svr);
        assert_eq!(k.read(Register::Svr), 0x11EF);
        assert!(k.set_svr(Svr::from_bits(0x4FF)).is_err());
        assert!(k.set_svr(Svr::from_bits(0x2000)).is_err());
        k.set_esr(esr::RECEIVE_ILLEGAL_VECTOR).unwrap();
        assert_eq!(k.esr(), 0x40);
        assert!(k.set_esr(0x100).is_err());
        assert_eq!(k.esr(), 0x40);
    }

    #[test]
    fn vector_sets_map_to_register_words() {
        let mut k = KvmLapic::new();
        let s: VectorSet = [0x20, 0x41, 0xFF].into_iter().collect();
        k.set_irr(s).unwrap();
        k.set_isr(s).unwrap();
        k.set_tmr(s).unwrap();
        assert_eq!(k.irr(), s);
        assert_eq!(k.isr(), s);
        assert_eq!(k.tmr(), s);
        assert_eq!(k.read(Register::Irr(1)), 1);
        assert_eq!(k.read(Register::Isr(2)), 2);
        assert_eq!(k.read(Register::Tmr(7)), 1 << 31);
        let bad: VectorSet = [0x05, 0x30].into_iter().collect();
        assert_eq!(
            k.set_irr(bad),
            Err(Error::IllegalVector {
                register: Register::Irr(0),
                vector: 5
            })
        );
        assert!(k.set_isr(bad).is_err());
        assert!(k.set_tmr(bad).is_err());
        assert_eq!(k.irr(), s);
    }

    #[test]
    fn lvt_entries_checked_per_layout() {
        let mut k = KvmLapic::new();
        let e = |raw| LvtEntry::from_bits(raw);
        // Each named accessor hits its own register.
        k.set_lvt_cmci(e(0x0001_0200)).unwrap(); // SMI, masked
        k.set_lvt_timer(e(0x0002_00EC)).unwrap(); // periodic
        k.set_lvt_thermal(e(0x400)).unwrap(); // NMI
        k.set_lvt_perfmon(e(0x0001_00FE)).unwrap();
        k.set_lvt_lint0(e(0x700)).unwrap(); // ExtINT
        k.set_lvt_lint1(e(0x0000_C041)).unwrap(); // level fixed + remote IRR
        k.set_lvt_error(e(0x00FD)).unwrap();
        assert_eq!(k.read(Register::LvtCmci), 0x0001_0200);
        assert_eq!(k.lvt_cmci(), e(0x0001_0200));
        assert_eq!(k.lvt_timer().timer_mode(), TimerMode::Periodic);
        assert_eq!(k.lvt_thermal().delivery_mode(), DeliveryMode::Nmi);
        assert!(k.lvt_perfmon().masked());
        assert_eq!(k.lvt_lint0().delivery_mode(), DeliveryMode::ExtInt);
        assert!(k.lvt_lint1().remote_irr());
        assert_eq!(k.lvt_error().vector(), 0xFD);
        k.set_lvt_timer(e(0x0004_0020)).unwrap(); // TSC deadline

        // Refused values.
        assert!(matches!(
            k.set_lvt_timer(e(0x0006_0020)),
            Err(Error::ReservedTimerMode(_))
        ));
        assert!(matches!(
            k.set_lvt_timer(e(0x420)),
            Err(Error::ReservedBits { .. })
        ));
        assert!(matches!(
            k.set_lvt_error(e(0x8000)),
            Err(Error::ReservedBits { .. })
        ));
        for lvt in [Lvt::Cmci, Lvt::Thermal, Lvt::Perfmon] {
            for mode in [1u32, 3, 5, 6, 7] {
                assert!(
                    matches!(
                        k.set_lvt(lvt, e(mode << 8)),
                        Err(Error::DeliveryMode { .. })
                    ),
                    "{lvt:?} mode {mode}"
                );
            }
            assert!(matches!(
                k.set_lvt(lvt, e(0x2000)),
                Err(Error::ReservedBits { .. })
            ));
        }
        for lvt in [Lvt::Lint0, Lvt::Lint1] {
            for mode in [1u32, 3, 6] {
                assert!(
                    matches!(
                        k.set_lvt(lvt, e(mode << 8)),
                        Err(Error::DeliveryMode { .. })
                    ),
                    "{lvt:?} mode {mode}"
                );
            }
            assert_eq!(
                k.set_lvt(lvt, e(0x4000)),
                Err(Error::RemoteIrrOnEdge(lvt.register()))
            );
            // Delivery status is read-only.
            assert!(k.set_lvt(lvt, e(0x1000)).is_err());
            assert!(k.set_lvt(lvt, e(0x0002_0000)).is_err());
        }
        // Nothing refused was written.
        assert_eq!(k.lvt_lint0(), e(0x700));
        assert_eq!(k.lvt_error(), e(0xFD));
    }

    #[test]
    fn icr_is_split_low_and_icr2() {
        let mut k = KvmLapic::new();
        let icr = Icr::new()
            .with_vector(0x30)
            .with_delivery_mode(DeliveryMode::Fixed)
            .with_logical(true)
            .with_shorthand(Shorthand::None)
            .with_destination(0x0300_0000);
        k.set_icr(icr).unwrap();
        assert_eq!(k.read(Register::IcrLow), 0x830);
        assert_eq!(k.read(Register::IcrHigh), 0x0300_0000);
        assert_eq!(k.icr(), icr);
        assert!(k.set_icr(Icr::from_bits(0x1000)).is_err()); // delivery status
        assert!(k.set_icr(Icr::from_bits(0x0010_0000)).is_err()); // reserved
        assert!(k.set_icr(Icr::from_bits(0x300)).is_err()); // 011
        assert!(k.set_icr(Icr::from_bits(0x700)).is_err()); // ExtINT
        k.set_icr(Icr::from_bits(0xFFFF_FFFF_000C_C6FF)).unwrap(); // SIPI, all fields
        assert_eq!(k.icr().destination(), 0xFFFF_FFFF);
    }

    #[test]
    fn timer_registers() {
        let mut k = KvmLapic::new();
        k.set_timer_initial_count(1000);
        k.set_timer_current_count(400);
        k.set_timer_divide(0b1010).unwrap();
        assert_eq!(k.timer_initial_count(), 1000);
        assert_eq!(k.timer_current_count(), 400);
        assert_eq!(k.timer_divide().divisor(), 128);
        assert_eq!(k.read(Register::TimerDivide), 0b1010);
        assert!(k.set_timer_divide(0x10).is_err());
        assert_eq!(k.read(Register::TimerDivide), 0b1010);
    }

    #[test]
    fn stray_words_found() {
        let mut k = KvmLapic::new();
        k.write(Register::Svr, 0xFF);
        assert_eq!(k.stray_words().count(), 0);
        k.set_word(0x304, 7);
        k.set_word(0x3FC, 1);
        k.set_word(0x040, 2);
        let v: Vec<_> = k.stray_words().collect();
        assert_eq!(v, vec![(0x040, 2), (0x304, 7), (0x3FC, 1)]);
    }

    #[test]
    fn id_format_from_flags() {
        assert_eq!(IdFormat::from_x2apic_api_flags(0), IdFormat::Legacy);
        assert_eq!(IdFormat::from_x2apic_api_flags(3), IdFormat::Full32);
    }
}
