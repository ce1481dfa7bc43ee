//! `klapic-decode FILE`: prints a saved `kvm_lapic_state` (1024 raw bytes
//! or hex text) as a table, one register per line. `-` reads stdin.

use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path] = args.as_slice() else {
        eprintln!(
            "usage: klapic-decode FILE   (1024-byte kvm_lapic_state or hex text; - for stdin)"
        );
        return ExitCode::from(2);
    };
    let result = if path == "-" {
        let mut buf = Vec::new();
        match std::io::stdin().read_to_end(&mut buf) {
            Ok(_) => vlapic_kvm::parse_blob(&buf).map(|k| k.to_string()),
            Err(e) => Err(e.into()),
        }
    } else {
        vlapic_kvm::decode(std::path::Path::new(path))
    };
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("klapic-decode: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
