//! What the virtual CPU offers, and the clocks the APIC runs on.

/// Configuration of one local APIC: the CPU features it offers and its
/// clocks. Fixed for the life of the APIC (a VMM derives it from the CPUID
/// it presents).
///
/// ```
/// use vlapic::ApicConfig;
/// let cfg = ApicConfig::new(3).with_x2apic(false).with_tsc_frequency_hz(2_500_000_000);
/// assert_eq!(cfg.apic_id, 3);
/// assert!(!cfg.bsp);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ApicConfig {
    /// Initial APIC ID: the x2APIC ID, and (its low 8 bits) the xAPIC ID
    /// after reset. Must match CPUID leaves 1 and 0xB.
    pub apic_id: u32,
    /// Bootstrap processor: sets `IA32_APIC_BASE.BSP` and starts running;
    /// other processors start in wait-for-SIPI.
    pub bsp: bool,
    /// CPUID.1:ECX.x2APIC: the guest may enable x2APIC mode.
    pub x2apic: bool,
    /// CPUID.1:ECX.TSC_Deadline: LVT Timer mode 10b and `IA32_TSC_DEADLINE`.
    pub tsc_deadline: bool,
    /// Corrected machine-check interrupts: the 7th LVT entry (LVT CMCI).
    pub cmci: bool,
    /// Suppress-EOI-broadcast offered (version bit 24, SVR bit 12). Offer
    /// it only when the IOAPIC has an EOI register (version 0x20).
    pub suppress_eoi_broadcast: bool,
    /// APIC timer input clock in Hz before the divider (KVM uses 1 GHz).
    pub bus_frequency_hz: u64,
    /// Guest TSC frequency in Hz (for `IA32_TSC_DEADLINE`).
    pub tsc_frequency_hz: u64,
    /// Guest TSC value at time 0 of the embedder's clock, two's complement
    /// (negative when the guest TSC started after time 0).
    pub tsc_offset: u64,
    /// Shortest period of the periodic timer in ns: shorter periods are
    /// stretched to this so a guest cannot flood the host (KVM's default
    /// is 200 us). One-shot and TSC-deadline re-arm only on guest action
    /// and are not clamped.
    pub min_periodic_ns: u64,
    /// Guest MAXPHYADDR: `IA32_APIC_BASE` bits at and above it are reserved.
    pub max_phys_addr_bits: u8,
}

impl ApicConfig {
    /// An AP with APIC ID `apic_id`, x2APIC and TSC-deadline offered, no
    /// CMCI, no suppress-EOI-broadcast, 1 GHz bus and TSC clocks.
    pub const fn new(apic_id: u32) -> Self {
        ApicConfig {
            apic_id,
            bsp: false,
            x2apic: true,
            tsc_deadline: true,
            cmci: false,
            suppress_eoi_broadcast: false,
            bus_frequency_hz: 1_000_000_000,
            tsc_frequency_hz: 1_000_000_000,
            tsc_offset: 0,
            min_periodic_ns: 200_000,
            max_phys_addr_bits: 46,
        }
    }

    /// Marks this APIC as the bootstrap processor's.
    pub const fn with_bsp(mut self, bsp: bool) -> Self {
        self.bsp = bsp;
        self
    }
    /// Offers (or not) x2APIC.
    pub const fn with_x2apic(mut self, on: bool) -> Self {
        self.x2apic = on;
        self
    }
    /// Offers (or not) TSC-deadline mode.
    pub const fn with_tsc_deadline(mut self, on: bool) -> Self {
        self.tsc_deadline = on;
        self
    }
    /// Offers (or not) the CMCI LVT entry.
    pub const fn with_cmci(mut self, on: bool) -> Self {
        self.cmci = on;
        self
    }
    /// Offers (or not) suppress-EOI-broadcast.
    pub const fn with_suppress_eoi_broadcast(mut self, on: bool) -> Self {
        self.suppress_eoi_broadcast = on;
        self
    }
    /// Sets the APIC timer input clock.
    pub const fn with_bus_frequency_hz(mut self, hz: u64) -> Self {
        self.bus_frequency_hz = hz;
        self
    }
    /// Sets the guest TSC frequency.
    pub const fn with_tsc_frequency_hz(mut self, hz: u64) -> Self {
        self.tsc_frequency_hz = hz;
        self
    }
    /// Sets the guest TSC value at time 0.
    pub const fn with_tsc_offset(mut self, offset: u64) -> Self {
        self.tsc_offset = offset;
        self
    }
    /// Sets the periodic timer's minimum period (0 disables the clamp).
    pub const fn with_min_periodic_ns(mut self, ns: u64) -> Self {
        self.min_periodic_ns = ns;
        self
    }
    /// Sets the guest MAXPHYADDR.
    pub const fn with_max_phys_addr_bits(mut self, bits: u8) -> Self {
        self.max_phys_addr_bits = bits;
        self
    }

    /// Number of LVT entries (6, or 7 with CMCI).
    pub const fn lvt_count(&self) -> u32 {
        if self.cmci {
            7
        } else {
            6
        }
    }

    /// The version register: version 0x14, max LVT entry in bits 23:16,
    /// suppress-EOI-broadcast support in bit 24 (SDM 11.4.8).
    pub const fn version_register(&self) -> u32 {
        crate::regs::APIC_VERSION
            | ((self.lvt_count() - 1) << 16)
            | if self.suppress_eoi_broadcast {
                1 << 24
            } else {
                0
            }
    }
}

impl Default for ApicConfig {
    fn default() -> Self {
        ApicConfig::new(0).with_bsp(true)
    }
}
