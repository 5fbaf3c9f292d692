//! `account-number` in the pipeline simulator: as a pre-operation step of Create it
//! fills the number, keeps a caller's own, and rejects a nameless account (nothing
//! is stored). Runs on the host (`cargo test -p plughost-simulator`).

use plughost_simulator::plughost::model::{Entity, Value};
use plughost_simulator::plughost::pipeline::PipelineError;
use plughost_simulator::{Simulator, step};
use plughost_test_support::artifacts::ACCOUNT_NUMBER;

fn simulator(config: Option<&str>) -> Simulator {
    let sim = Simulator::new().unwrap();
    sim.define("account", &[("name", "text"), ("accountnumber", "text"), ("creditlimit", "money")]).unwrap();
    sim.register("account-number", ACCOUNT_NUMBER).unwrap();
    let mut spec = step("account-number", "Create", "account", "pre-operation");
    spec.configuration = config.map(str::to_owned);
    sim.add_step(spec).unwrap();
    sim
}

fn account(name: &str) -> Entity {
    Entity::new("account").with("name", Value::Text(name.into()))
}

#[test]
fn a_new_account_gets_a_number_from_its_name_and_the_configured_prefix() {
    let sim = simulator(Some("ACME-"));
    let id = sim.create(account("Contoso")).unwrap();
    let stored = sim.record("account", id).unwrap().unwrap();
    assert_eq!(stored.attributes["accountnumber"], Value::Text("ACME-2D052440".into()));
    assert!(sim.trace().unwrap().contains("assigned account number ACME-2D052440 to 'Contoso'"));
    let runs = sim.runs().unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].context.stage.code(), 20);
}

#[test]
fn a_callers_number_is_kept_and_a_nameless_account_is_rejected() {
    let sim = simulator(None);
    let id = sim.create(account("Fabrikam").with("accountnumber", Value::Text("OWN-1".into()))).unwrap();
    assert_eq!(sim.record("account", id).unwrap().unwrap().attributes["accountnumber"], Value::Text("OWN-1".into()));

    let err = sim.create(account("  ")).unwrap_err();
    let err = err.downcast::<PipelineError>().unwrap();
    assert_eq!(err.code(), "plugin_error");
    assert!(err.to_string().contains("An account needs a name"), "{err}");
    assert_eq!(sim.records("account").unwrap().len(), 1, "nothing of the rejected create is stored");
    let negative = sim.create(account("N").with("creditlimit", Value::Money("-5.00".into()))).unwrap_err();
    assert!(negative.to_string().contains("cannot be negative"), "{negative}");
}
