//! Interrupt priority, acceptance, acknowledge and EOI (SDM 11.8.3
//! "Task and Processor Priorities", 11.8.4 "Interrupt Acceptance for Fixed
//! Interrupts", 11.8.5 "Signaling Interrupt Servicing Completion").

use crate::vector::VectorSet;

/// Priority class of a vector (bits 7:4).
#[inline]
pub const fn class(vector: u8) -> u8 {
    vector >> 4
}

/// Processor priority: `PPR = TPR` if `TPR[7:4] >= ISRV[7:4]`, else
/// `ISRV & 0xF0` (SDM 11.8.3.1), with `ISRV` the highest in-service vector
/// or 0.
#[inline]
pub const fn ppr(tpr: u8, isrv: u8) -> u8 {
    if class(tpr) >= class(isrv) {
        tpr
    } else {
        isrv & 0xF0
    }
}

/// Whether a pending vector can be delivered at processor priority `ppr`:
/// only if its class is strictly above PPR's class (SDM 11.8.3.1).
#[inline]
pub const fn deliverable(vector: u8, ppr: u8) -> bool {
    class(vector) > class(ppr)
}

/// The IRR, ISR and TMR of one local APIC and the rules that move vectors
/// between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InterruptRegisters {
    /// Interrupt request register: accepted, not yet acknowledged.
    pub irr: VectorSet,
    /// In-service register: acknowledged, waiting for EOI.
    pub isr: VectorSet,
    /// Trigger mode register: set for level-triggered vectors.
    pub tmr: VectorSet,
}

impl InterruptRegisters {
    /// Latches a Fixed interrupt into IRR and records its trigger mode in
    /// TMR (SDM 11.8.4). Returns whether the IRR bit was newly set (a
    /// second request for a pending vector is coalesced).
    #[inline]
    pub fn request(&mut self, vector: u8, level: bool) -> bool {
        self.tmr.set(vector, level);
        self.irr.insert(vector)
    }

    /// Highest in-service vector, 0 when none.
    #[inline]
    pub fn isrv(&self) -> u8 {
        self.isr.highest().unwrap_or(0)
    }

    /// Processor priority for task priority `tpr`.
    #[inline]
    pub fn ppr(&self, tpr: u8) -> u8 {
        ppr(tpr, self.isrv())
    }

    /// The highest pending vector if it is deliverable at `tpr`.
    #[inline]
    pub fn deliverable(&self, tpr: u8) -> Option<u8> {
        let v = self.irr.highest()?;
        deliverable(v, self.ppr(tpr)).then_some(v)
    }

    /// The processor takes the highest deliverable interrupt: IRR -> ISR.
    /// Returns `None` when nothing is deliverable (the caller then hands out
    /// the spurious vector and sets nothing in ISR, SDM 11.9).
    #[inline]
    pub fn acknowledge(&mut self, tpr: u8) -> Option<u8> {
        let v = self.deliverable(tpr)?;
        self.irr.remove(v);
        self.isr.insert(v);
        Some(v)
    }

    /// EOI: clears the highest in-service vector. Returns it and whether it
    /// was level triggered (TMR set), or `None` when ISR was empty.
    #[inline]
    pub fn eoi(&mut self) -> Option<(u8, bool)> {
        let v = self.isr.highest()?;
        self.isr.remove(v);
        Some((v, self.tmr.contains(v)))
    }

    /// Clears all three registers.
    pub fn clear(&mut self) {
        *self = InterruptRegisters::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppr_is_tpr_when_tpr_class_not_below_isrv() {
        assert_eq!(ppr(0x45, 0x41), 0x45);
        assert_eq!(ppr(0x45, 0x00), 0x45);
    }

    #[test]
    fn ppr_is_isrv_class_when_isrv_above_tpr() {
        assert_eq!(ppr(0x20, 0x5A), 0x50);
    }

    #[test]
    fn deliverable_needs_strictly_higher_class() {
        assert!(!deliverable(0x5F, 0x50));
        assert!(deliverable(0x60, 0x5F));
    }

    #[test]
    fn acknowledge_moves_highest_irr_to_isr() {
        let mut r = InterruptRegisters::default();
        r.request(0x30, false);
        r.request(0x80, false);
        assert_eq!(r.acknowledge(0), Some(0x80));
        assert!(r.isr.contains(0x80) && !r.irr.contains(0x80));
        // 0x30 is below the in-service class now.
        assert_eq!(r.acknowledge(0), None);
        assert_eq!(r.eoi(), Some((0x80, false)));
        assert_eq!(r.acknowledge(0), Some(0x30));
    }

    #[test]
    fn eoi_on_empty_isr_changes_nothing() {
        let mut r = InterruptRegisters::default();
        r.request(0x40, true);
        let before = r;
        assert_eq!(r.eoi(), None);
        assert_eq!(r, before);
    }

    #[test]
    fn request_records_trigger_in_tmr() {
        let mut r = InterruptRegisters::default();
        r.request(0x40, true);
        assert!(r.tmr.contains(0x40));
        r.request(0x40, false);
        assert!(!r.tmr.contains(0x40));
    }
}
