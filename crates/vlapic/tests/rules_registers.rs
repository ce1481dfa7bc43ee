//! Spec section 1: register file and access paths.

mod common;
use common::*;
use vlapic::regs::esr::ILLEGAL_REGISTER;
use vlapic::{ApicConfig, ApicMode, Fault, LocalApic, Message, Register};

#[test]
fn registers_sit_at_16_byte_strides() {
    for reg in Register::ALL {
        assert_eq!(reg.offset() % 16, 0, "{reg:?}");
        if reg != Register::SelfIpi {
            assert_eq!(Register::from_offset(reg.offset()), Some(reg));
        }
    }
    assert_eq!(Register::from_offset(0x24), None);
}

#[test]
fn irr_isr_tmr_span_eight_registers_each() {
    let mut a = xapic(0);
    for (n, v) in [(0u64, 0x10u8), (1, 0x3F), (7, 0xFF)] {
        a.accept(vlapic::Interrupt::fixed_level(v));
        let word = r(&mut a, IRR0 + 0x10 * (v as u64 / 32));
        assert_eq!(word, 1 << (v % 32), "IRR word for {v:#x}");
        assert_eq!(r(&mut a, TMR0 + 0x10 * (v as u64 / 32)), 1 << (v % 32));
        let _ = n;
    }
    assert_eq!(take(&mut a), Some(0xFF));
    assert_eq!(r(&mut a, ISR0 + 0x70), 1 << 31);
}

#[test]
fn xapic_partial_reads_return_register_bytes() {
    let mut a = xapic(0);
    w(&mut a, LVT_LINT0, 0x0001_A7E4); // mask, level, polarity, mode 7, vector E4
    let full = r(&mut a, LVT_LINT0);
    let mut b1 = [0u8; 1];
    a.mmio_read(0, LVT_LINT0 + 1, &mut b1);
    assert_eq!(b1[0], (full >> 8) as u8);
    let mut b2 = [0u8; 2];
    a.mmio_read(0, LVT_LINT0 + 2, &mut b2);
    assert_eq!(u16::from_le_bytes(b2), (full >> 16) as u16);
    assert_eq!(a.stats().mmio_bad_access, 0);
}

#[test]
fn xapic_writes_must_be_aligned_4_bytes() {
    let mut a = xapic(0);
    a.mmio_write(0, TPR, &[0x40, 0]);
    a.mmio_write(0, TPR + 4, &0x50u32.to_le_bytes());
    a.mmio_write(0, TPR + 1, &0x60u32.to_le_bytes());
    a.mmio_write(0, TPR, &0x70u64.to_le_bytes());
    assert_eq!(r(&mut a, TPR), 0);
    assert_eq!(a.stats().mmio_bad_access, 4);
    w(&mut a, TPR, 0x30);
    assert_eq!(r(&mut a, TPR), 0x30);
}

#[test]
fn xapic_odd_reads_are_defined_and_never_panic() {
    let mut a = xapic(5);
    // 8-byte read at ID: bytes 0-3 are the register, 4-7 the gap (0).
    let mut b = [0xAAu8; 8];
    a.mmio_read(0, ID, &mut b);
    assert_eq!(b, [0, 0, 0, 5, 0, 0, 0, 0]);
    // Reads running off the page, of size 0, 3 or 16, anywhere.
    for off in [0xFFCu64, 0xFFF, 0x1000, u64::MAX - 1] {
        for len in [0usize, 1, 3, 8, 16] {
            let mut buf = vec![0xAA; len];
            a.mmio_read(0, off, &mut buf);
            assert!(buf.iter().all(|x| *x == 0), "off {off:#x} len {len}");
        }
    }
    for off in [0xFFCu64, 0xFFF, 0x1000, u64::MAX - 1] {
        a.mmio_write(0, off, &[1, 2, 3, 4]);
    }
    assert!(a.stats().mmio_bad_access > 0);
}

#[test]
fn reserved_offset_reads_zero_and_sets_esr_illegal_register() {
    let mut a = xapic(0);
    assert_eq!(r(&mut a, 0x040), 0);
    assert_eq!(esr(&mut a) & ILLEGAL_REGISTER, ILLEGAL_REGISTER);
    assert_eq!(a.stats().illegal_register, 1);
}

#[test]
fn reserved_offset_writes_dropped_and_set_esr_illegal_register() {
    let mut a = xapic(0);
    w(&mut a, 0x3F0, 0x31); // SELF IPI does not exist in xAPIC mode
    w(&mut a, 0x050, 1);
    assert_eq!(a.poll(0).interrupt, None);
    assert_eq!(esr(&mut a) & ILLEGAL_REGISTER, ILLEGAL_REGISTER);
}

#[test]
fn cmci_lvt_absent_without_cmci() {
    let mut a = xapic(0);
    assert_eq!(r(&mut a, LVT_CMCI), 0);
    assert_eq!(esr(&mut a), ILLEGAL_REGISTER);
    let mut x = x2apic(0);
    assert_eq!(x.msr_read(0, msr(LVT_CMCI)), Err(Fault::Gp));
    let mut c = LocalApic::new(cfg(0).with_cmci(true));
    assert_eq!(r(&mut c, LVT_CMCI), 0x0001_0000);
}

#[test]
fn x2apic_msr_is_0x800_plus_offset_over_16() {
    let mut a = x2apic(0);
    a.msr_write(0, 0x808, 0x57).unwrap();
    assert_eq!(a.tpr(), 0x57);
    assert_eq!(a.msr_read(0, msr(TPR)), Ok(0x57));
    assert_eq!(Register::Tpr.x2apic_msr(), 0x808);
    assert_eq!(Register::from_x2apic_msr(0x83F), Some(Register::SelfIpi));
}

#[test]
fn x2apic_icr_is_64_bit_and_one_write_sends() {
    let mut a = x2apic(0);
    let m = a
        .msr_write(0, 0x830, (0x1234_5678u64 << 32) | 0x41)
        .unwrap();
    let Some(Message::Ipi(ipi)) = m else {
        panic!("no IPI: {m:?}")
    };
    assert_eq!(ipi.destination.id, 0x1234_5678);
    assert!(ipi.destination.x2apic_format);
    assert_eq!(ipi.interrupt.vector, 0x41);
    assert_eq!(a.msr_read(0, 0x830), Ok((0x1234_5678u64 << 32) | 0x41));
}

#[test]
fn x2apic_has_no_icr2_and_no_dfr() {
    let mut a = x2apic(0);
    for m in [0x831u32, 0x80E] {
        assert_eq!(a.msr_read(0, m), Err(Fault::Gp), "{m:#x}");
        assert_eq!(a.msr_write(0, m, 0), Err(Fault::Gp), "{m:#x}");
    }
}

#[test]
fn x2apic_self_ipi_is_write_only_vector_in_low_byte() {
    let mut a = x2apic(0);
    assert_eq!(a.msr_read(0, 0x83F), Err(Fault::Gp));
    assert_eq!(a.msr_write(0, 0x83F, 0x1_41), Err(Fault::Gp));
    assert_eq!(a.poll(0).interrupt, None);
    assert_eq!(a.msr_write(0, 0x83F, 0x41), Ok(None));
    assert_eq!(take(&mut a), Some(0x41));
}

#[test]
fn x2apic_reading_write_only_raises_gp() {
    let mut a = x2apic(0);
    assert_eq!(a.msr_read(0, msr(EOI)), Err(Fault::Gp));
}

#[test]
fn x2apic_writing_read_only_raises_gp() {
    let mut a = x2apic(0);
    for off in [ID, VERSION, PPR, LDR, ISR0, TMR0 + 0x70, IRR0 + 0x30, TMCCT] {
        assert_eq!(a.msr_write(0, msr(off), 0), Err(Fault::Gp), "{off:#x}");
    }
    assert!(a.stats().gp >= 8);
}

#[test]
fn x2apic_unassigned_msrs_raise_gp() {
    let mut a = x2apic(0);
    for m in [
        0x800u32,
        0x801,
        0x804,
        0x807,
        0x809,
        0x80C,
        0x829,
        0x82E,
        0x833 + 8,
        0x83A,
        0x83D,
        0x840,
        0x8FF,
    ] {
        assert_eq!(a.msr_read(0, m), Err(Fault::Gp), "read {m:#x}");
        assert_eq!(a.msr_write(0, m, 0), Err(Fault::Gp), "write {m:#x}");
    }
}

#[test]
fn x2apic_reserved_bits_raise_gp() {
    let mut a = x2apic(0);
    let cases = [
        (msr(TPR), 1u64 << 32),
        (msr(TPR), 0x100),
        (msr(SVR), 1 << 10),
        (msr(SVR), 1 << 12), // suppress-EOI-broadcast not offered
        (msr(LVT_TIMER), 1 << 19),
        (msr(LVT_ERROR), 0x700),
        (msr(LVT_LINT0), 1 << 17),
        (msr(TDCR), 0x4),
        (msr(TMICT), 1 << 40),
        (msr(ICR_LO), 1 << 16),
        (msr(ICR_LO), 1 << 13),
        (msr(ICR_LO), 1 << 20),
    ];
    for (m, v) in cases {
        assert_eq!(a.msr_write(0, m, v), Err(Fault::Gp), "{m:#x} <- {v:#x}");
    }
    // The registers kept their values.
    assert_eq!(a.msr_read(0, msr(TPR)), Ok(0));
    assert_eq!(a.msr_read(0, msr(SVR)), Ok(0x1FF));
    assert_eq!(a.msr_read(0, msr(LVT_TIMER)), Ok(0x10000));
}

#[test]
fn x2apic_mode_stops_mmio_decoding() {
    let mut a = x2apic(0);
    assert_eq!(a.mmio_base(), None);
    assert_eq!(r(&mut a, TPR), 0xFFFF_FFFF);
    w(&mut a, TPR, 0x20);
    assert_eq!(a.tpr(), 0);
    assert_eq!(a.stats().mmio_not_decoded, 2);
}

#[test]
fn xapic_mode_x2apic_msrs_raise_gp() {
    let mut a = xapic(0);
    assert_eq!(a.msr_read(0, msr(TPR)), Err(Fault::Gp));
    assert_eq!(a.msr_write(0, msr(TPR), 0x10), Err(Fault::Gp));
    assert_eq!(a.tpr(), 0);
}

#[test]
fn x2apic_id_is_32_bit_and_read_only() {
    let mut a = LocalApic::new(cfg(0x0001_2345));
    w(&mut a, SVR, 0x1FF);
    a.msr_write(0, MSR_APIC_BASE, 0xFEE0_0C00).unwrap();
    assert_eq!(a.msr_read(0, msr(ID)), Ok(0x0001_2345));
    assert_eq!(a.msr_write(0, msr(ID), 7), Err(Fault::Gp));
}

#[test]
fn x2apic_ldr_is_derived_read_only_and_survives_init() {
    let mut a = LocalApic::new(cfg(0x25));
    a.msr_write(0, MSR_APIC_BASE, 0xFEE0_0C00).unwrap();
    let ldr = (2 << 16) | (1 << 5);
    assert_eq!(a.msr_read(0, msr(LDR)), Ok(ldr));
    assert_eq!(a.msr_write(0, msr(LDR), 0), Err(Fault::Gp));
    a.accept(vlapic::Interrupt::of_mode(vlapic::DeliveryMode::Init));
    assert_eq!(a.msr_read(0, msr(LDR)), Ok(ldr));
    assert_eq!(a.mode(), ApicMode::X2Apic);
}

#[test]
fn xapic_id_is_writable_and_ipis_follow_the_new_id() {
    let mut a = xapic(1);
    w(&mut a, ID, 0x0900_0000);
    assert_eq!(r(&mut a, ID), 0x0900_0000);
    let to = |id: u8| vlapic::Ipi {
        source_id: 0,
        destination: vlapic::Destination::physical(id),
        interrupt: vlapic::Interrupt::fixed(0x30),
    };
    assert!(!a.deliver_ipi(&to(1), false));
    assert!(a.deliver_ipi(&to(9), false));
}

#[test]
fn version_register_reports_lvts_and_eoi_suppression() {
    let mut a = LocalApic::new(ApicConfig::new(0));
    assert_eq!(r(&mut a, VERSION), 0x0005_0014);
    let mut c = LocalApic::new(ApicConfig::new(0).with_cmci(true));
    assert_eq!(r(&mut c, VERSION), 0x0006_0014);
    let mut s = LocalApic::new(ApicConfig::new(0).with_suppress_eoi_broadcast(true));
    assert_eq!(r(&mut s, VERSION), 0x0105_0014);
}

#[test]
fn icr_delivery_status_always_reads_zero() {
    let mut a = xapic(0);
    w(&mut a, ICR_HI, 0x0100_0000);
    w(&mut a, ICR_LO, 0x1000 | 0x40);
    assert_eq!(r(&mut a, ICR_LO) & 0x1000, 0);
    assert_eq!(r(&mut a, ICR_LO) & 0xFF, 0x40);
    let mut x = x2apic(0);
    x.msr_write(0, msr(ICR_LO), 0x40 | 0x1000).unwrap();
    assert_eq!(x.msr_read(0, msr(ICR_LO)), Ok(0x40));
}

#[test]
fn xapic_icr2_keeps_only_bits_31_24() {
    let mut a = xapic(0);
    w(&mut a, ICR_HI, 0xFFFF_FFFF);
    assert_eq!(r(&mut a, ICR_HI), 0xFF00_0000);
}

#[test]
fn lvt_delivery_status_and_remote_irr_are_read_only() {
    let mut a = xapic(0);
    w(&mut a, LVT_LINT0, 0x0000_5000 | 0x8000 | 0x40);
    assert_eq!(r(&mut a, LVT_LINT0), 0x8040);
    let mut x = x2apic(0);
    // Writing the read-only bits in x2APIC mode is ignored, not #GP.
    assert_eq!(x.msr_write(0, msr(LVT_LINT0), 0x5040), Ok(None));
    assert_eq!(x.msr_read(0, msr(LVT_LINT0)), Ok(0x40));
}
