//! Initial CPU state: GDT, identity-mapped page tables and the register
//! setups for long mode, multiboot (32-bit protected mode), real mode,
//! and the INIT / SIPI states of an AP.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};
use crate::layout::*;
use crate::loader::{Entry, MULTIBOOT_BOOTLOADER_MAGIC};

/// GDT selectors written by [`write_gdt`].
pub const SEL_CODE64: u16 = 0x08;
/// Flat 32-bit data segment.
pub const SEL_DATA: u16 = 0x10;
/// Flat 32-bit code segment.
pub const SEL_CODE32: u16 = 0x18;

const GDT: [u64; 4] = [
    0,
    0x00af_9a00_0000_ffff, // 64-bit code, DPL0
    0x00cf_9200_0000_ffff, // flat data
    0x00cf_9a00_0000_ffff, // 32-bit flat code
];

const PTE_P: u64 = 1;
const PTE_RW: u64 = 1 << 1;
const PTE_PWT: u64 = 1 << 3;
const PTE_PCD: u64 = 1 << 4;
const PTE_PS: u64 = 1 << 7;

const CR0_PE: u64 = 1;
const CR0_MP: u64 = 1 << 1;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

fn w(mem: &GuestMemoryMmap, addr: u64, data: &[u8]) -> Result<()> {
    mem.write_slice(data, GuestAddress(addr))
        .map_err(|e| Error::Memory(format!("writing boot data at {addr:#x}: {e}")))
}

/// Writes the GDT.
pub fn write_gdt(mem: &GuestMemoryMmap) -> Result<()> {
    let bytes: Vec<u8> = GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    w(mem, GDT_ADDR, &bytes)
}

/// Page-table entries of the 2 MiB page mapping `gpa` (identity map);
/// the 3..4 GiB range (MMIO: IOAPIC, LAPIC) is uncached.
pub fn pd_entry(gpa: u64) -> u64 {
    let mut e = gpa | PTE_P | PTE_RW | PTE_PS;
    if gpa >= MMIO_HOLE_START {
        e |= PTE_PCD | PTE_PWT;
    }
    e
}

/// Writes a PML4 -> PDPT -> 4 PDs identity map of 0..4 GiB with 2 MiB pages.
pub fn write_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let mut pml4 = vec![0u8; 4096];
    pml4[..8].copy_from_slice(&(PDPT_ADDR | PTE_P | PTE_RW).to_le_bytes());
    w(mem, PML4_ADDR, &pml4)?;
    let mut pdpt = vec![0u8; 4096];
    for i in 0..4u64 {
        let e = (PD_ADDR + i * 0x1000) | PTE_P | PTE_RW;
        pdpt[(i * 8) as usize..(i * 8 + 8) as usize].copy_from_slice(&e.to_le_bytes());
    }
    w(mem, PDPT_ADDR, &pdpt)?;
    for i in 0..4u64 {
        let mut pd = vec![0u8; 4096];
        for j in 0..512u64 {
            let gpa = (i << 30) | (j << 21);
            pd[(j * 8) as usize..(j * 8 + 8) as usize]
                .copy_from_slice(&pd_entry(gpa).to_le_bytes());
        }
        w(mem, PD_ADDR + i * 0x1000, &pd)?;
    }
    Ok(())
}

fn seg(selector: u16, code: bool, long: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!long),
        s: 1,
        l: u8::from(long && code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn real_seg(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: u64::from(selector) << 4,
        limit: 0xffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 0,
        g: 0,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

fn system_segs(s: &mut kvm_sregs) {
    s.tr = kvm_segment {
        base: 0,
        limit: 0xffff,
        selector: 0,
        type_: 0xb,
        present: 1,
        s: 0,
        ..Default::default()
    };
    s.ldt = kvm_segment {
        base: 0,
        limit: 0xffff,
        selector: 0,
        type_: 0x2,
        present: 1,
        s: 0,
        ..Default::default()
    };
}

/// Registers for entering the kernel on the boot CPU. `base` is the
/// vCPU's current sregs (keeps KVM-owned fields such as `apic_base`).
///
/// Long mode: RDI = cpu index, RSI = number of CPUs, RDX = RAM size in
/// bytes, RSP = [`STACK_TOP`]. Multiboot: EAX = 0x2BADB002, EBX = info.
pub fn entry_state(
    entry: Entry,
    base: &kvm_sregs,
    cpu: u32,
    cpus: u32,
    ram: u64,
) -> (kvm_regs, kvm_sregs) {
    let mut s = *base;
    let mut r = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    system_segs(&mut s);
    s.gdt.base = GDT_ADDR;
    s.gdt.limit = (GDT.len() * 8 - 1) as u16;
    s.idt.base = 0;
    s.idt.limit = 0;
    match entry {
        Entry::Long64(rip) => {
            s.cs = seg(SEL_CODE64, true, true);
            let d = seg(SEL_DATA, false, false);
            (s.ds, s.es, s.fs, s.gs, s.ss) = (d, d, d, d, d);
            s.cr3 = PML4_ADDR;
            s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
            s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
            s.efer = EFER_LME | EFER_LMA;
            r.rip = rip;
            r.rsp = STACK_TOP;
            r.rdi = u64::from(cpu);
            r.rsi = u64::from(cpus);
            r.rdx = ram;
        }
        Entry::Multiboot32(eip) => {
            s.cs = seg(SEL_CODE32, true, false);
            let d = seg(SEL_DATA, false, false);
            (s.ds, s.es, s.fs, s.gs, s.ss) = (d, d, d, d, d);
            s.cr0 = CR0_PE | CR0_ET;
            s.cr3 = 0;
            s.cr4 = 0;
            s.efer = 0;
            r.rip = u64::from(eip);
            r.rax = u64::from(MULTIBOOT_BOOTLOADER_MAGIC);
            r.rbx = MB_INFO_ADDR;
            r.rsp = STACK_TOP;
        }
        Entry::Real { cs, ip } => {
            real_mode(&mut s, cs);
            r.rip = u64::from(ip);
            r.rsp = 0x7000;
        }
    }
    (r, s)
}

fn real_mode(s: &mut kvm_sregs, cs: u16) {
    s.cs = real_seg(cs, true);
    let d = real_seg(0, false);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (d, d, d, d, d);
    s.gdt.base = 0;
    s.gdt.limit = 0xffff;
    s.idt.base = 0;
    s.idt.limit = 0xffff;
    s.cr0 = 0x6000_0010; // CD | NW | ET (reset value)
    s.cr2 = 0;
    s.cr3 = 0;
    s.cr4 = 0;
    s.efer = 0;
    s.cr8 = 0;
}

/// The architectural INIT state (SDM "IA-32 Processor States Following
/// Power-up, Reset, or INIT"): real mode at F000:FFF0 with CS base
/// 0xFFFF0000. `apic_base` and the rest of KVM's hidden state is kept.
pub fn init_state(base: &kvm_sregs) -> (kvm_regs, kvm_sregs) {
    let mut s = *base;
    real_mode(&mut s, 0xf000);
    s.cs.base = 0xffff_0000;
    system_segs(&mut s);
    s.interrupt_bitmap = [0; 4];
    let r = kvm_regs {
        rip: 0xfff0,
        rflags: 0x2,
        rdx: 0x600,
        ..Default::default()
    };
    (r, s)
}

/// The state after a Start-up IPI with `vector`: real mode at
/// CS = vector << 8 (base vector << 12), IP = 0.
pub fn sipi_state(base: &kvm_sregs, vector: u8) -> (kvm_regs, kvm_sregs) {
    let (mut r, mut s) = init_state(base);
    s.cs = real_seg(u16::from(vector) << 8, true);
    r.rip = 0;
    (r, s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::create_memory;

    #[test]
    fn page_tables_cover_4g_and_mmio_uncached() {
        let mem = create_memory(16 << 20).unwrap();
        write_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT_ADDR);
        // Walk 0xFEE00000: PDPT index 3, PD index 0x1F7.
        let pdpte: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 3 * 8)).unwrap();
        let pde: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + 0x1f7 * 8))
            .unwrap();
        assert_eq!(pde & !0x1fffff, APIC_DEFAULT_BASE & !0x1fffff);
        assert_ne!(pde & PTE_PCD, 0);
        let pde_io: u64 = mem
            .read_obj(GuestAddress((pdpte & !0xfff) + 0x1f6 * 8))
            .unwrap();
        assert_eq!(pde_io & !0x1fffff, IOAPIC_BASE);
        assert_ne!(pde_io & PTE_PCD, 0);
        assert_eq!(pd_entry(0x20_0000) & PTE_PCD, 0);
    }

    #[test]
    fn sipi_start() {
        let (r, s) = sipi_state(&kvm_sregs::default(), 0x9a);
        assert_eq!(s.cs.selector, 0x9a00);
        assert_eq!(s.cs.base, 0x9_a000);
        assert_eq!(r.rip, 0);
        assert_eq!(s.cr0 & 1, 0);
        let (r, s) = init_state(&kvm_sregs::default());
        assert_eq!(
            (s.cs.selector, s.cs.base, r.rip),
            (0xf000, 0xffff_0000, 0xfff0)
        );
    }

    #[test]
    fn long_mode_entry() {
        let (r, s) = entry_state(
            Entry::Long64(0x10_0000),
            &kvm_sregs::default(),
            2,
            4,
            1 << 26,
        );
        assert_eq!((r.rip, r.rdi, r.rsi, r.rdx), (0x10_0000, 2, 4, 1 << 26));
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.efer & EFER_LMA, EFER_LMA);
        let (r, s) = entry_state(
            Entry::Multiboot32(0x10_0000),
            &kvm_sregs::default(),
            0,
            1,
            1,
        );
        assert_eq!(r.rax, 0x2bad_b002);
        assert_eq!(r.rbx, MB_INFO_ADDR);
        assert_eq!((s.cs.db, s.cs.l, s.cr0 & CR0_PG), (1, 0, 0));
    }
}
