//! The ticker thread: calls `on_tick` on each VM's root context at the period the plugin set
//! (`proxy_set_tick_period_milliseconds`), and delivers root-context events (callout results,
//! queue notifications). VMs register themselves; dropped VMs fall out.

use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// What the thread serves: a VM's root context.
pub trait Ticked: Send + Sync {
    /// The tick period asked for, ms (0: none).
    fn period_ms(&self) -> u32;
    /// Whether it failed (then it gets nothing more).
    fn failed(&self) -> bool;
    /// Delivers its pending root-context events.
    fn deliver_events(self: Arc<Self>);
    /// Calls `on_tick`.
    fn tick_now(self: Arc<Self>);
}

/// Shortest tick period honoured.
pub const MIN_TICK: Duration = Duration::from_millis(1);
/// Longest sleep of the thread when nothing is due.
const IDLE: Duration = Duration::from_millis(50);

enum Msg {
    Register(Weak<dyn Ticked>),
    Wake,
}

fn sender() -> &'static Mutex<Sender<Msg>> {
    static TX: OnceLock<Mutex<Sender<Msg>>> = OnceLock::new();
    TX.get_or_init(|| {
        let (tx, rx) = channel::<Msg>();
        std::thread::Builder::new()
            .name("sluice-ticker".into())
            .spawn(move || run(rx))
            .expect("cannot start the plugin ticker thread");
        Mutex::new(tx)
    })
}

/// Adds a VM (again: harmless).
pub fn register(vm: Weak<dyn Ticked>) {
    let _ = sender()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(Msg::Register(vm));
}

/// Wakes the thread to deliver root events now.
pub fn wake() {
    let _ = sender()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send(Msg::Wake);
}

fn run(rx: std::sync::mpsc::Receiver<Msg>) {
    // (vm, next tick due)
    let mut vms: Vec<(Weak<dyn Ticked>, Instant)> = Vec::new();
    loop {
        let now = Instant::now();
        let next = vms
            .iter()
            .filter(|(vm, _)| vm.upgrade().is_some_and(|v| v.period_ms() > 0))
            .map(|(_, due)| *due)
            .min()
            .unwrap_or(now + IDLE);
        let wait = next.saturating_duration_since(now).min(IDLE);
        match rx.recv_timeout(wait) {
            Ok(Msg::Register(vm)) => {
                if !vms.iter().any(|(v, _)| v.ptr_eq(&vm)) {
                    let period = vm.upgrade().map_or(0, |v| v.period_ms());
                    vms.push((vm, Instant::now() + Duration::from_millis(period.into())));
                }
            }
            Ok(Msg::Wake) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        vms.retain(|(vm, _)| vm.strong_count() > 0);
        for (weak, due) in vms.iter_mut() {
            let Some(vm) = weak.upgrade() else { continue };
            if vm.failed() {
                continue;
            }
            vm.clone().deliver_events();
            let period = vm.period_ms();
            if period > 0 && now >= *due {
                vm.tick_now();
                let period = Duration::from_millis(period.into()).max(MIN_TICK);
                *due = (*due + period).max(now + MIN_TICK / 2);
            } else if period == 0 {
                *due = now + IDLE;
            }
        }
    }
}
