//! Guest CPUID: KVM's supported CPUID adjusted per vCPU (APIC IDs,
//! x2APIC / TSC-deadline bits, topology leaves, TSC frequency).

use kvm_bindings::{kvm_cpuid_entry2, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

/// CPUID.1:ECX bit for x2APIC.
pub const ECX_X2APIC: u32 = 1 << 21;
/// CPUID.1:ECX bit for the TSC-deadline timer.
pub const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:ECX "running under a hypervisor".
pub const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit for an on-chip APIC.
pub const EDX_APIC: u32 = 1 << 9;
/// KVM's timing-information leaf (TSC kHz in EAX, APIC bus kHz in EBX).
pub const LEAF_HV_TIMING: u32 = 0x4000_0010;

/// What to put into CPUID for one vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuidParams {
    /// This vCPU's (initial, x2)APIC ID.
    pub apic_id: u32,
    /// Number of vCPUs in the VM.
    pub cpus: u32,
    /// Offer x2APIC.
    pub x2apic: bool,
    /// Offer the TSC-deadline timer.
    pub tsc_deadline: bool,
    /// Guest TSC frequency in kHz (0 if unknown).
    pub tsc_khz: u32,
    /// LAPIC timer (bus) frequency in kHz.
    pub apic_bus_khz: u32,
}

fn entry(function: u32, index: u32, flags: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags,
        eax: regs[0],
        ebx: regs[1],
        ecx: regs[2],
        edx: regs[3],
        ..Default::default()
    }
}

/// Number of bits needed for `n` IDs.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts KVM's supported CPUID `entries` for one vCPU.
pub fn adjust(entries: &mut Vec<kvm_cpuid_entry2>, p: &CpuidParams) {
    let max_basic = entries
        .iter()
        .find(|e| e.function == 0)
        .map(|e| e.eax)
        .unwrap_or(0);
    for e in entries.iter_mut() {
        if e.function == 1 {
            e.ebx = (e.ebx & 0x0000_ffff) | ((p.apic_id & 0xff) << 24) | ((p.cpus.min(255)) << 16);
            e.edx |= EDX_APIC | (1 << 28); // APIC, HTT (EBX[23:16] valid)
            e.ecx |= ECX_HYPERVISOR;
            e.ecx = if p.x2apic {
                e.ecx | ECX_X2APIC
            } else {
                e.ecx & !ECX_X2APIC
            };
            e.ecx = if p.tsc_deadline {
                e.ecx | ECX_TSC_DEADLINE
            } else {
                e.ecx & !ECX_TSC_DEADLINE
            };
        }
    }
    // Topology leaves 0xB and (if present) 0x1F: one thread per core, all
    // cores in one package; EDX = x2APIC ID.
    let shift = id_bits(p.cpus);
    let has_1f = max_basic >= 0x1f;
    entries.retain(|e| e.function != 0xb && e.function != 0x1f);
    for leaf in [0xb, 0x1f] {
        if leaf == 0x1f && !has_1f {
            continue;
        }
        let f = KVM_CPUID_FLAG_SIGNIFCANT_INDEX;
        entries.push(entry(leaf, 0, f, [0, 1, 0x100, p.apic_id]));
        entries.push(entry(leaf, 1, f, [shift, p.cpus, 0x201, p.apic_id]));
        entries.push(entry(leaf, 2, f, [0, 0, 2, p.apic_id]));
    }
    // TSC / crystal frequency: leaf 0x15 (ratio 1:1, crystal = TSC) and
    // 0x16 (MHz), only if the basic range reaches them.
    if p.tsc_khz != 0 && max_basic >= 0x15 {
        entries.retain(|e| e.function != 0x15 && e.function != 0x16);
        entries.push(entry(0x15, 0, 0, [1, 1, p.tsc_khz.saturating_mul(1000), 0]));
        if max_basic >= 0x16 {
            let mhz = p.tsc_khz / 1000;
            entries.push(entry(0x16, 0, 0, [mhz, mhz, p.apic_bus_khz / 1000, 0]));
        }
    }
    // KVM timing leaf 0x40000010 (as VMware / QEMU's "vmware-cpuid-freq").
    if p.tsc_khz != 0 {
        if let Some(hv) = entries.iter_mut().find(|e| e.function == 0x4000_0000) {
            hv.eax = hv.eax.max(LEAF_HV_TIMING);
        } else {
            // Signature "KVMKVMKVM\0\0\0".
            entries.push(entry(
                0x4000_0000,
                0,
                0,
                [LEAF_HV_TIMING, 0x4b4d_564b, 0x564b_4d56, 0x4d],
            ));
        }
        entries.retain(|e| e.function != LEAF_HV_TIMING);
        entries.push(entry(
            LEAF_HV_TIMING,
            0,
            0,
            [p.tsc_khz, p.apic_bus_khz, 0, 0],
        ));
    }
}

/// Measures the host TSC frequency in kHz against the monotonic clock
/// (fallback when `KVM_GET_TSC_KHZ` is not available).
pub fn measure_tsc_khz() -> u32 {
    use std::time::{Duration, Instant};
    // SAFETY: RDTSC has no memory effects; every x86_64 CPU has it.
    let t0 = unsafe { core::arch::x86_64::_rdtsc() };
    let i0 = Instant::now();
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: as above.
    let t1 = unsafe { core::arch::x86_64::_rdtsc() };
    let ns = i0.elapsed().as_nanos().max(1);
    (u128::from(t1.wrapping_sub(t0)) * 1_000_000 / ns) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<kvm_cpuid_entry2> {
        vec![
            entry(0, 0, 0, [0x1f, 0, 0, 0]),
            entry(1, 0, 0, [0x806f0, 0x0101_0800, ECX_X2APIC, 0]),
            entry(0xb, 0, 1, [9, 9, 9, 9]),
            entry(0x4000_0000, 0, 0, [0x4000_0001, 0, 0, 0]),
        ]
    }

    fn find(v: &[kvm_cpuid_entry2], f: u32, i: u32) -> kvm_cpuid_entry2 {
        *v.iter().find(|e| e.function == f && e.index == i).unwrap()
    }

    #[test]
    fn per_cpu_ids_and_bits() {
        let mut v = base();
        let p = CpuidParams {
            apic_id: 3,
            cpus: 4,
            x2apic: false,
            tsc_deadline: true,
            tsc_khz: 2_500_000,
            apic_bus_khz: 1_000_000,
        };
        adjust(&mut v, &p);
        let l1 = find(&v, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_eq!(l1.ecx & ECX_X2APIC, 0);
        assert_ne!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(find(&v, 0xb, 0).edx, 3);
        assert_eq!(find(&v, 0xb, 1).eax, 2);
        assert_eq!(find(&v, 0xb, 1).ebx, 4);
        assert_eq!(find(&v, 0x1f, 1).edx, 3);
        assert_eq!(v.iter().filter(|e| e.function == 0xb).count(), 3);
        assert_eq!(find(&v, 0x15, 0).ecx, 2_500_000_000);
        assert_eq!(find(&v, 0x4000_0000, 0).eax, LEAF_HV_TIMING);
        assert_eq!(find(&v, LEAF_HV_TIMING, 0).eax, 2_500_000);
    }

    #[test]
    fn x2apic_on_deadline_off() {
        let mut v = base();
        let p = CpuidParams {
            apic_id: 0,
            cpus: 1,
            x2apic: true,
            tsc_deadline: false,
            tsc_khz: 0,
            apic_bus_khz: 1_000_000,
        };
        adjust(&mut v, &p);
        let l1 = find(&v, 1, 0);
        assert_ne!(l1.ecx & ECX_X2APIC, 0);
        assert_eq!(l1.ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(find(&v, 0xb, 1).eax, 0);
        assert!(!v.iter().any(|e| e.function == LEAF_HV_TIMING));
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(5), 3);
    }
}
