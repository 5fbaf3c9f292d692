//! `follow-up-task` in the pipeline simulator: as an asynchronous post-operation
//! step of Create it queues a system job; running the job creates the task regarding
//! the account. Runs on the host (`cargo test -p plughost-simulator`).

use plughost_simulator::plughost::jobs::JobStatus;
use plughost_simulator::plughost::model::{Entity, Mode, Value};
use plughost_simulator::{Simulator, step};
use plughost_test_support::artifacts::FOLLOW_UP_TASK;

#[test]
fn an_asynchronous_step_queues_a_job_that_creates_the_follow_up_task() {
    let sim = Simulator::new().unwrap();
    sim.define("account", &[("name", "text")]).unwrap();
    sim.define("task", &[("subject", "text"), ("regardingobjectid", "reference"), ("scheduledend", "datetime")])
        .unwrap();
    sim.register("follow-up", FOLLOW_UP_TASK).unwrap();
    let mut spec = step("follow-up", "Create", "account", "post-operation");
    spec.mode = Mode::Asynchronous;
    sim.add_step(spec).unwrap();
    // A record that exists before the test: seeding runs no step.
    sim.seed([Entity::new("account").with("name", Value::Text("Seeded".into()))]).unwrap();
    assert!(sim.jobs().unwrap().is_empty());

    let id = sim.create(Entity::new("account").with("name", Value::Text("Contoso".into()))).unwrap();
    let jobs = sim.jobs().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, JobStatus::WaitingForResources);
    assert!(sim.records("task").unwrap().is_empty(), "nothing runs until the job does");

    assert_eq!(sim.run_jobs().unwrap(), 1);
    assert_eq!(sim.jobs().unwrap()[0].status, JobStatus::Succeeded);
    let tasks = sim.records("task").unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].attributes["subject"], Value::Text("Follow up with Contoso".into()));
    match &tasks[0].attributes["regardingobjectid"] {
        Value::Reference(r) => assert_eq!(r.id, id),
        other => panic!("regardingobjectid is {other:?}"),
    }
    let run = sim.runs().unwrap().pop().unwrap();
    assert_eq!(run.job_id, Some(jobs[0].id));
    assert_eq!(run.calls.len(), 1, "one create through the organization service");
    assert!(run.invocation.trace.contains("created follow-up task"));
}
