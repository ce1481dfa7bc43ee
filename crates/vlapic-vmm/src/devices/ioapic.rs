//! The I/O APIC (`vioapic`) as a VMM device, interrupt lines, and the
//! IRQ test port.
//!
//! # Modes
//!
//! - `--irqchip user`: [`IoApicDevice`] with [`IoApicSink::Fabric`]: its
//!   messages go to `vlapic`'s fabric (every destination mode, lowest
//!   priority by arbitration); LAPIC EOI broadcasts (`Message::Eoi`) come
//!   back through the backend's `EoiHook` as [`IoApicDevice::eoi`].
//! - `--irqchip split`: KVM's in-kernel LAPIC with this IOAPIC
//!   ([`IoApicSink::Kvm`]): messages are encoded as MSIs
//!   (`vlapic::msi::encode`) and sent with `KVM_SIGNAL_MSI`; EOIs come back
//!   as `KVM_EXIT_IOAPIC_EOI`. KVM only exits on the EOI of vectors it
//!   knows to be level-triggered IOAPIC vectors: it learns them from MSI
//!   routes on GSIs below the reserved pin count, so after every write to
//!   the redirection table the device installs one MSI route per pin
//!   (`KVM_SET_GSI_ROUTING`, the same message, masked entries included so
//!   a pending EOI is still seen); the routes are never triggered.
//! - `--irqchip kernel`: KVM's own IOAPIC; [`IrqLines::Kvm`] drives its
//!   pins with `KVM_IRQ_LINE` (GSI = pin).
//!
//! # Locking
//!
//! One `Mutex<IoApic>`, taken by a vCPU thread for an MMIO access, an EOI
//! (broadcast or exit) or a line change (test port, serial). Messages are
//! delivered while it is held (the fabric only posts to lock-free inboxes
//! and wakes vCPUs; `KVM_SIGNAL_MSI` is one ioctl), so the order of
//! messages is the order of the IOAPIC's state changes. Lock order: serial
//! -> IOAPIC -> (fabric | KVM); nothing takes the serial lock while
//! holding the IOAPIC.

use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_irq_routing_entry, kvm_msi, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::VmFd;
use vioapic::{IoApic, IoApicConfig, IoApicMessage, IoApicVersion, IOAPIC_DEFAULT_BASE};
use vlapic::fabric::Fabric;
use vlapic::msi::{ioapic_message, IoApicRedirection};

use super::bus::lock;

/// Guest-physical base of the IOAPIC window.
pub const IOAPIC_BASE: u64 = IOAPIC_DEFAULT_BASE;
/// Size of the window the VMM routes to the IOAPIC (the whole 4 KiB page;
/// the model decodes its first 0x100 bytes and counts the rest as bad
/// accesses).
pub const IOAPIC_WINDOW: u64 = 0x1000;
/// Pins (and, in split mode, GSIs reserved for them in KVM).
pub const IOAPIC_PINS: u8 = 24;
/// ISA IRQ of COM1, wired to the same IOAPIC pin.
pub const SERIAL_IRQ: u8 = 4;

/// IRQ test port: a write of `pin | level << 8` (1, 2 or 4 bytes) sets the
/// line of `pin` to `level` (bit 8); bit 9 set = pulse (assert then
/// deassert, an edge), ignoring bit 8. A read returns the line levels as
/// driven through this port and the serial (bit n = pin n high).
pub const IRQ_TEST_PORT: u16 = 0x5a0;
/// Bit 8 of a test-port write: the level.
pub const IRQ_TEST_LEVEL: u32 = 1 << 8;
/// Bit 9 of a test-port write: a pulse.
pub const IRQ_TEST_PULSE: u32 = 1 << 9;

/// Where the IOAPIC's messages go.
pub enum IoApicSink {
    /// `vlapic`'s fabric (`--irqchip user`).
    Fabric(Arc<Fabric>),
    /// KVM's in-kernel LAPICs via `KVM_SIGNAL_MSI` (`--irqchip split`).
    Kvm(Arc<VmFd>),
}

/// Counters of the device (beyond `IoApicStats`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IoApicDeviceStats {
    /// Messages delivered.
    pub delivered: u64,
    /// Messages that reached no LAPIC (fabric: no target; KVM: signal_msi
    /// returned 0) or could not be sent.
    pub undelivered: u64,
    /// EOIs received (LAPIC broadcast or KVM exit).
    pub eois: u64,
    /// GSI routing updates (split mode).
    pub route_updates: u64,
}

struct Inner {
    io: IoApic,
    stats: IoApicDeviceStats,
    /// Redirection table as last given to KVM (split mode).
    routed: Option<[u64; IOAPIC_PINS as usize]>,
}

/// The VM's IOAPIC.
pub struct IoApicDevice {
    inner: Mutex<Inner>,
    sink: IoApicSink,
    trace: bool,
}

impl std::fmt::Debug for IoApicDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoApicDevice").finish_non_exhaustive()
    }
}

impl IoApicDevice {
    /// An IOAPIC of `version` delivering to `sink`.
    pub fn new(version: IoApicVersion, sink: IoApicSink, trace: bool) -> Self {
        IoApicDevice {
            inner: Mutex::new(Inner {
                io: IoApic::new(IoApicConfig {
                    id: 0,
                    pins: IOAPIC_PINS,
                    version,
                }),
                stats: IoApicDeviceStats::default(),
                routed: None,
            }),
            sink,
            trace,
        }
    }

    /// Whether `addr` is in the IOAPIC window.
    pub fn claims(addr: u64) -> bool {
        (IOAPIC_BASE..IOAPIC_BASE + IOAPIC_WINDOW).contains(&addr)
    }

    /// Runs `f` on the model with a sink that collects messages, then
    /// (split mode) refreshes KVM's routes and delivers them, all under
    /// the lock.
    fn with(&self, f: impl FnOnce(&mut IoApic, &mut dyn FnMut(IoApicMessage))) {
        let mut g = lock(&self.inner);
        let mut msgs: Vec<IoApicMessage> = Vec::new();
        f(&mut g.io, &mut |m| msgs.push(m));
        if let IoApicSink::Kvm(vm) = &self.sink {
            self.update_routes(&mut g, vm);
        }
        for m in msgs {
            self.deliver(&mut g.stats, &m);
        }
    }

    fn deliver(&self, stats: &mut IoApicDeviceStats, m: &IoApicMessage) {
        let ok = match &self.sink {
            IoApicSink::Fabric(f) => f.deliver(&m.destination, m.interrupt).targets > 0,
            IoApicSink::Kvm(vm) => match vlapic::msi::encode(&m.destination, &m.interrupt, false) {
                Ok((address, data)) => {
                    let msi = kvm_msi {
                        address_lo: address as u32,
                        address_hi: (address >> 32) as u32,
                        data,
                        ..Default::default()
                    };
                    matches!(vm.signal_msi(msi), Ok(n) if n > 0)
                }
                Err(_) => false,
            },
        };
        if ok {
            stats.delivered += 1;
        } else {
            stats.undelivered += 1;
        }
        if self.trace {
            eprintln!(
                "ioapic: pin {} -> {:?} {:?}{}",
                m.pin,
                m.destination,
                m.interrupt,
                if ok { "" } else { " (not delivered)" }
            );
        }
    }

    /// Split mode: one MSI route per pin (GSI = pin) with the message of
    /// its redirection entry, so that KVM intercepts the EOIs of
    /// level-triggered IOAPIC vectors. Only rewritten when the table
    /// changed.
    fn update_routes(&self, g: &mut Inner, vm: &VmFd) {
        let table: [u64; IOAPIC_PINS as usize] = core::array::from_fn(|p| {
            g.io.redirection(p as u8)
                .map_or(0, |e| e.into_bits() & !(1 << 14 | 1 << 12))
        });
        if g.routed == Some(table) {
            return;
        }
        let entries = msi_routes(&table);
        match KvmIrqRouting::from_entries(&entries) {
            Ok(routing) => match vm.set_gsi_routing(&routing) {
                Ok(()) => {
                    g.routed = Some(table);
                    g.stats.route_updates += 1;
                }
                Err(e) => eprintln!("vlapic-vmm: KVM_SET_GSI_ROUTING: {e}"),
            },
            Err(e) => eprintln!("vlapic-vmm: GSI routing table: {e:?}"),
        }
    }

    /// A guest MMIO read at `addr` (in the window).
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        lock(&self.inner).io.mmio_read(addr - IOAPIC_BASE, data);
    }

    /// A guest MMIO write at `addr` (in the window).
    pub fn mmio_write(&self, addr: u64, data: &[u8]) {
        self.with(|io, sink| io.mmio_write(addr - IOAPIC_BASE, data, &mut { sink }));
    }

    /// An EOI for `vector` (LAPIC broadcast, or `KVM_EXIT_IOAPIC_EOI`).
    pub fn eoi(&self, vector: u8) {
        self.with(|io, sink| io.eoi(vector, &mut { sink }));
        lock(&self.inner).stats.eois += 1;
    }

    /// Sets the level of `pin`.
    pub fn set_pin(&self, pin: u8, high: bool) {
        self.with(|io, sink| io.set_pin(pin, high, &mut { sink }));
    }

    /// An edge: assert then deassert `pin`.
    pub fn pulse(&self, pin: u8) {
        self.with(|io, sink| io.pulse(pin, &mut { sink }));
    }

    /// The model's state (for save/restore or inspection).
    pub fn save(&self) -> vioapic::IoApicState {
        lock(&self.inner).io.save()
    }

    /// One line of statistics.
    pub fn report(&self) -> String {
        let g = lock(&self.inner);
        format!("ioapic {:?}; model {:?}", g.stats, g.io.stats())
    }

    /// The device counters.
    pub fn stats(&self) -> IoApicDeviceStats {
        lock(&self.inner).stats
    }
}

/// The split-mode GSI routes for a redirection table: GSI = pin, an MSI
/// with the entry's message whether masked or not (KVM only reads them to
/// learn which vectors are level-triggered IOAPIC vectors for which vCPU,
/// and so which EOIs to forward). An entry whose message cannot be
/// encoded as an MSI gets no route (cannot happen with the 15-bit
/// destinations of a redirection entry; kept for safety).
pub fn msi_routes(table: &[u64]) -> Vec<kvm_irq_routing_entry> {
    let mut entries = Vec::new();
    for (pin, bits) in table.iter().enumerate() {
        let e = IoApicRedirection::from_bits(*bits);
        let (d, i) = ioapic_message(
            e.destination_id(),
            e.logical(),
            e.vector(),
            e.delivery_mode(),
            e.level_triggered(),
        );
        let Ok((address, data)) = vlapic::msi::encode(&d, &i, false) else {
            continue;
        };
        let mut r = kvm_irq_routing_entry {
            gsi: pin as u32,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        r.u.msi.address_lo = address as u32;
        r.u.msi.address_hi = (address >> 32) as u32;
        r.u.msi.data = data;
        entries.push(r);
    }
    entries
}

/// The interrupt lines devices drive: into this VMM's IOAPIC (user and
/// split modes) or KVM's (`KVM_IRQ_LINE`, kernel mode).
pub enum IrqLines {
    /// Our IOAPIC.
    IoApic(Arc<IoApicDevice>),
    /// KVM's in-kernel IOAPIC (and PIC): GSI = pin.
    Kvm(Arc<VmFd>),
}

/// The lines plus the levels driven so far (for the test port's read).
pub struct Lines {
    lines: IrqLines,
    levels: Mutex<u32>,
}

impl Lines {
    /// Wraps `lines`.
    pub fn new(lines: IrqLines) -> Self {
        Lines {
            lines,
            levels: Mutex::new(0),
        }
    }

    /// Sets `pin` to `high` (pins >= 24 are ignored).
    pub fn set(&self, pin: u8, high: bool) {
        if pin >= IOAPIC_PINS {
            return;
        }
        {
            let mut l = lock(&self.levels);
            if high {
                *l |= 1 << pin;
            } else {
                *l &= !(1 << pin);
            }
        }
        match &self.lines {
            IrqLines::IoApic(io) => io.set_pin(pin, high),
            IrqLines::Kvm(vm) => {
                if let Err(e) = vm.set_irq_line(u32::from(pin), high) {
                    eprintln!("vlapic-vmm: KVM_IRQ_LINE {pin}: {e}");
                }
            }
        }
    }

    /// An edge on `pin` (assert, deassert); the level ends low.
    pub fn pulse(&self, pin: u8) {
        if pin >= IOAPIC_PINS {
            return;
        }
        *lock(&self.levels) &= !(1 << pin);
        match &self.lines {
            IrqLines::IoApic(io) => io.pulse(pin),
            IrqLines::Kvm(_) => {
                self.set(pin, true);
                self.set(pin, false);
            }
        }
    }

    /// Levels driven so far (bit n = pin n).
    pub fn levels(&self) -> u32 {
        *lock(&self.levels)
    }

    /// The test port: a write (see [`IRQ_TEST_PORT`]).
    pub fn test_port_write(&self, data: &[u8]) {
        let mut v = 0u32;
        for (i, b) in data.iter().take(4).enumerate() {
            v |= u32::from(*b) << (8 * i);
        }
        let pin = v as u8;
        if v & IRQ_TEST_PULSE != 0 {
            self.pulse(pin);
        } else {
            self.set(pin, v & IRQ_TEST_LEVEL != 0);
        }
    }

    /// The test port: a read (the levels, little endian).
    pub fn test_port_read(&self, data: &mut [u8]) {
        let b = self.levels().to_le_bytes();
        for (i, d) in data.iter_mut().enumerate() {
            *d = b.get(i).copied().unwrap_or(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vlapic::{ApicConfig, LocalApic};

    fn w(dev: &IoApicDevice, reg: u8, v: u32) {
        dev.mmio_write(IOAPIC_BASE, &[reg]);
        dev.mmio_write(IOAPIC_BASE + 0x10, &v.to_le_bytes());
    }

    fn r(dev: &IoApicDevice, reg: u8) -> u32 {
        dev.mmio_write(IOAPIC_BASE, &[reg]);
        let mut d = [0u8; 4];
        dev.mmio_read(IOAPIC_BASE + 0x10, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn level_line_through_the_fabric() {
        let fabric = Arc::new(Fabric::new(1));
        let mut apic = LocalApic::new(ApicConfig::new(0).with_bsp(true));
        apic.mmio_write(0, 0xf0, &0x1ffu32.to_le_bytes());
        fabric.attach(0, &apic);
        fabric.sync(0, &mut apic);
        let dev = Arc::new(IoApicDevice::new(
            IoApicVersion::V20,
            IoApicSink::Fabric(fabric.clone()),
            false,
        ));
        assert_eq!(r(&dev, 1) & 0xff, 0x20);
        // Pin 5: vector 0x45, level, APIC 0.
        w(&dev, 0x10 + 10, 0x8045);
        w(&dev, 0x11 + 10, 0);
        let lines = Lines::new(IrqLines::IoApic(dev.clone()));
        lines.test_port_write(&(5 | IRQ_TEST_LEVEL).to_le_bytes());
        assert_eq!(lines.levels(), 1 << 5);
        fabric.sync(0, &mut apic);
        assert_eq!(apic.poll(0).interrupt, Some(0x45));
        assert_eq!(apic.acknowledge(), 0x45);
        assert_ne!(r(&dev, 0x10 + 10) & (1 << 14), 0, "remote IRR");
        // EOI while asserted: the LAPIC broadcasts, the IOAPIC resends.
        let m = apic.mmio_write(0, 0xb0, &0u32.to_le_bytes());
        assert!(matches!(m, Some(vlapic::Message::Eoi { vector: 0x45 })));
        dev.eoi(0x45);
        fabric.sync(0, &mut apic);
        assert_eq!(apic.poll(0).interrupt, Some(0x45));
        assert_eq!(dev.stats().delivered, 2);
        // Deassert, EOI: remote IRR clear, nothing more.
        lines.test_port_write(&5u32.to_le_bytes());
        apic.acknowledge();
        dev.eoi(0x45);
        assert_eq!(r(&dev, 0x10 + 10) & (1 << 14), 0);
        assert_eq!(dev.stats().delivered, 2);
        let mut d = [0u8; 4];
        lines.test_port_read(&mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn split_routes_carry_trigger_mode_and_destination() {
        // Pin 0: masked level vector 0x51 to APIC 2; pin 1: edge 0x41
        // logical 0x03 lowest priority; pin 2: reset (masked, vector 0).
        let table = [
            (2u64 << 56) | MASK_BIT | 0x8051,
            (3u64 << 56) | (1 << 11) | (1 << 8) | 0x41,
            MASK_BIT,
        ];
        let r = msi_routes(&table);
        assert_eq!(r.len(), 3);
        // SAFETY: msi_routes fills the msi member of every entry.
        let m = |i: usize| unsafe { r[i].u.msi };
        assert_eq!(r[0].gsi, 0);
        assert_eq!(r[0].type_, KVM_IRQ_ROUTING_MSI);
        assert_eq!(m(0).address_lo, 0xfee0_2000);
        assert_eq!(m(0).address_hi, 0);
        assert_eq!(m(0).data, 0xc051, "level, assert, fixed, 0x51");
        assert_eq!(m(1).address_lo, 0xfee0_3004, "logical");
        assert_eq!(m(1).data & 0x8000, 0, "edge");
        assert_eq!(m(1).data & 0x7ff, 0x141);
        assert_eq!(r[2].gsi, 2);
    }

    const MASK_BIT: u64 = 1 << 16;

    #[test]
    fn window_and_pulse() {
        assert!(IoApicDevice::claims(0xfec0_0000));
        assert!(IoApicDevice::claims(0xfec0_0fff));
        assert!(!IoApicDevice::claims(0xfec0_1000));
        let fabric = Arc::new(Fabric::new(1));
        let dev = Arc::new(IoApicDevice::new(
            IoApicVersion::V11,
            IoApicSink::Fabric(fabric),
            false,
        ));
        assert_eq!(r(&dev, 1), 0x0017_0011);
        w(&dev, 0x10 + 8, 0x34);
        let lines = Lines::new(IrqLines::IoApic(dev.clone()));
        lines.test_port_write(&(4 | IRQ_TEST_PULSE).to_le_bytes());
        // No APIC attached: sent but reached nobody.
        assert_eq!(dev.stats().undelivered, 1);
        assert_eq!(lines.levels(), 0);
    }
}
