//! Starting application processors: INIT / SIPI / SIPI with a real-mode
//! trampoline copied to 0x8000 (SIPI vector 0x08) that switches straight
//! to long mode on the boot CPU's page tables.
//!
//! Each AP gets a 16 KiB stack at `AP_STACK_BASE + apic_id * 16 KiB`,
//! loads the shared IDT, software-enables its APIC, marks itself online
//! ([`online`]), runs the hook set with [`set_ap_main`], then idles in
//! `sti; hlt` so it can still take interrupts.

use core::arch::global_asm;
use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};

use crate::apic;
use crate::cpu;

/// Where the trampoline is copied (SIPI vector 0x08).
pub const TRAMPOLINE: u64 = 0x8000;
/// Base of the AP stacks (16 KiB per APIC ID).
pub const AP_STACK_BASE: u64 = 0x40_0000;
/// Highest APIC ID supported.
pub const MAX_CPUS: usize = 64;

global_asm!(
    ".pushsection .rodata.guest_trampoline, \"a\"",
    ".code16",
    ".global guest_tramp_start",
    "guest_tramp_start:",
    "    cli",
    "    cld",
    "    movw %cs, %ax",
    "    movw %ax, %ds",
    "    lgdtl (tramp_gdtr - guest_tramp_start)",
    "    movl %cr4, %eax",
    "    orl $0x620, %eax",
    "    movl %eax, %cr4",
    "    movl (guest_tramp_cr3 - guest_tramp_start), %eax",
    "    movl %eax, %cr3",
    "    movl $0xc0000080, %ecx",
    "    rdmsr",
    "    orl $0x100, %eax",
    "    wrmsr",
    "    movl %cr0, %eax",
    "    orl $0x80010023, %eax",
    "    movl %eax, %cr0",
    "    ljmpl *(tramp_ljmp - guest_tramp_start)",
    ".balign 8",
    "tramp_gdt:",
    "    .quad 0",
    "    .quad 0x00af9a000000ffff",
    "    .quad 0x00cf92000000ffff",
    "tramp_gdtr:",
    "    .word 23",
    "    .long 0x8000 + (tramp_gdt - guest_tramp_start)",
    "tramp_ljmp:",
    "    .long guest_ap_long_entry",
    "    .word 0x08",
    ".global guest_tramp_cr3",
    "guest_tramp_cr3:",
    "    .long 0",
    ".global guest_tramp_end",
    "guest_tramp_end:",
    ".code64",
    ".popsection",
    ".pushsection .text",
    ".global guest_ap_long_entry",
    "guest_ap_long_entry:",
    "    movw $0x10, %ax",
    "    movw %ax, %ds",
    "    movw %ax, %es",
    "    movw %ax, %ss",
    "    xorw %ax, %ax",
    "    movw %ax, %fs",
    "    movw %ax, %gs",
    "    movl $0xfee00020, %ebx",
    "    movl (%rbx), %eax",
    "    shrl $24, %eax",
    "    movl %eax, %edi",
    "    movq %rdi, %rsp",
    "    shlq $14, %rsp",
    "    movabsq ${stack_top}, %rbx",
    "    addq %rbx, %rsp",
    "    xorl %ebp, %ebp",
    "    call {entry}",
    "2:  cli",
    "    hlt",
    "    jmp 2b",
    ".popsection",
    stack_top = const AP_STACK_BASE + 0x4000,
    entry = sym ap_entry,
    options(att_syntax),
);

extern "C" {
    static guest_tramp_start: u8;
    static guest_tramp_end: u8;
    static guest_tramp_cr3: u8;
}

static ONLINE: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];
static AP_MAIN: AtomicUsize = AtomicUsize::new(0);
static AP_EARLY: AtomicUsize = AtomicUsize::new(0);

/// Sets a function every AP runs right after loading the IDT, before its
/// APIC is software-enabled (argument: APIC ID), e.g. to record the
/// INIT-state register values.
pub fn set_ap_early(f: fn(u32)) {
    AP_EARLY.store(f as usize, Relaxed);
}

/// Index of the CPU running this code, from its stack: an AP started by
/// [`start_aps`] runs on `AP_STACK_BASE + apic_id * 16 KiB` (its initial
/// APIC ID), the boot CPU on its own stack (index 0). Needs no APIC
/// access, so it works in interrupt handlers and in any APIC mode.
pub fn cpu_index() -> u32 {
    let sp: u64;
    // SAFETY: reads RSP only.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    let end = AP_STACK_BASE + (MAX_CPUS as u64) * 0x4000;
    if (AP_STACK_BASE..end).contains(&sp) {
        ((sp - AP_STACK_BASE) / 0x4000) as u32
    } else {
        0
    }
}

/// Sets the function every AP runs once it is up (argument: APIC ID).
pub fn set_ap_main(f: fn(u32)) {
    AP_MAIN.store(f as usize, Relaxed);
}

/// Number of APs that reported online.
pub fn online() -> u32 {
    ONLINE.iter().map(|o| u32::from(o.load(Relaxed) != 0)).sum()
}

/// Whether the AP with this APIC ID is online.
pub fn is_online(apic_id: u32) -> bool {
    ONLINE
        .get(apic_id as usize)
        .is_some_and(|o| o.load(Relaxed) != 0)
}

extern "C" fn ap_entry(apic_id: u64) -> ! {
    crate::idt::load();
    let early = AP_EARLY.load(Relaxed);
    if early != 0 {
        // SAFETY: only set_ap_early stores here, from a fn(u32).
        let f: fn(u32) = unsafe { core::mem::transmute::<usize, fn(u32)>(early) };
        f(apic_id as u32);
    }
    apic::sw_enable(0xff);
    if let Some(o) = ONLINE.get(apic_id as usize) {
        o.store(1, Relaxed);
    }
    let f = AP_MAIN.load(Relaxed);
    if f != 0 {
        // SAFETY: only set_ap_main stores here, from a fn(u32).
        let f: fn(u32) = unsafe { core::mem::transmute::<usize, fn(u32)>(f) };
        f(apic_id as u32);
    }
    loop {
        cpu::sti_hlt();
    }
}

/// Copies the trampoline and sends INIT, SIPI, SIPI to all other CPUs
/// (xAPIC mode, shorthand all-excluding-self). Waits up to `timeout_us`
/// for `expected` APs and returns how many came online.
pub fn start_aps(expected: u32, timeout_us: u64) -> u32 {
    // SAFETY: 0x8000..0x9000 is free guest RAM in the VMM's layout; the
    // trampoline is a few hundred bytes.
    unsafe {
        let start = &raw const guest_tramp_start;
        let len = (&raw const guest_tramp_end as usize) - (start as usize);
        core::ptr::copy_nonoverlapping(start, TRAMPOLINE as *mut u8, len);
        let cr3_off = (&raw const guest_tramp_cr3 as usize) - (start as usize);
        let cr3: u64;
        core::arch::asm!("mov {}, cr3", out(reg) cr3, options(nomem, nostack));
        core::ptr::write_volatile((TRAMPOLINE as usize + cr3_off) as *mut u32, cr3 as u32);
    }
    let vector = (TRAMPOLINE >> 12) as u32;
    apic::send_ipi(0, apic::ICR_OTHERS | apic::ICR_INIT | apic::ICR_ASSERT);
    cpu::delay_us(10_000);
    apic::send_ipi(0, apic::ICR_OTHERS | apic::ICR_STARTUP | vector);
    cpu::delay_us(200);
    if online() < expected {
        apic::send_ipi(0, apic::ICR_OTHERS | apic::ICR_STARTUP | vector);
    }
    cpu::wait_us(timeout_us, || online() >= expected);
    online()
}
