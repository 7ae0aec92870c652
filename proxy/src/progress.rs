//! What loading plugins is doing, for the people waiting on it: `sluice check`, `sluice run`
//! at start-up and every reload.
//!
//! Each plugin's steps are logged as they end, with the time each took: `plugin fetched`
//! (origin, bytes, from the cache or not), `plugin verified` (what was checked: the pinned
//! sha256, the signature), `plugin compiled` (or found compiled), `plugin started` (VMs,
//! `on_vm_start` and `on_configure` included). On a terminal (`sluice check`, and `sluice run`
//! until it serves), a status line on stderr also shows what is under way and for how long, so
//! a long download or compile is visibly moving; it is redrawn a few times a second and
//! cleared when loading ends.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A step of loading a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading or downloading its binary.
    Fetch,
    /// Compiling it.
    Compile,
    /// Starting its VMs (`on_vm_start`, `on_configure`).
    Start,
}

impl Step {
    fn doing(self) -> &'static str {
        match self {
            Step::Fetch => "fetching",
            Step::Compile => "compiling",
            Step::Start => "starting",
        }
    }
}

/// Whether the status line is drawn.
static TERMINAL: AtomicBool = AtomicBool::new(false);

#[derive(Default)]
struct Board {
    /// Plugin → its step under way and since when.
    doing: BTreeMap<String, (Step, Instant)>,
    /// Steps ended since the board was shown.
    ended: usize,
    /// Whether something is drawn on the line now.
    drawn: bool,
}

static BOARD: OnceLock<Mutex<Board>> = OnceLock::new();

/// The board, made (with its drawing thread) on first use: only on a terminal.
fn board() -> &'static Mutex<Board> {
    BOARD.get_or_init(|| {
        std::thread::Builder::new()
            .name("sluice-progress".into())
            .spawn(draw_loop)
            .ok();
        Mutex::new(Board::default())
    })
}

/// Draws the status line on stderr from now on, if stderr is a terminal. Returns whether it
/// does.
pub fn show_on_terminal() -> bool {
    use std::io::IsTerminal;
    let on = std::io::stderr().is_terminal();
    TERMINAL.store(on, Ordering::Relaxed);
    if on {
        let _ = board();
    }
    on
}

/// Stops drawing the status line and clears it.
pub fn stop_showing() {
    TERMINAL.store(false, Ordering::Relaxed);
    let Some(board) = BOARD.get() else { return };
    if let Ok(mut b) = board.lock() {
        if b.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            b.drawn = false;
        }
    }
}

/// `plugin` begins `step`.
pub fn begin(plugin: &str, step: Step) {
    if !TERMINAL.load(Ordering::Relaxed) {
        return;
    }
    if let Ok(mut b) = board().lock() {
        b.doing.insert(plugin.to_string(), (step, Instant::now()));
        draw(&mut b);
    }
}

/// `plugin` ended its step (successfully or not).
pub fn end(plugin: &str) {
    if !TERMINAL.load(Ordering::Relaxed) {
        return;
    }
    if let Ok(mut b) = board().lock() {
        if b.doing.remove(plugin).is_some() {
            b.ended += 1;
        }
    }
}

/// Milliseconds, to the microsecond, for log fields.
pub fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn draw_loop() {
    loop {
        std::thread::sleep(Duration::from_millis(200));
        if !TERMINAL.load(Ordering::Relaxed) {
            continue;
        }
        let Ok(mut b) = board().lock() else { return };
        draw(&mut b);
    }
}

/// Redraws the status line (nothing while no step is under way).
fn draw(b: &mut Board) {
    if b.doing.is_empty() {
        return;
    }
    let now = Instant::now();
    let parts: Vec<String> = b
        .doing
        .iter()
        .map(|(name, (step, since))| {
            format!(
                "{} {name} ({:.1} s)",
                step.doing(),
                now.duration_since(*since).as_secs_f64()
            )
        })
        .collect();
    let line = format!("plugins: {} step(s) done; {}", b.ended, parts.join(", "));
    let shown: String = line.chars().take(100).collect();
    let mut err = std::io::stderr().lock();
    // The cursor is left at the start of the line: a log line written next overwrites it.
    let _ = write!(err, "\r\x1b[2K{shown}\r");
    let _ = err.flush();
    b.drawn = true;
}
