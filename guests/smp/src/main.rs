//! `smp`: starts the APs with INIT/SIPI/SIPI, checks their APIC IDs
//! against CPUID, and sends fixed IPIs AP -> BSP and BSP -> each AP.
//! Then (if CPUID offers x2APIC) every CPU switches to x2APIC mode and
//! the IPIs are repeated with x2APIC physical and logical (cluster)
//! destinations. Run with `--cpus 2` or more.

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

/// x2APIC phase: BSP -> APs "switch to x2APIC", then physical and
/// logical IPIs to the APs, and an answer from each AP to the BSP.
const SWITCH: u8 = 0x60;
const X2_PHYS: u8 = 0x61;
const X2_LOGICAL: u8 = 0x62;
const X2_BACK: u8 = 0x70;
static X2_ID: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0xffff_ffff) }; MAX_CPUS];
static GOT_X2_PHYS: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];
static GOT_X2_LOGICAL: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];
static GOT_X2_BACK: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

fn in_x2apic_mode() -> bool {
    cpu::rdmsr(apic::MSR_APIC_BASE) & (1 << 10) != 0
}

/// This CPU's APIC ID read in its current mode.
fn my_id() -> u32 {
    if in_x2apic_mode() {
        cpu::rdmsr(0x802) as u32
    } else {
        unsafe { cpu::mmio_read32(apic::XAPIC_BASE + 0x20) >> 24 }
    }
}

/// EOI in this CPU's own mode (the support library's mode flag is
/// global, and CPUs switch one by one).
fn eoi_here() {
    if in_x2apic_mode() {
        cpu::wrmsr(0x80b, 0);
    } else {
        unsafe { cpu::mmio_write32(apic::XAPIC_BASE + 0xb0, 0) };
    }
}

fn x2_hook(v: u8) {
    match v {
        SWITCH => {
            cpu::wrmsr(
                apic::MSR_APIC_BASE,
                cpu::rdmsr(apic::MSR_APIC_BASE) | (1 << 10) | (1 << 11),
            );
            let id = cpu::rdmsr(0x802) as u32;
            if let Some(s) = X2_ID.get(id as usize) {
                s.store(id, Relaxed);
            }
        }
        X2_PHYS => {
            let id = my_id();
            if let Some(s) = GOT_X2_PHYS.get(id as usize) {
                s.store(1, Relaxed);
            }
            // Answer the BSP (x2APIC physical destination 0).
            cpu::wrmsr(0x830, u64::from(X2_BACK) + u64::from(id & 0xf));
        }
        X2_LOGICAL => {
            if let Some(s) = GOT_X2_LOGICAL.get(my_id() as usize) {
                s.store(1, Relaxed);
            }
        }
        v if (X2_BACK..X2_BACK + 16).contains(&v) => {
            GOT_X2_BACK[usize::from(v - X2_BACK)].store(1, Relaxed);
        }
        _ => hook(v),
    }
    eoi_here();
}

/// INIT to a running AP resets it into wait-for-SIPI; a Start-up IPI then
/// runs the trampoline again, and the AP sends its IPI to the BSP again.
fn restart_ap() {
    let from1 = || idt::count(TO_BSP + 1);
    let before = from1();
    apic::send_ipi(1, apic::ICR_INIT | apic::ICR_ASSERT);
    cpu::delay_us(10_000);
    apic::send_ipi(1, apic::ICR_STARTUP | (smp::TRAMPOLINE >> 12) as u32);
    cpu::delay_us(200);
    apic::send_ipi(1, apic::ICR_STARTUP | (smp::TRAMPOLINE >> 12) as u32);
    let ok = cpu::wait_us(1_000_000, || from1() > before);
    cpu::delay_us(2_000);
    check(
        "AP 1 restarted by INIT/SIPI/SIPI while running (sent its IPI again, once)",
        ok && from1() == before + 1,
    );
}

/// 300 round trips BSP -> AP 1 -> BSP with both CPUs in HLT between
/// messages: a lost wake-up would stall a round trip. A 10 ms periodic
/// APIC timer tick on the BSP bounds each wait (100 ticks = give up) and
/// counts round trips that needed it.
fn ping_pong() {
    const ROUNDS: u32 = 300;
    let hv = cpu::cpuid(0x4000_0000, 0).eax;
    let bus_khz = if hv >= 0x4000_0010 {
        cpu::cpuid(0x4000_0010, 0).ebx
    } else {
        1_000_000
    };
    apic::write(apic::reg::TDCR, 0xb);
    apic::write(apic::reg::LVT_TIMER, u32::from(TICK) | (1 << 17));
    apic::write(apic::reg::TMICT, bus_khz * 10);
    let t0 = cpu::rdtsc();
    let (mut done, mut slow) = (0u32, 0u32);
    for _ in 0..ROUNDS {
        let before = idt::count(PONG);
        let ticks = idt::count(TICK);
        apic::send_ipi(1, u32::from(PING));
        loop {
            cpu::cli();
            if idt::count(PONG) != before || idt::count(TICK) - ticks >= 100 {
                cpu::sti();
                break;
            }
            cpu::sti_hlt();
        }
        if idt::count(PONG) == before {
            break;
        }
        done += 1;
        if idt::count(TICK) - ticks >= 2 {
            slow += 1;
        }
    }
    apic::write(apic::reg::TMICT, 0);
    let us = (cpu::rdtsc() - t0) * 1000 / cpu::tsc_khz();
    out()
        .s("ping-pong: ")
        .dec(u64::from(done))
        .s(" round trips in ")
        .dec(us)
        .s(" us, ")
        .dec(u64::from(slow))
        .s(" took >= 10 ms")
        .nl();
    check_eq(
        "ping-pong: 300 HLT-to-HLT round trips BSP <-> AP 1",
        u64::from(done),
        u64::from(ROUNDS),
    );
}

fn x2apic_phase(n: u32) {
    const NAMES: [&str; 5] = [
        "every AP switched to x2APIC mode (x2APIC ID = APIC ID)",
        "BSP in x2APIC mode",
        "every AP got an x2APIC physical IPI",
        "BSP got an x2APIC IPI from every AP",
        "every AP got an x2APIC logical (cluster 0) IPI",
    ];
    if cpu::cpuid(1, 0).ecx & (1 << 21) == 0 {
        for name in NAMES {
            skip(name, "CPUID.1:ECX.x2APIC is clear");
        }
        return;
    }
    let aps = 1..n.min(16);
    idt::set_auto_eoi(false);
    idt::set_hook(Some(x2_hook));
    apic::send_ipi(0, apic::ICR_OTHERS | u32::from(SWITCH));
    let ok = cpu::wait_us(1_000_000, || {
        aps.clone().all(|id| X2_ID[id as usize].load(Relaxed) == id)
    });
    check(NAMES[0], ok);
    apic::enable_x2apic();
    check(NAMES[1], in_x2apic_mode());
    for id in aps.clone() {
        apic::send_ipi(id, u32::from(X2_PHYS));
    }
    let ok = cpu::wait_us(1_000_000, || {
        aps.clone()
            .all(|id| GOT_X2_PHYS[id as usize].load(Relaxed) != 0)
    });
    check(NAMES[2], ok);
    let ok = cpu::wait_us(1_000_000, || {
        aps.clone()
            .all(|id| GOT_X2_BACK[id as usize].load(Relaxed) != 0)
    });
    check(NAMES[3], ok);
    // Logical destination, cluster 0: one bit per AP (IDs 1..15).
    let mask = aps.clone().fold(0u32, |m, id| m | (1 << id));
    cpu::wrmsr(
        0x830,
        (u64::from(mask) << 32) | (1 << 11) | u64::from(X2_LOGICAL),
    );
    let ok = cpu::wait_us(1_000_000, || {
        aps.clone()
            .all(|id| GOT_X2_LOGICAL[id as usize].load(Relaxed) != 0)
    });
    check(NAMES[4], ok);
    idt::set_hook(Some(hook));
    idt::set_auto_eoi(true);
}

fn ap_main(apic_id: u32) {
    if let Some(slot) = CPUID_ID.get(apic_id as usize) {
        slot.store(cpu::cpuid(1, 0).ebx >> 24, Relaxed);
    }
    apic::send_ipi(0, u32::from(TO_BSP) + (apic_id & 0x3f));
}

/// Ping-pong BSP <-> AP 1, both halting between messages.
const PING: u8 = 0x48;
const PONG: u8 = 0x49;
const TICK: u8 = 0x4a;

fn hook(v: u8) {
    if v == PING {
        apic::send_ipi(0, u32::from(PONG));
    }
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
    restart_ap();
    ping_pong();
    x2apic_phase(n);
    cpu::cli();
}
