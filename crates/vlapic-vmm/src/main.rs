//! `vlapic-vmm` command-line entry point.

use vlapic_vmm::args::{self, Command};

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("decode") {
        std::process::exit(decode(&argv[1..]));
    }
    if argv.first().map(String::as_str) == Some("bench") {
        std::process::exit(vlapic_vmm::bench::main(argv.into_iter().skip(1)));
    }
    if argv.first().map(String::as_str) == Some("conformance") {
        std::process::exit(vlapic_vmm::conformance::main(argv.into_iter().skip(1)));
    }
    let cmd = match args::parse(argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vlapic-vmm: {e}\n\n{}", args::USAGE);
            std::process::exit(vlapic_vmm::EXIT_ERROR);
        }
    };
    let cfg = match cmd {
        Command::Help => {
            println!("{}", args::USAGE);
            return;
        }
        Command::Run(c) => c,
    };
    if cfg.profile {
        vlapic_vmm::profile::enable();
    }
    let r = if cfg.switch_after.is_some() {
        vlapic_vmm::migrate::run(&cfg)
    } else {
        vlapic_vmm::run(&cfg, None)
    };
    if cfg.profile {
        eprint!("{}", vlapic_vmm::profile::report());
    }
    match r {
        Ok(status) => std::process::exit(status),
        Err(e) => {
            eprintln!("vlapic-vmm: {e}");
            std::process::exit(vlapic_vmm::EXIT_ERROR);
        }
    }
}

/// `vlapic-vmm decode FILE`: prints a saved `kvm_lapic_state` (1024 raw
/// bytes or hex text), as `klapic-decode` does.
fn decode(args: &[String]) -> i32 {
    let [path] = args else {
        eprintln!("usage: vlapic-vmm decode FILE   (1024-byte kvm_lapic_state or hex text)");
        return vlapic_vmm::EXIT_ERROR;
    };
    match vlapic_kvm::decode(std::path::Path::new(path)) {
        Ok(text) => {
            println!("{text}");
            0
        }
        Err(e) => {
            eprintln!("vlapic-vmm decode: {path}: {e}");
            1
        }
    }
}
