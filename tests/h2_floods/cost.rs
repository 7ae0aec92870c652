// ---------------------------------------------------------------------------------------------
// What a flood costs the server and the other clients.

use super::*;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// CPU time (user + system) the process has used.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses): state is the 3rd field, utime
    // and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf only reads a configuration value.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / per_second)
}

#[derive(Debug)]
pub(super) struct Cost {
    /// How long the attack ran, and the server's CPU time meanwhile (serving the others
    /// included).
    pub(super) took: Duration,
    cpu: Duration,
    rss_before_kib: u64,
    rss_peak_kib: u64,
    rss_after_kib: u64,
    /// Requests of other clients answered 200 while the attack ran.
    pub(super) served: u32,
    pub(super) slowest: Duration,
}

impl Cost {
    /// Prints the figures and asserts the bounds.
    pub(super) fn check(&self, what: &str) {
        let growth = self.rss_peak_kib.saturating_sub(self.rss_before_kib);
        eprintln!(
            "{what}: server RSS {} KiB before, {} KiB peak (+{growth} KiB), {} KiB after; \
             server CPU {:?} in {:?}; {} requests of others served meanwhile, the slowest \
             in {:?}",
            self.rss_before_kib,
            self.rss_peak_kib,
            self.rss_after_kib,
            self.cpu,
            self.took,
            self.served,
            self.slowest
        );
        assert!(
            growth < RSS_BUDGET_KIB,
            "{what}: the server grew by {growth} KiB"
        );
        assert!(self.served >= 20, "{what}: only {} served", self.served);
        assert!(
            self.slowest < SLOWEST_ANSWER,
            "{what}: another client waited {:?}",
            self.slowest
        );
    }
}

/// Runs `attack` while sampling the server's RSS every 10 ms and while another client sends
/// requests one after the other, 10 ms apart (at least 20, until the attack is over); each
/// must get 200.
pub(super) async fn under_attack<T>(proxy: &Sluice, attack: impl Future<Output = T>) -> (T, Cost) {
    let pid = proxy.pid();
    let before = rss_kib(pid);
    let (started, cpu_before) = (Instant::now(), cpu_time(pid));
    let peak = Arc::new(AtomicU64::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (peak, stop) = (peak.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let others = tokio::spawn({
        let (url, stop) = (proxy.url("/during"), stop.clone());
        async move {
            let c = client();
            let (mut served, mut slowest) = (0u32, Duration::ZERO);
            while served < 20 || !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let r = c
                    .get(&url)
                    .send()
                    .await
                    .expect("a request beside the flood");
                assert_eq!(r.status(), 200, "a request beside the flood");
                r.bytes().await.unwrap();
                slowest = slowest.max(t.elapsed());
                served += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (served, slowest)
        }
    });
    let out = attack.await;
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let (served, slowest) = others.await.unwrap();
    peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
    let cost = Cost {
        took: started.elapsed(),
        cpu: cpu_time(pid) - cpu_before,
        rss_before_kib: before,
        rss_peak_kib: peak.load(Ordering::Relaxed),
        rss_after_kib: rss_kib(pid),
        served,
        slowest,
    };
    (out, cost)
}

pub(super) fn report(what: &str, f: &Flood) {
    eprintln!(
        "{what}: {} frames ({} bytes) written in {:?} ({:.0} frames/s), then {:?}",
        f.frames,
        f.bytes,
        f.took,
        f.rate(),
        f.end
    );
}

/// The connection was ended with GOAWAY ENHANCE_YOUR_CALM, reason `debug`, accepting streams up
/// to `last_stream`, and nothing sent after it got through.
pub(super) fn assert_calmed(what: &str, g: &GoAway, f: &Flood, debug: &str, last_stream: u32) {
    assert_eq!(g.code, ENHANCE_YOUR_CALM, "{what}: {g:?}");
    assert_eq!(g.debug, debug, "{what}: {g:?}");
    assert_eq!(g.last_stream, last_stream, "{what}: {g:?}");
    assert!(
        matches!(f.end, End::Ended(_)) && f.frames == 0,
        "{what}: {f:?}"
    );
}
