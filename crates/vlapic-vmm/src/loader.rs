//! Kernel loaders: ELF64 (long mode, via `linux-loader`), multiboot v1
//! (32-bit protected mode; ELF32, ELF64 or a.out-kludge images) and flat
//! binaries (real mode).

use std::io::Cursor;

use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::args::KernelFormat;
use crate::error::{Error, Result};
use crate::layout::*;

/// Multiboot v1 header magic.
pub const MULTIBOOT_HEADER_MAGIC: u32 = 0x1bad_b002;
/// Value in EAX when a multiboot kernel is entered.
pub const MULTIBOOT_BOOTLOADER_MAGIC: u32 = 0x2bad_b002;
/// Lowest address a segment may be loaded at (boot data lives below).
pub const MIN_LOAD_ADDR: u64 = 0x1_0000;

/// How a vCPU must be set up to enter the loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// 64-bit long mode with paging, at this RIP.
    Long64(u64),
    /// Multiboot: 32-bit protected mode, paging off, EAX=0x2BADB002,
    /// EBX=multiboot info.
    Multiboot32(u32),
    /// Real mode at CS:IP.
    Real {
        /// Code segment selector (base = cs << 4).
        cs: u16,
        /// Instruction pointer.
        ip: u16,
    },
}

/// One loadable segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical load address.
    pub paddr: u64,
    /// File offset.
    pub offset: u64,
    /// Bytes taken from the file.
    pub filesz: u64,
    /// Bytes in memory (the rest is zero).
    pub memsz: u64,
}

/// A parsed ELF file (enough to load it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// true for ELFCLASS64.
    pub is64: bool,
    /// e_entry.
    pub entry: u64,
    /// PT_LOAD segments.
    pub segments: Vec<Segment>,
}

fn rd<const N: usize>(b: &[u8], off: usize) -> Result<[u8; N]> {
    b.get(
        off..off
            .checked_add(N)
            .ok_or_else(|| Error::Image("offset overflow".into()))?,
    )
    .and_then(|s| s.try_into().ok())
    .ok_or_else(|| Error::Image(format!("truncated at offset {off:#x}")))
}
fn u16le(b: &[u8], o: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(rd(b, o)?))
}
fn u32le(b: &[u8], o: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(rd(b, o)?))
}
fn u64le(b: &[u8], o: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(rd(b, o)?))
}

/// Whether the image starts with the ELF magic.
pub fn is_elf(image: &[u8]) -> bool {
    image.len() >= 4 && &image[..4] == b"\x7fELF"
}

/// Parses the ELF header and program headers of an x86 or x86-64 ELF.
pub fn parse_elf(image: &[u8]) -> Result<ElfInfo> {
    if !is_elf(image) {
        return Err(Error::Image("not an ELF file".into()));
    }
    let class = rd::<1>(image, 4)?[0];
    let data = rd::<1>(image, 5)?[0];
    if data != 1 {
        return Err(Error::Image("big-endian ELF".into()));
    }
    let is64 = match class {
        1 => false,
        2 => true,
        c => return Err(Error::Image(format!("bad ELF class {c}"))),
    };
    let machine = u16le(image, 18)?;
    if !matches!(machine, 3 | 62) {
        return Err(Error::Image(format!("ELF machine {machine} is not x86")));
    }
    let (entry, phoff, phentsize, phnum) = if is64 {
        (
            u64le(image, 24)?,
            u64le(image, 32)?,
            u16le(image, 54)?,
            u16le(image, 56)?,
        )
    } else {
        (
            u64::from(u32le(image, 24)?),
            u64::from(u32le(image, 28)?),
            u16le(image, 42)?,
            u16le(image, 44)?,
        )
    };
    let min_ent = if is64 { 56 } else { 32 };
    if phnum > 0 && usize::from(phentsize) < min_ent {
        return Err(Error::Image("bad program header size".into()));
    }
    let mut segments = Vec::new();
    for i in 0..u64::from(phnum) {
        let off = phoff
            .checked_add(i * u64::from(phentsize))
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| Error::Image("bad program header offset".into()))?;
        let p_type = u32le(image, off)?;
        if p_type != 1 {
            continue; // only PT_LOAD
        }
        let seg = if is64 {
            Segment {
                offset: u64le(image, off + 8)?,
                paddr: u64le(image, off + 24)?,
                filesz: u64le(image, off + 32)?,
                memsz: u64le(image, off + 40)?,
            }
        } else {
            Segment {
                offset: u64::from(u32le(image, off + 4)?),
                paddr: u64::from(u32le(image, off + 12)?),
                filesz: u64::from(u32le(image, off + 16)?),
                memsz: u64::from(u32le(image, off + 20)?),
            }
        };
        if seg.filesz > seg.memsz {
            return Err(Error::Image(format!("segment {i}: filesz > memsz")));
        }
        let end = seg.offset.checked_add(seg.filesz);
        if end.map_or(true, |e| e > image.len() as u64) {
            return Err(Error::Image(format!(
                "segment {i} extends past the end of the file"
            )));
        }
        segments.push(seg);
    }
    if segments.is_empty() {
        return Err(Error::Image("ELF has no loadable segment".into()));
    }
    Ok(ElfInfo {
        is64,
        entry,
        segments,
    })
}

/// Checks that `[addr, addr+len)` is RAM the kernel may use.
fn check_range(addr: u64, len: u64, ram_bytes: u64, what: &str) -> Result<()> {
    let end = addr
        .checked_add(len)
        .ok_or_else(|| Error::Image(format!("{what}: address overflow")))?;
    if addr < MIN_LOAD_ADDR {
        return Err(Error::Image(format!(
            "{what} at {addr:#x} overlaps the VMM's boot data below {MIN_LOAD_ADDR:#x}"
        )));
    }
    let ok = ram_ranges(ram_bytes)
        .iter()
        .any(|&(s, l)| addr >= s && end <= s + l);
    if !ok {
        return Err(Error::Image(format!(
            "{what} [{addr:#x}, {end:#x}) is outside guest RAM ({} MiB)",
            ram_bytes >> 20
        )));
    }
    Ok(())
}

fn write(mem: &GuestMemoryMmap, addr: u64, data: &[u8]) -> Result<()> {
    mem.write_slice(data, GuestAddress(addr)).map_err(|e| {
        Error::Image(format!(
            "cannot write {:#x} bytes at {addr:#x}: {e}",
            data.len()
        ))
    })
}

fn zero(mem: &GuestMemoryMmap, addr: u64, len: u64) -> Result<()> {
    const CHUNK: [u8; 4096] = [0; 4096];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(4096);
        write(mem, addr + done, &CHUNK[..n as usize])?;
        done += n;
    }
    Ok(())
}

fn load_segments(mem: &GuestMemoryMmap, image: &[u8], info: &ElfInfo, ram: u64) -> Result<()> {
    for s in &info.segments {
        check_range(s.paddr, s.memsz, ram, "ELF segment")?;
        let off = s.offset as usize;
        write(mem, s.paddr, &image[off..off + s.filesz as usize])?;
        zero(mem, s.paddr + s.filesz, s.memsz - s.filesz)?;
    }
    Ok(())
}

/// Multiboot header fields found in an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultibootHeader {
    /// Offset of the header in the file.
    pub file_offset: u64,
    /// Header flags.
    pub flags: u32,
    /// a.out kludge address fields (flag bit 16): header, load, load_end,
    /// bss_end, entry.
    pub addrs: Option<[u32; 5]>,
}

/// Finds a valid multiboot v1 header in the first 8 KiB.
pub fn find_multiboot_header(image: &[u8]) -> Option<MultibootHeader> {
    let limit = image.len().min(8192);
    let mut off = 0;
    while off + 12 <= limit {
        let magic = u32le(image, off).ok()?;
        if magic == MULTIBOOT_HEADER_MAGIC {
            let flags = u32le(image, off + 4).ok()?;
            let sum = u32le(image, off + 8).ok()?;
            if magic.wrapping_add(flags).wrapping_add(sum) == 0 {
                let addrs = if flags & (1 << 16) != 0 {
                    let mut a = [0u32; 5];
                    for (i, v) in a.iter_mut().enumerate() {
                        *v = u32le(image, off + 12 + 4 * i).ok()?;
                    }
                    Some(a)
                } else {
                    None
                };
                return Some(MultibootHeader {
                    file_offset: off as u64,
                    flags,
                    addrs,
                });
            }
        }
        off += 4;
    }
    None
}

/// Loads a multiboot kernel and returns its entry point.
pub fn load_multiboot(mem: &GuestMemoryMmap, image: &[u8], ram: u64) -> Result<u32> {
    let hdr = find_multiboot_header(image)
        .ok_or_else(|| Error::Image("no multiboot header in the first 8 KiB".into()))?;
    let unsupported = hdr.flags & 0xfff8;
    if unsupported != 0 {
        return Err(Error::Image(format!(
            "multiboot header requires unsupported features {unsupported:#x}"
        )));
    }
    if let Some([header_addr, load_addr, load_end, bss_end, entry]) = hdr.addrs {
        // a.out kludge: the file from (header offset - (header_addr -
        // load_addr)) is loaded at load_addr.
        let delta = header_addr
            .checked_sub(load_addr)
            .ok_or_else(|| Error::Image("multiboot: header_addr < load_addr".into()))?;
        let file_start = hdr
            .file_offset
            .checked_sub(u64::from(delta))
            .ok_or_else(|| Error::Image("multiboot: load_addr before file start".into()))?;
        let file_len = if load_end == 0 {
            image.len() as u64 - file_start
        } else {
            u64::from(
                load_end
                    .checked_sub(load_addr)
                    .ok_or_else(|| Error::Image("multiboot: load_end_addr < load_addr".into()))?,
            )
        };
        if file_start + file_len > image.len() as u64 {
            return Err(Error::Image(
                "multiboot: load range past end of file".into(),
            ));
        }
        let mem_end = if bss_end == 0 {
            u64::from(load_addr) + file_len
        } else {
            u64::from(bss_end).max(u64::from(load_addr) + file_len)
        };
        check_range(
            u64::from(load_addr),
            mem_end - u64::from(load_addr),
            ram,
            "multiboot image",
        )?;
        write(
            mem,
            u64::from(load_addr),
            &image[file_start as usize..(file_start + file_len) as usize],
        )?;
        zero(
            mem,
            u64::from(load_addr) + file_len,
            mem_end - u64::from(load_addr) - file_len,
        )?;
        return Ok(entry);
    }
    let info = parse_elf(image)?;
    load_segments(mem, image, &info, ram)?;
    u32::try_from(info.entry)
        .map_err(|_| Error::Image(format!("multiboot entry {:#x} above 4 GiB", info.entry)))
}

/// Writes the multiboot information structure, memory map, command line
/// and loader name. Returns the address of the info structure (for EBX).
pub fn write_multiboot_info(mem: &GuestMemoryMmap, ram: u64, cmdline: &str) -> Result<u32> {
    let low_end = ram.min(MMIO_HOLE_START);
    // Memory map entries: size(u32, not counting itself), base, len, type.
    let mut map: Vec<(u64, u64, u32)> = vec![
        (0, 0x9_fc00, 1),
        (0x9_fc00, 0x400, 2),
        (0xf_0000, 0x1_0000, 2),
        (0x10_0000, low_end.saturating_sub(0x10_0000), 1),
    ];
    if ram > low_end {
        map.push((HIGH_RAM_START, ram - low_end, 1));
    }
    let mut mmap = Vec::new();
    for (base, len, ty) in &map {
        mmap.extend_from_slice(&20u32.to_le_bytes());
        mmap.extend_from_slice(&base.to_le_bytes());
        mmap.extend_from_slice(&len.to_le_bytes());
        mmap.extend_from_slice(&ty.to_le_bytes());
    }
    write(mem, MB_MMAP_ADDR, &mmap)?;

    let mut cl = cmdline.as_bytes().to_vec();
    cl.truncate(MB_CMDLINE_MAX - 1);
    cl.push(0);
    write(mem, MB_CMDLINE_ADDR, &cl)?;
    write(mem, MB_LOADER_NAME_ADDR, b"vlapic-vmm\0")?;

    let mut info = [0u8; 88];
    let flags: u32 = 1 | (1 << 2) | (1 << 6) | (1 << 9); // mem, cmdline, mmap, loader name
    let mem_lower: u32 = 640;
    let mem_upper = ((low_end.saturating_sub(0x10_0000)) / 1024) as u32;
    info[0..4].copy_from_slice(&flags.to_le_bytes());
    info[4..8].copy_from_slice(&mem_lower.to_le_bytes());
    info[8..12].copy_from_slice(&mem_upper.to_le_bytes());
    info[16..20].copy_from_slice(&(MB_CMDLINE_ADDR as u32).to_le_bytes());
    info[44..48].copy_from_slice(&(mmap.len() as u32).to_le_bytes());
    info[48..52].copy_from_slice(&(MB_MMAP_ADDR as u32).to_le_bytes());
    info[64..68].copy_from_slice(&(MB_LOADER_NAME_ADDR as u32).to_le_bytes());
    write(mem, MB_INFO_ADDR, &info)?;
    Ok(MB_INFO_ADDR as u32)
}

/// Loads `image` according to `format` and returns how to enter it.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    image: &[u8],
    format: KernelFormat,
    flat_addr: u64,
    ram: u64,
    cmdline: &str,
) -> Result<Entry> {
    let format =
        match format {
            KernelFormat::Auto if find_multiboot_header(image).is_some() => KernelFormat::Multiboot,
            KernelFormat::Auto if is_elf(image) => KernelFormat::Elf,
            KernelFormat::Auto => return Err(Error::Image(
                "neither a multiboot kernel nor an ELF file (use --format flat for raw binaries)"
                    .into(),
            )),
            f => f,
        };
    match format {
        KernelFormat::Multiboot => {
            let entry = load_multiboot(mem, image, ram)?;
            write_multiboot_info(mem, ram, cmdline)?;
            Ok(Entry::Multiboot32(entry))
        }
        KernelFormat::Elf => {
            let info = parse_elf(image)?;
            if !info.is64 {
                return Err(Error::Image(
                    "32-bit ELF without a multiboot header cannot be booted".into(),
                ));
            }
            for s in &info.segments {
                check_range(s.paddr, s.memsz, ram, "ELF segment")?;
            }
            let mut cursor = Cursor::new(image);
            let res = Elf::load(mem, None, &mut cursor, Some(GuestAddress(MIN_LOAD_ADDR)))
                .map_err(|e| Error::Image(format!("ELF load failed: {e}")))?;
            Ok(Entry::Long64(res.kernel_load.0))
        }
        KernelFormat::Flat => {
            if !(0x500..0x10_0000).contains(&flat_addr) {
                return Err(Error::Image(
                    "flat binary address must be in [0x500, 1 MiB)".into(),
                ));
            }
            let len = image.len() as u64;
            if flat_addr + len > ram.min(0xa_0000) {
                return Err(Error::Image(format!(
                    "flat binary of {len} bytes at {flat_addr:#x} does not fit below 640 KiB"
                )));
            }
            write(mem, flat_addr, image)?;
            let cs = ((flat_addr >> 4) & 0xf000) as u16;
            let ip = (flat_addr - (u64::from(cs) << 4)) as u16;
            Ok(Entry::Real { cs, ip })
        }
        KernelFormat::Auto => unreachable!("resolved above"),
    }
}

/// Helpers to build images for tests (unit and integration).
pub mod testing {
    /// Builds a minimal ELF with one PT_LOAD segment holding `code`.
    pub fn make_elf(is64: bool, paddr: u64, entry: u64, code: &[u8], bss: u64) -> Vec<u8> {
        let mut v = Vec::new();
        let (ehsize, phsize) = if is64 { (64usize, 56usize) } else { (52, 32) };
        let data_off = (ehsize + phsize) as u64;
        v.extend_from_slice(b"\x7fELF");
        v.push(if is64 { 2 } else { 1 });
        v.extend_from_slice(&[1, 1, 0]);
        v.resize(16, 0);
        v.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        v.extend_from_slice(&(if is64 { 62u16 } else { 3 }).to_le_bytes());
        v.extend_from_slice(&1u32.to_le_bytes());
        if is64 {
            v.extend_from_slice(&entry.to_le_bytes());
            v.extend_from_slice(&(ehsize as u64).to_le_bytes()); // phoff
            v.extend_from_slice(&0u64.to_le_bytes()); // shoff
        } else {
            v.extend_from_slice(&(entry as u32).to_le_bytes());
            v.extend_from_slice(&(ehsize as u32).to_le_bytes());
            v.extend_from_slice(&0u32.to_le_bytes());
        }
        v.extend_from_slice(&0u32.to_le_bytes()); // flags
        v.extend_from_slice(&(ehsize as u16).to_le_bytes());
        v.extend_from_slice(&(phsize as u16).to_le_bytes());
        v.extend_from_slice(&1u16.to_le_bytes()); // phnum
        v.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
        assert_eq!(v.len(), ehsize);
        let fsz = code.len() as u64;
        if is64 {
            v.extend_from_slice(&1u32.to_le_bytes());
            v.extend_from_slice(&7u32.to_le_bytes());
            for x in [data_off, paddr, paddr, fsz, fsz + bss, 0x1000] {
                v.extend_from_slice(&x.to_le_bytes());
            }
        } else {
            for x in [1, data_off, paddr, paddr, fsz, fsz + bss, 7, 0x1000] {
                v.extend_from_slice(&(x as u32).to_le_bytes());
            }
        }
        v.extend_from_slice(code);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::testing::make_elf;
    use super::*;
    use crate::layout::create_memory;

    fn read(mem: &GuestMemoryMmap, addr: u64, n: usize) -> Vec<u8> {
        let mut b = vec![0; n];
        mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
        b
    }

    const RAM: u64 = 4 << 20;

    #[test]
    fn elf64_long_mode() {
        let mem = create_memory(RAM).unwrap();
        let elf = make_elf(
            true,
            0x10_0000,
            0x10_0004,
            &[0xf4, 0x90, 0x90, 0x90, 0xeb, 0xfe],
            16,
        );
        let e = load_kernel(&mem, &elf, KernelFormat::Auto, 0, RAM, "").unwrap();
        assert_eq!(e, Entry::Long64(0x10_0004));
        assert_eq!(
            read(&mem, 0x10_0000, 6),
            [0xf4, 0x90, 0x90, 0x90, 0xeb, 0xfe]
        );
    }

    #[test]
    fn elf_errors() {
        let mem = create_memory(RAM).unwrap();
        let f = KernelFormat::Auto;
        assert!(load_kernel(&mem, b"garbage", f, 0, RAM, "").is_err());
        assert!(load_kernel(&mem, b"\x7fELF", f, 0, RAM, "").is_err());
        // Outside RAM, in the boot area, truncated, 32-bit without multiboot.
        let far = make_elf(true, 0x100_0000, 0x100_0000, &[0xf4], 0);
        assert!(load_kernel(&mem, &far, f, 0, RAM, "").is_err());
        let low = make_elf(true, 0x1000, 0x1000, &[0xf4], 0);
        assert!(load_kernel(&mem, &low, f, 0, RAM, "").is_err());
        let mut trunc = make_elf(true, 0x10_0000, 0x10_0000, &[0xf4; 32], 0);
        trunc.truncate(trunc.len() - 8);
        assert!(load_kernel(&mem, &trunc, f, 0, RAM, "").is_err());
        let e32 = make_elf(false, 0x10_0000, 0x10_0000, &[0xf4], 0);
        assert!(load_kernel(&mem, &e32, f, 0, RAM, "").is_err());
        // Every prefix of a valid image is rejected without panicking.
        let good = make_elf(true, 0x10_0000, 0x10_0000, &[0xf4; 8], 0);
        for n in 0..good.len() {
            let _ = load_kernel(&mem, &good[..n], f, 0, RAM, "");
        }
    }

    fn mb_header(flags: u32, addrs: Option<[u32; 5]>) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&MULTIBOOT_HEADER_MAGIC.to_le_bytes());
        v.extend_from_slice(&flags.to_le_bytes());
        v.extend_from_slice(
            &(0u32
                .wrapping_sub(MULTIBOOT_HEADER_MAGIC)
                .wrapping_sub(flags))
            .to_le_bytes(),
        );
        if let Some(a) = addrs {
            for x in a {
                v.extend_from_slice(&x.to_le_bytes());
            }
        }
        v
    }

    #[test]
    fn multiboot_elf32() {
        let mem = create_memory(RAM).unwrap();
        let mut code = vec![0u8; 8];
        code.extend(mb_header(3, None));
        code.extend_from_slice(&[0xf4]);
        let elf = make_elf(false, 0x20_0000, 0x20_0000, &code, 0x100);
        let e = load_kernel(&mem, &elf, KernelFormat::Auto, 0, RAM, "console=ttyS0").unwrap();
        assert_eq!(e, Entry::Multiboot32(0x20_0000));
        let info = read(&mem, MB_INFO_ADDR, 88);
        let flags = u32::from_le_bytes(info[0..4].try_into().unwrap());
        assert_eq!(flags & 0x245, 0x245);
        assert_eq!(u32::from_le_bytes(info[4..8].try_into().unwrap()), 640);
        assert_eq!(
            u32::from_le_bytes(info[8..12].try_into().unwrap()),
            3 * 1024
        );
        assert_eq!(read(&mem, MB_CMDLINE_ADDR, 14), b"console=ttyS0\0");
        let mmap_len = u32::from_le_bytes(info[44..48].try_into().unwrap());
        assert_eq!(mmap_len, 4 * 24);
    }

    #[test]
    fn multiboot_aout_kludge() {
        let mem = create_memory(RAM).unwrap();
        // File: [header at 0][code]; loaded at 0x10_0000, header_addr = load_addr.
        let load = 0x10_0000u32;
        let mut img = mb_header(1 << 16, Some([load, load, 0, load + 0x1000, load + 32]));
        img.extend_from_slice(&[0xf4; 4]);
        let e = load_kernel(&mem, &img, KernelFormat::Auto, 0, RAM, "").unwrap();
        assert_eq!(e, Entry::Multiboot32(load + 32));
        assert_eq!(read(&mem, u64::from(load) + 32, 4), [0xf4; 4]);
        // Bad checksum: not multiboot, not ELF.
        let mut bad = img.clone();
        bad[8] ^= 1;
        assert!(load_kernel(&mem, &bad, KernelFormat::Auto, 0, RAM, "").is_err());
        // Unsupported required feature (bit 3).
        let img2 = mb_header(1 << 3, None);
        assert!(load_kernel(&mem, &img2, KernelFormat::Auto, 0, RAM, "").is_err());
    }

    #[test]
    fn flat() {
        let mem = create_memory(RAM).unwrap();
        let e = load_kernel(&mem, &[0xf4], KernelFormat::Flat, 0x7c00, RAM, "").unwrap();
        assert_eq!(e, Entry::Real { cs: 0, ip: 0x7c00 });
        let e = load_kernel(&mem, &[0xf4], KernelFormat::Flat, 0x1_2345, RAM, "").unwrap();
        assert_eq!(
            e,
            Entry::Real {
                cs: 0x1000,
                ip: 0x2345
            }
        );
        assert_eq!(read(&mem, 0x1_2345, 1), [0xf4]);
        assert!(load_kernel(&mem, &[0xf4], KernelFormat::Flat, 0x10_0000, RAM, "").is_err());
    }
}
