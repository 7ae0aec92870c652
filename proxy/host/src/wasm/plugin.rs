//! A loaded plugin: its compiled module, its settings and its VMs.
//!
//! A request takes one VM per plugin at its start and keeps it (its stream context lives
//! there). A VM that fails is replaced in the background, with exponential backoff while the
//! replacements keep failing; meanwhile requests use the plugin's other healthy VMs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use wasmtime::{InstancePre, Linker};

use super::engine::{hex, WasmEngine};
use super::settings::PluginSettings;
use super::shared::{self, Namespace};
use super::vm::{PhaseMetrics, Vm, VmError, VmState};

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Not a valid wasm module.
    #[error("plugin {plugin:?}: {message}")]
    Compile {
        /// Plugin name.
        plugin: String,
        /// Compiler message.
        message: String,
    },
    /// It imports something the host does not provide.
    #[error("plugin {plugin:?}: cannot link: {message}")]
    Link {
        /// Plugin name.
        plugin: String,
        /// Linker message.
        message: String,
    },
    /// A VM did not start.
    #[error("plugin {plugin:?}: {error}")]
    Start {
        /// Plugin name.
        plugin: String,
        /// What failed.
        error: VmError,
    },
}

/// A number for the calling thread: 0, 1, 2, … in the order threads first ask.
fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    NUMBER.with(|n| *n)
}

/// What the requests of one route cost a plugin.
#[derive(Default)]
struct RouteCost {
    requests: std::sync::atomic::AtomicU64,
    nanos: std::sync::atomic::AtomicU64,
    fuel: std::sync::atomic::AtomicU64,
}

struct Slot {
    /// The slot's VM: `None` before its first use, or after it was stopped for idleness.
    vm: Mutex<Option<Arc<Vm>>>,
    /// Consecutive failures of this slot's VMs (resets when one serves a while).
    failures: AtomicUsize,
    /// A VM for this slot is being started in the background.
    starting: AtomicBool,
    /// A request took the slot's VM since the idle sweep last looked.
    used: AtomicBool,
    /// Since when the idle sweep has seen the slot unused (read and written by the sweep only).
    idle_since: Mutex<Option<Instant>>,
}

impl Slot {
    fn new(vm: Option<Arc<Vm>>) -> Slot {
        Slot {
            vm: Mutex::new(vm),
            failures: AtomicUsize::new(0),
            starting: AtomicBool::new(false),
            used: AtomicBool::new(false),
            idle_since: Mutex::new(None),
        }
    }

    fn vm(&self) -> std::sync::MutexGuard<'_, Option<Arc<Vm>>> {
        self.vm.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a use (a write only when the flag changes: the sweep clears it rarely).
    fn touch(&self) {
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
    }
}

/// One configured plugin, ready to serve.
pub struct Plugin {
    /// Settings.
    pub settings: Arc<PluginSettings>,
    /// sha256 of the binary.
    pub sha256: [u8; 32],
    engine: wasmtime::Engine,
    pre: InstancePre<VmState>,
    shared: Arc<Namespace>,
    metrics: Arc<PhaseMetrics>,
    slots: Vec<Slot>,
    /// This plugin (for the VM starts `pick` hands to a thread).
    me: Weak<Plugin>,
    /// Costs by route name.
    route_costs: std::sync::RwLock<std::collections::HashMap<String, RouteCost>>,
}

impl Plugin {
    /// Compiles `bytes`, links them and starts `settings.vms` VMs (each runs start-up,
    /// `on_vm_start` and `on_configure`). Any failure is an error naming the plugin.
    pub fn load(
        engine: &WasmEngine,
        linker: &Linker<VmState>,
        settings: PluginSettings,
        bytes: &[u8],
    ) -> Result<Arc<Plugin>, PluginError> {
        let (module, sha256) = engine.compile(bytes).map_err(|e| PluginError::Compile {
            plugin: settings.name.clone(),
            message: e.to_string(),
        })?;
        Plugin::load_module(engine, linker, settings, module, sha256)
    }

    /// [`Plugin::load`] with the module already compiled from bytes of digest `sha256`.
    pub fn load_module(
        engine: &WasmEngine,
        linker: &Linker<VmState>,
        settings: PluginSettings,
        module: wasmtime::Module,
        sha256: [u8; 32],
    ) -> Result<Arc<Plugin>, PluginError> {
        let plugin = settings.name.clone();
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| PluginError::Link {
                plugin: plugin.clone(),
                message: format!("{e:#}"),
            })?;
        let settings = Arc::new(settings);
        let shared = shared::namespace(&settings.vm_id, settings.shared_store.as_ref());
        let metrics = Arc::new(PhaseMetrics::new(&settings.name, settings.version));
        let n = settings.vms.max(1);
        // The first VM always starts here (it proves the plugin starts and configures); the
        // others too unless they start on first use.
        let at_load = if settings.vm_start.all_at_load { n } else { 1 };
        let mut first_error = None;
        let p = Arc::new_cyclic(|weak: &Weak<Plugin>| {
            let slots = (0..n)
                .map(|slot| {
                    let vm = if first_error.is_none() && slot < at_load {
                        match Vm::start(
                            engine.engine(),
                            &pre,
                            settings.clone(),
                            shared.clone(),
                            metrics.clone(),
                            weak.clone(),
                            slot,
                        ) {
                            Ok(vm) => Some(vm),
                            Err(e) => {
                                first_error = Some(e);
                                None
                            }
                        }
                    } else {
                        None
                    };
                    Slot::new(vm)
                })
                .collect();
            Plugin {
                settings: settings.clone(),
                sha256,
                engine: engine.engine().clone(),
                pre: pre.clone(),
                shared: shared.clone(),
                metrics: metrics.clone(),
                slots,
                me: weak.clone(),
                route_costs: Default::default(),
            }
        });
        if let Some(error) = first_error {
            return Err(PluginError::Start { plugin, error });
        }
        p.update_gauges();
        if n > at_load && p.settings.vm_start.idle.is_some() {
            idle_sweep(&p);
        }
        tracing::info!(
            plugin = %p.settings.name,
            sha256 = %hex(&p.sha256),
            vms = n,
            started = at_load,
            "plugin loaded"
        );
        Ok(p)
    }

    /// A healthy VM for a new request, or `None` if none is healthy. Each thread has its own
    /// VM (slot = the thread's number modulo the VM count): a worker's requests do not
    /// contend for another worker's store and keep its code and memory warm in that CPU's
    /// caches. A thread whose VM failed uses the next healthy one. A thread whose VM has not
    /// started (VMs start on first use) has it started in the background and meanwhile uses
    /// another healthy VM; when there is none, the request pays for starting it.
    pub fn pick(&self) -> Option<Arc<Vm>> {
        let n = self.slots.len();
        let own = thread_number() % n;
        let slot = &self.slots[own];
        let empty = {
            let guard = slot.vm();
            match guard.as_ref() {
                Some(vm) if !vm.is_failed() => {
                    slot.touch();
                    return Some(vm.clone());
                }
                Some(_) => false,
                None => true,
            }
        };
        let other = (1..n).find_map(|i| {
            let s = &self.slots[(own + i) % n];
            let guard = s.vm();
            let vm = guard.as_ref().filter(|vm| !vm.is_failed())?;
            s.touch();
            Some(vm.clone())
        });
        if empty && !slot.starting.swap(true, Ordering::AcqRel) {
            match (&other, self.me.upgrade()) {
                (Some(_), Some(me)) => me.start_in_background(own),
                (None, Some(me)) => {
                    let vm = me.start_on_use(own);
                    if vm.is_some() {
                        slot.touch();
                    }
                    return vm;
                }
                (_, None) => slot.starting.store(false, Ordering::Release),
            }
        }
        other
    }

    /// Starts `slot`'s VM now and puts it in service (or logs why it did not start).
    fn start_on_use(self: &Arc<Self>, slot: usize) -> Option<Arc<Vm>> {
        let result = self.start_vm(slot);
        let s = &self.slots[slot];
        let vm = match result {
            Ok(vm) => {
                let mut guard = s.vm();
                if guard.is_none() {
                    *guard = Some(vm.clone());
                    drop(guard);
                    tracing::debug!(plugin = %self.settings.name, slot, "plugin VM started on use");
                    Some(vm)
                } else {
                    // Someone filled it meanwhile (a restart): keep theirs.
                    drop(guard);
                    vm.retire();
                    s.vm().clone()
                }
            }
            Err(e) => {
                tracing::error!(
                    plugin = %self.settings.name,
                    slot,
                    error = %e,
                    "plugin VM did not start on use"
                );
                None
            }
        };
        s.starting.store(false, Ordering::Release);
        self.update_gauges();
        vm
    }

    fn start_in_background(self: Arc<Self>, slot: usize) {
        let weak = Arc::downgrade(&self);
        drop(self);
        let spawned = std::thread::Builder::new()
            .name("sluice-vm-start".into())
            .spawn(move || {
                if let Some(p) = weak.upgrade() {
                    p.start_on_use(slot);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a thread to start a plugin VM");
        }
    }

    /// Stops the VMs (other than the first) that served no request for the plugin's
    /// `vm_start.idle`, have no request or paused state, and no timer. Called by the sweep.
    fn stop_idle(&self, now: Instant) {
        let Some(idle) = self.settings.vm_start.idle else {
            return;
        };
        for (i, slot) in self.slots.iter().enumerate().skip(1) {
            let mut since = slot.idle_since.lock().unwrap_or_else(|p| p.into_inner());
            if slot.used.swap(false, Ordering::Relaxed) {
                *since = None;
                continue;
            }
            let since = *since.get_or_insert(now);
            if now.duration_since(since) < idle {
                continue;
            }
            let mut guard = slot.vm();
            let stop = guard.as_ref().is_some_and(|vm| {
                !vm.is_failed()
                    && vm.contexts() == 0
                    && vm.tick_period_ms() == 0
                    && Arc::strong_count(vm) == 1
            });
            if stop {
                if let Some(vm) = guard.take() {
                    drop(guard);
                    vm.retire();
                    tracing::debug!(plugin = %self.settings.name, slot = i, "idle plugin VM stopped");
                    self.update_gauges();
                }
            }
        }
    }

    /// Adds one request's cost on `route` (guest calls made with the request's state).
    pub fn record_route_cost(&self, route: &str, cost: super::stream::CallCost) {
        let add = |c: &RouteCost| {
            c.requests.fetch_add(1, Ordering::Relaxed);
            c.nanos.fetch_add(cost.nanos, Ordering::Relaxed);
            c.fuel.fetch_add(cost.fuel, Ordering::Relaxed);
        };
        if let Some(c) = self
            .route_costs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
        {
            add(c);
            return;
        }
        let mut all = self.route_costs.write().unwrap_or_else(|p| p.into_inner());
        add(all.entry(route.to_string()).or_default());
    }

    /// Per route: requests, guest ns and fuel of the requests this plugin (this version)
    /// served on it.
    pub fn route_costs(&self) -> Vec<(String, u64, u64, u64)> {
        let all = self.route_costs.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = all
            .iter()
            .map(|(r, c)| {
                (
                    r.clone(),
                    c.requests.load(Ordering::Relaxed),
                    c.nanos.load(Ordering::Relaxed),
                    c.fuel.load(Ordering::Relaxed),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// What the plugin's calls cost, by phase, and the requests it served (for `/plugins`).
    pub fn costs(&self) -> (u64, Vec<super::vm::PhaseCost>) {
        (self.metrics.requests(), self.metrics.costs())
    }

    /// Healthy VMs.
    pub fn healthy_vms(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                s.vm.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .is_some_and(|vm| !vm.is_failed())
            })
            .count()
    }

    /// Each VM of the plugin (for tests and the admin API).
    pub fn vms(&self) -> Vec<Arc<Vm>> {
        self.slots
            .iter()
            .filter_map(|s| s.vm.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }

    /// Sets `sluice_plugin_vms` and `sluice_plugin_memory_bytes` of this plugin (at load, on
    /// VM changes, and at each scrape of `/metrics`).
    pub fn update_gauges(&self) {
        let m = crate::metrics::metrics();
        m.plugin_vms
            .with_label_values(&[&self.settings.name, self.settings.version.as_str()])
            .set(self.healthy_vms() as i64);
        let mem: usize = self.vms().iter().map(|vm| vm.memory_bytes()).sum();
        m.plugin_memory
            .with_label_values(&[&self.settings.name, self.settings.version.as_str()])
            .set(mem as i64);
    }

    /// Called by a VM that failed: builds its replacement in the background, after a delay
    /// that doubles with each consecutive failure of the slot (10 ms up to 10 s).
    pub fn vm_failed(self: &Arc<Self>, slot: usize) {
        let Some(s) = self.slots.get(slot) else {
            return;
        };
        let failures = s.failures.fetch_add(1, Ordering::AcqRel);
        let delay = Duration::from_millis(10u64.saturating_mul(1 << failures.min(10)))
            .min(Duration::from_secs(10));
        self.update_gauges();
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("sluice-vm-replace".into())
            .spawn(move || {
                std::thread::sleep(delay);
                if let Some(p) = weak.upgrade() {
                    p.replace(slot);
                }
            });
        if let Err(e) = spawned {
            tracing::error!(plugin = %self.settings.name, error = %e, "cannot start a VM replacement");
        }
    }

    /// Starts a new VM of this plugin for `slot` (instantiation, start-up, `on_vm_start`,
    /// `on_configure`) without putting it in service.
    pub fn start_vm(self: &Arc<Self>, slot: usize) -> Result<Arc<Vm>, VmError> {
        Vm::start(
            &self.engine,
            &self.pre,
            self.settings.clone(),
            self.shared.clone(),
            self.metrics.clone(),
            Arc::<Plugin>::downgrade(self),
            slot,
        )
    }

    /// Puts a newly started VM in every slot at once, in place of the VMs there (failed or
    /// not): a clean slate, as if the plugin had just been loaded (for the test kit).
    pub fn restart_vms(self: &Arc<Self>) -> Result<(), VmError> {
        for slot in 0..self.slots.len() {
            let vm = self.start_vm(slot)?;
            *self.slots[slot]
                .vm
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(vm);
            self.slots[slot].failures.store(0, Ordering::Release);
        }
        self.update_gauges();
        Ok(())
    }

    fn replace(self: &Arc<Self>, slot: usize) {
        match self.start_vm(slot) {
            Ok(vm) => {
                *self.slots[slot]
                    .vm
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(vm);
                tracing::info!(plugin = %self.settings.name, slot, "plugin VM replaced");
                self.update_gauges();
                // Forgive earlier failures once the new VM has served for a while.
                let weak = Arc::downgrade(self);
                let _ = std::thread::Builder::new()
                    .name("sluice-vm-forgive".into())
                    .spawn(move || {
                        std::thread::sleep(Duration::from_secs(30));
                        if let Some(p) = weak.upgrade() {
                            let healthy = p.slots[slot]
                                .vm
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .as_ref()
                                .is_some_and(|vm| !vm.is_failed());
                            if healthy {
                                p.slots[slot].failures.store(0, Ordering::Release);
                            }
                        }
                    });
            }
            Err(e) => {
                tracing::error!(plugin = %self.settings.name, slot, error = %e, "plugin VM replacement failed");
                self.vm_failed(slot);
            }
        }
    }
}

/// Registers `plugin` with the thread that stops idle VMs (started with the first plugin that
/// needs it; it checks each plugin every second, or every tenth of its idle time if shorter,
/// and forgets plugins that were dropped).
fn idle_sweep(plugin: &Arc<Plugin>) {
    static PLUGINS: OnceLock<Mutex<Vec<Weak<Plugin>>>> = OnceLock::new();
    let mut started = false;
    let list = PLUGINS.get_or_init(|| {
        started = true;
        Mutex::new(Vec::new())
    });
    list.lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Arc::downgrade(plugin));
    if !started {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("sluice-vm-idle".into())
        .spawn(move || loop {
            let alive: Vec<Arc<Plugin>> = {
                let mut list = list.lock().unwrap_or_else(|p| p.into_inner());
                list.retain(|w| w.strong_count() > 0);
                list.iter().filter_map(Weak::upgrade).collect()
            };
            let period = alive
                .iter()
                .filter_map(|p| p.settings.vm_start.idle)
                .map(|d| d / 10)
                .min()
                .unwrap_or(Duration::from_secs(1))
                .clamp(Duration::from_millis(10), Duration::from_secs(1));
            let now = Instant::now();
            for p in &alive {
                p.stop_idle(now);
            }
            drop(alive);
            std::thread::sleep(period);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the idle plugin VM sweep");
    }
}

impl Drop for Plugin {
    /// The plugin is out of service (a reload replaced or removed it, and the last request
    /// that used it has ended): each VM's root context gets `on_done` and `on_delete`.
    fn drop(&mut self) {
        for slot in &self.slots {
            let vm = slot.vm.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(vm) = vm {
                vm.retire();
            }
        }
    }
}

impl super::vm::VmOwner for Plugin {
    fn vm_failed(self: Arc<Self>, slot: usize) {
        Plugin::vm_failed(&self, slot);
    }
}
