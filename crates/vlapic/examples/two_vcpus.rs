//! Two vCPUs' local APICs driven in software: INIT/SIPI bring-up, a fixed
//! IPI, a periodic timer, a level-triggered interrupt with its EOI
//! broadcast, and an x2APIC self-IPI. Prints what happened.
//!
//! Run: `cargo run -p vlapic --example two_vcpus`

use vlapic::{ApicConfig, ApicMode, Interrupt, LocalApic, Message, Work};

const SVR: u64 = 0xF0;
const EOI: u64 = 0xB0;
const ICR_LO: u64 = 0x300;
const ICR_HI: u64 = 0x310;
const LVT_TIMER: u64 = 0x320;
const TMICT: u64 = 0x380;
const TDCR: u64 = 0x3E0;

fn write(apic: &mut LocalApic, now: u64, off: u64, val: u32) -> Option<Message> {
    apic.mmio_write(now, off, &val.to_le_bytes())
}

/// The tiny "router" of this example: deliver a message to every APIC.
fn route(cpus: &mut [LocalApic], from: usize, msg: Option<Message>, now: u64) {
    match msg {
        Some(Message::Ipi(ipi)) => {
            for (i, cpu) in cpus.iter_mut().enumerate() {
                if cpu.deliver_ipi(&ipi, i == from) {
                    println!(
                        "{now:>9} ns  cpu{from} -> cpu{i}: {:?} vector {:#x}",
                        ipi.interrupt.delivery_mode, ipi.interrupt.vector
                    );
                }
            }
        }
        Some(Message::Eoi { vector }) => {
            println!("{now:>9} ns  cpu{from}: EOI broadcast for level vector {vector:#x} (to the IOAPIC)")
        }
        Some(other) => println!("{now:>9} ns  cpu{from}: {other:?}"),
        None => {}
    }
}

/// What a vCPU loop does after each exit: take the work and "run" the
/// handler, which ends with an EOI.
fn service(cpus: &mut [LocalApic], i: usize, now: u64) {
    let work: Work = cpus[i].poll(now);
    if work.init {
        cpus[i].take_init();
        println!("{now:>9} ns  cpu{i}: INIT -> reset, wait for SIPI");
    }
    if let Some(v) = cpus[i].take_sipi() {
        println!(
            "{now:>9} ns  cpu{i}: SIPI vector {v:#x} -> start at {:#x}",
            (v as u32) << 12
        );
    }
    while cpus[i].poll(now).interrupt.is_some() {
        let v = cpus[i].acknowledge();
        println!(
            "{now:>9} ns  cpu{i}: took vector {v:#x}, PPR now {:#x}",
            cpus[i].ppr()
        );
        let msg = if cpus[i].mode() == ApicMode::X2Apic {
            cpus[i].msr_write(now, 0x80B, 0).expect("EOI")
        } else {
            write(&mut cpus[i], now, EOI, 0)
        };
        route(cpus, i, msg, now);
    }
}

fn main() {
    let mut cpus = vec![
        LocalApic::new(ApicConfig::new(0).with_bsp(true).with_min_periodic_ns(0)),
        LocalApic::new(ApicConfig::new(1).with_min_periodic_ns(0)),
    ];
    println!("cpu1 starts in {:?}", cpus[1].run_state());

    // The BSP enables its APIC and starts the AP: INIT, then SIPI 0x9A.
    write(&mut cpus[0], 0, SVR, 0x1FF);
    write(&mut cpus[0], 0, ICR_HI, 1 << 24);
    let m = write(&mut cpus[0], 0, ICR_LO, 0x4500);
    route(&mut cpus, 0, m, 0);
    let m = write(&mut cpus[0], 10_000, ICR_LO, 0x4600 | 0x9A);
    route(&mut cpus, 0, m, 10_000);
    service(&mut cpus, 1, 10_000);

    // The AP enables its APIC; the BSP sends it a fixed IPI.
    write(&mut cpus[1], 20_000, SVR, 0x1FF);
    let m = write(&mut cpus[0], 30_000, ICR_LO, 0x4041);
    route(&mut cpus, 0, m, 30_000);
    service(&mut cpus, 1, 30_000);

    // A periodic timer on the AP: 1000 bus cycles / 1, vector 0xEC.
    write(&mut cpus[1], 40_000, TDCR, 0xB);
    write(&mut cpus[1], 40_000, LVT_TIMER, 0x20000 | 0xEC);
    write(&mut cpus[1], 40_000, TMICT, 1000);
    for _ in 0..3 {
        let t = cpus[1].next_timer_deadline().expect("armed");
        println!("{t:>9} ns  cpu1: timer due");
        service(&mut cpus, 1, t);
    }

    // A level-triggered interrupt from an IOAPIC: its EOI is broadcast.
    cpus[0].accept(Interrupt::fixed_level(0x61));
    service(&mut cpus, 0, 50_000);

    // x2APIC: the AP switches mode and sends itself vector 0x55 via SELF IPI.
    cpus[1]
        .msr_write(60_000, 0x1B, 0xFEE0_0C00)
        .expect("x2APIC offered");
    cpus[1].msr_write(60_000, 0x83F, 0x55).expect("SELF IPI");
    service(&mut cpus, 1, 60_000);
    println!(
        "cpu1 x2APIC ID {:#x}, LDR {:#x}",
        cpus[1].msr_read(60_000, 0x802).unwrap(),
        cpus[1].msr_read(60_000, 0x80D).unwrap()
    );
    println!("done: cpu0 stats {:?}", cpus[0].stats());
}
