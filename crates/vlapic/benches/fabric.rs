//! Fabric routing costs: unicast at 1..1024 vCPUs (must be flat),
//! broadcast to 1024, logical multicast, lowest priority, MSI decode and
//! deliver, and the owner's per-entry sync.
//!
//! `cargo bench -p vlapic --features fabric --bench fabric -- --warm-up-time 1 --measurement-time 2`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use std::sync::Arc;
use vlapic::fabric::Fabric;
use vlapic::{
    msi, ApicConfig, ApicIdentity, ApicMode, DeliveryMode, Destination, Interrupt, Ipi, LocalApic,
};

fn x2_identity(id: u32) -> ApicIdentity {
    ApicIdentity {
        mode: ApicMode::X2Apic,
        xapic_id: id as u8,
        x2apic_id: id,
        ldr: LocalApic::x2apic_ldr(id),
        dfr: !0,
    }
}

/// `n` software-enabled x2APIC vCPUs with x2APIC ID = index, and a no-op
/// waker.
fn fabric(n: usize, identity: impl Fn(u32) -> ApicIdentity) -> (Fabric, LocalApic) {
    let f = Fabric::new(n);
    f.set_default_waker(Arc::new(|v: usize| {
        black_box(v);
    }));
    let mut apic = LocalApic::new(ApicConfig::new(0).with_bsp(true));
    apic.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
    for i in 0..n {
        f.attach(i, &apic);
        f.update_identity(i, identity(i as u32));
    }
    (f, apic)
}

fn ipi(dest: Destination, irq: Interrupt) -> Ipi {
    Ipi {
        source_id: 0,
        destination: dest,
        interrupt: irq,
    }
}

fn unicast(c: &mut Criterion) {
    let mut g = c.benchmark_group("unicast");
    for n in [1usize, 8, 64, 256, 1024] {
        let (f, mut apic) = fabric(n, x2_identity);
        let t = n / 2;
        let msg = ipi(
            Destination::physical_x2apic(t as u32),
            Interrupt::fixed(0x40),
        );
        // Post (new bit + wake), then the target merges: the full path.
        g.bench_with_input(BenchmarkId::new("send+merge", n), &n, |b, _| {
            b.iter(|| {
                black_box(f.send_ipi(0, black_box(&msg)));
                black_box(f.inbox(t).drain_into(&mut apic));
            })
        });
        // The sender's side alone: resolve + coalesced post.
        g.bench_with_input(BenchmarkId::new("send-coalesced", n), &n, |b, _| {
            b.iter(|| black_box(f.send_ipi(0, black_box(&msg))))
        });
        // Rotating targets across all vCPUs (touches every inbox).
        let mut k = 0u32;
        g.bench_with_input(BenchmarkId::new("send-rotating", n), &n, |b, _| {
            b.iter(|| {
                k = (k + 1) % n as u32;
                let m = ipi(Destination::physical_x2apic(k), Interrupt::fixed(0x41));
                black_box(f.send_ipi(0, &m))
            })
        });
    }
    g.finish();
}

/// Unicast while another thread sends unicasts as fast as it can (both
/// from their own vCPU, to different targets): shows whether senders
/// share cache lines.
fn unicast_contended(c: &mut Criterion) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut g = c.benchmark_group("unicast-contended");
    let n = 64;
    let (f, _) = fabric(n, x2_identity);
    let f = Arc::new(f);
    let stop = Arc::new(AtomicBool::new(false));
    let bg = {
        let (f, stop) = (f.clone(), stop.clone());
        std::thread::spawn(move || {
            let m = ipi(Destination::physical_x2apic(40), Interrupt::fixed(0x42));
            while !stop.load(Ordering::Relaxed) {
                black_box(f.send_ipi(1, &m));
            }
        })
    };
    let m = ipi(Destination::physical_x2apic(20), Interrupt::fixed(0x43));
    g.bench_function("2-senders-64", |b| {
        b.iter(|| black_box(f.send_ipi(0, black_box(&m))))
    });
    stop.store(true, Ordering::Relaxed);
    bg.join().unwrap();
    g.finish();
}

fn multicast(c: &mut Criterion) {
    let mut g = c.benchmark_group("multicast");
    let (f, _) = fabric(1024, x2_identity);
    let bcast = ipi(
        Destination::physical_x2apic(u32::MAX),
        Interrupt::fixed(0x50),
    );
    g.bench_function("broadcast-1024", |b| {
        b.iter(|| black_box(f.send_ipi(0, black_box(&bcast))))
    });
    let nmi_all = ipi(
        Destination::physical_x2apic(u32::MAX),
        Interrupt::of_mode(DeliveryMode::Nmi),
    );
    g.bench_function("broadcast-nmi-1024", |b| {
        b.iter(|| black_box(f.send_ipi(0, black_box(&nmi_all))))
    });
    // x2APIC cluster 5, all 16 members.
    let cl = ipi(
        Destination::logical((5 << 16) | 0xFFFF, true),
        Interrupt::fixed(0x51),
    );
    g.bench_function("x2apic-cluster-16-of-1024", |b| {
        b.iter(|| black_box(f.send_ipi(0, black_box(&cl))))
    });
    // xAPIC cluster model: 15 clusters x 4 members (60 vCPUs).
    let (fx, _) = fabric(60, |i| ApicIdentity {
        mode: ApicMode::XApic,
        xapic_id: i as u8,
        x2apic_id: i,
        ldr: (((i / 4) << 4) | (1 << (i % 4))) << 24,
        dfr: 0x0FFF_FFFF,
    });
    let one = ipi(Destination::logical(0x3F, false), Interrupt::fixed(0x52));
    g.bench_function("xapic-cluster-4-of-60", |b| {
        b.iter(|| black_box(fx.send_ipi(0, black_box(&one))))
    });
    let all_clusters = ipi(Destination::logical(0xF1, false), Interrupt::fixed(0x53));
    g.bench_function("xapic-cluster-0xF-15-of-60", |b| {
        b.iter(|| black_box(fx.send_ipi(0, black_box(&all_clusters))))
    });
    g.finish();
}

fn lowest_priority(c: &mut Criterion) {
    let mut g = c.benchmark_group("lowest-priority");
    for n in [8usize, 64, 1024] {
        let (f, _) = fabric(n, x2_identity);
        let m = ipi(
            Destination::physical_x2apic(u32::MAX),
            Interrupt {
                delivery_mode: DeliveryMode::LowestPriority,
                ..Interrupt::fixed(0x60)
            },
        );
        g.bench_with_input(BenchmarkId::new("broadcast", n), &n, |b, _| {
            b.iter(|| black_box(f.send_ipi(0, black_box(&m))))
        });
    }
    g.finish();
}

fn msi_deliver(c: &mut Criterion) {
    let mut g = c.benchmark_group("msi");
    let (f, mut apic) = fabric(1024, x2_identity);
    let (addr, data) = msi::encode(
        &Destination::physical_x2apic(700),
        &Interrupt::fixed(0x70),
        false,
    )
    .unwrap();
    g.bench_function("decode", |b| {
        b.iter(|| black_box(msi::decode(black_box(addr), black_box(data))))
    });
    g.bench_function("decode+deliver-1024", |b| {
        b.iter(|| {
            black_box(f.send_msi(black_box(addr), black_box(data)).unwrap());
            black_box(f.inbox(700).drain_into(&mut apic));
        })
    });
    g.finish();
}

fn owner_sync(c: &mut Criterion) {
    let mut g = c.benchmark_group("sync");
    let (f, _) = fabric(64, x2_identity);
    let mut apic = LocalApic::new(ApicConfig::new(3));
    apic.msr_write(0, 0x1B, 0xFEE0_0000 | (1 << 11) | (1 << 10))
        .unwrap();
    apic.msr_write(0, 0x80F, 0x1FF).unwrap();
    f.sync(3, &mut apic);
    g.bench_function("empty-inbox", |b| {
        b.iter(|| black_box(f.sync(3, &mut apic)))
    });
    g.finish();
}

criterion_group!(
    benches,
    unicast,
    unicast_contended,
    multicast,
    lowest_priority,
    msi_deliver,
    owner_sync
);
criterion_main!(benches);
