//! The JSON path of the `restore` target: `ApicState` deserialized with
//! `serde_json` from arbitrary bytes, then the same contract as `restore`.
//! Valid JSON of a state must also serialize back to an equal state.

use super::input::Input;
use super::lapic_ops;
use super::restore;
use vlapic::ApicState;

/// The target (first byte: 0 = structured, as `restore::run`; else JSON).
pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        return restore::run(rest);
    }
    // Config from the first 32 bytes (padded), JSON after.
    let (head, json) = rest.split_at(rest.len().min(32));
    let mut inp = Input::new(head);
    let cfg = lapic_ops::config(&mut inp);
    let now = lapic_ops::start_time(&mut inp);
    let Ok(s) = serde_json::from_slice::<ApicState>(json) else {
        return;
    };
    let text = serde_json::to_string(&s).expect("serialize");
    let back: ApicState = serde_json::from_str(&text).expect("re-parse own JSON");
    assert_eq!(back, s, "JSON round trip changed the state");
    restore::check_restore(cfg, &s, now, &mut Input::new(&[]));
}
