//! The `klapic-decode` binary: raw and hex input, errors.

use std::process::Command;

use vlapic::Register;
use vlapic_kvm::KvmLapic;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_klapic-decode"))
}

fn sample() -> KvmLapic {
    let mut k = KvmLapic::new();
    k.write(Register::Version, 0x0005_0014);
    k.write(Register::Dfr, 0xFFFF_FFFF);
    k.write(Register::Svr, 0xFF);
    k.write(Register::LvtLint0, 0x700);
    k.write(Register::LvtLint1, 0x10000);
    k
}

#[test]
fn decodes_raw_and_hex_files() {
    let dir = std::env::temp_dir().join(format!("klapic-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("lapic.bin");
    std::fs::write(&raw, sample().to_bytes()).unwrap();
    let hex = dir.join("lapic.hex");
    let text: String = sample()
        .to_bytes()
        .chunks(16)
        .map(|c| c.iter().map(|b| format!("{b:02x} ")).collect::<String>() + "\n")
        .collect();
    std::fs::write(&hex, text).unwrap();
    for p in [&raw, &hex] {
        let out = bin().arg(p).output().unwrap();
        assert!(out.status.success(), "{p:?}: {out:?}");
        let s = String::from_utf8(out.stdout).unwrap();
        assert!(s.contains("LVT LINT0   0x00000700  vector=0x00 mode=ExtINT masked=no trigger=edge polarity=high"), "{s}");
        assert!(s.contains("VERSION     0x00050014"), "{s}");
        assert_eq!(s.lines().count(), 23);
    }
    let bad = dir.join("bad");
    std::fs::write(&bad, b"not a lapic").unwrap();
    let out = bin().arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("klapic-decode"));
    assert_eq!(bin().output().unwrap().status.code(), Some(2));
    std::fs::remove_dir_all(&dir).unwrap();
}
