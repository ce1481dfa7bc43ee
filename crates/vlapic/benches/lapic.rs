//! Criterion benchmarks of the device model's hot paths.
//!
//! `baseline/page_read` is a plain 4-byte read from a 4 KiB array (what a
//! register file with no semantics costs); report the others as ratios to
//! it, measured in the same run.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use vlapic::{ApicConfig, Interrupt, LocalApic};

fn enabled(cfg: ApicConfig) -> LocalApic {
    let mut a = LocalApic::new(cfg);
    a.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
    a
}

fn benches(c: &mut Criterion) {
    let page = vec![0u8; 4096];
    c.bench_function("baseline/page_read", |b| {
        let mut off = 0usize;
        b.iter(|| {
            off = (off + 16) & 0xFF0;
            let o = black_box(off);
            let mut buf = [0u8; 4];
            buf.copy_from_slice(&page[o..o + 4]);
            black_box(u32::from_le_bytes(buf))
        })
    });

    let mut a = enabled(ApicConfig::new(0));
    c.bench_function("mmio/read_tpr", |b| {
        b.iter(|| {
            let mut buf = [0u8; 4];
            a.mmio_read(black_box(100), black_box(0x80), &mut buf);
            black_box(buf)
        })
    });
    c.bench_function("mmio/read_tmcct", |b| {
        a.mmio_write(0, 0x380, &u32::MAX.to_le_bytes());
        let mut now = 0;
        b.iter(|| {
            now += 1;
            let mut buf = [0u8; 4];
            a.mmio_read(black_box(now), 0x390, &mut buf);
            black_box(buf)
        })
    });
    c.bench_function("mmio/write_tpr", |b| {
        let mut v = 0u32;
        b.iter(|| {
            v = (v + 0x10) & 0xF0;
            black_box(a.mmio_write(black_box(100), black_box(0x80), &v.to_le_bytes()))
        })
    });

    let mut x = enabled(ApicConfig::new(0));
    x.msr_write(0, 0x1B, 0xFEE0_0C00).unwrap();
    c.bench_function("msr/x2apic_write_tpr", |b| {
        let mut v = 0u64;
        b.iter(|| {
            v = (v + 0x10) & 0xF0;
            black_box(x.msr_write(black_box(100), black_box(0x808), v))
        })
    });
    c.bench_function("msr/x2apic_icr_send", |b| {
        b.iter(|| black_box(x.msr_write(100, 0x830, black_box((7u64 << 32) | 0x4041))))
    });

    let mut p = enabled(ApicConfig::new(0));
    c.bench_function("irq/accept_ack_eoi", |b| {
        b.iter(|| {
            p.accept(Interrupt::fixed(black_box(0x61)));
            let w = p.poll(100);
            let v = p.acknowledge();
            p.mmio_write(100, 0xB0, &[0; 4]);
            black_box((w, v))
        })
    });
    c.bench_function("irq/poll_idle", |b| {
        b.iter(|| black_box(p.poll(black_box(100))))
    });

    let mut s = enabled(ApicConfig::new(0));
    s.mmio_write(0, 0x310, &(3u32 << 24).to_le_bytes());
    c.bench_function("icr/xapic_send_decode", |b| {
        b.iter(|| black_box(s.mmio_write(100, 0x300, &black_box(0x4051u32).to_le_bytes())))
    });

    let mut t = enabled(ApicConfig::new(0).with_min_periodic_ns(0));
    t.mmio_write(0, 0x3E0, &0xBu32.to_le_bytes());
    t.mmio_write(0, 0x320, &0x20040u32.to_le_bytes());
    t.mmio_write(0, 0x380, &1000u32.to_le_bytes());
    c.bench_function("timer/periodic_expiry_ack_eoi", |b| {
        let mut now = 0u64;
        b.iter(|| {
            now += 1000;
            let w = t.poll(now);
            let v = t.acknowledge();
            t.mmio_write(now, 0xB0, &[0; 4]);
            black_box((w, v, t.next_timer_deadline()))
        })
    });

    let mut full = enabled(ApicConfig::new(0));
    full.mmio_write(0, 0x380, &100_000u32.to_le_bytes());
    full.accept(Interrupt::fixed_level(0x90));
    let state = full.save(50);
    c.bench_function("snapshot/save", |b| {
        b.iter(|| black_box(full.save(black_box(50))))
    });
    let mut target = LocalApic::new(ApicConfig::new(0));
    c.bench_function("snapshot/restore", |b| {
        b.iter(|| black_box(target.restore(black_box(60), &state)))
    });
}

criterion_group!(lapic, benches);
criterion_main!(lapic);
