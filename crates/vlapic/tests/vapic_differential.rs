//! The hardware-assisted path (virtual-APIC page + the processor's
//! virtual-interrupt delivery, modelled by `VirtualInterruptCpu`) gives
//! exactly the results of the fully emulated path, for any sequence of
//! interrupts, TPR writes, acknowledges and EOIs. Plus a posting stress test.

use proptest::prelude::*;
use std::sync::Arc;
use vlapic::vapic::{PostedInterrupts, VirtualEoi, VirtualInterruptCpu};
use vlapic::{ApicConfig, Interrupt, LocalApic, Message, TriggerMode};

#[derive(Debug, Clone)]
enum Op {
    /// An interrupt from the bus; level vectors are 0x80-0xFF, edge ones
    /// 0x10-0x7F (a vector keeps one trigger mode, as with real devices).
    Irq(u8),
    /// x2APIC SELF IPI (edge).
    SelfIpi(u8),
    Tpr(u8),
    Ack,
    Eoi,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0x10u8..=0xFF).prop_map(Op::Irq),
        (0x10u8..0x80).prop_map(Op::SelfIpi),
        any::<u8>().prop_map(Op::Tpr),
        Just(Op::Ack),
        Just(Op::Ack),
        Just(Op::Eoi),
    ]
}

fn apic() -> LocalApic {
    let mut a = LocalApic::new(ApicConfig::new(0).with_bsp(true));
    a.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
    a.msr_write(0, 0x1B, 0xFEE0_0D00).unwrap(); // x2APIC
    a
}

fn irq(v: u8) -> Interrupt {
    Interrupt {
        trigger: TriggerMode::from_bit(v >= 0x80),
        ..Interrupt::fixed(v)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, .. ProptestConfig::default() })]

    #[test]
    fn assisted_path_matches_emulated_path(ops in prop::collection::vec(op(), 1..200)) {
        // Path A: everything emulated.
        let mut a = apic();
        // Path B: vlapic + virtual-APIC page + posted interrupts.
        let mut b = apic();
        let mut cpu = VirtualInterruptCpu::default();
        let pi = PostedInterrupts::new(0xF2, 0);
        b.sync_to_virtual(0, &mut cpu); // VM entry
        let (mut order_a, mut order_b) = (Vec::new(), Vec::new());
        let (mut eois_a, mut eois_b) = (Vec::new(), Vec::new());

        for op in &ops {
            match *op {
                Op::Irq(v) => {
                    a.accept(irq(v));
                    // Another CPU posts; the notification makes this vCPU
                    // exit, merge and re-enter.
                    pi.post(v, v >= 0x80);
                    b.sync_from_virtual(&cpu);
                    b.sync_posted(&pi);
                    b.sync_to_virtual(0, &mut cpu);
                }
                Op::SelfIpi(v) => {
                    a.msr_write(0, 0x83F, v as u64).unwrap();
                    cpu.self_ipi(v); // virtualized: no exit
                }
                Op::Tpr(t) => {
                    a.msr_write(0, 0x808, t as u64).unwrap();
                    cpu.write_tpr(t);
                }
                Op::Ack => {
                    prop_assert_eq!(a.work().interrupt, cpu.pending());
                    if a.work().interrupt.is_some() {
                        order_a.push(a.acknowledge());
                        order_b.push(cpu.deliver().unwrap());
                    }
                }
                Op::Eoi => {
                    if let Some(Message::Eoi { vector }) = a.msr_write(0, 0x80B, 0).unwrap() {
                        eois_a.push(vector);
                    }
                    if let VirtualEoi::Exit(v) = cpu.eoi() {
                        b.sync_from_virtual(&cpu);
                        if let Some(Message::Eoi { vector }) = b.eoi_induced(v) {
                            eois_b.push(vector);
                        }
                        b.sync_to_virtual(0, &mut cpu);
                    }
                }
            }
            // Compare at every step, reading B through a VM exit.
            let mut bb = b.clone();
            bb.sync_from_virtual(&cpu);
            let (ra, rb) = (a.interrupt_registers(), bb.interrupt_registers());
            prop_assert_eq!(ra.irr, rb.irr);
            prop_assert_eq!(ra.isr, rb.isr);
            prop_assert_eq!(a.ppr(), bb.ppr());
            prop_assert_eq!(a.ppr(), cpu.vppr());
        }
        prop_assert_eq!(order_a, order_b);
        prop_assert_eq!(eois_a, eois_b);
    }
}

#[test]
fn posting_from_many_threads_loses_nothing() {
    const THREADS: usize = 4;
    const ROUNDS: usize = 2000;
    let pi = Arc::new(PostedInterrupts::new(0xF2, 0));
    let mut owner = LocalApic::new(ApicConfig::new(0).with_bsp(true));
    owner.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
    // Each thread owns 8 vectors; per round it posts one of them. The owner
    // concurrently merges and services, counting each vector it sees. A
    // vector posted again before being taken coalesces (IRR semantics), so
    // each thread waits until its previous vector was taken.
    let taken: Arc<Vec<std::sync::atomic::AtomicU64>> = Arc::new(
        (0..256)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
    );
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let pi = pi.clone();
            let taken = taken.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                for r in 0..ROUNDS {
                    let v = (0x20 + t * 8 + r % 8) as u8;
                    // Wait for the previous use of this vector to be taken.
                    let want = (r / 8) as u64;
                    while taken[v as usize].load(std::sync::atomic::Ordering::Acquire) < want {
                        std::hint::spin_loop();
                    }
                    pi.post(v, false);
                }
                done.fetch_add(1, std::sync::atomic::Ordering::Release);
            })
        })
        .collect();
    let mut seen = 0u64;
    loop {
        owner.sync_posted(&pi);
        while owner.poll(0).interrupt.is_some() {
            let v = owner.acknowledge();
            owner.mmio_write(0, 0xB0, &[0; 4]);
            taken[v as usize].fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            seen += 1;
        }
        if done.load(std::sync::atomic::Ordering::Acquire) == THREADS && !pi.outstanding() {
            owner.sync_posted(&pi);
            if owner.poll(0).interrupt.is_none() {
                break;
            }
        }
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(seen, (THREADS * ROUNDS) as u64);
    for t in 0..THREADS {
        for k in 0..8 {
            let v = 0x20 + t * 8 + k;
            assert_eq!(
                taken[v].load(std::sync::atomic::Ordering::Relaxed),
                (ROUNDS / 8) as u64,
                "vector {v:#x}"
            );
        }
    }
}
