//! The one wasmtime [`Engine`] of the process, and compiled plugin modules.
//!
//! - Fuel and epoch interruption are on: every guest call gets a fuel budget and a wall-clock
//!   deadline (a ticker thread advances the epoch every [`EPOCH_TICK`]).
//! - Instances come from the pooling allocator (fast instantiation, copy-on-write memory
//!   images); if its address-space reservation fails, the engine falls back to on-demand
//!   allocation and says so in the log.
//! - Compiled modules are kept in memory by the sha256 of their bytes (two plugins with the
//!   same binary, or a reload that keeps it, compile once), and on disk through wasmtime's
//!   own compiled-code cache, so a restart does not recompile. Loading native code from disk
//!   is done by wasmtime, which checks its own headers and version, not by host code.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{
    Cache, CacheConfig, Config, Engine, InstanceAllocationStrategy, Module, OptLevel,
    PoolingAllocationConfig,
};

/// How often the epoch advances: the granularity of per-call deadlines.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Directory of the on-disk compiled-code cache; `None` disables it.
    pub cache_dir: Option<PathBuf>,
    /// Instances (and linear memories) the pooling allocator keeps ready: one per VM.
    pub pooled_instances: u32,
    /// Map memory per instantiation instead of pooling (no slot limit).
    pub on_demand: bool,
    /// Largest linear memory any plugin may have; per-plugin caps are lower.
    pub max_memory_bytes: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            cache_dir: None,
            pooled_instances: 256,
            on_demand: false,
            max_memory_bytes: 256 << 20,
        }
    }
}

/// Why the engine or a module could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime refused the configuration.
    #[error("cannot set up the wasm engine: {0}")]
    Setup(String),
    /// The compiled-code cache directory is unusable.
    #[error("cannot use {dir} for the compiled-code cache: {message}")]
    Cache {
        /// The directory.
        dir: String,
        /// What went wrong.
        message: String,
    },
    /// The bytes are not a valid wasm module (or WAT text).
    #[error("not a valid wasm module: {0}")]
    Compile(String),
}

/// The process's wasm engine.
pub struct WasmEngine {
    engine: Engine,
    cache: Option<Cache>,
    pooling: bool,
    modules: Mutex<HashMap<[u8; 32], Module>>,
    stop: Arc<AtomicBool>,
}

fn base_config(cache: Option<Cache>) -> Config {
    let mut c = Config::new();
    c.consume_fuel(true)
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .memory_init_cow(true)
        .cache(cache);
    c
}

impl WasmEngine {
    /// Builds the engine and starts its epoch ticker.
    pub fn new(opts: &EngineOptions) -> Result<WasmEngine, EngineError> {
        let cache = match &opts.cache_dir {
            None => None,
            Some(dir) => {
                let cache_err = |message: String| EngineError::Cache {
                    dir: dir.display().to_string(),
                    message,
                };
                std::fs::create_dir_all(dir).map_err(|e| cache_err(e.to_string()))?;
                let mut cc = CacheConfig::new();
                cc.with_directory(dir);
                Some(Cache::new(cc).map_err(|e| cache_err(format!("{e:#}")))?)
            }
        };
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(opts.pooled_instances)
            .total_memories(opts.pooled_instances)
            .total_tables(opts.pooled_instances)
            .max_memory_size(usize::try_from(opts.max_memory_bytes).unwrap_or(usize::MAX));
        let mut pooled = base_config(cache.clone());
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let (engine, pooling) = match Engine::new(&pooled) {
            _ if opts.on_demand => {
                let e = Engine::new(&base_config(cache.clone()))
                    .map_err(|e| EngineError::Setup(format!("{e:#}")))?;
                (e, false)
            }
            Ok(e) => (e, true),
            Err(e) => {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    "pooling allocator unavailable; instantiating plugins on demand (slower)"
                );
                let e = Engine::new(&base_config(cache.clone()))
                    .map_err(|e| EngineError::Setup(format!("{e:#}")))?;
                (e, false)
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        {
            let (engine, stop) = (engine.clone(), stop.clone());
            std::thread::Builder::new()
                .name("sluice-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| EngineError::Setup(format!("cannot start the epoch ticker: {e}")))?;
        }
        Ok(WasmEngine {
            engine,
            cache,
            pooling,
            modules: Mutex::new(HashMap::new()),
            stop,
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Whether instances come from the pooling allocator.
    pub fn is_pooling(&self) -> bool {
        self.pooling
    }

    /// The on-disk cache, if enabled.
    pub fn disk_cache(&self) -> Option<&Cache> {
        self.cache.as_ref()
    }

    /// Compiles `bytes` (wasm, or WAT text), or returns the module compiled earlier from the
    /// same bytes. Also returns the bytes' sha256.
    pub fn compile(&self, bytes: &[u8]) -> Result<(Module, [u8; 32]), EngineError> {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(m) = self.modules.lock().expect("not poisoned").get(&digest) {
            return Ok((m.clone(), digest));
        }
        let module =
            Module::new(&self.engine, bytes).map_err(|e| EngineError::Compile(format!("{e:#}")))?;
        self.modules
            .lock()
            .expect("not poisoned")
            .insert(digest, module.clone());
        Ok((module, digest))
    }

    /// The module compiled earlier from bytes of this sha256, if it is still kept.
    pub fn compiled(&self, digest: &[u8; 32]) -> Option<Module> {
        self.modules
            .lock()
            .expect("not poisoned")
            .get(digest)
            .cloned()
    }

    /// Forgets the compiled modules whose sha256 is not in `keep`.
    pub fn retain_modules(&self, keep: &[[u8; 32]]) {
        self.modules
            .lock()
            .expect("not poisoned")
            .retain(|digest, _| keep.contains(digest));
    }

    /// Modules compiled and kept in memory.
    pub fn compiled_modules(&self) -> usize {
        self.modules.lock().expect("not poisoned").len()
    }
}

impl Drop for WasmEngine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Lowercase hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 32 bytes a 64-digit hex sha256 stands for, or `None` if it is not one.
pub fn unhex32(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{Linker, Store, StoreLimits, StoreLimitsBuilder, Trap};

    const SPIN: &str = r#"(module
        (memory (export "memory") 1)
        (func (export "spin") (loop br 0))
        (func (export "grow") (param i32) (result i32) local.get 0 memory.grow))"#;

    fn small() -> EngineOptions {
        EngineOptions {
            cache_dir: None,
            pooled_instances: 4,
            on_demand: false,
            max_memory_bytes: 16 << 20,
        }
    }

    struct Host {
        limits: StoreLimits,
    }

    fn instance(e: &WasmEngine, memory_bytes: usize) -> (Store<Host>, wasmtime::Instance) {
        let (module, _) = e.compile(SPIN.as_bytes()).unwrap();
        let mut store = Store::new(
            e.engine(),
            Host {
                limits: StoreLimitsBuilder::new().memory_size(memory_bytes).build(),
            },
        );
        store.limiter(|h| &mut h.limits);
        store.set_fuel(1_000_000).unwrap();
        store.set_epoch_deadline(10_000);
        let inst = Linker::new(e.engine())
            .instantiate(&mut store, &module)
            .unwrap();
        (store, inst)
    }

    #[test]
    fn unhex32_reads_what_hex_writes() {
        let d: [u8; 32] = std::array::from_fn(|i| (i * 37 + 5) as u8);
        assert_eq!(unhex32(&hex(&d)), Some(d));
        assert_eq!(unhex32(&hex(&d).to_uppercase()), Some(d));
        assert_eq!(unhex32(&hex(&d)[..62]), None, "too short");
        assert_eq!(unhex32(&format!("{}zz", &hex(&d)[..62])), None, "not hex");
    }

    #[test]
    fn same_bytes_compile_once() {
        let e = WasmEngine::new(&small()).unwrap();
        assert!(
            e.is_pooling(),
            "a 4-instance pool should always be available"
        );
        let (_, d1) = e.compile(SPIN.as_bytes()).unwrap();
        let (_, d2) = e.compile(SPIN.as_bytes()).unwrap();
        assert_eq!(d1, d2);
        assert_eq!(e.compiled_modules(), 1);
        assert_eq!(hex(&d1).len(), 64);
    }

    #[test]
    fn invalid_bytes_are_a_clear_error() {
        let e = WasmEngine::new(&small()).unwrap();
        let err = e.compile(b"\0asm\x01\0\0\0garbage").unwrap_err();
        assert!(matches!(err, EngineError::Compile(_)), "{err}");
        assert!(
            err.to_string().starts_with("not a valid wasm module"),
            "{err}"
        );
    }

    /// Runs the endless loop with this fuel and deadline; returns the trap that ended it.
    fn spin_until_trapped(fuel: u64, deadline_ticks: u64) -> Trap {
        let e = WasmEngine::new(&small()).unwrap();
        let (mut store, inst) = instance(&e, 1 << 20);
        store.set_fuel(fuel).unwrap();
        store.set_epoch_deadline(deadline_ticks);
        let spin = inst.get_typed_func::<(), ()>(&mut store, "spin").unwrap();
        let err = spin.call(&mut store, ()).unwrap_err();
        *err.downcast_ref::<Trap>()
            .unwrap_or_else(|| panic!("not a trap: {err:?}"))
    }

    #[test]
    fn fuel_stops_an_endless_loop() {
        assert_eq!(spin_until_trapped(1_000_000, 10_000), Trap::OutOfFuel);
    }

    #[test]
    fn the_epoch_deadline_stops_an_endless_loop() {
        assert_eq!(spin_until_trapped(u64::MAX, 5), Trap::Interrupt);
    }

    #[test]
    fn memory_growth_stops_at_the_store_limit() {
        let e = WasmEngine::new(&small()).unwrap();
        let (mut store, inst) = instance(&e, 2 * 65536);
        let grow = inst.get_typed_func::<i32, i32>(&mut store, "grow").unwrap();
        assert_eq!(
            grow.call(&mut store, 1).unwrap(),
            1,
            "1 → 2 pages is allowed"
        );
        assert_eq!(
            grow.call(&mut store, 1).unwrap(),
            -1,
            "a third page is refused"
        );
    }

    #[test]
    fn a_second_engine_loads_the_compiled_module_from_disk() {
        let dir = std::env::temp_dir().join(format!("sluice-wasm-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let opts = EngineOptions {
            cache_dir: Some(dir.clone()),
            ..small()
        };
        let first = WasmEngine::new(&opts).unwrap();
        first.compile(SPIN.as_bytes()).unwrap();
        let c1 = first.disk_cache().unwrap();
        assert_eq!((c1.cache_hits(), c1.cache_misses()), (0, 1));

        let second = WasmEngine::new(&opts).unwrap();
        second.compile(SPIN.as_bytes()).unwrap();
        let c2 = second.disk_cache().unwrap();
        assert_eq!(
            (c2.cache_hits(), c2.cache_misses()),
            (1, 0),
            "not loaded from disk"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
