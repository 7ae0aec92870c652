//! Captures what plugins log (target `sluice::plugin`), so that tests and `sluice plugin test`
//! can look at it.

use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// One line a plugin logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The plugin (its name in the host).
    pub plugin: String,
    /// `trace`, `debug`, `info`, `warn` or `error` (critical lines are `error`).
    pub level: String,
    /// The message.
    pub message: String,
}

fn lines() -> &'static Mutex<Vec<LogLine>> {
    static L: OnceLock<Mutex<Vec<LogLine>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

/// Most lines kept; older ones are dropped first.
const MAX_LINES: usize = 100_000;

/// The layer that records plugin log lines.
pub struct CaptureLayer;

#[derive(Default)]
struct Fields {
    plugin: String,
    message: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "plugin" => self.plugin = value.to_string(),
            "message" => self.message = value.to_string(),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "plugin" => {
                let _ = write!(self.plugin, "{value:?}");
                // Display-formatted strings arrive through Debug; strip the quotes.
                if self.plugin.starts_with('"')
                    && self.plugin.ends_with('"')
                    && self.plugin.len() >= 2
                {
                    self.plugin = self.plugin[1..self.plugin.len() - 1].to_string();
                }
            }
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for CaptureLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != crate::wasm::hostcalls::LOG_TARGET {
            return;
        }
        let mut f = Fields::default();
        event.record(&mut f);
        let mut l = lines().lock().unwrap_or_else(|p| p.into_inner());
        if l.len() >= MAX_LINES {
            l.drain(..MAX_LINES / 10);
        }
        l.push(LogLine {
            plugin: f.plugin,
            level: event.metadata().level().as_str().to_ascii_lowercase(),
            message: f.message,
        });
    }
}

/// Installs a global subscriber with the capture layer, unless one is installed already
/// (then lines are captured only if that subscriber includes [`CaptureLayer`]).
pub fn install() {
    let _ = tracing_subscriber::registry().with(CaptureLayer).try_init();
}

/// Forgets the lines `plugin` logged so far.
pub fn forget(plugin: &str) {
    lines()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|l| l.plugin != plugin);
}

/// The lines `plugin` logged so far.
pub fn lines_of(plugin: &str) -> Vec<LogLine> {
    lines()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|l| l.plugin == plugin)
        .cloned()
        .collect()
}
