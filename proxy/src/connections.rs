//! What a listener does with a connection before pingora reads from it: the connection cap
//! (`max_connections`; pingora has none, so the listener's app is wrapped in one that counts
//! the connections being served and closes new ones at once while the cap is reached), and the
//! request-head guard of [`crate::request_head`] around the stream.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;

use crate::request_head::{HeadCounters, HeadGuard};

/// `inner`, serving at most `max` connections at a time, each through a [`HeadGuard`].
pub struct Capped<A> {
    inner: Arc<A>,
    max: usize,
    live: AtomicUsize,
    refused: IntCounter,
    head_timeout: Duration,
    head_counters: HeadCounters,
}

impl<A> Capped<A> {
    /// Caps `inner` at `max` connections (refusals count in
    /// `sluice_connections_refused_total{listener}`) and gives each request head
    /// `head_timeout` to arrive.
    pub fn new(inner: A, max: usize, head_timeout: Duration, listener: &str) -> Self {
        Capped {
            inner: Arc::new(inner),
            max,
            live: AtomicUsize::new(0),
            refused: crate::metrics::metrics()
                .connections_refused
                .with_label_values(&[listener]),
            head_timeout,
            head_counters: HeadCounters::for_listener(listener),
        }
    }
}

/// Decrements the count when the connection's turn ends, however it ends.
struct Live<'a>(&'a AtomicUsize);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Capped<A> {
    async fn process_new(
        self: &Arc<Self>,
        session: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if self.live.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.live.fetch_sub(1, Ordering::AcqRel);
            self.refused.inc();
            // Dropping the stream closes the connection before anything is read from it.
            return None;
        }
        let _live = Live(&self.live);
        let session = HeadGuard::wrap(session, self.head_timeout, self.head_counters.clone());
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
