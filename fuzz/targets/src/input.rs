//! A tiny byte reader for fuzz inputs (the subset of `arbitrary::Unstructured`
//! the targets need). Dependency-free so that the target logic can be
//! `#[path]`-included by the stable tests of the library crates, which
//! cannot take new dev-dependencies. Reads past the end give zeros, so
//! every byte string is a valid input.

/// Cursor over fuzz bytes.
#[derive(Clone)]
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Input { data, pos: 0 }
    }

    /// Whether every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    /// Bytes left.
    pub fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    /// The unread rest (consumed).
    pub fn rest(&mut self) -> &'a [u8] {
        let r = self.data.get(self.pos..).unwrap_or(&[]);
        self.pos = self.data.len();
        r
    }

    /// Next `n` bytes (fewer at the end; consumed).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = end;
        &self.data[start..end]
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    /// A bool (low bit of a byte).
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }

    /// Little-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    /// Little-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    /// Little-endian u64.
    pub fn u64(&mut self) -> u64 {
        (self.u32() as u64) | ((self.u32() as u64) << 32)
    }

    /// A value in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u32) -> u32 {
        if n <= 256 {
            self.u8() as u32 % n
        } else {
            self.u32() % n
        }
    }

    /// One of `items` (non-empty).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u32) as usize]
    }
}

/// Deterministic xorshift64* generator for the stable tests.
pub struct XorShift(pub u64);

impl XorShift {
    /// Next pseudo-random value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0.max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// `len` pseudo-random bytes, with runs of zeros and small values
    /// (fuzz inputs that reach past the first checks).
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            let r = self.next_u64();
            match r % 8 {
                0 => v.push(0),
                1 => v.push((r >> 8) as u8 & 0xF),
                2 => v.push(0xFF),
                _ => v.extend_from_slice(&r.to_le_bytes()[1..]),
            }
        }
        v.truncate(len);
        v
    }
}

/// Runs `target` on every file under `dir` (if it exists); returns how many.
pub fn run_dir(dir: &std::path::Path, target: impl Fn(&[u8])) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut paths: Vec<_> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    let mut n = 0;
    for p in paths {
        if p.is_file() {
            let data = std::fs::read(&p).unwrap();
            eprintln!("replay {}", p.display());
            target(&data);
            n += 1;
        }
    }
    n
}

/// Runs `target` on `n` pseudo-random inputs of up to `max_len` bytes.
pub fn run_random(seed: u64, n: usize, max_len: usize, target: impl Fn(&[u8])) {
    let mut rng = XorShift(seed);
    for _ in 0..n {
        let len = (rng.next_u64() % (max_len as u64 + 1)) as usize;
        let data = rng.bytes(len);
        target(&data);
    }
}
