//! QEMU-compatible `fw_cfg` (traditional port interface only, no DMA).
//!
//! Selector: 16-bit write to port 0x510. Data: byte reads from port 0x511,
//! advancing an offset that a selector write resets; reads past the end of
//! an item return 0. Writes to the data port are ignored.

/// Selector port.
pub const FW_CFG_PORT_SEL: u16 = 0x510;
/// Data port.
pub const FW_CFG_PORT_DATA: u16 = 0x511;

/// Item: signature "QEMU".
pub const FW_CFG_SIGNATURE: u16 = 0x00;
/// Item: feature bitmap (bit 0 traditional interface; no DMA).
pub const FW_CFG_ID: u16 = 0x01;
/// Item: 16-byte UUID (zero).
pub const FW_CFG_UUID: u16 = 0x02;
/// Item: RAM size in bytes, u64 little endian.
pub const FW_CFG_RAM_SIZE: u16 = 0x03;
/// Item: number of boot CPUs, u16 little endian.
pub const FW_CFG_NB_CPUS: u16 = 0x05;
/// Item: maximum CPUs, u16 little endian.
pub const FW_CFG_MAX_CPUS: u16 = 0x0f;
/// Item: file directory (big-endian count, here 0).
pub const FW_CFG_FILE_DIR: u16 = 0x19;

/// The fw_cfg device state.
#[derive(Debug, Clone)]
pub struct FwCfg {
    items: Vec<(u16, Vec<u8>)>,
    selected: Option<usize>,
    offset: usize,
}

impl FwCfg {
    /// A device describing a machine with `ram_bytes` of RAM and `cpus` CPUs.
    pub fn new(ram_bytes: u64, cpus: u16) -> Self {
        let items = vec![
            (FW_CFG_SIGNATURE, b"QEMU".to_vec()),
            (FW_CFG_ID, 1u32.to_le_bytes().to_vec()),
            (FW_CFG_UUID, vec![0; 16]),
            (FW_CFG_RAM_SIZE, ram_bytes.to_le_bytes().to_vec()),
            (FW_CFG_NB_CPUS, cpus.to_le_bytes().to_vec()),
            (FW_CFG_MAX_CPUS, cpus.to_le_bytes().to_vec()),
            (FW_CFG_FILE_DIR, 0u32.to_be_bytes().to_vec()),
        ];
        FwCfg {
            items,
            selected: None,
            offset: 0,
        }
    }

    /// Selects item `key` and rewinds the data offset.
    pub fn select(&mut self, key: u16) {
        self.selected = self.items.iter().position(|(k, _)| *k == key);
        self.offset = 0;
    }

    /// Reads the next data byte of the selected item (0 past its end or if
    /// the item does not exist).
    pub fn read_byte(&mut self) -> u8 {
        let b = self
            .selected
            .and_then(|i| self.items[i].1.get(self.offset).copied())
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        b
    }

    /// Handles a port read (`data` is filled).
    pub fn pio_read(&mut self, port: u16, data: &mut [u8]) {
        match port {
            FW_CFG_PORT_DATA => {
                for b in data.iter_mut() {
                    *b = self.read_byte();
                }
            }
            // Reading the selector port is not defined by QEMU: return 0.
            _ => data.fill(0),
        }
    }

    /// Handles a port write.
    pub fn pio_write(&mut self, port: u16, data: &[u8]) {
        if port == FW_CFG_PORT_SEL && !data.is_empty() {
            let lo = u16::from(data[0]);
            let hi = u16::from(data.get(1).copied().unwrap_or(0));
            self.select(lo | (hi << 8));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dev: &mut FwCfg, key: u16, n: usize) -> Vec<u8> {
        dev.pio_write(FW_CFG_PORT_SEL, &key.to_le_bytes());
        (0..n)
            .map(|_| {
                let mut b = [0u8];
                dev.pio_read(FW_CFG_PORT_DATA, &mut b);
                b[0]
            })
            .collect()
    }

    #[test]
    fn items() {
        let mut d = FwCfg::new(64 << 20, 3);
        assert_eq!(read(&mut d, FW_CFG_SIGNATURE, 4), b"QEMU");
        assert_eq!(read(&mut d, FW_CFG_ID, 4), [1, 0, 0, 0]);
        assert_eq!(
            read(&mut d, FW_CFG_RAM_SIZE, 8),
            (64u64 << 20).to_le_bytes()
        );
        assert_eq!(read(&mut d, FW_CFG_NB_CPUS, 2), [3, 0]);
        assert_eq!(read(&mut d, FW_CFG_MAX_CPUS, 2), [3, 0]);
        // Past the end and unknown keys read 0.
        assert_eq!(read(&mut d, FW_CFG_NB_CPUS, 4), [3, 0, 0, 0]);
        assert_eq!(read(&mut d, 0x1234, 2), [0, 0]);
    }

    #[test]
    fn reselect_rewinds_and_wide_reads() {
        let mut d = FwCfg::new(1, 1);
        assert_eq!(read(&mut d, FW_CFG_SIGNATURE, 2), b"QE");
        assert_eq!(read(&mut d, FW_CFG_SIGNATURE, 1), b"Q");
        let mut w = [0u8; 3];
        d.pio_read(FW_CFG_PORT_DATA, &mut w);
        assert_eq!(&w, b"EMU");
        // Data-port writes and empty selector writes are ignored.
        d.pio_write(FW_CFG_PORT_DATA, &[1, 2]);
        d.pio_write(FW_CFG_PORT_SEL, &[]);
        let mut s = [9u8; 2];
        d.pio_read(FW_CFG_PORT_SEL, &mut s);
        assert_eq!(s, [0, 0]);
    }
}
