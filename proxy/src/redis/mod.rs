//! A small synchronous Redis client for plugins' shared data: the protocol ([`resp`]) and the
//! store with its connections, timeouts and up/down state ([`client`]).

pub mod client;
pub mod resp;

pub use client::{store, RedisStore, Unavailable};
