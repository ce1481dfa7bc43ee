//! `abuse`: a hostile guest. The LAPIC is guest-facing; this guest
//! throws everything at it that a guest can, to show that the VMM
//! neither panics nor stalls nor burns the host (run with `--cpus 2+`,
//! `--stats`).
//!
//! vCPU 0 is the *control* CPU: it never abuses its own APIC. Every
//! other vCPU is an *abuser* that, for `ABUSE_MS` of guest TSC time and
//! with a deterministic PRNG (seeded by its index):
//!
//! - reads and writes random offsets of its APIC window (including
//!   unaligned ones, just outside the page and across its end) with 1-,
//!   2-, 4- and 8-byte accesses and random values, plus random values
//!   into each real register;
//! - reads and writes random x2APIC MSRs (0x800-0x8FF), catching #GP;
//! - flips IA32_APIC_BASE: disable, xAPIC, x2APIC, invalid transitions,
//!   reserved bits, bases above MAXPHYADDR, relocation into MMIO holes
//!   and into an unused RAM page, the BSP bit;
//! - sends ICR storms: broadcast fixed (all / all-but-self), NMI,
//!   lowest priority, physical and logical, self, SMI/ExtINT/reserved
//!   delivery modes;
//! - arms the periodic timer with TMICT=1 and divide 1, masked and
//!   unmasked; writes TSC deadlines in the past, over and over;
//! - sends illegal vectors (0-15) through the ICR, SELF IPI and LVTs
//!   (including the LVT Error, whose own vector is then illegal);
//! - writes TPR / CR8, and halts with a short one-shot timer armed.
//!
//! What is *not* random, so that the run can finish and report: INIT
//! and Start-up delivery modes are turned into fixed (INIT would reset
//! the control CPU, a SIPI with a random vector would start a CPU in
//! random memory); vectors 16-31 are moved to 48-63 (they would look
//! like exceptions, some with error codes); MMIO goes only to the
//! window's known bases (a base relocated by a random value could be
//! in RAM that holds code). Writes that are not dword-aligned are not
//! sanitised: the LAPIC must drop them.
//!
//! Every CPU has its own fault fixup slot (the support library's is
//! global) and EOIs in its own current APIC mode. The control CPU takes
//! whatever the abusers send it, sends an NMI watchdog to the others
//! every 2 ms (it wakes halted abusers), then checks:
//!
//! 1. it still runs; every abuser made progress in both halves of the
//!    run, finished, and put its APIC back (xAPIC, default base, ID);
//! 2. every abuser answers a fixed IPI;
//! 3. INIT/SIPI storm (abusers are the targets): random INIT, INIT
//!    de-assert and SIPI (vector 0x08) to all-but-self and to single
//!    abusers; then a clean INIT/SIPI/SIPI restarts each abuser, which
//!    answers an IPI again;
//! 4. its own self-IPI and one-shot timer still work.
//!
//! Output: `PASS:`/`FAIL:` lines, `abuse:` counters, the summary; exit
//! through isa-debug-exit.

#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

use guest_support::idt::TrapFrame;
use guest_support::{apic, check, cpu, out, smp, BootInfo};

/// Abuse phase length (guest TSC).
const ABUSE_MS: u64 = 3000;
/// INIT/SIPI storm length.
const STORM_MS: u64 = 400;
/// Most vCPUs this guest handles.
const MAX: usize = 8;

const PING: u8 = 0x41;
const SELF_V: u8 = 0x42;
const TIMER_V: u8 = 0x43;
const HLT_V: u8 = 0xef;
const TSTORM_V: u8 = 0x50;
/// Halted timer-storm phase length.
const TSTORM_MS: u64 = 1000;

const MSR_APIC_BASE: u32 = 0x1b;
const MSR_TSC_DEADLINE: u32 = 0x6e0;
const EN: u64 = 1 << 11;
const EXTD: u64 = 1 << 10;
const BSP_BIT: u64 = 1 << 8;
const XB: u64 = apic::XAPIC_BASE;
/// Bases an abuser moves its xAPIC window to: MMIO holes, 3 GiB (no RAM
/// there with the default 64 MiB), an unused RAM page at 14 MiB (the
/// VMM does not model a window in RAM: accesses just hit memory), and
/// back to the default.
const RELOC: [u64; 5] = [0xfed0_0000, 0xfef0_0000, 0xc000_0000, 0x00e0_0000, XB];
const RAM_RELOC: u64 = 0x00e0_0000;

const NONE: u32 = 0xffff_ffff;

// ----- per-CPU state (each slot written by one CPU; no LOCK prefixes) -----

static FIXUP: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
static FAULT: [AtomicU32; MAX] = [const { AtomicU32::new(NONE) }; MAX];
/// APIC mode as last read back: 0 disabled, 1 xAPIC, 2 x2APIC.
static MODE: [AtomicU8; MAX] = [const { AtomicU8::new(1) }; MAX];
/// Where this CPU's MMIO goes (the window if it is at a known base).
static BASE: [AtomicU64; MAX] = [const { AtomicU64::new(XB) }; MAX];
static ITER: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
static GPS: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
static IRQS: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
static NMIS: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];
static PONG: [AtomicU32; MAX] = [const { AtomicU32::new(0) }; MAX];
static GEN: [AtomicU32; MAX] = [const { AtomicU32::new(0) }; MAX];
static DONE: [AtomicU8; MAX] = [const { AtomicU8::new(0) }; MAX];
static CLEAN: [AtomicU8; MAX] = [const { AtomicU8::new(0) }; MAX];
/// Operations per kind, per CPU.
const KINDS: usize = 10;
const KIND_NAMES: [&str; KINDS] = [
    "mmio", "regw", "msr", "base", "icr", "periodic", "tscdl", "illegal", "tpr", "hlt",
];
static OPS: [[AtomicU64; KINDS]; MAX] = [const { [const { AtomicU64::new(0) }; KINDS] }; MAX];
/// Vectors seen by the control CPU.
static SEEN0: [AtomicU32; 256] = [const { AtomicU32::new(0) }; 256];

/// Halted timer storm: 1 = arm (on PING), 2 = stop (on PING).
static CMD: AtomicU8 = AtomicU8::new(0);
/// Timer-storm interrupts taken, per CPU.
static TSTORM: [AtomicU64; MAX] = [const { AtomicU64::new(0) }; MAX];

/// 0: abuse; 1: INIT/SIPI phase (a (re)started AP only answers IPIs).
static PHASE: AtomicU8 = AtomicU8::new(0);
/// TSC at which the abuse stops (0: not started yet).
static END: AtomicU64 = AtomicU64::new(0);

fn bump64(a: &AtomicU64) {
    a.store(a.load(Relaxed).wrapping_add(1), Relaxed);
}
fn bump32(a: &AtomicU32) {
    a.store(a.load(Relaxed).wrapping_add(1), Relaxed);
}

// ----- IDT: own stubs, per-CPU fault fixups, EOI in the CPU's own mode -----

global_asm!(
    ".section .text",
    ".align 16",
    ".global abuse_isr_stubs",
    "abuse_isr_stubs:",
    ".set avec, 0",
    ".rept 256",
    "    .align 16",
    "    .if (avec == 8) || ((avec >= 10) && (avec <= 14)) || (avec == 17) || (avec == 21) || (avec == 29) || (avec == 30)",
    "    .else",
    "    push 0",
    "    .endif",
    "    push avec",
    "    jmp abuse_isr_common",
    "    .set avec, avec + 1",
    ".endr",
    "abuse_isr_common:",
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
    handler = sym trap,
);

extern "C" {
    static abuse_isr_stubs: u8;
}

#[repr(C, align(16))]
struct Idt([u64; 512]);
static mut IDT: Idt = Idt([0; 512]);

fn idt_fill() {
    let cs = u64::from(cpu::cs());
    // SAFETY: called once on the boot CPU before any AP starts.
    unsafe {
        let base = &raw const abuse_isr_stubs as u64;
        let idt = &raw mut IDT;
        for v in 0..256u64 {
            let h = base + v * 16;
            (*idt).0[(v * 2) as usize] =
                (h & 0xffff) | (cs << 16) | (0x8e00u64 << 32) | ((h >> 16) & 0xffff) << 48;
            (*idt).0[(v * 2 + 1) as usize] = h >> 32;
        }
    }
}

fn idt_load() {
    // SAFETY: IDT is filled by idt_fill before any CPU loads it.
    unsafe {
        let idt = &raw const IDT as u64;
        let desc: [u16; 5] = [
            (256 * 16 - 1) as u16,
            idt as u16,
            (idt >> 16) as u16,
            (idt >> 32) as u16,
            (idt >> 48) as u16,
        ];
        asm!("lidt [{}]", in(reg) &desc, options(nostack, readonly));
    }
}

fn me() -> usize {
    (smp::cpu_index() as usize).min(MAX - 1)
}

extern "C" fn trap(f: &mut TrapFrame) {
    let c = me();
    let v = f.vector as u8;
    if v == 2 {
        bump64(&NMIS[c]);
        return;
    }
    if v < 32 {
        let fix = FIXUP[c].load(Relaxed);
        if fix != 0 {
            FAULT[c].store(u32::from(v), Relaxed);
            FIXUP[c].store(0, Relaxed);
            f.rip = fix;
            return;
        }
        out()
            .s("FAIL: cpu ")
            .dec(c as u64)
            .s(": unexpected exception ")
            .dec(u64::from(v))
            .s(" at rip ")
            .hex(f.rip)
            .s(" error ")
            .hex(f.error)
            .nl();
        guest_support::test::summary_and_exit_with_failure();
    }
    bump64(&IRQS[c]);
    if c == 0 {
        bump32(&SEEN0[usize::from(v)]);
    }
    if v == PING {
        bump32(&PONG[c]);
        if c != 0 {
            tstorm_cmd(c);
        }
    }
    if v == TSTORM_V {
        bump64(&TSTORM[c]);
    }
    // EOI in this CPU's current mode. A fixup the interrupted code armed
    // is saved around our own guarded access.
    match MODE[c].load(Relaxed) {
        2 => {
            let (fx, ft) = (FIXUP[c].load(Relaxed), FAULT[c].load(Relaxed));
            let _ = wrmsr_s(c, 0x80b, 0);
            FIXUP[c].store(fx, Relaxed);
            FAULT[c].store(ft, Relaxed);
        }
        1 => unsafe { cpu::mmio_write32(BASE[c].load(Relaxed) + 0xb0, 0) },
        _ => {}
    }
}

/// `RDMSR` with this CPU's fixup: `Err(vector)` if it faulted.
#[inline(never)]
fn rdmsr_s(c: usize, msr: u32) -> Result<u64, u8> {
    FAULT[c].store(NONE, Relaxed);
    let (lo, hi): (u32, u32);
    // SAFETY: a fault resumes at label 2 through the per-CPU fixup.
    unsafe {
        asm!(
            "lea {t}, [rip + 2f]",
            "mov qword ptr [{s}], {t}",
            "rdmsr",
            "2:",
            "mov qword ptr [{s}], 0",
            t = out(reg) _,
            s = in(reg) FIXUP[c].as_ptr(),
            in("ecx") msr, out("eax") lo, out("edx") hi,
            options(nostack),
        )
    };
    match FAULT[c].load(Relaxed) {
        NONE => Ok((u64::from(hi) << 32) | u64::from(lo)),
        v => {
            bump64(&GPS[c]);
            Err(v as u8)
        }
    }
}

/// `WRMSR` with this CPU's fixup.
#[inline(never)]
fn wrmsr_s(c: usize, msr: u32, v: u64) -> Result<(), u8> {
    FAULT[c].store(NONE, Relaxed);
    // SAFETY: as rdmsr_s.
    unsafe {
        asm!(
            "lea {t}, [rip + 2f]",
            "mov qword ptr [{s}], {t}",
            "wrmsr",
            "2:",
            "mov qword ptr [{s}], 0",
            t = out(reg) _,
            s = in(reg) FIXUP[c].as_ptr(),
            in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32,
            options(nostack),
        )
    };
    match FAULT[c].load(Relaxed) {
        NONE => Ok(()),
        v => {
            bump64(&GPS[c]);
            Err(v as u8)
        }
    }
}

// ----- PRNG -----

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        (self.next() >> 16) % n
    }
}

// ----- the abuser's APIC, in whatever mode it is in -----

fn set_mode(c: usize, apic_base: u64) {
    let mode = if apic_base & EN == 0 {
        0
    } else if apic_base & EXTD != 0 {
        2
    } else {
        1
    };
    let b = apic_base & 0x000f_ffff_ffff_f000;
    // A window at an unknown base is never touched (it could be RAM
    // with code in it): MMIO then goes to the default base, which does
    // not decode.
    BASE[c].store(if RELOC.contains(&b) { b } else { XB }, Relaxed);
    MODE[c].store(mode, Relaxed);
}

fn rd(c: usize, off: u32) -> u32 {
    match MODE[c].load(Relaxed) {
        2 => rdmsr_s(c, 0x800 + (off >> 4)).unwrap_or(0) as u32,
        // SAFETY: the window is at a known base (MMIO hole or scratch RAM).
        1 => unsafe { cpu::mmio_read32(BASE[c].load(Relaxed) + u64::from(off)) },
        _ => 0,
    }
}

fn wr(c: usize, off: u32, v: u32) {
    match MODE[c].load(Relaxed) {
        2 => {
            let _ = wrmsr_s(c, 0x800 + (off >> 4), u64::from(v));
        }
        // SAFETY: as rd.
        1 => unsafe { cpu::mmio_write32(BASE[c].load(Relaxed) + u64::from(off), v) },
        _ => {}
    }
}

fn send(c: usize, dest: u32, lo: u32) {
    let lo = icr_lo(lo);
    match MODE[c].load(Relaxed) {
        2 => {
            let _ = wrmsr_s(c, 0x830, (u64::from(dest) << 32) | u64::from(lo));
        }
        1 => {
            wr(c, 0x310, dest << 24);
            wr(c, 0x300, lo);
        }
        _ => {}
    }
}

/// Vectors 16-31 would be taken as exceptions: move them to 48-63.
fn vec_fix(v: u32) -> u32 {
    if (16..32).contains(&(v & 0xff)) {
        v | 0x20
    } else {
        v
    }
}

/// No INIT / Start-up from the abusers (mode 5/6 -> fixed).
fn icr_lo(v: u32) -> u32 {
    let mode = (v >> 8) & 7;
    let v = if mode == 5 || mode == 6 {
        v & !0x700
    } else {
        v
    };
    vec_fix(v)
}

/// A dword written to register slot `slot` (xAPIC offset).
fn sanitize(slot: u32, v: u32) -> u32 {
    match slot {
        0x300 => icr_lo(v),
        0x0f0 | 0x2f0 | 0x320..=0x370 | 0x3f0 => vec_fix(v),
        _ => v,
    }
}

fn sanitize_msr(msr: u32, v: u64) -> u64 {
    match msr {
        0x830 => (v & !0xffff_ffff) | u64::from(icr_lo(v as u32)),
        0x80f | 0x82f | 0x832..=0x837 | 0x83f => (v & !0xff) | u64::from(vec_fix(v as u32) & 0xff),
        _ => v,
    }
}

/// One access of `size` bytes at `addr` (any alignment).
unsafe fn mmio_any(addr: u64, size: u64, write: bool, v: u64) {
    let r: u64;
    match (size, write) {
        (1, false) => {
            asm!("movzx {r:e}, byte ptr [{a}]", a = in(reg) addr, r = out(reg) r, options(nostack))
        }
        (2, false) => {
            asm!("movzx {r:e}, word ptr [{a}]", a = in(reg) addr, r = out(reg) r, options(nostack))
        }
        (4, false) => {
            asm!("mov {r:e}, dword ptr [{a}]", a = in(reg) addr, r = out(reg) r, options(nostack))
        }
        (_, false) => {
            asm!("mov {r}, qword ptr [{a}]", a = in(reg) addr, r = out(reg) r, options(nostack))
        }
        (1, true) => {
            asm!("mov byte ptr [{a}], {v}", a = in(reg) addr, v = in(reg_byte) v as u8, options(nostack));
            r = 0;
        }
        (2, true) => {
            asm!("mov word ptr [{a}], {v:x}", a = in(reg) addr, v = in(reg) v, options(nostack));
            r = 0;
        }
        (4, true) => {
            asm!("mov dword ptr [{a}], {v:e}", a = in(reg) addr, v = in(reg) v, options(nostack));
            r = 0;
        }
        (_, true) => {
            asm!("mov qword ptr [{a}], {v}", a = in(reg) addr, v = in(reg) v, options(nostack));
            r = 0;
        }
    }
    let _ = r;
}

/// Register offsets (xAPIC; x2APIC MSR = 0x800 + off / 16).
const REGS: [u32; 24] = [
    0x20, 0x30, 0x80, 0x90, 0xa0, 0xb0, 0xd0, 0xe0, 0xf0, 0x100, 0x180, 0x200, 0x280, 0x2f0, 0x300,
    0x310, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370, 0x380, 0x3e0,
];

fn deliverable_vector(r: &mut Rng) -> u32 {
    32 + r.below(224) as u32
}

fn op_mmio(c: usize, r: &mut Rng) {
    let base = BASE[c].load(Relaxed);
    // From 8 bytes below the window to 8 bytes past its end.
    let off = r.below(0x1010) as i64 - 8;
    let addr = (base as i64 + off) as u64;
    let size = 1u64 << r.below(4);
    if r.below(2) == 0 {
        // SAFETY: MMIO hole or the scratch RAM page (RELOC).
        unsafe { mmio_any(addr, size, false, 0) };
        return;
    }
    let mut v = r.next();
    // Dword-aligned writes that reach a register slot are sanitised
    // (see the module docs); the others must be dropped by the LAPIC.
    if (0..0x1000).contains(&off) && off & 3 == 0 {
        let off = off as u32;
        let lo = sanitize(off & !0xf, v as u32);
        v = (v & !0xffff_ffff) | u64::from(lo);
        if size == 8 && (off + 4) & 0xf == 0 {
            let hi = sanitize((off + 4) & !0xf, (v >> 32) as u32);
            v = (v & 0xffff_ffff) | (u64::from(hi) << 32);
        }
    }
    // SAFETY: as above.
    unsafe { mmio_any(addr, size, true, v) };
}

fn op_regw(c: usize, r: &mut Rng) {
    let off = REGS[r.below(REGS.len() as u64) as usize];
    let v = r.next() as u32;
    if r.below(4) == 0 {
        let _ = rd(c, off);
    } else {
        wr(c, off, sanitize(off, v));
    }
}

fn op_msr(c: usize, r: &mut Rng) {
    let msr = 0x800 + r.below(0x100) as u32;
    if r.below(2) == 0 {
        let _ = rdmsr_s(c, msr);
    } else {
        let _ = wrmsr_s(c, msr, sanitize_msr(msr, r.next()));
    }
}

fn op_base(c: usize, r: &mut Rng) {
    cpu::cli();
    let cur = rdmsr_s(c, MSR_APIC_BASE).unwrap_or(0);
    let low = cur & 0xfff & !(EN | EXTD);
    let v = match r.below(8) {
        0 => cur & !(EN | EXTD),
        1 => low | XB | EN,
        2 => cur | EN | EXTD,
        3 => (cur & !EN) | EXTD,
        4 => low | RELOC[r.below(RELOC.len() as u64) as usize] | EN,
        5 => r.next(),
        6 => cur ^ BSP_BIT,
        _ => cur | (1u64 << (32 + r.below(32))),
    };
    let _ = wrmsr_s(c, MSR_APIC_BASE, v);
    set_mode(c, rdmsr_s(c, MSR_APIC_BASE).unwrap_or(0));
    cpu::sti();
}

fn op_icr(c: usize, r: &mut Rng) {
    for _ in 0..8 {
        let vec = deliverable_vector(r);
        let level = (r.below(4) as u32) << 14; // assert and trigger bits
        let (dest, lo) = match r.below(10) {
            0 => (0, apic::ICR_OTHERS | vec),
            1 => (0, apic::ICR_ALL | vec),
            2 => (0, apic::ICR_OTHERS | apic::ICR_NMI),
            3 => (0xff, (1 << 11) | (1 << 8) | vec),
            4 => (r.below(MAX as u64 + 2) as u32, vec),
            5 => (r.below(256) as u32, (1 << 11) | vec),
            6 => (0, apic::ICR_SELF | vec),
            7 => (
                r.below(4) as u32,
                [2u32 << 8, 7 << 8, 3 << 8][r.below(3) as usize] | vec,
            ),
            8 => (0xff, apic::ICR_NMI),
            _ => (r.next() as u32, r.next() as u32),
        };
        send(c, dest, lo | level);
    }
}

fn op_periodic(c: usize, r: &mut Rng) {
    let mask = if r.below(2) == 0 { 1 << 16 } else { 0 };
    wr(c, 0x3e0, 0xb);
    wr(c, 0x320, (1 << 17) | mask | deliverable_vector(r));
    wr(c, 0x380, 1);
}

fn op_tsc_deadline(c: usize, r: &mut Rng) {
    let mask = if r.below(2) == 0 { 1 << 16 } else { 0 };
    wr(c, 0x320, (2 << 17) | mask | deliverable_vector(r));
    for _ in 0..8 {
        let t = cpu::rdtsc();
        let d = match r.below(8) {
            0 => 1,
            1 => t,
            2 => t.wrapping_sub(1 << 40),
            3 => u64::MAX,
            _ => t.wrapping_sub(r.below(1_000_000)),
        };
        let _ = wrmsr_s(c, MSR_TSC_DEADLINE, d);
    }
}

fn op_illegal(c: usize, r: &mut Rng) {
    let v = r.below(16) as u32;
    match r.below(5) {
        0 => send(c, 0, apic::ICR_SELF | v),
        1 => send(c, 0, apic::ICR_OTHERS | v),
        2 => {
            wr(c, 0x3e0, 0xb);
            wr(c, 0x320, v);
            wr(c, 0x380, 1 + r.below(1000) as u32);
        }
        3 => {
            // LVT Error with an illegal vector, then an error.
            wr(c, 0x370, v);
            send(c, 0, apic::ICR_SELF | (v ^ 1));
        }
        _ => {
            if MODE[c].load(Relaxed) == 2 {
                let _ = wrmsr_s(c, 0x83f, u64::from(v));
            } else {
                wr(c, 0x350 + 0x10 * r.below(2) as u32, v);
            }
        }
    }
}

fn op_tpr(c: usize, r: &mut Rng) {
    if r.below(2) == 0 {
        wr(c, 0x80, r.below(256) as u32);
    } else {
        cpu::write_cr8(r.below(16));
    }
}

/// HLT with a 20 us one-shot timer armed (the control CPU's NMI watchdog
/// wakes us if our own APIC state blocks it).
fn op_hlt(c: usize) {
    let mode = MODE[c].load(Relaxed);
    if mode == 0 || (mode == 1 && BASE[c].load(Relaxed) == RAM_RELOC) {
        return;
    }
    cpu::cli();
    cpu::write_cr8(0);
    wr(c, 0x80, 0);
    wr(c, 0xf0, 0x1ff);
    wr(c, 0x3e0, 0xb);
    wr(c, 0x320, u32::from(HLT_V));
    wr(c, 0x380, 20_000);
    cpu::sti_hlt();
}

fn abuse(c: usize) {
    let mut r = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64).wrapping_mul(0x1234_5678_9abc_def1));
    while END.load(Relaxed) == 0 {
        cpu::pause();
    }
    let end = END.load(Relaxed);
    cpu::sti();
    while cpu::rdtsc() < end {
        bump64(&ITER[c]);
        let kind = match r.below(100) {
            0..=24 => {
                op_mmio(c, &mut r);
                0
            }
            25..=39 => {
                op_regw(c, &mut r);
                1
            }
            40..=51 => {
                op_msr(c, &mut r);
                2
            }
            52..=57 => {
                op_base(c, &mut r);
                3
            }
            58..=69 => {
                op_icr(c, &mut r);
                4
            }
            70..=75 => {
                op_periodic(c, &mut r);
                5
            }
            76..=81 => {
                op_tsc_deadline(c, &mut r);
                6
            }
            82..=88 => {
                op_illegal(c, &mut r);
                7
            }
            89..=94 => {
                op_tpr(c, &mut r);
                8
            }
            _ => {
                op_hlt(c);
                9
            }
        };
        bump64(&OPS[c][kind]);
    }
    cpu::cli();
}

/// Back to a clean xAPIC at the default base (hardware disable, then
/// enable), registers to known values. Records whether it worked.
fn cleanup(c: usize) {
    cpu::cli();
    cpu::write_cr8(0);
    let _ = wrmsr_s(c, MSR_APIC_BASE, XB);
    let _ = wrmsr_s(c, MSR_APIC_BASE, XB | EN);
    let b = rdmsr_s(c, MSR_APIC_BASE).unwrap_or(0);
    set_mode(c, b);
    wr(c, 0x20, (c as u32) << 24);
    wr(c, 0xe0, 0xffff_ffff);
    wr(c, 0xd0, 0);
    wr(c, 0x80, 0);
    wr(c, 0x320, 1 << 16);
    wr(c, 0x380, 0);
    for off in [0x2f0, 0x330, 0x340, 0x350, 0x360, 0x370] {
        wr(c, off, 1 << 16);
    }
    wr(c, 0xf0, 0x1ff);
    wr(c, 0x280, 0);
    wr(c, 0x280, 0);
    // Nothing should be in service after the re-enable; EOI anyway.
    for _ in 0..8 {
        if (0..8).all(|i| rd(c, 0x100 + 0x10 * i) == 0) {
            break;
        }
        wr(c, 0xb0, 0);
    }
    let ok = b & (EN | EXTD) == EN
        && b & 0x000f_ffff_ffff_f000 == XB
        && rd(c, 0x20) >> 24 == c as u32
        && rd(c, 0xf0) == 0x1ff
        && (0..8).all(|i| rd(c, 0x100 + 0x10 * i) == 0);
    CLEAN[c].store(u8::from(ok), Relaxed);
}

/// Halted timer storm (abusers, in their idle loop, xAPIC): periodic
/// timer, divide 1, TMICT=1, unmasked on even CPUs, masked on odd ones.
fn tstorm_cmd(c: usize) {
    match CMD.load(Relaxed) {
        1 => {
            let mask = if c % 2 == 1 { 1 << 16 } else { 0 };
            wr(c, 0x3e0, 0xb);
            wr(c, 0x320, (1 << 17) | mask | u32::from(TSTORM_V));
            wr(c, 0x380, 1);
        }
        2 => {
            wr(c, 0x320, 1 << 16);
            wr(c, 0x380, 0);
        }
        _ => {}
    }
}

fn ap_early(_id: u32) {
    idt_load();
}

fn ap_main(_id: u32) {
    let c = me();
    if PHASE.load(Relaxed) == 0 {
        abuse(c);
        cleanup(c);
        DONE[c].store(1, Relaxed);
    } else {
        // Restarted by INIT/SIPI: the APIC is in xAPIC mode at the
        // default base (cleaned before the storm; INIT keeps that).
        MODE[c].store(1, Relaxed);
        BASE[c].store(XB, Relaxed);
        bump32(&GEN[c]);
    }
    loop {
        cpu::sti_hlt();
    }
}

// ----- the control CPU -----

struct Clock {
    khz: u64,
}
impl Clock {
    fn ticks(&self, us: u64) -> u64 {
        us * self.khz / 1000
    }
    fn wait(&self, us: u64, cond: impl Fn() -> bool) -> bool {
        let end = cpu::rdtsc() + self.ticks(us);
        loop {
            if cond() {
                return true;
            }
            if cpu::rdtsc() >= end {
                return cond();
            }
            cpu::pause();
        }
    }
}

fn ping(clk: &Clock, i: usize) -> bool {
    let before = PONG[i].load(Relaxed);
    apic::send_ipi(i as u32, u32::from(PING));
    clk.wait(1_000_000, || PONG[i].load(Relaxed) != before)
}

const PFX: [&str; MAX] = [
    "cpu 0: ", "cpu 1: ", "cpu 2: ", "cpu 3: ", "cpu 4: ", "cpu 5: ", "cpu 6: ", "cpu 7: ",
];

fn verdict(ok: bool, what: &str, i: usize) -> bool {
    guest_support::test::check_pfx(PFX[i], what, ok)
}

#[no_mangle]
pub fn guest_main(boot: &BootInfo) {
    let cpus = (boot.cpus as usize).min(MAX);
    out()
        .s("abuse: ")
        .dec(cpus as u64)
        .s(" cpus, abuse ")
        .dec(ABUSE_MS)
        .s(" ms")
        .nl();
    idt_fill();
    idt_load();
    if cpus < 2 {
        check("abuse needs --cpus 2 or more", false);
        return;
    }
    let clk = Clock {
        khz: cpu::tsc_khz(),
    };
    // The control CPU's own APIC: software-enabled, never abused.
    apic::sw_enable(0xff);
    smp::set_ap_early(ap_early);
    smp::set_ap_main(ap_main);
    let up = smp::start_aps(cpus as u32 - 1, 2_000_000);
    check("all APs started", up == cpus as u32 - 1);

    // ---- abuse phase ----
    let t0 = cpu::rdtsc();
    let end = t0 + clk.ticks(ABUSE_MS * 1000);
    END.store(end, Relaxed);
    let mid = t0 + clk.ticks(ABUSE_MS * 500);
    let mut at_mid = [0u64; MAX];
    let mut mid_taken = false;
    let mut heartbeat = 0u64;
    let watchdog = clk.ticks(2000);
    let mut next_nmi = t0 + watchdog;
    cpu::sti();
    loop {
        let now = cpu::rdtsc();
        if now >= end {
            break;
        }
        heartbeat += 1;
        if !mid_taken && now >= mid {
            for (i, m) in at_mid.iter_mut().enumerate().take(cpus) {
                *m = ITER[i].load(Relaxed);
            }
            mid_taken = true;
        }
        if now >= next_nmi {
            apic::send_ipi(0, apic::ICR_OTHERS | apic::ICR_NMI);
            next_nmi = now + watchdog;
        }
        cpu::pause();
    }
    // Wait for the abusers to clean up (NMI watchdog still running).
    let all_done = || (1..cpus).all(|i| DONE[i].load(Relaxed) != 0);
    let wait_end = cpu::rdtsc() + clk.ticks(5_000_000);
    while !all_done() && cpu::rdtsc() < wait_end {
        apic::send_ipi(0, apic::ICR_OTHERS | apic::ICR_NMI);
        clk.wait(2000, all_done);
    }
    // Let stray interrupts drain.
    clk.wait(20_000, || false);
    check("control cpu survived the abuse", heartbeat > 0);
    out()
        .s("abuse: control cpu 0: heartbeat ")
        .dec(heartbeat)
        .s(", irqs ")
        .dec(IRQS[0].load(Relaxed))
        .s(", nmis ")
        .dec(NMIS[0].load(Relaxed))
        .nl();
    for i in 1..cpus {
        let it = ITER[i].load(Relaxed);
        let o = out()
            .s("abuse: cpu ")
            .dec(i as u64)
            .s(": iterations ")
            .dec(it)
            .s(" (")
            .dec(at_mid[i])
            .s(" at half time), #GP ")
            .dec(GPS[i].load(Relaxed))
            .s(", irqs ")
            .dec(IRQS[i].load(Relaxed))
            .s(", nmis ")
            .dec(NMIS[i].load(Relaxed))
            .s(", ops");
        let mut o = o;
        for (k, n) in KIND_NAMES.iter().enumerate() {
            o = o.s(" ").s(n).s("=").dec(OPS[i][k].load(Relaxed));
        }
        o.nl();
        verdict(
            at_mid[i] > 0 && it > at_mid[i],
            "abuser made progress in both halves",
            i,
        );
        verdict(DONE[i].load(Relaxed) != 0, "abuser finished", i);
        verdict(CLEAN[i].load(Relaxed) != 0, "abuser restored its APIC", i);
        verdict(ping(&clk, i), "answers an IPI after the abuse", i);
    }

    // ---- INIT/SIPI storm: the abusers are the targets ----
    PHASE.store(1, Relaxed);
    let mut r = Rng(0x5eed_0123_4567_89ab);
    let storm_end = cpu::rdtsc() + clk.ticks(STORM_MS * 1000);
    let sipi = apic::ICR_STARTUP | (smp::TRAMPOLINE >> 12) as u32;
    let mut sent = [0u64; 5];
    while cpu::rdtsc() < storm_end {
        let target = 1 + r.below(cpus as u64 - 1) as u32;
        let k = r.below(5) as usize;
        match k {
            0 => apic::send_ipi(0, apic::ICR_OTHERS | apic::ICR_INIT | apic::ICR_ASSERT),
            1 => apic::send_ipi(target, apic::ICR_INIT | apic::ICR_ASSERT),
            2 => apic::send_ipi(0, apic::ICR_OTHERS | apic::ICR_INIT | (1 << 15)),
            3 => apic::send_ipi(0, apic::ICR_OTHERS | sipi),
            _ => apic::send_ipi(target, sipi),
        }
        sent[k] += 1;
        clk.wait(r.below(100), || false);
    }
    out()
        .s("abuse: INIT/SIPI storm: INIT all ")
        .dec(sent[0])
        .s(", INIT one ")
        .dec(sent[1])
        .s(", INIT de-assert ")
        .dec(sent[2])
        .s(", SIPI all ")
        .dec(sent[3])
        .s(", SIPI one ")
        .dec(sent[4])
        .nl();
    // Clean restart of every abuser.
    let mut restarted = [false; MAX];
    for _attempt in 0..2 {
        apic::send_ipi(0, apic::ICR_OTHERS | apic::ICR_INIT | apic::ICR_ASSERT);
        clk.wait(10_000, || false);
        let mut g0 = [0u32; MAX];
        for (i, g) in g0.iter_mut().enumerate().take(cpus) {
            *g = GEN[i].load(Relaxed);
        }
        apic::send_ipi(0, apic::ICR_OTHERS | sipi);
        clk.wait(200, || false);
        apic::send_ipi(0, apic::ICR_OTHERS | sipi);
        clk.wait(2_000_000, || {
            (1..cpus).all(|i| GEN[i].load(Relaxed) != g0[i])
        });
        for i in 1..cpus {
            restarted[i] = GEN[i].load(Relaxed) != g0[i];
        }
        if (1..cpus).all(|i| restarted[i]) {
            break;
        }
    }
    for (i, &ok) in restarted.iter().enumerate().take(cpus).skip(1) {
        verdict(ok, "restarted by INIT/SIPI/SIPI after the storm", i);
        verdict(
            ok && ping(&clk, i),
            "answers an IPI after the INIT/SIPI storm",
            i,
        );
    }

    // ---- halted timer storm: every CPU halts with a TMICT=1 periodic timer ----
    CMD.store(1, Relaxed);
    for i in 1..cpus {
        ping(&clk, i);
    }
    let t_start = cpu::rdtsc();
    let t_end = t_start + clk.ticks(TSTORM_MS * 1000);
    let mut at0 = [0u64; MAX];
    for (i, a) in at0.iter_mut().enumerate().take(cpus) {
        *a = TSTORM[i].load(Relaxed);
    }
    apic::write(apic::reg::TDCR, 0xb);
    apic::write(apic::reg::LVT_TIMER, (1 << 17) | u32::from(TSTORM_V));
    apic::write(apic::reg::TMICT, 1);
    while cpu::rdtsc() < t_end {
        cpu::sti_hlt();
    }
    cpu::cli();
    apic::write(apic::reg::LVT_TIMER, 1 << 16);
    apic::write(apic::reg::TMICT, 0);
    let elapsed_us = (cpu::rdtsc() - t_start) * 1000 / clk.khz;
    cpu::sti();
    CMD.store(2, Relaxed);
    for i in 1..cpus {
        ping(&clk, i);
    }
    // At most one interrupt per minimum period (200 us), plus slack.
    let cap = elapsed_us / 200 + 20;
    for i in 0..cpus {
        let n = TSTORM[i].load(Relaxed) - at0[i];
        out()
            .s("abuse: halted timer storm: cpu ")
            .dec(i as u64)
            .s(if i % 2 == 1 {
                " (masked)"
            } else {
                " (unmasked)"
            })
            .s(": ")
            .dec(n)
            .s(" timer interrupts in ")
            .dec(elapsed_us)
            .s(" us")
            .nl();
        if i % 2 == 1 {
            verdict(n == 0, "masked TMICT=1 periodic timer delivers nothing", i);
        } else {
            verdict(
                n > 0 && n <= cap,
                "TMICT=1 periodic timer fires, at most once per 200 us",
                i,
            );
        }
    }

    // ---- the control CPU's own APIC still works ----
    cpu::cli();
    clk.wait(10_000, || false);
    cpu::sti();
    let before = SEEN0[usize::from(SELF_V)].load(Relaxed);
    apic::send_ipi(0, apic::ICR_SELF | u32::from(SELF_V));
    check(
        "control cpu self IPI",
        clk.wait(1_000_000, || {
            SEEN0[usize::from(SELF_V)].load(Relaxed) != before
        }),
    );
    let before = SEEN0[usize::from(TIMER_V)].load(Relaxed);
    apic::write(apic::reg::TDCR, 0xb);
    apic::write(apic::reg::LVT_TIMER, u32::from(TIMER_V));
    apic::write(apic::reg::TMICT, 200_000);
    check(
        "control cpu one-shot timer",
        clk.wait(1_000_000, || {
            SEEN0[usize::from(TIMER_V)].load(Relaxed) != before
        }),
    );
    let ms = (cpu::rdtsc() - t0) / clk.khz;
    out()
        .s("abuse: guest time from abuse start ")
        .dec(ms)
        .s(" ms")
        .nl();
}
