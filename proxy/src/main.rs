//! The `sluice` command line.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use sluice::config::Config;
use sluice::logging::{self, LogFormat};
use sluice::server::{self, RunOptions};

mod probe;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sluice: a reverse proxy whose request filters are sandboxed WebAssembly plugins.
#[derive(Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Log filter, RUST_LOG-style (e.g. `warn`, `info,sluice::access=off`); overrides RUST_LOG.
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// Config file (YAML).
        #[arg(short, long)]
        config: PathBuf,
        /// Worker threads per listener (overrides `server.threads`).
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Validate a config file: exit 0 if it is valid, else print every error and exit 1.
    Check {
        /// Config file (YAML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print the JSON Schema (draft 2020-12) of the config file, for editors and CI
    /// (`docs/sluice.schema.json` holds the same).
    Schema,
    /// Ask a running sluice to reload its config file (POST /reload on its admin API); print
    /// the result and exit 1 if the reload was refused.
    Reload {
        /// Address of its admin API.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// How long to wait for the reload, seconds.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// File holding the admin token (`admin.token_file` of the running sluice).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Act on a plugin's rollout in a running sluice: `status` shows it (state, share, what
    /// each version did), `promote` makes the candidate serve every request, `abort` removes
    /// it. Exit 1 if the plugin has no rollout or it has already ended.
    Rollout {
        /// `status`, `promote` or `abort`.
        #[arg(value_parser = ["status", "promote", "abort"])]
        action: String,
        /// The plugin's name.
        plugin: String,
        /// Address of its admin API.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// File holding the admin token (`admin.token_file` of the running sluice).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Health check for containers: GET PATH on a sluice's admin API; exit 0 if it answers 200,
    /// else print why and exit 1 (no curl needed in the image).
    Probe {
        /// Address of its admin API.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Path to request.
        #[arg(long, default_value = "/ready")]
        path: String,
        /// Time allowed for the whole request, milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// Run the demo upstream and the proxy in front of it, on a built-in config.
    Demo {
        /// Address of the proxy.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Address of the admin API.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Address of the demo upstream.
        #[arg(long, default_value = "127.0.0.1:3000")]
        upstream: String,
        /// Directory holding the auth, rate-limit and headers plugins (`sluice_plugin_*.wasm`),
        /// run on the demo route; `make demo` builds them and passes this.
        #[arg(long)]
        plugins: Option<PathBuf>,
    },
    /// Plugin authoring: test a plugin without a proxy, or start a new one.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Run only the demo upstream (an HTTP echo server), e.g. as a test backend.
    Upstream {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        address: String,
        /// Name it reports in every answer.
        #[arg(long, default_value = "demo")]
        name: String,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Run a plugin's .wasm in the real host against the cases of a YAML file; print a report
    /// and exit 1 if a case fails.
    Test {
        /// The plugin (.wasm).
        plugin: PathBuf,
        /// Its options (YAML): a `plugins:` entry without `path` (config, expose, limits, …).
        #[arg(long)]
        config: Option<PathBuf>,
        /// The cases (YAML).
        #[arg(long, required_unless_present = "replay", conflicts_with = "replay")]
        case: Option<PathBuf>,
        /// A capture (`POST /plugins/NAME/capture` of a running sluice): run as cases, or with
        /// `--against`, replayed to both plugins to report where they decide otherwise.
        #[arg(long)]
        replay: Option<PathBuf>,
        /// The other version (.wasm) to compare with.
        #[arg(long, requires = "replay")]
        against: Option<PathBuf>,
        /// Options of the `--against` version (default: `--config`).
        #[arg(long, requires = "against")]
        against_config: Option<PathBuf>,
    },
    /// Create a plugin crate NAME (Cargo.toml, src/lib.rs, plugin.yaml, cases.yaml) that
    /// builds and passes its test as generated.
    New {
        /// Crate name.
        name: String,
        /// Directory to create it in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path of the Sluice SDK (`sdk-guest` of a Sluice checkout); default: the one this
        /// sluice was built from.
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    // -- plugin sources and signatures (keygen, sign, push) --
    /// Create an ed25519 key pair for signing plugins: write the private key (base64 PKCS#8,
    /// mode 0600) to --out and print the public key (base64) for `signature.public_key`.
    Keygen {
        /// Private key file to create (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a plugin: write FILE.sig (base64 ed25519 signature of FILE's bytes).
    Sign {
        /// The plugin (.wasm).
        file: PathBuf,
        /// Private key file (from `sluice plugin keygen`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Push a plugin to an OCI registry as oci://REGISTRY/REPO:TAG; prints
    /// REGISTRY/REPO:TAG@sha256:DIGEST to pin in `oci:`. Credentials: SLUICE_OCI_USERNAME and
    /// SLUICE_OCI_PASSWORD (or SLUICE_OCI_TOKEN), else the registry's entry in a Docker
    /// config.json (--credentials-file, else $DOCKER_CONFIG/config.json, else
    /// ~/.docker/config.json); plain HTTP for loopback registries and those in
    /// SLUICE_OCI_INSECURE.
    Push {
        /// The plugin (.wasm).
        file: PathBuf,
        /// Target, oci://REGISTRY/REPO:TAG.
        target: String,
        /// `wasm`: a layer holding the .wasm itself; `tar`: a tar+gzip layer holding plugin.wasm.
        #[arg(long, value_enum, default_value = "wasm")]
        layout: sluice::source::oci::Layout,
        /// Also push a signature layer, signed with this private key file.
        #[arg(long)]
        sign: Option<PathBuf>,
        /// A Docker config.json with registry credentials (`auths`).
        #[arg(long)]
        credentials_file: Option<PathBuf>,
    },
    // -- end of plugin sources and signatures --
}

fn plugin_command(command: PluginCommand) -> ExitCode {
    use sluice::testkit::{cases, scaffold, Kit};
    match command {
        PluginCommand::Test {
            plugin,
            config,
            case,
            replay,
            against,
            against_config,
        } => {
            let case = case.or(replay).expect("clap requires --case or --replay");
            if let Some(old) = against {
                let old_config = against_config.as_deref().or(config.as_deref());
                return replay_against((&plugin, config.as_deref()), (&old, old_config), &case);
            }
            let prepared = cases::load_options(config.as_deref())
                .map_err(|e| e.to_string())
                .and_then(|o| Ok((o, cases::load_cases(&case).map_err(|e| e.to_string())?)))
                .and_then(|(o, c)| Ok((Kit::load(&plugin, o).map_err(|e| e.to_string())?, c)));
            let (kit, cases_file) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    eprintln!("sluice plugin test: {e}");
                    return ExitCode::FAILURE;
                }
            };
            println!("{} with {}", plugin.display(), case.display());
            let (report, failed) = cases::run(&kit, &cases_file);
            print!("{report}");
            if failed > 0 {
                let logs = kit.logs();
                if !logs.is_empty() {
                    println!("plugin log:");
                    for l in logs {
                        println!("  {:5} {}", l.level, l.message);
                    }
                }
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        PluginCommand::New { name, dir, sdk } => {
            let sdk = sdk.unwrap_or_else(|| PathBuf::from(scaffold::BUILT_SDK));
            match scaffold::new_plugin(&dir, &name, &sdk) {
                Ok(path) => {
                    let lib = name.replace('-', "_");
                    println!(
                        "created {}
next:
  cd {}
  cargo build --release --target wasm32-wasip1
  sluice plugin test target/wasm32-wasip1/release/{lib}.wasm --config plugin.yaml --case cases.yaml",
                        path.display(),
                        path.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice plugin new: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        // -- plugin sources and signatures (keygen, sign, push) --
        PluginCommand::Keygen { out } => match sluice::source::signature::keygen(&out) {
            Ok(public) => {
                eprintln!(
                    "wrote the private key to {} (keep it secret); the public key:",
                    out.display()
                );
                println!("{}", public.public_key_base64());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice plugin keygen: {e}");
                ExitCode::FAILURE
            }
        },
        PluginCommand::Sign { file, key } => {
            match sluice::source::signature::sign_file(&file, &key) {
                Ok(sig) => {
                    println!("{}", sig.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice plugin sign: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        PluginCommand::Push {
            file,
            target,
            layout,
            sign,
            credentials_file,
        } => match sluice::source::push::push_file(
            &file,
            &target,
            layout,
            sign.as_deref(),
            credentials_file.as_deref(),
        ) {
            Ok(pushed) => {
                println!("{pushed}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice plugin push: {e}");
                ExitCode::FAILURE
            }
        },
        // -- end of plugin sources and signatures --
    }
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|errors| {
        eprintln!(
            "{}: {} error{} in the config:",
            path.display(),
            errors.0.len(),
            if errors.0.len() == 1 { "" } else { "s" }
        );
        for e in &errors.0 {
            eprintln!("  {e}");
        }
        ExitCode::FAILURE
    })
}

fn run(config: Config, opts: RunOptions) -> ExitCode {
    match server::run(config, opts) {
        // pingora leaves runtimes behind; end the process here.
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Plugin { .. } = cli.command {
        // Plugin logs are captured for the report, not printed.
        sluice::testkit::capture::install();
    } else if let Err(e) = logging::init(cli.log_format, cli.log_level.as_deref()) {
        eprintln!("sluice: {e}");
        return ExitCode::FAILURE;
    }
    match cli.command {
        Command::Schema => {
            print!("{}", sluice::config::schema::config_schema_text());
            ExitCode::SUCCESS
        }
        Command::Check { config } => match load(&config) {
            Ok(c) => {
                let summary = (
                    c.listeners.len(),
                    c.upstreams.len(),
                    c.routes.len(),
                    c.plugins.len(),
                );
                // Load every plugin for real: compile, start its VM, on_vm_start, on_configure.
                if let Err(e) = sluice::runtime::Runtime::build_blocking(c, 1) {
                    // One line per error (a plugin's config can break its schema many times).
                    for line in e.to_string().lines() {
                        eprintln!("{}: {line}", config.display());
                    }
                    return ExitCode::FAILURE;
                }
                let (l, u, r, p) = summary;
                println!(
                    "{}: OK ({} listener{}, {} upstream{}, {} route{}, {} plugin{})",
                    config.display(),
                    l,
                    if l == 1 { "" } else { "s" },
                    u,
                    if u == 1 { "" } else { "s" },
                    r,
                    if r == 1 { "" } else { "s" },
                    p,
                    if p == 1 { "" } else { "s" },
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Run { config, threads } => match load(&config) {
            Ok(c) => run(
                c,
                RunOptions {
                    threads,
                    ..RunOptions::default()
                },
            ),
            Err(code) => code,
        },
        Command::Demo {
            listen,
            admin,
            upstream,
            plugins,
        } => demo(&listen, &admin, &upstream, plugins.as_deref()),
        Command::Plugin { command } => plugin_command(command),
        Command::Probe {
            admin,
            path,
            timeout_ms,
        } => match probe::probe(&admin, &path, std::time::Duration::from_millis(timeout_ms)) {
            Ok(status) => {
                println!("{status}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice probe: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Reload {
            admin,
            timeout,
            token_file,
        } => {
            let Ok(token) = token_of(token_file.as_deref(), "reload") else {
                return ExitCode::FAILURE;
            };
            let timeout = std::time::Duration::from_secs(timeout);
            match sluice::triggers::request_reload(
                &admin,
                token.as_ref().map(|t| t.expose()),
                timeout,
            ) {
                Ok(body) => {
                    print!("{body}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sluice reload: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Rollout {
            action,
            plugin,
            admin,
            token_file,
        } => {
            let Ok(token) = token_of(token_file.as_deref(), "rollout") else {
                return ExitCode::FAILURE;
            };
            let (method, path) = match action.as_str() {
                "status" => ("GET", format!("/plugins/{plugin}/rollout")),
                other => ("POST", format!("/plugins/{plugin}/rollout/{other}")),
            };
            match sluice::admin_client::call(
                &admin,
                method,
                &path,
                token.as_ref().map(|t| t.expose()),
                std::time::Duration::from_secs(10),
            ) {
                Ok(a) if a.status == 200 => {
                    print!("{}", a.body);
                    ExitCode::SUCCESS
                }
                Ok(a) => {
                    eprint!(
                        "sluice rollout {action} {plugin}: {}: {}",
                        a.status_line, a.body
                    );
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("sluice rollout {action} {plugin}: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Upstream { address, name } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async {
                match tokio::net::TcpListener::bind(&address).await {
                    Ok(l) => {
                        tracing::info!(%address, "demo upstream listening");
                        sluice::demo::upstream::serve(l, &name).await;
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("sluice upstream: cannot listen on {address}: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

/// `sluice plugin test NEW --replay CAPTURE --against OLD`.
/// The admin token in `--token-file` (if given) of `sluice COMMAND`; an unreadable file is
/// reported and is an error.
fn token_of(
    file: Option<&std::path::Path>,
    command: &str,
) -> Result<Option<sluice::config::AdminToken>, ()> {
    match file.map(sluice::config::read_token_file) {
        None => Ok(None),
        Some(Ok(t)) => Ok(Some(t)),
        Some(Err(e)) => {
            eprintln!("sluice {command}: --token-file {e}");
            Err(())
        }
    }
}

/// Each plugin comes with its options file.
fn replay_against(
    (new, new_config): (&std::path::Path, Option<&std::path::Path>),
    (old, old_config): (&std::path::Path, Option<&std::path::Path>),
    capture: &std::path::Path,
) -> ExitCode {
    use sluice::testkit::{cases, Kit};
    let prepared = (|| -> Result<_, String> {
        let cases = cases::load_cases(capture).map_err(|e| e.to_string())?;
        let kit = |p: &std::path::Path, config| -> Result<Kit, String> {
            let options = cases::load_options(config).map_err(|e| e.to_string())?;
            Kit::load(p, options).map_err(|e| e.to_string())
        };
        Ok((kit(new, new_config)?, kit(old, old_config)?, cases))
    })();
    let (new_kit, old_kit, cases_file) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sluice plugin test: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{} against {} on {}",
        new.display(),
        old.display(),
        capture.display()
    );
    let (report, differ) = cases::compare(&new_kit, &old_kit, &cases_file);
    print!("{report}");
    if differ > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn demo(listen: &str, admin: &str, upstream: &str, plugins: Option<&std::path::Path>) -> ExitCode {
    let upstream_listener = match std::net::TcpListener::bind(upstream) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sluice demo: cannot listen on {upstream} for the demo upstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The auth plugin's key digest and JWT key come from files, as from a mounted Secret.
    let secrets = std::env::temp_dir().join(format!("sluice-demo-{}", std::process::id()));
    if plugins.is_some() {
        if let Err(e) = sluice::demo::write_secrets(&secrets) {
            eprintln!(
                "sluice demo: cannot write the demo's secret files to {}: {e}",
                secrets.display()
            );
            return ExitCode::FAILURE;
        }
    }
    let yaml = sluice::demo::demo_config(listen, admin, upstream, plugins, &secrets);
    let config = match Config::from_yaml(&yaml, std::path::Path::new(".")) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("sluice demo: the demo config is invalid:\n{errors}");
            if plugins.is_some() {
                eprintln!("(build the example plugin with `make demo`, which passes --plugins)");
            }
            return ExitCode::FAILURE;
        }
    };
    let key = sluice::demo::API_KEY;
    let token = sluice::demo::TOKEN;
    println!(
        "\nSluice demo: proxy on http://{listen}, demo upstream on http://{upstream}, admin on http://{admin}\n\
         Try:\n  \
         curl -s http://{listen}/hello                       # the upstream echoes what it got, incl. x-forwarded-for and x-request-id\n  \
         curl -s -X POST --data 'hi there' http://{listen}/echo\n  \
         curl -s 'http://{listen}/slow?delay_ms=500'\n  \
         curl -s --http2-prior-knowledge http://{listen}/h2  # HTTP/2 without TLS\n  \
         curl -s http://{admin}/ready\n  \
         curl -s http://{admin}/metrics | grep sluice_\n  \
         curl -s http://{admin}/config\n"
    );
    if plugins.is_some() {
        println!(
            "The demo route runs the plugins auth, rate-limit and headers:\n  \
             curl -si http://{listen}/hello                              # auth: 401 and WWW-Authenticate, no credential\n  \
             curl -s -H 'x-api-key: {key}' http://{listen}/hello          # auth: an API key; the upstream sees x-auth-key-id: demo\n  \
             curl -s -H 'authorization: Bearer {token}' http://{listen}/hello\n                                                            # auth: a JWT (HS256); the upstream sees x-user: demo-user\n  \
             curl -si http://{listen}/public/info                        # auth: an allow-listed path needs no credential\n  \
             curl -si -H 'x-api-key: {key}' http://{listen}/hello | grep -i 'ratelimit\\|x-served-by'\n                                                            # rate-limit and headers: RateLimit-*, x-served-by\n  \
             for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' -H 'x-api-key: {key}' http://{listen}/hello; done; echo\n                                                            # rate-limit: 5 requests per 10 s per client, then 429\n\
             The auth plugin's key digest and JWT key are read from files in {} (`${{file:…}}`\n\
             references, as from a mounted Secret); /config shows the references, not the values.\n",
            secrets.display()
        );
    } else {
        println!(
            "(`make demo` runs it with the plugins auth, rate-limit and headers on the route.)\n"
        );
    }
    println!("Ctrl-C stops it.\n");
    run(
        config,
        RunOptions {
            threads: None,
            demo_upstream: Some(upstream_listener),
        },
    )
}
