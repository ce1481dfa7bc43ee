//! The real userspace LAPIC: [`LapicBackend`] over [`vlapic::LocalApic`]
//! and the [`vlapic::fabric::Fabric`] that carries IPIs between vCPUs.
//!
//! # Threading
//!
//! Each vCPU thread owns its [`LocalApic`] (no lock). Everything another
//! thread may touch lives in the VM's [`Fabric`]: a lock-free inbox per
//! vCPU, the routing table and the lowest-priority mirror. An IPI written
//! by vCPU A is routed on A's thread ([`Fabric::send_ipi`]): it is posted
//! into the target's inbox and the fabric calls the target's wake
//! callback, which is [`crate::control::VcpuControl::wake`] (unhalt, or kick out of
//! `KVM_RUN` with a signal). The target merges its inbox into its
//! `LocalApic` in [`LapicBackend::poll`] ([`Fabric::sync`]), which the
//! vCPU loop calls after `VcpuControl::enter_guest` before every entry and
//! while halted, so a post is never missed (see `control` for the kick
//! protocol).
//!
//! # Time
//!
//! The LAPIC's clock is the VM [`crate::control::Clock`] (ns). The APIC
//! timer runs at [`BackendContext::apic_bus_khz`] (what CPUID 0x40000010
//! EBX advertises); the TSC-deadline timer converts with the guest TSC
//! frequency and [`BackendContext::guest_tsc`], a sample of the guest TSC
//! taken when the vCPU was created. The LAPIC's own time 0 is the moment
//! of that sample (its "guest TSC at time 0" is then the sampled value,
//! never a wrapped negative one, which vlapic's deadline conversion does
//! not handle); the backend shifts times in and deadlines out by it. The
//! vCPU loop arms the
//! [`crate::control::TimerService`] with [`LapicBackend::next_deadline_ns`]
//! before each entry (it kicks the vCPU out of the guest when the
//! deadline passes) and a halted vCPU parks with that deadline.
//!
//! # Messages
//!
//! `Message::Ipi` goes to the fabric; `Message::Eoi` (level-triggered EOI
//! broadcast) is counted and handed to the [`EoiHook`] (where an IOAPIC
//! will listen); `Message::ApicBaseChanged` needs nothing: the vCPU loop
//! asks [`LapicBackend::mmio_base`] on every MMIO exit. SMI and ExtINT have
//! no receiver here (no SMM, no 8259): they are taken, counted and logged
//! once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use vlapic::fabric::Fabric;
use vlapic::{ApicConfig, LocalApic, Message};

use crate::lapic_backend::{BackendContext, BackendFactory, Gp, LapicBackend, Pending};

/// Receives level-triggered EOI broadcasts: `(vcpu, vector)`. The IOAPIC
/// clears remote IRR here (`devices::ioapic::IoApicDevice::eoi`).
pub type EoiHook = Arc<dyn Fn(usize, u8) + Send + Sync>;

/// Per-vCPU counters of LAPIC traffic.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BackendStats {
    /// xAPIC MMIO reads.
    pub mmio_reads: u64,
    /// xAPIC MMIO writes.
    pub mmio_writes: u64,
    /// LAPIC RDMSRs.
    pub msr_reads: u64,
    /// LAPIC WRMSRs.
    pub msr_writes: u64,
    /// Accesses answered with #GP.
    pub gp: u64,
    /// IPIs sent (routed through the fabric).
    pub ipis: u64,
    /// IPI deliveries (targets reached).
    pub ipi_targets: u64,
    /// Interrupts taken out of this vCPU's inbox (merged into IRR or as
    /// NMI/INIT/SIPI events).
    pub merged: u64,
    /// Interrupts acknowledged (IRR→ISR) for injection.
    pub acknowledged: u64,
    /// EOI broadcasts (level-triggered vectors).
    pub eoi_broadcasts: u64,
    /// `IA32_APIC_BASE` mode / base changes.
    pub base_changes: u64,
    /// NMIs taken for injection.
    pub nmis: u64,
    /// INITs taken.
    pub inits: u64,
    /// Start-up IPIs taken.
    pub sipis: u64,
    /// SMIs dropped (no SMM).
    pub smis_ignored: u64,
    /// ExtINTs dropped (no 8259).
    pub extints_ignored: u64,
}

/// One vCPU's [`LocalApic`], connected to the VM's [`Fabric`].
pub struct VlapicBackend {
    cpu: usize,
    apic: LocalApic,
    /// VM clock time that is the LAPIC's time 0.
    epoch_ns: u64,
    fabric: Arc<Fabric>,
    eoi_hook: Option<EoiHook>,
    trace: bool,
    stats: BackendStats,
}

impl std::fmt::Debug for VlapicBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VlapicBackend")
            .field("cpu", &self.cpu)
            .field("apic", &self.apic)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The APIC configuration for a vCPU (the LAPIC's time 0 is
/// `ctx.guest_tsc.at_ns` on the VM clock).
pub fn apic_config(ctx: &BackendContext) -> ApicConfig {
    ApicConfig::new(ctx.apic_id)
        .with_bsp(ctx.bsp)
        .with_x2apic(ctx.x2apic)
        .with_tsc_deadline(ctx.tsc_deadline)
        .with_bus_frequency_hz(u64::from(ctx.apic_bus_khz) * 1000)
        .with_tsc_frequency_hz(u64::from(ctx.tsc_khz) * 1000)
        .with_tsc_offset(ctx.guest_tsc.value)
        .with_max_phys_addr_bits(ctx.phys_bits)
}

static SMI_WARNED: AtomicBool = AtomicBool::new(false);
static EXTINT_WARNED: AtomicBool = AtomicBool::new(false);

fn warn_once(flag: &AtomicBool, msg: impl FnOnce() -> String) {
    if !flag.swap(true, Ordering::Relaxed) {
        eprintln!("vlapic-vmm: {} (logged once)", msg());
    }
}

impl VlapicBackend {
    /// The LAPIC of vCPU `ctx.cpu`, attached to `fabric`.
    pub fn new(ctx: &BackendContext, fabric: Arc<Fabric>, eoi_hook: Option<EoiHook>) -> Self {
        Self::with_config(ctx, apic_config(ctx), fabric, eoi_hook)
    }

    /// [`VlapicBackend::new`] with an explicit [`ApicConfig`] (e.g.
    /// [`apic_config`] plus `with_suppress_eoi_broadcast`).
    pub fn with_config(
        ctx: &BackendContext,
        config: ApicConfig,
        fabric: Arc<Fabric>,
        eoi_hook: Option<EoiHook>,
    ) -> Self {
        let apic = LocalApic::new(config);
        let cpu = ctx.cpu as usize;
        fabric.attach(cpu, &apic);
        VlapicBackend {
            cpu,
            apic,
            epoch_ns: ctx.guest_tsc.at_ns,
            fabric,
            eoi_hook,
            trace: ctx.trace,
            stats: BackendStats::default(),
        }
    }

    /// A fabric for the vCPUs of `ctx` whose wake callback is
    /// [`crate::control::VcpuControl::wake`].
    pub fn new_fabric(ctx: &BackendContext) -> Arc<Fabric> {
        Self::fabric_for(ctx.vcpus.clone())
    }

    /// A fabric for `vcpus` whose wake callback is
    /// [`crate::control::VcpuControl::wake`].
    pub fn fabric_for(vcpus: Arc<Vec<Arc<crate::control::VcpuControl>>>) -> Arc<Fabric> {
        let fabric = Arc::new(Fabric::new(vcpus.len()));
        fabric.set_default_waker(Arc::new(move |i: usize| {
            if let Some(v) = vcpus.get(i) {
                v.wake();
            }
        }));
        fabric
    }

    /// A factory: one fabric per VM (created with the first backend).
    pub fn factory() -> BackendFactory {
        Self::factory_with_eoi_hook(None)
    }

    /// A factory whose backends pass EOI broadcasts to `hook`.
    pub fn factory_with_eoi_hook(hook: Option<EoiHook>) -> BackendFactory {
        let shared: Arc<OnceLock<Arc<Fabric>>> = Arc::new(OnceLock::new());
        Arc::new(move |ctx| {
            let fabric = shared.get_or_init(|| Self::new_fabric(ctx)).clone();
            Box::new(VlapicBackend::new(ctx, fabric, hook.clone())) as Box<dyn LapicBackend>
        })
    }

    /// A factory whose backends share `fabric` (which devices such as the
    /// IOAPIC also deliver into), pass EOI broadcasts to `hook`, and offer
    /// suppress-EOI-broadcast (LAPIC version bit 24) if asked: only pair
    /// that with an IOAPIC that has an EOI register (version 0x20).
    pub fn factory_with(
        fabric: Arc<Fabric>,
        hook: Option<EoiHook>,
        suppress_eoi_broadcast: bool,
    ) -> BackendFactory {
        Arc::new(move |ctx| {
            let cfg = apic_config(ctx).with_suppress_eoi_broadcast(suppress_eoi_broadcast);
            Box::new(VlapicBackend::with_config(
                ctx,
                cfg,
                fabric.clone(),
                hook.clone(),
            )) as Box<dyn LapicBackend>
        })
    }

    /// The device model.
    pub fn apic(&self) -> &LocalApic {
        &self.apic
    }

    /// The fabric.
    pub fn fabric(&self) -> &Arc<Fabric> {
        &self.fabric
    }

    /// Traffic counters.
    pub fn stats(&self) -> &BackendStats {
        &self.stats
    }

    /// VM clock -> LAPIC time.
    fn t(&self, now_ns: u64) -> u64 {
        now_ns.saturating_sub(self.epoch_ns)
    }

    fn message(&mut self, msg: Message) {
        match msg {
            Message::Ipi(ipi) => {
                let d = self.fabric.send_ipi(self.cpu, &ipi);
                self.stats.ipis += 1;
                self.stats.ipi_targets += u64::from(d.targets);
                if self.trace {
                    eprintln!("[vcpu{}] lapic: IPI {ipi:?} -> {d:?}", self.cpu);
                }
            }
            Message::Eoi { vector } => {
                self.stats.eoi_broadcasts += 1;
                if self.trace {
                    eprintln!(
                        "[vcpu{}] lapic: EOI broadcast vector {vector:#04x}",
                        self.cpu
                    );
                }
                if let Some(h) = &self.eoi_hook {
                    h(self.cpu, vector);
                }
            }
            Message::ApicBaseChanged { apic_base, mode } => {
                self.stats.base_changes += 1;
                if self.trace {
                    eprintln!(
                        "[vcpu{}] lapic: IA32_APIC_BASE = {apic_base:#x} ({mode:?}), MMIO window {:x?}",
                        self.cpu,
                        self.apic.mmio_base()
                    );
                }
            }
        }
    }
}

impl LapicBackend for VlapicBackend {
    fn mmio_base(&self) -> Option<u64> {
        self.apic.mmio_base()
    }

    fn mmio_read(&mut self, now_ns: u64, offset: u64, data: &mut [u8]) {
        self.stats.mmio_reads += 1;
        let t = self.t(now_ns);
        self.apic.mmio_read(t, offset, data);
    }

    fn mmio_write(&mut self, now_ns: u64, offset: u64, data: &[u8]) {
        self.stats.mmio_writes += 1;
        let t = self.t(now_ns);
        if let Some(m) = self.apic.mmio_write(t, offset, data) {
            self.message(m);
        }
    }

    fn msr_read(&mut self, now_ns: u64, msr: u32) -> Result<u64, Gp> {
        self.stats.msr_reads += 1;
        let t = self.t(now_ns);
        self.apic.msr_read(t, msr).map_err(|_| {
            self.stats.gp += 1;
            Gp
        })
    }

    fn msr_write(&mut self, now_ns: u64, msr: u32, value: u64) -> Result<(), Gp> {
        self.stats.msr_writes += 1;
        let t = self.t(now_ns);
        let r = self.apic.msr_write(t, msr, value);
        if self.trace && msr == crate::lapic_backend::MSR_TSC_DEADLINE {
            eprintln!(
                "[vcpu{}] lapic: TSC deadline {value:#x} armed at {now_ns} ns: next timer deadline {:?} ns ({:+} us from now)",
                self.cpu,
                self.next_deadline_ns(),
                self.next_deadline_ns()
                    .map_or(0, |d| (d as i64 - now_ns as i64) / 1000)
            );
        }
        match r {
            Ok(m) => {
                if let Some(m) = m {
                    self.message(m);
                }
                Ok(())
            }
            Err(_) => {
                self.stats.gp += 1;
                Err(Gp)
            }
        }
    }

    fn poll(&mut self, now_ns: u64) -> Pending {
        let synced = self.fabric.sync(self.cpu, &mut self.apic);
        if synced.merged.any() {
            let m = synced.merged;
            self.stats.merged += u64::from(m.latched + m.coalesced + m.dropped + m.events);
        }
        let t = self.t(now_ns);
        let mut w = self.apic.poll(t);
        if w.smi {
            self.apic.take_smi();
            self.stats.smis_ignored += 1;
            warn_once(&SMI_WARNED, || {
                format!("vCPU {}: SMI ignored (no SMM)", self.cpu)
            });
        }
        if w.extint {
            // A latched ExtINT message is cleared; LINT0 in ExtINT mode is
            // never asserted here (no 8259 drives it).
            self.apic.acknowledge_extint();
            self.stats.extints_ignored += 1;
            warn_once(&EXTINT_WARNED, || {
                format!("vCPU {}: ExtINT ignored (no 8259 PIC)", self.cpu)
            });
            w = self.apic.work();
        }
        Pending {
            interrupt: w.interrupt,
            nmi: w.nmi,
            init: w.init,
            sipi: w.sipi,
            wait_for_sipi: w.wait_for_sipi,
        }
    }

    fn acknowledge(&mut self, _now_ns: u64) -> u8 {
        self.stats.acknowledged += 1;
        self.apic.acknowledge()
    }

    fn take_nmi(&mut self) -> bool {
        let t = self.apic.take_nmi();
        self.stats.nmis += u64::from(t);
        t
    }

    fn models_run_state(&self) -> bool {
        true
    }

    fn take_init(&mut self) -> bool {
        let t = self.apic.take_init();
        self.stats.inits += u64::from(t);
        t
    }

    fn take_sipi(&mut self) -> Option<u8> {
        let v = self.apic.take_sipi();
        self.stats.sipis += u64::from(v.is_some());
        v
    }

    fn next_deadline_ns(&self) -> Option<u64> {
        // A masked timer delivers nothing when it expires, and the LAPIC
        // brings the count (TMCCT, the TSC deadline) up to date lazily at
        // the next access: no host timer for it. Without this, a masked
        // periodic timer with TMICT=1 woke the host every minimum period
        // (200 us) per vCPU for nothing, halted or not. Unmasking is an
        // LVT write, an exit, after which the next entry re-arms.
        const LVT_MASKED: u32 = 1 << 16;
        if self.apic.read_register(0, vlapic::Register::LvtTimer) & LVT_MASKED != 0 {
            return None;
        }
        self.apic
            .next_timer_deadline()
            .map(|d| d.saturating_add(self.epoch_ns))
    }

    fn cr8(&self) -> u8 {
        self.apic.cr8() as u8
    }

    fn set_cr8(&mut self, _now_ns: u64, cr8: u8) {
        self.apic.set_cr8(u64::from(cr8));
    }

    fn report(&self) -> Option<String> {
        Some(format!(
            "lapic {:?}; vlapic {:?}",
            self.stats,
            self.apic.stats()
        ))
    }

    fn vm_report(&self) -> Option<String> {
        Some(format!("fabric {:?}", self.fabric.stats()))
    }

    fn rejections(&self) -> Option<vlapic::Stats> {
        Some(*self.apic.stats())
    }

    fn save_state(&mut self, now_ns: u64) -> Option<vlapic::ApicState> {
        // Merge the inbox and run the timer first: an expiry that is due
        // becomes an IRR bit (a periodic count saved at its end would
        // restart a full period elsewhere, losing the tick).
        self.poll(now_ns);
        Some(self.apic.save(self.t(now_ns)))
    }

    fn restore_state(&mut self, now_ns: u64, state: &vlapic::ApicState) -> Result<(), String> {
        let t = self.t(now_ns);
        self.apic
            .restore(t, state)
            .map_err(|e| format!("LocalApic::restore: {e}"))?;
        // The routing identity (mode, IDs, LDR, DFR), PPR and enable
        // state changed: publish them before any vCPU sends an IPI.
        self.fabric.attach(self.cpu, &self.apic);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{Clock, RunState, VcpuControl, Wake};
    use crate::lapic_backend::GuestTsc;

    fn ctxs(n: u32) -> Vec<BackendContext> {
        let vcpus: Arc<Vec<Arc<VcpuControl>>> = Arc::new(
            (0..n)
                .map(|i| {
                    Arc::new(VcpuControl::new(
                        i,
                        if i == 0 {
                            RunState::Running
                        } else {
                            RunState::WaitForSipi
                        },
                    ))
                })
                .collect(),
        );
        (0..n)
            .map(|i| BackendContext {
                cpu: i,
                apic_id: i,
                bsp: i == 0,
                cpus: n,
                x2apic: true,
                tsc_deadline: true,
                tsc_khz: 2_000_000,
                guest_tsc: GuestTsc {
                    at_ns: 0,
                    value: 1_000_000,
                },
                apic_bus_khz: 1_000_000,
                phys_bits: 46,
                trace: false,
                vcpus: vcpus.clone(),
                clock: Clock::new(),
            })
            .collect()
    }

    fn w32(l: &mut dyn LapicBackend, off: u64, v: u32) {
        l.mmio_write(0, off, &v.to_le_bytes());
    }

    #[test]
    fn init_sipi_and_fixed_ipi_through_the_fabric() {
        let c = ctxs(2);
        let f = VlapicBackend::factory();
        let mut bsp = f(&c[0]);
        let mut ap = f(&c[1]);
        assert!(ap.models_run_state());
        assert!(ap.poll(0).wait_for_sipi);
        w32(bsp.as_mut(), 0xf0, 0x1ff);
        // INIT (assert) + SIPI 0x08 to all excluding self.
        w32(bsp.as_mut(), 0x300, 0x000c_4500);
        assert_eq!(c[1].vcpus[1].park(None), Wake::Woken);
        w32(bsp.as_mut(), 0x300, 0x000c_4608);
        let p = ap.poll(0);
        assert!(p.init && p.sipi == Some(0x08) && !p.wait_for_sipi, "{p:?}");
        assert!(ap.take_init());
        assert_eq!(ap.take_sipi(), Some(0x08));
        // The AP enables its APIC and gets a fixed IPI from the BSP.
        w32(ap.as_mut(), 0xf0, 0x1ff);
        assert_eq!(ap.poll(0), Pending::default());
        w32(bsp.as_mut(), 0x310, 1 << 24);
        w32(bsp.as_mut(), 0x300, 0x42);
        assert_eq!(c[1].vcpus[1].park(None), Wake::Woken);
        assert_eq!(ap.poll(0).interrupt, Some(0x42));
        assert_eq!(ap.acknowledge(0), 0x42);
        assert_eq!(bsp.poll(0).interrupt, None);
        // A second SIPI is ignored.
        w32(bsp.as_mut(), 0x300, 0x000c_4609);
        assert_eq!(ap.poll(0).sipi, None);
    }

    #[test]
    fn timer_deadlines_and_tsc_deadline() {
        let c = ctxs(1);
        let mut l = VlapicBackend::factory()(&c[0]);
        w32(l.as_mut(), 0xf0, 0x1ff);
        // One-shot, divide by 1, 1000 bus cycles at 1 GHz = 1 us.
        w32(l.as_mut(), 0x3e0, 0xb);
        w32(l.as_mut(), 0x320, 0x30);
        l.mmio_write(100, 0x380, &1000u32.to_le_bytes());
        assert_eq!(l.next_deadline_ns(), Some(1100));
        assert_eq!(l.poll(1099).interrupt, None);
        assert_eq!(l.poll(1100).interrupt, Some(0x30));
        // TSC deadline: 2 GHz TSC, TSC = 1_000_000 at time 0.
        w32(l.as_mut(), 0x320, 0x31 | (2 << 17));
        l.msr_write(2000, 0x6e0, 1_000_000 + 2 * 5000).unwrap();
        assert_eq!(l.next_deadline_ns(), Some(5000));
        assert_eq!(l.poll(5000).interrupt, Some(0x31));
        assert!(l.report().unwrap().contains("msr_writes: 1"));
    }

    #[test]
    fn masked_timer_needs_no_host_timer() {
        let c = ctxs(1);
        let mut l = VlapicBackend::factory()(&c[0]);
        w32(l.as_mut(), 0xf0, 0x1ff);
        // Periodic, masked, TMICT=1 (clamped to the minimum period).
        w32(l.as_mut(), 0x3e0, 0xb);
        w32(l.as_mut(), 0x320, 0x30 | (1 << 16) | (1 << 17));
        l.mmio_write(0, 0x380, &1u32.to_le_bytes());
        assert_eq!(l.next_deadline_ns(), None);
        assert_eq!(l.poll(10_000_000).interrupt, None);
        // Unmasked: armed again, and it fires.
        l.mmio_write(10_000_000, 0x320, &(0x30u32 | (1 << 17)).to_le_bytes());
        let d = l.next_deadline_ns().expect("armed");
        assert!(d > 10_000_000 && d <= 10_200_000, "{d}");
        assert_eq!(l.poll(d).interrupt, Some(0x30));
        assert_eq!(l.acknowledge(d), 0x30);
        l.mmio_write(d, 0xb0, &0u32.to_le_bytes());
        // Masked TSC deadline: nothing to arm, nothing fires; the
        // deadline reads 0 (expired) at the next access.
        let lvt = 0x31u32 | (1 << 16) | (2 << 17);
        l.mmio_write(d, 0x320, &lvt.to_le_bytes());
        l.msr_write(20_000_000, 0x6e0, 1_000_000 + 2 * 30_000_000)
            .unwrap();
        assert_eq!(l.next_deadline_ns(), None);
        assert_eq!(l.poll(40_000_000).interrupt, None);
        assert_eq!(l.msr_read(40_000_000, 0x6e0), Ok(0));
    }

    #[test]
    fn guest_tsc_sampled_after_clock_zero() {
        // The guest TSC (2 GHz) read 0 at clock 1 ms: its value at clock 0
        // would be negative. The LAPIC's time 0 is the sample instead.
        let mut c = ctxs(1).remove(0);
        c.guest_tsc = GuestTsc {
            at_ns: 1_000_000,
            value: 0,
        };
        let mut l = VlapicBackend::factory()(&c);
        l.mmio_write(1_000_000, 0xf0, &0x1ffu32.to_le_bytes());
        l.mmio_write(1_000_000, 0x320, &(0x40u32 | (2 << 17)).to_le_bytes());
        // At clock 2 ms the guest TSC is 2e6; arm for 4e6 = clock 3 ms.
        l.msr_write(2_000_000, 0x6e0, 4_000_000).unwrap();
        assert_eq!(l.next_deadline_ns(), Some(3_000_000));
        assert_eq!(l.poll(2_999_999).interrupt, None);
        assert_eq!(l.poll(3_000_000).interrupt, Some(0x40));
        // One-shot timers are relative: unaffected by the epoch.
        l.mmio_write(3_000_000, 0x320, &0x41u32.to_le_bytes());
        l.mmio_write(3_000_000, 0x3e0, &0xbu32.to_le_bytes());
        l.mmio_write(3_000_000, 0x380, &500u32.to_le_bytes());
        assert_eq!(l.next_deadline_ns(), Some(3_000_500));
    }

    #[test]
    fn gp_and_base_moves() {
        let c = ctxs(1);
        let mut l = VlapicBackend::factory()(&c[0]);
        assert_eq!(l.msr_read(0, 0x802), Err(Gp));
        assert_eq!(l.mmio_base(), Some(0xfee0_0000));
        l.msr_write(0, 0x1b, 0xfed0_0000 | (1 << 11) | (1 << 8))
            .unwrap();
        assert_eq!(l.mmio_base(), Some(0xfed0_0000));
        l.msr_write(0, 0x1b, 0xfed0_0000 | (3 << 10) | (1 << 8))
            .unwrap();
        assert_eq!(l.mmio_base(), None);
        assert_eq!(l.msr_read(0, 0x802), Ok(0));
        l.set_cr8(0, 3);
        assert_eq!(l.msr_read(0, 0x808), Ok(0x30));
        assert_eq!(l.cr8(), 3);
    }
}
