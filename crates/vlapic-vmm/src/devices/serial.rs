//! COM1 16550 UART (from `vm-superio`) with a line-flushing output.
//!
//! Its interrupt is ISA IRQ 4, wired to IOAPIC pin 4 (or KVM's GSI 4 with
//! `--irqchip kernel`). `vm-superio` reports an interrupt only when a new
//! condition arises (THR empty after a write or when IER enables it, data
//! received) and never reports its end, so the line is driven as an edge
//! (a pulse: assert, deassert), like ISA IRQs are (edge, active high) and
//! like other rust-vmm VMMs wire it (an eventfd on an edge-triggered GSI).
//! A guest must program pin 4 edge-triggered; a real 16550's level output
//! (high while IIR shows a pending interrupt) is not modelled.

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::{Serial, Trigger};

use super::ioapic::{Lines, SERIAL_IRQ};

/// COM1 base port.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of COM1 ports.
pub const COM1_LEN: u16 = 8;

/// The serial interrupt: a pulse on IRQ 4, or nothing when not wired.
#[derive(Default)]
pub struct SerialIrq(pub Option<Arc<Lines>>);

impl Trigger for SerialIrq {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        if let Some(l) = &self.0 {
            l.pulse(SERIAL_IRQ);
        }
        Ok(())
    }
}

/// Writer that flushes on every newline so output interleaves sanely.
pub struct LineFlush(pub Box<dyn Write + Send>);

impl Write for LineFlush {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.write(buf)?;
        if buf[..n].contains(&b'\n') {
            self.0.flush()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The serial device type used by the VMM.
pub type SerialDevice = Serial<SerialIrq, vm_superio::serial::NoEvents, LineFlush>;

/// Creates COM1 writing to `out`, with no interrupt line.
pub fn new_serial(out: Box<dyn Write + Send>) -> SerialDevice {
    new_serial_with_irq(out, None)
}

/// Creates COM1 writing to `out`, pulsing IRQ 4 of `lines`.
pub fn new_serial_with_irq(out: Box<dyn Write + Send>, lines: Option<Arc<Lines>>) -> SerialDevice {
    Serial::new(SerialIrq(lines), LineFlush(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn thr_writes_reach_output() {
        let buf = Buf::default();
        let mut s = new_serial(Box::new(buf.clone()));
        for b in b"hi\n" {
            s.write(0, *b).unwrap();
        }
        // LSR: transmitter empty.
        assert_ne!(s.read(5) & 0x20, 0);
        assert_eq!(&*buf.0.lock().unwrap(), b"hi\n");
    }
}
