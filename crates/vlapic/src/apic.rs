//! The local APIC of one vCPU: register handlers, the two access paths
//! (xAPIC MMIO, x2APIC MSRs), `IA32_APIC_BASE`, interrupt acceptance and
//! the work the vCPU must do.
//!
//! Data flows one way: an access is decoded ([`Register`]), checked against
//! the mode's rules, applied by one handler per register, and its effects
//! come back as a [`Message`] (bus traffic) or show up in [`Work`].

use crate::config::ApicConfig;
use crate::event::{Fault, Message, RunState, Stats, Work};
use crate::ipi::{decode_icr, ApicIdentity, Interrupt, Ipi};
use crate::lvt::{Lvt, LvtDelivery, LVT_COUNT, LVT_READ_ONLY};
use crate::mode::{self, ApicMode};
use crate::priority::InterruptRegisters;
use crate::regs::{
    esr, ApicBase, DeliveryMode, DivideConfig, Icr, LvtEntry, Register, Shorthand, Svr, TimerMode,
    TriggerMode, APIC_DEFAULT_BASE, APIC_PAGE_SIZE, LVT_RESET, MSR_IA32_APIC_BASE,
    MSR_IA32_TSC_DEADLINE, SVR_RESET, X2APIC_MSR_BASE, X2APIC_MSR_LAST,
};
use crate::timer::{ApicTimer, TimeBase};

/// Pending events for the vCPU that are not IRR vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Pending {
    pub nmi: bool,
    pub smi: bool,
    pub init: bool,
    pub sipi: Option<u8>,
    pub extint: bool,
}

/// One vCPU's local APIC.
///
/// The embedder owns it on the vCPU's thread, passes every APIC access to
/// it with the current time, routes the [`Message`]s it returns, and after
/// each exit asks [`LocalApic::poll`] what to inject.
///
/// ```
/// use vlapic::{ApicConfig, LocalApic};
/// let mut apic = LocalApic::new(ApicConfig::new(0).with_bsp(true));
/// // Software-enable the APIC (SVR bit 8) and send a self-IPI, vector 0x40.
/// apic.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
/// apic.mmio_write(0, 0x300, &0x0004_0040u32.to_le_bytes());
/// assert_eq!(apic.poll(0).interrupt, Some(0x40));
/// assert_eq!(apic.acknowledge(), 0x40);
/// apic.mmio_write(0, 0xB0, &0u32.to_le_bytes()); // EOI
/// assert_eq!(apic.poll(0).interrupt, None);
/// ```
#[derive(Debug, Clone)]
pub struct LocalApic {
    pub(crate) cfg: ApicConfig,
    pub(crate) tb: TimeBase,
    pub(crate) base: ApicBase,
    pub(crate) mode: ApicMode,
    pub(crate) xapic_id: u8,
    pub(crate) tpr: u8,
    pub(crate) ldr: u32,
    pub(crate) dfr: u32,
    pub(crate) svr: Svr,
    pub(crate) irq: InterruptRegisters,
    pub(crate) esr: u32,
    pub(crate) esr_pending: u32,
    pub(crate) lvt: [LvtEntry; LVT_COUNT],
    pub(crate) icr: Icr,
    pub(crate) timer: ApicTimer,
    pub(crate) lint_level: [bool; 2],
    pub(crate) run_state: RunState,
    pub(crate) pending: Pending,
    in_error_delivery: bool,
    pub(crate) stats: Stats,
}

impl LocalApic {
    /// A local APIC in its power-on state.
    pub fn new(cfg: ApicConfig) -> Self {
        let tb = TimeBase {
            bus_hz: cfg.bus_frequency_hz.max(1),
            tsc_hz: cfg.tsc_frequency_hz.max(1),
            tsc_offset: cfg.tsc_offset,
        };
        let min_cycles = tb.cycles_in_ns(cfg.min_periodic_ns);
        let mut apic = LocalApic {
            cfg,
            tb,
            base: ApicBase::new(),
            mode: ApicMode::XApic,
            xapic_id: 0,
            tpr: 0,
            ldr: 0,
            dfr: !0,
            svr: Svr::from_bits(SVR_RESET),
            irq: InterruptRegisters::default(),
            esr: 0,
            esr_pending: 0,
            lvt: [LvtEntry::from_bits(LVT_RESET); LVT_COUNT],
            icr: Icr::new(),
            timer: ApicTimer::new(min_cycles),
            lint_level: [false; 2],
            run_state: RunState::Running,
            pending: Pending::default(),
            in_error_delivery: false,
            stats: Stats::default(),
        };
        apic.reset();
        apic
    }

    // ----------------------------------------------------------------
    // Reset (SDM 11.4.7.1, 11.4.7.3)
    // ----------------------------------------------------------------

    /// Power-on / RESET: `IA32_APIC_BASE = 0xFEE00000 | EN | BSP`, xAPIC
    /// mode, ID = initial ID, every other register at its reset value; APs
    /// wait for SIPI.
    pub fn reset(&mut self) {
        self.base = ApicBase::from_bits(APIC_DEFAULT_BASE)
            .with_enabled(true)
            .with_bsp(self.cfg.bsp);
        self.mode = ApicMode::XApic;
        self.xapic_id = self.cfg.apic_id as u8;
        self.ldr = 0;
        self.init_registers();
        self.lint_level = [false; 2];
        self.run_state = if self.cfg.bsp {
            RunState::Running
        } else {
            RunState::WaitForSipi
        };
    }

    /// INIT reset: the same registers as power-on, but `IA32_APIC_BASE`
    /// (and the mode), the APIC ID and, in x2APIC mode, the LDR are kept.
    /// Does not change the run state (see [`LocalApic::accept`] for INIT
    /// delivery, which also enters wait-for-SIPI).
    pub fn init_reset(&mut self) {
        self.init_registers();
    }

    fn init_registers(&mut self) {
        self.tpr = 0;
        if self.mode != ApicMode::X2Apic {
            self.ldr = 0;
        }
        self.dfr = !0;
        self.svr = Svr::from_bits(SVR_RESET);
        self.irq.clear();
        self.esr = 0;
        self.esr_pending = 0;
        self.lvt = [LvtEntry::from_bits(LVT_RESET); LVT_COUNT];
        self.icr = Icr::new();
        self.timer.reset();
        self.pending = Pending::default();
    }

    // ----------------------------------------------------------------
    // Identity and mode
    // ----------------------------------------------------------------

    /// The configuration this APIC was built with.
    pub fn config(&self) -> &ApicConfig {
        &self.cfg
    }

    /// Current mode.
    pub fn mode(&self) -> ApicMode {
        self.mode
    }

    /// `IA32_APIC_BASE`.
    pub fn apic_base(&self) -> u64 {
        self.base.into_bits()
    }

    /// Physical address of the xAPIC MMIO page while it decodes (xAPIC
    /// mode), `None` otherwise.
    pub fn mmio_base(&self) -> Option<u64> {
        (self.mode == ApicMode::XApic).then(|| self.base.address())
    }

    /// Current APIC ID: the 32-bit x2APIC ID in x2APIC mode, the 8-bit
    /// xAPIC ID otherwise.
    pub fn id(&self) -> u32 {
        match self.mode {
            ApicMode::X2Apic => self.cfg.apic_id,
            _ => self.xapic_id as u32,
        }
    }

    /// What destination matching looks at.
    pub fn identity(&self) -> ApicIdentity {
        ApicIdentity {
            mode: self.mode,
            xapic_id: self.xapic_id,
            x2apic_id: self.cfg.apic_id,
            ldr: self.ldr,
            dfr: self.dfr,
        }
    }

    /// Whether the APIC is software-enabled (SVR bit 8).
    pub fn software_enabled(&self) -> bool {
        self.svr.software_enabled()
    }

    /// Run state (running or waiting for SIPI).
    pub fn run_state(&self) -> RunState {
        self.run_state
    }

    /// Counters of rejected guest input.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// x2APIC logical ID derived from the x2APIC ID (SDM 11.12.10.2):
    /// cluster `id >> 4` in bits 31:16, bit `id & 0xF` set in 15:0.
    pub const fn x2apic_ldr(id: u32) -> u32 {
        ((id >> 4) << 16) | (1 << (id & 0xF))
    }

    // ----------------------------------------------------------------
    // Priority (SDM 11.8.3)
    // ----------------------------------------------------------------

    /// TPR.
    pub fn tpr(&self) -> u8 {
        self.tpr
    }

    /// Sets TPR (e.g. from a `MOV CR8` the hypervisor handled).
    pub fn set_tpr(&mut self, tpr: u8) {
        self.tpr = tpr;
    }

    /// CR8, which is `TPR[7:4]`.
    pub fn cr8(&self) -> u64 {
        (self.tpr >> 4) as u64
    }

    /// `MOV CR8`: `TPR = (cr8 & 0xF) << 4`.
    pub fn set_cr8(&mut self, cr8: u64) {
        self.tpr = ((cr8 & 0xF) as u8) << 4;
    }

    /// PPR.
    pub fn ppr(&self) -> u8 {
        self.irq.ppr(self.tpr)
    }

    /// IRR, ISR and TMR.
    pub fn interrupt_registers(&self) -> &InterruptRegisters {
        &self.irq
    }

    // ----------------------------------------------------------------
    // Time
    // ----------------------------------------------------------------

    /// Runs the timer up to `now` (ns on the embedder's clock), latching
    /// its interrupt if it fired. Every access that takes `now` does this
    /// first, so effects happen in time order.
    pub fn advance(&mut self, now: u64) {
        if self.timer.advance(&self.tb, now) {
            self.fire_lvt(Lvt::Timer);
        }
    }

    /// When (ns) the timer next needs [`LocalApic::advance`] or
    /// [`LocalApic::poll`]; `None` when it is not armed.
    pub fn next_timer_deadline(&self) -> Option<u64> {
        self.timer.next_expiry(&self.tb)
    }

    /// The conversion between the embedder's clock and the APIC's clocks.
    pub fn time_base(&self) -> &TimeBase {
        &self.tb
    }

    /// Changes the guest TSC's relation to the embedder's clock (e.g.
    /// after the guest wrote `IA32_TSC`), keeping an armed TSC deadline.
    pub fn set_tsc_offset(&mut self, offset: u64) {
        self.tb.tsc_offset = offset;
    }

    // ----------------------------------------------------------------
    // The vCPU's work
    // ----------------------------------------------------------------

    /// Runs time forward to `now` and returns what the vCPU must do.
    pub fn poll(&mut self, now: u64) -> Work {
        self.advance(now);
        self.work()
    }

    /// What the vCPU must do, without advancing time.
    pub fn work(&self) -> Work {
        Work {
            interrupt: if self.mode == ApicMode::Disabled {
                None
            } else {
                self.irq.deliverable(self.tpr)
            },
            nmi: self.pending.nmi,
            smi: self.pending.smi,
            init: self.pending.init,
            sipi: self.pending.sipi,
            extint: self.extint_pending(),
            wait_for_sipi: self.run_state == RunState::WaitForSipi,
        }
    }

    /// The CPU takes a maskable interrupt (INTA): moves the highest
    /// deliverable vector from IRR to ISR and returns it. If nothing is
    /// deliverable any more (TPR was raised, say) it returns the spurious
    /// vector (`SVR[7:0]`) and sets nothing in ISR (SDM 11.9).
    pub fn acknowledge(&mut self) -> u8 {
        if self.mode != ApicMode::Disabled {
            if let Some(v) = self.irq.acknowledge(self.tpr) {
                return v;
            }
        }
        self.svr.vector()
    }

    /// Takes a pending NMI.
    pub fn take_nmi(&mut self) -> bool {
        core::mem::take(&mut self.pending.nmi)
    }

    /// Takes a pending SMI.
    pub fn take_smi(&mut self) -> bool {
        core::mem::take(&mut self.pending.smi)
    }

    /// Takes a pending INIT (the APIC has already done its INIT reset).
    pub fn take_init(&mut self) -> bool {
        core::mem::take(&mut self.pending.init)
    }

    /// Takes a pending start-up IPI vector.
    pub fn take_sipi(&mut self) -> Option<u8> {
        self.pending.sipi.take()
    }

    /// The CPU took an external interrupt from the 8259: clears a latched
    /// ExtINT message (a LINT ExtINT entry stays pending while its pin is
    /// asserted).
    pub fn acknowledge_extint(&mut self) {
        self.pending.extint = false;
    }

    fn extint_pending(&self) -> bool {
        if self.pending.extint {
            return true;
        }
        if self.mode == ApicMode::Disabled {
            // A hardware-disabled APIC passes LINT0 through as INTR.
            return self.lint_level[0];
        }
        // ExtINT is valid on either LINT pin (SDM 11.5.1), level-sensitive.
        [Lvt::Lint0, Lvt::Lint1]
            .into_iter()
            .zip(self.lint_level)
            .any(|(lvt, level)| {
                let e = self.lvt[lvt.index()];
                !e.masked() && e.delivery_mode() == DeliveryMode::ExtInt && (level ^ e.active_low())
            })
    }

    // ----------------------------------------------------------------
    // Accepting interrupts (SDM 11.8.4)
    // ----------------------------------------------------------------

    /// Accepts an interrupt message addressed to this APIC (from an IPI,
    /// MSI or IOAPIC; the router already matched the destination and, for
    /// lowest priority, chose this APIC).
    ///
    /// Fixed and lowest-priority interrupts are dropped while the APIC is
    /// software-disabled; NMI, SMI, INIT and start-up are still accepted. A
    /// hardware-disabled APIC accepts nothing. Illegal vectors (0-15) set
    /// ESR bit 6 and are not latched.
    pub fn accept(&mut self, irq: Interrupt) {
        if self.mode == ApicMode::Disabled {
            self.drop_interrupt("hardware-disabled", irq);
            return;
        }
        match irq.delivery_mode {
            DeliveryMode::Fixed | DeliveryMode::LowestPriority => {
                if !self.svr.software_enabled() {
                    self.drop_interrupt("software-disabled", irq);
                    return;
                }
                self.latch_fixed(irq.vector, irq.trigger == TriggerMode::Level);
            }
            DeliveryMode::Smi => self.pending.smi = true,
            DeliveryMode::Nmi => self.pending.nmi = true,
            DeliveryMode::Init => {
                if !irq.is_init_deassert() {
                    self.receive_init();
                }
            }
            DeliveryMode::StartUp => {
                if self.run_state == RunState::WaitForSipi && self.pending.sipi.is_none() {
                    self.pending.sipi = Some(irq.vector);
                    self.run_state = RunState::Running;
                } else {
                    self.stats.sipi_ignored += 1;
                    log::debug!("apic {}: SIPI {:#x} ignored", self.cfg.apic_id, irq.vector);
                }
            }
            DeliveryMode::ExtInt => self.pending.extint = true,
            DeliveryMode::Reserved3 => self.drop_interrupt("reserved delivery mode", irq),
        }
    }

    /// Delivers `ipi` to this APIC if it is a target: checks the shorthand
    /// (`from_self` says whether this APIC sent it) and the destination.
    /// Lowest-priority IPIs are accepted by every match; choosing one
    /// target is the router's job. Returns whether this APIC was a target.
    pub fn deliver_ipi(&mut self, ipi: &Ipi, from_self: bool) -> bool {
        let hit = match ipi.destination.shorthand {
            Shorthand::None => ipi.destination.matches(&self.identity()),
            Shorthand::SelfOnly => from_self,
            Shorthand::AllIncludingSelf => self.mode != ApicMode::Disabled,
            Shorthand::AllExcludingSelf => !from_self && self.mode != ApicMode::Disabled,
        };
        if hit {
            self.accept(ipi.interrupt);
        }
        hit
    }

    fn receive_init(&mut self) {
        self.init_registers();
        self.pending.init = true;
        // After INIT an AP waits for SIPI; the BSP restarts at the reset
        // vector (whatever state it was in before).
        self.run_state = if self.cfg.bsp {
            RunState::Running
        } else {
            RunState::WaitForSipi
        };
    }

    fn drop_interrupt(&mut self, why: &str, irq: Interrupt) {
        self.stats.dropped += 1;
        log::debug!("apic {}: {why}: dropped {irq:?}", self.cfg.apic_id);
    }

    /// Latches a Fixed vector in IRR (and TMR), or records a receive
    /// illegal vector error.
    fn latch_fixed(&mut self, vector: u8, level: bool) {
        if vector < 16 {
            self.stats.illegal_vector += 1;
            log::debug!(
                "apic {}: received illegal vector {vector}",
                self.cfg.apic_id
            );
            self.error(esr::RECEIVE_ILLEGAL_VECTOR);
            return;
        }
        self.irq.request(vector, level);
    }

    /// Records an error in the pending ESR and signals LVT Error. An error
    /// raised while delivering LVT Error itself (an illegal vector there)
    /// is recorded but does not signal again.
    fn error(&mut self, bits: u32) {
        self.esr_pending |= bits;
        if !self.in_error_delivery {
            self.in_error_delivery = true;
            self.fire_lvt(Lvt::Error);
            self.in_error_delivery = false;
        }
    }

    // ----------------------------------------------------------------
    // Local vector table (SDM 11.5)
    // ----------------------------------------------------------------

    /// A local interrupt source fired: the timer, the thermal sensor, a
    /// performance counter overflow, a corrected machine check, or an APIC
    /// error. Delivers per the entry unless it is masked or the APIC is
    /// hardware-disabled. After a PerfMon interrupt the entry masks itself
    /// (Intel behaviour).
    pub fn fire_lvt(&mut self, lvt: Lvt) {
        // A hardware-disabled APIC delivers nothing (SDM 11.4.3); its
        // registers may be non-reset only in a restored state.
        if (lvt == Lvt::Cmci && !self.cfg.cmci) || self.mode == ApicMode::Disabled {
            return;
        }
        let entry = self.lvt[lvt.index()];
        if entry.masked() {
            return;
        }
        match lvt.delivery(entry) {
            Some(LvtDelivery::Fixed { .. }) if !self.svr.software_enabled() => {
                // Only a restored state has an unmasked entry while
                // software-disabled; Fixed interrupts are dropped then
                // (SDM 11.4.7.2), as in `accept`.
                self.stats.dropped += 1;
            }
            Some(LvtDelivery::Fixed { vector, level }) => self.latch_fixed(vector, level),
            Some(LvtDelivery::Nmi) => self.pending.nmi = true,
            Some(LvtDelivery::Smi) => self.pending.smi = true,
            Some(LvtDelivery::Init) => self.receive_init(),
            Some(LvtDelivery::ExtInt) => self.pending.extint = true,
            None => {
                self.stats.dropped += 1;
                log::debug!(
                    "apic {}: {lvt:?} has unusable delivery mode {:?}",
                    self.cfg.apic_id,
                    entry.delivery_mode()
                );
            }
        }
        if lvt == Lvt::Perfmon {
            self.lvt[lvt.index()].set_masked(true);
        }
    }

    /// Sets the input level of LINT0 (`pin == 0`) or LINT1 (`pin == 1`).
    ///
    /// Edge-triggered entries deliver on the inactive -> active transition
    /// (polarity from the entry); a level-triggered Fixed entry delivers
    /// while active and remote IRR is clear, sets remote IRR, and is
    /// delivered again after the EOI if still active. ExtINT is pending
    /// while the pin is active. When the APIC is hardware-disabled LINT0
    /// is INTR and LINT1 is NMI. Pins other than 0 and 1 are ignored.
    pub fn set_lint(&mut self, pin: u8, level: bool) {
        let Some(idx) = [0usize, 1].get(pin as usize).copied() else {
            return;
        };
        let old = self.lint_level[idx];
        self.lint_level[idx] = level;
        if self.mode == ApicMode::Disabled {
            if idx == 1 && level && !old {
                self.pending.nmi = true;
            }
            return;
        }
        let lvt = if idx == 0 { Lvt::Lint0 } else { Lvt::Lint1 };
        let entry = self.lvt[lvt.index()];
        let active = level ^ entry.active_low();
        let was_active = old ^ entry.active_low();
        match lvt.delivery(entry) {
            Some(LvtDelivery::ExtInt) => {}
            Some(LvtDelivery::Fixed { level: true, .. }) => self.lint_level_check(lvt),
            _ => {
                if active && !was_active {
                    self.fire_lvt(lvt);
                }
            }
        }
    }

    /// Level-triggered Fixed LINT entry: deliver if active, unmasked and
    /// remote IRR is clear.
    fn lint_level_check(&mut self, lvt: Lvt) {
        let idx = lvt.index();
        let entry = self.lvt[idx];
        let pin = if lvt == Lvt::Lint0 { 0 } else { 1 };
        let active = self.lint_level[pin] ^ entry.active_low();
        if entry.masked() || entry.remote_irr() || !active || !self.svr.software_enabled() {
            return;
        }
        if let Some(LvtDelivery::Fixed {
            vector,
            level: true,
        }) = lvt.delivery(entry)
        {
            if vector >= 16 {
                self.lvt[idx].set_remote_irr(true);
            }
            self.latch_fixed(vector, true);
        }
    }

    // ----------------------------------------------------------------
    // xAPIC MMIO (SDM 11.4.1)
    // ----------------------------------------------------------------

    /// A guest read of `data.len()` bytes at `offset` into the APIC page.
    ///
    /// Reads of 1, 2 or 4 bytes inside one register return those bytes.
    /// Any other size or alignment is answered byte by byte with the same
    /// rule (bytes 4-15 of each 16-byte slot read 0) and counted. Offsets
    /// that are not registers read 0 and set ESR bit 7. While the window
    /// does not decode (x2APIC or disabled mode) every byte reads 0xFF.
    pub fn mmio_read(&mut self, now: u64, offset: u64, data: &mut [u8]) {
        if self.mode != ApicMode::XApic {
            self.stats.mmio_not_decoded += 1;
            log::debug!(
                "apic {}: MMIO read while not in xAPIC mode",
                self.cfg.apic_id
            );
            data.fill(0xFF);
            return;
        }
        self.advance(now);
        let len = data.len() as u64;
        let clean = matches!(len, 1 | 2 | 4)
            && offset < APIC_PAGE_SIZE
            && (offset & 0xF) + len <= 4
            && offset % len == 0;
        if !clean {
            self.stats.mmio_bad_access += 1;
            log::debug!(
                "apic {}: MMIO read of {len} bytes at {offset:#x}",
                self.cfg.apic_id
            );
        }
        let mut cached: Option<(u64, u32)> = None;
        for (i, byte) in data.iter_mut().enumerate() {
            let o = offset.saturating_add(i as u64);
            if o >= APIC_PAGE_SIZE || o & 0xF >= 4 {
                *byte = 0;
                continue;
            }
            let slot = o & !0xF;
            let value = match cached {
                Some((s, v)) if s == slot => v,
                _ => {
                    let v = self.mmio_read_register(now, slot as u32);
                    cached = Some((slot, v));
                    v
                }
            };
            *byte = (value >> ((o & 3) * 8)) as u8;
        }
    }

    fn mmio_read_register(&mut self, now: u64, offset: u32) -> u32 {
        match Register::from_offset(offset) {
            Some(Register::LvtCmci) if !self.cfg.cmci => self.illegal_register(offset),
            Some(reg) => self.read_register(now, reg),
            None => self.illegal_register(offset),
        }
    }

    fn illegal_register(&mut self, offset: u32) -> u32 {
        self.stats.illegal_register += 1;
        log::debug!(
            "apic {}: access to reserved offset {offset:#x}",
            self.cfg.apic_id
        );
        self.error(esr::ILLEGAL_REGISTER);
        0
    }

    /// A guest write at `offset` into the APIC page. Only aligned 4-byte
    /// writes to a register take effect; other sizes and alignments are
    /// dropped and counted; writes to offsets that are not registers set
    /// ESR bit 7; writes to read-only registers are dropped. While the
    /// window does not decode (x2APIC or disabled mode) writes are dropped.
    pub fn mmio_write(&mut self, now: u64, offset: u64, data: &[u8]) -> Option<Message> {
        if self.mode != ApicMode::XApic {
            self.stats.mmio_not_decoded += 1;
            log::debug!(
                "apic {}: MMIO write while not in xAPIC mode",
                self.cfg.apic_id
            );
            return None;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return self.bad_mmio_write(offset, data.len());
        };
        if offset & 0xF != 0 || offset >= APIC_PAGE_SIZE {
            return self.bad_mmio_write(offset, 4);
        }
        self.advance(now);
        let value = u32::from_le_bytes(bytes);
        let offset = offset as u32;
        match Register::from_offset(offset) {
            Some(Register::LvtCmci) if !self.cfg.cmci => {
                self.illegal_register(offset);
                None
            }
            Some(reg) => self.write_xapic(now, reg, value),
            None => {
                self.illegal_register(offset);
                None
            }
        }
    }

    fn bad_mmio_write(&mut self, offset: u64, len: usize) -> Option<Message> {
        self.stats.mmio_bad_access += 1;
        log::debug!(
            "apic {}: dropped MMIO write of {len} bytes at {offset:#x}",
            self.cfg.apic_id
        );
        None
    }

    fn write_xapic(&mut self, now: u64, reg: Register, value: u32) -> Option<Message> {
        match reg {
            Register::Id => {
                self.xapic_id = (value >> 24) as u8;
                None
            }
            Register::Ldr => {
                self.ldr = value & 0xFF00_0000;
                None
            }
            Register::Dfr => {
                self.dfr = value | 0x0FFF_FFFF;
                None
            }
            Register::IcrHigh => {
                self.icr
                    .set_destination(self.icr.destination() & 0x00FF_FFFF | (value & 0xFF00_0000));
                None
            }
            Register::IcrLow => {
                let high = self.icr.into_bits() & 0xFFFF_FFFF_0000_0000;
                self.icr = Icr::from_bits(high | (value & Icr::LOW_WRITABLE) as u64);
                self.send_ipi()
            }
            Register::Version
            | Register::Apr
            | Register::Ppr
            | Register::Rrd
            | Register::Isr(_)
            | Register::Tmr(_)
            | Register::Irr(_)
            | Register::TimerCurrentCount
            | Register::SelfIpi => {
                self.stats.read_only_write += 1;
                log::debug!("apic {}: write to read-only {reg:?}", self.cfg.apic_id);
                None
            }
            _ => self.write_common(now, reg, value),
        }
    }

    // ----------------------------------------------------------------
    // Registers shared by both modes: one handler each.
    // ----------------------------------------------------------------

    /// Reads a register as the guest would in the current mode, without
    /// side effects on ESR (used by both access paths and for dumps).
    /// Registers absent in the current mode read 0.
    pub fn read_register(&self, now: u64, reg: Register) -> u32 {
        let x2 = self.mode == ApicMode::X2Apic;
        match reg {
            Register::Id => {
                if x2 {
                    self.cfg.apic_id
                } else {
                    (self.xapic_id as u32) << 24
                }
            }
            Register::Version => self.cfg.version_register(),
            Register::Tpr => self.tpr as u32,
            // APR is not implemented by xAPIC processors (SDM Table 11-1
            // note); like KVM we read 0.
            Register::Apr | Register::Rrd | Register::Eoi | Register::SelfIpi => 0,
            Register::Ppr => self.ppr() as u32,
            Register::Ldr => self.ldr,
            Register::Dfr => {
                if x2 {
                    0
                } else {
                    self.dfr
                }
            }
            Register::Svr => self.svr.into_bits(),
            Register::Isr(n) => self.irq.isr.0[(n & 7) as usize],
            Register::Tmr(n) => self.irq.tmr.0[(n & 7) as usize],
            Register::Irr(n) => self.irq.irr.0[(n & 7) as usize],
            Register::Esr => self.esr,
            Register::IcrLow => self.icr.into_bits() as u32 & Icr::LOW_WRITABLE,
            Register::IcrHigh => {
                if x2 {
                    0
                } else {
                    self.icr.destination() & 0xFF00_0000
                }
            }
            Register::LvtCmci
            | Register::LvtTimer
            | Register::LvtThermal
            | Register::LvtPerfmon
            | Register::LvtLint0
            | Register::LvtLint1
            | Register::LvtError => match reg.lvt() {
                Some(Lvt::Cmci) if !self.cfg.cmci => 0,
                Some(lvt) => self.lvt[lvt.index()].into_bits(),
                None => 0,
            },
            Register::TimerInitialCount => self.timer.initial_count(),
            Register::TimerCurrentCount => self.timer.current_count(&self.tb, now),
            Register::TimerDivide => self.timer.divide().register(),
        }
    }

    fn write_common(&mut self, now: u64, reg: Register, value: u32) -> Option<Message> {
        match reg {
            Register::Tpr => {
                self.tpr = value as u8;
                None
            }
            Register::Eoi => self.eoi(),
            Register::Svr => {
                self.write_svr(value);
                None
            }
            Register::Esr => {
                // Write-then-read latch (SDM 11.5.3).
                self.esr = self.esr_pending;
                self.esr_pending = 0;
                None
            }
            Register::TimerInitialCount => {
                self.timer.write_initial_count(&self.tb, now, value);
                self.note_clamp(false);
                None
            }
            Register::TimerDivide => {
                let was = self.periodic_clamped();
                self.timer.write_divide(&self.tb, now, value);
                self.note_clamp(was);
                None
            }
            _ => match reg.lvt() {
                Some(lvt) => {
                    self.write_lvt(now, lvt, value);
                    None
                }
                None => None,
            },
        }
    }

    /// Whether a periodic count is running whose period is below the
    /// minimum (and so stretched to it).
    fn periodic_clamped(&self) -> bool {
        self.timer.mode() == TimerMode::Periodic
            && self.timer.is_running()
            && (self.timer.initial_count() as u64) * (self.timer.divide().divisor() as u64)
                < self.tb.cycles_in_ns(self.cfg.min_periodic_ns)
    }

    /// Counts a periodic period that a timer write (TMICT, TDCR, LVT Timer
    /// mode) stretched to the minimum; `was` says whether the period was
    /// already stretched before a TDCR or LVT write (not counted again).
    fn note_clamp(&mut self, was: bool) {
        if !was && self.periodic_clamped() {
            self.stats.timer_clamped += 1;
            log::debug!(
                "apic {}: periodic count {} below the minimum period",
                self.cfg.apic_id,
                self.timer.initial_count()
            );
        }
    }

    fn write_svr(&mut self, value: u32) {
        let mut mask = 0x3FF;
        if self.cfg.suppress_eoi_broadcast {
            mask |= 1 << 12;
        }
        let was_enabled = self.svr.software_enabled();
        self.svr = Svr::from_bits(value & mask);
        if !self.svr.software_enabled() {
            // Software disable masks every LVT entry (SDM 11.4.7.2).
            for e in &mut self.lvt {
                e.set_masked(true);
            }
        } else if !was_enabled {
            // An entry left unmasked (restored state) sees its level again.
            self.lint_level_check(Lvt::Lint0);
            self.lint_level_check(Lvt::Lint1);
        }
    }

    fn write_lvt(&mut self, now: u64, lvt: Lvt, value: u32) {
        let idx = lvt.index();
        let old = self.lvt[idx];
        let mut new = value & lvt.write_mask(self.cfg.tsc_deadline);
        if !self.svr.software_enabled() {
            new |= 1 << 16;
        }
        // Remote IRR (and delivery status) are the APIC's, not the guest's.
        new |= old.into_bits() & LVT_READ_ONLY;
        let new = LvtEntry::from_bits(new);
        self.lvt[idx] = new;
        match lvt {
            Lvt::Timer => {
                let was = self.periodic_clamped();
                self.timer.set_mode(&self.tb, now, new.timer_mode());
                self.note_clamp(was);
            }
            Lvt::Lint0 | Lvt::Lint1 => {
                if !new.level_triggered() && new.remote_irr() {
                    // Remote IRR is only meaningful for level-triggered input.
                    self.lvt[idx].set_remote_irr(false);
                }
                self.lint_level_check(lvt);
            }
            _ => {}
        }
    }

    /// EOI (SDM 11.8.5): clears the highest in-service vector; clears a
    /// LINT entry's remote IRR for that vector (and re-delivers a still
    /// active level); broadcasts the EOI for a level-triggered vector unless
    /// EOI broadcasts are suppressed.
    fn eoi(&mut self) -> Option<Message> {
        let (vector, level) = self.irq.eoi()?;
        self.eoi_side_effects(vector, level)
    }

    /// What follows the removal of `vector` from ISR: LINT remote IRR and
    /// the EOI broadcast (shared with EOI-induced exits).
    pub(crate) fn eoi_side_effects(&mut self, vector: u8, level: bool) -> Option<Message> {
        for lvt in [Lvt::Lint0, Lvt::Lint1] {
            let e = self.lvt[lvt.index()];
            if e.remote_irr() && e.vector() == vector {
                self.lvt[lvt.index()].set_remote_irr(false);
                self.lint_level_check(lvt);
            }
        }
        if level && !(self.cfg.suppress_eoi_broadcast && self.svr.suppress_eoi_broadcast()) {
            Some(Message::Eoi { vector })
        } else {
            None
        }
    }

    /// Sends the IPI in the ICR (SDM 11.6.1). Illegal vectors set ESR bit 5
    /// and send nothing; INIT level de-assert has no effect; self-only IPIs
    /// are accepted locally; everything else goes out as a message.
    fn send_ipi(&mut self) -> Option<Message> {
        let ipi = decode_icr(self.icr, self.mode == ApicMode::X2Apic, self.id());
        let irq = ipi.interrupt;
        if irq.has_illegal_vector() {
            self.stats.illegal_vector += 1;
            log::debug!(
                "apic {}: send illegal vector {}",
                self.cfg.apic_id,
                irq.vector
            );
            self.error(esr::SEND_ILLEGAL_VECTOR);
            return None;
        }
        if irq.is_init_deassert() {
            return None;
        }
        if matches!(
            irq.delivery_mode,
            DeliveryMode::Reserved3 | DeliveryMode::ExtInt
        ) {
            self.drop_interrupt("reserved ICR delivery mode", irq);
            return None;
        }
        if ipi.destination.shorthand == Shorthand::SelfOnly {
            self.accept(irq);
            return None;
        }
        Some(Message::Ipi(ipi))
    }

    // ----------------------------------------------------------------
    // MSRs: IA32_APIC_BASE, IA32_TSC_DEADLINE, x2APIC (SDM 11.12)
    // ----------------------------------------------------------------

    /// Whether `msr` is one this APIC answers (`IA32_APIC_BASE`,
    /// `IA32_TSC_DEADLINE`, 0x800-0x8FF).
    pub const fn handles_msr(msr: u32) -> bool {
        matches!(msr, MSR_IA32_APIC_BASE | MSR_IA32_TSC_DEADLINE)
            || (msr >= X2APIC_MSR_BASE && msr <= X2APIC_MSR_LAST)
    }

    /// A guest `RDMSR`.
    pub fn msr_read(&mut self, now: u64, msr: u32) -> Result<u64, Fault> {
        let r = self.msr_read_inner(now, msr);
        if r.is_err() {
            self.gp("RDMSR", msr, 0);
        }
        r
    }

    fn msr_read_inner(&mut self, now: u64, msr: u32) -> Result<u64, Fault> {
        match msr {
            MSR_IA32_APIC_BASE => Ok(self.base.into_bits()),
            MSR_IA32_TSC_DEADLINE => {
                if !self.cfg.tsc_deadline {
                    return Err(Fault::Gp);
                }
                self.advance(now);
                Ok(if self.mode == ApicMode::Disabled {
                    0
                } else {
                    self.timer.tsc_deadline()
                })
            }
            _ => {
                let reg = self.x2apic_register(msr)?;
                if matches!(reg, Register::Eoi | Register::SelfIpi) {
                    return Err(Fault::Gp);
                }
                self.advance(now);
                if reg == Register::IcrLow {
                    return Ok(self.icr.into_bits() & !(1 << 12));
                }
                Ok(self.read_register(now, reg) as u64)
            }
        }
    }

    fn x2apic_register(&self, msr: u32) -> Result<Register, Fault> {
        if self.mode != ApicMode::X2Apic {
            return Err(Fault::Gp);
        }
        match Register::from_x2apic_msr(msr) {
            Some(Register::LvtCmci) if !self.cfg.cmci => Err(Fault::Gp),
            Some(reg) => Ok(reg),
            None => Err(Fault::Gp),
        }
    }

    fn gp(&mut self, what: &str, msr: u32, value: u64) {
        self.stats.gp += 1;
        log::debug!(
            "apic {}: {what} {msr:#x} (value {value:#x}) -> #GP",
            self.cfg.apic_id
        );
    }

    /// A guest `WRMSR`.
    pub fn msr_write(&mut self, now: u64, msr: u32, value: u64) -> Result<Option<Message>, Fault> {
        let r = self.msr_write_inner(now, msr, value);
        if r.is_err() {
            self.gp("WRMSR", msr, value);
        }
        r
    }

    fn msr_write_inner(
        &mut self,
        now: u64,
        msr: u32,
        value: u64,
    ) -> Result<Option<Message>, Fault> {
        match msr {
            MSR_IA32_APIC_BASE => self.write_apic_base(now, value),
            MSR_IA32_TSC_DEADLINE => {
                if !self.cfg.tsc_deadline {
                    return Err(Fault::Gp);
                }
                if self.mode != ApicMode::Disabled {
                    self.advance(now);
                    self.timer.write_tsc_deadline(value);
                    self.advance(now);
                }
                Ok(None)
            }
            _ => {
                let reg = self.x2apic_register(msr)?;
                if reg != Register::IcrLow && value >> 32 != 0 {
                    return Err(Fault::Gp);
                }
                let low = value as u32;
                let reserved: u32 = match reg {
                    Register::Id
                    | Register::Version
                    | Register::Ppr
                    | Register::Ldr
                    | Register::Isr(_)
                    | Register::Tmr(_)
                    | Register::Irr(_)
                    | Register::TimerCurrentCount => return Err(Fault::Gp),
                    Register::Tpr | Register::SelfIpi => !0xFF,
                    Register::Eoi | Register::Esr => !0,
                    Register::Svr => {
                        !(0x3FF
                            | if self.cfg.suppress_eoi_broadcast {
                                1 << 12
                            } else {
                                0
                            })
                    }
                    Register::TimerDivide => !DivideConfig::MASK,
                    Register::TimerInitialCount | Register::IcrLow => 0,
                    _ => match reg.lvt() {
                        Some(lvt) => !(lvt.write_mask(self.cfg.tsc_deadline) | LVT_READ_ONLY),
                        None => return Err(Fault::Gp),
                    },
                };
                if low & reserved != 0 {
                    return Err(Fault::Gp);
                }
                self.advance(now);
                Ok(match reg {
                    Register::IcrLow => {
                        if value & Icr::X2APIC_RESERVED != 0 {
                            return Err(Fault::Gp);
                        }
                        self.icr = Icr::from_bits(value & !(1 << 12));
                        self.send_ipi()
                    }
                    Register::SelfIpi => {
                        // SDM 11.5.3 / x2APIC spec 2.3.5: a SELF IPI write
                        // with an illegal vector sets "send illegal vector"
                        // and sends nothing.
                        let vector = low as u8;
                        if vector < 16 {
                            self.stats.illegal_vector += 1;
                            self.error(esr::SEND_ILLEGAL_VECTOR);
                        } else {
                            self.accept(Interrupt::fixed(vector));
                        }
                        None
                    }
                    _ => self.write_common(now, reg, low),
                })
            }
        }
    }

    /// A guest write of `IA32_APIC_BASE`: reserved bits, EXTD without
    /// x2APIC, the invalid EN=0/EXTD=1 state and the illegal transitions
    /// (x2APIC -> xAPIC, disabled -> x2APIC) raise #GP; the BSP bit keeps
    /// its value whatever the guest writes.
    pub fn write_apic_base(&mut self, now: u64, value: u64) -> Result<Option<Message>, Fault> {
        mode::check_reserved(value, self.cfg.max_phys_addr_bits, self.cfg.x2apic)?;
        let new = ApicBase::from_bits(value).with_bsp(self.base.bsp());
        let new_mode = ApicMode::of(new).ok_or(Fault::Gp)?;
        if !mode::transition_allowed(self.mode, new_mode) {
            return Err(Fault::Gp);
        }
        self.advance(now);
        Ok(self.apply_apic_base(new, new_mode))
    }

    /// A host (VMM) write of `IA32_APIC_BASE`, for restore paths: any
    /// valid state may be entered directly, bypassing the guest's
    /// transition rules, and the BSP bit is taken as written. Invalid
    /// values are still refused: reserved bits (0-7, 9, at or above
    /// MAXPHYADDR), EXTD without the x2APIC feature, EN=0 with EXTD=1.
    pub fn host_set_apic_base(&mut self, value: u64) -> Result<Option<Message>, Fault> {
        mode::check_reserved(value, self.cfg.max_phys_addr_bits, self.cfg.x2apic)?;
        let new = ApicBase::from_bits(value);
        let new_mode = ApicMode::of(new).ok_or(Fault::Gp)?;
        self.cfg.bsp = new.bsp();
        Ok(self.apply_apic_base(new, new_mode))
    }

    fn apply_apic_base(&mut self, new: ApicBase, new_mode: ApicMode) -> Option<Message> {
        let old = self.base;
        let old_mode = self.mode;
        self.base = new;
        self.mode = new_mode;
        if old_mode != new_mode {
            match new_mode {
                ApicMode::Disabled => {
                    // Hardware disable: the APIC's registers go back to
                    // their INIT state. Events it already handed to the
                    // processor (NMI, SMI, INIT, SIPI, ExtINT) are the
                    // CPU's, not APIC registers, and stay pending.
                    let pending = self.pending;
                    self.init_registers();
                    self.pending = pending;
                }
                ApicMode::XApic => {
                    // Re-enabled: xAPIC with the initial ID.
                    self.xapic_id = self.cfg.apic_id as u8;
                    if old_mode == ApicMode::X2Apic {
                        // Only a host write gets here: the xAPIC layout
                        // has no derived LDR and an 8-bit ICR destination.
                        self.ldr = 0;
                        self.icr
                            .set_destination(self.icr.destination() & 0xFF00_0000);
                    }
                }
                ApicMode::X2Apic => {
                    self.ldr = Self::x2apic_ldr(self.cfg.apic_id);
                }
            }
        }
        (old != new).then_some(Message::ApicBaseChanged {
            apic_base: new.into_bits(),
            mode: new_mode,
        })
    }
}
