//! The per-vCPU inbox: interrupts posted by any thread with atomics, merged
//! into the owner's [`LocalApic`] on the owner's thread.

#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::ipi::Interrupt;
use crate::mode::ApicMode;
use crate::regs::DeliveryMode;
use crate::LocalApic;

/// Event bits of [`Inbox`] (one word, so that INIT can order itself
/// against the others).
const EV_NMI: u32 = 1 << 0;
const EV_SMI: u32 = 1 << 1;
const EV_INIT: u32 = 1 << 2;
const EV_EXTINT: u32 = 1 << 3;
const EV_SIPI: u32 = 1 << 4;
const SIPI_VECTOR_SHIFT: u32 = 8;

/// Result of posting one interrupt into an [`Inbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Posted {
    /// Something new is pending: the target must be woken.
    New,
    /// The same vector or event was already pending in the inbox
    /// (IRR semantics: requests for a pending vector are coalesced).
    Coalesced,
    /// Nothing to post (INIT level de-assert, reserved delivery mode).
    Ignored,
}

/// Interrupts posted to one vCPU and not yet merged into its
/// [`LocalApic`].
///
/// Any thread may post ([`Inbox::post`]) without the target's lock: a
/// Fixed vector is one `fetch_or` in one of two 256-bit sets, edge or
/// level, so each posted bit carries its own trigger mode and IRR and TMR
/// can never disagree. NMI, SMI, INIT, ExtINT and a start-up vector share
/// one event word updated by compare-and-swap: posting INIT discards the
/// vectors, NMI, SMI, ExtINT and SIPI posted before it (the INIT reset
/// clears them too), so at merge time every event in the word was posted after the
/// last INIT and merging "INIT first, then SIPI, then the rest" is exactly
/// the order they were sent in. A second SIPI while one is pending is
/// coalesced (the target ignores it anyway).
///
/// The owner merges with [`Inbox::drain_into`] before each poll.
///
/// ```
/// use vlapic::fabric::{Inbox, Posted};
/// use vlapic::{ApicConfig, Interrupt, LocalApic};
///
/// let inbox = Inbox::new();
/// assert_eq!(inbox.post(Interrupt::fixed(0x40)), Posted::New);
/// assert_eq!(inbox.post(Interrupt::fixed(0x40)), Posted::Coalesced);
/// let mut apic = LocalApic::new(ApicConfig::new(0).with_bsp(true));
/// apic.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes()); // software-enable
/// let merged = inbox.drain_into(&mut apic);
/// assert_eq!(merged.latched, 1);
/// assert_eq!(apic.poll(0).interrupt, Some(0x40));
/// ```
#[derive(Debug)]
pub struct Inbox {
    edge: [AtomicU64; 4],
    level: [AtomicU64; 4],
    events: AtomicU32,
    /// Set after anything was posted; lets an empty drain cost one load.
    pending: AtomicBool,
}

impl Default for Inbox {
    fn default() -> Self {
        Self::new()
    }
}

/// What [`Inbox::drain_into`] merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Merged {
    /// Vectors newly set in IRR.
    pub latched: u32,
    /// Vectors that were already in IRR (coalesced).
    pub coalesced: u32,
    /// Fixed vectors dropped: the APIC is software- or hardware-disabled,
    /// or the vector is illegal (0-15, which also sets ESR bit 6).
    pub dropped: u32,
    /// NMI, SMI, INIT, SIPI or ExtINT events handed to the APIC.
    pub events: u32,
}

impl Merged {
    /// Whether anything was taken from the inbox.
    pub fn any(&self) -> bool {
        self.latched + self.coalesced + self.dropped + self.events != 0
    }
}

/// A snapshot taken out of an [`Inbox`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Taken {
    pub edge: [u64; 4],
    pub level: [u64; 4],
    pub events: u32,
}

impl Inbox {
    /// An empty inbox.
    pub fn new() -> Self {
        Inbox {
            edge: [
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
            ],
            level: [
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
                AtomicU64::new(0),
            ],
            events: AtomicU32::new(0),
            pending: AtomicBool::new(false),
        }
    }

    /// Posts an interrupt (the destination was already resolved to this
    /// vCPU; lowest priority arrives here as Fixed for the chosen target).
    /// Callable from any thread.
    pub fn post(&self, irq: Interrupt) -> Posted {
        let r = match irq.delivery_mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                let set = if irq.trigger == crate::TriggerMode::Level {
                    &self.level
                } else {
                    &self.edge
                };
                let bit = 1u64 << (irq.vector & 63);
                let old = set[(irq.vector >> 6) as usize].fetch_or(bit, Ordering::AcqRel);
                if old & bit == 0 {
                    Posted::New
                } else {
                    Posted::Coalesced
                }
            }
            DeliveryMode::Nmi => self.post_flag(EV_NMI),
            DeliveryMode::Smi => self.post_flag(EV_SMI),
            DeliveryMode::ExtInt => self.post_flag(EV_EXTINT),
            DeliveryMode::Init => {
                if irq.is_init_deassert() {
                    return Posted::Ignored;
                }
                // Everything posted before the INIT is discarded: the INIT
                // reset would clear it (see the type's documentation).
                for i in 0..4 {
                    if self.edge[i].load(Ordering::Relaxed) != 0 {
                        self.edge[i].swap(0, Ordering::AcqRel);
                    }
                    if self.level[i].load(Ordering::Relaxed) != 0 {
                        self.level[i].swap(0, Ordering::AcqRel);
                    }
                }
                let old = self.events.swap(EV_INIT, Ordering::AcqRel);
                if old == EV_INIT {
                    Posted::Coalesced
                } else {
                    Posted::New
                }
            }
            DeliveryMode::StartUp => {
                let sipi = EV_SIPI | (irq.vector as u32) << SIPI_VECTOR_SHIFT;
                match self
                    .events
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                        (e & EV_SIPI == 0).then_some(e | sipi)
                    }) {
                    Ok(_) => Posted::New,
                    Err(_) => Posted::Coalesced,
                }
            }
            DeliveryMode::Reserved3 => return Posted::Ignored,
        };
        if r == Posted::New {
            // An RMW, not a store: it keeps every earlier poster's release
            // sequence alive, so a drainer that reads `true` from any poster
            // also sees the bits of posters before it (a plain store here
            // lost bits; found by the loom model below).
            self.pending.swap(true, Ordering::AcqRel);
        }
        r
    }

    fn post_flag(&self, flag: u32) -> Posted {
        if self.events.fetch_or(flag, Ordering::AcqRel) & flag == 0 {
            Posted::New
        } else {
            Posted::Coalesced
        }
    }

    /// Whether anything may be waiting to be merged (a hint for a halted
    /// vCPU's wait loop: check it after arming the wait, so a post between
    /// the check and the wait is not lost; the post's wake callback covers
    /// the rest).
    pub fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Takes everything posted so far.
    pub(crate) fn take(&self) -> Taken {
        let mut t = Taken::default();
        if !self.pending.load(Ordering::Relaxed) || !self.pending.swap(false, Ordering::AcqRel) {
            return t;
        }
        t.events = self.events.swap(0, Ordering::AcqRel);
        for i in 0..4 {
            // A relaxed load first keeps the cache line shared when empty.
            if self.level[i].load(Ordering::Relaxed) != 0 {
                t.level[i] = self.level[i].swap(0, Ordering::AcqRel);
            }
            if self.edge[i].load(Ordering::Relaxed) != 0 {
                t.edge[i] = self.edge[i].swap(0, Ordering::AcqRel);
            }
        }
        t
    }

    /// Merges everything posted so far into the owner's APIC, with the
    /// same effect as calling [`LocalApic::accept`] for each message in the
    /// order they were posted (INIT, then start-up, NMI, SMI, ExtINT, then
    /// the vectors; see the type's documentation for why that order is
    /// exact). A vector posted both edge- and level-triggered since the
    /// last merge is latched level-triggered, so that its EOI is broadcast
    /// and an IOAPIC's remote IRR cannot stick.
    pub fn drain_into(&self, apic: &mut LocalApic) -> Merged {
        let t = self.take();
        apic.merge_taken(&t)
    }
}

impl LocalApic {
    /// Batch form of [`LocalApic::accept`] for what an [`Inbox`] held.
    pub(crate) fn merge_taken(&mut self, t: &Taken) -> Merged {
        let mut m = Merged::default();
        let e = t.events;
        if e != 0 {
            if e & EV_INIT != 0 {
                self.accept(Interrupt::of_mode(DeliveryMode::Init));
                m.events += 1;
            }
            if e & EV_SIPI != 0 {
                self.accept(Interrupt::startup((e >> SIPI_VECTOR_SHIFT) as u8));
                m.events += 1;
            }
            for (flag, mode) in [
                (EV_NMI, DeliveryMode::Nmi),
                (EV_SMI, DeliveryMode::Smi),
                (EV_EXTINT, DeliveryMode::ExtInt),
            ] {
                if e & flag != 0 {
                    self.accept(Interrupt::of_mode(mode));
                    m.events += 1;
                }
            }
        }
        let mut any = 0;
        for i in 0..4 {
            any |= t.edge[i] | t.level[i];
        }
        if any == 0 {
            return m;
        }
        if self.mode == ApicMode::Disabled || !self.software_enabled() {
            // LocalApic::accept would drop (and count) each one.
            let n: u32 = (0..4).map(|i| (t.edge[i] | t.level[i]).count_ones()).sum();
            self.stats.dropped += n as u64;
            m.dropped += n;
            return m;
        }
        for i in 0..4 {
            let mut level = t.level[i];
            let mut all = t.edge[i] | level;
            if all == 0 {
                continue;
            }
            if i == 0 && all & 0xFFFF != 0 {
                // Illegal vectors 0-15: the receive-illegal-vector error.
                let mut illegal = all & 0xFFFF;
                while illegal != 0 {
                    let v = illegal.trailing_zeros() as u8;
                    illegal &= illegal - 1;
                    self.accept(Interrupt::fixed(v));
                    m.dropped += 1;
                }
                all &= !0xFFFF;
                level &= !0xFFFF;
            }
            let (lo, hi) = (2 * i, 2 * i + 1);
            let irr_words = &mut self.irq.irr.0;
            let irr = irr_words[lo] as u64 | (irr_words[hi] as u64) << 32;
            let fresh = all & !irr;
            m.latched += fresh.count_ones();
            m.coalesced += (all & irr).count_ones();
            let irr = irr | all;
            irr_words[lo] = irr as u32;
            irr_words[hi] = (irr >> 32) as u32;
            let tmr_words = &mut self.irq.tmr.0;
            let tmr = tmr_words[lo] as u64 | (tmr_words[hi] as u64) << 32;
            let tmr = (tmr & !all) | level;
            tmr_words[lo] = tmr as u32;
            tmr_words[hi] = (tmr >> 32) as u32;
        }
        m
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::{ApicConfig, RunState, TriggerMode};

    fn enabled(id: u32, bsp: bool) -> LocalApic {
        let mut a = LocalApic::new(ApicConfig::new(id).with_bsp(bsp));
        a.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
        a
    }

    #[test]
    fn merge_equals_sequential_accept() {
        let inbox = Inbox::new();
        let mut a = enabled(0, true);
        let mut b = a.clone();
        let irqs = [
            Interrupt::fixed(0x20),
            Interrupt::fixed_level(0x21),
            Interrupt::fixed(0xFF),
            Interrupt::fixed_level(0x80),
            Interrupt::fixed(0x05),
            Interrupt::of_mode(DeliveryMode::Nmi),
            Interrupt::of_mode(DeliveryMode::Smi),
            Interrupt::of_mode(DeliveryMode::ExtInt),
        ];
        for irq in irqs {
            inbox.post(irq);
            b.accept(irq);
        }
        b.accept(Interrupt::fixed(0x20)); // coalesced on both sides
        inbox.post(Interrupt::fixed(0x20));
        let m = inbox.drain_into(&mut a);
        assert_eq!(m.latched, 4);
        assert_eq!(m.dropped, 1);
        assert_eq!(m.events, 3);
        assert_eq!(a.interrupt_registers(), b.interrupt_registers());
        assert_eq!(a.work(), b.work());
        assert_eq!(a.stats(), b.stats());
        assert_eq!(
            a.read_register(0, crate::Register::Esr),
            b.read_register(0, crate::Register::Esr)
        );
        assert!(!inbox.drain_into(&mut a).any());
    }

    #[test]
    fn level_wins_over_edge_for_the_same_vector() {
        let inbox = Inbox::new();
        let mut a = enabled(0, true);
        inbox.post(Interrupt::fixed_level(0x40));
        inbox.post(Interrupt::fixed(0x40));
        inbox.drain_into(&mut a);
        assert!(a.interrupt_registers().irr.contains(0x40));
        assert!(a.interrupt_registers().tmr.contains(0x40));
        // An edge request clears TMR like LocalApic::request does.
        inbox.post(Interrupt::fixed(0x40));
        inbox.drain_into(&mut a);
        assert!(!a.interrupt_registers().tmr.contains(0x40));
        let _ = TriggerMode::Edge;
    }

    #[test]
    fn software_disabled_drops_fixed_keeps_nmi() {
        let inbox = Inbox::new();
        let mut a = LocalApic::new(ApicConfig::new(0).with_bsp(true));
        inbox.post(Interrupt::fixed(0x40));
        inbox.post(Interrupt::of_mode(DeliveryMode::Nmi));
        let m = inbox.drain_into(&mut a);
        assert_eq!((m.latched, m.dropped, m.events), (0, 1, 1));
        assert!(a.work().nmi);
        assert!(a.interrupt_registers().irr.is_empty());
    }

    #[test]
    fn init_then_sipi_starts_an_ap_and_init_discards_earlier_events() {
        let inbox = Inbox::new();
        let mut ap = enabled(1, false);
        ap.accept(Interrupt::startup(0x10)); // running now
        ap.take_sipi();
        // NMI and a (stale) SIPI before INIT are discarded by the INIT.
        inbox.post(Interrupt::of_mode(DeliveryMode::Nmi));
        inbox.post(Interrupt::startup(0x33));
        inbox.post(Interrupt::of_mode(DeliveryMode::Init));
        inbox.drain_into(&mut ap);
        assert_eq!(ap.run_state(), RunState::WaitForSipi);
        assert!(!ap.work().nmi && ap.work().init);
        // INIT, SIPI, SIPI: the first SIPI starts it, the second coalesces.
        ap.take_init();
        inbox.post(Interrupt::of_mode(DeliveryMode::Init));
        assert_eq!(inbox.post(Interrupt::startup(0x9A)), Posted::New);
        assert_eq!(inbox.post(Interrupt::startup(0x9B)), Posted::Coalesced);
        inbox.drain_into(&mut ap);
        assert_eq!(ap.run_state(), RunState::Running);
        assert_eq!(ap.take_sipi(), Some(0x9A));
    }

    #[test]
    fn init_deassert_and_reserved_are_ignored() {
        let inbox = Inbox::new();
        let deassert = Interrupt {
            vector: 0,
            delivery_mode: DeliveryMode::Init,
            trigger: TriggerMode::Level,
            assert: false,
        };
        assert_eq!(inbox.post(deassert), Posted::Ignored);
        assert_eq!(
            inbox.post(Interrupt::of_mode(DeliveryMode::Reserved3)),
            Posted::Ignored
        );
        assert!(!inbox.has_pending());
    }
}

/// Model checks of the posting path under every interleaving loom finds
/// (run with `RUSTFLAGS="--cfg loom" cargo test -p vlapic --features fabric
/// --lib loom --release`).
#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// Two posters, one drainer racing them, then a final drain: every bit
    /// posted as `New` is taken exactly once, with its trigger mode.
    #[test]
    fn loom_posts_are_taken_exactly_once() {
        loom::model(|| {
            let inbox = Arc::new(Inbox::new());
            let a = {
                let inbox = inbox.clone();
                thread::spawn(move || inbox.post(Interrupt::fixed_level(0x41)))
            };
            let b = {
                let inbox = inbox.clone();
                thread::spawn(move || inbox.post(Interrupt::fixed(0x80)))
            };
            let first = inbox.take();
            let ra = a.join().unwrap();
            let rb = b.join().unwrap();
            assert_eq!((ra, rb), (Posted::New, Posted::New));
            let second = inbox.take();
            let level = first.level[1] | second.level[1];
            let edge = first.edge[2] | second.edge[2];
            assert_eq!(level, 1 << 1);
            assert_eq!(edge, 1);
            assert_eq!(first.level[1] & second.level[1], 0);
            assert_eq!(first.edge[2] & second.edge[2], 0);
            assert!(!inbox.has_pending() || inbox.take() == Taken::default());
        });
    }

    /// INIT racing NMI and SIPI: whatever the order, the event word holds
    /// only events that came after the last INIT.
    #[test]
    fn loom_init_orders_events() {
        loom::model(|| {
            let inbox = Arc::new(Inbox::new());
            let i = {
                let inbox = inbox.clone();
                thread::spawn(move || inbox.post(Interrupt::of_mode(DeliveryMode::Init)))
            };
            let s = {
                let inbox = inbox.clone();
                thread::spawn(move || {
                    inbox.post(Interrupt::of_mode(DeliveryMode::Nmi));
                    inbox.post(Interrupt::startup(0x12))
                })
            };
            i.join().unwrap();
            s.join().unwrap();
            let t = inbox.take();
            assert!(t.events & EV_INIT != 0);
            // If the NMI survived, it came after the INIT, and so did the
            // SIPI posted after it.
            if t.events & EV_NMI != 0 {
                assert!(t.events & EV_SIPI != 0);
            }
            if t.events & EV_SIPI != 0 {
                assert_eq!(t.events >> SIPI_VECTOR_SHIFT, 0x12);
            }
        });
    }

    /// A vector posted while an INIT is posted and a drain runs: it is
    /// taken exactly once, or discarded by the INIT (which is then taken).
    #[test]
    fn loom_init_discards_or_keeps_vectors() {
        loom::model(|| {
            let inbox = Arc::new(Inbox::new());
            let a = {
                let inbox = inbox.clone();
                thread::spawn(move || inbox.post(Interrupt::fixed(0x41)))
            };
            let b = {
                let inbox = inbox.clone();
                thread::spawn(move || inbox.post(Interrupt::of_mode(DeliveryMode::Init)))
            };
            let first = inbox.take();
            assert_eq!(a.join().unwrap(), Posted::New);
            b.join().unwrap();
            let second = inbox.take();
            let bit = 1u64 << 1;
            let seen = (first.edge[1] & bit != 0) as u32 + (second.edge[1] & bit != 0) as u32;
            assert!(seen <= 1);
            if seen == 0 {
                assert!((first.events | second.events) & EV_INIT != 0);
            }
            assert!((first.events | second.events) & EV_INIT != 0);
        });
    }

    /// A post racing a drain never leaves a bit behind with the pending
    /// flag clear.
    #[test]
    fn loom_no_lost_pending_flag() {
        loom::model(|| {
            let inbox = Arc::new(Inbox::new());
            let p = {
                let inbox = inbox.clone();
                thread::spawn(move || inbox.post(Interrupt::of_mode(DeliveryMode::Nmi)))
            };
            let first = inbox.take();
            p.join().unwrap();
            if first.events & EV_NMI == 0 {
                assert!(inbox.has_pending());
                assert!(inbox.take().events & EV_NMI != 0);
            }
        });
    }
}
