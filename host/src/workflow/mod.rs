//! Workflows (Dataverse background workflows): declarative processes on one entity,
//! started by record events, on demand or by another workflow, run by the
//! asynchronous service as system jobs (operation type 10).
//!
//! This module is the definition format and its rules, pure: parsing, validation
//! against entity definitions and the other workflows, conditions, value templates,
//! and the run's position (`state`). Running a step is the pipeline's
//! (`pipeline/workflow.rs`); storing definitions, versions, log rows and wait
//! subscriptions is the store's (`store/workflows.rs`); the operations users call are
//! `ops.rs`.
//!
//! The format is documented in `docs/workflows.md` and by the JSON Schema in
//! `docs/workflow.schema.json`.

pub mod ops;
pub mod state;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::metadata::{AttributeType, EntityDefinition};
use crate::model::{Filter, Value, check_name};

/// The most steps one definition holds, counting those inside branches.
pub const MAX_STEPS: usize = 200;
/// How deeply conditions and waits may nest.
pub const MAX_NESTING: usize = 8;
/// The largest definition accepted, in bytes of JSON.
pub const MAX_DEFINITION_BYTES: usize = 256 * 1024;
/// A run started by a chain of more workflow runs than this (in one correlation, e.g.
/// a workflow that updates its own record and is triggered by that update) fails
/// with [`LOOP_CODE`] before it does anything: Dataverse's infinite loop guard.
pub const LOOP_LIMIT: u32 = 16;
/// The error code of a run stopped by the loop guard.
pub const LOOP_CODE: &str = "workflow_loop";
/// The most steps one run of a job executes before it commits what it did and goes
/// on in a new run (a long workflow does not hold one transaction open).
pub const STEPS_PER_RUN: usize = 64;
/// The most parameters an activity passes or a log row keeps, each at most this many bytes of text.
pub const MAX_LOG_TEXT: usize = 4096;

/// A workflow definition, as users write it (JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Unique name: lower-case letters, digits, '-' and '_'.
    pub name: String,
    /// The primary entity: the records it runs on.
    pub entity: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub triggers: Triggers,
    /// Delete a run's system job (and its log) once it succeeds (Dataverse's
    /// "automatically delete completed workflow jobs"); failed and canceled runs stay.
    #[serde(default)]
    pub delete_completed_runs: bool,
    pub steps: Vec<Step>,
}

/// When a workflow starts (Dataverse's "Start when").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Triggers {
    /// A record is created.
    pub create: bool,
    /// A record is updated and one of these attributes changes (an empty list: any
    /// update). Absent: updates do not start it.
    pub update: Option<Vec<String>>,
    /// A record is deleted (the run sees the record as it was).
    pub delete: bool,
    /// The record's `statecode` or `statuscode` changes.
    pub status_change: bool,
    /// Users may start it on a record (`workflows run`).
    pub on_demand: bool,
    /// Other workflows may start it (`child` steps).
    pub child: bool,
}

/// One step: an optional id (to name its outputs: `{{steps.ID.NAME}}`) and what it does.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub id: Option<String>,
    pub action: Action,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Check condition / conditional branch / default action: the first branch whose
    /// `when` holds runs (a last branch without `when` is the default); then the
    /// steps after this one.
    Condition { branches: Vec<Branch> },
    /// Wait condition / parallel wait branches: the run waits until one branch's
    /// `until` holds on the record (re-checked whenever a watched attribute changes)
    /// or its `timeout` passes, then runs that branch.
    Wait { branches: Vec<WaitBranch> },
    /// Creates a record; its id is the step's output `id`.
    Create { entity: String, attributes: BTreeMap<String, Value> },
    /// Updates the primary record, or `target` (a template giving a reference) of `entity`.
    Update {
        #[serde(default)]
        target: Option<String>,
        #[serde(default)]
        entity: Option<String>,
        attributes: BTreeMap<String, Value>,
    },
    /// Assigns the primary record to a user (a user name or a template giving a user reference or id).
    Assign { owner: String },
    /// Changes the primary record's `statecode` and `statuscode`.
    SetStatus { statecode: i32, statuscode: i32 },
    /// Creates an `email` record (to, subject, body; regarding the primary record when
    /// the entity has a `regardingobjectid` reference), for the mail sender.
    SendEmail { to: String, subject: String, body: String },
    /// Starts another workflow (one with the `child` trigger) on the primary record.
    Child { workflow: String },
    /// Ends the run: succeeded, or canceled, with a message.
    Stop {
        #[serde(default)]
        status: StopStatus,
        #[serde(default)]
        message: String,
    },
    /// Calls a registered plug-in with `inputs` (templates allowed); its output
    /// parameters are the step's outputs. The plug-in sees message `message` (default
    /// `WorkflowActivity`) on the primary record.
    Activity {
        plugin: String,
        #[serde(default)]
        message: Option<String>,
        /// The plug-in's configuration string (what a step's configuration is).
        #[serde(default)]
        configuration: Option<String>,
        #[serde(default)]
        inputs: BTreeMap<String, Value>,
    },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopStatus {
    #[default]
    Succeeded,
    Canceled,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Branch {
    /// Absent on the last branch only: the default.
    #[serde(default)]
    pub when: Option<Filter>,
    #[serde(default)]
    pub steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitBranch {
    /// The branch runs once this holds on the record (exclusive with `timeout`).
    #[serde(default)]
    pub until: Option<Filter>,
    /// The branch runs once this time passes (exclusive with `until`).
    #[serde(default)]
    pub timeout: Option<Timeout>,
    #[serde(default)]
    pub steps: Vec<Step>,
}

/// When a wait's time limit falls: a fixed time, a duration after the wait began, or
/// a date attribute of the record plus or minus an offset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeout {
    /// RFC 3339 time.
    #[serde(default)]
    pub at: Option<String>,
    /// A duration after the run first reached the wait: `90s`, `30m`, `12h`, `2d`.
    #[serde(default)]
    pub after: Option<String>,
    /// A datetime attribute of the record...
    #[serde(default)]
    pub attribute: Option<String>,
    /// ...plus this offset (`-1h`, `2d`; default 0).
    #[serde(default)]
    pub offset: Option<String>,
}

impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = serde_json::to_value(&self.action).map_err(serde::ser::Error::custom)?;
        if let (Some(id), Some(map)) = (&self.id, v.as_object_mut()) {
            map.insert("id".into(), serde_json::Value::String(id.clone()));
        }
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut map = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let id = match map.remove("id") {
            None => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(other) => return Err(serde::de::Error::custom(format!("a step's id must be text, got {other}"))),
        };
        let action = Action::deserialize(serde_json::Value::Object(map)).map_err(serde::de::Error::custom)?;
        Ok(Step { id, action })
    }
}

/// A duration such as `90s`, `30m`, `12h`, `2d` (with an optional sign), in ms.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let bad =
        || format!("bad duration '{s}': a whole number with s, m, h or d (e.g. 90s, 30m, 12h, 2d), optionally signed");
    let (sign, rest) = match s.strip_prefix('-') {
        Some(r) => (-1, r),
        None => (1, s.strip_prefix('+').unwrap_or(s)),
    };
    let unit = match rest.chars().last().ok_or_else(bad)? {
        's' => 1000i64,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return Err(bad()),
    };
    let n: i64 = rest[..rest.len() - 1].parse().map_err(|_| bad())?;
    if !(0..=36_500 * 86_400_000 / unit).contains(&n) {
        return Err(format!("bad duration '{s}': at most 100 years"));
    }
    Ok(sign * n * unit)
}

/// The name a definition gives itself, read without parsing the rest (to say which
/// workflow a file updates, or what an audit entry is about).
pub fn definition_name(json: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Named {
        name: String,
    }
    serde_json::from_slice::<Named>(json).ok().map(|n| n.name)
}

/// A workflow's name: 1 to 64 of lower-case letters, digits, '-' and '_', starting with a letter.
pub fn check_workflow_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a workflow name: 1 to 64 lower-case letters, digits, '-' and '_', starting with a letter"
        ))
    }
}

/// Attributes every record has besides its definition's.
pub const SYSTEM_ATTRIBUTES: [&str; 6] = ["id", "createdon", "modifiedon", "ownerid", "createdby", "modifiedby"];

/// What validation needs to know beyond the definition itself.
pub trait Catalog {
    fn entity(&self, name: &str) -> Option<EntityDefinition>;
    fn plugin_exists(&self, name: &str) -> bool;
    /// Another workflow by name: its entity, whether it may run as a child, and the
    /// workflows its own `child` steps start.
    fn workflow(&self, name: &str) -> Option<(String, bool, Vec<String>)>;
    fn user_exists(&self, name: &str) -> bool;
}

impl Definition {
    /// Parses a definition from JSON, naming the place of a syntax or shape error.
    pub fn parse(json: &[u8]) -> Result<Definition, String> {
        if json.len() > MAX_DEFINITION_BYTES {
            return Err(format!(
                "the definition is {} bytes, more than the limit of {MAX_DEFINITION_BYTES}",
                json.len()
            ));
        }
        serde_json::from_slice(json).map_err(|e| format!("the workflow definition is not valid: {e}"))
    }

    /// The definition as stored and shown: pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a definition serializes")
    }

    /// The workflows this one's `child` steps start.
    pub fn children(&self) -> Vec<String> {
        let mut out = BTreeSet::new();
        walk(&self.steps, &mut |s| {
            if let Action::Child { workflow } = &s.action {
                out.insert(workflow.clone());
            }
        });
        out.into_iter().collect()
    }

    /// The attributes the triggers watch on update (for the step index).
    pub fn fires_on_update(&self, changed: &dyn Fn(&str) -> bool) -> bool {
        let status = self.triggers.status_change && (changed("statecode") || changed("statuscode"));
        let update = match &self.triggers.update {
            None => false,
            Some(attrs) if attrs.is_empty() => true,
            Some(attrs) => attrs.iter().any(|a| changed(a)),
        };
        status || update
    }

    /// Checks everything that can be checked before a run: names, attributes, step
    /// ids and the outputs templates use, plug-ins, users, child workflows (and
    /// that they form no cycle), timeouts, and the limits.
    pub fn validate(&self, catalog: &dyn Catalog) -> Result<(), String> {
        check_workflow_name(&self.name)?;
        let def = catalog
            .entity(&self.entity)
            .ok_or_else(|| format!("workflow '{}': unknown entity '{}': define it first", self.name, self.entity))?;
        let t = &self.triggers;
        if !(t.create || t.update.is_some() || t.delete || t.status_change || t.on_demand || t.child) {
            return Err(format!(
                "workflow '{}' has no trigger: set at least one of create, update, delete, status_change, on_demand, child",
                self.name
            ));
        }
        for a in t.update.iter().flatten() {
            has_attribute(&def, a).map_err(|e| format!("triggers.update: {e}"))?;
        }
        if t.status_change {
            for a in ["statecode", "statuscode"] {
                has_attribute(&def, a).map_err(|e| format!("triggers.status_change needs it: {e}"))?;
            }
        }
        if self.steps.is_empty() {
            return Err(format!("workflow '{}' has no steps", self.name));
        }
        let mut v = Validator { catalog, primary: &def, ids: BTreeSet::new(), count: 0 };
        v.steps(&self.steps, "steps", 0)?;
        self.check_cycles(catalog)
    }

    /// Refuses a chain of child workflows that leads back to this one.
    fn check_cycles(&self, catalog: &dyn Catalog) -> Result<(), String> {
        // Depth-first over names, this definition standing in for its stored version.
        let mut path = vec![self.name.clone()];
        fn visit(
            name: &str,
            children: Vec<String>,
            me: &str,
            catalog: &dyn Catalog,
            path: &mut Vec<String>,
            seen: &mut BTreeSet<String>,
        ) -> Result<(), String> {
            for child in children {
                if child == me {
                    path.push(child);
                    return Err(format!("child workflows form a cycle: {}", path.join(" -> ")));
                }
                if !seen.insert(child.clone()) {
                    continue;
                }
                let grandchildren = catalog.workflow(&child).map(|w| w.2).unwrap_or_default();
                path.push(child.clone());
                visit(&child, grandchildren, me, catalog, path, seen)?;
                path.pop();
            }
            let _ = name;
            Ok(())
        }
        visit(&self.name, self.children(), &self.name, catalog, &mut path, &mut BTreeSet::new())
    }
}

/// Calls `f` on every step, branches included, in document order.
pub fn walk<'a>(steps: &'a [Step], f: &mut dyn FnMut(&'a Step)) {
    for s in steps {
        f(s);
        match &s.action {
            Action::Condition { branches } => branches.iter().for_each(|b| walk(&b.steps, f)),
            Action::Wait { branches } => branches.iter().for_each(|b| walk(&b.steps, f)),
            _ => {}
        }
    }
}

fn has_attribute(def: &EntityDefinition, attribute: &str) -> Result<(), String> {
    if SYSTEM_ATTRIBUTES.contains(&attribute) || def.attribute_type(attribute).is_some() {
        return Ok(());
    }
    let known: Vec<&str> = def.attributes.keys().map(String::as_str).collect();
    Err(format!("{} has no attribute '{attribute}' (it has: {})", def.name, known.join(", ")))
}

struct Validator<'a> {
    catalog: &'a dyn Catalog,
    primary: &'a EntityDefinition,
    /// Ids of the steps seen so far, in document order: what templates may name.
    ids: BTreeSet<String>,
    count: usize,
}

impl Validator<'_> {
    fn steps(&mut self, steps: &[Step], at: &str, depth: usize) -> Result<(), String> {
        if depth > MAX_NESTING {
            return Err(format!("{at}: conditions and waits nest deeper than {MAX_NESTING}"));
        }
        for (i, step) in steps.iter().enumerate() {
            let here = match &step.id {
                Some(id) => format!("{at}[{i}] ('{id}')"),
                None => format!("{at}[{i}]"),
            };
            self.count += 1;
            if self.count > MAX_STEPS {
                return Err(format!("the workflow has more than {MAX_STEPS} steps"));
            }
            self.step(step, &here, depth).map_err(|e| if e.starts_with(&here) { e } else { format!("{here}: {e}") })?;
            if let Some(id) = &step.id {
                if id.is_empty()
                    || id.len() > 64
                    || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(format!("{here}: a step id is 1 to 64 letters, digits, '-' and '_'"));
                }
                if !self.ids.insert(id.clone()) {
                    return Err(format!("{here}: step id '{id}' is used twice"));
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, step: &Step, here: &str, depth: usize) -> Result<(), String> {
        let primary = self.primary;
        match &step.action {
            Action::Condition { branches } => {
                if branches.is_empty() {
                    return Err("a condition needs at least one branch".into());
                }
                for (b, branch) in branches.iter().enumerate() {
                    match &branch.when {
                        Some(f) => self.filter(f)?,
                        None if b + 1 < branches.len() => {
                            return Err(format!("branch {b} has no 'when': only the last branch may be the default"));
                        }
                        None => {}
                    }
                    self.steps(&branch.steps, &format!("{here}.branches[{b}].steps"), depth + 1)?;
                }
            }
            Action::Wait { branches } => {
                if branches.is_empty() {
                    return Err("a wait needs at least one branch".into());
                }
                for (b, branch) in branches.iter().enumerate() {
                    match (&branch.until, &branch.timeout) {
                        (Some(f), None) => self.filter(f)?,
                        (None, Some(t)) => self.timeout(t).map_err(|e| format!("branch {b}: {e}"))?,
                        _ => return Err(format!("wait branch {b} needs exactly one of 'until' and 'timeout'")),
                    }
                    self.steps(&branch.steps, &format!("{here}.branches[{b}].steps"), depth + 1)?;
                }
            }
            Action::Create { entity, attributes } => {
                let def = self.entity(entity)?;
                self.values(&def, attributes)?;
            }
            Action::Update { target, entity, attributes } => {
                let def = match (target, entity) {
                    (None, None) => primary.clone(),
                    (Some(t), Some(e)) => {
                        self.template(t)?;
                        self.entity(e)?
                    }
                    _ => return Err("an update of another record needs both 'target' and 'entity'".into()),
                };
                if attributes.is_empty() {
                    return Err("an update needs attributes".into());
                }
                self.values(&def, attributes)?;
            }
            Action::Assign { owner } => {
                if owner.contains("{{") {
                    self.template(owner)?;
                } else if owner.parse::<uuid::Uuid>().is_err() && !self.catalog.user_exists(owner) {
                    return Err(format!("assign: unknown user '{owner}'"));
                }
            }
            Action::SetStatus { .. } => {
                for a in ["statecode", "statuscode"] {
                    match primary.attribute_type(a) {
                        Some(AttributeType::Option | AttributeType::Integer) => {}
                        _ => {
                            return Err(format!("set_status needs {} to have an option attribute '{a}'", primary.name));
                        }
                    }
                }
            }
            Action::SendEmail { to, subject, body } => {
                let email = self.entity("email").map_err(|_| {
                    "send_email creates an 'email' record: define the entity email with text attributes to, subject and body".to_owned()
                })?;
                for a in ["to", "subject", "body"] {
                    if email.attribute_type(a) != Some(AttributeType::Text) {
                        return Err(format!("send_email needs entity email to have a text attribute '{a}'"));
                    }
                }
                for t in [to, subject, body] {
                    self.template(t)?;
                }
            }
            Action::Child { workflow } => match self.catalog.workflow(workflow) {
                None => return Err(format!("child: unknown workflow '{workflow}'")),
                Some((_, false, _)) => {
                    return Err(format!("child: workflow '{workflow}' does not have the 'child' trigger"));
                }
                Some((entity, true, _)) if entity != primary.name => {
                    return Err(format!("child: workflow '{workflow}' runs on {entity}, not on {}", primary.name));
                }
                Some(_) => {}
            },
            Action::Stop { .. } => {}
            Action::Activity { plugin, message, inputs, .. } => {
                if !self.catalog.plugin_exists(plugin) {
                    return Err(format!("activity: unknown plug-in '{plugin}': register it first"));
                }
                if let Some(m) = message {
                    check_name(&m.to_ascii_lowercase()).map_err(|e| format!("activity message: {e}"))?;
                }
                for v in inputs.values() {
                    self.value(v)?;
                }
            }
        }
        Ok(())
    }

    fn entity(&self, name: &str) -> Result<EntityDefinition, String> {
        self.catalog.entity(name).ok_or_else(|| format!("unknown entity '{name}'"))
    }

    fn values(&self, def: &EntityDefinition, attributes: &BTreeMap<String, Value>) -> Result<(), String> {
        for (name, value) in attributes {
            has_attribute(def, name)?;
            self.value(value)?;
            if let (Some(t), false) = (def.attribute_type(name), is_template(value)) {
                t.coerce(value.clone()).map_err(|e| format!("attribute '{name}' {e}"))?;
            }
        }
        Ok(())
    }

    fn value(&self, value: &Value) -> Result<(), String> {
        value.validate()?;
        if let Value::Text(t) = value {
            self.template(t)?;
        }
        Ok(())
    }

    /// Checks every `{{...}}` in `text` names something that exists by then.
    fn template(&self, text: &str) -> Result<(), String> {
        for path in state::placeholders(text)? {
            self.path(&path)?;
        }
        Ok(())
    }

    fn path(&self, path: &str) -> Result<(), String> {
        match state::Path::parse(path)? {
            state::Path::Record(a) => has_attribute(self.primary, &a),
            state::Path::Related(lookup, _) => match self.primary.attribute_type(&lookup) {
                Some(AttributeType::Reference) => Ok(()),
                _ if lookup == "ownerid" => Ok(()),
                _ => Err(format!("'{path}': {} has no reference attribute '{lookup}'", self.primary.name)),
            },
            state::Path::Step(id, _) if self.ids.contains(&id) => Ok(()),
            state::Path::Step(id, _) => Err(format!(
                "'{path}' names step '{id}', which no earlier step is (outputs exist only once a step ran)"
            )),
            state::Path::Now => Ok(()),
        }
    }

    fn filter(&self, f: &Filter) -> Result<(), String> {
        for c in f.conditions.iter().chain(f.groups.iter().flat_map(|g| &g.conditions)) {
            self.path(&c.attribute)?;
        }
        // The operators' shapes, as a query checks them (paths are not attribute names).
        let mut shape = f.clone();
        for c in shape.conditions.iter_mut().chain(shape.groups.iter_mut().flat_map(|g| &mut g.conditions)) {
            c.attribute = "a".into();
        }
        let q = crate::model::Query { entity_name: self.primary.name.clone(), criteria: shape, ..Default::default() };
        crate::query::validate(&q)
    }

    fn timeout(&self, t: &Timeout) -> Result<(), String> {
        match (&t.at, &t.after, &t.attribute) {
            (Some(at), None, None) => {
                chrono::DateTime::parse_from_rfc3339(at).map_err(|e| format!("timeout 'at' {at}: {e}"))?;
            }
            (None, Some(after), None) => {
                if parse_duration(after)? < 0 {
                    return Err(format!("timeout 'after' {after} is negative"));
                }
            }
            (None, None, Some(a)) => {
                if self.primary.attribute_type(a) != Some(AttributeType::Datetime)
                    && !["createdon", "modifiedon"].contains(&a.as_str())
                {
                    return Err(format!(
                        "timeout attribute '{a}' is not a datetime attribute of {}",
                        self.primary.name
                    ));
                }
            }
            _ => {
                return Err(
                    "a timeout has exactly one of 'at', 'after' and 'attribute' (with an optional 'offset')".into()
                );
            }
        }
        if let Some(o) = &t.offset {
            if t.attribute.is_none() {
                return Err("'offset' goes with 'attribute'".into());
            }
            parse_duration(o)?;
        }
        Ok(())
    }
}

/// A text value that is (or holds) a template is checked when it is filled in.
fn is_template(v: &Value) -> bool {
    matches!(v, Value::Text(t) if t.contains("{{"))
}

/// A workflow as stored: its current definition and whether (and at which frozen
/// version) it is active.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    pub id: uuid::Uuid,
    pub name: String,
    pub entity: String,
    /// Triggered runs run as this user (Dataverse: the workflow's owner).
    pub owner: uuid::Uuid,
    pub active: bool,
    /// The last version activation froze (0: never activated). Runs keep the version
    /// they started with.
    pub version: u32,
    /// The current definition (JSON); it changes only while the workflow is inactive.
    pub definition: String,
    pub created_on: i64,
    pub modified_on: i64,
}

/// An active workflow's frozen version, as the step index keeps it.
#[derive(Clone, Debug)]
pub struct ActiveWorkflow {
    pub id: uuid::Uuid,
    pub version: u32,
    pub owner: uuid::Uuid,
    pub definition: std::sync::Arc<Definition>,
    /// The frozen JSON, which each run carries in its context.
    pub json: std::sync::Arc<str>,
}

/// A workflow log row's status (Dataverse WorkflowLog).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogStatus {
    Succeeded,
    Failed,
    Canceled,
    Waiting,
}

/// One executed step of one run (Dataverse's WorkflowLog row).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Order within the run.
    pub seq: u32,
    /// The step's id, else its position (`2.1.0`).
    pub step: String,
    /// The step's type (`create`, `wait`, ...).
    pub kind: String,
    pub status: LogStatus,
    pub started_on: i64,
    pub completed_on: i64,
    pub error: Option<String>,
    pub inputs: crate::model::Parameters,
    pub outputs: crate::model::Parameters,
    /// The job of the child workflow a `child` step started.
    pub child_job: Option<uuid::Uuid>,
}

impl Action {
    /// The steps of branch `b` of a condition or a wait.
    pub fn branch(&self, b: usize) -> Option<&[Step]> {
        match self {
            Action::Condition { branches } => branches.get(b).map(|b| &b.steps[..]),
            Action::Wait { branches } => branches.get(b).map(|b| &b.steps[..]),
            _ => None,
        }
    }

    /// How many branches a condition or a wait has (0 for other steps).
    pub fn branch_count(&self) -> usize {
        match self {
            Action::Condition { branches } => branches.len(),
            Action::Wait { branches } => branches.len(),
            _ => 0,
        }
    }

    /// The step type's name, as the format spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Condition { .. } => "condition",
            Action::Wait { .. } => "wait",
            Action::Create { .. } => "create",
            Action::Update { .. } => "update",
            Action::Assign { .. } => "assign",
            Action::SetStatus { .. } => "set_status",
            Action::SendEmail { .. } => "send_email",
            Action::Child { .. } => "child",
            Action::Stop { .. } => "stop",
            Action::Activity { .. } => "activity",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = include_str!("../../../docs/workflow.schema.json");
    const EXAMPLE: &str = include_str!("../../../example-plugins/workflows/support-case.json");

    fn wrap(steps: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"name": "w", "entity": "case", "triggers": {"create": true}, "steps": steps})
    }

    /// The JSON Schema and the parser agree: on the example, on one step of every
    /// type, and on shapes both refuse.
    #[test]
    fn the_json_schema_accepts_and_refuses_what_the_parser_does() {
        let schema: serde_json::Value = serde_json::from_str(SCHEMA).unwrap();
        let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
        let both = |doc: &serde_json::Value| -> (bool, bool) {
            (validator.is_valid(doc), Definition::parse(doc.to_string().as_bytes()).is_ok())
        };
        let example: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
        assert_eq!(
            both(&example),
            (true, true),
            "{:?}",
            validator.iter_errors(&example).map(|e| e.to_string()).collect::<Vec<_>>()
        );
        let f = serde_json::json!({"conditions": [{"attribute": "x", "operator": "equal", "values": [1]}]});
        let good = [
            serde_json::json!({"type": "condition", "branches": [{"when": f, "steps": []}, {"steps": []}]}),
            serde_json::json!({"type": "wait", "branches": [{"until": f}, {"timeout": {"after": "2d"}}, {"timeout": {"attribute": "due", "offset": "-1h"}}]}),
            serde_json::json!({"type": "create", "id": "c", "entity": "task", "attributes": {"subject": "{{record.title}}", "n": 1}}),
            serde_json::json!({"type": "update", "attributes": {"x": {"money": "1.50"}}}),
            serde_json::json!({"type": "update", "target": "{{steps.c.id}}", "entity": "task", "attributes": {"x": null}}),
            serde_json::json!({"type": "assign", "owner": "ann"}),
            serde_json::json!({"type": "set_status", "statecode": 1, "statuscode": 2}),
            serde_json::json!({"type": "send_email", "to": "a", "subject": "b", "body": "c"}),
            serde_json::json!({"type": "child", "workflow": "other"}),
            serde_json::json!({"type": "stop", "status": "canceled", "message": "m"}),
            serde_json::json!({"type": "activity", "plugin": "p", "message": "M", "configuration": "c", "inputs": {"a": "{{now}}"}}),
        ];
        let mut kinds = BTreeSet::new();
        for step in good {
            let doc = wrap(serde_json::json!([step]));
            assert_eq!(
                both(&doc),
                (true, true),
                "{step}: {:?}",
                validator.iter_errors(&doc).map(|e| e.to_string()).collect::<Vec<_>>()
            );
            kinds.insert(Definition::parse(doc.to_string().as_bytes()).unwrap().steps[0].action.kind());
        }
        assert_eq!(kinds.len(), 10, "one of every step type");
        for bad in [
            wrap(serde_json::json!([{"type": "frobnicate"}])),
            wrap(serde_json::json!([{"type": "stop", "colour": "red"}])),
            wrap(serde_json::json!([{"type": "create", "entity": "task"}])),
            wrap(serde_json::json!([{"type": "child"}])),
            wrap(serde_json::json!([{"type": "stop", "status": "maybe"}])),
            wrap(serde_json::json!([{"type": "stop", "id": 5}])),
            serde_json::json!({"name": "w", "entity": "case", "steps": [], "extra": 1}),
            serde_json::json!({"name": "w", "steps": []}),
            serde_json::json!({"name": "w", "entity": "case", "triggers": {"sometimes": true}, "steps": []}),
        ] {
            assert_eq!(both(&bad), (false, false), "{bad}");
        }
    }

    #[test]
    fn durations_and_names_are_checked() {
        assert_eq!(parse_duration("90s"), Ok(90_000));
        assert_eq!(parse_duration("+2d"), Ok(2 * 86_400_000));
        for bad in ["", "d", "2", "2w", "1.5h", "-", "99999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(check_workflow_name("support-case_2").is_ok());
        for bad in ["", "Case", "1case", "case!", &"a".repeat(65)] {
            assert!(check_workflow_name(bad).is_err(), "{bad}");
        }
    }
}
