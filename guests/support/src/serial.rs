//! COM1 output without `core::fmt`.

use crate::cpu::{inb, outb};

const COM1: u16 = 0x3f8;

/// Programs COM1 for 115200 8N1, FIFOs on, no interrupts.
pub fn init() {
    unsafe {
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x80);
        outb(COM1, 0x01);
        outb(COM1 + 1, 0x00);
        outb(COM1 + 3, 0x03);
        outb(COM1 + 2, 0xc7);
        outb(COM1 + 4, 0x03);
    }
}

/// Writes one byte (waits for the transmitter, bounded).
pub fn putb(b: u8) {
    unsafe {
        for _ in 0..1000 {
            if inb(COM1 + 5) & 0x20 != 0 {
                break;
            }
        }
        outb(COM1, b);
    }
}

/// Chained writer: `out().s("x = ").hex(x).nl()`.
#[derive(Clone, Copy)]
pub struct Out;

/// A writer.
pub fn out() -> Out {
    Out
}

impl Out {
    /// A string.
    pub fn s(self, s: &str) -> Self {
        for b in s.bytes() {
            putb(b);
        }
        self
    }
    /// A character.
    pub fn c(self, c: u8) -> Self {
        putb(c);
        self
    }
    /// Decimal.
    pub fn dec(self, mut v: u64) -> Self {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for &b in &buf[i..] {
            putb(b);
        }
        self
    }
    /// `0x`-prefixed hexadecimal, no leading zeros.
    pub fn hex(self, v: u64) -> Self {
        putb(b'0');
        putb(b'x');
        let mut started = false;
        for i in (0..16).rev() {
            let d = ((v >> (i * 4)) & 0xf) as u8;
            if d != 0 || started || i == 0 {
                started = true;
                putb(if d < 10 { b'0' + d } else { b'a' + d - 10 });
            }
        }
        self
    }
    /// Newline.
    pub fn nl(self) -> Self {
        putb(b'\n');
        self
    }
}

/// Prints a line.
pub fn println(s: &str) {
    out().s(s).nl();
}
