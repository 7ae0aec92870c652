//! `bare-pingora`: the benchmark floor for Sluice.
//!
//! The smallest useful pingora reverse proxy: one plain-HTTP listener and a
//! `ProxyHttp` implementation with nothing but `new_ctx` and `upstream_peer`,
//! forwarding every request to a single fixed upstream. `bench/run.sh` runs it
//! next to Sluice so that Sluice's CPU cost per request can be expressed as a
//! ratio to what pingora itself costs on the same machine in the same run.
//!
//! Usage: `bare-pingora --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT --threads N`
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::prelude::HttpPeer;
use pingora::proxy::{http_proxy_service, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;

// Sluice uses mimalloc too; keep the allocator identical for a fair comparison.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str =
    "usage: bare-pingora --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT [--threads N]";

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut listen = None;
    let mut upstream = None;
    let mut threads = 1usize;

    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        // Accept both `--flag value` and `--flag=value`.
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name.to_string(), value.to_string()),
            None => {
                let value = args
                    .next()
                    .ok_or_else(|| format!("missing value for {flag}"))?;
                (flag, value)
            }
        };
        match name.as_str() {
            "--listen" => {
                listen = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("invalid --listen {value:?}: {e}"))?,
                )
            }
            "--upstream" => {
                upstream = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("invalid --upstream {value:?}: {e}"))?,
                )
            }
            "--threads" => {
                threads = value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("invalid --threads {value:?}: want an integer >= 1"))?
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }

    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        upstream: upstream.ok_or("--upstream is required")?,
        threads,
    })
}

/// Proxies everything to one upstream address, plain HTTP, no TLS.
struct BareProxy {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for BareProxy {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            if msg.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("bare-pingora: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    // Per-port pid/upgrade paths so that several instances (or a concurrently
    // running Sluice, which uses pingora's defaults) never share files.
    let port = args.listen.port();
    let conf = ServerConf {
        threads: args.threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        pid_file: format!("/tmp/bare-pingora-{port}.pid"),
        upgrade_sock: format!("/tmp/bare-pingora-{port}-upgrade.sock"),
        ..ServerConf::default()
    };

    // Pingora builds its own tokio runtimes inside run_forever(), so this must
    // not run inside #[tokio::main].
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut service = http_proxy_service(
        &server.configuration,
        BareProxy {
            upstream: args.upstream,
        },
    );
    service.add_tcp(&args.listen.to_string());
    server.add_service(service);

    eprintln!(
        "bare-pingora: listening on {} -> upstream {} ({} thread(s))",
        args.listen, args.upstream, args.threads
    );
    server.run_forever()
}
