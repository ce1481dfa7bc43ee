//! Against KVM's in-kernel local APIC (`KVM_CREATE_IRQCHIP`): reset values,
//! typed writes through `KVM_SET_LAPIC`/`KVM_GET_LAPIC`, and
//! KVM -> vlapic -> KVM round trips in xAPIC and x2APIC mode with both
//! x2APIC ID formats. The vCPUs are created but never run.
//!
//! Without a usable `/dev/kvm` every test prints `SKIP: no /dev/kvm` and
//! passes.

use kvm_bindings::{
    kvm_enable_cap, kvm_msr_entry, CpuId, Msrs, KVM_CAP_X2APIC_API, KVM_MAX_CPUID_ENTRIES,
    KVM_X2APIC_API_USE_32BIT_IDS,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vlapic::regs::{Icr, LvtEntry, Svr, TimerMode};
use vlapic::{
    ApicConfig, ApicState, DeliveryMode, LocalApic, Lvt, Register, Shorthand, StateError, VectorSet,
};
use vlapic_kvm::convert::non_volatile_diff;
use vlapic_kvm::{
    from_kvm, to_kvm, to_kvm_with, Extras, IdFormat, KvmLapic, KvmLapicState, KvmProfile,
};

const MSR_APIC_BASE: u32 = 0x1B;
const MSR_TSC_DEADLINE: u32 = 0x6E0;
const X2APIC_BASE: u64 = 0xFEE0_0C00;

fn kvm() -> Option<Kvm> {
    match Kvm::new() {
        Ok(k) if k.get_api_version() == 12 && k.check_extension(Cap::Irqchip) => Some(k),
        Ok(_) => {
            println!("SKIP: no /dev/kvm (no usable KVM API with IRQCHIP)");
            None
        }
        Err(e) => {
            println!("SKIP: no /dev/kvm ({e})");
            None
        }
    }
}

struct Vm {
    _vm: VmFd,
    vcpus: Vec<(u32, VcpuFd)>,
    ids: IdFormat,
}

/// A VM with an in-kernel irqchip and vCPUs `ids`, CPUID offering x2APIC
/// and TSC-deadline (APIC IDs = vCPU IDs).
fn vm(kvm: &Kvm, ids: IdFormat, vcpu_ids: &[u32]) -> Vm {
    let vm = kvm.create_vm().expect("create_vm");
    if ids == IdFormat::Full32 {
        let mut cap = kvm_enable_cap {
            cap: KVM_CAP_X2APIC_API,
            ..Default::default()
        };
        cap.args[0] = KVM_X2APIC_API_USE_32BIT_IDS as u64;
        vm.enable_cap(&cap).expect("KVM_CAP_X2APIC_API");
    }
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("supported cpuid");
    let vcpus = vcpu_ids
        .iter()
        .map(|&id| {
            let fd = vm.create_vcpu(id as u64).expect("create_vcpu");
            let mut cpuid: CpuId = supported.clone();
            for e in cpuid.as_mut_slice() {
                match e.function {
                    1 => {
                        e.ecx |= (1 << 21) | (1 << 24); // x2APIC, TSC-deadline
                        e.ebx = (e.ebx & 0x00FF_FFFF) | ((id & 0xFF) << 24);
                    }
                    0xB | 0x1F => e.edx = id,
                    _ => {}
                }
            }
            fd.set_cpuid2(&cpuid).expect("set_cpuid2");
            (id, fd)
        })
        .collect();
    Vm {
        _vm: vm,
        vcpus,
        ids,
    }
}

fn get_msr(fd: &VcpuFd, index: u32) -> u64 {
    let mut msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        ..Default::default()
    }])
    .unwrap();
    assert_eq!(
        fd.get_msrs(&mut msrs).expect("get_msrs"),
        1,
        "MSR {index:#x}"
    );
    msrs.as_slice()[0].data
}

fn set_msr(fd: &VcpuFd, index: u32, data: u64) {
    let msrs = Msrs::from_entries(&[kvm_msr_entry {
        index,
        data,
        ..Default::default()
    }])
    .unwrap();
    assert_eq!(
        fd.set_msrs(&msrs).expect("set_msrs"),
        1,
        "MSR {index:#x} <- {data:#x}"
    );
}

fn get_state(fd: &VcpuFd) -> KvmLapicState {
    KvmLapicState {
        lapic: fd.get_lapic().expect("KVM_GET_LAPIC"),
        apic_base: get_msr(fd, MSR_APIC_BASE),
        tsc_deadline: get_msr(fd, MSR_TSC_DEADLINE),
    }
}

fn extras(id: u32, fd: &VcpuFd) -> Extras {
    Extras::from_kvm_vcpu(
        id,
        &fd.get_mp_state().expect("mp_state"),
        &fd.get_vcpu_events().expect("vcpu_events"),
    )
}

/// What `LocalApic::validate` says of a state KVM produced, for the
/// configuration matching the VM (x2APIC and TSC-deadline offered, no CMCI).
fn validate(s: &ApicState, bsp: bool) -> Result<(), StateError> {
    LocalApic::new(ApicConfig::new(s.apic_id).with_bsp(bsp)).validate(s)
}

/// KVM -> vlapic -> KVM: byte-identical outside the volatile ranges; the
/// converted blob is accepted by `KVM_SET_LAPIC` and reads back the same.
fn round_trip(v: &Vm, id: u32, fd: &VcpuFd) -> ApicState {
    let before = get_state(fd);
    let x = extras(id, fd);
    let s = from_kvm(&before, v.ids, &x).expect("from_kvm of KVM's own state");
    assert_eq!(s.apic_id, id);
    let back = to_kvm_with(&s, &KvmProfile::of(&before.view(), v.ids));
    let diff = non_volatile_diff(&before.view(), &back.view());
    assert!(
        diff.is_empty(),
        "vCPU {id}: KVM -> vlapic -> KVM differs: {diff:x?}"
    );
    assert_eq!(back.apic_base, before.apic_base);
    assert_eq!(back.tsc_deadline, before.tsc_deadline);
    // PPR: ours is KVM's formula (KVM's own copy may be stale, see below).
    assert_eq!(back.view().ppr(), before.view().computed_ppr(), "PPR");
    fd.set_lapic(&back.lapic)
        .expect("KVM_SET_LAPIC of the converted state");
    let again = get_state(fd);
    let diff = non_volatile_diff(&before.view(), &again.view());
    assert!(diff.is_empty(), "vCPU {id}: after SET/GET: {diff:x?}");
    s
}

#[test]
fn reset_values_bsp_and_ap() {
    let Some(kvm) = kvm() else { return };
    let v = vm(&kvm, IdFormat::Legacy, &[0, 1]);
    for (id, fd) in &v.vcpus {
        let bsp = *id == 0;
        let st = get_state(fd);
        let k = st.view();
        assert_eq!(k.read(Register::Id), id << 24);
        assert_eq!(k.xapic_id() as u32, *id);
        assert_eq!(k.version(), 0x0005_0014);
        assert_eq!(k.lvt_count(), 6);
        assert_eq!(k.tpr(), 0);
        assert_eq!(k.apr(), 0);
        assert_eq!(k.ppr(), 0);
        assert_eq!(k.ldr(), 0);
        assert_eq!(k.dfr(), 0xFFFF_FFFF);
        assert_eq!(k.svr(), Svr::from_bits(0xFF));
        assert!(!k.svr().software_enabled());
        assert_eq!(k.isr(), VectorSet::EMPTY);
        assert_eq!(k.tmr(), VectorSet::EMPTY);
        assert_eq!(k.irr(), VectorSet::EMPTY);
        assert_eq!(k.esr(), 0);
        assert_eq!(k.icr(), Icr::new());
        assert_eq!(
            k.read(Register::LvtCmci),
            0,
            "no CMCI: KVM leaves 0x2F0 at 0"
        );
        for l in [
            Lvt::Timer,
            Lvt::Thermal,
            Lvt::Perfmon,
            Lvt::Lint1,
            Lvt::Error,
        ] {
            assert_eq!(k.lvt(l), LvtEntry::from_bits(0x10000), "{l:?}");
        }
        // KVM's LINT0_REENABLED quirk: the BSP's LINT0 is ExtINT, unmasked.
        let lint0 = if bsp { 0x700 } else { 0x10000 };
        assert_eq!(k.lvt_lint0(), LvtEntry::from_bits(lint0));
        assert_eq!(k.timer_initial_count(), 0);
        assert_eq!(k.timer_current_count(), 0);
        assert_eq!(k.timer_divide().divisor(), 2);
        assert_eq!(k.stray_words().count(), 0);
        assert_eq!(st.apic_base, 0xFEE0_0800 | if bsp { 0x100 } else { 0 });
        assert_eq!(st.tsc_deadline, 0);

        // vlapic's power-on state converts to the same blob, except the
        // BSP's LINT0 quirk.
        let ours = LocalApic::new(ApicConfig::new(*id).with_bsp(bsp)).save(0);
        let diff = non_volatile_diff(&k, &to_kvm(&ours, IdFormat::Legacy).view());
        let expected: Vec<(usize, u32, u32)> = if bsp {
            vec![(0x350, 0x700, 0x10000)]
        } else {
            vec![]
        };
        assert_eq!(diff, expected, "vCPU {id}");

        // KVM's reset state in vlapic terms, and what validation says.
        let s = round_trip(&v, *id, fd);
        assert_eq!(s.run_state, ours.run_state, "vCPU {id} run state");
        let verdict = validate(&s, bsp);
        // KVM's BSP has LINT0 unmasked (0x700) while software-disabled: a
        // legal state vlapic restores as it is.
        assert_eq!(verdict, Ok(()), "vCPU {id}");
        if bsp {
            assert_eq!(s.lvt[Lvt::Lint0.index()], 0x700);
        } else {
            assert_eq!(s, ours);
        }
    }
}

/// A state exercising every register (xAPIC layout), set through the
/// typed setters.
fn typed_writes(k: &mut KvmLapic, id: u32) {
    k.set_svr(
        Svr::new()
            .with_vector(0xEF)
            .with_software_enabled(true)
            .with_focus_check_disabled(true),
    )
    .unwrap();
    k.set_tpr(0x20);
    k.set_logical_id(1 << (id % 8));
    k.set_dfr(0xFFFF_FFFF).unwrap();
    k.set_isr([0x31].into_iter().collect()).unwrap();
    k.set_irr([0x41, 0x80, 0xFE].into_iter().collect()).unwrap();
    k.set_tmr([0x80].into_iter().collect()).unwrap();
    k.set_esr(0).unwrap();
    k.set_lvt_timer(
        LvtEntry::new()
            .with_vector(0xEC)
            .with_timer_mode(TimerMode::Periodic),
    )
    .unwrap();
    k.set_lvt_thermal(
        LvtEntry::new()
            .with_delivery_mode(DeliveryMode::Nmi)
            .with_masked(true),
    )
    .unwrap();
    k.set_lvt_perfmon(LvtEntry::new().with_vector(0xFA))
        .unwrap();
    k.set_lvt_lint0(LvtEntry::new().with_delivery_mode(DeliveryMode::ExtInt))
        .unwrap();
    k.set_lvt_lint1(LvtEntry::new().with_delivery_mode(DeliveryMode::Nmi))
        .unwrap();
    k.set_lvt_error(LvtEntry::new().with_vector(0xFE)).unwrap();
    k.set_icr(
        Icr::new()
            .with_vector(0x55)
            .with_logical(true)
            .with_assert(true)
            .with_shorthand(Shorthand::None)
            .with_destination(0x0F00_0000),
    )
    .unwrap();
    k.set_timer_divide(0b1011).unwrap(); // /1
    k.set_timer_initial_count(0);
    k.set_timer_current_count(0);
}

#[test]
fn typed_writes_survive_set_and_get() {
    let Some(kvm) = kvm() else { return };
    let v = vm(&kvm, IdFormat::Legacy, &[0, 1]);
    for (id, fd) in &v.vcpus {
        let mut k = KvmLapic::from(fd.get_lapic().unwrap());
        typed_writes(&mut k, *id);
        fd.set_lapic(k.as_raw()).expect("KVM_SET_LAPIC");
        let r = KvmLapic::from(fd.get_lapic().unwrap());
        assert_eq!(r.svr(), k.svr());
        assert_eq!(r.tpr(), 0x20);
        // PPR is volatile: KVM_SET_LAPIC recomputes it before it recounts
        // the ISR, so right after a SET it can still read TPR (0x20) with
        // 0x31 in service; the next KVM_RUN corrects it to 0x30.
        assert_eq!(r.computed_ppr(), 0x30);
        assert!(r.ppr() == 0x30 || r.ppr() == 0x20, "PPR {:#x}", r.ppr());
        println!(
            "vCPU {id}: PPR after SET/GET {:#x} (formula: 0x30)",
            r.ppr()
        );
        assert_eq!(r.logical_id(), k.logical_id());
        assert_eq!(r.dfr(), k.dfr());
        assert_eq!(r.isr(), k.isr());
        assert_eq!(r.irr(), k.irr());
        assert_eq!(r.tmr(), k.tmr());
        assert_eq!(r.esr(), 0);
        for l in Lvt::ALL {
            assert_eq!(r.lvt(l), k.lvt(l), "{l:?}");
        }
        assert_eq!(r.icr(), k.icr());
        assert_eq!(r.timer_divide(), k.timer_divide());
        assert_eq!(r.timer_initial_count(), 0);
        assert_eq!(non_volatile_diff(&k, &r), vec![]);

        // Whatever the register state, KVM -> vlapic -> KVM is exact, and
        // vlapic accepts it.
        let s = round_trip(&v, *id, fd);
        assert_eq!(validate(&s, *id == 0), Ok(()));
        assert_eq!(s.tpr, 0x20);
        assert_eq!(s.icr, k.icr().into_bits());
    }
}

#[test]
fn running_timer_converts_to_remaining_count() {
    let Some(kvm) = kvm() else { return };
    let v = vm(&kvm, IdFormat::Legacy, &[0]);
    let (id, fd) = &v.vcpus[0];
    for (mode, lvt) in [
        (TimerMode::OneShot, 0x0000_00EC),
        (TimerMode::Periodic, 0x0002_00EC),
    ] {
        let mut k = KvmLapic::from(fd.get_lapic().unwrap());
        k.set_svr(Svr::from_bits(0x1FF)).unwrap();
        k.set_lvt_timer(LvtEntry::from_bits(lvt)).unwrap();
        k.set_timer_divide(0b0001).unwrap(); // /4
        k.set_timer_initial_count(2_000_000_000); // 8 s
        k.set_timer_current_count(1_000_000_000); // resume half-way
        fd.set_lapic(k.as_raw()).unwrap();
        let st = get_state(fd);
        let c = st.view().timer_current_count();
        assert!(c > 900_000_000 && c <= 1_000_000_000, "{mode:?}: TMCCT {c}");
        let s = from_kvm(&st, v.ids, &extras(*id, fd)).unwrap();
        assert!(s.timer_running);
        assert_eq!(s.timer_elapsed_cycles, (2_000_000_000 - c as u64) * 4);
        assert_eq!(validate(&s, true), Ok(()));
        let back = to_kvm(&s, v.ids);
        assert_eq!(back.view().timer_current_count(), c, "TMCCT survives");

        // A running vlapic timer resumes in KVM with its remaining count.
        fd.set_lapic(&back.lapic).unwrap();
        let c2 = fd
            .get_lapic()
            .map(KvmLapic::from)
            .unwrap()
            .timer_current_count();
        assert!(c2 <= c && c2 > c - 100_000_000, "{mode:?}: {c} -> {c2}");
    }
    // A one-shot that expired reads 0 and converts to a stopped timer.
    let mut k = KvmLapic::from(fd.get_lapic().unwrap());
    k.set_lvt_timer(LvtEntry::from_bits(0x0001_00EC)).unwrap();
    k.set_timer_divide(0b1011).unwrap();
    k.set_timer_initial_count(1000); // 1 us
    k.set_timer_current_count(0);
    fd.set_lapic(k.as_raw()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
    let st = get_state(fd);
    assert_eq!(st.view().timer_current_count(), 0);
    assert_eq!(st.view().timer_initial_count(), 1000);
    let s = from_kvm(&st, v.ids, &extras(*id, fd)).unwrap();
    assert!(!s.timer_running);
    assert_eq!(s.timer_elapsed_cycles, 0);
}

#[test]
fn tsc_deadline_msr_round_trip() {
    let Some(kvm) = kvm() else { return };
    let v = vm(&kvm, IdFormat::Legacy, &[0]);
    let (id, fd) = &v.vcpus[0];
    let mut k = KvmLapic::from(fd.get_lapic().unwrap());
    k.set_svr(Svr::from_bits(0x1FF)).unwrap();
    k.set_lvt_timer(LvtEntry::from_bits(0x0004_00EC)).unwrap();
    fd.set_lapic(k.as_raw()).unwrap();
    let deadline = u64::MAX / 2;
    set_msr(fd, MSR_TSC_DEADLINE, deadline);
    let st = get_state(fd);
    assert_eq!(st.tsc_deadline, deadline);
    assert_eq!(st.view().timer_current_count(), 0);
    let s = from_kvm(&st, v.ids, &extras(*id, fd)).unwrap();
    assert_eq!(s.tsc_deadline, deadline);
    assert!(!s.timer_running);
    assert_eq!(validate(&s, true), Ok(()));
    let back = to_kvm(&s, v.ids);
    assert_eq!(back.tsc_deadline, deadline);
    round_trip(&v, *id, fd);
}

/// IDs to test x2APIC with: 0, 1 and, when KVM allows it, one above 255
/// (where the legacy format loses bits).
fn x2apic_ids(kvm: &Kvm) -> Vec<u32> {
    let mut ids = vec![0, 1];
    if kvm.check_extension_int(Cap::MaxVcpuId) > 0x105 {
        ids.push(0x105);
    }
    ids
}

fn x2apic_mode(format: IdFormat) {
    let Some(kvm) = kvm() else { return };
    let ids = x2apic_ids(&kvm);
    let v = vm(&kvm, format, &ids);
    for (id, fd) in &v.vcpus {
        let bsp = *id == 0;
        let mut k = KvmLapic::from(fd.get_lapic().unwrap());
        k.set_svr(Svr::from_bits(0x1FF)).unwrap();
        fd.set_lapic(k.as_raw()).unwrap();
        set_msr(fd, MSR_APIC_BASE, X2APIC_BASE | if bsp { 0x100 } else { 0 });
        // Now an ICR with a 32-bit destination.
        let mut k = KvmLapic::from(fd.get_lapic().unwrap());
        let icr = Icr::new().with_vector(0x44).with_destination(0x0001_0203);
        k.set_icr(icr).unwrap();
        fd.set_lapic(k.as_raw()).unwrap();

        let st = get_state(fd);
        let k = st.view();
        assert_eq!(st.apic_base & 0xC00, 0xC00);
        match format {
            IdFormat::Full32 => assert_eq!(k.read(Register::Id), *id),
            IdFormat::Legacy => assert_eq!(k.read(Register::Id), id << 24), // truncated
        }
        assert_eq!(
            k.x2apic_id(format),
            if format == IdFormat::Legacy {
                id & 0xFF
            } else {
                *id
            }
        );
        assert_eq!(k.ldr(), LocalApic::x2apic_ldr(*id), "derived x2APIC LDR");
        assert_eq!(k.icr(), icr, "ICR low at 0x300, high at 0x310");
        println!(
            "{format:?} vCPU {id:#x}: ID reg {:#010x}, LDR {:#010x}, [0x304] {:#x}, stray {:x?}",
            k.read(Register::Id),
            k.ldr(),
            k.stray_words().find(|w| w.0 == 0x304).map_or(0, |w| w.1),
            k.stray_words().collect::<Vec<_>>()
        );
        let s = round_trip(&v, *id, fd);
        assert_eq!(s.apic_id, *id);
        assert_eq!(s.ldr, LocalApic::x2apic_ldr(*id));
        assert_eq!(s.icr, icr.into_bits());
        assert_eq!(validate(&s, bsp), Ok(()));

        // Legacy: KVM ignores the ID register on SET; Full32: it must be
        // the vCPU's ID.
        let mut bad = k;
        bad.write(Register::Id, 0x77);
        let r = fd.set_lapic(bad.as_raw());
        match format {
            IdFormat::Full32 => assert!(r.is_err(), "KVM accepted a wrong 32-bit ID"),
            IdFormat::Legacy => {
                r.expect("legacy format ignores the ID register");
                assert_eq!(
                    fd.get_lapic()
                        .map(KvmLapic::from)
                        .unwrap()
                        .read(Register::Id),
                    id << 24
                );
            }
        }
        // And the conversion refuses a blob whose ID disagrees with the vCPU.
        let wrong = KvmLapicState {
            lapic: bad.into(),
            ..st
        };
        assert!(from_kvm(&wrong, format, &extras(*id, fd)).is_err());
    }
}

#[test]
fn x2apic_mode_legacy_ids() {
    x2apic_mode(IdFormat::Legacy);
}

#[test]
fn x2apic_mode_full32_ids() {
    x2apic_mode(IdFormat::Full32);
}

#[test]
fn vlapic_states_load_into_kvm() {
    // vlapic -> KVM -> vlapic: a state built by vlapic operations goes
    // through the real KVM and comes back equal (TMCCT aside, with no
    // running timer here).
    let Some(kvm) = kvm() else { return };
    for format in [IdFormat::Legacy, IdFormat::Full32] {
        let v = vm(&kvm, format, &[0, 1]);
        for (id, fd) in &v.vcpus {
            let bsp = *id == 0;
            let mut a = LocalApic::new(ApicConfig::new(*id).with_bsp(bsp));
            let w = |a: &mut LocalApic, off: u64, val: u32| {
                a.mmio_write(0, off, &val.to_le_bytes());
            };
            w(&mut a, 0xF0, 0x1FF);
            w(&mut a, 0x80, 0x40);
            w(&mut a, 0x350, 0x700);
            w(&mut a, 0x360, 0x400);
            w(&mut a, 0x320, 0x0002_0030);
            w(&mut a, 0xD0, 0x0200_0000);
            a.accept(vlapic::Interrupt::fixed(0x51));
            a.accept(vlapic::Interrupt::fixed(0x62));
            a.acknowledge();
            if bsp {
                a.host_set_apic_base(X2APIC_BASE | 0x100).unwrap();
            }
            let s = a.save(0);
            let k = to_kvm(&s, format);
            if bsp {
                set_msr(fd, MSR_APIC_BASE, k.apic_base);
            }
            fd.set_lapic(&k.lapic)
                .expect("KVM_SET_LAPIC of a vlapic state");
            let got = get_state(fd);
            assert_eq!(got.apic_base, s.apic_base);
            let diff = non_volatile_diff(&k.view(), &got.view());
            assert!(diff.is_empty(), "{format:?} vCPU {id}: {diff:x?}");
            let mut x = Extras::of(&s);
            x.timer = None;
            let back = from_kvm(&got, format, &x).unwrap();
            assert_eq!(back, s, "{format:?} vCPU {id}");
        }
    }
}

#[test]
fn hardware_disabled_apic_round_trip() {
    // EN=0: KVM keeps the registers as they were (the SDM's INIT reset on
    // disable is not done), and the blob still converts both ways.
    let Some(kvm) = kvm() else { return };
    let v = vm(&kvm, IdFormat::Legacy, &[0, 1]);
    for (id, fd) in &v.vcpus {
        let bsp = *id == 0;
        let mut k = KvmLapic::from(fd.get_lapic().unwrap());
        typed_writes(&mut k, *id);
        fd.set_lapic(k.as_raw()).unwrap();
        set_msr(fd, MSR_APIC_BASE, 0xFEE0_0000 | if bsp { 0x100 } else { 0 });
        let st = get_state(fd);
        assert_eq!(st.apic_base & 0xC00, 0, "disabled");
        let s = round_trip(&v, *id, fd);
        assert_eq!(
            vlapic::ApicMode::of(vlapic::regs::ApicBase::from_bits(s.apic_base)),
            Some(vlapic::ApicMode::Disabled)
        );
        println!(
            "vCPU {id}: disabled APIC keeps SVR {:#x}, LINT0 {:#x}; validate: {:?}",
            s.svr,
            s.lvt[Lvt::Lint0.index()],
            validate(&s, bsp)
        );
        assert_eq!(s.svr, k.svr().into_bits());
    }
}
