//! Test reporting: `PASS:` / `FAIL:` / `SKIP:` lines and a summary
//! `N passed, N failed[, N skipped]`, then debug-exit 0 (all passed) or 1.

use core::sync::atomic::{AtomicU32, Ordering::Relaxed};

use crate::serial::out;

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);
static SKIPPED: AtomicU32 = AtomicU32::new(0);

// Plain load + store: no LOCK-prefixed instruction (emulated, and the
// counters are only touched by the reporting CPU).
fn bump(c: &AtomicU32) {
    c.store(c.load(Relaxed) + 1, Relaxed);
}

/// Reports `name` as passed or failed.
pub fn check(name: &str, cond: bool) -> bool {
    if cond {
        bump(&PASSED);
        out().s("PASS: ").s(name).nl();
    } else {
        bump(&FAILED);
        out().s("FAIL: ").s(name).nl();
    }
    cond
}

/// Reports whether `got == want`, printing both on failure.
pub fn check_eq(name: &str, got: u64, want: u64) -> bool {
    if got == want {
        bump(&PASSED);
        out().s("PASS: ").s(name).nl();
    } else {
        bump(&FAILED);
        out()
            .s("FAIL: ")
            .s(name)
            .s(" (got ")
            .hex(got)
            .s(", want ")
            .hex(want)
            .s(")")
            .nl();
    }
    got == want
}

/// [`check`] with the name printed as `prefix` + `name`.
pub fn check_pfx(prefix: &str, name: &str, cond: bool) -> bool {
    if cond {
        bump(&PASSED);
        out().s("PASS: ").s(prefix).s(name).nl();
    } else {
        bump(&FAILED);
        out().s("FAIL: ").s(prefix).s(name).nl();
    }
    cond
}

/// [`check_eq`] with the name printed as `prefix` + `name`.
pub fn check_eq_pfx(prefix: &str, name: &str, got: u64, want: u64) -> bool {
    if got == want {
        bump(&PASSED);
        out().s("PASS: ").s(prefix).s(name).nl();
    } else {
        bump(&FAILED);
        out()
            .s("FAIL: ")
            .s(prefix)
            .s(name)
            .s(" (got ")
            .hex(got)
            .s(", want ")
            .hex(want)
            .s(")")
            .nl();
    }
    got == want
}

/// Reports `prefix` + `name` as failed with a free-form detail.
pub fn fail_pfx(prefix: &str, name: &str, detail: &str, v: u64) {
    bump(&FAILED);
    out()
        .s("FAIL: ")
        .s(prefix)
        .s(name)
        .s(" (")
        .s(detail)
        .s(" ")
        .hex(v)
        .s(")")
        .nl();
}

/// Reports `prefix` + `name` as passed.
pub fn pass_pfx(prefix: &str, name: &str) {
    bump(&PASSED);
    out().s("PASS: ").s(prefix).s(name).nl();
}

/// [`skip`] with the name printed as `prefix` + `name`.
pub fn skip_pfx(prefix: &str, name: &str, why: &str) {
    bump(&SKIPPED);
    out()
        .s("SKIP: ")
        .s(prefix)
        .s(name)
        .s(" (")
        .s(why)
        .s(")")
        .nl();
}

/// Reports `name` as skipped.
pub fn skip(name: &str, why: &str) {
    bump(&SKIPPED);
    out().s("SKIP: ").s(name).s(" (").s(why).s(")").nl();
}

/// Number of failures so far.
pub fn failures() -> u32 {
    FAILED.load(Relaxed)
}

/// Prints the summary and exits (status 1 = all passed, 3 = failures).
pub fn summary_and_exit() -> ! {
    let (p, f, s) = (
        PASSED.load(Relaxed),
        FAILED.load(Relaxed),
        SKIPPED.load(Relaxed),
    );
    let o = out()
        .dec(u64::from(p))
        .s(" passed, ")
        .dec(u64::from(f))
        .s(" failed");
    if s > 0 {
        o.s(", ").dec(u64::from(s)).s(" skipped");
    }
    out().nl();
    crate::exit(u32::from(f != 0))
}

/// Counts one more failure, prints the summary and exits.
pub fn summary_and_exit_with_failure() -> ! {
    bump(&FAILED);
    summary_and_exit()
}
