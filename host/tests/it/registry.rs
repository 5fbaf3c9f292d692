//! Registration against a real store file: idempotent by hash, refusals store
//! nothing, upgrades re-point, unregistration rules, store version checks.

use std::sync::Arc;

use plughost::model::{Mode, Stage};
use plughost::registry::{self, RegistryError, StepSpec};
use plughost::runtime::{ArtifactIndex, Origin, Runtime, RuntimeConfig};
use plughost::store::{STORE_FILE, Store, StoreError};
use plughost_test_support::{artifacts, wasm};

use super::runtime;

fn step(message: &str, stage: Stage) -> StepSpec {
    StepSpec {
        message: message.into(),
        entity: Some("account".into()),
        stage,
        mode: Mode::Synchronous,
        ..Default::default()
    }
}

fn assert_empty(store: &Store) {
    assert!(store.assemblies().unwrap().is_empty(), "an assembly was stored");
    assert!(store.plugins().unwrap().is_empty(), "a plug-in was stored");
    assert!(store.steps().unwrap().is_empty(), "a step was stored");
}

#[test]
fn registering_the_same_bytes_twice_is_one_assembly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rt = runtime();
    let bytes = wasm(artifacts::ACCOUNT_NUMBER);
    let first =
        registry::register(&store, &rt, &bytes, "numbers", None, vec![step("Create", Stage::PreOperation)]).unwrap();
    assert!(first.assembly_is_new);
    assert_eq!(first.assembly.wit_version, "0.1.0");
    let again = registry::register(&store, &rt, &bytes, "numbers", None, vec![]).unwrap();
    assert!(!again.assembly_is_new);
    assert_eq!(again.previous_assembly, None);
    let other_name = registry::register(&store, &rt, &bytes, "numbers-2", None, vec![]).unwrap();
    assert_eq!(other_name.assembly.hash, first.assembly.hash);
    assert_eq!(store.assemblies().unwrap().len(), 1);
    assert_eq!(store.plugins().unwrap().len(), 2);
    assert_eq!(store.steps().unwrap().len(), 1);
    assert_eq!(store.assembly_bytes(&first.assembly.hash).unwrap().unwrap(), bytes);
}

#[test]
fn bad_components_are_refused_with_their_own_code_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rt = runtime();
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let truncated = wasm(artifacts::HOSTILE)[..500].to_vec();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage", b"MZ this is not wasm".to_vec(), "not_wasm"),
        ("empty", Vec::new(), "not_wasm"),
        ("core module", core_module, "core_module"),
        ("truncated", truncated, "invalid_component"),
        ("other world", wasm(artifacts::OTHER_WORLD), "wrong_world"),
        ("future version", wasm(artifacts::FUTURE_VERSION), "incompatible_wit_version"),
    ];
    for (what, bytes, code) in cases {
        let err =
            registry::register(&store, &rt, &bytes, "p", None, vec![step("Create", Stage::PreOperation)]).unwrap_err();
        assert_eq!(err.code(), code, "{what}: {err}");
        assert_empty(&store);
    }
    let err = registry::register(&store, &rt, &wasm(artifacts::FUTURE_VERSION), "p", None, vec![]).unwrap_err();
    assert!(err.to_string().contains("plughost:plugin@0.2.0"), "{err}");
}

#[test]
fn an_invalid_step_stores_nothing_either() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let bytes = wasm(artifacts::ACCOUNT_NUMBER);
    let bad = StepSpec { mode: Mode::Asynchronous, ..step("Create", Stage::PreOperation) };
    let err = registry::register(&store, &runtime(), &bytes, "p", None, vec![bad]).unwrap_err();
    assert!(matches!(err, RegistryError::Invalid(_)), "{err}");
    assert_empty(&store);
}

#[test]
fn new_bytes_under_an_existing_name_upgrade_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let rt = runtime();
    let v1 =
        registry::register(&store, &rt, &wasm(artifacts::ACCOUNT_NUMBER), "p", Some("first".into()), vec![]).unwrap();
    let v2 = registry::register(&store, &rt, &wasm(artifacts::HOSTILE), "p", None, vec![]).unwrap();
    assert_eq!(v2.previous_assembly, Some(v1.assembly.hash));
    let plugin = store.plugin("p").unwrap().unwrap();
    assert_eq!(plugin.assembly, v2.assembly.hash);
    assert_eq!(plugin.description.as_deref(), Some("first"));
    // The old assembly is unreferenced now and can be removed; the new one cannot.
    assert!(matches!(store.unregister_assembly(&v2.assembly.hash), Err(StoreError::Conflict(_))));
    store.unregister_assembly(&v1.assembly.hash).unwrap();
    assert_eq!(store.assemblies().unwrap().len(), 1);
}

#[test]
fn a_plugin_with_steps_is_removed_only_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    registry::register(
        &store,
        &runtime(),
        &wasm(artifacts::ACCOUNT_NUMBER),
        "p",
        None,
        vec![step("Create", Stage::PreOperation)],
    )
    .unwrap();
    assert!(matches!(store.unregister_plugin("p", false), Err(StoreError::Conflict(_))));
    assert_eq!(store.plugins().unwrap().len(), 1);
    let (_, steps) = store.unregister_plugin("p", true).unwrap();
    assert_eq!(steps.len(), 1);
    assert!(store.steps().unwrap().is_empty());
    assert!(matches!(store.unregister_plugin("p", true), Err(StoreError::NotFound(_))));
}

#[test]
fn the_compile_cache_survives_a_restart_and_rejects_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = wasm(artifacts::ACCOUNT_NUMBER);
    let hash = plughost::model::AssemblyHash::of(&bytes);
    let config = RuntimeConfig { cache_dir: Some(dir.path().join("cache")), ..Default::default() };
    let start =
        |store: &Arc<Store>| Runtime::new(config.clone(), Some(store.clone() as Arc<dyn ArtifactIndex>)).unwrap();
    {
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let rt = start(&store);
        assert_eq!(rt.load(&hash, || Ok(bytes.clone())).unwrap().origin, Origin::Compiled);
        assert_eq!(rt.stats().compiled, 1);
    }
    {
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let rt = start(&store);
        let loaded = rt.load(&hash, || panic!("the cache should have served this")).unwrap();
        assert_eq!(loaded.origin, Origin::DiskCache);
        assert_eq!(rt.stats().compiled, 0);
    }
    // Flip a byte in the cached artifact: it is detected and recompiled, not loaded.
    let cached =
        walk(&dir.path().join("cache")).into_iter().find(|p| p.extension().is_some_and(|e| e == "cwasm")).unwrap();
    let mut artifact = std::fs::read(&cached).unwrap();
    let mid = artifact.len() / 2;
    artifact[mid] ^= 0xff;
    std::fs::write(&cached, artifact).unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let rt = start(&store);
    assert_eq!(rt.load(&hash, || Ok(bytes.clone())).unwrap().origin, Origin::Compiled);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}

#[test]
fn a_store_from_a_newer_plughost_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    {
        let db = redb::Database::create(dir.path().join(STORE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(redb::TableDefinition::<&[u8], &[u8]>::new("kv:meta")).unwrap();
            // The key as the store encodes a string; codec format 1, bincode varint 99.
            meta.insert(b"schema_version\x00\x01".as_slice(), [1u8, 99].as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { found: 99, .. }), "{err}");
    assert!(err.to_string().contains("upgrade plughost"));

    // The same on PostgreSQL: a newer data layout, and a newer SQL schema.
    let Some(pg) = plughost_test_support::postgres::server() else { return };
    let url = pg.database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    drop(Store::open_postgres(&url, 2).unwrap());
    pg.psql(
        &db,
        "UPDATE plughost_kv SET v = '\\x0163' WHERE t = 0 AND k = 'schema_version'::bytea || '\\x0001'::bytea",
    );
    let err = Store::open_postgres(&url, 2).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { found: 99, .. }), "{err}");
    pg.psql(&db, "INSERT INTO plughost_migrations (version) VALUES (42)");
    let err = Store::open_postgres(&url, 2).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { found: 42, .. }), "{err}");
}

#[test]
fn a_damaged_or_busy_store_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STORE_FILE), vec![0x5a; 64 << 10]).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert_eq!(err.code(), "store_corrupt", "{err}");

    let dir = tempfile::tempdir().unwrap();
    let _held = Store::open(dir.path()).unwrap();
    let err = Store::open(dir.path()).unwrap_err();
    assert!(matches!(err, StoreError::Locked(_)), "{err}");
}
