//! Hardware assist: the virtual-APIC page, the hooks a VMX (APICv) or
//! similar embedder needs, posted interrupts, and a software model of the
//! processor's virtual-interrupt delivery (SDM Vol. 3C, chapter "APIC
//! Virtualization and Virtual Interrupts", 29.1-29.6 in the edition cited).
//!
//! A hypervisor that lets the CPU virtualize the APIC keeps the guest's
//! registers in a 4 KiB virtual-APIC page. `vlapic` stays the owner of the
//! complete state and synchronises with the page at the two points where
//! control passes between the CPU and the hypervisor:
//!
//! - before VM entry, [`LocalApic::sync_to_virtual`] writes every register
//!   to the page at its architectural offset and sets the guest interrupt
//!   status (RVI/SVI) and the EOI-exit bitmap;
//! - after a VM exit, [`LocalApic::sync_from_virtual`] takes back what the
//!   CPU may have changed without exiting: VTPR, VIRR, VISR (virtual
//!   interrupt delivery, virtual EOI, virtualized self-IPIs).
//!
//! Exits that still reach the hypervisor map to
//! [`LocalApic::apic_write_trap`] (trap-like APIC-write exit: the register
//! is already written; run only its side effects) and
//! [`LocalApic::eoi_induced`] (EOI-induced exit for a vector in the EOI-exit
//! bitmap: ISR was already cleared; broadcast the EOI).
//!
//! [`VirtualInterruptCpu`] models what the processor does between those
//! points, so the assisted path can be tested against the fully emulated
//! one without VMX hardware.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::apic::LocalApic;
use crate::event::Message;
use crate::lvt::Lvt;
use crate::mode::ApicMode;
use crate::priority::{class, ppr};
use crate::regs::{Register, APIC_PAGE_SIZE};
use crate::vector::VectorSet;

/// A 4 KiB virtual-APIC page with the architectural layout: each register
/// at its xAPIC offset (SDM 29.1.1), little-endian.
#[derive(Clone, PartialEq, Eq)]
pub struct VirtualApicPage(pub [u32; 1024]);

impl Default for VirtualApicPage {
    fn default() -> Self {
        VirtualApicPage([0; 1024])
    }
}

impl core::fmt::Debug for VirtualApicPage {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("VirtualApicPage")
            .field("vtpr", &self.read(Register::Tpr))
            .field("vppr", &self.read(Register::Ppr))
            .field("visr", &self.vectors(0x100))
            .field("virr", &self.vectors(0x200))
            .finish()
    }
}

impl VirtualApicPage {
    /// The 32-bit value at byte `offset` (aligned down to 4).
    pub fn read32(&self, offset: u32) -> u32 {
        self.0[((offset as u64 % APIC_PAGE_SIZE) >> 2) as usize]
    }

    /// Writes the 32-bit value at byte `offset` (aligned down to 4).
    pub fn write32(&mut self, offset: u32, value: u32) {
        self.0[((offset as u64 % APIC_PAGE_SIZE) >> 2) as usize] = value;
    }

    /// A register.
    pub fn read(&self, reg: Register) -> u32 {
        self.read32(reg.offset())
    }

    /// Writes a register.
    pub fn write(&mut self, reg: Register, value: u32) {
        self.write32(reg.offset(), value)
    }

    /// The 256-bit register at `base` (0x100 ISR, 0x180 TMR, 0x200 IRR).
    pub fn vectors(&self, base: u32) -> VectorSet {
        let mut s = VectorSet::EMPTY;
        for n in 0..8 {
            s.0[n] = self.read32(base + 0x10 * n as u32);
        }
        s
    }

    /// Writes a 256-bit register at `base`.
    pub fn set_vectors(&mut self, base: u32, set: &VectorSet) {
        for n in 0..8 {
            self.write32(base + 0x10 * n as u32, set.0[n]);
        }
    }

    /// The page as 4096 bytes.
    pub fn to_bytes(&self) -> [u8; 4096] {
        let mut out = [0u8; 4096];
        for (i, w) in self.0.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// A page from 4096 bytes.
    pub fn from_bytes(bytes: &[u8; 4096]) -> Self {
        let mut p = VirtualApicPage::default();
        for (i, w) in p.0.iter_mut().enumerate() {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[i * 4..i * 4 + 4]);
            *w = u32::from_le_bytes(b);
        }
        p
    }
}

/// Guest interrupt status (VMCS field, SDM 24.4.2): requesting virtual
/// interrupt (RVI) and servicing virtual interrupt (SVI).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuestInterruptStatus {
    /// Highest vector in VIRR, or 0.
    pub rvi: u8,
    /// Highest vector in VISR, or 0.
    pub svi: u8,
}

impl LocalApic {
    /// Writes every register to `page` at its architectural offset (the
    /// values the guest would read now), plus the ICR2/DFR slots in xAPIC
    /// mode.
    pub fn export_page(&self, now: u64, page: &mut VirtualApicPage) {
        for reg in Register::ALL {
            page.write(reg, self.read_register(now, reg));
        }
        if self.mode == ApicMode::X2Apic {
            // x2APIC keeps the destination in the upper ICR half; the page
            // layout has it at 0x310 (SDM 29.5).
            page.write(Register::IcrHigh, self.icr.destination());
        }
    }

    /// RVI and SVI for the current IRR and ISR.
    pub fn guest_interrupt_status(&self) -> GuestInterruptStatus {
        GuestInterruptStatus {
            rvi: self.irq.irr.highest().unwrap_or(0),
            svi: self.irq.isr.highest().unwrap_or(0),
        }
    }

    /// The EOI-exit bitmap (SDM 24.6.8): vectors whose EOI must exit to the
    /// hypervisor because it has side effects: level-triggered vectors
    /// (TMR, EOI broadcast to the IOAPIC) and the vectors of level-triggered
    /// LINT entries (remote IRR). Recompute it after any acceptance that
    /// changed TMR ([`LocalApic::sync_to_virtual`] does).
    pub fn eoi_exit_bitmap(&self) -> VectorSet {
        let mut set = self.irq.tmr;
        for lvt in [Lvt::Lint0, Lvt::Lint1] {
            let e = self.lvt[lvt.index()];
            if e.level_triggered() {
                set.insert(e.vector());
            }
        }
        set
    }

    /// TPR threshold for TPR-shadow-only operation (no virtual-interrupt
    /// delivery, SDM 29.1.2): the class of the highest pending vector that
    /// TPR currently blocks, so that the guest lowering TPR below it exits;
    /// 0 when nothing is blocked by TPR.
    pub fn tpr_threshold(&self) -> u8 {
        match self.irq.irr.highest() {
            Some(v) if class(v) > class(self.irq.isrv()) && class(v) <= class(self.tpr) => class(v),
            _ => 0,
        }
    }

    /// Before VM entry: the page, the guest interrupt status and the
    /// EOI-exit bitmap for a processor doing virtual-interrupt delivery.
    pub fn sync_to_virtual(&self, now: u64, cpu: &mut VirtualInterruptCpu) {
        self.export_page(now, &mut cpu.page);
        cpu.status = self.guest_interrupt_status();
        cpu.eoi_exit_bitmap = self.eoi_exit_bitmap();
    }

    /// After VM exit: takes back what the processor changes without an
    /// exit: VTPR, VIRR and VISR. PPR is derived from them.
    pub fn sync_from_virtual(&mut self, cpu: &VirtualInterruptCpu) {
        self.tpr = cpu.page.read(Register::Tpr) as u8;
        self.irq.irr = cpu.page.vectors(0x200);
        self.irq.isr = cpu.page.vectors(0x100);
        // Illegal vectors can never be latched, whatever the page says.
        self.irq.irr.0[0] &= !0xFFFF;
        self.irq.isr.0[0] &= !0xFFFF;
    }

    /// A trap-like APIC-write exit (SDM 29.4.3.3): the processor already
    /// wrote `page[offset]`; this runs the write's side effects (ICR send,
    /// timer start, LVT mode change, ...). Offsets that are not registers
    /// are ignored.
    pub fn apic_write_trap(
        &mut self,
        now: u64,
        page: &VirtualApicPage,
        offset: u32,
    ) -> Option<Message> {
        let reg = Register::from_offset(offset & !0xF)?;
        let value = page.read(reg);
        match self.mode {
            ApicMode::X2Apic => {
                let msr = reg.x2apic_msr();
                let v = if reg == Register::IcrLow {
                    (page.read(Register::IcrHigh) as u64) << 32 | value as u64
                } else {
                    value as u64
                };
                self.msr_write(now, msr, v).ok().flatten()
            }
            _ => self.mmio_write(now, offset as u64 & !0xF, &value.to_le_bytes()),
        }
    }

    /// An EOI-induced exit for `vector` (SDM 29.1.4): the processor already
    /// cleared it in VISR (call [`LocalApic::sync_from_virtual`] first);
    /// this clears LINT remote IRR and returns the EOI broadcast, exactly
    /// as an emulated EOI would.
    pub fn eoi_induced(&mut self, vector: u8) -> Option<Message> {
        self.irq.isr.remove(vector);
        self.eoi_side_effects(vector, self.irq.tmr.contains(vector))
    }
}

/// A software model of the processor's virtual-interrupt delivery: the
/// virtual-APIC page plus the guest interrupt status and the EOI-exit
/// bitmap, and the operations the CPU performs without a VM exit
/// (SDM 29.1.2-29.1.5, 29.2).
#[derive(Debug, Clone, Default)]
pub struct VirtualInterruptCpu {
    /// The virtual-APIC page.
    pub page: VirtualApicPage,
    /// RVI and SVI.
    pub status: GuestInterruptStatus,
    /// EOI-exit bitmap.
    pub eoi_exit_bitmap: VectorSet,
}

/// What a virtualized EOI did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtualEoi {
    /// Handled by the processor; no exit.
    Virtualized,
    /// EOI-induced VM exit with this vector as exit qualification.
    Exit(u8),
}

impl VirtualInterruptCpu {
    fn visr(&self) -> VectorSet {
        self.page.vectors(0x100)
    }
    fn virr(&self) -> VectorSet {
        self.page.vectors(0x200)
    }

    /// VPPR.
    pub fn vppr(&self) -> u8 {
        self.page.read(Register::Ppr) as u8
    }

    /// PPR virtualization (29.1.3): `VPPR = VTPR` if `VTPR[7:4] >=
    /// SVI[7:4]`, else `SVI & 0xF0`.
    pub fn ppr_virtualization(&mut self) {
        let vtpr = self.page.read(Register::Tpr) as u8;
        self.page
            .write(Register::Ppr, ppr(vtpr, self.status.svi) as u32);
    }

    /// Evaluation of pending virtual interrupts (29.2.1): the vector that
    /// would be recognized, if `RVI[7:4] > VPPR[7:4]`.
    pub fn pending(&self) -> Option<u8> {
        let rvi = self.status.rvi;
        (class(rvi) > class(self.vppr())).then_some(rvi)
    }

    /// Virtual-interrupt delivery (29.2.2), when the guest can take an
    /// interrupt: moves RVI to VISR, updates SVI, VPPR and RVI, and returns
    /// the vector delivered through the guest IDT.
    pub fn deliver(&mut self) -> Option<u8> {
        let v = self.pending()?;
        let mut visr = self.visr();
        visr.insert(v);
        self.page.set_vectors(0x100, &visr);
        self.status.svi = v;
        self.page.write(Register::Ppr, (v & 0xF0) as u32);
        let mut virr = self.virr();
        virr.remove(v);
        self.page.set_vectors(0x200, &virr);
        self.status.rvi = virr.highest().unwrap_or(0);
        Some(v)
    }

    /// TPR virtualization (29.1.2) of a guest write of `tpr` (MOV CR8 is
    /// `tpr = cr8 << 4`), with virtual-interrupt delivery on.
    pub fn write_tpr(&mut self, tpr: u8) {
        self.page.write(Register::Tpr, tpr as u32);
        self.ppr_virtualization();
    }

    /// EOI virtualization (29.1.4).
    pub fn eoi(&mut self) -> VirtualEoi {
        let vector = self.status.svi;
        let mut visr = self.visr();
        visr.remove(vector);
        self.page.set_vectors(0x100, &visr);
        self.status.svi = visr.highest().unwrap_or(0);
        self.ppr_virtualization();
        if self.eoi_exit_bitmap.contains(vector) {
            VirtualEoi::Exit(vector)
        } else {
            VirtualEoi::Virtualized
        }
    }

    /// Self-IPI virtualization (29.1.5) of an x2APIC SELF IPI write.
    pub fn self_ipi(&mut self, vector: u8) {
        let mut virr = self.virr();
        virr.insert(vector);
        self.page.set_vectors(0x200, &virr);
        self.status.rvi = self.status.rvi.max(vector);
    }

    /// Posted-interrupt processing (29.6) of the vectors taken from a
    /// descriptor's PIR: OR into VIRR, raise RVI.
    pub fn process_posted(&mut self, pir: &VectorSet) {
        let mut virr = self.virr();
        for n in 0..8 {
            virr.0[n] |= pir.0[n];
        }
        self.page.set_vectors(0x200, &virr);
        if let Some(h) = pir.highest() {
            self.status.rvi = self.status.rvi.max(h);
        }
    }
}

/// A posted-interrupt descriptor (SDM 29.6, Table 29-1): 256 PIR bits, the
/// outstanding-notification (ON) and suppress-notification (SN) bits, the
/// notification vector (NV) and destination (NDST). Any thread may
/// [`PostedInterrupts::post`]; the owning vCPU takes the bits with
/// [`PostedInterrupts::take`] (or [`LocalApic::sync_posted`]) before any
/// scan, save or priority decision.
///
/// Beside the architectural 64 bytes it keeps a trigger-mode bitmap so
/// level-triggered vectors can be posted too (TMR is the APIC's, not the
/// descriptor's).
#[derive(Debug, Default)]
pub struct PostedInterrupts {
    pir: [AtomicU64; 4],
    level: [AtomicU64; 4],
    /// Bits 256-319 of the descriptor: ON (0), SN (1), NV (23:16), NDST
    /// (63:32).
    control: AtomicU64,
}

const ON: u64 = 1 << 0;
const SN: u64 = 1 << 1;

impl PostedInterrupts {
    /// An empty descriptor with notification vector `nv` and destination
    /// `ndst` (x2APIC ID, or xAPIC ID in bits 15:8 for xAPIC mode).
    pub fn new(nv: u8, ndst: u32) -> Self {
        let d = PostedInterrupts::default();
        d.control.store(
            ((nv as u64) << 16) | ((ndst as u64) << 32),
            Ordering::Relaxed,
        );
        d
    }

    /// Posts `vector` (any thread). Returns whether the poster must send
    /// the notification (ON was clear and SN is clear): otherwise a
    /// notification is already outstanding or suppressed.
    pub fn post(&self, vector: u8, level: bool) -> bool {
        let word = (vector >> 6) as usize;
        let bit = 1u64 << (vector & 63);
        if level {
            self.level[word].fetch_or(bit, Ordering::Relaxed);
        } else {
            self.level[word].fetch_and(!bit, Ordering::Relaxed);
        }
        self.pir[word].fetch_or(bit, Ordering::Release);
        let prev = self.control.fetch_or(ON, Ordering::AcqRel);
        prev & (ON | SN) == 0
    }

    /// Whether a notification is outstanding.
    pub fn outstanding(&self) -> bool {
        self.control.load(Ordering::Acquire) & ON != 0
    }

    /// Sets or clears SN (e.g. while the vCPU is not running).
    pub fn set_suppress(&self, on: bool) {
        if on {
            self.control.fetch_or(SN, Ordering::AcqRel);
        } else {
            self.control.fetch_and(!SN, Ordering::AcqRel);
        }
    }

    /// The owner takes every posted vector: clears ON, then swaps each PIR
    /// word with 0 (so a vector posted concurrently is either taken now or
    /// sets ON again for the next take). Returns the vectors and which of
    /// them are level-triggered.
    pub fn take(&self) -> (VectorSet, VectorSet) {
        self.control.fetch_and(!ON, Ordering::AcqRel);
        let mut pir = VectorSet::EMPTY;
        let mut level = VectorSet::EMPTY;
        for w in 0..4 {
            let bits = self.pir[w].swap(0, Ordering::Acquire);
            let lv = self.level[w].load(Ordering::Relaxed) & bits;
            pir.0[2 * w] = bits as u32;
            pir.0[2 * w + 1] = (bits >> 32) as u32;
            level.0[2 * w] = lv as u32;
            level.0[2 * w + 1] = (lv >> 32) as u32;
        }
        (pir, level)
    }

    /// The architectural 64-byte descriptor as it stands.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        for w in 0..4 {
            out[w * 8..w * 8 + 8]
                .copy_from_slice(&self.pir[w].load(Ordering::Acquire).to_le_bytes());
        }
        out[32..40].copy_from_slice(&self.control.load(Ordering::Acquire).to_le_bytes());
        out
    }
}

impl LocalApic {
    /// Merges posted vectors into IRR (and TMR) as accepted Fixed
    /// interrupts. Returns whether anything was merged.
    pub fn sync_posted(&mut self, pi: &PostedInterrupts) -> bool {
        if !pi.outstanding() {
            return false;
        }
        let (pir, level) = pi.take();
        let mut any = false;
        for v in pir.iter() {
            any = true;
            self.accept(crate::ipi::Interrupt {
                trigger: crate::regs::TriggerMode::from_bit(level.contains(v)),
                ..crate::ipi::Interrupt::fixed(v)
            });
        }
        any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ApicConfig;

    fn enabled() -> LocalApic {
        let mut a = LocalApic::new(ApicConfig::new(0).with_bsp(true));
        a.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
        a
    }

    #[test]
    fn every_register_at_its_architectural_offset() {
        let mut a = enabled();
        a.mmio_write(0, 0x80, &0x25u32.to_le_bytes());
        a.mmio_write(0, 0xD0, &0x0300_0000u32.to_le_bytes());
        a.mmio_write(0, 0x350, &0x8041u32.to_le_bytes());
        a.mmio_write(0, 0x310, &0x0700_0000u32.to_le_bytes());
        a.mmio_write(0, 0x380, &1234u32.to_le_bytes());
        a.accept(crate::Interrupt::fixed_level(0x93));
        let mut p = VirtualApicPage::default();
        a.export_page(0, &mut p);
        assert_eq!(p.read32(0x020), 0);
        assert_eq!(p.read32(0x030), 0x0005_0014);
        assert_eq!(p.read32(0x080), 0x25);
        assert_eq!(p.read32(0x0A0), 0x25);
        assert_eq!(p.read32(0x0D0), 0x0300_0000);
        assert_eq!(p.read32(0x0E0), 0xFFFF_FFFF);
        assert_eq!(p.read32(0x0F0), 0x1FF);
        assert_eq!(p.read32(0x180 + 0x40), 1 << 19);
        assert_eq!(p.read32(0x200 + 0x40), 1 << 19);
        assert_eq!(p.read32(0x310), 0x0700_0000);
        assert_eq!(p.read32(0x320), 0x10000);
        assert_eq!(p.read32(0x350), 0x8041);
        assert_eq!(p.read32(0x380), 1234);
        assert_eq!(p.read32(0x390), 1234);
        let bytes = p.to_bytes();
        assert_eq!(&bytes[0x80..0x84], &[0x25, 0, 0, 0]);
        assert_eq!(VirtualApicPage::from_bytes(&bytes), p);
    }

    #[test]
    fn eoi_exit_bitmap_follows_tmr_and_level_lints() {
        let mut a = enabled();
        a.accept(crate::Interrupt::fixed_level(0x70));
        a.accept(crate::Interrupt::fixed(0x71));
        a.mmio_write(0, 0x360, &0x8052u32.to_le_bytes());
        let b = a.eoi_exit_bitmap();
        assert!(b.contains(0x70) && b.contains(0x52) && !b.contains(0x71));
    }

    #[test]
    fn tpr_threshold_reports_blocked_class() {
        let mut a = enabled();
        a.accept(crate::Interrupt::fixed(0x45));
        assert_eq!(a.tpr_threshold(), 0);
        a.set_tpr(0x50);
        assert_eq!(a.tpr_threshold(), 4);
    }

    #[test]
    fn virtual_delivery_and_eoi_follow_sdm_pseudocode() {
        let mut cpu = VirtualInterruptCpu::default();
        cpu.self_ipi(0x61);
        cpu.self_ipi(0x42);
        assert_eq!(cpu.status.rvi, 0x61);
        assert_eq!(cpu.deliver(), Some(0x61));
        assert_eq!(cpu.status.svi, 0x61);
        assert_eq!(cpu.vppr(), 0x60);
        assert_eq!(cpu.status.rvi, 0x42);
        assert_eq!(cpu.pending(), None);
        assert_eq!(cpu.eoi(), VirtualEoi::Virtualized);
        assert_eq!(cpu.vppr(), 0);
        assert_eq!(cpu.deliver(), Some(0x42));
        cpu.eoi_exit_bitmap.insert(0x42);
        assert_eq!(cpu.eoi(), VirtualEoi::Exit(0x42));
    }

    #[test]
    fn posting_sets_on_once_and_take_clears() {
        let pi = PostedInterrupts::new(0xF2, 3);
        assert!(pi.post(0x30, false));
        assert!(
            !pi.post(0x31, true),
            "ON already set: no second notification"
        );
        let (v, l) = pi.take();
        assert!(v.contains(0x30) && v.contains(0x31));
        assert!(l.contains(0x31) && !l.contains(0x30));
        assert!(!pi.outstanding());
        let bytes = pi.to_bytes();
        assert_eq!(bytes[34], 0xF2, "NV at bits 279:272");
        assert_eq!(bytes[36], 3, "NDST at bits 319:288");
        pi.set_suppress(true);
        assert!(!pi.post(0x40, false), "SN suppresses the notification");
    }

    #[test]
    fn trap_like_apic_write_runs_side_effects() {
        let mut a = enabled();
        let mut cpu = VirtualInterruptCpu::default();
        a.sync_to_virtual(0, &mut cpu);
        cpu.page.write(Register::IcrHigh, 0x0200_0000);
        a.apic_write_trap(0, &cpu.page, 0x310);
        cpu.page.write(Register::IcrLow, 0x4051);
        let m = a.apic_write_trap(0, &cpu.page, 0x300);
        assert!(
            matches!(m, Some(Message::Ipi(ipi)) if ipi.destination.id == 2 && ipi.interrupt.vector == 0x51)
        );
    }
}
