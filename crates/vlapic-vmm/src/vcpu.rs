//! The vCPU thread: `KVM_RUN` loop, exit dispatch, userspace-LAPIC
//! injection, HLT parking, INIT/SIPI handling.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_fpu, kvm_interrupt, kvm_regs, kvm_run, kvm_sregs};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::ioctl::ioctl_with_ref;

use crate::boot;
use crate::control::{Action, RunState, ThreadRunGuard, VcpuControl, Wake};
use crate::devices::ioapic::IoApicDevice;
use crate::devices::IoEvent;
use crate::lapic_backend::{is_lapic_msr, LapicBackend, APIC_MMIO_SIZE};
use crate::vm::{Outcome, VmShared};

mod ioctls {
    #![allow(missing_docs)]
    use kvm_bindings::{kvm_interrupt, KVMIO};
    vmm_sys_util::ioctl_iow_nr!(KVM_INTERRUPT, KVMIO, 0x86, kvm_interrupt);
}
use ioctls::KVM_INTERRUPT;

/// Injects an external interrupt with `KVM_INTERRUPT` (no in-kernel irqchip).
pub fn inject_interrupt(vcpu: &VcpuFd, vector: u8) -> std::io::Result<()> {
    let irq = kvm_interrupt {
        irq: u32::from(vector),
    };
    // SAFETY: KVM_INTERRUPT reads a kvm_interrupt we own; checked result.
    let r = crate::profile::injecting(|| unsafe { ioctl_with_ref(vcpu, KVM_INTERRUPT(), &irq) });
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Per-vCPU exit statistics.
#[derive(Debug, Default, Clone)]
pub struct VcpuStats {
    /// Exits by kind.
    pub exits: BTreeMap<&'static str, u64>,
    /// `KVM_RUN` calls.
    pub runs: u64,
    /// Time spent inside `KVM_RUN`.
    pub in_run: Duration,
    /// Interrupts injected with `KVM_INTERRUPT`.
    pub injected: u64,
    /// NMIs injected with `KVM_NMI`.
    pub nmis: u64,
    /// Times the vCPU parked (HLT or wait-for-SIPI).
    pub parks: u64,
    /// Time spent parked.
    pub parked: Duration,
    /// The userspace LAPIC's own statistics line.
    pub lapic: Option<String>,
    /// VM-wide LAPIC statistics (vCPU 0 only).
    pub lapic_vm: Option<String>,
    /// Guest input the userspace LAPIC rejected (`vlapic::Stats`).
    pub rejected: Option<vlapic::Stats>,
}

/// Everything a vCPU thread owns.
pub struct VcpuThread {
    /// vCPU index.
    pub index: u32,
    /// The KVM vCPU.
    pub vcpu: VcpuFd,
    /// Its control block.
    pub ctl: Arc<VcpuControl>,
    /// VM-wide shared state.
    pub vm: Arc<VmShared>,
    /// Userspace LAPIC (only with `--irqchip user`).
    pub lapic: Option<Box<dyn LapicBackend>>,
    /// Initial registers (boot CPU); APs start via INIT/SIPI.
    pub initial: Option<(kvm_regs, kvm_sregs)>,
    /// Statistics.
    pub stats: VcpuStats,
    /// Address of the vCPU's `kvm_run` (set on the vCPU thread).
    run_ptr: usize,
    /// CR8 written into `kvm_run` before the last entry.
    entry_cr8: u8,
    /// The deadline last given to the timer service (arming only on a
    /// change saves its lock on every entry; a deadline it already fired
    /// need not be re-armed: the entry's poll ran the timer past it).
    armed: Option<u64>,
    /// The LAPIC is in userspace (else KVM's); changes on an irqchip switch.
    user: bool,
    /// Irqchip switches (`crate::migrate`): where to hand the vCPU over.
    migrate: Option<Arc<crate::migrate::Hub>>,
    /// Parked in HLT (userspace LAPIC) when a pause came.
    halted: bool,
    /// Kind of the last exit (statistics key).
    last_kind: &'static str,
    /// Clock time the last `KVM_RUN` returned.
    last_exit_ns: u64,
}

/// What to do after an exit was decoded (the exit borrows the vCPU).
enum Next {
    Continue,
    Halt,
    Finish(Outcome),
    Fatal(String),
    InternalError,
}

/// What the LAPIC's run state says before an entry.
enum Gate {
    /// Enter the guest.
    Run,
    /// Wait-for-SIPI: do not run, park until woken.
    Wait,
}

impl VcpuThread {
    /// Bundles what a vCPU thread needs; `initial` is the entry state of
    /// the boot CPU (`None` for APs, which start through INIT/SIPI).
    pub fn new(
        index: u32,
        vcpu: VcpuFd,
        ctl: Arc<VcpuControl>,
        vm: Arc<VmShared>,
        lapic: Option<Box<dyn LapicBackend>>,
        initial: Option<(kvm_regs, kvm_sregs)>,
    ) -> Self {
        VcpuThread {
            index,
            vcpu,
            ctl,
            lapic,
            initial,
            stats: VcpuStats::default(),
            run_ptr: 0,
            entry_cr8: 0,
            armed: None,
            user: vm.irqchip.is_userspace(),
            migrate: None,
            halted: false,
            last_kind: "",
            last_exit_ns: 0,
            vm,
        }
    }

    /// Lets the VMM pause this vCPU and replace its KVM vCPU and LAPIC
    /// (irqchip switch, `crate::migrate`) through `hub`.
    pub fn with_migration(mut self, hub: Arc<crate::migrate::Hub>) -> Self {
        self.migrate = Some(hub);
        self
    }

    fn trace(&self, msg: impl FnOnce() -> String) {
        if self.vm.trace {
            eprintln!("[vcpu{}] {}", self.index, msg());
        }
    }

    fn count(&mut self, kind: &'static str) {
        self.last_kind = kind;
        *self.stats.exits.entry(kind).or_insert(0) += 1;
        crate::profile::exit(kind);
    }

    fn set_state(&mut self, (r, s): (kvm_regs, kvm_sregs)) -> Result<(), String> {
        self.vcpu
            .set_sregs(&s)
            .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
        self.vcpu
            .set_regs(&r)
            .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
        let fpu = kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        };
        self.vcpu
            .set_fpu(&fpu)
            .map_err(|e| format!("KVM_SET_FPU: {e}"))?;
        Ok(())
    }

    fn current_sregs(&self) -> Result<kvm_sregs, String> {
        self.vcpu
            .get_sregs()
            .map_err(|e| format!("KVM_GET_SREGS: {e}"))
    }

    /// INIT → wait for SIPI → real-mode start. Returns false on stop.
    fn startup(&mut self) -> Result<bool, String> {
        let base = self.current_sregs()?;
        self.set_state(boot::init_state(&base))?;
        self.trace(|| "INIT: waiting for SIPI".into());
        match self.ctl.wait_for_startup() {
            None => Ok(false),
            Some(v) => {
                self.trace(|| {
                    format!(
                        "SIPI vector {v:#04x}: starting at {:#x}",
                        u32::from(v) << 12
                    )
                });
                let base = self.current_sregs()?;
                self.set_state(boot::sipi_state(&base, v))?;
                Ok(true)
            }
        }
    }

    /// Runs the vCPU until the VM stops. Never panics on guest input.
    pub fn run(mut self) -> VcpuStats {
        self.ctl.bind_current_thread();
        crate::control::set_precise_timers();
        let _guard = ThreadRunGuard::new(self.vcpu.get_kvm_run());
        let result = self.run_inner();
        crate::profile::flush();
        self.ctl.unbind_thread();
        if let Some(l) = &self.lapic {
            self.stats.lapic = l.report();
            self.stats.rejected = l.rejections();
            if self.index == 0 {
                self.stats.lapic_vm = l.vm_report();
            }
        }
        if let Err(msg) = result {
            self.vm
                .finish(Outcome::Error(format!("vCPU {}: {msg}", self.index)));
        }
        self.stats
    }

    fn run_inner(&mut self) -> Result<(), String> {
        let mut lapic_run_state = self.lapic.as_ref().is_some_and(|l| l.models_run_state());
        if let Some(st) = self.initial.take() {
            self.set_state(st)?;
        } else if lapic_run_state {
            // AP whose LAPIC holds it in wait-for-SIPI (checked before
            // every entry, see `gate`): start from the INIT state.
            let base = self.current_sregs()?;
            self.set_state(boot::init_state(&base))?;
            self.ctl.set_state(RunState::WaitForSipi);
        } else if self.lapic.is_some() {
            // AP with a userspace LAPIC: wait for INIT and SIPI.
            if !self.startup()? {
                return Ok(());
            }
        }
        // With KVM's LAPIC an AP just enters KVM_RUN; KVM keeps it in
        // wait-for-SIPI itself.
        let mut user = self.user;
        self.run_ptr = self.vcpu.get_kvm_run() as *mut kvm_run as usize;
        loop {
            match self.ctl.next_action() {
                Action::Stop => return Ok(()),
                Action::Pause => {
                    match self.pause_for_switch()? {
                        None => return Ok(()),
                        Some(start_halted) => {
                            user = self.user;
                            lapic_run_state =
                                self.lapic.as_ref().is_some_and(|l| l.models_run_state());
                            if let Some(if_flag) = start_halted {
                                self.halt_with(Some(if_flag));
                            }
                        }
                    }
                    continue;
                }
                Action::Init => {
                    if !self.startup()? {
                        return Ok(());
                    }
                    continue;
                }
                Action::Run => {}
            }
            self.ctl.enter_guest();
            if lapic_run_state {
                if let Gate::Wait = self.gate()? {
                    self.ctl.exit_guest();
                    self.park(None);
                    continue;
                }
            }
            if user {
                self.prepare_entry()?;
            }
            let t0 = Instant::now();
            self.stats.runs += 1;
            let next = self.run_once();
            self.stats.in_run += t0.elapsed();
            match next {
                Next::Continue => {}
                Next::Halt => self.halt_with(None),
                Next::Finish(o) => {
                    self.vm.finish(o);
                    return Ok(());
                }
                Next::Fatal(msg) => {
                    return Err(format!("{msg}\n{}\n{}", self.dump(), self.lapic_dump()))
                }
                Next::InternalError => {
                    return Err(format!("{}\n{}", self.internal_error(), self.lapic_dump()))
                }
            }
        }
    }

    /// Userspace LAPIC: timer arming, NMI, CR8 and interrupt injection.
    fn prepare_entry(&mut self) -> Result<(), String> {
        let now = self.vm.clock.now_ns();
        let Some(lapic) = self.lapic.as_mut() else {
            return Ok(());
        };
        // Poll first (merges IPIs, runs the timer to `now`), then arm the
        // host timer for what is still ahead.
        let p = lapic.poll(now);
        let deadline = lapic.next_deadline_ns();
        if deadline != self.armed {
            if let Some(t) = &self.vm.timers {
                t.arm(self.index as usize, deadline);
            }
            self.armed = deadline;
        }
        if p.nmi && lapic.take_nmi() {
            self.vcpu.nmi().map_err(|e| format!("KVM_NMI: {e}"))?;
            self.stats.nmis += 1;
            if self.vm.trace {
                eprintln!("[vcpu{}] inject NMI", self.index);
            }
        }
        let cr8 = lapic.cr8();
        self.entry_cr8 = cr8;
        let pending = p.interrupt.is_some();
        let run = self.vcpu.get_kvm_run();
        run.cr8 = u64::from(cr8);
        let can_inject = run.ready_for_interrupt_injection != 0 && run.if_flag != 0;
        if pending && can_inject {
            let v = lapic.acknowledge(now);
            let more = lapic.pending_interrupt(now).is_some();
            self.vcpu.get_kvm_run().request_interrupt_window = u8::from(more);
            inject_interrupt(&self.vcpu, v).map_err(|e| format!("KVM_INTERRUPT {v:#x}: {e}"))?;
            self.stats.injected += 1;
            if self.vm.trace {
                eprintln!("[vcpu{}] inject vector {v:#04x} at {now} ns", self.index);
            }
        } else {
            self.vcpu.get_kvm_run().request_interrupt_window = u8::from(pending);
        }
        Ok(())
    }

    /// The LAPIC's run state (INIT, SIPI, wait-for-SIPI) before an entry:
    /// INIT resets the registers, a start-up IPI starts the vCPU in real
    /// mode at `CS = vector << 8`, wait-for-SIPI keeps it out of the guest.
    fn gate(&mut self) -> Result<Gate, String> {
        let now = self.vm.clock.now_ns();
        let Some(lapic) = self.lapic.as_mut() else {
            return Ok(Gate::Run);
        };
        let p = lapic.poll(now);
        if !(p.init || p.sipi.is_some() || p.wait_for_sipi) {
            return Ok(Gate::Run);
        }
        let init = p.init && lapic.take_init();
        let sipi = p.sipi.and_then(|_| lapic.take_sipi());
        if init {
            // The LAPIC did its INIT reset; now the CPU's (an AP then
            // waits for SIPI, the BSP restarts at the reset vector).
            let base = self.current_sregs()?;
            self.set_state(boot::init_state(&base))?;
            self.ctl.set_state(if p.wait_for_sipi || sipi.is_some() {
                RunState::WaitForSipi
            } else {
                RunState::Running
            });
            self.trace(|| "INIT: registers reset".into());
        }
        if let Some(v) = sipi {
            self.trace(|| {
                format!(
                    "SIPI vector {v:#04x}: starting at {:#x}",
                    u32::from(v) << 12
                )
            });
            let base = self.current_sregs()?;
            self.set_state(boot::sipi_state(&base, v))?;
            self.ctl.set_state(RunState::Running);
        }
        Ok(if p.wait_for_sipi && sipi.is_none() {
            Gate::Wait
        } else {
            Gate::Run
        })
    }

    /// Parks the vCPU thread (statistics kept).
    fn park(&mut self, until: Option<Instant>) -> Wake {
        let t0 = Instant::now();
        let w = self.ctl.park(until);
        self.stats.parks += 1;
        self.stats.parked += t0.elapsed();
        crate::profile::parked(t0.elapsed());
        w
    }

    /// HLT with a userspace LAPIC: park until an interrupt is deliverable
    /// (IF=1 and above PPR), an NMI, INIT or SIPI is pending, or stop.
    /// Returning to the guest without one of those would be a spurious
    /// HLT wake-up. Timer deadlines are honoured by the park timeout.
    /// `if_override`: the guest's IF when `kvm_run.if_flag` is not
    /// valid yet (a vCPU that was halted in KVM, fresh after a switch).
    fn halt_with(&mut self, if_override: Option<bool>) {
        self.halted = true;
        loop {
            // Clear a stale wake first: a post after the poll below sets
            // it again, so the park cannot miss it.
            self.ctl.clear_wake();
            let now = self.vm.clock.now_ns();
            let if_flag = if_override.unwrap_or(self.vcpu.get_kvm_run().if_flag != 0);
            let Some(lapic) = self.lapic.as_mut() else {
                self.halted = false;
                return;
            };
            if lapic.poll(now).wakes_halt(if_flag) {
                self.halted = false;
                return;
            }
            // Never spin on a deadline that is already due: poll(now)
            // accounted for it.
            let until = lapic
                .next_deadline_ns()
                .map(|d| self.vm.clock.instant_at(d.max(now + 1_000)));
            match self.park(until) {
                Wake::Woken | Wake::Timeout => continue,
                Wake::Control => return,
            }
        }
    }

    /// Irqchip switch (`crate::migrate`): completes the pending exit (a
    /// `KVM_RUN` with `immediate_exit`: MMIO/PIO/MSR reads land in the
    /// registers, no guest instruction runs), reports to the hub, saves
    /// this vCPU's state when all vCPUs are paused, and takes the new KVM
    /// vCPU and LAPIC. Returns `None` when the VM stopped meanwhile, else
    /// whether (and with which IF) to start halted.
    fn pause_for_switch(&mut self) -> Result<Option<Option<bool>>, String> {
        let Some(hub) = self.migrate.clone() else {
            return Ok(Some(None));
        };
        // When the guest last ran (before the completion entry below).
        let exit_at = self.last_exit_ns;
        for _ in 0..16 {
            self.vcpu.set_kvm_immediate_exit(1);
            self.ctl.enter_guest();
            match self.run_once() {
                Next::Finish(o) => {
                    self.vm.finish(o);
                    return Ok(None);
                }
                Next::Fatal(msg) => {
                    return Err(format!("{msg}\n{}\n{}", self.dump(), self.lapic_dump()))
                }
                Next::InternalError => {
                    return Err(format!("{}\n{}", self.internal_error(), self.lapic_dump()))
                }
                Next::Continue | Next::Halt => {}
            }
            if self.last_kind == "kick" {
                break;
            }
        }
        self.vcpu.set_kvm_immediate_exit(0);
        if let Some(t) = &self.vm.timers {
            t.arm(self.index as usize, None);
        }
        self.armed = None;
        let halted = std::mem::take(&mut self.halted);
        let Some(resume) = hub.pause_and_swap(
            self.index,
            &self.ctl,
            &self.vcpu,
            &mut self.lapic,
            crate::migrate::Paused { halted, exit_at },
            &self.vm.clock,
        )?
        else {
            return Ok(None);
        };
        crate::control::set_thread_kvm_run(std::ptr::null_mut());
        let _old = std::mem::replace(&mut self.vcpu, resume.vcpu);
        self.lapic = resume.lapic;
        self.user = resume.user;
        self.run_ptr = self.vcpu.get_kvm_run() as *mut kvm_run as usize;
        crate::control::set_thread_kvm_run(self.run_ptr as *mut kvm_run);
        self.entry_cr8 = self.lapic.as_ref().map_or(0, |l| l.cr8());
        Ok(Some(resume.start_halted))
    }

    fn run_once(&mut self) -> Next {
        let trace = self.vm.trace;
        let idx = self.index;
        let vm = self.vm.clone();
        crate::profile::before_run();
        let exit = self.vcpu.run();
        crate::profile::after_run();
        self.last_exit_ns = vm.clock.now_ns();
        // Out of the guest: from here on a wake needs no signal (the next
        // entry polls after `enter_guest`). Handling the exit may wake this
        // very vCPU (an IPI to itself through the fabric); a signal then
        // would only cost a spurious `KVM_RUN` exit.
        self.ctl.exit_guest();
        // The time of the exit (not of the entry: the guest may have run
        // for long), for every LAPIC access it carries.
        let now = vm.clock.now_ns();
        // CR8 first: the guest may have written CR8 before the access
        // that exited, and handling the exit may change TPR again.
        if exit.is_ok() {
            sync_cr8_in(self.run_ptr, self.entry_cr8, &mut self.lapic, now);
        }
        let (kind, next): (&'static str, Next) = match exit {
            Ok(VcpuExit::IoOut(port, data)) => {
                crate::profile::port_out(port, data);
                let (claimed, ev) = vm.bus.pio_out(port, data);
                if trace {
                    eprintln!("[vcpu{idx}] out port {port:#x} data {data:02x?}{}", if claimed { "" } else { " (unclaimed)" });
                }
                match ev {
                    Some(IoEvent::Exit(status)) => ("io_out", Next::Finish(Outcome::Exit(status))),
                    None => ("io_out", Next::Continue),
                }
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                let claimed = vm.bus.pio_in(port, data);
                if trace {
                    eprintln!("[vcpu{idx}] in port {port:#x} -> {data:02x?}{}", if claimed { "" } else { " (unclaimed)" });
                }
                ("io_in", Next::Continue)
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                let lapic = self.lapic.as_mut().filter(|l| in_apic_page(l.mmio_base(), addr));
                match (lapic, &vm.ioapic) {
                    (Some(l), _) => {
                        let base = l.mmio_base().unwrap_or(0);
                        l.mmio_read(now, addr - base, data);
                    }
                    (None, Some(io)) if IoApicDevice::claims(addr) => io.mmio_read(addr, data),
                    _ => data.fill(0xff),
                }
                if trace {
                    eprintln!("[vcpu{idx}] mmio read {addr:#x} -> {data:02x?}");
                }
                ("mmio_read", Next::Continue)
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                if trace {
                    eprintln!("[vcpu{idx}] mmio write {addr:#x} <- {data:02x?}");
                }
                let lapic = self.lapic.as_mut().filter(|l| in_apic_page(l.mmio_base(), addr));
                match (lapic, &vm.ioapic) {
                    (Some(l), _) => {
                        let base = l.mmio_base().unwrap_or(0);
                        l.mmio_write(now, addr - base, data);
                    }
                    (None, Some(io)) if IoApicDevice::claims(addr) => io.mmio_write(addr, data),
                    _ => {}
                }
                ("mmio_write", Next::Continue)
            }
            Ok(VcpuExit::X86Rdmsr(exit)) => {
                let r = match self.lapic.as_mut() {
                    Some(l) if is_lapic_msr(exit.index) => l.msr_read(now, exit.index),
                    _ => Err(crate::lapic_backend::Gp),
                };
                match r {
                    Ok(v) => *exit.data = v,
                    Err(_) => *exit.error = 1,
                }
                if trace {
                    eprintln!("[vcpu{idx}] rdmsr {:#x} ({:?}) -> {r:x?}", exit.index, exit.reason);
                }
                ("rdmsr", Next::Continue)
            }
            Ok(VcpuExit::X86Wrmsr(exit)) => {
                let r = match self.lapic.as_mut() {
                    Some(l) if is_lapic_msr(exit.index) => l.msr_write(now, exit.index, exit.data),
                    _ => Err(crate::lapic_backend::Gp),
                };
                if r.is_err() {
                    *exit.error = 1;
                }
                if trace {
                    eprintln!("[vcpu{idx}] wrmsr {:#x} <- {:#x} ({:?}) -> {r:?}", exit.index, exit.data, exit.reason);
                }
                ("wrmsr", Next::Continue)
            }
            Ok(VcpuExit::Hlt) => {
                if trace {
                    eprintln!("[vcpu{idx}] hlt");
                }
                ("hlt", if self.lapic.is_some() { Next::Halt } else { Next::Continue })
            }
            Ok(VcpuExit::IrqWindowOpen) => ("irq_window", Next::Continue),
            Ok(VcpuExit::IoapicEoi(vector)) => {
                if trace {
                    eprintln!("[vcpu{idx}] ioapic EOI exit vector {vector:#04x}");
                }
                if let Some(io) = &vm.ioapic {
                    io.eoi(vector);
                }
                ("ioapic_eoi", Next::Continue)
            }
            Ok(VcpuExit::Intr) => ("intr", Next::Continue),
            Ok(VcpuExit::Shutdown) => (
                "shutdown",
                Next::Fatal("triple fault (KVM_EXIT_SHUTDOWN): the guest took an exception it could not handle".into()),
            ),
            Ok(VcpuExit::InternalError) => ("internal_error", Next::InternalError),
            Ok(VcpuExit::FailEntry(reason, cpu)) => (
                "fail_entry",
                Next::Fatal(format!("KVM_EXIT_FAIL_ENTRY: hardware entry failure reason {reason:#x} on host cpu {cpu}")),
            ),
            Ok(VcpuExit::SystemEvent(ty, data)) => match ty {
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => ("system_event", Next::Finish(Outcome::Exit(0))),
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                    ("system_event", Next::Fatal("guest requested a reset (not supported)".into()))
                }
                _ => ("system_event", Next::Fatal(format!("KVM_EXIT_SYSTEM_EVENT type {ty} data {data:x?}"))),
            },
            Ok(VcpuExit::Unsupported(r)) => ("unsupported", Next::Fatal(format!("unsupported KVM exit reason {r}"))),
            Ok(other) => ("unsupported", Next::Fatal(format!("unsupported KVM exit {other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                self.vcpu.set_kvm_immediate_exit(0);
                ("kick", Next::Continue)
            }
            Err(e) => ("error", Next::Fatal(format!("KVM_RUN failed: {e}"))),
        };
        self.count(kind);
        next
    }

    /// Describes a `KVM_EXIT_INTERNAL_ERROR`, with RIP and instruction
    /// bytes for emulation failures.
    fn internal_error(&mut self) -> String {
        let internal = {
            let run = self.vcpu.get_kvm_run();
            // SAFETY: exit_reason was KVM_EXIT_INTERNAL_ERROR, so `internal`
            // is the active union member.
            unsafe { run.__bindgen_anon_1.internal }
        };
        let regs = self.vcpu.get_regs().ok();
        let sregs = self.vcpu.get_sregs().ok();
        let rip = regs.map_or(0, |r| r.rip);
        let cs_base = sregs.map_or(0, |s| s.cs.base);
        let mut msg = match internal.suberror {
            kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => {
                let ndata = (internal.ndata as usize).min(internal.data.len());
                let mut bytes: Vec<u8> = Vec::new();
                if ndata >= 3
                    && internal.data[0]
                        & u64::from(
                            kvm_bindings::KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
                        )
                        != 0
                {
                    // data[0] = flags, then insn_size (u8) and insn_bytes[15].
                    let raw: Vec<u8> = internal.data[1..3]
                        .iter()
                        .flat_map(|d| d.to_le_bytes())
                        .collect();
                    let n = usize::from(raw[0]).min(15);
                    bytes.extend_from_slice(&raw[1..1 + n]);
                }
                if bytes.is_empty() {
                    bytes = self.guest_bytes(cs_base.wrapping_add(rip), 15);
                }
                format!(
                    "emulation failure (KVM_EXIT_INTERNAL_ERROR) at RIP {rip:#x}: instruction bytes {}",
                    hex(&bytes)
                )
            }
            s => format!(
                "KVM_EXIT_INTERNAL_ERROR suberror {s} at RIP {rip:#x}, data {:x?}",
                &internal.data[..(internal.ndata as usize).min(16)]
            ),
        };
        msg.push('\n');
        msg.push_str(&self.dump());
        msg
    }

    /// Reads up to `n` bytes of guest code at linear address `lin`.
    fn guest_bytes(&self, lin: u64, n: usize) -> Vec<u8> {
        let gpa = self
            .vcpu
            .translate_gva(lin)
            .ok()
            .filter(|t| t.valid != 0)
            .map_or(lin, |t| t.physical_address);
        let mut out = Vec::new();
        for i in 0..n as u64 {
            match self
                .vm
                .mem
                .read_obj::<u8>(GuestAddress(gpa.wrapping_add(i)))
            {
                Ok(b) => out.push(b),
                Err(_) => break,
            }
        }
        out
    }

    /// This vCPU's local APIC, decoded one register per line: vlapic's
    /// state (shown in KVM's layout) with the userspace LAPIC, KVM's
    /// `KVM_GET_LAPIC` with the in-kernel one.
    pub fn lapic_dump(&mut self) -> String {
        let now = self.vm.clock.now_ns();
        let kvm = match self.lapic.as_mut() {
            Some(l) => match l.save_state(now) {
                Some(state) => vlapic_kvm::to_kvm(&state, vlapic_kvm::IdFormat::Full32).view(),
                None => return "  LAPIC: (no state from this backend)".into(),
            },
            None => match self.vcpu.get_lapic() {
                Ok(raw) => vlapic_kvm::KvmLapic::from(raw),
                Err(e) => return format!("  LAPIC: KVM_GET_LAPIC failed: {e}"),
            },
        };
        format!("  LAPIC:\n{}", indent(&kvm.to_string()))
    }

    /// Register dump for error reports.
    pub fn dump(&self) -> String {
        let (Ok(r), Ok(s)) = (self.vcpu.get_regs(), self.vcpu.get_sregs()) else {
            return "  (registers unavailable)".into();
        };
        format!(
            "  rip={:#018x} rsp={:#018x} rflags={:#010x}\n  rax={:#018x} rbx={:#018x} rcx={:#018x} rdx={:#018x}\n  rsi={:#018x} rdi={:#018x} rbp={:#018x}\n  r8 ={:#018x} r9 ={:#018x} r10={:#018x} r11={:#018x}\n  r12={:#018x} r13={:#018x} r14={:#018x} r15={:#018x}\n  cs={:#06x} (base {:#x} l={} db={}) ss={:#06x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} apic_base={:#x}\n  idt base={:#x} limit={:#x} gdt base={:#x} limit={:#x}\n  code at rip: {}",
            r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
            s.cs.selector, s.cs.base, s.cs.l, s.cs.db, s.ss.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.apic_base,
            s.idt.base, s.idt.limit, s.gdt.base, s.gdt.limit,
            hex(&self.guest_bytes(s.cs.base.wrapping_add(r.rip), 16)),
        )
    }
}

/// Copies a guest CR8 change (visible in `kvm_run.cr8` after every exit)
/// into the LAPIC. Only a change is copied: `set_cr8` clears TPR[3:0].
fn sync_cr8_in(run_ptr: usize, entry_cr8: u8, lapic: &mut Option<Box<dyn LapicBackend>>, now: u64) {
    let Some(l) = lapic.as_mut() else { return };
    if run_ptr == 0 {
        return;
    }
    let p = run_ptr as *const kvm_run;
    // SAFETY: `p` is this vCPU's live kvm_run mapping; `cr8` is not part
    // of the exit data borrowed by the current VcpuExit.
    let cr8 = (unsafe { std::ptr::read_volatile(std::ptr::addr_of!((*p).cr8)) } & 0xf) as u8;
    if cr8 != entry_cr8 {
        l.set_cr8(now, cr8);
    }
}

fn in_apic_page(base: Option<u64>, addr: u64) -> bool {
    base.is_some_and(|b| addr >= b && addr < b + APIC_MMIO_SIZE)
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn hex(b: &[u8]) -> String {
    if b.is_empty() {
        return "(unreadable)".into();
    }
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}
