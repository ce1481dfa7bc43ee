//! Multi-thread stress tests of the fabric's posting path: real threads,
//! each owning one vCPU's `LocalApic`, sending to random targets while the
//! targets merge concurrently.
//!
//! - `rounds_account_for_every_ipi`: vectors are unique per sender and
//!   round, so nothing may coalesce: every fixed IPI must be acknowledged
//!   exactly once by exactly its target.
//! - `free_running_no_loss_no_duplication`: no barriers; vectors and NMIs
//!   collide and coalesce. Every post the fabric reported as new must come
//!   out of an inbox exactly once (latched, coalesced into IRR, or dropped
//!   as illegal), every new post woke its target once, and the fabric's
//!   delivery counts add up.
#![cfg(feature = "fabric")]

mod fabric_common;

use fabric_common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use vlapic::fabric::Fabric;
use vlapic::{DeliveryMode, Destination, Interrupt, Ipi, LocalApic};

/// xorshift64*, deterministic per thread.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn eoi(a: &mut LocalApic) {
    w(a, EOI, 0);
}

#[test]
fn rounds_account_for_every_ipi() {
    const N: usize = 8;
    const PER_ROUND: usize = 12; // vectors 0x20 + s * 12 + k < 0x80
    const ROUNDS: usize = 1000;
    let fabric = Arc::new(Fabric::new(N));
    let apics: Vec<LocalApic> = (0..N as u32).map(xapic).collect();
    for (i, a) in apics.iter().enumerate() {
        fabric.attach(i, a);
    }
    let barrier = Arc::new(Barrier::new(N));
    // sent[target][vector] and got[target][vector], over all rounds.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..N * 256).map(|_| AtomicU64::new(0)).collect());
    let got: Arc<Vec<AtomicU64>> = Arc::new((0..N * 256).map(|_| AtomicU64::new(0)).collect());
    let handles: Vec<_> = apics
        .into_iter()
        .enumerate()
        .map(|(me, mut apic)| {
            let (fabric, barrier, sent, got) =
                (fabric.clone(), barrier.clone(), sent.clone(), got.clone());
            thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (me as u64 + 1));
                for _ in 0..ROUNDS {
                    for k in 0..PER_ROUND {
                        let target = rng.below(N);
                        let vector = (0x20 + me * PER_ROUND + k) as u8;
                        let ipi = Ipi {
                            source_id: me as u32,
                            destination: Destination::physical(target as u8),
                            interrupt: Interrupt::fixed(vector),
                        };
                        let d = fabric.send_ipi(me, &ipi);
                        assert_eq!((d.targets, d.posted, d.coalesced), (1, 1, 0));
                        sent[target * 256 + vector as usize].fetch_add(1, Ordering::Relaxed);
                        // Merge our own inbox now and then, mid-round.
                        if rng.below(4) == 0 {
                            fabric.sync(me, &mut apic);
                        }
                    }
                    barrier.wait();
                    fabric.sync(me, &mut apic);
                    while let Some(v) = apic.poll(0).interrupt {
                        assert_eq!(apic.acknowledge(), v);
                        got[me * 256 + v as usize].fetch_add(1, Ordering::Relaxed);
                        eoi(&mut apic);
                    }
                    assert!(apic.interrupt_registers().irr.is_empty());
                    barrier.wait();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let total: u64 = sent.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    assert_eq!(total, (N * PER_ROUND * ROUNDS) as u64);
    for i in 0..N * 256 {
        assert_eq!(
            sent[i].load(Ordering::Relaxed),
            got[i].load(Ordering::Relaxed),
            "target {} vector {:#x}",
            i / 256,
            i % 256
        );
    }
    let st = fabric.stats();
    assert_eq!(st.deliveries, total);
    assert_eq!(st.coalesced, 0);
}

#[test]
fn free_running_no_loss_no_duplication() {
    const N: usize = 6;
    const SENDS: usize = 50_000;
    let fabric = Arc::new(Fabric::new(N));
    let wakes = Arc::new(AtomicU64::new(0));
    let w2 = wakes.clone();
    fabric.set_default_waker(Arc::new(move |_v: usize| {
        w2.fetch_add(1, Ordering::Relaxed);
    }));
    let mut apics: Vec<LocalApic> = (0..N as u32).map(xapic).collect();
    // vCPU 5 is software-disabled: its fixed vectors are dropped at merge.
    w(&mut apics[5], SVR, 0xFF);
    for (i, a) in apics.iter().enumerate() {
        fabric.attach(i, a);
    }
    let posted_vectors = Arc::new(AtomicU64::new(0));
    let posted_events = Arc::new(AtomicU64::new(0));
    let taken_vectors = Arc::new(AtomicU64::new(0));
    let taken_events = Arc::new(AtomicU64::new(0));
    let targets = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(N));
    let handles: Vec<_> = apics
        .into_iter()
        .enumerate()
        .map(|(me, mut apic)| {
            let fabric = fabric.clone();
            let (pv, pe, tv, te, tg) = (
                posted_vectors.clone(),
                posted_events.clone(),
                taken_vectors.clone(),
                taken_events.clone(),
                targets.clone(),
            );
            let (done, barrier) = (done.clone(), barrier.clone());
            thread::spawn(move || {
                let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ (me as u64 * 7 + 3));
                let merge = |apic: &mut LocalApic| {
                    let m = fabric.sync(me, apic).merged;
                    tv.fetch_add(
                        (m.latched + m.coalesced + m.dropped) as u64,
                        Ordering::Relaxed,
                    );
                    te.fetch_add(m.events as u64, Ordering::Relaxed);
                    while apic.poll(0).interrupt.is_some() {
                        apic.acknowledge();
                        eoi(apic);
                    }
                    apic.take_nmi();
                };
                for i in 0..SENDS {
                    let r = rng.next();
                    let irq = if r % 16 == 0 {
                        Interrupt::of_mode(DeliveryMode::Nmi)
                    } else {
                        // A small vector pool so that posts collide.
                        Interrupt::fixed(0x30 + (r >> 8) as u8 % 8)
                    };
                    let dest = match (r >> 16) % 8 {
                        0 => Destination::physical(0xFF), // broadcast
                        _ => Destination::physical(rng.below(N) as u8),
                    };
                    let d = fabric.send_ipi(
                        me,
                        &Ipi {
                            source_id: me as u32,
                            destination: dest,
                            interrupt: irq,
                        },
                    );
                    assert_eq!(d.posted + d.coalesced, d.targets);
                    tg.fetch_add(d.targets as u64, Ordering::Relaxed);
                    if irq.delivery_mode == DeliveryMode::Nmi {
                        pe.fetch_add(d.posted as u64, Ordering::Relaxed);
                    } else {
                        pv.fetch_add(d.posted as u64, Ordering::Relaxed);
                    }
                    if i % 3 == 0 {
                        merge(&mut apic);
                    }
                }
                barrier.wait();
                done.store(true, Ordering::Relaxed);
                merge(&mut apic);
                assert!(!fabric.has_pending(me));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert!(done.load(Ordering::Relaxed));
    let pv = posted_vectors.load(Ordering::Relaxed);
    let pe = posted_events.load(Ordering::Relaxed);
    assert!(pv > 1000 && pe > 100, "pv {pv} pe {pe}");
    assert_eq!(taken_vectors.load(Ordering::Relaxed), pv);
    assert_eq!(taken_events.load(Ordering::Relaxed), pe);
    assert_eq!(wakes.load(Ordering::Relaxed), pv + pe);
    let st = fabric.stats();
    assert_eq!(st.deliveries, targets.load(Ordering::Relaxed));
    assert_eq!(st.messages, (N * SENDS) as u64);
}

/// The embedder's halt loop: each vCPU thread syncs, takes what is
/// pending, and parks when idle; its per-vCPU waker unparks it. A sender
/// ping-pongs with every target (next IPI only after the previous one was
/// taken), so every IPI needs a wake-up: a lost wake-up shows up as a park
/// timeout.
#[test]
fn halted_vcpus_are_woken() {
    use std::time::Duration;
    const N: usize = 4;
    const PER_TARGET: u64 = 300;
    let fabric = Arc::new(Fabric::new(N + 1));
    let taken: Arc<Vec<AtomicU64>> = Arc::new((0..N).map(|_| AtomicU64::new(0)).collect());
    let timeouts = Arc::new(AtomicU64::new(0));
    let ready = Arc::new(Barrier::new(N + 1));
    let vcpus: Vec<_> = (0..N)
        .map(|me| {
            let (fabric, taken, timeouts, ready) = (
                fabric.clone(),
                taken.clone(),
                timeouts.clone(),
                ready.clone(),
            );
            thread::spawn(move || {
                let mut apic = xapic(me as u32 + 1);
                fabric.attach(me, &apic);
                ready.wait();
                while taken[me].load(Ordering::Relaxed) < PER_TARGET {
                    fabric.sync(me, &mut apic);
                    if apic.poll(0).interrupt.is_some() {
                        apic.acknowledge();
                        eoi(&mut apic);
                        taken[me].fetch_add(1, Ordering::Release);
                        continue;
                    }
                    // Halt: nothing to do. A post between the sync above
                    // and here leaves an unpark token, so park returns.
                    if !fabric.has_pending(me) {
                        let t0 = std::time::Instant::now();
                        thread::park_timeout(Duration::from_secs(5));
                        if t0.elapsed() >= Duration::from_secs(5) {
                            timeouts.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for (i, h) in vcpus.iter().enumerate() {
        let t = h.thread().clone();
        fabric.set_waker(i, Some(Arc::new(move |_v: usize| t.unpark())));
    }
    ready.wait();
    // vCPU N is the sender (never a target here).
    for round in 0..PER_TARGET {
        for (target, count) in taken.iter().enumerate() {
            let ipi = Ipi {
                source_id: N as u32,
                destination: Destination::physical(target as u8 + 1),
                interrupt: Interrupt::fixed(0x40 + (round % 64) as u8),
            };
            let d = fabric.send_ipi(N, &ipi);
            assert_eq!((d.targets, d.posted), (1, 1));
            while count.load(Ordering::Acquire) <= round {
                thread::yield_now();
            }
        }
    }
    for h in vcpus {
        h.join().unwrap();
    }
    assert_eq!(timeouts.load(Ordering::Relaxed), 0);
}
