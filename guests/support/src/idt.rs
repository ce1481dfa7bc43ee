//! IDT with a stub for every vector, exception reporting, an
//! "expect fault" fixup (see [`crate::cpu::rdmsr_safe`]) and interrupt
//! recording.
//!
//! Vectors >= 32 are counted ([`count`]), logged in arrival order
//! ([`log`]), passed to an optional hook ([`set_hook`]), and EOI'd
//! automatically unless [`set_auto_eoi`]`(false)`.

use core::arch::global_asm;
use core::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed,
};

use crate::serial::out;

/// Saved state of an interrupted context (pushed by the stubs).
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    /// General registers.
    pub r15: u64,
    #[allow(missing_docs)]
    pub r14: u64,
    #[allow(missing_docs)]
    pub r13: u64,
    #[allow(missing_docs)]
    pub r12: u64,
    #[allow(missing_docs)]
    pub rbp: u64,
    #[allow(missing_docs)]
    pub rbx: u64,
    #[allow(missing_docs)]
    pub r11: u64,
    #[allow(missing_docs)]
    pub r10: u64,
    #[allow(missing_docs)]
    pub r9: u64,
    #[allow(missing_docs)]
    pub r8: u64,
    #[allow(missing_docs)]
    pub rdi: u64,
    #[allow(missing_docs)]
    pub rsi: u64,
    #[allow(missing_docs)]
    pub rdx: u64,
    #[allow(missing_docs)]
    pub rcx: u64,
    #[allow(missing_docs)]
    pub rax: u64,
    /// Vector number.
    pub vector: u64,
    /// Error code (0 if the vector has none).
    pub error: u64,
    /// Interrupted RIP.
    pub rip: u64,
    /// Interrupted CS.
    pub cs: u64,
    /// Interrupted RFLAGS.
    pub rflags: u64,
    /// Interrupted RSP.
    pub rsp: u64,
    /// Interrupted SS.
    pub ss: u64,
}

global_asm!(
    ".section .text",
    ".align 16",
    ".global guest_isr_stubs",
    "guest_isr_stubs:",
    ".set vec, 0",
    ".rept 256",
    "    .align 16",
    "    .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17) || (vec == 21) || (vec == 29) || (vec == 30)",
    "    .else",
    "    push 0",
    "    .endif",
    "    push vec",
    "    jmp guest_isr_common",
    "    .set vec, vec + 1",
    ".endr",
    "guest_isr_common:",
    "    push rax", "push rcx", "push rdx", "push rsi", "push rdi",
    "    push r8", "push r9", "push r10", "push r11",
    "    push rbx", "push rbp", "push r12", "push r13", "push r14", "push r15",
    "    mov rdi, rsp",
    "    cld",
    "    call {handler}",
    "    pop r15", "pop r14", "pop r13", "pop r12", "pop rbp", "pop rbx",
    "    pop r11", "pop r10", "pop r9", "pop r8",
    "    pop rdi", "pop rsi", "pop rdx", "pop rcx", "pop rax",
    "    add rsp, 16",
    "    iretq",
    handler = sym trap_handler,
);

extern "C" {
    static guest_isr_stubs: u8;
}

#[repr(C, align(16))]
struct Idt([u64; 512]);

static mut IDT: Idt = Idt([0; 512]);

/// Address to resume at if an exception is taken (0 = none armed).
#[no_mangle]
pub static FAULT_FIXUP: AtomicU64 = AtomicU64::new(0);
static FAULT_VECTOR: AtomicU32 = AtomicU32::new(NO_FAULT);
static FAULT_ERROR: AtomicU64 = AtomicU64::new(0);
const NO_FAULT: u32 = 0xffff_ffff;

static COUNTS: [AtomicU32; 256] = [const { AtomicU32::new(0) }; 256];
const LOG_LEN: usize = 64;
static LOG: [AtomicU8; LOG_LEN] = [const { AtomicU8::new(0) }; LOG_LEN];
static LOG_N: AtomicUsize = AtomicUsize::new(0);
static AUTO_EOI: AtomicBool = AtomicBool::new(true);
static HOOK: AtomicUsize = AtomicUsize::new(0);
static NMI_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Loads the (already filled) IDT on this CPU (APs call this).
pub fn load() {
    // SAFETY: IDT is a static filled by init() on the boot CPU.
    unsafe {
        let idt = &raw const IDT;
        let desc: [u16; 5] = [
            (256 * 16 - 1) as u16,
            idt as u64 as u16,
            (idt as u64 >> 16) as u16,
            (idt as u64 >> 32) as u16,
            (idt as u64 >> 48) as u16,
        ];
        core::arch::asm!("lidt [{}]", in(reg) &desc, options(nostack, readonly));
    }
}

/// Fills and loads the IDT (interrupt gates on the current CS).
pub fn init() {
    let cs = u64::from(crate::cpu::cs());
    // SAFETY: single-threaded init; the stubs are 16 bytes apart.
    unsafe {
        let base = &raw const guest_isr_stubs as u64;
        let idt = &raw mut IDT;
        for v in 0..256u64 {
            let h = base + v * 16;
            let lo = (h & 0xffff) | (cs << 16) | (0x8e00u64 << 32) | ((h >> 16) & 0xffff) << 48;
            let hi = h >> 32;
            (*idt).0[(v * 2) as usize] = lo;
            (*idt).0[(v * 2 + 1) as usize] = hi;
        }
    }
    load();
}

/// Arms the fault fixup bookkeeping (the fixup address itself is stored
/// by the instruction wrapper).
pub fn arm_fault() {
    FAULT_VECTOR.store(NO_FAULT, Relaxed);
}

/// The vector of the fault caught since [`arm_fault`], if any; disarms.
pub fn take_fault() -> Option<u8> {
    FAULT_FIXUP.store(0, Relaxed);
    let v = FAULT_VECTOR.load(Relaxed);
    (v != NO_FAULT).then_some(v as u8)
}

/// Error code of the last caught fault.
pub fn last_fault_error() -> u64 {
    FAULT_ERROR.load(Relaxed)
}

/// Times vector `v` was received.
pub fn count(v: u8) -> u32 {
    COUNTS[usize::from(v)].load(Relaxed)
}

/// Vectors received since [`reset`], in order (first 64).
pub fn log(buf: &mut [u8; LOG_LEN]) -> usize {
    let n = LOG_N.load(Relaxed).min(LOG_LEN);
    for (i, b) in buf.iter_mut().enumerate().take(n) {
        *b = LOG[i].load(Relaxed);
    }
    n
}

/// Clears counts and the log.
pub fn reset() {
    for c in COUNTS.iter() {
        c.store(0, Relaxed);
    }
    LOG_N.store(0, Relaxed);
}

/// Whether interrupt handlers EOI automatically (default true).
pub fn set_auto_eoi(on: bool) {
    AUTO_EOI.store(on, Relaxed);
}

/// A function called for every interrupt (vector >= 32) before the EOI.
pub fn set_hook(f: Option<fn(u8)>) {
    HOOK.store(f.map_or(0, |f| f as usize), Relaxed);
}

/// A function called for every NMI (vector 2). Without one (the
/// default), an NMI is reported as an unexpected exception.
pub fn set_nmi_hook(f: Option<fn()>) {
    NMI_HOOK.store(f.map_or(0, |f| f as usize), Relaxed);
}

/// Spins (with `PAUSE`) until `cond` or `iterations` run out. Keep
/// `iterations` small: guest code is emulated.
pub fn wait_until(iterations: u32, cond: impl Fn() -> bool) -> bool {
    for _ in 0..iterations {
        if cond() {
            return true;
        }
        crate::cpu::pause();
    }
    cond()
}

extern "C" fn trap_handler(f: &mut TrapFrame) {
    let v = f.vector as u8;
    if v == 2 {
        let hook = NMI_HOOK.load(Relaxed);
        if hook != 0 {
            // SAFETY: only set_nmi_hook stores here, from a fn().
            let f: fn() = unsafe { core::mem::transmute::<usize, fn()>(hook) };
            f();
            return;
        }
    }
    if v < 32 {
        let fix = FAULT_FIXUP.load(Relaxed);
        if fix != 0 {
            FAULT_VECTOR.store(u32::from(v), Relaxed);
            FAULT_ERROR.store(f.error, Relaxed);
            FAULT_FIXUP.store(0, Relaxed);
            f.rip = fix;
            return;
        }
        out()
            .s("FAIL: unexpected exception ")
            .dec(u64::from(v))
            .s(" at rip ")
            .hex(f.rip)
            .s(" error ")
            .hex(f.error)
            .nl();
        crate::test::summary_and_exit_with_failure();
    }
    let c = &COUNTS[usize::from(v)];
    c.store(c.load(Relaxed) + 1, Relaxed);
    let n = LOG_N.load(Relaxed);
    if n < LOG_LEN {
        LOG[n].store(v, Relaxed);
    }
    LOG_N.store(n + 1, Relaxed);
    let hook = HOOK.load(Relaxed);
    if hook != 0 {
        // SAFETY: only set_hook stores here, from a fn(u8).
        let f: fn(u8) = unsafe { core::mem::transmute::<usize, fn(u8)>(hook) };
        f(v);
    }
    if AUTO_EOI.load(Relaxed) && v != 0xff {
        crate::apic::eoi();
    }
}
