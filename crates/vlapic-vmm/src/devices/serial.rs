//! COM1 16550 UART (from `vm-superio`) with a line-flushing output.

use std::io::{self, Write};

use vm_superio::{Serial, Trigger};

/// COM1 base port.
pub const COM1_BASE: u16 = 0x3f8;
/// Number of COM1 ports.
pub const COM1_LEN: u16 = 8;

/// Interrupt trigger that does nothing: guests poll the LSR.
#[derive(Debug, Default)]
pub struct NoIrq;

impl Trigger for NoIrq {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
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
pub type SerialDevice = Serial<NoIrq, vm_superio::serial::NoEvents, LineFlush>;

/// Creates COM1 writing to `out`.
pub fn new_serial(out: Box<dyn Write + Send>) -> SerialDevice {
    Serial::new(NoIrq, LineFlush(out))
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
