//! Typed `kvm_lapic_state` (work in progress).
