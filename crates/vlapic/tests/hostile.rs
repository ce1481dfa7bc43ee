//! Hostile input on the stable toolchain: the fuzz targets' logic
//! (`fuzz/targets/src`, shared with the libFuzzer binaries through
//! `#[path]` includes) run on the committed seed corpus (`fuzz/seeds`) and
//! on deterministic pseudo-random inputs (`HOSTILE_CASES`, default 10000 per
//! target), plus minimal reproducers of the bugs the fuzzers found
//! (`#[ignore]`d until fixed).
//!
//! Longer runs: `fuzz/run.sh` (nightly, cargo-fuzz).

#[allow(dead_code)]
#[path = "../../../fuzz/targets/src/input.rs"]
mod input;

#[allow(dead_code)]
#[path = "../../../fuzz/targets/src/check.rs"]
mod check;

#[allow(dead_code)]
#[path = "../../../fuzz/targets/src/lapic_ops.rs"]
mod lapic_ops;

#[allow(dead_code)]
#[path = "../../../fuzz/targets/src/restore.rs"]
mod restore;

#[cfg(feature = "fabric")]
#[allow(dead_code)]
#[path = "../../../fuzz/targets/src/fabric.rs"]
mod fabric;

use std::path::PathBuf;
use vlapic::{ApicConfig, LocalApic};

fn cases() -> usize {
    std::env::var("HOSTILE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn seeds(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/seeds")
        .join(target)
}

fn replay(target: &str, seed: u64, max_len: usize, f: fn(&[u8])) {
    let n = input::run_dir(&seeds(target), f);
    assert!(n > 0, "no seeds for {target}");
    input::run_random(seed, cases(), max_len, f);
}

#[test]
fn lapic_ops_hostile() {
    replay("lapic_ops", 1, 600, lapic_ops::run);
}

#[test]
fn restore_hostile() {
    // The structured half of the target (the JSON half needs serde_json:
    // `cargo test --manifest-path fuzz/targets/Cargo.toml`).
    replay("restore", 2, 600, |d| {
        if let Some((&sel, rest)) = d.split_first() {
            if sel & 1 == 0 {
                restore::run(rest);
            }
        }
    });
}

#[cfg(feature = "fabric")]
#[test]
fn fabric_hostile() {
    replay("fabric", 3, 600, fabric::run);
}

// ---------------------------------------------------------------------
// Bugs found by fuzzing: minimal reproducers (regression tests once
// fixed; the first three were fixed in 572c85f).
// ---------------------------------------------------------------------

/// `host_set_apic_base` masks only bits 0-7 and 9, so a host write with a
/// base at or above MAXPHYADDR is taken; `validate` (and so `restore`)
/// refuses the resulting `save()`: the APIC cannot be migrated any more.
#[test]
fn host_apic_base_above_maxphyaddr_breaks_save() {
    let mut a = LocalApic::new(ApicConfig::new(0).with_bsp(true)); // MAXPHYADDR 46
    let r = a.host_set_apic_base(0xFEE0_0900 | 1 << 50);
    let s = a.save(0);
    // Either the write is refused, or what it leaves can be restored.
    assert!(
        r.is_err() || a.validate(&s).is_ok(),
        "{r:?} {:?}",
        a.validate(&s)
    );
}

/// A host move x2APIC -> xAPIC (allowed for restore paths) keeps the
/// 64-bit x2APIC ICR, whose destination has bits 23:0 set; in xAPIC mode
/// `validate` requires ICR destination bits 23:0 to be 0, so `save()` is
/// refused by `restore` (and the guest cannot clear those bits: ICR2
/// writes only replace bits 31:24).
#[test]
fn host_x2apic_to_xapic_keeps_32bit_icr_destination() {
    let mut a = LocalApic::new(ApicConfig::new(0).with_bsp(true));
    a.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
    a.write_apic_base(0, 0xFEE0_0D00).unwrap();
    a.msr_write(0, 0x830, (0xFFu64 << 32) | 0x4030).unwrap();
    a.host_set_apic_base(0xFEE0_0900).unwrap();
    let s = a.save(0);
    assert_eq!(a.validate(&s), Ok(()), "ICR {:#x}", s.icr);
}

/// TSC-deadline comparisons are modulo 2^64 within +-2^63 ticks, but
/// `next_timer_deadline` and `advance` disagree at the edge of that
/// window: a deadline D with `D - tsc_offset >= 2^63` (mod 2^64) is
/// reported as due at time 0 (`ns_at_tsc` gives 0), while `advance`
/// (`tsc_reached`) says the current TSC has not reached it. One guest
/// WRMSR (IA32_TSC_DEADLINE = TSC + 2^63 - 1) makes `next_timer_deadline()`
/// return `Some(0)` forever and the timer never fire: an embedder that arms
/// its host timer at that instant spins.
#[test]
fn tsc_deadline_half_range_reported_past_never_fires() {
    let mut a = LocalApic::new(ApicConfig::new(0).with_bsp(true)); // 1 GHz TSC, offset 0
    a.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
    a.mmio_write(0, 0x320, &0x0004_0040u32.to_le_bytes()); // TSC-deadline mode
    let now = 1000; // guest TSC 1000
    a.msr_write(now, 0x6E0, now + (1 << 63) - 1).unwrap();
    for t in [2000, 1_000_000, 1 << 40] {
        let work = a.poll(t);
        let next = a.next_timer_deadline();
        // Either it fired, or it is due in the future.
        assert!(
            work.interrupt.is_some() || next.map_or(true, |d| d > t),
            "t={t}: not fired, next deadline {next:?}"
        );
    }
}

/// The fabric's inbox merges INIT before start-up and an INIT discards a
/// start-up posted before it, which equals sequential delivery only if
/// INIT always re-enters wait-for-SIPI. It does not on the BSP: an APIC
/// that waits for SIPI and has the BSP bit (a host `IA32_APIC_BASE` write
/// now sets it as written, 572c85f; or a restored state) that gets a
/// start-up IPI and then an INIT ends up running when the two are
/// accepted in order, but still waiting for SIPI through the fabric.
#[cfg(feature = "fabric")]
#[test]
fn fabric_sipi_then_init_to_bsp_in_wait_for_sipi() {
    use vlapic::fabric::Fabric;
    use vlapic::{DeliveryMode, Destination, Interrupt};
    let mut a = LocalApic::new(ApicConfig::new(1)); // an AP: waits for SIPI
    a.host_set_apic_base(0xFEE0_0900).unwrap(); // the host makes it the BSP
    assert_eq!(a.run_state(), vlapic::RunState::WaitForSipi);
    let mut direct = a.clone();
    let fabric = Fabric::new(1);
    fabric.attach(0, &a);
    let dest = Destination::physical(1);
    for irq in [
        Interrupt::startup(0x10),
        Interrupt::of_mode(DeliveryMode::Init),
    ] {
        assert_eq!(fabric.deliver(&dest, irq).targets, 1);
        direct.accept(irq);
    }
    fabric.sync(0, &mut a);
    assert_eq!(
        a.save(0),
        direct.save(0),
        "fabric {:?} direct {:?}",
        a.run_state(),
        direct.run_state()
    );
}
