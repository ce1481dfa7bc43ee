//! QEMU fw_cfg (port interface).

use crate::cpu::{inb, outw};

/// Selector port.
pub const SEL: u16 = 0x510;
/// Data port.
pub const DATA: u16 = 0x511;

/// Reads `buf.len()` bytes of item `key`.
pub fn read(key: u16, buf: &mut [u8]) {
    unsafe {
        outw(SEL, key);
        for b in buf.iter_mut() {
            *b = inb(DATA);
        }
    }
}

/// Reads a little-endian integer item of `n` (<= 8) bytes.
pub fn read_le(key: u16, n: usize) -> u64 {
    let mut b = [0u8; 8];
    read(key, &mut b[..n.min(8)]);
    u64::from_le_bytes(b)
}

/// The signature (item 0): b"QEMU" under QEMU and vlapic-vmm.
pub fn signature() -> [u8; 4] {
    let mut b = [0u8; 4];
    read(0, &mut b);
    b
}
