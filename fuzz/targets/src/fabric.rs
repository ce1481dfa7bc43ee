//! Target `fabric`: 2-8 local APICs on a `vlapic::fabric::Fabric`, with
//! IPIs from ICR writes, MSIs with arbitrary address/data, device messages,
//! identity changes (APIC_BASE, ID, LDR, DFR, SVR, INIT), owners syncing
//! whenever the input says (single-threaded).
//!
//! Oracle: a shadow copy of every APIC to which each message is delivered
//! by brute force (`Destination::matches` plus the shorthand rules and
//! lowest-priority arbitration over the shadow states) in the order the
//! messages were sent. After an owner syncs, its APIC must equal its
//! shadow (save() equal), except for the documented inbox merge rule: a
//! vector posted both edge and level since the last merge is latched
//! level. So "every fixed IPI to a matching software-enabled APIC ends up
//! in its IRR" (and every NMI/INIT/SIPI where it should) is checked
//! exactly, and `Delivery::targets` and `Fabric::resolve` against the brute
//! force. Per-APIC invariants as in `lapic_ops`; inboxes are empty after a
//! sync.

use super::check::{self, Checks};
use super::input::Input;
use super::lapic_ops;
use vlapic::fabric::{Fabric, FabricConfig, TieBreak};
use vlapic::ipi::decode_icr;
use vlapic::msi::{self, MsiOptions};
use vlapic::regs::Icr;
use vlapic::{
    ApicConfig, ApicMode, DeliveryMode, Destination, DestinationMode, Interrupt, LocalApic,
    Message, Shorthand, TriggerMode, VectorSet,
};

struct World {
    fabric: Fabric,
    real: Vec<LocalApic>,
    shadow: Vec<LocalApic>,
    attached: Vec<bool>,
    /// Vectors posted level-triggered to each vCPU since its last sync.
    level_posted: Vec<VectorSet>,
    now: u64,
    rr_cursor: usize,
}

impl World {
    fn n(&self) -> usize {
        self.real.len()
    }

    /// The owner's sync: merge, then its APIC must equal the shadow.
    fn sync(&mut self, i: usize) {
        if !self.attached[i] {
            return;
        }
        self.fabric.sync(i, &mut self.real[i]);
        assert!(
            !self.fabric.has_pending(i),
            "inbox {i} not empty after sync"
        );
        self.level_posted[i] = VectorSet::EMPTY;
        let now = self.now;
        self.real[i].advance(now);
        self.shadow[i].advance(now);
        let (r, s) = (self.real[i].save(now), self.shadow[i].save(now));
        assert!(
            r == s,
            "vCPU {i}: fabric delivery differs from direct delivery:\nfabric {r:#x?}\ndirect {s:#x?}"
        );
        check::apic(&self.real[i], now, Checks::ALL);
    }

    /// Brute-force targets among the shadows (the truth after every posted
    /// message is merged).
    fn targets(&self, from: Option<usize>, dest: &Destination) -> Vec<usize> {
        (0..self.n())
            .filter(|&j| {
                if !self.attached[j] {
                    return false;
                }
                let id = self.shadow[j].identity();
                let enabled = id.mode != ApicMode::Disabled;
                match dest.shorthand {
                    Shorthand::None => dest.matches(&id),
                    Shorthand::SelfOnly => from == Some(j),
                    Shorthand::AllIncludingSelf => enabled,
                    Shorthand::AllExcludingSelf => from != Some(j) && enabled,
                }
            })
            .collect()
    }

    /// Delivers `irq` to `dest` through the fabric (via `send`) and to the
    /// shadows directly, and compares what can be compared at once.
    fn route(
        &mut self,
        from: Option<usize>,
        dest: &Destination,
        irq: Interrupt,
        lowest: bool,
        send: impl FnOnce(&Fabric) -> Option<vlapic::fabric::Delivery>,
    ) {
        let targets = self.targets(from, dest);
        let got = self.fabric.resolve(from, dest);
        assert_eq!(
            got, targets,
            "resolve({from:?}, {dest:?}) disagrees with brute force"
        );
        let lowest = lowest && irq.delivery_mode != DeliveryMode::Reserved3;
        let chosen: Vec<usize> = if irq.delivery_mode == DeliveryMode::Reserved3 {
            Vec::new()
        } else if lowest {
            let n = self.n();
            let eligible: Vec<usize> = targets
                .iter()
                .copied()
                .filter(|&t| self.shadow[t].software_enabled())
                .collect();
            let best = eligible
                .iter()
                .copied()
                .min_by_key(|&t| (self.shadow[t].ppr(), (t + n - self.rr_cursor % n) % n));
            best.into_iter().collect()
        } else {
            targets.clone()
        };
        let Some(d) = send(&self.fabric) else {
            return;
        };
        if lowest {
            assert!(
                d.targets <= 1,
                "lowest priority reached {} APICs",
                d.targets
            );
            let n = self.n();
            match (self.fabric.config().tie_break, chosen.first()) {
                (_, None) => {
                    assert_eq!(d.targets, 0, "lowest priority without candidate delivered")
                }
                (TieBreak::LowestIndex, Some(_)) => {
                    assert_eq!(
                        d.targets, 1,
                        "lowest priority with candidates {chosen:?} dropped"
                    );
                }
                (TieBreak::RoundRobin, Some(&w)) => {
                    assert_eq!(d.targets, 1, "lowest priority with candidates dropped");
                    self.rr_cursor = (w + 1) % n;
                }
            }
        } else {
            assert_eq!(
                d.targets as usize,
                chosen.len(),
                "delivery to {chosen:?} reached {} APICs ({dest:?} {irq:?})",
                d.targets
            );
        }
        for t in chosen {
            let mut irq = irq;
            if matches!(
                irq.delivery_mode,
                DeliveryMode::Fixed | DeliveryMode::LowestPriority
            ) {
                if irq.trigger == TriggerMode::Level {
                    self.level_posted[t].insert(irq.vector);
                } else if self.level_posted[t].contains(irq.vector) {
                    // Documented merge rule: edge + level since the last
                    // merge latches level.
                    irq.trigger = TriggerMode::Level;
                }
            }
            if irq.delivery_mode == DeliveryMode::Init && !irq.is_init_deassert() {
                self.level_posted[t] = VectorSet::EMPTY;
            }
            self.shadow[t].accept(irq);
        }
    }

    fn route_message(&mut self, from: usize, msg: Option<Message>) {
        if let Some(Message::Ipi(ipi)) = msg {
            let lowest = ipi.interrupt.delivery_mode == DeliveryMode::LowestPriority;
            self.route(Some(from), &ipi.destination, ipi.interrupt, lowest, |f| {
                f.route(from, &Message::Ipi(ipi))
            });
        }
    }

    /// A guest access on vCPU `i`: its owner syncs before and after.
    fn owner_op(
        &mut self,
        i: usize,
        mut op: impl FnMut(&mut LocalApic, &mut u64) -> Option<Message>,
    ) {
        self.sync(i);
        let (mut t1, mut t2) = (self.now, self.now);
        let m1 = op(&mut self.real[i], &mut t1);
        let m2 = op(&mut self.shadow[i], &mut t2);
        assert_eq!(m1, m2, "same access, different message");
        assert_eq!(t1, t2);
        self.now = t1;
        self.route_message(i, m1);
        self.sync(i);
    }
}

fn destination(inp: &mut Input, n: usize) -> Destination {
    let mode = if inp.bool() {
        DestinationMode::Logical
    } else {
        DestinationMode::Physical
    };
    let id = match inp.below(6) {
        0 => 0xFF,
        1 => 1 << inp.below(8),
        2 => inp.u32(),
        3 => 0xFFFF_FFFF,
        4 => (inp.below(2) << 16) | (1 << inp.below(16)),
        _ => inp.below(n as u32 + 1),
    };
    Destination {
        shorthand: Shorthand::from_bits(if inp.below(4) == 0 { inp.u8() & 3 } else { 0 }),
        mode,
        id,
        x2apic_format: inp.bool(),
    }
}

/// The target.
pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let n = 2 + inp.below(7) as usize;
    let flags = inp.u8();
    let ids = inp.below(4);
    let mut cfgs = Vec::new();
    for i in 0..n {
        let id = match ids {
            0 => inp.below(n as u32 + 2), // duplicates possible
            1 => (i as u32) * 0x100 + 1,  // x2APIC-only IDs
            _ => i as u32,
        };
        cfgs.push(
            ApicConfig::new(id)
                .with_bsp(i == 0)
                .with_x2apic(flags & 1 == 0)
                .with_suppress_eoi_broadcast(flags & 2 != 0)
                .with_cmci(flags & 4 != 0)
                .with_min_periodic_ns(1000),
        );
    }
    let fabric = Fabric::with_config(
        n,
        FabricConfig {
            tie_break: if flags & 8 != 0 {
                TieBreak::RoundRobin
            } else {
                TieBreak::LowestIndex
            },
            msi: MsiOptions {
                extended_destination_id: flags & 16 == 0,
                address_high_destination: flags & 32 != 0,
            },
        },
    );
    let real: Vec<LocalApic> = cfgs.iter().map(|c| LocalApic::new(*c)).collect();
    let mut w = World {
        fabric,
        shadow: real.clone(),
        real,
        attached: vec![true; n],
        level_posted: vec![VectorSet::EMPTY; n],
        now: 0,
        rr_cursor: 0,
    };
    for i in 0..n {
        if flags & 64 == 0 {
            // Boot: software-enable everyone, x2APIC for some.
            let x2 = flags & 128 != 0 && w.real[i].config().x2apic;
            for a in [&mut w.real[i], &mut w.shadow[i]] {
                a.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
                if x2 {
                    a.write_apic_base(0, 0xFEE0_0C00 | (a.apic_base() & 0x100))
                        .unwrap();
                    a.msr_write(0, 0x80F, 0x1FF).unwrap();
                }
            }
        }
        w.fabric.attach(i, &w.real[i]);
    }
    let mut steps = 0;
    while !inp.is_empty() && steps < 256 {
        steps += 1;
        let i = inp.below(n as u32) as usize;
        match inp.u8() % 12 {
            0..=2 => {
                // Any access on vCPU i.
                let snapshot = inp.clone();
                let mut used = 0;
                w.owner_op(i, |a, now| {
                    let mut sub = snapshot.clone();
                    let m = lapic_ops::step(a, now, &mut sub);
                    used = snapshot.remaining() - sub.remaining();
                    m
                });
                inp.bytes(used);
            }
            3 | 4 => {
                // Identity changes.
                let (off, v) = match inp.below(5) {
                    0 => (0x20u64, (inp.below(n as u32 + 2)) << 24),
                    1 => (0xD0, (1u32 << inp.below(8)) << 24),
                    2 => (0xD0, (inp.u8() as u32) << 24),
                    3 => (0xE0, if inp.bool() { 0xFFFF_FFFF } else { 0x0FFF_FFFF }),
                    _ => (0xF0, 0xFF | if inp.below(4) != 0 { 0x100 } else { 0 }),
                };
                let base = match inp.below(8) {
                    0 => Some(0xFEE0_0C00u64),
                    1 => Some(0xFEE0_0000),
                    2 => Some(0xFEE0_0800),
                    _ => None,
                };
                w.owner_op(i, |a, now| match base {
                    Some(b) => a
                        .write_apic_base(*now, b | (a.apic_base() & 0x100))
                        .ok()
                        .flatten(),
                    None => {
                        if a.mode() == ApicMode::X2Apic && off != 0x20 && off != 0xD0 && off != 0xE0
                        {
                            a.msr_write(*now, 0x800 + (off as u32 >> 4), v as u64)
                                .ok()
                                .flatten()
                        } else {
                            a.mmio_write(*now, off, &v.to_le_bytes())
                        }
                    }
                });
            }
            5 | 6 => {
                // An IPI through the ICR.
                let dest = destination(&mut inp, n);
                let vector = if inp.below(8) == 0 {
                    inp.u8()
                } else {
                    0x20 + inp.below(0xE0) as u8
                };
                let dm = if inp.below(2) == 0 { inp.u8() & 7 } else { 0 };
                let low = vector as u32
                    | (dm as u32) << 8
                    | (matches!(dest.mode, DestinationMode::Logical) as u32) << 11
                    | (inp.u8() as u32 & 0xC0) << 8
                    | (dest.shorthand.into_bits() as u32) << 18;
                let dest_id = dest.id;
                w.owner_op(i, move |a, now| {
                    if a.mode() == ApicMode::X2Apic {
                        a.msr_write(*now, 0x830, (dest_id as u64) << 32 | low as u64)
                            .ok()
                            .flatten()
                    } else {
                        a.mmio_write(*now, 0x310, &(dest_id << 24).to_le_bytes());
                        a.mmio_write(*now, 0x300, &low.to_le_bytes())
                    }
                });
            }
            7 => {
                // An MSI.
                let address = match inp.below(4) {
                    0 => inp.u64(),
                    _ => {
                        0xFEE0_0000
                            | (inp.u8() as u64) << 12
                            | if inp.below(3) == 0 {
                                (inp.u8() as u64 & 0x7F) << 5
                            } else {
                                0
                            }
                            | (inp.u8() as u64 & 0xC)
                            | if inp.below(8) == 0 {
                                (inp.u8() as u64) << 40
                            } else {
                                0
                            }
                    }
                };
                let data = match inp.below(3) {
                    0 => inp.u32(),
                    _ => {
                        inp.u8() as u32
                            | (inp.u8() as u32 & 0x7) << 8
                            | (inp.u8() as u32 & 0xC0) << 8
                    }
                };
                let opts = w.fabric.config().msi;
                match msi::decode_with(address, data, opts) {
                    Ok(m) => {
                        w.route(
                            None,
                            &m.destination,
                            m.interrupt,
                            m.lowest_priority(),
                            |f| Some(f.send_msi(address, data).expect("decoded MSI refused")),
                        );
                    }
                    Err(e) => {
                        assert_eq!(w.fabric.send_msi(address, data), Err(e));
                    }
                }
            }
            8 => {
                // A device message (IOAPIC-style), any destination.
                let dest = destination(&mut inp, n);
                let irq = lapic_ops::interrupt(&mut inp);
                let lowest = irq.delivery_mode == DeliveryMode::LowestPriority;
                w.route(None, &dest, irq, lowest, |f| Some(f.deliver(&dest, irq)));
            }
            9 => {
                // An IPI handed to the fabric directly (any ICR, any sender).
                let icr = Icr::from_bits(inp.u64());
                let from = inp.below(n as u32 + 1) as usize;
                let ipi = decode_icr(icr, inp.bool(), inp.u32());
                let lowest = ipi.interrupt.delivery_mode == DeliveryMode::LowestPriority;
                let sender = (from < n).then_some(from);
                w.route(sender, &ipi.destination, ipi.interrupt, lowest, |f| {
                    Some(f.send_ipi(from, &ipi))
                });
            }
            10 => {
                // Owners sync (all, or one), time passes.
                w.now = w.now.saturating_add(lapic_ops::dt(&mut inp) % 10_000_000);
                if inp.bool() {
                    for j in 0..n {
                        w.sync(j);
                    }
                } else {
                    w.sync(i);
                }
            }
            _ => {
                // Hot-unplug / re-plug.
                w.sync(i);
                if w.attached[i] {
                    w.fabric.detach(i);
                    w.attached[i] = false;
                } else {
                    w.fabric.attach(i, &w.real[i]);
                    w.attached[i] = true;
                    w.sync(i);
                }
            }
        }
    }
    for j in 0..n {
        w.sync(j);
    }
}
