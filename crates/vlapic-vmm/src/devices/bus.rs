//! Port-I/O dispatch.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::debug_exit::{exit_status, DEBUG_EXIT_PORT};
use super::fw_cfg::{FwCfg, FW_CFG_PORT_DATA, FW_CFG_PORT_SEL};
use super::ioapic::{Lines, IRQ_TEST_PORT};
use super::serial::{SerialDevice, COM1_BASE, COM1_LEN};

/// Something the VM as a whole must react to after a port access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEvent {
    /// isa-debug-exit was written: stop with this process exit status.
    Exit(i32),
}

/// The port-I/O devices of the machine. Each device has its own lock so
/// vCPUs only contend when they touch the same device.
pub struct IoBus {
    serial: Mutex<SerialDevice>,
    fw_cfg: Mutex<FwCfg>,
    irq_lines: Option<Arc<Lines>>,
    migration: Option<Arc<AtomicU32>>,
}

/// Port of the irqchip-switch status (`--switch-irqchip-after`, see
/// `crate::migrate`): a read gives the number of switches done (bits
/// 15:0) and planned (bits 31:16).
pub const MIGRATE_PORT: u16 = 0x5c0;

impl IoBus {
    /// Creates the bus.
    pub fn new(serial: SerialDevice, fw_cfg: FwCfg) -> Self {
        IoBus {
            serial: Mutex::new(serial),
            fw_cfg: Mutex::new(fw_cfg),
            irq_lines: None,
            migration: None,
        }
    }

    /// Adds the irqchip-switch status port ([`MIGRATE_PORT`]) reading `status`.
    pub fn with_migration_port(mut self, status: Arc<AtomicU32>) -> Self {
        self.migration = Some(status);
        self
    }

    /// Adds the IRQ test port ([`IRQ_TEST_PORT`]) driving `lines`.
    pub fn with_irq_test_port(mut self, lines: Arc<Lines>) -> Self {
        self.irq_lines = Some(lines);
        self
    }

    /// A guest `IN`: fills `data`. Returns false if no device claims the
    /// port (then `data` reads as all ones, like an empty ISA bus).
    pub fn pio_in(&self, port: u16, data: &mut [u8]) -> bool {
        match port {
            p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                let mut s = lock(&self.serial);
                let first = s.read((p - COM1_BASE) as u8);
                if let Some(d) = data.first_mut() {
                    *d = first;
                }
                for d in data.iter_mut().skip(1) {
                    *d = 0;
                }
                true
            }
            FW_CFG_PORT_SEL | FW_CFG_PORT_DATA => {
                lock(&self.fw_cfg).pio_read(port, data);
                true
            }
            IRQ_TEST_PORT if self.irq_lines.is_some() => {
                if let Some(l) = &self.irq_lines {
                    l.test_port_read(data);
                }
                true
            }
            MIGRATE_PORT if self.migration.is_some() => {
                let v = self
                    .migration
                    .as_ref()
                    .map_or(0, |m| m.load(Ordering::SeqCst));
                for (i, d) in data.iter_mut().enumerate() {
                    *d = v.to_le_bytes().get(i).copied().unwrap_or(0);
                }
                true
            }
            _ => {
                data.fill(0xff);
                false
            }
        }
    }

    /// A guest `OUT`. Returns whether a device claimed the port, and an
    /// event for the VM if any.
    pub fn pio_out(&self, port: u16, data: &[u8]) -> (bool, Option<IoEvent>) {
        match port {
            p if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&p) => {
                // String I/O (REP OUTSB) delivers several bytes at once.
                // An output error (closed pipe, full disk) must not stop the guest.
                let mut s = lock(&self.serial);
                for b in data {
                    let _ = s.write((p - COM1_BASE) as u8, *b);
                }
                (true, None)
            }
            FW_CFG_PORT_SEL | FW_CFG_PORT_DATA => {
                lock(&self.fw_cfg).pio_write(port, data);
                (true, None)
            }
            DEBUG_EXIT_PORT => (true, Some(IoEvent::Exit(exit_status(data)))),
            IRQ_TEST_PORT if self.irq_lines.is_some() => {
                if let Some(l) = &self.irq_lines {
                    l.test_port_write(data);
                }
                (true, None)
            }
            // POST code port: accepted and ignored.
            0x80 => (true, None),
            _ => (false, None),
        }
    }

    /// Flushes the serial output.
    pub fn flush(&self) {
        use std::io::Write;
        let _ = lock(&self.serial).writer_mut().flush();
    }
}

/// Locks a mutex, ignoring poisoning (a panicking vCPU thread must not take
/// the devices down with it).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::super::serial::new_serial;
    use super::*;

    fn bus() -> IoBus {
        IoBus::new(
            new_serial(Box::new(std::io::sink())),
            FwCfg::new(1 << 20, 2),
        )
    }

    #[test]
    fn debug_exit() {
        let b = bus();
        assert_eq!(b.pio_out(0xf4, &[0]), (true, Some(IoEvent::Exit(1))));
        assert_eq!(
            b.pio_out(0xf4, &[5, 0, 0, 0]),
            (true, Some(IoEvent::Exit(11)))
        );
    }

    #[test]
    fn unknown_ports() {
        let b = bus();
        let mut d = [0u8; 4];
        assert!(!b.pio_in(0x1234, &mut d));
        assert_eq!(d, [0xff; 4]);
        assert_eq!(b.pio_out(0x1234, &[1]), (false, None));
        assert_eq!(b.pio_out(0x80, &[1]), (true, None));
    }

    #[test]
    fn fw_cfg_through_bus() {
        let b = bus();
        b.pio_out(FW_CFG_PORT_SEL, &[5, 0]);
        let mut d = [0u8; 2];
        assert!(b.pio_in(FW_CFG_PORT_DATA, &mut d[..1]));
        assert!(b.pio_in(FW_CFG_PORT_DATA, &mut d[1..]));
        assert_eq!(d, [2, 0]);
    }

    #[test]
    fn serial_lsr() {
        let b = bus();
        let mut d = [0u8];
        assert!(b.pio_in(0x3fd, &mut d));
        assert_ne!(d[0] & 0x20, 0);
    }
}
