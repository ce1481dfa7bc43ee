//! `vlapic-vmm` command-line entry point.

use vlapic_vmm::args::{self, Command};

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
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
    match vlapic_vmm::run(&cfg, None) {
        Ok(status) => std::process::exit(status),
        Err(e) => {
            eprintln!("vlapic-vmm: {e}");
            std::process::exit(vlapic_vmm::EXIT_ERROR);
        }
    }
}
