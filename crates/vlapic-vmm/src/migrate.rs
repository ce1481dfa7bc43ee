//! Moving a running guest between KVM's in-kernel LAPIC and vlapic
//! (`--switch-irqchip-after MS [--switch-back-after MS] [--switches N]`).
//!
//! A KVM VM's irqchip cannot change after creation, so a switch is a
//! VM-to-VM move inside this process, like a local live migration:
//!
//! 1. The new VM is created while the guest still runs: the same guest
//!    memory (the same host mapping registered again), `KVM_CREATE_IRQCHIP`
//!    or the userspace-LAPIC plumbing (MSR exits and filter), vCPUs with
//!    the same CPUID.
//! 2. Every vCPU is asked to pause ([`VcpuControl::request_pause`]: a
//!    signal, `immediate_exit`). Its thread completes the pending exit
//!    (one more `KVM_RUN` with `immediate_exit`, so an MMIO/PIO/RDMSR
//!    result reaches the registers without running guest code) and
//!    reports to the [`Hub`].
//! 3. When all are paused, each thread saves its vCPU ([`CpuSnapshot`]):
//!    regs, sregs, FPU, XCRs, XSAVE area, the MSRs in [`MSRS`], `kvm_vcpu_events`, a
//!    guest TSC sample (value and clock time), and the LAPIC as a
//!    [`vlapic::ApicState`]: with KVM's LAPIC from `KVM_GET_LAPIC` +
//!    `IA32_APIC_BASE` + `IA32_TSC_DEADLINE` through [`vlapic_kvm::from_kvm`]
//!    (extras from `kvm_mp_state` and the events); with vlapic from
//!    `LocalApic::save` after a poll (a due timer becomes an IRR bit).
//! 4. The VMM restores every vCPU into the new VM:
//!    - the guest TSC: all samples are carried to one instant (the last
//!      sample) and written to `IA32_TSC` as is, so the TSCs stay in step
//!      and the guest does not see the switch's downtime (as a paused VM;
//!      the LAPIC timers were frozen as long);
//!    - to KVM: sregs (with the LAPIC's `IA32_APIC_BASE`, CR8 = TPR >> 4),
//!      regs, FPU, XCRs, MSRs, `KVM_SET_LAPIC` from [`vlapic_kvm::to_kvm`],
//!      then `IA32_TSC_DEADLINE` (KVM takes it only in TSC-deadline mode),
//!      the events with vlapic's pending NMI / start-up vector
//!      ([`vlapic_kvm::convert::apply_to_vcpu_events`]), and `kvm_mp_state`
//!      ([`vlapic_kvm::convert::kvm_mp_state_of`], `HALTED` for a vCPU
//!      parked in HLT);
//!    - to vlapic: the same CPU state, the events as saved (an NMI KVM
//!      had pending stays KVM's, so the `ApicState` gets none), then a
//!      new [`VlapicBackend`] whose TSC mapping is sampled after the TSC
//!      write, `LocalApic::restore`, and `Fabric::attach` with the
//!      restored identity; a vCPU that was halted in KVM starts parked in
//!      HLT (with IF from RFLAGS).
//!
//!    An interrupt that one side had already injected but the guest had
//!    not taken yet is in `kvm_vcpu_events.interrupt` (its vector already
//!    in ISR) and moves with the events. A periodic tick KVM counted after
//!    the vCPU left the guest (`lapic_timer.pending`, which
//!    `kvm_lapic_state` does not carry) is put into IRR
//!    ([`CpuSnapshot::pending_tick`]); a one-shot expiry in that window is
//!    not recoverable (TMCCT 0 reads as stopped).
//! 5. The threads swap in the new vCPU fd and LAPIC and go on; the old VM
//!    is closed.
//!
//! Devices: serial (no interrupt line), isa-debug-exit, fw_cfg, and
//! [`crate::devices::bus::MIGRATE_PORT`] (switches done / planned) keep running; there is no
//! IOAPIC in this mode (KVM's would need `KVM_GET_IRQCHIP` conversion):
//! guests that switch must not use one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kvm_bindings::{
    kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, Msrs,
    KVM_MAX_CPUID_ENTRIES, KVM_MP_STATE_HALTED, KVM_MP_STATE_RUNNABLE,
    KVM_VCPUEVENT_VALID_NMI_PENDING,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vlapic::ApicState;
use vlapic_kvm::convert::{apply_to_vcpu_events, kvm_mp_state_of};
use vlapic_kvm::{from_kvm, to_kvm, Extras, IdFormat, KvmLapicState};

use crate::args::{Config, IrqchipMode};
use crate::boot;
use crate::control::{install_kick_handler, Clock, RunState, TimerService, VcpuControl};
use crate::cpuid::{self, CpuidParams};
use crate::devices::fw_cfg::FwCfg;
use crate::devices::serial::new_serial_with_irq;
use crate::devices::IoBus;
use crate::error::{kvm, Error, Result};
use crate::lapic_backend::{
    BackendContext, GuestTsc, LapicBackend, MSR_APIC_BASE, MSR_TSC_DEADLINE,
};
use crate::layout;
use crate::loader;
use crate::vcpu::{VcpuStats, VcpuThread};
use crate::vlapic_backend::{apic_config, VlapicBackend};
use crate::vm::{
    open_kvm, open_serial, sample_guest_tsc, setup_memory, setup_userspace_lapic, Outcome,
    VmShared, APIC_BUS_KHZ, EXIT_TIMEOUT,
};

/// IA32_TSC.
pub const MSR_TSC: u32 = 0x10;

/// MSRs that move besides TSC, APIC base and TSC deadline (each is read
/// on its own; one KVM does not know is left out): SYSENTER CS/ESP/EIP,
/// PAT, MISC_ENABLE, STAR, LSTAR, CSTAR, SFMASK, KERNEL_GS_BASE, TSC_AUX.
/// EFER travels in sregs.
pub const MSRS: [u32; 11] = [
    0x174,
    0x175,
    0x176,
    0x277,
    0x1a0,
    0xc000_0081,
    0xc000_0082,
    0xc000_0083,
    0xc000_0084,
    0xc000_0102,
    0xc000_0103,
];

/// Everything one vCPU takes from one VM to the next.
pub struct CpuSnapshot {
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// FPU / SSE state.
    pub fpu: kvm_fpu,
    /// XCR0 and friends, if KVM has them.
    pub xcrs: Option<kvm_xcrs>,
    /// The XSAVE area (legacy 4 KiB `kvm_xsave`: x87, SSE, AVX), if KVM
    /// has it; restored after the FPU state, which it contains.
    pub xsave: Option<Box<kvm_bindings::kvm_xsave>>,
    /// The MSRs of [`MSRS`] KVM knows.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending / injected events.
    pub events: kvm_vcpu_events,
    /// The guest TSC at `saved_at` (extrapolated from a sample taken
    /// right before the LAPIC was saved).
    pub tsc: u64,
    /// Clock time at which the LAPIC (its timer) was saved.
    pub saved_at: u64,
    /// Halted (waiting for an interrupt) when saved.
    pub halted: bool,
    /// The local APIC.
    pub apic: ApicState,
    /// KVM's blob when the LAPIC was KVM's (for `--trace`).
    pub kvm_lapic: Option<KvmLapicState>,
    /// A periodic tick KVM had counted but not put in IRR was added.
    pub pending_tick: bool,
}

/// What a paused vCPU thread gets back.
pub struct Resume {
    /// The vCPU of the new VM, state restored.
    pub vcpu: VcpuFd,
    /// Its LAPIC (`None`: KVM's).
    pub lapic: Option<Box<dyn LapicBackend>>,
    /// The LAPIC is in userspace.
    pub user: bool,
    /// Start parked in HLT, with this IF.
    pub start_halted: Option<bool>,
}

#[derive(Default)]
struct HubState {
    round: u64,
    paused: usize,
    save: bool,
    snaps: Vec<Option<std::result::Result<CpuSnapshot, String>>>,
    resume: Vec<Option<Resume>>,
}

/// How a vCPU thread left the guest for a switch.
#[derive(Debug, Clone, Copy)]
pub struct Paused {
    /// Parked in HLT (userspace LAPIC).
    pub halted: bool,
    /// Clock time its last `KVM_RUN` returned.
    pub exit_at: u64,
}

/// Meeting point of the vCPU threads and the VMM during a switch.
pub struct Hub {
    st: Mutex<HubState>,
    cv: Condvar,
}

const POLL: Duration = Duration::from_millis(20);

impl Hub {
    /// A hub for `cpus` vCPUs.
    pub fn new(cpus: usize) -> Self {
        Hub {
            st: Mutex::new(HubState {
                snaps: (0..cpus).map(|_| None).collect(),
                resume: (0..cpus).map(|_| None).collect(),
                ..HubState::default()
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by a paused vCPU thread: reports, saves its state when all
    /// vCPUs are paused, waits for the new vCPU. `None` if the VM stopped.
    pub fn pause_and_swap(
        &self,
        index: u32,
        ctl: &VcpuControl,
        vcpu: &VcpuFd,
        lapic: &mut Option<Box<dyn LapicBackend>>,
        paused: Paused,
        clock: &Clock,
    ) -> std::result::Result<Option<Resume>, String> {
        let i = index as usize;
        let stopped = || ctl.state() == RunState::Stopped;
        let mut g = self.lock();
        g.paused += 1;
        self.cv.notify_all();
        while !g.save {
            if stopped() {
                return Ok(None);
            }
            g = self
                .cv
                .wait_timeout(g, POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(g);
        let snap = snapshot(index, vcpu, lapic, paused.halted, paused.exit_at, clock);
        let mut g = self.lock();
        g.snaps[i] = Some(snap);
        self.cv.notify_all();
        loop {
            if let Some(r) = g.resume[i].take() {
                return Ok(Some(r));
            }
            if stopped() {
                return Ok(None);
            }
            g = self
                .cv
                .wait_timeout(g, POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

fn ns_to_ticks(ns: u64, khz: u64) -> u64 {
    (u128::from(ns) * u128::from(khz) / 1_000_000) as u64
}

fn tsc_khz_of(vcpu: &VcpuFd) -> u32 {
    vcpu.get_tsc_khz().unwrap_or(0)
}

/// Runs the APIC timer of `s` for `ns` more (the time its TSC ran on
/// while the timer was already saved), stopping one bus cycle short of
/// the expiry so that no target loses it (KVM restarts a periodic count
/// of 0 as a full period).
fn advance_timer(s: &mut ApicState, ns: u64) {
    if !s.timer_running || ns == 0 {
        return;
    }
    let div = vlapic::regs::DivideConfig::from_register(s.timer_divide).divisor() as u64;
    let period = u64::from(s.timer_initial_count) * div;
    let add = ns_to_ticks(ns, u64::from(APIC_BUS_KHZ));
    s.timer_elapsed_cycles = (s.timer_elapsed_cycles + add).min(period.saturating_sub(div));
}

/// Whether KVM's periodic timer of `s` (saved at `saved_at`) started its
/// current period after the vCPU left the guest (`exit_at`): that
/// expiry is still KVM's pending count, not in IRR (KVM moves it there
/// before the next entry, coalescing several into one).
fn pending_periodic_tick(s: &ApicState, saved_at: u64, exit_at: u64) -> bool {
    let lvt = vlapic::regs::LvtEntry::from_bits(s.lvt[vlapic::Lvt::Timer.index()]);
    if !s.timer_running
        || lvt.masked()
        || lvt.timer_mode() != vlapic::regs::TimerMode::Periodic
        || exit_at == 0
    {
        return false;
    }
    // The bus runs at 1 GHz: cycles are ns.
    let elapsed_ns = s.timer_elapsed_cycles * 1_000_000 / u64::from(APIC_BUS_KHZ);
    saved_at.saturating_sub(elapsed_ns) > exit_at
}

fn kerr(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> String {
    move |e| format!("{what}: {e}")
}

fn get_msr(vcpu: &VcpuFd, index: u32) -> Option<u64> {
    let mut m = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .ok()?;
    match vcpu.get_msrs(&mut m) {
        Ok(1) => Some(m.as_slice()[0].data),
        _ => None,
    }
}

fn set_msrs(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> std::result::Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    let m = Msrs::from_entries(entries).map_err(|e| format!("MSR list: {e:?}"))?;
    let n = vcpu.set_msrs(&m).map_err(kerr("KVM_SET_MSRS"))?;
    if n != entries.len() {
        return Err(format!(
            "KVM_SET_MSRS: only {n} of {} written (refused: MSR {:#x} = {:#x})",
            entries.len(),
            entries[n].index,
            entries[n].data
        ));
    }
    Ok(())
}

fn msr(index: u32, data: u64) -> kvm_msr_entry {
    kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }
}

/// Saves one vCPU (called on its thread while all vCPUs are paused).
fn snapshot(
    index: u32,
    vcpu: &VcpuFd,
    lapic: &mut Option<Box<dyn LapicBackend>>,
    halted: bool,
    exit_at: u64,
    clock: &Clock,
) -> std::result::Result<CpuSnapshot, String> {
    let regs = vcpu.get_regs().map_err(kerr("KVM_GET_REGS"))?;
    let sregs = vcpu.get_sregs().map_err(kerr("KVM_GET_SREGS"))?;
    let fpu = vcpu.get_fpu().map_err(kerr("KVM_GET_FPU"))?;
    let xcrs = vcpu.get_xcrs().ok();
    let xsave = vcpu.get_xsave().ok().map(Box::new);
    let events = vcpu
        .get_vcpu_events()
        .map_err(kerr("KVM_GET_VCPU_EVENTS"))?;
    let msrs: Vec<kvm_msr_entry> = MSRS
        .iter()
        .filter_map(|&i| get_msr(vcpu, i).map(|d| msr(i, d)))
        .collect();
    // The TSC right before the LAPIC: both are frozen at `saved_at`.
    let sample = sample_guest_tsc(vcpu, clock).map_err(|e| e.to_string())?;
    let t0 = clock.now_ns();
    let (apic, halted, kvm_lapic) = match lapic {
        Some(l) => {
            let apic = l
                .save_state(t0)
                .ok_or_else(|| format!("vCPU {index}: the LAPIC backend cannot save its state"))?;
            (apic, halted, None)
        }
        None => {
            let blob = vcpu.get_lapic().map_err(kerr("KVM_GET_LAPIC"))?;
            let mp = vcpu.get_mp_state().map_err(kerr("KVM_GET_MP_STATE"))?;
            let k = KvmLapicState {
                lapic: blob,
                apic_base: get_msr(vcpu, MSR_APIC_BASE).ok_or("KVM_GET_MSRS(APIC_BASE)")?,
                tsc_deadline: get_msr(vcpu, MSR_TSC_DEADLINE).unwrap_or(0),
            };
            let extras = Extras::from_kvm_vcpu(index, &mp, &events);
            let mut apic = from_kvm(&k, IdFormat::Legacy, &extras)
                .map_err(|e| format!("vCPU {index}: from_kvm: {e}"))?;
            // A pending NMI stays in the events (KVM injects it in the
            // next VM too): not twice.
            apic.pending_nmi = false;
            (apic, mp.mp_state == KVM_MP_STATE_HALTED, Some(k))
        }
    };
    let saved_at = if kvm_lapic.is_some() {
        // KVM read TMCCT somewhere inside the ioctls above.
        t0 / 2 + clock.now_ns() / 2
    } else {
        t0
    };
    let tsc = sample.value + ns_to_ticks(saved_at - sample.at_ns, u64::from(tsc_khz_of(vcpu)));
    let mut apic = apic;
    let pending_tick = kvm_lapic.is_some() && pending_periodic_tick(&apic, saved_at, exit_at);
    if pending_tick {
        // KVM counted an expiry (`lapic_timer.pending`) that only goes
        // into IRR on the next guest entry: not in kvm_lapic_state.
        let v = vlapic::regs::LvtEntry::from_bits(apic.lvt[vlapic::Lvt::Timer.index()]).vector();
        apic.irr.set(v, true);
    }
    Ok(CpuSnapshot {
        regs,
        sregs,
        fpu,
        xcrs,
        xsave,
        msrs,
        events,
        tsc,
        saved_at,
        halted,
        apic,
        kvm_lapic,
        pending_tick,
    })
}

/// The parts of a VM that change on a switch.
struct Machine {
    vm: VmFd,
    user: bool,
    fabric: Option<Arc<vlapic::fabric::Fabric>>,
}

/// Fixed facts every VM of the run shares.
struct Env {
    kvm: Kvm,
    cfg: Config,
    mem: vm_memory::GuestMemoryMmap,
    supported: kvm_bindings::CpuId,
    tsc_khz: u32,
    phys_bits: u8,
    clock: Clock,
    controls: Arc<Vec<Arc<VcpuControl>>>,
}

impl Env {
    fn new_vm(&self, user: bool) -> Result<Machine> {
        let vm = self.kvm.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
        setup_memory(&vm, &self.mem)?;
        let _ = vm.set_tss_address(0xfffb_d000);
        let fabric = if user {
            setup_userspace_lapic(&vm)?;
            Some(VlapicBackend::fabric_for(self.controls.clone()))
        } else {
            vm.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
            None
        };
        Ok(Machine { vm, user, fabric })
    }

    fn new_vcpu(&self, m: &Machine, i: u32) -> Result<VcpuFd> {
        let vcpu =
            m.vm.create_vcpu(u64::from(i))
                .map_err(kvm("KVM_CREATE_VCPU"))?;
        self.set_cpuid(&vcpu, i)?;
        Ok(vcpu)
    }

    fn set_cpuid(&self, vcpu: &VcpuFd, i: u32) -> Result<()> {
        let mut entries = self.supported.as_slice().to_vec();
        cpuid::adjust(
            &mut entries,
            &CpuidParams {
                apic_id: i,
                cpus: self.cfg.cpus,
                x2apic: self.cfg.x2apic,
                tsc_deadline: self.cfg.tsc_deadline,
                tsc_khz: self.tsc_khz,
                apic_bus_khz: APIC_BUS_KHZ,
            },
        );
        let cpuid = kvm_bindings::CpuId::from_entries(&entries)
            .map_err(|e| Error::Memory(format!("CPUID table: {e:?}")))?;
        vcpu.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))
    }

    fn backend(&self, m: &Machine, i: u32, guest_tsc: GuestTsc) -> Option<VlapicBackend> {
        let fabric = m.fabric.clone()?;
        let ctx = BackendContext {
            cpu: i,
            apic_id: i,
            bsp: i == 0,
            cpus: self.cfg.cpus,
            x2apic: self.cfg.x2apic,
            tsc_deadline: self.cfg.tsc_deadline,
            tsc_khz: self.tsc_khz,
            guest_tsc,
            apic_bus_khz: APIC_BUS_KHZ,
            phys_bits: self.phys_bits,
            trace: self.cfg.trace,
            vcpus: self.controls.clone(),
            clock: self.clock,
        };
        // No suppress-EOI-broadcast: KVM's LAPIC with its in-kernel IOAPIC
        // does not offer it, and the version register must not change.
        Some(VlapicBackend::with_config(
            &ctx,
            apic_config(&ctx),
            fabric,
            None,
        ))
    }

    /// Restores `s` into `vcpu` of `m`, the guest TSC set to `tsc`.
    fn restore(
        &self,
        m: &Machine,
        i: u32,
        vcpu: &VcpuFd,
        s: &CpuSnapshot,
        tsc: u64,
    ) -> std::result::Result<Resume0, String> {
        let mut sregs = s.sregs;
        sregs.cr8 = u64::from(s.apic.tpr >> 4);
        if !m.user {
            sregs.apic_base = s.apic.apic_base;
        }
        vcpu.set_sregs(&sregs).map_err(kerr("KVM_SET_SREGS"))?;
        vcpu.set_regs(&s.regs).map_err(kerr("KVM_SET_REGS"))?;
        vcpu.set_fpu(&s.fpu).map_err(kerr("KVM_SET_FPU"))?;
        if let Some(x) = &s.xcrs {
            vcpu.set_xcrs(x).map_err(kerr("KVM_SET_XCRS"))?;
        }
        if let Some(x) = &s.xsave {
            // SAFETY: a whole kvm_xsave that KVM_GET_XSAVE filled on a
            // vCPU with the same CPUID; KVM reads only that struct.
            unsafe { vcpu.set_xsave(x) }.map_err(kerr("KVM_SET_XSAVE"))?;
        }
        set_msrs(vcpu, &s.msrs)?;
        if m.user {
            let mut ev = s.events;
            // Without the flag KVM ignores nmi.pending: keep KVM's NMI.
            ev.flags |= KVM_VCPUEVENT_VALID_NMI_PENDING;
            vcpu.set_vcpu_events(&ev)
                .map_err(kerr("KVM_SET_VCPU_EVENTS"))?;
            set_msrs(vcpu, &[msr(MSR_TSC, tsc)])?;
            let guest_tsc = sample_guest_tsc(vcpu, &self.clock).map_err(|e| e.to_string())?;
            // The clock time at which the new TSC read `tsc`: the timer
            // resumes there, so TSC and timer lose the same time.
            let back = (u128::from(guest_tsc.value.saturating_sub(tsc)) * 1_000_000
                / u128::from(self.tsc_khz.max(1))) as u64;
            let resume_at = guest_tsc.at_ns.saturating_sub(back);
            // The LAPIC's time 0 and TSC mapping: that instant.
            let mapping = GuestTsc {
                at_ns: resume_at,
                value: tsc,
            };
            let mut b = self
                .backend(m, i, mapping)
                .ok_or("no fabric in a userspace-LAPIC VM")?;
            b.restore_state(resume_at, &s.apic)
                .map_err(|e| format!("vCPU {i}: {e} (state {:?})", s.apic))?;
            Ok(Resume0 {
                lapic: Some(Box::new(b)),
                start_halted: s.halted.then_some(s.regs.rflags & 0x200 != 0),
            })
        } else {
            let k = to_kvm(&s.apic, IdFormat::Legacy);
            // The TSC right before the LAPIC (whose timer starts counting
            // on KVM_SET_LAPIC), and the TSC deadline after both.
            set_msrs(vcpu, &[msr(MSR_TSC, tsc)])?;
            vcpu.set_lapic(&k.lapic).map_err(kerr("KVM_SET_LAPIC"))?;
            if k.tsc_deadline != 0 {
                set_msrs(vcpu, &[msr(MSR_TSC_DEADLINE, k.tsc_deadline)])?;
            }
            let mut ev = s.events;
            let mut a = s.apic;
            a.pending_nmi |= ev.nmi.pending != 0;
            apply_to_vcpu_events(&a, &mut ev);
            vcpu.set_vcpu_events(&ev)
                .map_err(kerr("KVM_SET_VCPU_EVENTS"))?;
            let mut mp = kvm_mp_state_of(&s.apic);
            if s.halted && mp.mp_state == KVM_MP_STATE_RUNNABLE {
                mp.mp_state = KVM_MP_STATE_HALTED;
            }
            vcpu.set_mp_state(mp).map_err(kerr("KVM_SET_MP_STATE"))?;
            self.check_kvm_lapic(i, vcpu, &s.apic, &k);
            Ok(Resume0 {
                lapic: None,
                start_halted: None,
            })
        }
    }

    /// Reads KVM's LAPIC back after `KVM_SET_LAPIC` and reports (stderr)
    /// any field that did not arrive (timer position aside).
    fn check_kvm_lapic(&self, i: u32, vcpu: &VcpuFd, want: &ApicState, sent: &KvmLapicState) {
        let (Ok(blob), Ok(mp), Ok(ev)) = (
            vcpu.get_lapic(),
            vcpu.get_mp_state(),
            vcpu.get_vcpu_events(),
        ) else {
            return;
        };
        let k = KvmLapicState {
            lapic: blob,
            apic_base: get_msr(vcpu, MSR_APIC_BASE).unwrap_or(0),
            tsc_deadline: get_msr(vcpu, MSR_TSC_DEADLINE).unwrap_or(0),
        };
        let mut x = Extras::from_kvm_vcpu(i, &mp, &ev);
        x.xapic_id = Some(want.xapic_id);
        match from_kvm(&k, IdFormat::Legacy, &x) {
            Ok(mut got) => {
                let mut w = *want;
                for s in [&mut got, &mut w] {
                    s.timer_elapsed_cycles = 0;
                    s.pending_nmi = false;
                    s.esr_pending = 0;
                    s.lint_levels = [false; 2];
                    s.pending_extint = false;
                    // KVM_GET_MP_STATE (above) makes KVM process a
                    // latched INIT (kvm_apic_accept_events): gone by now.
                    s.pending_init = false;
                }
                if got != w {
                    eprintln!(
                        "vlapic-vmm: migrate: vCPU {i}: KVM's LAPIC after KVM_SET_LAPIC differs:\n  sent {w:?}\n  got  {got:?}\n  blob diff {:x?}",
                        vlapic_kvm::convert::non_volatile_diff(&sent.view(), &k.view())
                    );
                }
            }
            Err(e) => eprintln!("vlapic-vmm: migrate: vCPU {i}: reading back KVM's LAPIC: {e}"),
        }
    }
}

struct Resume0 {
    lapic: Option<Box<dyn LapicBackend>>,
    start_halted: Option<bool>,
}

fn mode_name(user: bool) -> &'static str {
    if user {
        "user (vlapic)"
    } else {
        "kernel (KVM)"
    }
}

/// One switch: new VM, pause, save, restore, resume. Returns the new VM.
fn switch(env: &Env, hub: &Hub, shared: &VmShared, old: &Machine) -> Result<Machine> {
    let t0 = env.clock.now_ns();
    let user = !old.user;
    let m = env.new_vm(user)?;
    let cpus = env.cfg.cpus as usize;
    let mut fds = (0..env.cfg.cpus)
        .map(|i| env.new_vcpu(&m, i).map(Some))
        .collect::<Result<Vec<_>>>()?;
    let t_new = env.clock.now_ns();
    let fail = |msg: String| Error::Guest(format!("irqchip switch: {msg}"));
    {
        let mut g = hub.lock();
        g.round += 1;
        g.paused = 0;
        g.save = false;
        g.snaps.iter_mut().for_each(|s| *s = None);
    }
    for c in env.controls.iter() {
        c.request_pause();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let ended = || {
        shared
            .outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .is_some()
    };
    let mut g = hub.lock();
    while g.paused < cpus {
        if ended() {
            return Err(fail("the VM ended while pausing".into()));
        }
        if Instant::now() > deadline {
            return Err(fail(format!("only {} of {cpus} vCPUs paused", g.paused)));
        }
        g = hub
            .cv
            .wait_timeout(g, POLL)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    let t_paused = env.clock.now_ns();
    g.save = true;
    hub.cv.notify_all();
    while g.snaps.iter().any(Option::is_none) {
        if ended() {
            return Err(fail("the VM ended while saving".into()));
        }
        if Instant::now() > deadline {
            return Err(fail("vCPUs did not save their state".into()));
        }
        g = hub
            .cv
            .wait_timeout(g, POLL)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    let mut snaps = g
        .snaps
        .iter_mut()
        .map(|s| s.take().unwrap_or_else(|| Err("missing".into())))
        .collect::<std::result::Result<Vec<CpuSnapshot>, String>>()
        .map_err(fail)?;
    drop(g);
    let t_saved = env.clock.now_ns();
    // One instant for all vCPUs: the last save. Each TSC is carried to
    // it, and so is each APIC timer (saved a little earlier).
    let at = snaps.iter().map(|s| s.saved_at).max().unwrap_or(0);
    let khz = u64::from(env.tsc_khz);
    let mut resumes = Vec::with_capacity(cpus);
    for (i, s) in snaps.iter_mut().enumerate() {
        let tsc = s.tsc + ns_to_ticks(at - s.saved_at, khz);
        advance_timer(&mut s.apic, at - s.saved_at);
        let s = &*s;
        if env.cfg.trace {
            eprintln!(
                "vlapic-vmm: migrate: vCPU {i}: rip {:#x} halted {} mp/events {:?} apic {:?}",
                s.regs.rip, s.halted, s.events.interrupt, s.apic
            );
            if let Some(k) = &s.kvm_lapic {
                eprintln!("{}", k.view());
            }
        }
        let fd = fds[i]
            .take()
            .ok_or_else(|| fail("vCPU fd missing".into()))?;
        let r = env.restore(&m, i as u32, &fd, s, tsc).map_err(fail)?;
        resumes.push(Resume {
            vcpu: fd,
            lapic: r.lapic,
            user,
            start_halted: r.start_halted,
        });
    }
    let t_restored = env.clock.now_ns();
    {
        let mut g = hub.lock();
        for (i, r) in resumes.into_iter().enumerate() {
            g.resume[i] = Some(r);
        }
        hub.cv.notify_all();
    }
    eprintln!(
        "vlapic-vmm: migrate: {} -> {}: new VM {:.1} ms, pause {:.1} ms, save {:.1} ms, restore {:.1} ms (guest stopped {:.1} ms); halted {:?}, pending KVM ticks moved to IRR {:?}, injected vector in events {:?}, IRR {:?}",
        mode_name(old.user),
        mode_name(user),
        (t_new - t0) as f64 / 1e6,
        (t_paused - t_new) as f64 / 1e6,
        (t_saved - t_paused) as f64 / 1e6,
        (t_restored - t_saved) as f64 / 1e6,
        (t_restored - t_paused) as f64 / 1e6,
        snaps.iter().map(|s| s.halted).collect::<Vec<_>>(),
        snaps.iter().map(|s| s.pending_tick).collect::<Vec<_>>(),
        snaps
            .iter()
            .map(|s| (s.events.interrupt.injected != 0).then_some(s.events.interrupt.nr))
            .collect::<Vec<_>>(),
        snaps.iter().map(|s| s.apic.irr).collect::<Vec<_>>(),
    );
    Ok(m)
}

/// Runs `cfg` with irqchip switches (`cfg.switch_after` set); returns the
/// process exit status like [`crate::vm::run`].
pub fn run(cfg: &Config) -> Result<i32> {
    let Some(first) = cfg.switch_after else {
        return Err(Error::Args("--switch-irqchip-after is not set".into()));
    };
    let start_user = match cfg.irqchip {
        IrqchipMode::Kernel => false,
        IrqchipMode::User => true,
        m => {
            return Err(Error::Args(format!(
                "--switch-irqchip-after needs --irqchip kernel or user, not {m:?}"
            )))
        }
    };
    let planned = cfg.switches.max(1);
    let every = cfg.switch_back_after.unwrap_or(first);
    let image = std::fs::read(&cfg.kernel)
        .map_err(|e| Error::Image(format!("cannot read {}: {e}", cfg.kernel.display())))?;
    let ram = cfg.memory_mib << 20;
    let mem = layout::create_memory(ram)?;
    let entry = loader::load_kernel(&mem, &image, cfg.format, cfg.flat_addr, ram, &cfg.cmdline)?;
    boot::write_gdt(&mem)?;
    boot::write_page_tables(&mem)?;
    let kvm_sys = open_kvm()?;
    install_kick_handler()
        .map_err(|e| Error::Io("installing the kick signal handler".into(), e))?;
    let supported = kvm_sys
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;
    let phys_bits = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 0x8000_0008)
        .map_or(46, |e| (e.eax & 0xff) as u8);
    let clock = Clock::new();
    let controls = VcpuControl::for_vcpus(cfg.cpus);
    let mut env = Env {
        kvm: kvm_sys,
        cfg: cfg.clone(),
        mem: mem.clone(),
        supported,
        tsc_khz: 0,
        phys_bits,
        clock,
        controls: controls.clone(),
    };
    let machine0 = env.new_vm(start_user)?;
    let mut fds = Vec::new();
    for i in 0..cfg.cpus {
        let vcpu = machine0
            .vm
            .create_vcpu(u64::from(i))
            .map_err(kvm("KVM_CREATE_VCPU"))?;
        if i == 0 {
            // The TSC frequency CPUID reports (every VM's vCPUs get it).
            env.tsc_khz = vcpu
                .get_tsc_khz()
                .unwrap_or_else(|_| cpuid::measure_tsc_khz());
        }
        env.set_cpuid(&vcpu, i)?;
        fds.push(vcpu);
    }
    let mut machine = machine0;
    let status = Arc::new(AtomicU32::new(planned << 16));
    let timers = TimerService::start(clock, controls.to_vec());
    let bus = IoBus::new(
        new_serial_with_irq(open_serial(&cfg.serial)?, None),
        FwCfg::new(ram, cfg.cpus as u16),
    )
    .with_migration_port(status.clone());
    let shared = Arc::new(VmShared {
        bus,
        mem: mem.clone(),
        clock,
        irqchip: cfg.irqchip,
        trace: cfg.trace,
        timers: Some(timers.clone()),
        vcpus: controls.clone(),
        ioapic: None,
        outcome: Mutex::new((None, cfg.cpus as usize)),
        done: Condvar::new(),
    });
    let hub = Arc::new(Hub::new(cfg.cpus as usize));
    let mut threads = Vec::new();
    for (i, vcpu) in fds.into_iter().enumerate() {
        let i = i as u32;
        let initial = if i == 0 {
            let base = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
            Some(boot::entry_state(entry, &base, i, cfg.cpus, ram))
        } else {
            None
        };
        let lapic: Option<Box<dyn LapicBackend>> = if start_user {
            let t = sample_guest_tsc(&vcpu, &clock)?;
            env.backend(&machine, i, t)
                .map(|b| Box::new(b) as Box<dyn LapicBackend>)
        } else {
            None
        };
        let t = VcpuThread::new(
            i,
            vcpu,
            controls[i as usize].clone(),
            shared.clone(),
            lapic,
            initial,
        )
        .with_migration(hub.clone());
        let h = crate::vm::spawn_vcpu(i, t, &shared, controls[i as usize].clone())?;
        threads.push(h);
    }
    eprintln!(
        "vlapic-vmm: migrate: {} vCPU(s), start in {}, {planned} switch(es): after {} ms, then every {} ms",
        cfg.cpus,
        mode_name(start_user),
        first.as_millis(),
        every.as_millis()
    );

    let started = Instant::now();
    let wait_until = |until: Option<Instant>| -> Option<Outcome> {
        let mut g = shared.outcome.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(o) = g.0.clone() {
                return Some(o);
            }
            if g.1 == 0 {
                return Some(Outcome::Error(
                    "all vCPU threads ended without an outcome".into(),
                ));
            }
            let limit = match (until, cfg.timeout.map(|t| started + t)) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match limit {
                None => g = shared.done.wait(g).unwrap_or_else(|e| e.into_inner()),
                Some(l) => {
                    let now = Instant::now();
                    if now >= l {
                        if cfg.timeout.is_some_and(|t| started + t <= now) {
                            eprintln!("vlapic-vmm: timeout");
                            return Some(Outcome::Exit(EXIT_TIMEOUT));
                        }
                        return None;
                    }
                    g = shared
                        .done
                        .wait_timeout(g, l - now)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    };
    let mut at = started + first;
    let mut outcome = None;
    for n in 0..planned {
        if let Some(o) = wait_until(Some(at)) {
            outcome = Some(o);
            break;
        }
        match switch(&env, &hub, &shared, &machine) {
            Ok(m) => {
                machine = m;
                status.store((planned << 16) | (n + 1), Ordering::SeqCst);
            }
            Err(e) => {
                // The guest may have ended (debug-exit) while we paused:
                // then its outcome stands.
                let ended = shared
                    .outcome
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .0
                    .clone();
                outcome = Some(ended.unwrap_or(Outcome::Error(e.to_string())));
                break;
            }
        }
        at = Instant::now() + every;
    }
    let outcome = match outcome {
        Some(o) => o,
        None => wait_until(None).unwrap_or(Outcome::Exit(EXIT_TIMEOUT)),
    };
    shared.finish(outcome.clone());
    timers.shutdown();
    shared.wait_threads_exited(Duration::from_secs(2));
    let stats: Vec<Option<VcpuStats>> = threads
        .into_iter()
        .map(|h| if h.is_finished() { h.join().ok() } else { None })
        .collect();
    shared.bus.flush();
    if cfg.stats {
        for (i, s) in stats.iter().enumerate() {
            if let Some(s) = s {
                eprintln!(
                    "vlapic-vmm: vcpu{i}: {} KVM_RUNs, {} injected, exits {:?}",
                    s.runs, s.injected, s.exits
                );
            }
        }
    }
    drop(machine);
    match outcome {
        Outcome::Exit(s) => Ok(s),
        Outcome::Error(msg) => Err(Error::Guest(msg)),
    }
}
