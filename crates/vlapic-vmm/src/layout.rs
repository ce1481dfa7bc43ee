//! Guest physical memory layout and guest memory creation.
//!
//! ```text
//! 0x0000_0500  GDT (null, code64 0x08, data 0x10, code32 0x18)
//! 0x0000_6000  multiboot info, 0x6100 memory map, 0x7000 cmdline,
//!              0x7800 boot loader name
//! 0x0000_9000  PML4, 0xA000 PDPT, 0xB000..0xEFFF four PDs (2 MiB pages,
//!              identity map of 0..4 GiB; 3..4 GiB uncached)
//! 0x0008_0000  initial stack top (grows down)
//! 0x0010_0000  kernel (as linked)
//! RAM          [0, min(ram, 3 GiB)) and, above that, [4 GiB, ...)
//! 0xFEC0_0000  IOAPIC, 0xFEE0_0000 LAPIC (MMIO, never RAM)
//! ```

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};

/// GDT address.
pub const GDT_ADDR: u64 = 0x500;
/// Multiboot info structure.
pub const MB_INFO_ADDR: u64 = 0x6000;
/// Multiboot memory map.
pub const MB_MMAP_ADDR: u64 = 0x6100;
/// Multiboot command line (NUL terminated, at most [`MB_CMDLINE_MAX`] bytes).
pub const MB_CMDLINE_ADDR: u64 = 0x7000;
/// Maximum command-line length including the NUL.
pub const MB_CMDLINE_MAX: usize = 0x800;
/// Multiboot boot loader name.
pub const MB_LOADER_NAME_ADDR: u64 = 0x7800;
/// Top-level page table.
pub const PML4_ADDR: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of four page directories.
pub const PD_ADDR: u64 = 0xb000;
/// Initial stack pointer of the boot CPU.
pub const STACK_TOP: u64 = 0x8_0000;
/// Lowest address a kernel may be loaded at without clobbering boot data.
pub const KERNEL_MIN_ADDR: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole (no RAM above this below 4 GiB).
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
/// Start of RAM above the hole.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// Default xAPIC MMIO base.
pub const APIC_DEFAULT_BASE: u64 = 0xfee0_0000;
/// IOAPIC MMIO base.
pub const IOAPIC_BASE: u64 = 0xfec0_0000;

/// The RAM ranges for `ram_bytes` of memory: (start, size).
pub fn ram_ranges(ram_bytes: u64) -> Vec<(u64, u64)> {
    let low = ram_bytes.min(MMIO_HOLE_START);
    let mut v = vec![(0, low)];
    if ram_bytes > low {
        v.push((HIGH_RAM_START, ram_bytes - low));
    }
    v
}

/// Allocates guest memory of `ram_bytes`.
pub fn create_memory(ram_bytes: u64) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(ram_bytes)
        .into_iter()
        .map(|(s, l)| (GuestAddress(s), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::Memory(format!("{e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(ram_ranges(64 << 20), vec![(0, 64 << 20)]);
        assert_eq!(ram_ranges(3 << 30), vec![(0, 3 << 30)]);
        assert_eq!(ram_ranges(4 << 30), vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
    }
}
