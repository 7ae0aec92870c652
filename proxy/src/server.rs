//! Assembling and running the pingora server: one proxy service per listener, and background
//! services for the admin API, health checks, readiness and (for `sluice demo`) the demo
//! upstream. Also the shutdown sequence.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::admin::AdminService;
use crate::config::Config;
use crate::connections::Capped;
use crate::demo::DemoUpstream;
use crate::proxy::SluiceProxy;
use crate::state::State;
use crate::triggers::ReloadTriggers;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A plugin could not be fetched, or did not load or start.
    #[error("{0}")]
    Plugin(crate::runtime::BuildError),
    /// A socket could not be bound.
    #[error("{field}: cannot listen on {address}: {source}")]
    Bind {
        /// Config field of the address.
        field: String,
        /// The address.
        address: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("{field}: cannot load the TLS certificate or key: {message}")]
    Tls {
        /// Config field of the listener's TLS section.
        field: String,
        /// What pingora said.
        message: String,
    },
}

/// Extra things to run next to the proxy.
#[derive(Default)]
pub struct RunOptions {
    /// Overrides `server.threads`.
    pub threads: Option<usize>,
    /// Serve the demo upstream on this listener.
    pub demo_upstream: Option<TcpListener>,
}

fn bind(field: String, address: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(address).map_err(|source| StartError::Bind {
        field,
        address,
        source,
    })
}

/// Runs the proxy until a shutdown signal, then drains and returns.
pub fn run(config: Config, opts: RunOptions) -> Result<(), StartError> {
    // Bind what we can up front, so that an address in use is a clear error, not a panic.
    let admin_listener = bind("admin.address".into(), config.admin.address)?;
    for (i, l) in config.listeners.iter().enumerate() {
        drop(bind(format!("listeners[{i}].address"), l.address)?);
    }

    let mut conf = ServerConf {
        threads: opts.threads.unwrap_or(config.server.threads),
        grace_period_seconds: Some(config.server.grace_period_seconds),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: config.server.upstream_keepalive_pool_size,
        ..ServerConf::default()
    };
    conf.pid_file = std::env::temp_dir()
        .join(format!("sluice-{}.pid", std::process::id()))
        .display()
        .to_string();
    let grace = Duration::from_secs(config.server.grace_period_seconds);
    let listeners = config.listeners.clone();
    let threads = conf.threads;
    let state = State::new(config, threads).map_err(StartError::Plugin)?;

    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    for (i, l) in listeners.iter().enumerate() {
        let proxy = SluiceProxy::new(state.clone(), l);
        let mut app = pingora::proxy::http_proxy(&server.configuration, proxy);
        let mut options = HttpServerOptions::default();
        options.h2c = l.tls.is_none() && l.h2c;
        options.h2_idle_timeout = l.h2_idle_timeout;
        app.server_options = Some(options);
        let capped = Capped::new(
            app,
            l.max_connections.unwrap_or(usize::MAX),
            l.request_header_timeout,
            &l.name,
        );
        let mut svc = Service::new(format!("listener {}", l.name), capped);
        let addr = l.address.to_string();
        match &l.tls {
            None => svc.add_tcp(&addr),
            Some(tls) => {
                let field = format!("listeners[{i}].tls");
                let mut settings = TlsSettings::intermediate(
                    &tls.cert.display().to_string(),
                    &tls.key.display().to_string(),
                )
                .map_err(|e| StartError::Tls {
                    field: field.clone(),
                    message: e.to_string(),
                })?;
                if tls.h2 {
                    settings.enable_h2();
                }
                svc.add_tls_with_settings(&addr, None, settings);
            }
        }
        server.add_service(svc);
    }
    server.add_service(background_service(
        "admin",
        AdminService::new(state.clone(), admin_listener),
    ));
    server.add_service(background_service(
        "reload triggers",
        ReloadTriggers::new(state.clone()),
    ));
    server.add_service(background_service(
        "upstream health checks",
        HealthChecks(state.clone()),
    ));
    server.add_service(background_service(
        "readiness",
        Readiness {
            state: state.clone(),
            addrs: listeners.iter().map(|l| l.address).collect(),
        },
    ));
    if let Some(l) = opts.demo_upstream {
        server.add_service(background_service(
            "demo upstream",
            DemoUpstream::new(l, "demo"),
        ));
    }
    tracing::info!(
        listeners = ?listeners.iter().map(|l| l.address.to_string()).collect::<Vec<_>>(),
        admin = %state.current().config.admin.address,
        "sluice starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals { state, grace }),
    });
    Ok(())
}

/// Starts the health checks of the pools of the first config.
struct HealthChecks(Arc<State>);

#[async_trait]
impl BackgroundService for HealthChecks {
    async fn start(&self, _shutdown: ShutdownWatch) {
        for pool in &self.0.current().pools {
            crate::upstream::health::spawn(pool);
        }
        // Keep the runtime (and with it the check tasks) alive.
        std::future::pending::<()>().await;
    }
}

/// Marks the state ready once every listener accepts TCP connections.
struct Readiness {
    state: Arc<State>,
    addrs: Vec<SocketAddr>,
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let targets: Vec<SocketAddr> = self
            .addrs
            .iter()
            .map(|a| {
                let mut a = *a;
                if a.ip().is_unspecified() {
                    a.set_ip(if a.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                a
            })
            .collect();
        loop {
            let mut all_up = true;
            for a in &targets {
                let probe = tokio::time::timeout(
                    Duration::from_millis(200),
                    tokio::net::TcpStream::connect(a),
                );
                all_up &= matches!(probe.await, Ok(Ok(_)));
            }
            if all_up {
                self.state.set_ready();
                tracing::info!("all listeners accept connections");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// SIGTERM and SIGINT drain gracefully; SIGQUIT hands the sockets to a new process.
///
/// pingora sleeps for the whole grace period after a graceful signal; we end the process as
/// soon as no request is in flight (or the grace period is over), so a restart does not wait
/// for nothing.
struct Signals {
    state: Arc<State>,
    grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
        let kind = tokio::select! {
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::GracefulTerminate,
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
        };
        self.state.set_draining();
        if matches!(kind, ShutdownSignal::GracefulUpgrade) {
            tracing::info!("graceful upgrade: handing the listening sockets to the new process");
            return kind;
        }
        tracing::info!(
            in_flight = self.state.in_flight(),
            grace_period_s = self.grace.as_secs(),
            "shutting down: no new connections; finishing requests in flight"
        );
        let state = self.state.clone();
        let deadline = Instant::now() + self.grace;
        std::thread::spawn(move || {
            // Wait for the listeners to close, then for in-flight requests to end.
            std::thread::sleep(Duration::from_millis(100));
            let mut idle_since: Option<Instant> = None;
            while Instant::now() < deadline {
                if state.in_flight() == 0 {
                    let since = *idle_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= Duration::from_millis(100) {
                        tracing::info!("drained: exiting");
                        std::process::exit(0);
                    }
                } else {
                    idle_since = None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            tracing::warn!(
                in_flight = state.in_flight(),
                "grace period over: exiting with requests in flight"
            );
            std::process::exit(0);
        });
        kind
    }
}
