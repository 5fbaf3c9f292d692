//! The simulator runs the server's pipeline: steps by stage, images,
//! filtering attributes and shared variables, a custom message, and the records of
//! every run — checked with the `probe` test plug-in.

use plughost_simulator::plughost::model::{Entity, ParameterValue, Value};
use plughost_simulator::plughost::pipeline::{Request, Response};
use plughost_simulator::plughost::registry::{ImageKind, ImageSpec};
use plughost_simulator::{Simulator, step};
use plughost_test_support::artifacts::PROBE;

fn simulator() -> Simulator {
    let sim = Simulator::new().unwrap();
    sim.define("account", &[("name", "text"), ("creditlimit", "money"), ("description", "text")]).unwrap();
    sim.define(
        "audit",
        &[
            ("message", "text"),
            ("stage", "integer"),
            ("depth", "integer"),
            ("before", "text"),
            ("after", "text"),
            ("note", "text"),
        ],
    )
    .unwrap();
    sim.register("probe", PROBE).unwrap();
    sim
}

fn text(e: &Entity, attribute: &str) -> Option<String> {
    match e.attributes.get(attribute) {
        Some(Value::Text(t)) => Some(t.clone()),
        _ => None,
    }
}

#[test]
fn images_filtering_attributes_stages_and_shared_variables() {
    let sim = simulator();
    let mut share = step("probe", "Update", "account", "pre-operation");
    share.configuration = Some("share".into());
    sim.add_step(share).unwrap();
    let mut audit = step("probe", "Update", "account", "post-operation");
    audit.configuration = Some("audit".into());
    audit.filtering_attributes = vec!["name".into()];
    audit.images = vec![
        ImageSpec { kind: ImageKind::Pre, alias: "before".into(), attributes: vec!["name".into()] },
        ImageSpec { kind: ImageKind::Post, alias: "after".into(), attributes: vec!["name".into()] },
    ];
    sim.add_step(audit).unwrap();
    let id = sim.seed([Entity::new("account").with("name", Value::Text("Old".into()))]).unwrap()[0];

    let mut change = Entity::new("account").with("creditlimit", Value::Money("5.00".into()));
    change.id = Some(id);
    sim.update(change).unwrap();
    assert!(sim.records("audit").unwrap().is_empty(), "not a filtering attribute: the audit step did not fire");

    let mut rename = Entity::new("account").with("name", Value::Text("New".into()));
    rename.id = Some(id);
    sim.update(rename).unwrap();
    let audits = sim.records("audit").unwrap();
    assert_eq!(audits.len(), 1);
    let a = &audits[0];
    assert_eq!((text(a, "before"), text(a, "after")), (Some("Old".into()), Some("New".into())));
    assert_eq!(text(a, "note").as_deref(), Some("shared by probe"), "the pre-operation step ran first and shared");
    // Three runs: the share step twice (once per update), the audit step once.
    let stages: Vec<u32> = sim.runs().unwrap().iter().map(|r| r.context.stage.code()).collect();
    assert_eq!(stages, vec![20, 20, 40]);
}

#[test]
fn a_custom_message_answers_through_its_main_operation_step() {
    let sim = simulator();
    let mut greet = step("probe", "Greet", "account", "main-operation");
    greet.entity = None;
    greet.configuration = Some("greet".into());
    sim.add_step(greet).unwrap();
    let parameters = [("Name".to_owned(), ParameterValue::Value(Value::Text("Ada".into())))].into();
    let answer = sim.send(Request::Custom { message: "Greet".into(), target: None, parameters }).unwrap();
    let Response::Custom(out) = answer else { panic!("{answer:?}") };
    assert!(matches!(&out["Greeting"], ParameterValue::Value(Value::Text(t)) if t.contains("Ada")), "{out:?}");
    assert_eq!(sim.runs().unwrap().len(), 1);
    sim.clear_runs().unwrap();
    assert!(sim.runs().unwrap().is_empty());
}
