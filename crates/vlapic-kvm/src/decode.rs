//! Decoding saved `kvm_lapic_state` blobs (the `klapic-decode` binary; a
//! VMM can expose the same as `vlapic-vmm decode FILE`).
//!
//! Input is auto-detected: exactly 1024 bytes is the raw blob; anything
//! else is hex text: 2048 hex digits, in any layout (whitespace, commas,
//! `0x` prefixes and `xxd`-style `00000000:` offset columns are skipped).

use std::fmt;
use std::path::Path;

use crate::view::{KvmLapic, KVM_LAPIC_SIZE};

/// Why an input could not be decoded.
#[derive(Debug)]
pub enum DecodeError {
    /// The file could not be read.
    Io(std::io::Error),
    /// Neither 1024 raw bytes nor 2048 hex digits.
    Format(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Io(e) => write!(f, "cannot read input: {e}"),
            DecodeError::Format(m) => write!(f, "not a kvm_lapic_state: {m}"),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<std::io::Error> for DecodeError {
    fn from(e: std::io::Error) -> Self {
        DecodeError::Io(e)
    }
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Parses hex text into bytes: tokens split at whitespace and commas; a
/// token ending in `:` (an offset column) is skipped; `0x` prefixes are
/// dropped; every other token must be an even number of hex digits.
fn parse_hex(text: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let text = std::str::from_utf8(text)
        .map_err(|_| DecodeError::Format("neither 1024 bytes nor hex text".into()))?;
    let mut out = Vec::with_capacity(KVM_LAPIC_SIZE);
    for tok in text.split(|c: char| c.is_whitespace() || c == ',') {
        if tok.is_empty() || tok.ends_with(':') {
            continue;
        }
        let digits = tok
            .strip_prefix("0x")
            .or_else(|| tok.strip_prefix("0X"))
            .unwrap_or(tok)
            .as_bytes();
        if digits.len() % 2 != 0 {
            return Err(DecodeError::Format(format!(
                "hex token {tok:?} has an odd number of digits"
            )));
        }
        for pair in digits.chunks(2) {
            match (hex_val(pair[0]), hex_val(pair[1])) {
                (Some(h), Some(l)) => out.push(h << 4 | l),
                _ => {
                    return Err(DecodeError::Format(format!("{tok:?} is not hex")));
                }
            }
        }
    }
    Ok(out)
}

/// Parses a blob from file contents: 1024 raw bytes or hex text.
///
/// ```
/// let mut text = "00".repeat(0xF0);
/// text += "ff010000";
/// text += &"00".repeat(1024 - 0xF4);
/// let k = vlapic_kvm::parse_blob(text.as_bytes()).unwrap();
/// assert!(k.svr().software_enabled());
/// assert!(vlapic_kvm::parse_blob(b"1234").is_err());
/// ```
pub fn parse_blob(contents: &[u8]) -> Result<KvmLapic, DecodeError> {
    if let Some(k) = KvmLapic::from_slice(contents) {
        return Ok(k);
    }
    let bytes = parse_hex(contents)?;
    KvmLapic::from_slice(&bytes).ok_or_else(|| {
        DecodeError::Format(format!(
            "{} bytes of hex; kvm_lapic_state has {KVM_LAPIC_SIZE}",
            bytes.len()
        ))
    })
}

/// Reads `path` and returns the decoded table ([`KvmLapic`]'s `Display`),
/// one register per line.
pub fn decode(path: &Path) -> Result<String, DecodeError> {
    let contents = std::fs::read(path)?;
    Ok(parse_blob(&contents)?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlapic::Register;

    fn sample() -> KvmLapic {
        let mut k = KvmLapic::new();
        k.write(Register::Id, 0x0100_0000);
        k.write(Register::LvtLint0, 0x700);
        k.write(Register::Svr, 0x1FF);
        k
    }

    #[test]
    fn raw_and_hex_forms_agree() {
        let k = sample();
        let raw = k.to_bytes();
        assert_eq!(parse_blob(&raw).unwrap(), k);
        let plain: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(parse_blob(plain.as_bytes()).unwrap(), k);
        let spaced: String = raw
            .chunks(16)
            .enumerate()
            .map(|(i, c)| {
                let body: Vec<String> = c.iter().map(|b| format!("0x{b:02X},")).collect();
                format!("{:08x}: {}\n", i * 16, body.join(" "))
            })
            .collect();
        assert_eq!(parse_blob(spaced.as_bytes()).unwrap(), k);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(parse_blob(b"").is_err());
        assert!(parse_blob(&[0u8; 1023]).is_err());
        assert!(parse_blob(&[0xFFu8; 2048]).is_err());
        assert!(parse_blob(b"abc").is_err());
        assert!(parse_blob(b"zz").is_err());
        assert!(parse_blob("00".repeat(1025).as_bytes()).is_err());
    }

    #[test]
    fn decode_file() {
        let dir = std::env::temp_dir().join(format!("klapic-decode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("blob.bin");
        std::fs::write(&p, sample().to_bytes()).unwrap();
        let text = decode(&p).unwrap();
        assert!(text.contains("LVT LINT0   0x00000700  vector=0x00 mode=ExtINT masked=no"));
        assert!(decode(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
