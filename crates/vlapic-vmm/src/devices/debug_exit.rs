//! QEMU-compatible `isa-debug-exit` device.
//!
//! A write of value `v` (1, 2 or 4 bytes, little endian) to its port stops
//! the VM and the VMM process exits with status `(v << 1) | 1`, exactly as
//! QEMU does. Reads return all ones.

/// Default I/O port (QEMU's `iobase=0xf4`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;

/// Exit status for a write of `data` to the port.
pub fn exit_status(data: &[u8]) -> i32 {
    let mut v: u32 = 0;
    for (i, b) in data.iter().take(4).enumerate() {
        v |= u32::from(*b) << (8 * i);
    }
    // QEMU: exit((val << 1) | 1); the OS keeps the low 8 bits.
    ((v << 1) | 1) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status() {
        assert_eq!(exit_status(&[0]), 1);
        assert_eq!(exit_status(&[1]), 3);
        assert_eq!(exit_status(&[0x10, 0, 0, 0]), 0x21);
        assert_eq!(exit_status(&[]), 1);
        assert_eq!(
            exit_status(&[0x34, 0x12]) & 0xff,
            ((0x1234 << 1) | 1) & 0xff
        );
    }
}
