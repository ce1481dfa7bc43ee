//! VM creation and the top-level run function.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_enable_cap, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{
    Cap, Kvm, MsrExitReason, MsrFilterDefaultAction, MsrFilterRange, MsrFilterRangeFlags, VmFd,
};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

use crate::args::{Config, IrqchipMode, SerialOut};
use crate::boot;
use crate::control::{install_kick_handler, Clock, TimerService, VcpuControl};
use crate::cpuid::{self, CpuidParams};
use crate::devices::fw_cfg::FwCfg;
use crate::devices::ioapic::{IoApicDevice, IoApicSink, IrqLines, Lines, IOAPIC_PINS};
use crate::devices::serial::new_serial_with_irq;
use crate::devices::IoBus;
use crate::error::{kvm, Error, Result};
use crate::lapic_backend::{
    BackendContext, BackendFactory, GuestTsc, StubLapic, MSR_APIC_BASE, MSR_TSC_DEADLINE,
};
use crate::layout;
use crate::loader;
use crate::vcpu::{VcpuStats, VcpuThread};
use crate::vlapic_backend::{EoiHook, VlapicBackend};

/// Process exit status on `--timeout`.
pub const EXIT_TIMEOUT: i32 = 124;
/// LAPIC timer frequency KVM's in-kernel LAPIC uses (1 GHz bus).
pub const APIC_BUS_KHZ: u32 = 1_000_000;

/// How the VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit the VMM with this status (debug-exit, clean shutdown, timeout).
    Exit(i32),
    /// A fatal guest or VMM condition (triple fault, emulation failure...).
    Error(String),
}

/// State shared by all vCPU threads.
pub struct VmShared {
    /// Port-I/O devices.
    pub bus: IoBus,
    /// Guest memory (for error reports).
    pub mem: GuestMemoryMmap,
    /// The VM clock.
    pub clock: Clock,
    /// LAPIC owner.
    pub irqchip: IrqchipMode,
    /// Log every exit.
    pub trace: bool,
    /// Timer service (userspace LAPIC only).
    pub timers: Option<Arc<TimerService>>,
    /// All vCPU control blocks.
    pub vcpus: Arc<Vec<Arc<VcpuControl>>>,
    /// This VMM's IOAPIC (`--irqchip user` with the vlapic backend, and
    /// `--irqchip split`).
    pub ioapic: Option<Arc<IoApicDevice>>,
    pub(crate) outcome: Mutex<(Option<Outcome>, usize)>,
    pub(crate) done: Condvar,
}

impl VmShared {
    /// Records how the VM ended (first caller wins) and stops all vCPUs.
    pub fn finish(&self, o: Outcome) {
        {
            let mut g = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
            if g.0.is_none() {
                g.0 = Some(o);
            }
        }
        self.done.notify_all();
        for v in self.vcpus.iter() {
            v.stop();
        }
    }

    /// Waits up to `timeout` for every vCPU thread to report its exit,
    /// stopping them again while waiting (a stop can race a thread that
    /// was about to enter the guest). Returns whether all exited.
    pub(crate) fn wait_threads_exited(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.outcome.lock().unwrap_or_else(|e| e.into_inner());
        while g.1 > 0 && Instant::now() < deadline {
            g = self
                .done
                .wait_timeout(g, Duration::from_millis(50))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            for v in self.vcpus.iter() {
                v.stop();
            }
        }
        g.1 == 0
    }

    pub(crate) fn thread_exited(&self) {
        self.outcome.lock().unwrap_or_else(|e| e.into_inner()).1 -= 1;
        self.done.notify_all();
    }
}

/// Runs a vCPU thread. A panic (a LAPIC model bug hit by guest input) ends
/// the VM with an error: unwinding past `thread_exited` would leave the VMM
/// waiting forever for this vCPU.
pub(crate) fn spawn_vcpu(
    i: u32,
    t: VcpuThread,
    shared: &Arc<VmShared>,
    ctl: Arc<VcpuControl>,
) -> Result<std::thread::JoinHandle<VcpuStats>> {
    let sh = shared.clone();
    std::thread::Builder::new()
        .name(format!("vcpu{i}"))
        .spawn(move || {
            let stats = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.run()))
                .unwrap_or_else(|p| {
                    ctl.unbind_thread();
                    let msg = p
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| p.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "(no message)".into());
                    sh.finish(Outcome::Error(format!("vCPU {i}: panic: {msg}")));
                    VcpuStats::default()
                });
            sh.thread_exited();
            stats
        })
        .map_err(|e| Error::Io("spawning a vCPU thread".into(), e))
}

pub(crate) fn open_serial(s: &SerialOut) -> Result<Box<dyn Write + Send>> {
    Ok(match s {
        SerialOut::Stdout => Box::new(std::io::stdout()),
        SerialOut::None => Box::new(std::io::sink()),
        SerialOut::File(p) => Box::new(
            File::create(p)
                .map_err(|e| Error::Io(format!("creating serial file {}", p.display()), e))?,
        ),
    })
}

/// Environment variable naming another KVM device node (tests use it to
/// exercise the "no KVM" path).
pub const KVM_DEVICE_ENV: &str = "VLAPIC_KVM_DEVICE";

/// Opens `/dev/kvm` (or `$VLAPIC_KVM_DEVICE`) with a clear error.
pub fn open_kvm() -> Result<Kvm> {
    let path = std::env::var(KVM_DEVICE_ENV).unwrap_or_else(|_| "/dev/kvm".to_string());
    let cpath = std::ffi::CString::new(path.clone())
        .map_err(|_| Error::NoKvm(format!("invalid device path {path:?}")))?;
    Kvm::new_with_path(cpath).map_err(|e| {
        let why = match e.errno() {
            libc::ENOENT => format!("{path} does not exist (no KVM on this machine)"),
            libc::EACCES | libc::EPERM => format!("permission denied opening {path}"),
            _ => format!("cannot open {path}: {e}"),
        };
        Error::NoKvm(why)
    })
}

pub(crate) fn setup_memory(vm: &VmFd, mem: &GuestMemoryMmap) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| Error::Memory(format!("{e}")))?;
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the region outlives the VM (both live until run() returns
        // and the VM fd is dropped first: `vm` is declared after `mem`).
        unsafe { vm.set_user_memory_region(r) }.map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// Userspace-LAPIC KVM plumbing: no irqchip; LAPIC MSRs exit to userspace
/// (x2APIC MSRs because KVM refuses them with reason INVAL; APIC_BASE and
/// TSC_DEADLINE because an MSR filter denies them, reason FILTER).
pub fn setup_userspace_lapic(vm: &VmFd) -> Result<()> {
    let mut cap = kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_X86_USER_SPACE_MSR,
        ..Default::default()
    };
    cap.args[0] = u64::from((MsrExitReason::Inval | MsrExitReason::Filter).bits());
    vm.enable_cap(&cap)
        .map_err(kvm("enabling KVM_CAP_X86_USER_SPACE_MSR"))?;
    let deny = [0u8; 1];
    let ranges = [
        MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base: MSR_APIC_BASE,
            msr_count: 1,
            bitmap: &deny,
        },
        MsrFilterRange {
            flags: MsrFilterRangeFlags::READ | MsrFilterRangeFlags::WRITE,
            base: MSR_TSC_DEADLINE,
            msr_count: 1,
            bitmap: &deny,
        },
    ];
    vm.set_msr_filter(MsrFilterDefaultAction::ALLOW, &ranges)
        .map_err(kvm("KVM_X86_SET_MSR_FILTER"))?;
    Ok(())
}

/// `KVM_CAP_X2APIC_API` flags (Linux 6.18+, not in kvm-bindings 0.14):
/// make the in-kernel LAPIC offer and honour suppress-EOI-broadcast, or
/// neither (without either, KVM offers it with a split irqchip but still
/// exits with `KVM_EXIT_IOAPIC_EOI` on a directed EOI).
pub const KVM_X2APIC_ENABLE_SUPPRESS_EOI_BROADCAST: u64 = 1 << 2;
/// See [`KVM_X2APIC_ENABLE_SUPPRESS_EOI_BROADCAST`].
pub const KVM_X2APIC_DISABLE_SUPPRESS_EOI_BROADCAST: u64 = 1 << 3;

/// Split irqchip: KVM's LAPICs, no in-kernel PIC/IOAPIC, `pins` GSIs
/// reserved for this VMM's IOAPIC (their MSI routes tell KVM which EOIs to
/// forward as `KVM_EXIT_IOAPIC_EOI`). Suppress-EOI-broadcast is offered
/// only with an IOAPIC that has an EOI register, when KVM can control it.
pub fn setup_split_irqchip(
    kvm_sys: &Kvm,
    vm: &VmFd,
    pins: u8,
    version: vioapic::IoApicVersion,
    trace: bool,
) -> Result<()> {
    let mut cap = kvm_enable_cap {
        cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = u64::from(pins);
    vm.enable_cap(&cap)
        .map_err(kvm("enabling KVM_CAP_SPLIT_IRQCHIP"))?;
    let x2api = kvm_sys.check_extension_raw(u64::from(kvm_bindings::KVM_CAP_X2APIC_API)) as u64;
    let flag = if version.has_eoi_register() {
        KVM_X2APIC_ENABLE_SUPPRESS_EOI_BROADCAST
    } else {
        KVM_X2APIC_DISABLE_SUPPRESS_EOI_BROADCAST
    };
    if x2api & flag != 0 {
        let mut cap = kvm_enable_cap {
            cap: kvm_bindings::KVM_CAP_X2APIC_API,
            ..Default::default()
        };
        cap.args[0] = flag;
        vm.enable_cap(&cap)
            .map_err(kvm("enabling KVM_CAP_X2APIC_API (suppress EOI broadcast)"))?;
    } else if trace {
        eprintln!("vlapic-vmm: KVM cannot control suppress-EOI-broadcast (X2APIC_API {x2api:#x})");
    }
    Ok(())
}

/// Prints `log` records (vlapic's rejected-access messages, at debug
/// level) to stderr with `--trace`.
struct TraceLogger;

impl TraceLogger {
    fn install() {
        static LOGGER: TraceLogger = TraceLogger;
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Debug);
        }
    }
}

impl log::Log for TraceLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Debug
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("[{}] {}: {}", r.target(), r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

/// Samples a vCPU's guest TSC (MSR 0x10, `KVM_GET_MSRS`) against the
/// clock: the ioctl is bracketed by clock reads and the middle is taken,
/// from the tightest of 8 tries (the first ioctl on a new vCPU is slow).
/// A guest check (`hello`, TSC-deadline) confirms that guest RDTSC agrees
/// with `value + (now - at_ns) * tsc_khz / 10^6` within a few us.
pub fn sample_guest_tsc(vcpu: &kvm_ioctls::VcpuFd, clock: &Clock) -> Result<GuestTsc> {
    let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
        index: 0x10,
        ..Default::default()
    }])
    .map_err(|e| Error::Memory(format!("MSR list: {e:?}")))?;
    let mut best: Option<(u64, GuestTsc)> = None;
    for _ in 0..8 {
        let t0 = clock.now_ns();
        let n = vcpu
            .get_msrs(&mut msrs)
            .map_err(kvm("KVM_GET_MSRS(IA32_TSC)"))?;
        let t1 = clock.now_ns();
        if n != 1 {
            return Err(Error::Memory("KVM_GET_MSRS(IA32_TSC) read nothing".into()));
        }
        let width = t1 - t0;
        let sample = GuestTsc {
            at_ns: t0 + width / 2,
            value: msrs.as_slice()[0].data,
        };
        if best.map_or(true, |(w, _)| width < w) {
            best = Some((width, sample));
        }
    }
    Ok(best.map_or(GuestTsc::default(), |b| b.1))
}

/// Runs the VM described by `cfg` until it ends; returns the process exit
/// status. With `--irqchip user`, the LAPIC of each vCPU comes from
/// `factory` (default: [`StubLapic`], which only knows self-IPIs).
pub fn run(cfg: &Config, factory: Option<BackendFactory>) -> Result<i32> {
    let image = std::fs::read(&cfg.kernel)
        .map_err(|e| Error::Image(format!("cannot read {}: {e}", cfg.kernel.display())))?;
    let ram = cfg.memory_mib << 20;
    let mem = layout::create_memory(ram)?;
    let entry = loader::load_kernel(&mem, &image, cfg.format, cfg.flat_addr, ram, &cfg.cmdline)?;
    boot::write_gdt(&mem)?;
    boot::write_page_tables(&mem)?;

    if cfg.trace {
        TraceLogger::install();
    }
    let kvm_sys = open_kvm()?;
    install_kick_handler()
        .map_err(|e| Error::Io("installing the kick signal handler".into(), e))?;
    let vm = Arc::new(kvm_sys.create_vm().map_err(kvm("KVM_CREATE_VM"))?);
    setup_memory(&vm, &mem)?;
    if let Err(e) = vm.set_tss_address(0xfffb_d000) {
        if cfg.trace {
            eprintln!("vlapic-vmm: KVM_SET_TSS_ADDR: {e} (ignored)");
        }
    }
    match cfg.irqchip {
        IrqchipMode::Kernel | IrqchipMode::Split => {
            if cfg.irqchip == IrqchipMode::Kernel {
                vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
            } else {
                setup_split_irqchip(&kvm_sys, &vm, IOAPIC_PINS, cfg.ioapic_version, cfg.trace)?;
            }
            if cfg.tsc_deadline && !kvm_sys.check_extension(Cap::TscDeadlineTimer) {
                eprintln!(
                    "vlapic-vmm: warning: KVM has no TSC-deadline timer; CPUID offers it anyway"
                );
            }
        }
        IrqchipMode::User | IrqchipMode::Stub => {
            setup_userspace_lapic(&vm)?;
            if factory.is_none() && cfg.irqchip == IrqchipMode::Stub {
                eprintln!(
                    "vlapic-vmm: using the minimal stub LAPIC (IPIs, INIT/SIPI; no timer, no NMI)"
                );
            }
        }
    }
    let supported = kvm_sys
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;

    let clock = Clock::new();
    let controls = VcpuControl::for_vcpus(cfg.cpus);
    // The IOAPIC: ours (user mode with the vlapic backend: into its
    // fabric; split: KVM_SIGNAL_MSI), or KVM's (kernel mode).
    let custom_factory = factory.is_some();
    let mut fabric = None;
    let ioapic = match cfg.irqchip {
        IrqchipMode::User if !custom_factory => {
            let f = VlapicBackend::fabric_for(controls.clone());
            fabric = Some(f.clone());
            Some(Arc::new(IoApicDevice::new(
                cfg.ioapic_version,
                IoApicSink::Fabric(f),
                cfg.trace,
            )))
        }
        IrqchipMode::Split => Some(Arc::new(IoApicDevice::new(
            cfg.ioapic_version,
            IoApicSink::Kvm(vm.clone()),
            cfg.trace,
        ))),
        _ => None,
    };
    let lines = match (&ioapic, cfg.irqchip) {
        (Some(io), _) => Some(Arc::new(Lines::new(IrqLines::IoApic(io.clone())))),
        (None, IrqchipMode::Kernel) => Some(Arc::new(Lines::new(IrqLines::Kvm(vm.clone())))),
        _ => None,
    };
    let factory = factory.unwrap_or_else(|| match (cfg.irqchip, &fabric, &ioapic) {
        (IrqchipMode::Stub, _, _) => StubLapic::factory(),
        (_, Some(f), Some(io)) => {
            let io = io.clone();
            let hook: EoiHook = Arc::new(move |_cpu, vector| io.eoi(vector));
            VlapicBackend::factory_with(
                f.clone(),
                Some(hook),
                cfg.ioapic_version.has_eoi_register(),
            )
        }
        _ => VlapicBackend::factory(),
    });
    // `--profile`: time the backend's calls (a no-op when off).
    let factory = crate::profile::wrap(factory);
    let timers = cfg
        .irqchip
        .is_userspace()
        .then(|| TimerService::start(clock, controls.to_vec()));
    let phys_bits = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(46, |e| (e.eax & 0xff) as u8);
    let mut bus = IoBus::new(
        new_serial_with_irq(open_serial(&cfg.serial)?, lines.clone()),
        FwCfg::new(ram, cfg.cpus as u16),
    );
    if let Some(l) = &lines {
        bus = bus.with_irq_test_port(l.clone());
    }
    let shared = Arc::new(VmShared {
        bus,
        mem: mem.clone(),
        clock,
        irqchip: cfg.irqchip,
        trace: cfg.trace,
        timers: timers.clone(),
        vcpus: controls.clone(),
        ioapic: ioapic.clone(),
        outcome: Mutex::new((None, cfg.cpus as usize)),
        done: Condvar::new(),
    });

    let mut tsc_khz = 0;
    let mut threads = Vec::new();
    for i in 0..cfg.cpus {
        let vcpu = vm
            .create_vcpu(u64::from(i))
            .map_err(kvm("KVM_CREATE_VCPU"))?;
        if i == 0 {
            tsc_khz = vcpu
                .get_tsc_khz()
                .unwrap_or_else(|_| cpuid::measure_tsc_khz());
        }
        let mut entries = supported.as_slice().to_vec();
        cpuid::adjust(
            &mut entries,
            &CpuidParams {
                apic_id: i,
                cpus: cfg.cpus,
                x2apic: cfg.x2apic,
                tsc_deadline: cfg.tsc_deadline,
                tsc_khz,
                apic_bus_khz: APIC_BUS_KHZ,
            },
        );
        let cpuid = kvm_bindings::CpuId::from_entries(&entries)
            .map_err(|e| Error::Memory(format!("CPUID table: {e:?}")))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        let initial = if i == 0 {
            let base = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
            Some(boot::entry_state(entry, &base, i, cfg.cpus, ram))
        } else {
            None
        };
        let guest_tsc = if cfg.irqchip.is_userspace() {
            sample_guest_tsc(&vcpu, &clock)?
        } else {
            GuestTsc::default()
        };
        let lapic = cfg.irqchip.is_userspace().then(|| {
            factory(&BackendContext {
                cpu: i,
                apic_id: i,
                bsp: i == 0,
                cpus: cfg.cpus,
                x2apic: cfg.x2apic,
                tsc_deadline: cfg.tsc_deadline,
                tsc_khz,
                guest_tsc,
                apic_bus_khz: APIC_BUS_KHZ,
                phys_bits,
                trace: cfg.trace,
                vcpus: controls.clone(),
                clock,
            })
        });
        let t = VcpuThread::new(
            i,
            vcpu,
            controls[i as usize].clone(),
            shared.clone(),
            lapic,
            initial,
        );
        let h = spawn_vcpu(i, t, &shared, controls[i as usize].clone())?;
        threads.push(h);
    }
    if cfg.trace {
        eprintln!(
            "vlapic-vmm: {} vCPU(s), {} MiB, irqchip {:?}, entry {entry:x?}, TSC {tsc_khz} kHz",
            cfg.cpus, cfg.memory_mib, cfg.irqchip
        );
    }

    // Wait for the outcome (or the timeout).
    let started = Instant::now();
    let outcome = {
        let mut g = shared.outcome.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(o) = g.0.clone() {
                break o;
            }
            if g.1 == 0 {
                break Outcome::Error("all vCPU threads ended without an outcome".into());
            }
            match cfg.timeout {
                None => g = shared.done.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(t) => {
                    let el = started.elapsed();
                    if el >= t {
                        eprintln!("vlapic-vmm: timeout after {:.1}s", t.as_secs_f64());
                        break Outcome::Exit(EXIT_TIMEOUT);
                    }
                    g = shared
                        .done
                        .wait_timeout(g, t - el)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    };
    let elapsed = started.elapsed();
    shared.finish(outcome.clone());
    if let Some(t) = &timers {
        t.shutdown();
    }
    // Give the vCPU threads a moment to leave KVM_RUN; don't hang on one.
    let all_exited = shared.wait_threads_exited(Duration::from_secs(2));
    // A thread that reported its exit is about to finish: join it. One
    // stuck in the kernel is left behind (the process exits anyway).
    let stats: Vec<Option<VcpuStats>> = threads
        .into_iter()
        .map(|h| {
            if all_exited || h.is_finished() {
                h.join().ok()
            } else {
                None
            }
        })
        .collect();
    shared.bus.flush();
    if cfg.stats {
        eprintln!("vlapic-vmm: guest ran {:.3} s", elapsed.as_secs_f64());
        for (i, s) in stats.iter().enumerate() {
            if let Some(s) = s {
                let per = if s.runs > 0 {
                    s.in_run.as_micros() as f64 / s.runs as f64
                } else {
                    0.0
                };
                eprintln!(
                    "vlapic-vmm: vcpu{i}: {} KVM_RUNs ({per:.1} us avg in KVM_RUN), {} injected, {} NMIs, {} kicks, {} parks ({:.3} s parked), exits {:?}",
                    s.runs,
                    s.injected,
                    s.nmis,
                    controls[i].kicks(),
                    s.parks,
                    s.parked.as_secs_f64(),
                    s.exits
                );
                if let Some(l) = &s.lapic {
                    eprintln!("vlapic-vmm: vcpu{i}: {l}");
                }
                if let Some(l) = &s.lapic_vm {
                    eprintln!("vlapic-vmm: {l}");
                }
            }
        }
        if let Some(io) = &ioapic {
            eprintln!("vlapic-vmm: {}", io.report());
        }
        eprintln!(
            "vlapic-vmm: {}",
            crate::summary::line(&stats, &controls, timers.as_deref(), elapsed)
        );
    }
    match outcome {
        Outcome::Exit(s) => Ok(s),
        Outcome::Error(msg) => Err(Error::Guest(msg)),
    }
}
