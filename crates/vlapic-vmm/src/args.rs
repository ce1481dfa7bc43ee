//! Command-line parsing (hand written, no dependencies).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};

/// Who emulates the local APIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqchipMode {
    /// KVM's in-kernel LAPIC (and PIC/IOAPIC) via `KVM_CREATE_IRQCHIP`.
    Kernel,
    /// The LAPIC is emulated in userspace by `vlapic`
    /// ([`crate::vlapic_backend::VlapicBackend`]).
    User,
    /// Userspace, with the minimal [`crate::lapic_backend::StubLapic`]
    /// (plumbing tests only: no timer, no NMI).
    Stub,
    /// KVM's in-kernel LAPIC with this VMM's IOAPIC
    /// (`KVM_CAP_SPLIT_IRQCHIP`).
    Split,
}

impl IrqchipMode {
    /// Whether the LAPIC lives in userspace (no in-kernel LAPIC).
    pub fn is_userspace(self) -> bool {
        matches!(self, IrqchipMode::User | IrqchipMode::Stub)
    }

    /// Whether the IOAPIC is this VMM's (`vioapic`): user and split.
    pub fn has_user_ioapic(self) -> bool {
        matches!(self, IrqchipMode::User | IrqchipMode::Split)
    }
}

/// Where the 16550 serial port's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialOut {
    /// The VMM's standard output.
    Stdout,
    /// A file (created or truncated).
    File(PathBuf),
    /// Discarded.
    None,
}

/// How the kernel image is interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// Multiboot v1 if a multiboot header is found, else ELF64 (long mode).
    Auto,
    /// ELF64, entered in 64-bit long mode.
    Elf,
    /// Multiboot v1, entered in 32-bit protected mode.
    Multiboot,
    /// Flat binary, entered in real mode at the load address.
    Flat,
}

/// The complete VM configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Kernel image path.
    pub kernel: PathBuf,
    /// Image format.
    pub format: KernelFormat,
    /// Load (and entry) address for flat binaries.
    pub flat_addr: u64,
    /// Guest RAM in MiB.
    pub memory_mib: u64,
    /// Number of vCPUs.
    pub cpus: u32,
    /// In-kernel or userspace LAPIC.
    pub irqchip: IrqchipMode,
    /// Serial output.
    pub serial: SerialOut,
    /// Log every exit to stderr.
    pub trace: bool,
    /// Print exit statistics to stderr at the end.
    pub stats: bool,
    /// Time each exit's userspace work and the LAPIC backend's share,
    /// per guest-marked phase ([`crate::profile`]); report to stderr.
    pub profile: bool,
    /// Offer x2APIC in CPUID.1:ECX bit 21.
    pub x2apic: bool,
    /// Offer the TSC-deadline timer in CPUID.1:ECX bit 24.
    pub tsc_deadline: bool,
    /// Multiboot command line.
    pub cmdline: String,
    /// Stop the VM after this long (exit status [`crate::EXIT_TIMEOUT`]).
    pub timeout: Option<Duration>,
    /// Version of this VMM's IOAPIC (user and split modes); 0x20 (with
    /// the EOI register) also makes the LAPIC offer suppress-EOI-broadcast.
    pub ioapic_version: vioapic::IoApicVersion,
    /// Move the running guest to the other LAPIC (kernel <-> user) after
    /// this long ([`crate::migrate`]).
    pub switch_after: Option<Duration>,
    /// Then switch back (and on, alternating) this long after each switch.
    pub switch_back_after: Option<Duration>,
    /// Number of switches (default 1, or 2 with `switch_back_after`).
    pub switches: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            kernel: PathBuf::new(),
            format: KernelFormat::Auto,
            flat_addr: 0x7c00,
            memory_mib: 64,
            cpus: 1,
            irqchip: IrqchipMode::User,
            serial: SerialOut::Stdout,
            trace: false,
            stats: false,
            profile: false,
            x2apic: true,
            tsc_deadline: true,
            cmdline: String::new(),
            timeout: None,
            ioapic_version: vioapic::IoApicVersion::V20,
            switch_after: None,
            switch_back_after: None,
            switches: 0,
        }
    }
}

/// Usage text printed by `--help`.
pub const USAGE: &str = "\
usage: vlapic-vmm --kernel PATH [options]
       vlapic-vmm conformance [options]   (LAPIC conformance suite, see conformance --help)
       vlapic-vmm decode FILE   (print a saved kvm_lapic_state: 1024 bytes or hex text)
       vlapic-vmm bench [options]   (APIC microbenchmarks, user vs kernel, see bench --help)

  --kernel PATH            guest image (ELF64, multiboot v1 or flat binary)
  --format auto|elf|multiboot|flat   image format (default auto)
  --flat-addr ADDR         load/entry address of a flat binary (default 0x7c00)
  --memory MIB             guest RAM in MiB (default 64)
  --cpus N                 number of vCPUs (default 1, max 255)
  --irqchip kernel|user|split|stub   KVM in-kernel LAPIC and IOAPIC,
                           userspace vlapic LAPIC + vioapic IOAPIC (default
                           user), KVM's LAPIC with the vioapic IOAPIC
                           (split), or the minimal stub LAPIC
  --ioapic-version 0x11|0x20   IOAPIC version for user/split (default 0x20:
                           EOI register, LAPIC suppress-EOI-broadcast offered)
  --serial stdout|file:PATH|none   COM1 output (default stdout)
  --x2apic on|off          offer x2APIC in CPUID (default on)
  --tsc-deadline on|off    offer the TSC-deadline timer in CPUID (default on)
  --cmdline STRING         multiboot command line
  --timeout SECONDS        stop the guest after this long (exit status 124)
  --trace                  log every VM exit to stderr
  --stats                  print exit counts to stderr at the end
  --profile                time userspace exit handling and the LAPIC's share,
                           per phase marked by the guest on port 0x5b0
                           (PROFILE: lines on stderr at the end)
  --switch-irqchip-after MS   start with --irqchip kernel|user and move the
                           running guest to the other LAPIC after MS ms (a
                           new VM in this process: memory, CPU and LAPIC state
                           move; no IOAPIC in this mode; port 0x5c0 reads
                           switches done | planned << 16)
  --switch-back-after MS   switch back MS ms after each switch
  --switches N             number of switches (default 1, 2 with
                           --switch-back-after)
  --help                   this text

Exit status: (v << 1) | 1 when the guest writes v to port 0xf4
(isa-debug-exit), 0 when the guest shuts down cleanly, 124 on timeout,
2 on a VMM or guest error (triple fault, emulation failure, ...).";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run a VM.
    Run(Box<Config>),
    /// Print usage.
    Help,
}

fn parse_u64(flag: &str, v: &str) -> Result<u64> {
    let r = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else {
        v.parse::<u64>()
    };
    r.map_err(|_| Error::Args(format!("{flag}: not a number: {v:?}")))
}

fn parse_onoff(flag: &str, v: &str) -> Result<bool> {
    match v {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        _ => Err(Error::Args(format!("{flag}: expected on|off, got {v:?}"))),
    }
}

/// Parses the arguments (without the program name).
pub fn parse<I, S>(args: I) -> Result<Command>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut cfg = Config::default();
    let mut kernel = None;
    let mut it = args.into_iter().map(Into::into);
    while let Some(arg) = it.next() {
        // Accept both "--flag value" and "--flag=value".
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let value = |it: &mut dyn Iterator<Item = String>| -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .ok_or_else(|| Error::Args(format!("{flag} needs a value"))),
            }
        };
        match flag.as_str() {
            "--help" | "-h" => return Ok(Command::Help),
            "--kernel" => kernel = Some(PathBuf::from(value(&mut it)?)),
            "--format" => {
                cfg.format = match value(&mut it)?.as_str() {
                    "auto" => KernelFormat::Auto,
                    "elf" => KernelFormat::Elf,
                    "multiboot" => KernelFormat::Multiboot,
                    "flat" => KernelFormat::Flat,
                    v => return Err(Error::Args(format!("--format: unknown format {v:?}"))),
                }
            }
            "--flat-addr" => {
                let a = parse_u64("--flat-addr", &value(&mut it)?)?;
                if a >= 0x10_0000 {
                    return Err(Error::Args("--flat-addr must be below 1 MiB".into()));
                }
                cfg.flat_addr = a;
            }
            "--memory" => {
                let m = parse_u64("--memory", &value(&mut it)?)?;
                if !(2..=65536).contains(&m) {
                    return Err(Error::Args("--memory must be 2..=65536 MiB".into()));
                }
                cfg.memory_mib = m;
            }
            "--cpus" => {
                let n = parse_u64("--cpus", &value(&mut it)?)?;
                if !(1..=255).contains(&n) {
                    return Err(Error::Args("--cpus must be 1..=255".into()));
                }
                cfg.cpus = n as u32;
            }
            "--irqchip" => {
                cfg.irqchip = match value(&mut it)?.as_str() {
                    "kernel" => IrqchipMode::Kernel,
                    "user" => IrqchipMode::User,
                    "stub" => IrqchipMode::Stub,
                    "split" => IrqchipMode::Split,
                    v => {
                        return Err(Error::Args(format!(
                            "--irqchip: expected kernel|user|split|stub, got {v:?}"
                        )))
                    }
                }
            }
            "--ioapic-version" => {
                cfg.ioapic_version = match parse_u64("--ioapic-version", &value(&mut it)?)? {
                    0x11 => vioapic::IoApicVersion::V11,
                    0x20 => vioapic::IoApicVersion::V20,
                    v => {
                        return Err(Error::Args(format!(
                            "--ioapic-version: expected 0x11 or 0x20, got {v:#x}"
                        )))
                    }
                }
            }
            "--serial" => {
                let v = value(&mut it)?;
                cfg.serial = match v.as_str() {
                    "stdout" => SerialOut::Stdout,
                    "none" => SerialOut::None,
                    _ => match v.strip_prefix("file:") {
                        Some(p) if !p.is_empty() => SerialOut::File(PathBuf::from(p)),
                        _ => {
                            return Err(Error::Args(format!(
                                "--serial: expected stdout|file:PATH|none, got {v:?}"
                            )))
                        }
                    },
                }
            }
            "--x2apic" => cfg.x2apic = parse_onoff("--x2apic", &value(&mut it)?)?,
            "--tsc-deadline" => cfg.tsc_deadline = parse_onoff("--tsc-deadline", &value(&mut it)?)?,
            "--cmdline" => cfg.cmdline = value(&mut it)?,
            "--timeout" => {
                let v = value(&mut it)?;
                let secs: f64 = v
                    .parse()
                    .map_err(|_| Error::Args(format!("--timeout: not a number: {v:?}")))?;
                if !(secs > 0.0 && secs < 1e7) {
                    return Err(Error::Args("--timeout must be positive".into()));
                }
                cfg.timeout = Some(Duration::from_secs_f64(secs));
            }
            "--switch-irqchip-after" => {
                cfg.switch_after = Some(Duration::from_millis(parse_u64(
                    "--switch-irqchip-after",
                    &value(&mut it)?,
                )?))
            }
            "--switch-back-after" => {
                cfg.switch_back_after = Some(Duration::from_millis(parse_u64(
                    "--switch-back-after",
                    &value(&mut it)?,
                )?))
            }
            "--switches" => {
                let n = parse_u64("--switches", &value(&mut it)?)?;
                if !(1..=1000).contains(&n) {
                    return Err(Error::Args("--switches must be 1..=1000".into()));
                }
                cfg.switches = n as u32;
            }
            "--trace" => cfg.trace = true,
            "--stats" => cfg.stats = true,
            "--profile" => cfg.profile = true,
            _ => {
                return Err(Error::Args(format!(
                    "unknown argument {arg:?} (see --help)"
                )))
            }
        }
    }
    cfg.kernel = kernel.ok_or_else(|| Error::Args("--kernel PATH is required".into()))?;
    if cfg.switches == 0 {
        cfg.switches = if cfg.switch_back_after.is_some() {
            2
        } else {
            1
        };
    }
    if cfg.switch_after.is_none() && (cfg.switch_back_after.is_some() || cfg.switches > 1) {
        return Err(Error::Args(
            "--switch-back-after / --switches need --switch-irqchip-after".into(),
        ));
    }
    Ok(Command::Run(Box::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config> {
        match parse(args.iter().copied())? {
            Command::Run(c) => Ok(*c),
            Command::Help => panic!("help"),
        }
    }

    #[test]
    fn defaults() {
        let c = run(&["--kernel", "k.elf"]).unwrap();
        assert_eq!(c.kernel, PathBuf::from("k.elf"));
        assert_eq!(c.memory_mib, 64);
        assert_eq!(c.cpus, 1);
        assert_eq!(c.irqchip, IrqchipMode::User);
        assert_eq!(c.serial, SerialOut::Stdout);
        assert!(c.x2apic && c.tsc_deadline && !c.trace);
        assert_eq!(c.ioapic_version, vioapic::IoApicVersion::V20);
        let c = run(&[
            "--kernel",
            "k",
            "--irqchip",
            "split",
            "--ioapic-version",
            "0x11",
        ])
        .unwrap();
        assert_eq!(c.irqchip, IrqchipMode::Split);
        assert_eq!(c.ioapic_version, vioapic::IoApicVersion::V11);
    }

    #[test]
    fn all_flags() {
        let c = run(&[
            "--kernel=a",
            "--memory",
            "128",
            "--cpus",
            "4",
            "--irqchip",
            "kernel",
            "--serial",
            "file:/tmp/x",
            "--x2apic",
            "off",
            "--tsc-deadline=off",
            "--trace",
            "--stats",
            "--cmdline",
            "a b",
            "--timeout",
            "1.5",
            "--format",
            "flat",
            "--flat-addr",
            "0x8000",
        ])
        .unwrap();
        assert_eq!(c.memory_mib, 128);
        assert_eq!(c.cpus, 4);
        assert_eq!(c.irqchip, IrqchipMode::Kernel);
        assert_eq!(c.serial, SerialOut::File("/tmp/x".into()));
        assert!(!c.x2apic && !c.tsc_deadline && c.trace && c.stats);
        assert_eq!(c.cmdline, "a b");
        assert_eq!(c.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(c.format, KernelFormat::Flat);
        assert_eq!(c.flat_addr, 0x8000);
    }

    #[test]
    fn switch_flags() {
        let c = run(&["--kernel", "k", "--switch-irqchip-after", "500"]).unwrap();
        assert_eq!(c.switch_after, Some(Duration::from_millis(500)));
        assert_eq!((c.switch_back_after, c.switches), (None, 1));
        let c = run(&[
            "--kernel",
            "k",
            "--switch-irqchip-after=10",
            "--switch-back-after",
            "20",
        ])
        .unwrap();
        assert_eq!(c.switch_back_after, Some(Duration::from_millis(20)));
        assert_eq!(c.switches, 2);
        let c = run(&[
            "--kernel",
            "k",
            "--switch-irqchip-after=1",
            "--switches",
            "7",
        ])
        .unwrap();
        assert_eq!(c.switches, 7);
        assert!(run(&["--kernel", "k", "--switch-back-after", "20"]).is_err());
        assert!(run(&["--kernel", "k", "--switches", "3"]).is_err());
        assert!(run(&[
            "--kernel",
            "k",
            "--switch-irqchip-after=1",
            "--switches",
            "0"
        ])
        .is_err());
        assert_eq!(run(&["--kernel", "k"]).unwrap().switch_after, None);
    }

    #[test]
    fn errors() {
        assert!(run(&[]).is_err());
        assert!(run(&["--kernel"]).is_err());
        assert!(run(&["--kernel", "k", "--cpus", "0"]).is_err());
        assert!(run(&["--kernel", "k", "--cpus", "x"]).is_err());
        assert!(run(&["--kernel", "k", "--irqchip", "splat"]).is_err());
        assert!(run(&["--kernel", "k", "--ioapic-version", "0x12"]).is_err());
        assert!(run(&["--kernel", "k", "--serial", "file:"]).is_err());
        assert!(run(&["--kernel", "k", "--bogus"]).is_err());
        assert!(run(&["--kernel", "k", "--x2apic", "maybe"]).is_err());
        assert!(run(&["--kernel", "k", "--timeout", "-1"]).is_err());
        assert_eq!(parse(["--help"]).unwrap(), Command::Help);
    }
}
