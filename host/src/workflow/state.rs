//! A run's position and memory, and what steps compute from them: value paths,
//! templates, conditions and wait deadlines. Pure functions, unit-tested here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Step, Timeout, parse_duration};
use crate::model::{Entity, Filter, ParameterValue, Parameters, Value};

/// The job output parameter that holds a run's [`RunState`].
pub const STATE_PARAMETER: &str = "workflow";

/// Where a run is and what it remembers; kept in the job's output, so it commits
/// with the steps that moved it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The next step: `[i0, b0, i1, b1, ..., ik]`: top-level step `i0`, which took
    /// branch `b0`, whose step `i1`... Empty before the first step.
    pub at: Vec<u32>,
    /// The outputs of the steps that ran, by step id.
    pub outputs: BTreeMap<String, Parameters>,
    /// The next log row's number.
    pub log_seq: u32,
    /// When the run reached the wait at `at` (UTC ms), while it waits there.
    pub wait_started: Option<i64>,
}

impl RunState {
    /// The state kept in a job's output (a fresh one for a job that has not run).
    pub fn from_output(output: &Parameters) -> Result<RunState, String> {
        match output.get(STATE_PARAMETER) {
            None => Ok(RunState::default()),
            Some(ParameterValue::Value(Value::Text(json))) => {
                serde_json::from_str(json).map_err(|e| format!("the run's stored state is unreadable: {e}"))
            }
            Some(_) => Err("the run's stored state is not text".into()),
        }
    }

    /// The job output that keeps this state (and the outputs, readable on their own).
    pub fn to_output(&self) -> Parameters {
        let json = serde_json::to_string(self).expect("a run state serializes");
        let mut out = Parameters::new();
        out.insert(STATE_PARAMETER.into(), ParameterValue::Value(Value::Text(json)));
        out
    }

    /// The step at the position, or `None` at the end of the workflow.
    pub fn current<'a>(&self, steps: &'a [Step]) -> Option<&'a Step> {
        let at = if self.at.is_empty() { &[0][..] } else { &self.at[..] };
        let mut list = steps;
        let mut i = 0;
        loop {
            let step = list.get(at[i] as usize)?;
            if i + 1 == at.len() {
                return Some(step);
            }
            list = step.action.branch(at[i + 1] as usize)?;
            i += 2;
        }
    }

    /// Goes into branch `b` of the current (condition or wait) step; past the step
    /// at once when the branch has no steps.
    pub fn enter(&mut self, steps: &[Step], b: usize) {
        if self.at.is_empty() {
            self.at.push(0);
        }
        self.at.push(b as u32);
        self.at.push(0);
        if self.list_len(steps, self.at.len() - 1) == 0 {
            self.at.truncate(self.at.len() - 2);
            self.advance(steps);
        }
    }

    /// Moves past the current step: to the next in its list, or, at the end of a
    /// branch, past the step that holds the branch.
    pub fn advance(&mut self, steps: &[Step]) {
        if self.at.is_empty() {
            self.at.push(0);
        }
        loop {
            let last = self.at.len() - 1;
            self.at[last] += 1;
            if last == 0 || self.list_len(steps, last) > self.at[last] as usize {
                return;
            }
            self.at.truncate(last - 1);
        }
    }

    /// The length of the step list the position's element `level` indexes.
    fn list_len(&self, steps: &[Step], level: usize) -> usize {
        let mut list = steps;
        let mut i = 0;
        while i < level {
            let Some(l) = list.get(self.at[i] as usize).and_then(|s| s.action.branch(self.at[i + 1] as usize)) else {
                return 0;
            };
            list = l;
            i += 2;
        }
        list.len()
    }

    /// The position for people: `2.1.0` (step 2, branch 1, its step 0).
    pub fn position(&self) -> String {
        let at = if self.at.is_empty() { vec![0] } else { self.at.clone() };
        at.iter().map(u32::to_string).collect::<Vec<_>>().join(".")
    }
}

/// What a template or a condition names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Path {
    /// `record.ATTR` (or `ATTR` in a condition); `record.id` is the record's id.
    Record(String),
    /// `record.LOOKUP.ATTR`: an attribute of the record a reference attribute points at.
    Related(String, String),
    /// `steps.ID.NAME`: an output of an earlier step.
    Step(String, String),
    /// `now`: the time the step runs.
    Now,
}

impl Path {
    pub fn parse(path: &str) -> Result<Path, String> {
        let parts: Vec<&str> = path.trim().split('.').collect();
        let bad = || {
            format!(
                "'{path}' is not a value path: use record.ATTRIBUTE, record.LOOKUP.ATTRIBUTE, steps.ID.OUTPUT or now"
            )
        };
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        Ok(match parts[..] {
            ["now"] => Path::Now,
            ["steps", id, name] => Path::Step(id.into(), name.into()),
            ["record", a] | [a] => Path::Record(a.into()),
            ["record", l, a] | [l, a] if l != "steps" => Path::Related(l.into(), a.into()),
            _ => return Err(bad()),
        })
    }
}

/// The paths in a text's `{{...}}` placeholders.
pub fn placeholders(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| format!("'{text}' opens '{{{{' without closing '}}}}'"))?;
        out.push(after[..end].trim().to_owned());
        rest = &after[end + 2..];
    }
    Ok(out)
}

/// Reads the values paths name, for one step of one run.
pub trait Resolve {
    fn resolve(&self, path: &Path) -> Result<Value, String>;
}

/// Fills a value's templates: a text that is exactly one placeholder becomes the
/// value it names (typed: a number, a reference...); placeholders inside longer text
/// are replaced by their values' text.
pub fn fill(value: &Value, r: &dyn Resolve) -> Result<Value, String> {
    let Value::Text(text) = value else { return Ok(value.clone()) };
    let paths = placeholders(text)?;
    if paths.is_empty() {
        return Ok(value.clone());
    }
    let trimmed = text.trim();
    if paths.len() == 1 && trimmed.starts_with("{{") && trimmed.ends_with("}}") && trimmed.matches("{{").count() == 1 {
        return r.resolve(&Path::parse(&paths[0])?);
    }
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").expect("checked by placeholders");
        out.push_str(&text_of(&r.resolve(&Path::parse(&after[..end])?)?));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(Value::Text(out))
}

/// Fills a text template to text.
pub fn fill_text(text: &str, r: &dyn Resolve) -> Result<String, String> {
    Ok(text_of(&fill(&Value::Text(text.to_owned()), r)?))
}

/// A value as text inside a longer text.
pub fn text_of(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::Text(s) => s.clone(),
        Value::Reference(r) => r.id.to_string(),
        Value::OptionSet(o) => o.to_string(),
        other => other.to_string(),
    }
}

/// Whether `filter` holds, each condition's attribute read as a path.
pub fn holds(filter: &Filter, r: &dyn Resolve) -> Result<bool, String> {
    let mut facts = Entity::default();
    for c in filter.conditions.iter().chain(filter.groups.iter().flat_map(|g| &g.conditions)) {
        if !facts.attributes.contains_key(&c.attribute) {
            let v = r.resolve(&Path::parse(&c.attribute)?)?;
            facts.attributes.insert(c.attribute.clone(), v);
        }
    }
    Ok(crate::query::matches(&facts, filter))
}

/// The record attributes a filter reads (what a wait watches).
pub fn watched(filter: &Filter) -> Vec<String> {
    let mut out: Vec<String> = filter
        .conditions
        .iter()
        .chain(filter.groups.iter().flat_map(|g| &g.conditions))
        .filter_map(|c| match Path::parse(&c.attribute) {
            Ok(Path::Record(a)) | Ok(Path::Related(a, _)) => Some(a),
            _ => None,
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// When a wait branch's timeout falls, for a wait that began at `started`; `None`
/// when the date attribute it counts from is empty (it never times out).
pub fn deadline(t: &Timeout, started: i64, record: &dyn Resolve) -> Result<Option<i64>, String> {
    if let Some(at) = &t.at {
        return Ok(Some(
            chrono::DateTime::parse_from_rfc3339(at).map_err(|e| format!("timeout {at}: {e}"))?.timestamp_millis(),
        ));
    }
    if let Some(after) = &t.after {
        return Ok(Some(started.saturating_add(parse_duration(after)?)));
    }
    let attribute = t.attribute.as_deref().ok_or("a timeout names no time")?;
    let offset = t.offset.as_deref().map(parse_duration).transpose()?.unwrap_or(0);
    match record.resolve(&Path::Record(attribute.to_owned()))? {
        Value::DateTime(ms) => Ok(Some(ms.saturating_add(offset))),
        Value::Null => Ok(None),
        other => Err(format!("timeout attribute '{attribute}' holds {} {other}, not a datetime", other.type_name())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Condition, ConditionOperator, LogicalOperator};
    use crate::workflow::{Action, Branch, Definition};

    struct Facts(BTreeMap<String, Value>);

    impl Resolve for Facts {
        fn resolve(&self, path: &Path) -> Result<Value, String> {
            let key = match path {
                Path::Record(a) => a.clone(),
                Path::Related(l, a) => format!("{l}.{a}"),
                Path::Step(s, n) => format!("steps.{s}.{n}"),
                Path::Now => "now".into(),
            };
            Ok(self.0.get(&key).cloned().unwrap_or(Value::Null))
        }
    }

    fn facts(pairs: &[(&str, Value)]) -> Facts {
        Facts(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
    }

    #[test]
    fn templates_fill_typed_values_and_text() {
        let f = facts(&[("priority", Value::Integer(3)), ("title", Value::Text("Printer".into()))]);
        assert_eq!(fill(&Value::Text("{{ record.priority }}".into()), &f).unwrap(), Value::Integer(3));
        assert_eq!(
            fill(&Value::Text("Case {{record.title}} at {{priority}}".into()), &f).unwrap(),
            Value::Text("Case Printer at 3".into())
        );
        assert_eq!(fill(&Value::Text("{{steps.x.y}}".into()), &f).unwrap(), Value::Null);
        assert!(fill(&Value::Text("{{record.a".into()), &f).unwrap_err().contains("without closing"));
        assert!(Path::parse("steps.x").is_err());
        assert_eq!(Path::parse("record.customer.credit").unwrap(), Path::Related("customer".into(), "credit".into()));
    }

    fn cond(attribute: &str, operator: ConditionOperator, values: Vec<Value>) -> Condition {
        Condition { attribute: attribute.into(), operator, values }
    }

    #[test]
    fn branch_conditions_follow_their_truth_tables() {
        // (priority = high AND amount > 100) OR status is null
        let filter = Filter {
            operator: LogicalOperator::Or,
            conditions: vec![cond("status", ConditionOperator::Null, vec![])],
            groups: vec![crate::model::ConditionGroup {
                operator: LogicalOperator::And,
                conditions: vec![
                    cond("priority", ConditionOperator::Equal, vec![Value::Text("HIGH".into())]),
                    cond("steps.score.amount", ConditionOperator::Greater, vec![Value::Integer(100)]),
                ],
            }],
        };
        for (priority, amount, status, expected) in [
            ("high", 101, Some(1), true),
            ("high", 100, Some(1), false),
            ("low", 500, Some(1), false),
            ("low", 0, None, true),
            ("High", 200, None, true),
        ] {
            let f = facts(&[
                ("priority", Value::Text(priority.into())),
                ("steps.score.amount", Value::Integer(amount)),
                ("status", status.map_or(Value::Null, Value::OptionSet)),
            ]);
            assert_eq!(holds(&filter, &f).unwrap(), expected, "{priority} {amount} {status:?}");
        }
        assert_eq!(watched(&filter), vec!["priority".to_string(), "status".to_string()]);
    }

    #[test]
    fn the_position_walks_into_branches_and_out_again() {
        let json = r#"{"name":"w","entity":"case","triggers":{"create":true},"steps":[
            {"type":"condition","branches":[{"when":{"conditions":[]},"steps":[
                {"type":"stop"},{"type":"stop","message":"b"}]}]},
            {"type":"stop","message":"last"}]}"#;
        let d = Definition::parse(json.as_bytes()).unwrap();
        let mut s = RunState::default();
        assert!(matches!(s.current(&d.steps).unwrap().action, Action::Condition { .. }));
        s.enter(&d.steps, 0);
        assert_eq!(s.position(), "0.0.0");
        s.advance(&d.steps);
        assert_eq!(s.position(), "0.0.1");
        s.advance(&d.steps);
        assert_eq!(s.position(), "1", "the end of a branch continues after its condition");
        assert!(matches!(&s.current(&d.steps).unwrap().action, Action::Stop { message, .. } if message == "last"));
        s.advance(&d.steps);
        assert!(s.current(&d.steps).is_none());
        // An empty branch goes straight on past its step.
        let empty = Definition::parse(
            br#"{"name":"w","entity":"case","triggers":{"create":true},"steps":[
            {"type":"condition","branches":[{"when":{"conditions":[]}}]},{"type":"stop"}]}"#,
        )
        .unwrap();
        let mut e = RunState::default();
        e.enter(&empty.steps, 0);
        assert_eq!(e.position(), "1");
        let back = RunState::from_output(&s.to_output()).unwrap();
        assert_eq!(back, s);
        let _ = Branch { when: None, steps: vec![] };
    }

    #[test]
    fn deadlines_count_from_a_time_a_duration_or_an_attribute() {
        let f = facts(&[("due", Value::DateTime(1_000_000))]);
        let t = |at: Option<&str>, after: Option<&str>, attribute: Option<&str>, offset: Option<&str>| Timeout {
            at: at.map(Into::into),
            after: after.map(Into::into),
            attribute: attribute.map(Into::into),
            offset: offset.map(Into::into),
        };
        assert_eq!(deadline(&t(None, Some("2d"), None, None), 5, &f).unwrap(), Some(5 + 2 * 86_400_000));
        assert_eq!(deadline(&t(None, None, Some("due"), Some("-1s")), 0, &f).unwrap(), Some(999_000));
        assert_eq!(deadline(&t(None, None, Some("missing"), None), 0, &f).unwrap(), None);
        assert_eq!(deadline(&t(Some("1970-01-01T00:00:01Z"), None, None, None), 0, &f).unwrap(), Some(1000));
        assert!(parse_duration("2w").is_err());
        assert_eq!(parse_duration("-90s").unwrap(), -90_000);
    }
}
