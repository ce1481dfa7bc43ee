//! Helpers for the fabric tests: a small VM of local APICs wired to a
//! fabric, configured through guest register writes.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use vlapic::fabric::{Delivery, Fabric, FabricConfig};
use vlapic::{ApicConfig, Ipi, LocalApic, Message, Work};

pub const ID: u64 = 0x20;
pub const TPR: u64 = 0x80;
pub const EOI: u64 = 0xB0;
pub const LDR: u64 = 0xD0;
pub const DFR: u64 = 0xE0;
pub const SVR: u64 = 0xF0;
pub const ICR_LO: u64 = 0x300;
pub const ICR_HI: u64 = 0x310;
pub const MSR_APIC_BASE: u32 = 0x1B;
pub const BASE_EN: u64 = 1 << 11;
pub const BASE_EXTD: u64 = 1 << 10;

/// x2APIC MSR of an xAPIC register offset.
pub const fn msr(offset: u64) -> u32 {
    0x800 + (offset >> 4) as u32
}

pub fn w(apic: &mut LocalApic, offset: u64, value: u32) -> Option<Message> {
    apic.mmio_write(0, offset, &value.to_le_bytes())
}

/// A software-enabled xAPIC with initial APIC ID `id`.
pub fn xapic(id: u32) -> LocalApic {
    let mut a = LocalApic::new(ApicConfig::new(id).with_bsp(id == 0));
    w(&mut a, SVR, 0x1FF);
    a
}

/// A software-enabled x2APIC with x2APIC ID `id`.
pub fn x2apic(id: u32) -> LocalApic {
    let mut a = LocalApic::new(ApicConfig::new(id).with_bsp(id == 0));
    a.msr_write(0, MSR_APIC_BASE, 0xFEE0_0000 | BASE_EN | BASE_EXTD)
        .unwrap();
    a.msr_write(0, msr(SVR), 0x1FF).unwrap();
    a
}

/// Hardware-disables an APIC (`IA32_APIC_BASE.EN = 0`).
pub fn hw_disable(a: &mut LocalApic) {
    a.msr_write(0, MSR_APIC_BASE, 0xFEE0_0000).unwrap();
}

/// xAPIC logical setup: LDR[31:24] = `logical_id`, DFR model `model`
/// (0xF flat, 0x0 cluster).
pub fn set_logical(a: &mut LocalApic, logical_id: u8, model: u8) {
    w(a, LDR, (logical_id as u32) << 24);
    w(a, DFR, ((model as u32) << 28) | 0x0FFF_FFFF);
}

/// A VM: APICs (owned by "vCPU threads", here the test) and a fabric.
pub struct Vm {
    pub fabric: Fabric,
    pub apics: Vec<LocalApic>,
    pub wakes: Arc<AtomicUsize>,
}

impl Vm {
    pub fn new(apics: Vec<LocalApic>) -> Self {
        Self::with_config(apics, FabricConfig::default())
    }

    pub fn with_config(apics: Vec<LocalApic>, config: FabricConfig) -> Self {
        let fabric = Fabric::with_config(apics.len(), config);
        let wakes = Arc::new(AtomicUsize::new(0));
        let w2 = wakes.clone();
        fabric.set_default_waker(Arc::new(move |_v: usize| {
            w2.fetch_add(1, Ordering::Relaxed);
        }));
        for (i, a) in apics.iter().enumerate() {
            fabric.attach(i, a);
        }
        Vm {
            fabric,
            apics,
            wakes,
        }
    }

    /// Every vCPU syncs (merges its inbox, publishes its identity).
    pub fn sync(&mut self) {
        for (i, a) in self.apics.iter_mut().enumerate() {
            self.fabric.sync(i, a);
        }
    }

    /// Writes ICR on vCPU `from` (xAPIC) and routes the message.
    pub fn icr_xapic(&mut self, from: usize, high: u32, low: u32) -> Option<Delivery> {
        w(&mut self.apics[from], ICR_HI, high);
        let m = w(&mut self.apics[from], ICR_LO, low)?;
        let d = self.fabric.route(from, &m);
        self.sync();
        d
    }

    /// Writes ICR on vCPU `from` (x2APIC) and routes the message.
    pub fn icr_x2apic(&mut self, from: usize, icr: u64) -> Option<Delivery> {
        let m = self.apics[from].msr_write(0, msr(ICR_LO), icr).unwrap()?;
        let d = self.fabric.route(from, &m);
        self.sync();
        d
    }

    pub fn send(&mut self, from: usize, ipi: &Ipi) -> Delivery {
        let d = self.fabric.send_ipi(from, ipi);
        self.sync();
        d
    }

    pub fn work(&mut self, i: usize) -> Work {
        self.apics[i].poll(0)
    }

    /// Which vCPUs have `vector` pending in IRR.
    pub fn holders(&self, vector: u8) -> Vec<usize> {
        (0..self.apics.len())
            .filter(|&i| self.apics[i].interrupt_registers().irr.contains(vector))
            .collect()
    }

    /// Which vCPUs have an NMI pending.
    pub fn nmi_holders(&mut self) -> Vec<usize> {
        (0..self.apics.len())
            .filter(|&i| self.work(i).nmi)
            .collect()
    }

    /// Clears every IRR/NMI by acknowledging and EOIing.
    pub fn drain_all(&mut self) {
        self.sync();
        for a in &mut self.apics {
            while a.poll(0).interrupt.is_some() {
                a.acknowledge();
                if a.mode() == vlapic::ApicMode::X2Apic {
                    a.msr_write(0, msr(EOI), 0).unwrap();
                } else {
                    w(a, EOI, 0);
                }
            }
            a.take_nmi();
            a.take_smi();
            a.take_init();
            a.take_sipi();
        }
    }
}
