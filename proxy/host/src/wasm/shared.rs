//! Shared data (key → value with a compare-and-swap version) and shared queues.
//!
//! Both live outside any config: a namespace is the plugin's `vm_id` (by default its name),
//! shared by all VMs of the plugin and kept across reloads, so a rate-limit counter survives a
//! plugin swap. With a [`SharedStore`] (the proxy's `shared_data: { backend: redis }`) the keys
//! live in that store instead, shared by every replica; queues always stay in the process.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use sluice_abi::Status;

use super::events::RootInbox;

/// Why a store shared by replicas did not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("shared data in {store} at {at}: {message}")]
pub struct Unavailable {
    /// The kind of store (`Redis`).
    pub store: &'static str,
    /// Where it is (a URL without password).
    pub at: String,
    /// What went wrong.
    pub message: String,
}

/// A key-value store shared by replicas, that shared data may live in instead of the process.
/// Its `set` keeps the compare-and-swap rules of [`Namespace::set`], atomically per key.
pub trait SharedStore: Send + Sync + 'static {
    /// What goes before a namespace's name in its keys (the proxy's `key_prefix`).
    fn key_prefix(&self) -> &str;
    /// The value of `key` and its version, or `None`.
    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, Unavailable>;
    /// Sets `key` (`cas` as in [`Namespace::set`]).
    fn set(&self, key: &[u8], value: &[u8], cas: u32) -> Result<Status, Unavailable>;
}

/// Largest key.
pub const MAX_KEY_BYTES: u32 = 4096;
/// Largest value.
pub const MAX_VALUE_BYTES: u32 = 1 << 20;
/// Most keys per namespace.
pub const MAX_KEYS: usize = 100_000;
/// Most items waiting in one queue.
pub const MAX_QUEUE_ITEMS: usize = 10_000;

/// A value and its version.
type Entry = (Vec<u8>, u32);

/// The keys of one namespace.
pub enum Namespace {
    /// In this process.
    Memory(Memory),
    /// In a store shared by replicas, under the namespace's prefix.
    Store {
        /// `{key_prefix}{vm_id}:`, put before each key.
        prefix: Vec<u8>,
        /// The store.
        store: Arc<dyn SharedStore>,
    },
}

impl Default for Namespace {
    fn default() -> Self {
        Namespace::Memory(Memory::default())
    }
}

impl Namespace {
    /// The value and its version (CAS), or `None`; an error if the store could not answer.
    pub fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, Unavailable> {
        match self {
            Namespace::Memory(m) => Ok(m.get(key)),
            Namespace::Store { prefix, store } => store.get(&[prefix, key].concat()),
        }
    }

    /// Sets `key`. `cas` 0 is unconditional; otherwise it must equal the current version of an
    /// existing key (a new key is set whatever `cas` says, as Envoy does). An error if the
    /// store could not answer.
    pub fn set(&self, key: &[u8], value: &[u8], cas: u32) -> Result<Status, Unavailable> {
        match self {
            Namespace::Memory(m) => Ok(m.set(key, value, cas)),
            Namespace::Store { prefix, store } => store.set(&[prefix, key].concat(), value, cas),
        }
    }
}

/// The keys of one in-process namespace, spread over [`SHARDS`] locks by a hash of the key:
/// VMs on different threads touching different keys do not wait for each other.
pub struct Memory {
    shards: Box<[Shard]>,
    /// Keys in all shards (the [`MAX_KEYS`] cap).
    keys: std::sync::atomic::AtomicUsize,
}

/// Locks of one in-memory namespace.
const SHARDS: usize = 16;

/// One lock's keys.
type Shard = Mutex<HashMap<Vec<u8>, Entry>>;

impl Default for Memory {
    fn default() -> Self {
        Memory {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            keys: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl Memory {
    fn shard(&self, key: &[u8]) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Entry>> {
        let h = crate::hash::fnv1a64_update(crate::hash::FNV1A64_START, key);
        self.shards[(h % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.shard(key).get(key).cloned()
    }

    fn set(&self, key: &[u8], value: &[u8], cas: u32) -> Status {
        use std::sync::atomic::Ordering;
        let mut entries = self.shard(key);
        match entries.get_mut(key) {
            Some((v, version)) => {
                if cas != 0 && cas != *version {
                    return Status::CasMismatch;
                }
                v.clear();
                v.extend_from_slice(value);
                *version = version.wrapping_add(1).max(1);
                Status::Ok
            }
            None => {
                // Reserve the key's place under the cap before creating it.
                if self
                    .keys
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                        (n < MAX_KEYS).then_some(n + 1)
                    })
                    .is_err()
                {
                    return Status::BadArgument;
                }
                entries.insert(key.to_vec(), (value.to_vec(), 1));
                Status::Ok
            }
        }
    }
}

/// The namespace `vm_id` in `store`, or in the process (created on first use and kept).
pub fn namespace(vm_id: &str, store: Option<&Arc<dyn SharedStore>>) -> Arc<Namespace> {
    if let Some(store) = store {
        return Arc::new(Namespace::Store {
            prefix: format!("{}{vm_id}:", store.key_prefix()).into_bytes(),
            store: store.clone(),
        });
    }
    static ALL: OnceLock<Mutex<HashMap<String, Arc<Namespace>>>> = OnceLock::new();
    ALL.get_or_init(Default::default)
        .lock()
        .expect("not poisoned")
        .entry(vm_id.to_string())
        .or_default()
        .clone()
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    /// The VM whose root context registered the queue (told by `on_queue_ready`).
    owner: Weak<dyn RootInbox>,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, Vec<u8>), u32>,
    queues: HashMap<u32, Queue>,
    next: u32,
}

fn queues() -> &'static Mutex<Queues> {
    static Q: OnceLock<Mutex<Queues>> = OnceLock::new();
    Q.get_or_init(Default::default)
}

/// Registers (or re-registers, taking ownership) the queue `name` of `vm_id`.
pub fn register_queue(vm_id: &str, name: &[u8], owner: Weak<dyn RootInbox>) -> u32 {
    let mut q = queues().lock().expect("not poisoned");
    let key = (vm_id.to_string(), name.to_vec());
    if let Some(&id) = q.by_name.get(&key) {
        if let Some(queue) = q.queues.get_mut(&id) {
            queue.owner = owner;
        }
        return id;
    }
    q.next += 1;
    let id = q.next;
    q.by_name.insert(key, id);
    q.queues.insert(
        id,
        Queue {
            items: VecDeque::new(),
            owner,
        },
    );
    id
}

/// The id of queue `name` of `vm_id`.
pub fn resolve_queue(vm_id: &str, name: &[u8]) -> Option<u32> {
    let q = queues().lock().expect("not poisoned");
    q.by_name.get(&(vm_id.to_string(), name.to_vec())).copied()
}

/// Appends to queue `id` and tells its owner.
pub fn enqueue(id: u32, item: &[u8]) -> Status {
    let owner = {
        let mut q = queues().lock().expect("not poisoned");
        let Some(queue) = q.queues.get_mut(&id) else {
            return Status::NotFound;
        };
        if queue.items.len() >= MAX_QUEUE_ITEMS {
            return Status::BadArgument;
        }
        queue.items.push_back(item.to_vec());
        queue.owner.clone()
    };
    if let Some(vm) = owner.upgrade() {
        vm.queue_ready(id);
    }
    Status::Ok
}

/// Takes the oldest item of queue `id`.
pub fn dequeue(id: u32) -> Result<Vec<u8>, Status> {
    let mut q = queues().lock().expect("not poisoned");
    let queue = q.queues.get_mut(&id).ok_or(Status::NotFound)?;
    queue.items.pop_front().ok_or(Status::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_cap_counts_every_shard() {
        let m = Memory::default();
        for i in 0..MAX_KEYS {
            assert_eq!(m.set(format!("k{i}").as_bytes(), b"v", 0), Status::Ok);
        }
        assert_eq!(m.set(b"one more", b"v", 0), Status::BadArgument);
        // Existing keys still change; the shards hold every key.
        assert_eq!(m.set(b"k7", b"w", 1), Status::Ok);
        assert_eq!(m.get(b"k7"), Some((b"w".to_vec(), 2)));
        let held: usize = m.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert_eq!(held, MAX_KEYS);
        assert!(m.shards.iter().all(|s| !s.lock().unwrap().is_empty()));
    }

    #[test]
    fn cas_semantics() {
        let ns = namespace("shared-test-cas", None);
        cas_semantics_of(&ns);
        assert!(Arc::ptr_eq(&ns, &namespace("shared-test-cas", None)));
    }

    /// The compare-and-swap rules every backend keeps (`tests/shared_redis.rs` holds the
    /// Redis one to the same rules through the host calls).
    fn cas_semantics_of(ns: &Namespace) {
        assert!(ns.get(b"k").unwrap().is_none());
        assert_eq!(
            ns.set(b"k", b"1", 77).unwrap(),
            Status::Ok,
            "a new key ignores cas"
        );
        let (v, cas) = ns.get(b"k").unwrap().unwrap();
        assert_eq!((v.as_slice(), cas), (&b"1"[..], 1));
        assert_eq!(ns.set(b"k", b"2", cas + 1).unwrap(), Status::CasMismatch);
        assert_eq!(ns.set(b"k", b"2", cas).unwrap(), Status::Ok);
        assert_eq!(
            ns.set(b"k", b"3", cas).unwrap(),
            Status::CasMismatch,
            "stale version"
        );
        assert_eq!(
            ns.set(b"k", b"3", 0).unwrap(),
            Status::Ok,
            "0 is unconditional"
        );
        assert_eq!(ns.get(b"k").unwrap().unwrap(), (b"3".to_vec(), 3));
    }

    #[test]
    fn queues_in_order() {
        let id = register_queue("shared-test-q", b"q", Weak::<crate::wasm::vm::Vm>::new());
        assert_eq!(resolve_queue("shared-test-q", b"q"), Some(id));
        assert_eq!(resolve_queue("shared-test-q", b"other"), None);
        assert_eq!(dequeue(id), Err(Status::Empty));
        assert_eq!(enqueue(id, b"a"), Status::Ok);
        assert_eq!(enqueue(id, b"b"), Status::Ok);
        assert_eq!(dequeue(id).unwrap(), b"a");
        assert_eq!(dequeue(id).unwrap(), b"b");
        assert_eq!(enqueue(u32::MAX, b"x"), Status::NotFound);
        assert_eq!(
            register_queue("shared-test-q", b"q", Weak::<crate::wasm::vm::Vm>::new()),
            id
        );
    }
}
