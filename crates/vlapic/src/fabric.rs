//! Interrupt fabric: IPI, MSI and IOAPIC message routing across many vCPUs.
//!
//! A [`Fabric`] connects the [`LocalApic`]s of a VM. Each vCPU thread owns
//! its `LocalApic` (`&mut`, no lock); everything another thread may touch
//! lives in the fabric:
//!
//! - a per-vCPU [`Inbox`] that any thread posts into with atomics (IRR
//!   bits, trigger mode, NMI/SMI/INIT/SIPI/ExtINT), merged into the APIC by
//!   its owner ([`Fabric::sync`]) before each poll;
//! - a routing table built from every vCPU's [`ApicIdentity`] (physical ID
//!   to vCPUs, logical flat/cluster and x2APIC cluster buckets), rebuilt only
//!   when an identity changes, so a physical unicast costs the same with 1
//!   or 1024 vCPUs;
//! - a per-vCPU mirror of PPR and software-enable for lowest-priority
//!   arbitration;
//! - a [`Wake`] callback per vCPU, called after something new was posted.
//!
//! ## Wiring it into a VMM
//!
//! ```
//! use std::sync::Arc;
//! use vlapic::fabric::Fabric;
//! use vlapic::{ApicConfig, LocalApic, Message};
//!
//! let fabric = Arc::new(Fabric::new(2));
//! // The embedder's wake: unhalt or kick the vCPU thread (here: nothing).
//! fabric.set_default_waker(Arc::new(|_vcpu: usize| {}));
//! let mut apics: Vec<LocalApic> = (0..2)
//!     .map(|i| LocalApic::new(ApicConfig::new(i).with_bsp(i == 0)))
//!     .collect();
//! for (i, apic) in apics.iter_mut().enumerate() {
//!     apic.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes()); // SVR: enable
//!     fabric.attach(i, apic);
//! }
//!
//! // vCPU 0's thread: an APIC write returned an IPI to APIC ID 1.
//! apics[0].mmio_write(0, 0x310, &(1u32 << 24).to_le_bytes());
//! if let Some(msg) = apics[0].mmio_write(0, 0x300, &0x50u32.to_le_bytes()) {
//!     let d = fabric.route(0, &msg).unwrap();
//!     assert_eq!(d.targets, 1);
//! }
//! fabric.sync(0, &mut apics[0]); // after every APIC exit, before entry
//!
//! // vCPU 1's thread, before entering the guest:
//! fabric.sync(1, &mut apics[1]);
//! assert_eq!(apics[1].poll(0).interrupt, Some(0x50));
//! ```
//!
//! A vCPU thread's loop is then:
//!
//! 1. `fabric.sync(vcpu, &mut apic)`: merge the inbox, publish identity
//!    changes (ID, LDR, DFR, mode) and PPR/software-enable;
//! 2. `apic.poll(now)` and inject what [`crate::Work`] says, or halt;
//! 3. run the guest; on an APIC exit call the access method and hand any
//!    returned [`Message::Ipi`] to [`Fabric::route`]; go to 1.
//!
//! A halted vCPU waits until its wake callback fires or
//! [`Fabric::has_pending`] is true (check it after arming the wait).
//! Devices call [`Fabric::send_msi`] or [`Fabric::deliver`] from any
//! thread.
//!
//! ## Design
//!
//! *Routing table.* An immutable snapshot built from the registered
//! identities: a physical map (the ID a physical destination must equal:
//! the 8-bit xAPIC ID of xAPIC-mode APICs, the 32-bit x2APIC ID of
//! x2APIC-mode ones; several vCPUs per ID for aliases), x2APIC logical
//! clusters (`LDR[31:16]` -> members with their `LDR[15:0]`), xAPIC flat
//! buckets and xAPIC cluster buckets (by `LDR[31:24]`), and the list of
//! enabled vCPUs for broadcasts and shorthands. Keys below 65536 index a
//! dense array, larger x2APIC IDs a hash map. A physical unicast is one
//! array index; an xAPIC cluster destination at most 15 bucket lookups.
//! The table is replaced (under a registry mutex, O(vCPUs)) only when an
//! identity or waker changes; a generation counter tells senders, who keep
//! a reference to the current table in their own per-sender cache, so the
//! send path writes no cache line shared with other senders.
//!
//! *Posting.* See [`Inbox`]: `fetch_or` into 256-bit edge/level sets, one
//! compare-and-swap word for NMI/SMI/INIT/SIPI/ExtINT, a `pending` flag
//! (set with a read-modify-write, which the loom model in `inbox.rs`
//! showed is needed), and a wake call only when something new was posted.
//!
//! ## Semantics
//!
//! Destination matching is exactly [`Destination::matches`] plus the
//! shorthands as in [`LocalApic::deliver_ipi`] (a property test checks the
//! table against that brute force). Hardware-disabled APICs are never
//! targets; software-disabled APICs are targets (they take NMI, SMI, INIT
//! and SIPI) and drop Fixed vectors when the owner merges them.
//!
//! Lowest priority ([`DeliveryMode::LowestPriority`], or an MSI's
//! redirection hint with Fixed delivery, as KVM does): exactly one target
//! among the matched *software-enabled* APICs, the one with the lowest
//! published PPR; ties are broken by [`TieBreak`] (default: lowest vCPU
//! index, deterministic). No target when none is software-enabled (the
//! message is counted in [`FabricStats::dropped`]). Focus-processor
//! checking (SVR bit 9) is not modelled, as on Pentium 4 and later
//! processors and in KVM: arbitration looks at priority only, never at
//! whether an APIC already has the vector pending or in service.
//!
//! Timing: the owner's identity, PPR and software-enable state are seen by
//! other threads as of its last [`Fabric::sync`] (or
//! [`Fabric::update_identity`], [`Fabric::publish`]); software-disable
//! drops a Fixed vector if the APIC is disabled when the owner merges it.
//! The one exception is INIT, which changes the target's identity (xAPIC
//! LDR and DFR reset) and software-enable state: the fabric applies that
//! to its table when it routes the INIT, before posting it, so messages
//! sent after an INIT are routed as the hardware would even if the target
//! has not synced yet.

mod inbox;

pub use inbox::{Inbox, Merged, Posted};

use std::boxed::Box;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::vec::Vec;

use crate::event::Message;
use crate::ipi::{ApicIdentity, Destination, Interrupt, Ipi};
use crate::mode::ApicMode;
use crate::msi::{self, MsiError, MsiOptions};
use crate::regs::{DeliveryMode, DestinationMode, Shorthand};
use crate::LocalApic;

/// Wakes a vCPU after something was posted to it: unhalts a halted vCPU
/// and kicks a running one out of the guest so it merges its inbox.
///
/// Implemented for every `Fn(usize) + Send + Sync` closure; the argument
/// is the vCPU index. It is called on the sending thread, without any
/// fabric lock held, and may be called concurrently.
pub trait Wake: Send + Sync {
    /// Wake vCPU `vcpu`.
    fn wake(&self, vcpu: usize);
}

impl<F: Fn(usize) + Send + Sync> Wake for F {
    fn wake(&self, vcpu: usize) {
        self(vcpu)
    }
}

/// How lowest-priority delivery chooses among APICs of equal (lowest)
/// priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum TieBreak {
    /// The lowest vCPU index. Deterministic; concentrates interrupts on
    /// low-numbered vCPUs when all are idle.
    #[default]
    LowestIndex,
    /// Rotates: the first tied vCPU at or after (cyclically) the one after
    /// the previous winner. Deterministic for a given sequence of messages.
    RoundRobin,
}

/// Fabric settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FabricConfig {
    /// Lowest-priority tie-break.
    pub tie_break: TieBreak,
    /// How [`Fabric::send_msi`] reads MSI addresses.
    pub msi: MsiOptions,
}

/// The result of one routed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Delivery {
    /// APICs the message was delivered to (after lowest-priority
    /// arbitration: 0 or 1).
    pub targets: u32,
    /// Targets where it made something new pending (and that were woken).
    pub posted: u32,
    /// Targets where the same vector or event was already pending in the
    /// inbox (coalesced, IRR semantics).
    pub coalesced: u32,
}

impl core::ops::AddAssign for Delivery {
    fn add_assign(&mut self, o: Delivery) {
        self.targets += o.targets;
        self.posted += o.posted;
        self.coalesced += o.coalesced;
    }
}

/// What [`Fabric::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Synced {
    /// What came out of the inbox.
    pub merged: Merged,
    /// The vCPU's identity changed and the routing table was rebuilt.
    pub identity_changed: bool,
}

/// Fabric-wide counters (relaxed; for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FabricStats {
    /// Messages routed (IPIs, MSIs, IOAPIC/device messages).
    pub messages: u64,
    /// Deliveries to one APIC ([`Delivery::targets`] summed).
    pub deliveries: u64,
    /// Deliveries coalesced in an inbox.
    pub coalesced: u64,
    /// Messages that reached no APIC: no match, no software-enabled
    /// lowest-priority candidate, a reserved delivery mode, or an MSI
    /// outside the interrupt window.
    pub dropped: u64,
    /// Routing table rebuilds.
    pub rebuilds: u64,
}

#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    deliveries: AtomicU64,
    coalesced: AtomicU64,
    dropped: AtomicU64,
}

/// Sender-side state, one per vCPU plus one for devices, on its own cache
/// lines: a cached reference to the routing table (valid while the
/// fabric's generation is unchanged) and the sender's counters. The
/// sending path then touches no cache line shared with other senders
/// (no `RwLock` reader count, no `Arc` reference count, no global
/// counters): it reads the generation (a read-mostly line) and locks its
/// own uncontended mutex.
#[repr(align(128))]
#[derive(Default)]
struct Sender {
    cache: Mutex<Option<(u64, Arc<RouteMap>)>>,
    counters: Counters,
}

/// Bit of [`Slot::arb`] set while the APIC is software-disabled (so it is
/// never the minimum among eligible candidates).
const ARB_INELIGIBLE: u32 = 1 << 8;

/// Everything another thread may touch for one vCPU, on its own cache
/// lines.
#[repr(align(128))]
struct Slot {
    inbox: Inbox,
    /// PPR in bits 7:0, [`ARB_INELIGIBLE`] when software-disabled.
    arb: AtomicU32,
    /// The identity the routing table was last built with, packed, for the
    /// owner's cheap change check: mode | xAPIC ID | attached bit.
    shadow: [AtomicU32; 4],
}

const SHADOW_ATTACHED: u32 = 1 << 31;

fn pack_identity(id: &ApicIdentity) -> [u32; 4] {
    let mode = match id.mode {
        ApicMode::Disabled => 0,
        ApicMode::XApic => 1,
        ApicMode::X2Apic => 2,
    };
    [
        SHADOW_ATTACHED | mode << 8 | id.xapic_id as u32,
        id.x2apic_id,
        id.ldr,
        id.dfr,
    ]
}

/// Buckets of `(vcpu, aux)` pairs by a `u32` key: a dense array for small
/// keys, a hash map for the rest.
#[derive(Default)]
struct Buckets {
    dense: Vec<(u32, u32)>,
    sparse: HashMap<u32, (u32, u32)>,
    members: Vec<(u32, u32)>,
    keys: Vec<u32>,
}

/// Keys below this go into the dense array (sized to the largest such key).
const DENSE_LIMIT: u32 = 1 << 16;

impl Buckets {
    fn build(mut entries: Vec<(u32, u32, u32)>) -> Self {
        entries.sort_unstable();
        let mut b = Buckets::default();
        let dense_len = entries
            .iter()
            .filter(|e| e.0 < DENSE_LIMIT)
            .map(|e| e.0 + 1)
            .max()
            .unwrap_or(0);
        b.dense = std::vec![(0, 0); dense_len as usize];
        let mut i = 0;
        while i < entries.len() {
            let key = entries[i].0;
            let start = b.members.len() as u32;
            while i < entries.len() && entries[i].0 == key {
                b.members.push((entries[i].1, entries[i].2));
                i += 1;
            }
            let range = (start, b.members.len() as u32);
            if key < DENSE_LIMIT {
                b.dense[key as usize] = range;
            } else {
                b.sparse.insert(key, range);
            }
            b.keys.push(key);
        }
        b
    }

    #[inline]
    fn get(&self, key: u32) -> &[(u32, u32)] {
        let (s, e) = if let Some(r) = self.dense.get(key as usize) {
            *r
        } else if self.sparse.is_empty() {
            return &[];
        } else {
            match self.sparse.get(&key) {
                Some(r) => *r,
                None => return &[],
            }
        };
        &self.members[s as usize..e as usize]
    }
}

/// The routing table: an immutable snapshot, replaced on identity changes.
#[derive(Default)]
struct RouteMap {
    identities: Vec<Option<ApicIdentity>>,
    /// Attached, not hardware-disabled (broadcast and shorthand targets).
    all: Vec<u32>,
    /// Key: the ID a physical destination must equal (xAPIC ID for xAPIC
    /// targets, x2APIC ID for x2APIC targets).
    physical: Buckets,
    /// x2APIC targets. Key: LDR[31:16], aux: LDR[15:0].
    x2_cluster: Buckets,
    /// xAPIC flat-model targets. Key: LDR[31:24] (non-zero).
    flat: Buckets,
    /// xAPIC cluster-model targets. Key: LDR[31:24] (member bits non-zero).
    cluster: Buckets,
    wakers: Vec<Option<Arc<dyn Wake>>>,
}

impl RouteMap {
    fn build(identities: &[Option<ApicIdentity>], wakers: Vec<Option<Arc<dyn Wake>>>) -> Self {
        let mut all = Vec::new();
        let (mut phys, mut x2, mut flat, mut cluster) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, id) in identities.iter().enumerate() {
            let Some(id) = id else { continue };
            let v = i as u32;
            match id.mode {
                ApicMode::Disabled => continue,
                ApicMode::X2Apic => {
                    phys.push((id.x2apic_id, v, 0));
                    if id.ldr & 0xFFFF != 0 {
                        x2.push((id.ldr >> 16, v, id.ldr & 0xFFFF));
                    }
                }
                ApicMode::XApic => {
                    phys.push((id.xapic_id as u32, v, 0));
                    let lid = id.ldr >> 24;
                    match id.dfr >> 28 {
                        0xF if lid != 0 => flat.push((lid, v, 0)),
                        0x0 if lid & 0xF != 0 => cluster.push((lid, v, 0)),
                        _ => {}
                    }
                }
            }
            all.push(v);
        }
        RouteMap {
            identities: identities.to_vec(),
            all,
            physical: Buckets::build(phys),
            x2_cluster: Buckets::build(x2),
            flat: Buckets::build(flat),
            cluster: Buckets::build(cluster),
            wakers,
        }
    }

    /// Calls `f` once for each vCPU the destination selects.
    #[inline]
    fn for_each_target(&self, from: Option<usize>, dest: &Destination, mut f: impl FnMut(usize)) {
        match dest.shorthand {
            Shorthand::SelfOnly => {
                if let Some(s) = from {
                    if matches!(self.identities.get(s), Some(Some(_))) {
                        f(s);
                    }
                }
            }
            Shorthand::AllIncludingSelf => self.all.iter().for_each(|&v| f(v as usize)),
            Shorthand::AllExcludingSelf => self
                .all
                .iter()
                .filter(|&&v| Some(v as usize) != from)
                .for_each(|&v| f(v as usize)),
            Shorthand::None => {
                if dest.is_broadcast() {
                    self.all.iter().for_each(|&v| f(v as usize));
                    return;
                }
                let id = dest.id;
                match dest.mode {
                    DestinationMode::Physical => self
                        .physical
                        .get(id)
                        .iter()
                        .for_each(|&(v, _)| f(v as usize)),
                    DestinationMode::Logical => {
                        // x2APIC targets: cluster equal, member bits overlap.
                        for &(v, bits) in self.x2_cluster.get(id >> 16) {
                            if bits & id & 0xFFFF != 0 {
                                f(v as usize);
                            }
                        }
                        if id > 0xFF {
                            return; // never matches an xAPIC target
                        }
                        // xAPIC flat: LDR[31:24] & dest != 0.
                        for &k in &self.flat.keys {
                            if k & id != 0 {
                                self.flat.get(k).iter().for_each(|&(v, _)| f(v as usize));
                            }
                        }
                        // xAPIC cluster: cluster equal (or 0xF), members overlap.
                        let (c, m) = (id >> 4, id & 0xF);
                        if m == 0 {
                            return;
                        }
                        if c == 0xF {
                            for &k in &self.cluster.keys {
                                if k & m != 0 {
                                    self.cluster.get(k).iter().for_each(|&(v, _)| f(v as usize));
                                }
                            }
                        } else {
                            let mut bits = 1;
                            while bits < 16 {
                                if bits & m != 0 {
                                    self.cluster
                                        .get(c << 4 | bits)
                                        .iter()
                                        .for_each(|&(v, _)| f(v as usize));
                                }
                                bits += 1;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Routes interrupts between the local APICs of one VM. See the
/// [module documentation](self) for how an embedder wires it.
///
/// ```
/// use vlapic::fabric::Fabric;
/// use vlapic::{ApicConfig, Destination, Interrupt, LocalApic};
///
/// let fabric = Fabric::new(4);
/// let mut apics: Vec<LocalApic> = (0..4).map(|i| {
///     let mut a = LocalApic::new(ApicConfig::new(i).with_bsp(i == 0));
///     a.mmio_write(0, 0xF0, &0x1FFu32.to_le_bytes());
///     fabric.attach(i as usize, &a);
///     a
/// }).collect();
/// // A device interrupt to every APIC (xAPIC broadcast).
/// let d = fabric.deliver(&Destination::physical(0xFF), Interrupt::fixed(0x33));
/// assert_eq!(d.targets, 4);
/// for (i, apic) in apics.iter_mut().enumerate() {
///     fabric.sync(i, apic);
///     assert_eq!(apic.poll(0).interrupt, Some(0x33));
/// }
/// // An MSI: physical destination 2, vector 0x44.
/// assert_eq!(fabric.send_msi(0xFEE0_2000, 0x44).unwrap().targets, 1);
/// assert!(fabric.has_pending(2));
/// ```
pub struct Fabric {
    slots: Box<[Slot]>,
    /// Index `vcpus` is the devices' (MSI, IOAPIC) sender.
    senders: Box<[Sender]>,
    map: RwLock<Arc<RouteMap>>,
    /// Bumped after every table replacement.
    generation: AtomicU64,
    registry: Mutex<Registry>,
    config: FabricConfig,
    rr_cursor: AtomicUsize,
    rebuilds: AtomicU64,
}

struct Registry {
    identities: Vec<Option<ApicIdentity>>,
    wakers: Vec<Option<Arc<dyn Wake>>>,
    default_waker: Option<Arc<dyn Wake>>,
}

impl core::fmt::Debug for Fabric {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Fabric")
            .field("vcpus", &self.slots.len())
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Fabric {
    /// A fabric for `vcpus` vCPUs (indices `0..vcpus`), none attached yet.
    pub fn new(vcpus: usize) -> Self {
        Self::with_config(vcpus, FabricConfig::default())
    }

    /// A fabric with explicit settings.
    pub fn with_config(vcpus: usize, config: FabricConfig) -> Self {
        let slots = (0..vcpus)
            .map(|_| Slot {
                inbox: Inbox::new(),
                arb: AtomicU32::new(ARB_INELIGIBLE),
                shadow: Default::default(),
            })
            .collect();
        Fabric {
            slots,
            map: RwLock::new(Arc::new(RouteMap {
                identities: std::vec![None; vcpus],
                wakers: std::vec![None; vcpus],
                ..Default::default()
            })),
            registry: Mutex::new(Registry {
                identities: std::vec![None; vcpus],
                wakers: std::vec![None; vcpus],
                default_waker: None,
            }),
            senders: (0..=vcpus).map(|_| Sender::default()).collect(),
            generation: AtomicU64::new(0),
            config,
            rr_cursor: AtomicUsize::new(0),
            rebuilds: AtomicU64::new(0),
        }
    }

    /// Number of vCPU slots.
    pub fn vcpus(&self) -> usize {
        self.slots.len()
    }

    /// The settings.
    pub fn config(&self) -> &FabricConfig {
        &self.config
    }

    // ----------------------------------------------------------------
    // Owner-side API (the vCPU's thread)
    // ----------------------------------------------------------------

    /// Registers vCPU `vcpu` with its APIC's current identity, PPR and
    /// software-enable state. Until attached a vCPU is never a target.
    ///
    /// # Panics
    /// If `vcpu >= self.vcpus()` (also for every other method taking a
    /// vCPU index from the embedder, except the senders' `from`).
    pub fn attach(&self, vcpu: usize, apic: &LocalApic) {
        self.publish(vcpu, apic.software_enabled(), apic.ppr());
        self.set_identity(vcpu, Some(apic.identity()));
    }

    /// Unregisters vCPU `vcpu` (hot-unplug, teardown): it is no target any
    /// more. Its inbox keeps what was posted until drained.
    pub fn detach(&self, vcpu: usize) {
        self.slots[vcpu]
            .arb
            .store(ARB_INELIGIBLE, Ordering::Relaxed);
        self.set_identity(vcpu, None);
    }

    /// Tells the fabric that the routing identity (mode, xAPIC ID, LDR,
    /// DFR) of vCPU `vcpu` is now `identity`. Cheap when nothing changed
    /// (four relaxed loads); otherwise rebuilds the routing table (O(vCPUs))
    /// and returns `true`. [`Fabric::sync`] calls it.
    pub fn update_identity(&self, vcpu: usize, identity: ApicIdentity) -> bool {
        let want = pack_identity(&identity);
        let shadow = &self.slots[vcpu].shadow;
        if (0..4).all(|i| shadow[i].load(Ordering::Relaxed) == want[i]) {
            return false;
        }
        self.set_identity(vcpu, Some(identity));
        true
    }

    /// Publishes the software-enable state and PPR that lowest-priority
    /// arbitration reads. [`Fabric::sync`] calls it; call it yourself
    /// after [`LocalApic::acknowledge`] or a TPR change handled outside an
    /// exit (CR8) if arbitration should see the new priority before the
    /// next sync. A relaxed load and, only when changed, a relaxed store.
    #[inline]
    pub fn publish(&self, vcpu: usize, software_enabled: bool, ppr: u8) {
        let v = ppr as u32 | if software_enabled { 0 } else { ARB_INELIGIBLE };
        let arb = &self.slots[vcpu].arb;
        if arb.load(Ordering::Relaxed) != v {
            arb.store(v, Ordering::Relaxed);
        }
    }

    /// The owner's once-per-exit call: merges vCPU `vcpu`'s inbox into
    /// `apic`, then publishes identity changes (an INIT may have reset LDR
    /// and DFR) and PPR/software-enable. Call it after handling every APIC
    /// access (so an ID/LDR/DFR/mode write is routed by before the guest
    /// runs again) and before [`LocalApic::poll`].
    #[inline]
    pub fn sync(&self, vcpu: usize, apic: &mut LocalApic) -> Synced {
        let merged = self.slots[vcpu].inbox.drain_into(apic);
        let identity_changed = self.update_identity(vcpu, apic.identity());
        self.publish(vcpu, apic.software_enabled(), apic.ppr());
        Synced {
            merged,
            identity_changed,
        }
    }

    /// The inbox of vCPU `vcpu`.
    pub fn inbox(&self, vcpu: usize) -> &Inbox {
        &self.slots[vcpu].inbox
    }

    /// Whether vCPU `vcpu` has posted interrupts waiting for
    /// [`Fabric::sync`].
    pub fn has_pending(&self, vcpu: usize) -> bool {
        self.slots[vcpu].inbox.has_pending()
    }

    /// Sets the wake callback of vCPU `vcpu` (`None`: fall back to the
    /// default waker).
    pub fn set_waker(&self, vcpu: usize, waker: Option<Arc<dyn Wake>>) {
        let mut reg = self.lock_registry();
        reg.wakers[vcpu] = waker;
        self.rebuild(&reg);
    }

    /// Sets the wake callback of every vCPU without its own.
    pub fn set_default_waker(&self, waker: Arc<dyn Wake>) {
        let mut reg = self.lock_registry();
        reg.default_waker = Some(waker);
        self.rebuild(&reg);
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_identity(&self, vcpu: usize, identity: Option<ApicIdentity>) {
        let mut reg = self.lock_registry();
        reg.identities[vcpu] = identity;
        let packed = identity.as_ref().map(pack_identity).unwrap_or_default();
        for (s, p) in self.slots[vcpu].shadow.iter().zip(packed) {
            s.store(p, Ordering::Relaxed);
        }
        self.rebuild(&reg);
    }

    fn rebuild(&self, reg: &Registry) {
        let wakers = reg
            .wakers
            .iter()
            .map(|w| w.clone().or_else(|| reg.default_waker.clone()))
            .collect();
        let map = Arc::new(RouteMap::build(&reg.identities, wakers));
        *self.map.write().unwrap_or_else(PoisonError::into_inner) = map;
        self.generation.fetch_add(1, Ordering::Release);
        self.rebuilds.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    fn snapshot(&self) -> Arc<RouteMap> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    // ----------------------------------------------------------------
    // Senders (any thread)
    // ----------------------------------------------------------------

    /// Routes a bus message an APIC write of vCPU `from` returned:
    /// [`Message::Ipi`] is delivered ([`Fabric::send_ipi`]); other messages
    /// (EOI broadcasts for the IOAPIC, MMIO base moves) are not the
    /// fabric's and give `None`.
    pub fn route(&self, from: usize, msg: &Message) -> Option<Delivery> {
        match msg {
            Message::Ipi(ipi) => Some(self.send_ipi(from, ipi)),
            _ => None,
        }
    }

    /// Delivers an IPI sent by vCPU `from` (shorthands are relative to
    /// it; an index that is not a vCPU means "no sender").
    pub fn send_ipi(&self, from: usize, ipi: &Ipi) -> Delivery {
        self.dispatch(Some(from), &ipi.destination, ipi.interrupt, false)
    }

    /// Decodes and delivers an MSI (see [`crate::msi`]); an address
    /// outside the interrupt window is an error (and counted as dropped).
    pub fn send_msi(&self, address: u64, data: u32) -> Result<Delivery, MsiError> {
        match msi::decode_with(address, data, self.config.msi) {
            Ok(m) => Ok(self.dispatch(None, &m.destination, m.interrupt, m.lowest_priority())),
            Err(e) => {
                self.count(None, &Delivery::default());
                Err(e)
            }
        }
    }

    /// Delivers a message from a device (IOAPIC, or an already decoded
    /// MSI): to every matching APIC, or for
    /// [`DeliveryMode::LowestPriority`] to the one chosen by arbitration.
    /// Shorthands have no sender here: "self" selects nothing and "all
    /// excluding self" is everyone.
    pub fn deliver(&self, dest: &Destination, irq: Interrupt) -> Delivery {
        self.dispatch(None, dest, irq, false)
    }

    /// Every vCPU `dest` selects when sent by `from` (before
    /// lowest-priority arbitration), in ascending order. Allocates: for
    /// tests and debugging.
    pub fn resolve(&self, from: Option<usize>, dest: &Destination) -> Vec<usize> {
        let mut v = Vec::new();
        self.snapshot().for_each_target(from, dest, |t| v.push(t));
        v.sort_unstable();
        v
    }

    /// The vCPU lowest-priority delivery to `dest` would choose now
    /// (advances the round-robin cursor like a delivery would).
    pub fn resolve_lowest_priority(
        &self,
        from: Option<usize>,
        dest: &Destination,
    ) -> Option<usize> {
        self.arbitrate(&self.snapshot(), from, dest)
    }

    /// Counters.
    pub fn stats(&self) -> FabricStats {
        let mut st = FabricStats {
            rebuilds: self.rebuilds.load(Ordering::Relaxed),
            ..Default::default()
        };
        for s in self.senders.iter() {
            let c = &s.counters;
            st.messages += c.messages.load(Ordering::Relaxed);
            st.deliveries += c.deliveries.load(Ordering::Relaxed);
            st.coalesced += c.coalesced.load(Ordering::Relaxed);
            st.dropped += c.dropped.load(Ordering::Relaxed);
        }
        st
    }

    fn sender(&self, from: Option<usize>) -> &Sender {
        let n = self.slots.len();
        &self.senders[from.filter(|&f| f < n).unwrap_or(n)]
    }

    fn dispatch(
        &self,
        from: Option<usize>,
        dest: &Destination,
        irq: Interrupt,
        redirect: bool,
    ) -> Delivery {
        let generation = self.generation.load(Ordering::Acquire);
        let d = match self.sender(from).cache.try_lock() {
            Ok(mut cache) => {
                let map = match &*cache {
                    Some((g, map)) if *g == generation => map,
                    _ => &cache.insert((generation, self.snapshot())).1,
                };
                self.dispatch_with(map, from, dest, irq, redirect)
            }
            // Re-entered from a wake callback, or devices on several
            // threads at once: take the shared path.
            Err(_) => self.dispatch_with(&self.snapshot(), from, dest, irq, redirect),
        };
        self.count(from, &d);
        d
    }

    fn dispatch_with(
        &self,
        map: &Arc<RouteMap>,
        from: Option<usize>,
        dest: &Destination,
        irq: Interrupt,
        redirect: bool,
    ) -> Delivery {
        let mut d = Delivery::default();
        let lowest = match irq.delivery_mode {
            DeliveryMode::LowestPriority => true,
            DeliveryMode::Fixed => redirect,
            DeliveryMode::Reserved3 => return d,
            _ => false,
        };
        if lowest {
            if let Some(t) = self.arbitrate(map, from, dest) {
                self.post(map, t, irq, &mut d);
            }
        } else if irq.delivery_mode == DeliveryMode::Init && !irq.is_init_deassert() {
            // INIT resets LDR, DFR and SVR: route by the post-INIT identity
            // from now on, as the hardware would, without waiting for the
            // targets to merge it (rare: boot, reset).
            let mut targets = Vec::new();
            map.for_each_target(from, dest, |t| targets.push(t));
            let new_map = self.apply_init(&targets);
            let map = new_map.as_ref().unwrap_or(map);
            for t in targets {
                self.post(map, t, irq, &mut d);
            }
        } else {
            map.for_each_target(from, dest, |t| self.post(map, t, irq, &mut d));
        }
        d
    }

    fn count(&self, from: Option<usize>, d: &Delivery) {
        let c = &self.sender(from).counters;
        c.messages.fetch_add(1, Ordering::Relaxed);
        if d.targets == 0 {
            c.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            c.deliveries.fetch_add(d.targets as u64, Ordering::Relaxed);
            if d.coalesced != 0 {
                c.coalesced.fetch_add(d.coalesced as u64, Ordering::Relaxed);
            }
        }
    }

    #[inline]
    fn post(&self, map: &RouteMap, t: usize, irq: Interrupt, d: &mut Delivery) {
        d.targets += 1;
        match self.slots[t].inbox.post(irq) {
            Posted::New => {
                d.posted += 1;
                if let Some(w) = &map.wakers[t] {
                    w.wake(t);
                }
            }
            Posted::Coalesced => d.coalesced += 1,
            Posted::Ignored => {}
        }
    }

    /// Updates the routing identity and arbitration state of INIT targets
    /// to what the INIT reset leaves (xAPIC: LDR 0, DFR flat; software
    /// disabled) *before* the INIT is posted, so the owner cannot have
    /// merged it and published a newer identity yet. Returns the new table
    /// if it changed.
    fn apply_init(&self, targets: &[usize]) -> Option<Arc<RouteMap>> {
        let mut reg = self.lock_registry();
        let mut changed = false;
        for &t in targets {
            self.slots[t].arb.store(ARB_INELIGIBLE, Ordering::Relaxed);
            if let Some(id) = &mut reg.identities[t] {
                if id.mode == ApicMode::XApic && (id.ldr != 0 || id.dfr != !0) {
                    id.ldr = 0;
                    id.dfr = !0;
                    for (s, p) in self.slots[t].shadow.iter().zip(pack_identity(id)) {
                        s.store(p, Ordering::Relaxed);
                    }
                    changed = true;
                }
            }
        }
        if !changed {
            return None;
        }
        self.rebuild(&reg);
        drop(reg);
        Some(self.snapshot())
    }

    /// Lowest priority: the matched software-enabled vCPU with the lowest
    /// published PPR, ties broken by the configured [`TieBreak`].
    fn arbitrate(&self, map: &RouteMap, from: Option<usize>, dest: &Destination) -> Option<usize> {
        let n = self.slots.len();
        let cursor = match self.config.tie_break {
            TieBreak::LowestIndex => 0,
            TieBreak::RoundRobin => self.rr_cursor.load(Ordering::Relaxed) % n.max(1),
        };
        // Rank: (priority, distance from the cursor), smallest wins.
        let mut best: Option<(u32, usize, usize)> = None;
        map.for_each_target(from, dest, |t| {
            let p = self.slots[t].arb.load(Ordering::Relaxed);
            if p & ARB_INELIGIBLE != 0 {
                return;
            }
            let rank = (p, (t + n - cursor) % n.max(1));
            let better = match best {
                None => true,
                Some((bp, bd, _)) => rank < (bp, bd),
            };
            if better {
                best = Some((rank.0, rank.1, t));
            }
        });
        let winner = best.map(|b| b.2);
        if let (Some(w), TieBreak::RoundRobin) = (winner, self.config.tie_break) {
            self.rr_cursor.store(w + 1, Ordering::Relaxed);
        }
        winner
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::ApicConfig;

    fn ident(mode: ApicMode, xid: u8, x2id: u32, ldr: u32, dfr: u32) -> ApicIdentity {
        ApicIdentity {
            mode,
            xapic_id: xid,
            x2apic_id: x2id,
            ldr,
            dfr,
        }
    }

    #[test]
    fn buckets_dense_and_sparse() {
        let b = Buckets::build(std::vec![
            (5, 1, 0),
            (5, 2, 0),
            (0x0010_0000, 3, 7),
            (0, 4, 0)
        ]);
        assert_eq!(b.get(5), &[(1, 0), (2, 0)]);
        assert_eq!(b.get(0x0010_0000), &[(3, 7)]);
        assert_eq!(b.get(0), &[(4, 0)]);
        assert!(b.get(6).is_empty() && b.get(u32::MAX).is_empty());
        assert_eq!(b.keys, std::vec![0, 5, 0x0010_0000]);
    }

    #[test]
    fn identity_update_is_cheap_when_unchanged() {
        let f = Fabric::new(2);
        let a = LocalApic::new(ApicConfig::new(0).with_bsp(true));
        f.attach(0, &a);
        let r = f.stats().rebuilds;
        assert!(!f.update_identity(0, a.identity()));
        assert_eq!(f.stats().rebuilds, r);
        let mut id = a.identity();
        id.ldr = 0x0100_0000;
        assert!(f.update_identity(0, id));
        assert_eq!(
            f.resolve(None, &Destination::logical(1, false)),
            std::vec![0]
        );
    }

    #[test]
    fn round_robin_rotates_among_ties() {
        let f = Fabric::with_config(
            3,
            FabricConfig {
                tie_break: TieBreak::RoundRobin,
                ..Default::default()
            },
        );
        let mut reg = f.lock_registry();
        for i in 0..3 {
            reg.identities[i] = Some(ident(ApicMode::XApic, i as u8, i as u32, 0, !0));
            f.slots[i].arb.store(0, Ordering::Relaxed);
        }
        f.rebuild(&reg);
        drop(reg);
        let all = Destination::physical(0xFF);
        let picks: Vec<_> = (0..4)
            .map(|_| f.resolve_lowest_priority(None, &all).unwrap())
            .collect();
        assert_eq!(picks, std::vec![0, 1, 2, 0]);
        // A lower priority always wins.
        f.publish(2, true, 0x10);
        f.publish(0, true, 0x10);
        assert_eq!(f.resolve_lowest_priority(None, &all), Some(1));
        assert_eq!(f.resolve_lowest_priority(None, &all), Some(1));
    }

    #[test]
    fn detached_vcpus_are_not_targets() {
        let f = Fabric::new(2);
        let a = LocalApic::new(ApicConfig::new(1));
        f.attach(1, &a);
        assert_eq!(f.resolve(None, &Destination::physical(0xFF)), std::vec![1]);
        f.detach(1);
        assert!(f.resolve(None, &Destination::physical(0xFF)).is_empty());
        assert_eq!(
            f.deliver(&Destination::physical(1), Interrupt::fixed(0x30))
                .targets,
            0
        );
        assert_eq!(f.stats().dropped, 1);
    }
}
