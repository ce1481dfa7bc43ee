//! Port-I/O devices: 16550 serial, isa-debug-exit, fw_cfg, the IRQ test
//! port, and the bus that dispatches port accesses to them; the IOAPIC
//! (MMIO, see [`ioapic`]).

pub mod bus;
pub mod debug_exit;
pub mod fw_cfg;
pub mod ioapic;
pub mod serial;

pub use bus::{IoBus, IoEvent};
