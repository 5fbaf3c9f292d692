//! Outcomes and limits: every hostile behaviour fails alone with its own code.

use std::sync::Arc;

use plughost::memdata::{MemoryData, Write};
use plughost::model::{ExecutionContext, ParameterValue, Stage, Value};
use plughost::runtime::{ErrorCode, LimitOverrides, Limits, NoData};
use plughost_test_support::artifacts;
use uuid::Uuid;

use super::{create_context, load, runtime};

fn hostile(mode: &str) -> ExecutionContext {
    ExecutionContext { configuration: Some(mode.into()), ..Default::default() }
}

fn limits(pairs: &[&str]) -> Limits {
    let mut o = LimitOverrides::default();
    for p in pairs {
        o.set(p).unwrap();
    }
    Limits::default().with(&o)
}

#[test]
fn every_hostile_plugin_fails_alone_with_its_own_code() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::HOSTILE);
    let cases: &[(&str, &[&str], ErrorCode)] = &[
        ("fail", &[], ErrorCode::PluginError),
        ("retry", &[], ErrorCode::PluginRetryable),
        ("loop", &["fuel=50000000"], ErrorCode::OutOfFuel),
        ("loop", &["fuel=1000000000000000", "timeout=200ms"], ErrorCode::Timeout),
        ("memory", &["memory=16MiB"], ErrorCode::MemoryLimit),
        ("recursion", &[], ErrorCode::StackOverflow),
        ("trap", &[], ErrorCode::Trap),
        ("trace-flood", &["trace=4KiB"], ErrorCode::TraceLimit),
        ("stdout-flood", &["trace=4KiB"], ErrorCode::TraceLimit),
        ("huge-output", &[], ErrorCode::OutputTooLarge),
        ("call-storm", &["host_calls=500"], ErrorCode::HostCallLimit),
        ("bad-output", &[], ErrorCode::InvalidOutput),
    ];
    for (mode, pairs, code) in cases {
        let lim = limits(pairs);
        let inv = rt.invoke(&plugin, &hostile(mode), &lim, Arc::new(NoData));
        let failure = inv.failure().unwrap_or_else(|| panic!("{mode} succeeded"));
        assert_eq!(failure.code, *code, "{mode}: {}", failure.message);
        assert!(inv.fuel_used <= lim.fuel, "{mode} used more fuel than its budget");
        // The host is unharmed: the next invocation of the same plug-in works.
        let ok = rt.invoke(&plugin, &hostile("ok"), &Limits::default(), Arc::new(NoData));
        assert!(ok.outcome.is_ok(), "after {mode}: {:?}", ok.outcome);
    }
}

#[test]
fn a_looping_plugin_does_not_hold_up_others_on_other_threads() {
    let rt = Arc::new(runtime());
    let plugin = load(&rt, artifacts::HOSTILE);
    let looping = {
        let (rt, plugin) = (rt.clone(), plugin.clone());
        std::thread::spawn(move || {
            rt.invoke(&plugin, &hostile("loop"), &limits(&["fuel=1000000000000000", "timeout=2s"]), Arc::new(NoData))
        })
    };
    for _ in 0..50 {
        let ok = rt.invoke(&plugin, &hostile("ok"), &Limits::default(), Arc::new(NoData));
        assert!(ok.outcome.is_ok());
    }
    assert_eq!(looping.join().unwrap().failure().unwrap().code, ErrorCode::Timeout);
}

#[test]
fn success_carries_outputs_trace_and_fuel() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::HOSTILE);
    let inv = rt.invoke(&plugin, &hostile("stdio"), &Limits::default(), Arc::new(NoData));
    let result = inv.outcome.as_ref().unwrap();
    assert_eq!(result.output_parameters["message"], ParameterValue::Value(Value::Text("ok".into())));
    assert_eq!(inv.trace, "hello from stdout\nhello from stderr\n");
    assert!(inv.fuel_used > 0);
    // Fuel is deterministic: the same call costs the same.
    let again = rt.invoke(&plugin, &hostile("stdio"), &Limits::default(), Arc::new(NoData));
    assert_eq!(again.fuel_used, inv.fuel_used);
}

#[test]
fn an_oversized_context_is_refused_before_the_plugin_runs() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::HOSTILE);
    let mut ctx = hostile("ok");
    ctx.shared_variables.insert("blob".into(), Value::Text("x".repeat(100_000)));
    let inv = rt.invoke(&plugin, &ctx, &limits(&["input=64KiB"]), Arc::new(NoData));
    assert_eq!(inv.failure().unwrap().code, ErrorCode::InputTooLarge);
    assert_eq!(inv.fuel_used, 0);
}

#[test]
fn account_number_fills_the_number_and_rejects_bad_input() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::ACCOUNT_NUMBER);
    let ctx = create_context(Stage::PreOperation, &[("name", Value::Text("Contoso".into()))]);
    let inv = rt.invoke(&plugin, &ctx, &Limits::default(), Arc::new(NoData));
    let result = inv.outcome.unwrap();
    let ParameterValue::Entity(target) = &result.input_parameters["Target"] else { panic!("no Target") };
    assert_eq!(target.attributes["accountnumber"], Value::Text("AC-2D052440".into()));
    assert!(inv.trace.contains("assigned account number AC-2D052440"));

    let mut configured = ctx.clone();
    configured.configuration = Some("ACME-".into());
    let inv = rt.invoke(&plugin, &configured, &Limits::default(), Arc::new(NoData));
    let ParameterValue::Entity(target) = &inv.outcome.unwrap().input_parameters["Target"] else { panic!() };
    assert_eq!(target.attributes["accountnumber"], Value::Text("ACME-2D052440".into()));

    let nameless = create_context(Stage::PreOperation, &[("name", Value::Text("  ".into()))]);
    let failure = rt.invoke(&plugin, &nameless, &Limits::default(), Arc::new(NoData)).outcome.unwrap_err();
    assert_eq!(failure.code, ErrorCode::PluginError);
    assert!(failure.message.contains("needs a name"), "{}", failure.message);

    let negative = create_context(
        Stage::PreOperation,
        &[("name", Value::Text("A".into())), ("creditlimit", Value::Money("-5".into()))],
    );
    let failure = rt.invoke(&plugin, &negative, &Limits::default(), Arc::new(NoData)).outcome.unwrap_err();
    assert!(failure.message.contains("cannot be negative"), "{}", failure.message);
}

#[test]
fn follow_up_task_creates_a_record_through_the_organization_service() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::FOLLOW_UP_TASK);
    let account_id = Uuid::new_v4();
    let mut ctx = create_context(Stage::PostOperation, &[("name", Value::Text("Fabrikam".into()))]);
    ctx.primary_entity_id = Some(account_id);
    let data = Arc::new(MemoryData::default());
    let inv = rt.invoke(&plugin, &ctx, &Limits::default(), data.clone());
    let result = inv.outcome.unwrap();
    let writes = data.writes();
    assert_eq!(writes.len(), 1);
    let Write::Create { record } = &writes[0] else { panic!("{writes:?}") };
    assert_eq!(record.logical_name, "task");
    assert_eq!(record.attributes["subject"], Value::Text("Follow up with Fabrikam".into()));
    let Value::Reference(regarding) = &record.attributes["regardingobjectid"] else { panic!() };
    assert_eq!(regarding.id, account_id);
    assert_eq!(record.attributes["scheduledend"], Value::DateTime(ctx.operation_created_on + 7 * 24 * 3600 * 1000));
    assert_eq!(result.shared_variables["followup_task_id"], Value::Guid(record.id.unwrap()));
    assert_eq!(inv.host_calls, 2, "one create, one trace");

    // Without a data service the plug-in gets a service error and reports it.
    let failure = rt.invoke(&plugin, &ctx, &Limits::default(), Arc::new(NoData)).outcome.unwrap_err();
    assert_eq!(failure.code, ErrorCode::PluginError);
    assert!(failure.message.contains("Denied"), "{}", failure.message);
}

#[test]
fn a_step_may_reuse_an_instance_and_loses_it_on_failure() {
    use plughost::runtime::{InstanceCache, Reuse};
    let rt = runtime();
    let probe = load(&rt, artifacts::PROBE);
    let mut cache = InstanceCache::default();
    let key = Uuid::new_v4();
    let count = |cache: &mut InstanceCache, max: u32| {
        let ctx = ExecutionContext { configuration: Some("count".into()), ..Default::default() };
        let reuse = Reuse { cache, key, max_uses: max };
        let inv = rt.invoke_reusing(reuse, &probe, &ctx, &Limits::default(), Arc::new(NoData));
        match &inv.outcome.unwrap().output_parameters["count"] {
            ParameterValue::Value(Value::Integer(n)) => *n,
            other => panic!("{other:?}"),
        }
    };
    // Fresh instances every time by default: state never carries over.
    assert_eq!((count(&mut cache, 0), count(&mut cache, 0)), (1, 1));
    // Reuse for up to three invocations, then a fresh instance.
    let runs: Vec<i64> = (0..7).map(|_| count(&mut cache, 3)).collect();
    assert_eq!(runs, vec![1, 2, 3, 1, 2, 3, 1]);
    // A failure discards the kept instance.
    let fail = ExecutionContext { configuration: Some("nonsense".into()), ..Default::default() };
    let reuse = Reuse { cache: &mut cache, key, max_uses: 3 };
    assert!(rt.invoke_reusing(reuse, &probe, &fail, &Limits::default(), Arc::new(NoData)).outcome.is_err());
    assert_eq!(count(&mut cache, 3), 1);
}

#[test]
fn a_plugin_blocked_in_wasi_stops_at_its_timeout() {
    let rt = Arc::new(runtime());
    let plugin = load(&rt, artifacts::HOSTILE);
    // Ten minutes of sleep against a 300 ms budget: the wait ends at the deadline.
    let (tx, rx) = std::sync::mpsc::channel();
    let (r, p) = (rt.clone(), plugin.clone());
    std::thread::spawn(move || {
        let inv = r.invoke(&p, &hostile("sleep:600000"), &limits(&["timeout=300ms"]), Arc::new(NoData));
        let _ = tx.send(inv);
    });
    let inv = rx.recv_timeout(std::time::Duration::from_secs(60)).expect("the sleeping plug-in was not stopped");
    let failure = inv.failure().expect("a plug-in stopped at its deadline fails");
    assert_eq!(failure.code, ErrorCode::Timeout, "{}", failure.message);
    // A short sleep within the budget is fine.
    let ok = rt.invoke(&plugin, &hostile("sleep:20"), &limits(&["timeout=5s"]), Arc::new(NoData));
    assert!(ok.outcome.is_ok(), "{:?}", ok.outcome);
}

#[test]
fn failures_are_named_by_their_cause_without_backtraces() {
    let rt = runtime();
    let plugin = load(&rt, artifacts::HOSTILE);
    // WASI p2 exits with success or failure: exit(3) is seen as exit(1).
    for (code, seen) in [(0, 0), (3, 1)] {
        let inv = rt.invoke(&plugin, &hostile(&format!("exit:{code}")), &Limits::default(), Arc::new(NoData));
        let failure = inv.failure().unwrap();
        assert_eq!(failure.code, ErrorCode::PluginExited, "exit({code}): {}", failure.message);
        assert!(failure.message.contains(&format!("exit({seen})")), "{}", failure.message);
    }
    let trapped = rt.invoke(&plugin, &hostile("trap"), &Limits::default(), Arc::new(NoData));
    let failure = trapped.failure().unwrap();
    assert_eq!(failure.code, ErrorCode::Trap);
    assert!(!failure.message.contains("backtrace") && !failure.message.contains("0x"), "{}", failure.message);
    assert!(trapped.trace.contains("[plughost] trap") && trapped.trace.contains("backtrace"), "{}", trapped.trace);
    // More than the host copies in one result: a limit, not a trap.
    let huge = rt.invoke(&plugin, &hostile("huge-output"), &limits(&["input=1MiB", "output=1MiB"]), Arc::new(NoData));
    assert_eq!(huge.failure().unwrap().code, ErrorCode::TransferLimit, "{:?}", huge.failure());
}

#[test]
fn a_component_whose_memory_starts_above_the_host_maximum_is_refused() {
    use plughost::runtime::{ComponentError, Runtime, RuntimeConfig};
    let bytes = plughost_test_support::wasm(artifacts::HUGE_MEMORY);
    for pooling in [true, false] {
        let small =
            Runtime::new(RuntimeConfig { pooling, max_memory_bytes: 64 << 20, ..Default::default() }, None).unwrap();
        let err = small.validate(&bytes).map(|_| ()).unwrap_err();
        assert!(matches!(err, ComponentError::ExceedsHostLimits(_)), "pooling {pooling}: {err}");
        assert_eq!(err.code(), "exceeds_host_limits");
        assert!(err.to_string().contains("runtime.max_memory_bytes"), "{err}");
    }
    let roomy = Runtime::new(RuntimeConfig { pooling: false, ..Default::default() }, None).unwrap();
    assert!(roomy.validate(&bytes).is_ok(), "a host with room for it takes it");
}

#[test]
fn a_full_instance_pool_delays_an_invocation_instead_of_failing_it() {
    use plughost::runtime::{Runtime, RuntimeConfig};
    let rt = Arc::new(Runtime::new(RuntimeConfig { max_instances: 2, ..Default::default() }, None).unwrap());
    let plugin = load(&rt, artifacts::HOSTILE);
    // Three slow invocations for two instances: whichever comes third waits for a slot.
    let runs: Vec<_> = (0..3)
        .map(|_| {
            let (rt, plugin) = (rt.clone(), plugin.clone());
            std::thread::spawn(move || rt.invoke(&plugin, &hostile("sleep:500"), &Limits::default(), Arc::new(NoData)))
        })
        .collect();
    for r in runs {
        let inv = r.join().unwrap();
        assert!(inv.outcome.is_ok(), "{:?}", inv.outcome);
    }
}
