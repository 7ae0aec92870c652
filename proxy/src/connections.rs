//! A listener's connection cap (`max_connections`): pingora has none, so the listener's app
//! is wrapped in one that counts the connections being served and closes new ones at once
//! while the cap is reached.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use prometheus::IntCounter;

/// `inner`, serving at most `max` connections at a time.
pub struct Capped<A> {
    inner: Arc<A>,
    max: usize,
    live: AtomicUsize,
    refused: IntCounter,
}

impl<A> Capped<A> {
    /// Caps `inner` at `max` connections; refusals count in
    /// `sluice_connections_refused_total{listener}`.
    pub fn new(inner: A, max: usize, listener: &str) -> Self {
        Capped {
            inner: Arc::new(inner),
            max,
            live: AtomicUsize::new(0),
            refused: crate::metrics::metrics()
                .connections_refused
                .with_label_values(&[listener]),
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
        self.inner.process_new(session, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
