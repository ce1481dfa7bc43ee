//! 256-bit vector sets: the IRR, ISR and TMR (SDM 11.8.4, Figure 11-20).

/// A set of the 256 interrupt vectors, laid out like the IRR/ISR/TMR
/// registers: word `n` (at offset `base + 0x10 * n`) holds vectors
/// `32 * n ..= 32 * n + 31`, vector `v` in bit `v % 32`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VectorSet(pub [u32; 8]);

impl VectorSet {
    /// The empty set.
    pub const EMPTY: VectorSet = VectorSet([0; 8]);

    /// Whether `vector` is in the set.
    #[inline]
    pub const fn contains(&self, vector: u8) -> bool {
        self.0[(vector >> 5) as usize] & (1 << (vector & 31)) != 0
    }

    /// Adds `vector`; returns whether it was absent.
    #[inline]
    pub fn insert(&mut self, vector: u8) -> bool {
        let word = &mut self.0[(vector >> 5) as usize];
        let bit = 1 << (vector & 31);
        let was_absent = *word & bit == 0;
        *word |= bit;
        was_absent
    }

    /// Removes `vector`; returns whether it was present.
    #[inline]
    pub fn remove(&mut self, vector: u8) -> bool {
        let word = &mut self.0[(vector >> 5) as usize];
        let bit = 1 << (vector & 31);
        let was_present = *word & bit != 0;
        *word &= !bit;
        was_present
    }

    /// Sets or clears `vector`.
    #[inline]
    pub fn set(&mut self, vector: u8, present: bool) {
        if present {
            self.insert(vector);
        } else {
            self.remove(vector);
        }
    }

    /// The highest vector in the set.
    #[inline]
    pub fn highest(&self) -> Option<u8> {
        let mut n = 8;
        while n > 0 {
            n -= 1;
            let word = self.0[n];
            if word != 0 {
                return Some(((n as u32) * 32 + 31 - word.leading_zeros()) as u8);
            }
        }
        None
    }

    /// Whether the set is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }

    /// Number of vectors in the set.
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Removes every vector.
    pub fn clear(&mut self) {
        self.0 = [0; 8];
    }

    /// Iterates over the vectors, lowest first.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=255u8).filter(move |v| self.contains(*v))
    }

    /// Whether any of the illegal vectors 0-15 is present.
    pub const fn has_illegal(&self) -> bool {
        self.0[0] & 0xFFFF != 0
    }
}

impl core::fmt::Debug for VectorSet {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        struct Hex(u8);
        impl core::fmt::Debug for Hex {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{:#04x}", self.0)
            }
        }
        f.debug_set().entries(self.iter().map(Hex)).finish()
    }
}

impl FromIterator<u8> for VectorSet {
    fn from_iter<T: IntoIterator<Item = u8>>(iter: T) -> Self {
        let mut set = VectorSet::EMPTY;
        for v in iter {
            set.insert(v);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_layout_matches_register_words() {
        // SDM Figure 11-20: vector v lives in word v/32, bit v%32.
        let mut s = VectorSet::EMPTY;
        s.insert(0x31);
        assert_eq!(s.0[1], 1 << 17);
        s.insert(0xFF);
        assert_eq!(s.0[7], 1 << 31);
    }

    #[test]
    fn highest_finds_top_vector() {
        let s: VectorSet = [0x20, 0x41, 0x40, 0x9F].into_iter().collect();
        assert_eq!(s.highest(), Some(0x9F));
        assert_eq!(VectorSet::EMPTY.highest(), None);
        let mut t = VectorSet::EMPTY;
        t.insert(0);
        assert_eq!(t.highest(), Some(0));
    }

    #[test]
    fn insert_remove_report_change() {
        let mut s = VectorSet::EMPTY;
        assert!(s.insert(0x50));
        assert!(!s.insert(0x50));
        assert!(s.remove(0x50));
        assert!(!s.remove(0x50));
        assert!(s.is_empty());
    }

    #[test]
    fn illegal_vectors_detected() {
        let mut s = VectorSet::EMPTY;
        s.insert(16);
        assert!(!s.has_illegal());
        s.insert(15);
        assert!(s.has_illegal());
    }
}
