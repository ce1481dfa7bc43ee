//! `smp`: starts the APs with INIT/SIPI/SIPI, checks their APIC IDs
//! against CPUID, and sends fixed IPIs AP -> BSP and BSP -> each AP.
//! Run with `--cpus 2` or more.

#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, AtomicU8, Ordering::Relaxed};

use guest_support::apic;
use guest_support::cpu;
use guest_support::idt;
use guest_support::smp::{self, MAX_CPUS};
use guest_support::{check, check_eq, out, skip, BootInfo};

/// AP `n` sends vector `TO_BSP + n` (one vector each: IPIs with the same
/// vector that arrive while it is still pending in IRR coalesce).
const TO_BSP: u8 = 0x50;
const TO_AP: u8 = 0x42;

static CPUID_ID: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0xffff_ffff) }; MAX_CPUS];
static GOT_AP_IPI: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

fn ap_main(apic_id: u32) {
    if let Some(slot) = CPUID_ID.get(apic_id as usize) {
        slot.store(cpu::cpuid(1, 0).ebx >> 24, Relaxed);
    }
    apic::send_ipi(0, u32::from(TO_BSP) + (apic_id & 0x3f));
}

fn hook(v: u8) {
    if v == TO_AP {
        if let Some(s) = GOT_AP_IPI.get(apic::id() as usize) {
            s.store(1, Relaxed);
        }
    }
}

#[no_mangle]
pub fn guest_main(boot: &BootInfo) {
    let n = boot.cpus as u32;
    out().s("smp: ").dec(u64::from(n)).s(" cpus").nl();
    if n < 2 {
        skip("AP start-up", "needs --cpus 2 or more");
        return;
    }
    apic::sw_enable(0xff);
    idt::reset();
    idt::set_hook(Some(hook));
    smp::set_ap_main(ap_main);
    cpu::sti();

    let up = smp::start_aps(n - 1, 2_000_000);
    check_eq(
        "all APs came online after INIT/SIPI/SIPI",
        u64::from(up),
        u64::from(n - 1),
    );
    for id in 1..n.min(MAX_CPUS as u32) {
        let ok = smp::is_online(id)
            && cpu::wait_us(1_000_000, || {
                CPUID_ID[id as usize].load(Relaxed) != 0xffff_ffff
            });
        check_eq(
            "AP APIC ID matches its CPUID initial APIC ID",
            u64::from(CPUID_ID[id as usize].load(Relaxed)),
            u64::from(if ok { id } else { 0xffff_ffff }),
        );
    }
    let from = |id: u32| idt::count(TO_BSP + (id & 0x3f) as u8);
    let aps = 1..n.min(MAX_CPUS as u32);
    cpu::wait_us(1_000_000, || aps.clone().all(|id| from(id) >= 1));
    check(
        "BSP got one fixed IPI from each AP",
        aps.clone().all(|id| from(id) == 1),
    );

    for id in 1..n.min(MAX_CPUS as u32) {
        apic::send_ipi(id, u32::from(TO_AP));
    }
    let all = cpu::wait_us(1_000_000, || {
        (1..n.min(MAX_CPUS as u32)).all(|id| GOT_AP_IPI[id as usize].load(Relaxed) != 0)
    });
    check(
        "every AP got the BSP's fixed IPI (physical destination)",
        all,
    );
    cpu::cli();
}
