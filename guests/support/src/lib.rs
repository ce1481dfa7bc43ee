//! Support library for bare-metal x86_64 test guests of `vlapic-vmm`.
//!
//! The VMM enters an ELF64 guest in 64-bit long mode with 0..4 GiB
//! identity-mapped (the APIC and IOAPIC pages uncached), RDI = CPU index,
//! RSI = number of CPUs, RDX = RAM bytes. `_start` (here) switches to the
//! guest's own stack, zeroes .bss, loads an IDT and calls the guest's
//! `guest_main(&BootInfo)`; when it returns, the summary is printed and the
//! guest exits through isa-debug-exit.
//!
//! Guest code is emulated instruction by instruction on this project's KVM
//! (kvm_pvm): keep loops short, and avoid x87/SSE/XSAVE, CMPXCHG16B and
//! INT3. This crate uses no `core::fmt` (its precompiled code may use SSE
//! in the host-target fallback build).

#![no_std]
#![allow(clippy::missing_safety_doc)]

pub mod apic;
pub mod conf;
pub mod boot;
pub mod cpu;
pub mod fw_cfg;
pub mod idt;
pub mod serial;
pub mod smp;
pub mod test;

#[cfg(guest_fallback)]
mod mem;

pub use boot::BootInfo;
pub use serial::{out, Out};
pub use test::{check, check_eq, skip, summary_and_exit};

/// QEMU isa-debug-exit port.
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Exits the VM: the VMM exits with status `(code << 1) | 1`.
pub fn exit(code: u32) -> ! {
    unsafe { cpu::outl(DEBUG_EXIT_PORT, code) };
    // Not under vlapic-vmm/QEMU: stop here.
    loop {
        cpu::cli();
        cpu::hlt();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let o = out().s("FAIL: guest panic");
    if let Some(l) = info.location() {
        o.s(" at ").s(l.file()).s(":").dec(u64::from(l.line()));
    }
    out().nl();
    test::summary_and_exit_with_failure()
}
