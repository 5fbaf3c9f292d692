//! The plug-in runtime: one wasmtime engine, component validation, the compile
//! cache, and sandboxed invocation with limits.
//!
//! Stages: the engine and linker are built once; a component is validated at
//! registration; it is compiled (or loaded from the on-disk cache) once per
//! process and pre-linked into an `InstancePre`; every invocation gets a fresh
//! instance in its own store.
//!
//! **Invariant:** the runtime never sees HTTP or redb types; data reaches guests
//! only through [`OrganizationService`], compiled-code digests only through
//! [`ArtifactIndex`].

mod bindings;
mod limits;
mod outcome;
mod sandbox;
mod service;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

pub use self::bindings::{WIT_PACKAGE, WIT_VERSION};
pub use self::limits::{LimitOverrides, Limits, MAX_PAYLOAD_BYTES, MAX_TIMEOUT_MS, MAX_TRACE_BYTES, MAX_WRITE_BYTES};
pub use self::outcome::{ErrorCode, Failure, Invocation};
pub use self::service::{CallContext, NoData, OrganizationService, ServiceError};

use self::bindings::{Plugin, PluginPre};
use self::sandbox::{Breach, Sandbox};
use uuid::Uuid;

use crate::model::{AssemblyHash, ExecutionContext};

/// How often the epoch advances; wall-clock timeouts are accurate to this.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Largest component accepted, in bytes.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// Engine-wide settings; fixed for the life of the process.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled code is cached; `None` disables the disk cache.
    pub cache_dir: Option<PathBuf>,
    /// The largest memory limit any step may have (the pooling allocator's slot size).
    pub max_memory_bytes: u64,
    /// How many component instances may exist at once (pooling allocator).
    pub max_instances: u32,
    /// Use the pooling allocator (fast instantiation); off uses on-demand allocation.
    pub pooling: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig { cache_dir: None, max_memory_bytes: 512 << 20, max_instances: 256, pooling: true }
    }
}

/// Records the digest of each compiled artifact the runtime writes, so that a
/// cached file is loaded only if it is byte for byte what this host wrote.
pub trait ArtifactIndex: Send + Sync {
    fn artifact_digest(&self, key: &str) -> anyhow::Result<Option<[u8; 32]>>;
    fn record_artifact(&self, key: &str, digest: [u8; 32]) -> anyhow::Result<()>;
}

/// Why bytes are not a plug-in for this host.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ComponentError {
    #[error("the file is not WebAssembly (no \\0asm header)")]
    NotWasm,
    #[error("the file is {0} bytes; the largest component accepted is {MAX_COMPONENT_BYTES} bytes")]
    TooLarge(usize),
    #[error(
        "the file is a core WebAssembly module, not a component: build for wasm32-wasip2 (Rust), or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("the component is malformed: {0}")]
    Invalid(String),
    #[error("the component needs more than this host allows: {0}")]
    ExceedsHostLimits(String),
    #[error("the component was built against {found}, but this host implements {WIT_PACKAGE}@{}.{}.{}: rebuild it against the 0.1 world (plughost-sdk 0.1)", WIT_VERSION.0, WIT_VERSION.1, WIT_VERSION.2)]
    IncompatibleVersion { found: String },
    #[error("the component does not implement the {WIT_PACKAGE} world: {0}")]
    WrongWorld(String),
    #[error(
        "the component imports {0}, which plug-ins cannot use: a plug-in may import only {WIT_PACKAGE} interfaces and WASI"
    )]
    UnsupportedImport(String),
}

impl ComponentError {
    /// A stable code for the API and the CLI.
    pub fn code(&self) -> &'static str {
        match self {
            ComponentError::NotWasm => "not_wasm",
            ComponentError::TooLarge(_) => "component_too_large",
            ComponentError::CoreModule => "core_module",
            ComponentError::Invalid(_) => "invalid_component",
            ComponentError::ExceedsHostLimits(_) => "exceeds_host_limits",
            ComponentError::IncompatibleVersion { .. } => "incompatible_wit_version",
            ComponentError::WrongWorld(_) => "wrong_world",
            ComponentError::UnsupportedImport(_) => "unsupported_import",
        }
    }
}

/// What validation learned about a component.
#[derive(Clone, Debug)]
pub struct ComponentInfo {
    /// The plug-in world version it was built against, e.g. "0.1.0".
    pub wit_version: String,
    /// Every import, by name.
    pub imports: Vec<String>,
}

/// How a plug-in's code came to be in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Compiled from the component's bytes.
    Compiled,
    /// Loaded from the on-disk cache without compiling.
    DiskCache,
}

/// A plug-in ready to instantiate: compiled and pre-linked.
pub struct LoadedPlugin {
    pub hash: AssemblyHash,
    pub origin: Origin,
    pre: PluginPre<Sandbox>,
}

/// Counters since start-up.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct RuntimeStats {
    pub compiled: u64,
    pub disk_cache_hits: u64,
    pub invocations: u64,
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<Sandbox>,
    config: RuntimeConfig,
    fingerprint: String,
    artifacts: Option<Arc<dyn ArtifactIndex>>,
    loaded: Mutex<HashMap<AssemblyHash, Arc<LoadedPlugin>>>,
    compiled: AtomicU64,
    disk_cache_hits: AtomicU64,
    invocations: AtomicU64,
    _ticker: EpochTicker,
}

impl Runtime {
    /// Builds the engine and links the world. `artifacts` enables the disk cache
    /// (with `config.cache_dir`).
    pub fn new(config: RuntimeConfig, artifacts: Option<Arc<dyn ArtifactIndex>>) -> anyhow::Result<Runtime> {
        let mut wasm = Config::new();
        wasm.wasm_component_model(true).consume_fuel(true).epoch_interruption(true).max_wasm_stack(512 << 10);
        if config.pooling {
            let mut pool = PoolingAllocationConfig::default();
            let memory = usize::try_from(config.max_memory_bytes)?;
            pool.max_memory_size(memory)
                .total_component_instances(config.max_instances)
                .total_core_instances(config.max_instances.saturating_mul(8))
                .total_memories(config.max_instances.saturating_mul(2))
                .total_tables(config.max_instances.saturating_mul(4))
                .max_core_instances_per_component(64)
                .max_memories_per_component(8)
                .max_tables_per_component(16)
                .table_elements(sandbox::MAX_TABLE_ELEMENTS)
                .linear_memory_keep_resident(64 << 10)
                .table_keep_resident(16 << 10)
                .decommit_batch_size(32);
            wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&wasm).map_err(anyhow::Error::from)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
        // WASI's blocking waits, bounded by each invocation's deadline.
        linker.allow_shadowing(true);
        wasmtime_wasi::p2::bindings::sync::io::poll::add_to_linker::<Sandbox, sandbox::BoundedIo>(&mut linker, |s| {
            s.bounded_io()
        })
        .map_err(anyhow::Error::from)?;
        linker.allow_shadowing(false);
        Plugin::add_to_linker::<Sandbox, HasSelf<Sandbox>>(&mut linker, |s| s).map_err(anyhow::Error::from)?;
        let fingerprint = engine_fingerprint(&engine);
        let ticker = EpochTicker::start(engine.clone());
        Ok(Runtime {
            engine,
            linker,
            config,
            fingerprint,
            artifacts,
            loaded: Mutex::new(HashMap::new()),
            compiled: AtomicU64::new(0),
            disk_cache_hits: AtomicU64::new(0),
            invocations: AtomicU64::new(0),
            _ticker: ticker,
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    pub fn stats(&self) -> RuntimeStats {
        RuntimeStats {
            compiled: self.compiled.load(Ordering::Relaxed),
            disk_cache_hits: self.disk_cache_hits.load(Ordering::Relaxed),
            invocations: self.invocations.load(Ordering::Relaxed),
        }
    }

    /// Checks that `bytes` are a component implementing this host's world, and
    /// compiles it. Nothing is stored.
    pub fn validate(&self, bytes: &[u8]) -> Result<(Component, ComponentInfo), ComponentError> {
        if bytes.len() > MAX_COMPONENT_BYTES {
            return Err(ComponentError::TooLarge(bytes.len()));
        }
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(ComponentError::NotWasm);
        }
        if bytes[4..8] == [1, 0, 0, 0] {
            return Err(ComponentError::CoreModule);
        }
        let max_memory = self.config.max_memory_bytes;
        let too_big = |needs: String| {
            ComponentError::ExceedsHostLimits(format!(
                "{needs}, and this host gives an instance at most {max_memory} bytes (runtime.max_memory_bytes)"
            ))
        };
        let component = Component::new(&self.engine, bytes).map_err(|e| {
            let message = format!("{e:#}");
            // The pooling allocator refuses a memory minimum above its slot size here.
            if message.contains("minimum byte size") { too_big(message) } else { ComponentError::Invalid(message) }
        })?;
        // Without pooling nothing refuses it until instantiation: check here, so such a
        // component is never registered.
        if let Some(pages) = component.resources_required().and_then(|r| r.max_initial_memory_size) {
            let bytes = pages.saturating_mul(64 << 10);
            if bytes > max_memory {
                return Err(too_big(format!("its memory starts at {bytes} bytes")));
            }
        }
        let info = self.check_world(&component)?;
        Ok((component, info))
    }

    fn check_world(&self, component: &Component) -> Result<ComponentInfo, ComponentError> {
        let ty = component.component_type();
        let prefix = format!("{WIT_PACKAGE}/");
        let mut wit_version = None;
        let mut check_version = |name: &str| -> Result<(), ComponentError> {
            let Some(rest) = name.strip_prefix(&prefix) else { return Ok(()) };
            let version = rest.split_once('@').map(|(_, v)| v).unwrap_or("");
            if !version_compatible(version) {
                return Err(ComponentError::IncompatibleVersion { found: format!("{WIT_PACKAGE}@{version}") });
            }
            wit_version.get_or_insert_with(|| version.to_owned());
            Ok(())
        };
        let mut imports = Vec::new();
        for (name, _) in ty.imports(&self.engine) {
            check_version(name)?;
            if !name.starts_with(&prefix) && !name.starts_with("wasi:") {
                return Err(ComponentError::UnsupportedImport(name.to_owned()));
            }
            imports.push(name.to_owned());
        }
        let exports: Vec<String> = ty.exports(&self.engine).map(|(n, _)| n.to_owned()).collect();
        for name in &exports {
            check_version(name)?;
        }
        let handler = format!("{prefix}handler@");
        if !exports.iter().any(|e| e.starts_with(&handler)) {
            let found = if exports.is_empty() { "nothing".to_owned() } else { exports.join(", ") };
            return Err(ComponentError::WrongWorld(format!("it must export {prefix}handler, but exports {found}")));
        }
        let pre = self.linker.instantiate_pre(component).map_err(|e| {
            // Unknown WASI versions or functions end up here.
            ComponentError::UnsupportedImport(format!("something this host does not provide ({e:#})"))
        })?;
        PluginPre::new(pre).map_err(|e| ComponentError::WrongWorld(format!("{e:#}")))?;
        Ok(ComponentInfo { wit_version: wit_version.unwrap_or_default(), imports })
    }

    /// Returns the plug-in for `hash`, from memory, the disk cache, or by
    /// compiling the bytes `fetch` returns. Compiled code is written to the disk
    /// cache so the next process start does not compile again.
    pub fn load(
        &self,
        hash: &AssemblyHash,
        fetch: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Arc<LoadedPlugin>> {
        if let Some(p) = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(hash) {
            return Ok(p.clone());
        }
        let (component, origin) = match self.load_cached(hash) {
            Some(c) => (c, Origin::DiskCache),
            None => {
                let bytes = fetch()?;
                anyhow::ensure!(
                    AssemblyHash::of(&bytes) == *hash,
                    "assembly {hash} is corrupt in the store: its bytes hash to {}",
                    AssemblyHash::of(&bytes)
                );
                let (component, _) = self.validate(&bytes)?;
                return self.adopt(hash, component);
            }
        };
        self.keep(hash, component, origin)
    }

    /// Takes a component compiled by [`Runtime::validate`] (at registration) as the
    /// plug-in for `hash`: written to the disk cache and pre-linked, so it is never
    /// compiled twice.
    pub fn adopt(&self, hash: &AssemblyHash, component: Component) -> anyhow::Result<Arc<LoadedPlugin>> {
        if let Some(p) = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(hash) {
            return Ok(p.clone());
        }
        self.compiled.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.store_cached(hash, &component) {
            tracing::warn!(%hash, "could not write the compile cache: {e:#}");
        }
        self.keep(hash, component, Origin::Compiled)
    }

    /// Pre-links `component` and keeps it in memory for `hash`.
    fn keep(&self, hash: &AssemblyHash, component: Component, origin: Origin) -> anyhow::Result<Arc<LoadedPlugin>> {
        let pre = self.linker.instantiate_pre(&component).map_err(anyhow::Error::from)?;
        let plugin =
            Arc::new(LoadedPlugin { hash: *hash, origin, pre: PluginPre::new(pre).map_err(anyhow::Error::from)? });
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        Ok(loaded.entry(*hash).or_insert(plugin).clone())
    }

    /// Forgets a plug-in's compiled code, in memory and in the disk cache (for every
    /// engine fingerprint), after its assembly is unregistered.
    pub fn evict(&self, hash: &AssemblyHash) {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).remove(hash);
        if let Some(dir) = &self.config.cache_dir
            && let Ok(engines) = std::fs::read_dir(dir)
        {
            for engine in engines.flatten() {
                let _ = std::fs::remove_file(engine.path().join(format!("{hash}.cwasm")));
            }
        }
    }

    fn cache_key(&self, hash: &AssemblyHash) -> String {
        format!("{}/{hash}", self.fingerprint)
    }

    fn cache_file(&self, hash: &AssemblyHash) -> Option<PathBuf> {
        let dir = self.config.cache_dir.as_ref()?;
        Some(dir.join(&self.fingerprint).join(format!("{hash}.cwasm")))
    }

    fn load_cached(&self, hash: &AssemblyHash) -> Option<Component> {
        let path = self.cache_file(hash)?;
        let index = self.artifacts.as_ref()?;
        let digest = index.artifact_digest(&self.cache_key(hash)).ok()??;
        let bytes = std::fs::read(&path).ok()?;
        if *blake3::hash(&bytes).as_bytes() != digest {
            tracing::warn!(path = %path.display(), "cached compiled code does not match its recorded digest; recompiling");
            return None;
        }
        let component = deserialize_trusted(&self.engine, &bytes)
            .map_err(
                |e| tracing::warn!(path = %path.display(), "cached compiled code is unusable ({e:#}); recompiling"),
            )
            .ok()?;
        self.disk_cache_hits.fetch_add(1, Ordering::Relaxed);
        Some(component)
    }

    fn store_cached(&self, hash: &AssemblyHash, component: &Component) -> anyhow::Result<()> {
        let (Some(path), Some(index)) = (self.cache_file(hash), self.artifacts.as_ref()) else { return Ok(()) };
        let bytes = component.serialize().map_err(anyhow::Error::from)?;
        let dir = path.parent().expect("cache file has a directory");
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(".{hash}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &path)?;
        index.record_artifact(&self.cache_key(hash), *blake3::hash(&bytes).as_bytes())
    }

    /// The benchmark baseline: `iterations` bare instantiate-and-call cycles of the
    /// same component with the same engine, the context converted once, and none of
    /// plughost's per-invocation work (limits, trace log, outcome classification,
    /// output conversion). Returns how many calls succeeded. For [`crate::baselines`].
    pub(crate) fn baseline_calls(&self, plugin: &LoadedPlugin, context: &ExecutionContext, iterations: usize) -> usize {
        let wit_context = bindings::context_to_wit(context);
        let caller = CallContext {
            depth: 1,
            correlation_id: context.correlation_id,
            initiating_user_id: context.initiating_user_id,
            user_id: context.user_id,
            step_id: None,
        };
        let limits = Limits { fuel: u64::MAX / 2, timeout_ms: MAX_TIMEOUT_MS, ..Limits::default() };
        let service: Arc<dyn OrganizationService> = Arc::new(NoData);
        let mut ok = 0;
        for _ in 0..iterations {
            let mut store = Store::new(&self.engine, Sandbox::new(&limits, service.clone(), caller.clone()));
            let _ = store.set_fuel(limits.fuel);
            store.set_epoch_deadline(u64::MAX / 2);
            if let Ok(instance) = plugin.pre.instantiate(&mut store)
                && let Ok(Ok(_)) = instance.plughost_plugin_handler().call_execute(&mut store, &wit_context)
            {
                ok += 1;
            }
        }
        ok
    }

    /// Runs `execute` in a fresh instance under `limits`. Never panics on
    /// anything the plug-in does: every misbehaviour is a [`Failure`].
    pub fn invoke(
        &self,
        plugin: &LoadedPlugin,
        context: &ExecutionContext,
        limits: &Limits,
        service: Arc<dyn OrganizationService>,
    ) -> Invocation {
        self.invoke_in(None, plugin, context, limits, service).0
    }

    /// Like [`Runtime::invoke`], but runs in an instance kept in `cache` under
    /// `key` (one per step), reused for up to `max_uses` invocations; 0 means a
    /// fresh instance. A kept instance is discarded after any failure.
    pub fn invoke_reusing(
        &self,
        reuse: Reuse<'_>,
        plugin: &LoadedPlugin,
        context: &ExecutionContext,
        limits: &Limits,
        service: Arc<dyn OrganizationService>,
    ) -> Invocation {
        let Reuse { cache, key, max_uses } = reuse;
        if max_uses <= 1 {
            return self.invoke(plugin, context, limits, service);
        }
        let kept = cache.slots.remove(&key).filter(|k| k.hash == plugin.hash);
        let (invocation, kept) = self.invoke_in(kept, plugin, context, limits, service);
        if let Some(mut k) = kept
            && invocation.outcome.is_ok()
        {
            k.uses += 1;
            if k.uses < max_uses {
                if cache.slots.len() >= MAX_KEPT_PER_CACHE {
                    cache.slots.clear();
                }
                cache.slots.insert(key, k);
            }
        }
        invocation
    }

    /// One invocation in `kept` (or a fresh instance); returns the instance for reuse.
    fn invoke_in(
        &self,
        kept: Option<KeptInstance>,
        plugin: &LoadedPlugin,
        context: &ExecutionContext,
        limits: &Limits,
        service: Arc<dyn OrganizationService>,
    ) -> (Invocation, Option<KeptInstance>) {
        let started = Instant::now();
        self.invocations.fetch_add(1, Ordering::Relaxed);
        let finish = |outcome, trace: String, fuel_used, host_calls| Invocation {
            outcome,
            trace,
            fuel_used,
            host_calls,
            duration_us: u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        };
        let size = context.approx_size() as u64;
        if size > limits.input_bytes {
            let failure = Failure::new(
                ErrorCode::InputTooLarge,
                format!("the execution context is about {size} bytes; the limit is {} bytes", limits.input_bytes),
            );
            return (finish(Err(failure), String::new(), 0, 0), None);
        }
        let caller = CallContext {
            depth: context.depth,
            correlation_id: context.correlation_id,
            initiating_user_id: context.initiating_user_id,
            user_id: context.user_id,
            step_id: context.step_id,
        };
        let prior_uses = kept.as_ref().map_or(0, |k| k.uses);
        let (mut store, instance) = match kept {
            Some(mut k) => {
                k.store.data_mut().reset(limits, service, caller);
                (k.store, Some(k.instance))
            }
            None => {
                let mut store = Store::new(&self.engine, Sandbox::new(limits, service, caller));
                store.limiter(|s| s);
                store.epoch_deadline_callback(|mut ctx| Ok(ctx.data_mut().on_tick()));
                (store, None)
            }
        };
        if let Err(e) = store.set_fuel(limits.fuel) {
            return (
                finish(Err(Failure::new(ErrorCode::InstantiationFailed, format!("{e:#}"))), String::new(), 0, 0),
                None,
            );
        }
        // Every tick the callback checks whether the work was stopped or its time is up.
        store.set_epoch_deadline(1);
        store.set_hostcall_fuel(hostcall_fuel(limits));

        let wit_context = bindings::context_to_wit(context);
        let instance = match instance {
            Some(i) => Ok(i),
            // A full instance pool is waited out within the plug-in's own time budget,
            // so a burst of slow plug-ins delays others instead of failing them.
            None => loop {
                match plugin.pre.instantiate(&mut store) {
                    Err(e)
                        if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some()
                            && started.elapsed() < limits.timeout() =>
                    {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    other => break other,
                }
            },
        };
        let (call, instance) = match instance {
            Ok(instance) => {
                let call =
                    instance.plughost_plugin_handler().call_execute(&mut store, &wit_context).map_err(|e| (e, false));
                (call, Some(instance))
            }
            Err(e) => (Err((e, true)), None),
        };
        let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let sandbox = store.data();
        let (breach, trace, host_calls) = (sandbox.breach, sandbox.trace.clone(), sandbox.host_calls);
        let outcome = match call {
            Ok(Ok(result)) => match bindings::result_from_wit(result) {
                Ok(result) => {
                    let size = result.approx_size() as u64;
                    if size > limits.output_bytes {
                        Err(Failure::new(
                            ErrorCode::OutputTooLarge,
                            format!(
                                "the plug-in returned about {size} bytes; the limit is {} bytes",
                                limits.output_bytes
                            ),
                        ))
                    } else {
                        Ok(result)
                    }
                }
                Err(m) => Err(Failure::new(ErrorCode::InvalidOutput, m)),
            },
            Ok(Err(bindings::wit::PluginError::Permanent(m))) => Err(Failure::new(ErrorCode::PluginError, m)),
            Ok(Err(bindings::wit::PluginError::Retryable(m))) => Err(Failure::new(ErrorCode::PluginRetryable, m)),
            Err((error, instantiating)) => {
                let failure = classify(&error, breach, trace.overflowed(), instantiating, limits);
                // The wasm backtrace goes to the trace log and the server's log, not to callers.
                let detail = format!("{error:?}");
                tracing::debug!(code = %failure.code, "plug-in failed: {detail}");
                trace.append_host_note(&format!("[plughost] {}: {detail}", failure.code));
                Err(failure)
            }
        };
        // Only an instance that finished cleanly may be used again.
        let kept = match (&outcome, instance) {
            (Ok(_), Some(instance)) => {
                store.data_mut().release_service();
                Some(KeptInstance { hash: plugin.hash, store, instance, uses: prior_uses })
            }
            _ => None,
        };
        (finish(outcome, trace.text(), fuel_used, host_calls), kept)
    }
}

/// Most instances one [`InstanceCache`] keeps; past it the cache starts over.
pub const MAX_KEPT_PER_CACHE: usize = 4;

/// Where and how long an invocation may keep its instance.
pub struct Reuse<'a> {
    pub cache: &'a mut InstanceCache,
    /// One kept instance per key (per step).
    pub key: Uuid,
    /// Invocations per instance; 0 or 1 means a fresh instance every time.
    pub max_uses: u32,
}

/// Instances kept for reuse, owned by one thread (instances are not shared).
#[derive(Default)]
pub struct InstanceCache {
    slots: HashMap<Uuid, KeptInstance>,
}

struct KeptInstance {
    hash: AssemblyHash,
    store: Store<Sandbox>,
    instance: Plugin,
    uses: u32,
}

/// Most bytes a guest may pass to the host in one call or in its result (wasmtime's
/// hostcall fuel): room for the step's input and output limits in the canonical
/// ABI's representation.
fn hostcall_fuel(limits: &Limits) -> usize {
    let payload = limits.input_bytes.max(limits.output_bytes);
    usize::try_from(payload.saturating_mul(2).saturating_add(1 << 20)).unwrap_or(usize::MAX)
}

/// Names the cause of a failed call: a limit the host enforced, or the guest's own
/// fault. The message is for callers: no wasm backtrace.
fn classify(
    error: &wasmtime::Error,
    breach: Option<Breach>,
    trace_overflow: bool,
    instantiating: bool,
    limits: &Limits,
) -> Failure {
    let breach = if trace_overflow { Some(Breach::Trace) } else { breach };
    match breach {
        Some(Breach::Trace) => {
            return Failure::new(
                ErrorCode::TraceLimit,
                format!("the plug-in wrote more than {} bytes of trace", limits.trace_bytes),
            );
        }
        Some(Breach::HostCalls) => {
            return Failure::new(
                ErrorCode::HostCallLimit,
                format!("the plug-in made more than {} host calls", limits.host_calls),
            );
        }
        Some(Breach::Memory) => {
            return Failure::new(
                ErrorCode::MemoryLimit,
                format!("the plug-in tried to use more than {} bytes of memory", limits.memory_bytes),
            );
        }
        Some(Breach::Stopped) => {
            return Failure::new(ErrorCode::Stopped, "the job was canceled or paused while the plug-in ran: stopped");
        }
        None => {}
    }
    let timeout = || Failure::new(ErrorCode::Timeout, format!("the plug-in ran longer than {} ms", limits.timeout_ms));
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Failure::new(
            ErrorCode::PluginExited,
            format!("the plug-in called exit({}) instead of returning a result", exit.0),
        );
    }
    if error.downcast_ref::<sandbox::DeadlineExceeded>().is_some() {
        return timeout();
    }
    if error.chain().any(|e| e.to_string().contains("fuel allocated for hostcalls has been exhausted")) {
        return Failure::new(
            ErrorCode::TransferLimit,
            format!(
                "the plug-in passed more than {} bytes to the host in one call or in its result",
                hostcall_fuel(limits)
            ),
        );
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => {
            Failure::new(ErrorCode::OutOfFuel, format!("the plug-in used all of its {} fuel", limits.fuel))
        }
        Some(Trap::Interrupt) => timeout(),
        Some(Trap::StackOverflow) => Failure::new(ErrorCode::StackOverflow, "the plug-in exhausted its call stack"),
        Some(trap) => Failure::new(ErrorCode::Trap, format!("the plug-in trapped: {trap}")),
        None if instantiating => Failure::new(ErrorCode::InstantiationFailed, error.root_cause().to_string()),
        None => Failure::new(ErrorCode::Trap, error.root_cause().to_string()),
    }
}

/// 0.x versions are compatible within a minor version, others within a major one.
fn version_compatible(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.split(['-', '+']).next().unwrap_or(p).parse::<u64>());
    let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) else { return false };
    if WIT_VERSION.0 == 0 { major == 0 && minor == WIT_VERSION.1 } else { major == WIT_VERSION.0 }
}

/// A stable fingerprint of what compiled code this engine can load.
fn engine_fingerprint(engine: &Engine) -> String {
    use std::hash::Hash;
    struct Blake3Hasher(blake3::Hasher);
    impl std::hash::Hasher for Blake3Hasher {
        fn finish(&self) -> u64 {
            let bytes = self.0.finalize();
            u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = Blake3Hasher(blake3::Hasher::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.0.finalize().to_hex()[..16].to_owned()
}

/// Deserializes compiled code this host wrote itself.
#[allow(unsafe_code)]
fn deserialize_trusted(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: callers pass only bytes whose blake3 digest matches the one this host
    // recorded when it serialized them (see `Runtime::load_cached`), so they are
    // wasmtime's own output for this engine configuration.
    unsafe { Component::deserialize(engine, bytes) }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until dropped.
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("plughost-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch thread");
        EpochTicker { stop, thread: Some(thread) }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wit_versions_are_compatible_within_the_minor_version() {
        assert!(version_compatible("0.1.0"));
        assert!(version_compatible("0.1.7"));
        assert!(!version_compatible("0.2.0"));
        assert!(!version_compatible("1.1.0"));
        assert!(!version_compatible(""));
    }

    #[test]
    fn garbage_and_core_modules_are_refused_before_compiling() {
        let rt = Runtime::new(RuntimeConfig { pooling: false, ..Default::default() }, None).unwrap();
        assert!(matches!(rt.validate(b"hello world"), Err(ComponentError::NotWasm)));
        assert!(matches!(rt.validate(b"\0asm\x01\0\0\0"), Err(ComponentError::CoreModule)));
        assert!(matches!(rt.validate(b"\0asm\x0d\0\x01\0\xff\xff"), Err(ComponentError::Invalid(_))));
    }
}
