//! The seam between the vCPU loop and a userspace local APIC.
//!
//! With `--irqchip user` (vlapic, [`crate::vlapic_backend`]) or
//! `--irqchip stub` ([`StubLapic`]) KVM has no LAPIC. Every guest access
//! to the APIC reaches the VMM as an exit, and the vCPU loop
//! (`crate::vcpu`) calls the vCPU's [`LapicBackend`] with the time of the
//! exit:
//!
//! | guest does | KVM exit | backend call |
//! |---|---|---|
//! | xAPIC MMIO read/write in `[mmio_base(), +4 KiB)` | `KVM_EXIT_MMIO` | [`LapicBackend::mmio_read`] / [`LapicBackend::mmio_write`] |
//! | RDMSR/WRMSR 0x800-0x8FF (x2APIC) | `KVM_EXIT_X86_RDMSR/WRMSR`, reason INVAL | [`LapicBackend::msr_read`] / [`LapicBackend::msr_write`] |
//! | RDMSR/WRMSR 0x1B (APIC_BASE), 0x6E0 (TSC_DEADLINE) | same, reason FILTER (MSR filter denies them) | same |
//! | MOV CR8 | none: `kvm_run.cr8` on every exit | [`LapicBackend::set_cr8`] after each exit, [`LapicBackend::cr8`] into `kvm_run.cr8` before each entry |
//! | HLT | `KVM_EXIT_HLT` | [`LapicBackend::poll`] until [`Pending::wakes_halt`]; meanwhile the thread parks (`VcpuControl::park`) until woken or [`LapicBackend::next_deadline_ns`] |
//!
//! Before every `KVM_RUN` (after `VcpuControl::enter_guest`, so a wake
//! is never lost) the loop calls [`LapicBackend::poll`]. A backend that
//! [models the run state](LapicBackend::models_run_state) reports INIT
//! (the loop resets the registers), SIPI (real-mode start at
//! `CS = vector << 8`) and wait-for-SIPI (the thread parks instead of
//! entering) there. Then the loop arms the timer service with
//! [`LapicBackend::next_deadline_ns`], injects a pending NMI
//! ([`LapicBackend::take_nmi`] → `KVM_NMI`) and, when KVM says the guest
//! can take an interrupt (`ready_for_interrupt_injection` and IF=1),
//! calls [`LapicBackend::acknowledge`] (IRR→ISR) and injects the vector
//! with `KVM_INTERRUPT`; otherwise it sets `request_interrupt_window`.
//!
//! Cross-vCPU effects (IPIs, INIT, SIPI) are the backend's business: it
//! gets every vCPU's [`VcpuControl`] in [`BackendContext`]; after making
//! something pending for another vCPU it calls [`VcpuControl::wake`] on
//! it (wakes it from HLT or wait-for-SIPI and kicks it out of
//! `KVM_RUN`). The stub, which does not model the run state, sends INIT
//! and Start-up IPIs to [`VcpuControl::send_init`] /
//! [`VcpuControl::send_sipi`] instead.
//!
//! Time: all `now_ns` and deadlines are [`Clock`] nanoseconds.

use std::sync::{Arc, Mutex, OnceLock};

use crate::control::{Clock, VcpuControl};

/// The access must fault: the guest gets #GP (`kvm_run.msr.error = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gp;

/// IA32_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1b;
/// IA32_TSC_DEADLINE.
pub const MSR_TSC_DEADLINE: u32 = 0x6e0;
/// First x2APIC MSR.
pub const MSR_X2APIC_FIRST: u32 = 0x800;
/// Last x2APIC MSR.
pub const MSR_X2APIC_LAST: u32 = 0x8ff;
/// Size of the xAPIC MMIO page.
pub const APIC_MMIO_SIZE: u64 = 0x1000;

/// Whether `msr` belongs to the local APIC (and goes to the backend).
pub fn is_lapic_msr(msr: u32) -> bool {
    msr == MSR_APIC_BASE
        || msr == MSR_TSC_DEADLINE
        || (MSR_X2APIC_FIRST..=MSR_X2APIC_LAST).contains(&msr)
}

/// Everything a backend needs to know when it is created for one vCPU.
#[derive(Debug, Clone)]
pub struct BackendContext {
    /// vCPU index (0 = BSP).
    pub cpu: u32,
    /// Initial APIC ID (= x2APIC ID) of this vCPU.
    pub apic_id: u32,
    /// Whether this is the bootstrap processor.
    pub bsp: bool,
    /// Number of vCPUs.
    pub cpus: u32,
    /// CPUID offers x2APIC.
    pub x2apic: bool,
    /// CPUID offers the TSC-deadline timer.
    pub tsc_deadline: bool,
    /// Guest TSC frequency in kHz (for TSC-deadline conversions).
    pub tsc_khz: u32,
    /// A sample of the vCPU's guest TSC against the [`Clock`] (so that the
    /// LAPIC's idea of the guest TSC matches guest RDTSC).
    pub guest_tsc: GuestTsc,
    /// APIC timer input clock in kHz (CPUID 0x40000010 EBX).
    pub apic_bus_khz: u32,
    /// Guest MAXPHYADDR (CPUID 0x80000008 EAX bits 7:0).
    pub phys_bits: u8,
    /// Log LAPIC events (IPIs, mode changes, INIT/SIPI) to stderr.
    pub trace: bool,
    /// Control blocks of all vCPUs, indexed by vCPU index.
    pub vcpus: Arc<Vec<Arc<VcpuControl>>>,
    /// The VM clock.
    pub clock: Clock,
}

/// The guest TSC read `value` at [`Clock`] time `at_ns`; it advances at
/// [`BackendContext::tsc_khz`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuestTsc {
    /// Clock time of the sample (ns).
    pub at_ns: u64,
    /// Guest TSC then.
    pub value: u64,
}

/// What a LAPIC has for its vCPU right now. Looking consumes nothing:
/// take each item with the matching [`LapicBackend`] call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    /// Highest deliverable maskable vector ([`LapicBackend::acknowledge`]).
    pub interrupt: Option<u8>,
    /// An NMI is pending ([`LapicBackend::take_nmi`]).
    pub nmi: bool,
    /// INIT was accepted: reset the vCPU registers
    /// ([`LapicBackend::take_init`]).
    pub init: bool,
    /// Start-up IPI vector: start in real mode at `CS = vector << 8`
    /// ([`LapicBackend::take_sipi`]).
    pub sipi: Option<u8>,
    /// The processor is in wait-for-SIPI and must not run.
    pub wait_for_sipi: bool,
}

impl Pending {
    /// Whether a vCPU halted with interrupt flag `if_flag` wakes up.
    pub fn wakes_halt(&self, if_flag: bool) -> bool {
        (if_flag && self.interrupt.is_some()) || self.nmi || self.init || self.sipi.is_some()
    }
}

/// One vCPU's local APIC as seen by the vCPU loop. Called only from that
/// vCPU's thread; implementations share state with other vCPUs
/// internally (e.g. an interrupt fabric with per-vCPU inboxes).
pub trait LapicBackend: Send {
    /// The xAPIC MMIO base while the APIC is enabled in xAPIC mode, else
    /// `None` (then MMIO there is not the APIC's). Consulted on every MMIO
    /// exit, so a moved base takes effect at once.
    fn mmio_base(&self) -> Option<u64>;
    /// Guest read of `data.len()` bytes at `offset` in the APIC page.
    fn mmio_read(&mut self, now_ns: u64, offset: u64, data: &mut [u8]);
    /// Guest write at `offset` in the APIC page.
    fn mmio_write(&mut self, now_ns: u64, offset: u64, data: &[u8]);
    /// Guest RDMSR of a LAPIC MSR ([`is_lapic_msr`]).
    fn msr_read(&mut self, now_ns: u64, msr: u32) -> Result<u64, Gp>;
    /// Guest WRMSR of a LAPIC MSR.
    fn msr_write(&mut self, now_ns: u64, msr: u32, value: u64) -> Result<(), Gp>;
    /// Merges what other vCPUs and devices sent, runs the timer up to
    /// `now_ns` and reports what is pending. Called before every guest
    /// entry and while halted.
    fn poll(&mut self, now_ns: u64) -> Pending;
    /// The vector the LAPIC would deliver now (highest deliverable IRR
    /// vector above PPR), if any.
    fn pending_interrupt(&mut self, now_ns: u64) -> Option<u8> {
        self.poll(now_ns).interrupt
    }
    /// The CPU takes the interrupt: IRR→ISR; returns the vector to inject
    /// (the spurious vector if it was masked meanwhile).
    fn acknowledge(&mut self, now_ns: u64) -> u8;
    /// Takes a pending NMI (LVT or IPI).
    fn take_nmi(&mut self) -> bool;
    /// Whether INIT / SIPI / wait-for-SIPI come from this LAPIC
    /// ([`Pending::init`], [`Pending::sipi`], [`Pending::wait_for_sipi`]).
    /// If not, the backend drives [`VcpuControl::send_init`] /
    /// [`VcpuControl::send_sipi`] instead.
    fn models_run_state(&self) -> bool {
        false
    }
    /// Takes a pending INIT (the LAPIC already did its INIT reset).
    fn take_init(&mut self) -> bool {
        false
    }
    /// Takes a pending start-up vector.
    fn take_sipi(&mut self) -> Option<u8> {
        None
    }
    /// When the LAPIC timer (one-shot, periodic or TSC deadline) next fires.
    fn next_deadline_ns(&self) -> Option<u64>;
    /// TPR bits 7:4 as CR8.
    fn cr8(&self) -> u8;
    /// The guest wrote CR8 (seen in `kvm_run.cr8` after an exit).
    fn set_cr8(&mut self, now_ns: u64, cr8: u8);
    /// One line of per-vCPU statistics for `--stats`.
    fn report(&self) -> Option<String> {
        None
    }
    /// VM-wide statistics (e.g. of an interrupt fabric) for `--stats`;
    /// printed once, from vCPU 0's backend.
    fn vm_report(&self) -> Option<String> {
        None
    }
    /// Guest input the LAPIC model rejected or dropped so far, for the
    /// `--stats` summary (`None`: the backend does not count them).
    fn rejections(&self) -> Option<vlapic::Stats> {
        None
    }
    /// The complete LAPIC state at `now_ns` (after a [`LapicBackend::poll`],
    /// so a timer already due is in IRR), for an irqchip switch
    /// (`crate::migrate`). `None`: the backend cannot save.
    fn save_state(&mut self, _now_ns: u64) -> Option<vlapic::ApicState> {
        None
    }
    /// Replaces the LAPIC state, resuming its timer at `now_ns`.
    fn restore_state(&mut self, _now_ns: u64, _state: &vlapic::ApicState) -> Result<(), String> {
        Err("this LAPIC backend cannot restore a state".into())
    }
}

/// Creates the backend of one vCPU.
pub type BackendFactory = Arc<dyn Fn(&BackendContext) -> Box<dyn LapicBackend> + Send + Sync>;

/// Pending-IRR slots of all vCPUs, shared by the [`StubLapic`]s of a VM.
pub type StubInbox = Arc<Vec<Mutex<[u64; 4]>>>;

/// A deliberately minimal LAPIC (`--irqchip stub`), kept to exercise the
/// userspace plumbing without `vlapic`: ID, version, TPR/PPR, SVR, EOI,
/// ISR/IRR reads, the APIC_BASE / x2APIC mode switch, and IPIs: Fixed
/// (physical destination = vCPU index, or a shorthand; to other vCPUs
/// through a shared inbox + [`VcpuControl::wake`]), INIT and Start-up
/// (through [`VcpuControl::send_init`] / [`VcpuControl::send_sipi`]).
/// No timer, no NMI, no logical destinations, no LVTs.
#[derive(Debug)]
pub struct StubLapic {
    cpu: usize,
    vcpus: Arc<Vec<Arc<VcpuControl>>>,
    inbox: StubInbox,
    apic_id: u32,
    base: u64,
    irr: [u64; 4],
    isr: [u64; 4],
    tpr: u32,
    svr: u32,
    icr_hi: u32,
    x2apic_allowed: bool,
}

const BASE_EN: u64 = 1 << 11;
const BASE_EXTD: u64 = 1 << 10;
const BASE_BSP: u64 = 1 << 8;

fn highest(bits: &[u64; 4]) -> Option<u8> {
    (0..4).rev().find_map(|i| {
        let w = bits[i];
        (w != 0).then(|| (i as u32 * 64 + 63 - w.leading_zeros()) as u8)
    })
}
fn set_bit(bits: &mut [u64; 4], v: u8) {
    bits[usize::from(v / 64)] |= 1 << (v % 64);
}
fn clear_bit(bits: &mut [u64; 4], v: u8) {
    bits[usize::from(v / 64)] &= !(1 << (v % 64));
}

impl StubLapic {
    /// A stub LAPIC in xAPIC mode at the default base; `inbox` holds one
    /// pending-IRR slot per vCPU, shared by all stubs of the VM.
    pub fn new(ctx: &BackendContext, inbox: StubInbox) -> Self {
        StubLapic {
            cpu: ctx.cpu as usize,
            vcpus: ctx.vcpus.clone(),
            inbox,
            apic_id: ctx.apic_id,
            base: crate::layout::APIC_DEFAULT_BASE | BASE_EN | if ctx.bsp { BASE_BSP } else { 0 },
            irr: [0; 4],
            isr: [0; 4],
            tpr: 0,
            svr: 0xff,
            icr_hi: 0,
            x2apic_allowed: ctx.x2apic,
        }
    }

    /// A factory for [`StubLapic`]s (one shared inbox per factory).
    pub fn factory() -> BackendFactory {
        let shared: Arc<OnceLock<StubInbox>> = Arc::new(OnceLock::new());
        Arc::new(move |ctx| {
            let inbox = shared
                .get_or_init(|| Arc::new((0..ctx.cpus).map(|_| Mutex::new([0; 4])).collect()))
                .clone();
            Box::new(StubLapic::new(ctx, inbox)) as Box<dyn LapicBackend>
        })
    }

    fn x2apic(&self) -> bool {
        self.base & (BASE_EN | BASE_EXTD) == BASE_EN | BASE_EXTD
    }

    fn ppr(&self) -> u32 {
        let isrv = highest(&self.isr).map_or(0, u32::from);
        if (self.tpr & 0xf0) >= (isrv & 0xf0) {
            self.tpr & 0xff
        } else {
            isrv & 0xf0
        }
    }

    fn accept(&mut self, vector: u8) {
        if vector >= 16 && self.svr & 0x100 != 0 {
            set_bit(&mut self.irr, vector);
        }
    }

    fn eoi(&mut self) {
        if let Some(v) = highest(&self.isr) {
            clear_bit(&mut self.isr, v);
        }
    }

    fn icr_write(&mut self, lo: u32, dest: u32) {
        let mode = (lo >> 8) & 7;
        let shorthand = (lo >> 18) & 3;
        let vector = lo as u8;
        let broadcast = if self.x2apic() { u32::MAX } else { 0xff };
        let logical = lo & (1 << 11) != 0;
        let n = self.vcpus.len();
        for t in 0..n {
            let hit = match shorthand {
                0 => !logical && (dest == broadcast || dest as usize == t),
                1 => t == self.cpu,
                2 => true,
                _ => t != self.cpu,
            };
            if !hit {
                continue;
            }
            match mode {
                0 if t == self.cpu => self.accept(vector),
                0 if vector >= 16 => {
                    if let Some(slot) = self.inbox.get(t) {
                        set_bit(&mut slot.lock().unwrap_or_else(|e| e.into_inner()), vector);
                        self.vcpus[t].wake();
                    }
                }
                // INIT level de-assert (level 0, trigger level) does nothing.
                5 if lo & (1 << 14) == 0 && lo & (1 << 15) != 0 => {}
                5 => self.vcpus[t].send_init(),
                6 => self.vcpus[t].send_sipi(vector),
                _ => {}
            }
        }
    }

    fn drain_inbox(&mut self) {
        if let Some(slot) = self.inbox.get(self.cpu) {
            let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
            if self.svr & 0x100 != 0 {
                for (i, w) in g.iter().enumerate() {
                    self.irr[i] |= w;
                }
            }
            *g = [0; 4];
        }
    }

    fn read_reg(&self, reg: u32) -> Option<u32> {
        Some(match reg {
            0x02 => {
                if self.x2apic() {
                    self.apic_id
                } else {
                    self.apic_id << 24
                }
            }
            0x03 => 0x0005_0014,
            0x0d if self.x2apic() => ((self.apic_id >> 4) << 16) | (1 << (self.apic_id & 0xf)),
            0x08 => self.tpr,
            0x0a => self.ppr(),
            0x0f => self.svr,
            0x10..=0x17 => {
                (self.isr[((reg - 0x10) / 2) as usize] >> (32 * ((reg - 0x10) % 2))) as u32
            }
            0x20..=0x27 => {
                (self.irr[((reg - 0x20) / 2) as usize] >> (32 * ((reg - 0x20) % 2))) as u32
            }
            0x31 if !self.x2apic() => self.icr_hi,
            0x30 | 0x32..=0x37 | 0x38 | 0x39 | 0x3e | 0x28 | 0x18..=0x1f => 0,
            _ => return None,
        })
    }
}

impl LapicBackend for StubLapic {
    fn mmio_base(&self) -> Option<u64> {
        (self.base & (BASE_EN | BASE_EXTD) == BASE_EN).then_some(self.base & !0xfff)
    }

    fn mmio_read(&mut self, _now: u64, offset: u64, data: &mut [u8]) {
        let reg = (offset >> 4) as u32;
        let v = self.read_reg(reg).unwrap_or(0);
        let shift = (offset & 0xf) as usize;
        let bytes = v.to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(shift + i).copied().unwrap_or(0);
        }
    }

    fn mmio_write(&mut self, _now: u64, offset: u64, data: &[u8]) {
        if offset & 0xf != 0 || data.len() != 4 {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        match offset >> 4 {
            0x08 => self.tpr = v & 0xff,
            0x0b => self.eoi(),
            0x0f => self.svr = v & 0x1ff,
            0x30 => self.icr_write(v, self.icr_hi >> 24),
            0x31 => self.icr_hi = v & 0xff00_0000,
            _ => {}
        }
    }

    fn msr_read(&mut self, _now: u64, msr: u32) -> Result<u64, Gp> {
        match msr {
            MSR_APIC_BASE => Ok(self.base),
            MSR_TSC_DEADLINE => Ok(0),
            m if self.x2apic() && (MSR_X2APIC_FIRST..=MSR_X2APIC_LAST).contains(&m) => {
                match m - MSR_X2APIC_FIRST {
                    0x30 => Ok(0),
                    0x0b | 0x3f | 0x31 | 0x0e => Err(Gp),
                    r => self.read_reg(r).map(u64::from).ok_or(Gp),
                }
            }
            _ => Err(Gp),
        }
    }

    fn msr_write(&mut self, _now: u64, msr: u32, value: u64) -> Result<(), Gp> {
        match msr {
            MSR_APIC_BASE => {
                let extd = value & BASE_EXTD != 0;
                if (extd && !self.x2apic_allowed) || value & 0x2ff != 0 {
                    return Err(Gp);
                }
                self.base = (value & !BASE_BSP) | (self.base & BASE_BSP);
                Ok(())
            }
            MSR_TSC_DEADLINE => Ok(()),
            m if self.x2apic() && (MSR_X2APIC_FIRST..=MSR_X2APIC_LAST).contains(&m) => {
                let lo = value as u32;
                if m != 0x830 && value >> 32 != 0 {
                    return Err(Gp);
                }
                match m - MSR_X2APIC_FIRST {
                    0x08 => self.tpr = lo & 0xff,
                    0x0b if lo == 0 => self.eoi(),
                    0x0f => self.svr = lo & 0x1ff,
                    0x30 => self.icr_write(lo, (value >> 32) as u32),
                    0x3f if lo <= 0xff => self.accept(lo as u8),
                    _ => return Err(Gp),
                }
                Ok(())
            }
            _ => Err(Gp),
        }
    }

    fn poll(&mut self, _now: u64) -> Pending {
        self.drain_inbox();
        let interrupt = highest(&self.irr).filter(|&v| u32::from(v) & 0xf0 > self.ppr() & 0xf0);
        Pending {
            interrupt,
            ..Pending::default()
        }
    }

    fn acknowledge(&mut self, now: u64) -> u8 {
        match self.pending_interrupt(now) {
            Some(v) => {
                clear_bit(&mut self.irr, v);
                set_bit(&mut self.isr, v);
                v
            }
            None => self.svr as u8,
        }
    }

    fn take_nmi(&mut self) -> bool {
        false
    }

    fn next_deadline_ns(&self) -> Option<u64> {
        None
    }

    fn cr8(&self) -> u8 {
        (self.tpr >> 4) as u8
    }

    fn set_cr8(&mut self, _now: u64, cr8: u8) {
        self.tpr = u32::from(cr8 & 0xf) << 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::RunState;

    fn ctx() -> BackendContext {
        BackendContext {
            cpu: 0,
            apic_id: 0,
            bsp: true,
            cpus: 1,
            x2apic: true,
            tsc_deadline: true,
            tsc_khz: 1_000_000,
            guest_tsc: GuestTsc::default(),
            apic_bus_khz: 1_000_000,
            phys_bits: 46,
            trace: false,
            vcpus: Arc::new(vec![Arc::new(VcpuControl::new(0, RunState::Running))]),
            clock: Clock::new(),
        }
    }

    fn stub(ctx: &BackendContext) -> StubLapic {
        let inbox = Arc::new((0..ctx.cpus).map(|_| Mutex::new([0; 4])).collect());
        StubLapic::new(ctx, inbox)
    }

    #[test]
    fn stub_routes_ipis_init_sipi() {
        let mut c = ctx();
        c.cpus = 2;
        c.vcpus = Arc::new(vec![
            Arc::new(VcpuControl::new(0, RunState::Running)),
            Arc::new(VcpuControl::new(1, RunState::WaitForInit)),
        ]);
        let f = StubLapic::factory();
        let mut bsp = f(&c);
        let mut c1 = c.clone();
        (c1.cpu, c1.apic_id, c1.bsp) = (1, 1, false);
        let mut ap = f(&c1);
        ap.mmio_write(0, 0xf0, &0x1ffu32.to_le_bytes());
        // INIT + SIPI to all-but-self reach the AP's control block.
        bsp.mmio_write(0, 0x300, &0x000c_4500u32.to_le_bytes());
        bsp.mmio_write(0, 0x300, &0x000c_4608u32.to_le_bytes());
        assert_eq!(c.vcpus[1].wait_for_startup(), Some(0x08));
        // Fixed IPI to APIC ID 1 lands in the AP's LAPIC and wakes it.
        bsp.mmio_write(0, 0x310, &(1u32 << 24).to_le_bytes());
        bsp.mmio_write(0, 0x300, &0x0000_0042u32.to_le_bytes());
        assert_eq!(c.vcpus[1].park(None), crate::control::Wake::Woken);
        assert_eq!(ap.pending_interrupt(0), Some(0x42));
        assert_eq!(bsp.pending_interrupt(0), None);
    }

    #[test]
    fn stub_self_ipi_ack_eoi() {
        let mut l = stub(&ctx());
        assert_eq!(l.mmio_base(), Some(0xfee0_0000));
        l.mmio_write(0, 0xf0, &0x1ffu32.to_le_bytes());
        l.mmio_write(0, 0x300, &0x0004_0040u32.to_le_bytes());
        assert_eq!(l.pending_interrupt(0), Some(0x40));
        // TPR class 4 masks vector 0x40.
        l.set_cr8(0, 4);
        assert_eq!(l.pending_interrupt(0), None);
        l.set_cr8(0, 0);
        assert_eq!(l.acknowledge(0), 0x40);
        let mut isr = [0u8; 4];
        l.mmio_read(0, 0x120, &mut isr);
        assert_eq!(u32::from_le_bytes(isr), 1);
        l.mmio_write(0, 0xb0, &[0; 4]);
        l.mmio_read(0, 0x120, &mut isr);
        assert_eq!(u32::from_le_bytes(isr), 0);
        assert_eq!(l.acknowledge(0), 0xff); // spurious
    }

    #[test]
    fn stub_x2apic_msrs() {
        let mut l = stub(&ctx());
        assert_eq!(l.msr_read(0, 0x802), Err(Gp)); // xAPIC mode
        l.msr_write(0, MSR_APIC_BASE, 0xfee0_0000 | BASE_EN | BASE_EXTD)
            .unwrap();
        assert_eq!(l.mmio_base(), None);
        assert_eq!(l.msr_read(0, MSR_APIC_BASE).unwrap() & BASE_BSP, BASE_BSP);
        assert_eq!(l.msr_read(0, 0x802), Ok(0));
        assert_eq!(l.msr_read(0, 0x83f), Err(Gp));
        l.msr_write(0, 0x80f, 0x1ff).unwrap();
        l.msr_write(0, 0x83f, 0x50).unwrap();
        assert_eq!(l.pending_interrupt(0), Some(0x50));
        assert_eq!(l.msr_write(0, 0x80b, 1), Err(Gp));
        assert_eq!(l.msr_write(0, 0x808, 1 << 32), Err(Gp));
        assert!(is_lapic_msr(0x1b) && is_lapic_msr(0x8ff) && !is_lapic_msr(0x10));
    }
}
