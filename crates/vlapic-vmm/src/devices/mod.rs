//! Port-I/O devices: 16550 serial, isa-debug-exit, fw_cfg, and the bus
//! that dispatches port accesses to them.

pub mod bus;
pub mod debug_exit;
pub mod fw_cfg;
pub mod serial;

pub use bus::{IoBus, IoEvent};
