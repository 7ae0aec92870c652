//! Plugins' shared data in Redis, on the `redis` crate's synchronous client: the store with
//! its connections, timeouts and up/down state ([`client`]) and how the servers are reached
//! (one server, Sentinel, Cluster, TLS: [`topology`]).

pub mod client;
pub mod topology;

pub use client::{store, RedisStore, Unavailable};

use std::sync::Arc;

use sluice_abi::Status;

use crate::config::shared_data::RedisSettings;
use crate::wasm::shared::SharedStore;

/// A Redis store as where plugins' shared data lives.
struct Shared(Arc<RedisStore>);

impl SharedStore for Shared {
    fn key_prefix(&self) -> &str {
        &self.0.settings().key_prefix
    }

    fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u32)>, Unavailable> {
        self.0.get(key)
    }

    fn set(&self, key: &[u8], value: &[u8], cas: u32) -> Result<Status, Unavailable> {
        self.0.set(key, value, cas)
    }
}

/// The shared-data store for `settings` (one Redis store per distinct settings).
pub fn shared_store(settings: &RedisSettings) -> Arc<dyn SharedStore> {
    Arc::new(Shared(store(settings)))
}
