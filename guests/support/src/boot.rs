//! Entry point: stack, .bss, IDT, then `guest_main`.

use core::arch::global_asm;

/// What the VMM passes at entry.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BootInfo {
    /// CPU index (RDI at entry).
    pub cpu: u64,
    /// Number of CPUs (RSI).
    pub cpus: u64,
    /// RAM in bytes (RDX).
    pub ram: u64,
}

global_asm!(
    ".section .text.boot, \"ax\"",
    ".global _start",
    "_start:",
    "    cli",
    "    lea rsp, [rip + __stack_top]",
    "    mov r12, rdi",
    "    mov r13, rsi",
    "    mov r14, rdx",
    "    lea rdi, [rip + __bss_start]",
    "    lea rcx, [rip + __bss_end]",
    "    sub rcx, rdi",
    "    xor eax, eax",
    "    cld",
    "    rep stosb",
    "    mov rdi, r12",
    "    mov rsi, r13",
    "    mov rdx, r14",
    "    xor ebp, ebp",
    "    call {entry}",
    "2:  cli",
    "    hlt",
    "    jmp 2b",
    ".text",
    entry = sym support_entry,
);

extern "Rust" {
    fn guest_main(info: &BootInfo);
}

extern "C" fn support_entry(cpu: u64, cpus: u64, ram: u64) -> ! {
    let info = BootInfo { cpu, cpus, ram };
    crate::serial::init();
    crate::idt::init();
    // SAFETY: provided by the guest binary with this exact signature.
    unsafe { guest_main(&info) };
    crate::test::summary_and_exit()
}
