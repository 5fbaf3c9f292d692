//! Bulk operations as system jobs (SPEC §4; Dataverse BulkDelete and Import).
//!
//! A bulk job's spec lives in its context (written once), its progress in its
//! output. Each run works one batch (at most [`BATCH`] rows or records) through the
//! pipeline, every row in its own savepoint, and the batch's effects are committed
//! with the new progress in the transaction that completes the run: a crash repeats
//! at most the uncommitted batch, and no row is applied twice. While rows remain the
//! job goes back to the queue at once; a recurring bulk delete then waits for its
//! next occurrence and starts over.
//!
//! Import rows live in their own table (`bulk_rows`), written with the job and read
//! a batch at a time, so a large file is never decoded whole.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::jobs::{OperationType, SystemJob};
use crate::metadata::{AttributeType, EntityDefinition};
use crate::model::{Entity, ExecutionContext, ParameterValue, Parameters, Query, Value, value_from_json};

/// Rows (import) or records (delete) one run works through, in one transaction.
pub const BATCH: usize = 200;
/// Per-row failures a bulk job keeps in its output; all of them are counted.
pub const MAX_FAILURES_KEPT: usize = 100;
/// Most rows one import takes.
pub const MAX_IMPORT_ROWS: usize = 100_000;

/// The format of an import file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImportFormat {
    /// A header row of attribute names, then one record per row; a cell is read as
    /// its attribute's type (an empty cell is left unset).
    Csv,
    /// One JSON object per line, in the data API's JSON form.
    Jsonl,
}

impl std::str::FromStr for ImportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "csv" => Ok(ImportFormat::Csv),
            "jsonl" | "ndjson" | "json-lines" => Ok(ImportFormat::Jsonl),
            _ => Err(format!("unknown import format '{s}': use csv or jsonl")),
        }
    }
}

/// Parses an import file into rows for `def`'s entity. Problems with the file
/// itself (not UTF-8, malformed CSV, a column naming no attribute, a line that is not
/// a JSON object, no rows, too many rows) refuse it whole; a bad value fails only its
/// row, when the job reaches it.
pub fn parse_import(def: &EntityDefinition, format: ImportFormat, bytes: &[u8]) -> Result<Vec<Entity>, String> {
    let text = std::str::from_utf8(bytes).map_err(|e| format!("the import file is not UTF-8: {e}"))?;
    let mut rows = Vec::new();
    let mut push = |row: Entity| -> Result<(), String> {
        if rows.len() == MAX_IMPORT_ROWS {
            return Err(format!("the import file has more than {MAX_IMPORT_ROWS} rows: split it"));
        }
        rows.push(row);
        Ok(())
    };
    match format {
        ImportFormat::Csv => {
            let mut reader = csv::ReaderBuilder::new().trim(csv::Trim::Headers).from_reader(text.as_bytes());
            let headers = reader.headers().map_err(|e| format!("the CSV header: {e}"))?.clone();
            for h in &headers {
                if def.attribute_type(h).is_none() {
                    return Err(format!("CSV column '{h}' is not an attribute of {}", def.name));
                }
            }
            for (i, record) in reader.records().enumerate() {
                let record = record.map_err(|e| format!("CSV row {}: {e}", i + 1))?;
                let mut row = Entity::new(def.name.clone());
                for (h, cell) in headers.iter().zip(record.iter()) {
                    if !cell.is_empty() {
                        row.attributes.insert(h.to_owned(), Value::Text(cell.to_owned()));
                    }
                }
                push(row)?;
            }
        }
        ImportFormat::Jsonl => {
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                let attributes: BTreeMap<String, Value> = serde_json::from_str(line)
                    .map_err(|e| format!("line {}: not a JSON object of values: {e}", i + 1))?;
                push(Entity { logical_name: def.name.clone(), id: None, attributes })?;
            }
        }
    }
    if rows.is_empty() {
        return Err("the import file has no rows".into());
    }
    Ok(rows)
}

/// Reads a CSV cell as `kind`: numbers, `true`/`false`, RFC 3339 times, GUIDs,
/// decimal text, and references as `entity:GUID`.
fn cell(kind: AttributeType, text: &str) -> Result<Value, String> {
    use AttributeType as T;
    use serde_json::json;
    let t = text.trim();
    let json = match kind {
        T::Text => return Ok(Value::Text(text.to_owned())),
        T::Integer => json!(t.parse::<i64>().map_err(|_| format!("'{t}' is not a whole number"))?),
        T::Float => json!({"float": t.parse::<f64>().map_err(|_| format!("'{t}' is not a number"))?}),
        T::Decimal | T::Money => {
            crate::model::check_decimal(t)?;
            if kind == T::Money { json!({ "money": t }) } else { json!({ "decimal": t }) }
        }
        T::Boolean => json!(match t.to_ascii_lowercase().as_str() {
            "true" | "yes" | "1" => true,
            "false" | "no" | "0" => false,
            _ => return Err(format!("'{t}' is not true or false")),
        }),
        T::Datetime => json!({ "datetime": t }),
        T::Guid => json!({ "guid": t }),
        T::Option => json!({"option": t.parse::<i64>().map_err(|_| format!("'{t}' is not an option value"))?}),
        T::Reference => {
            let (entity, id) = t.split_once(':').ok_or_else(|| format!("'{t}' is not a reference: use entity:GUID"))?;
            json!({"reference": {"logical_name": entity, "id": id}})
        }
    };
    value_from_json(json)
}

/// A CSV row with its cells read as their attributes' types.
pub fn typed_row(def: &EntityDefinition, row: Entity) -> Result<Entity, String> {
    let mut out = Entity { attributes: BTreeMap::new(), ..row };
    for (name, value) in row.attributes {
        let value = match (def.attribute_type(&name), value) {
            (Some(kind), Value::Text(text)) => cell(kind, &text).map_err(|e| format!("column '{name}': {e}"))?,
            (_, v) => v,
        };
        out.attributes.insert(name, value);
    }
    Ok(out)
}

/// What a bulk job does, read from its context.
#[derive(Clone, Debug, PartialEq)]
pub enum BulkSpec {
    /// Delete every record the query selects (its criteria; order and paging are ignored).
    Delete { query: Query },
    /// Create one record of `entity` per row of the job's rows.
    Import { entity: String, format: ImportFormat, rows: u64 },
}

impl BulkSpec {
    /// The job for this spec (an import's rows are stored beside it: `JobQueue::create_with_rows`).
    pub fn job(&self, name: Option<String>) -> SystemJob {
        let (operation, entity, default_name, input_parameters) = match self {
            BulkSpec::Delete { query } => (
                OperationType::BulkDelete,
                &query.entity_name,
                format!("Bulk delete of {}", query.entity_name),
                Parameters::from([("Query".to_owned(), ParameterValue::Query(query.clone()))]),
            ),
            BulkSpec::Import { entity, format, rows } => (
                OperationType::BulkImport,
                entity,
                format!("Import of {rows} {entity} rows"),
                Parameters::from([
                    ("EntityName".to_owned(), text(entity)),
                    ("Format".to_owned(), text(if *format == ImportFormat::Csv { "csv" } else { "jsonl" })),
                    ("Rows".to_owned(), ParameterValue::Value(Value::Integer(*rows as i64))),
                ]),
            ),
        };
        let context =
            ExecutionContext { primary_entity_name: entity.clone(), input_parameters, ..ExecutionContext::default() };
        SystemJob {
            name: name.unwrap_or(default_name),
            operation_type: operation,
            step_id: None,
            regarding: None,
            ..SystemJob::plugin_execution("", Uuid::nil(), None, context)
        }
    }

    pub fn from_job(job: &SystemJob) -> Result<BulkSpec, String> {
        let p = &job.context.input_parameters;
        let value = |name: &str| match p.get(name) {
            Some(ParameterValue::Value(v)) => Ok(v.clone()),
            _ => Err(format!("the bulk job has no '{name}' parameter")),
        };
        match job.operation_type {
            OperationType::BulkDelete => match p.get("Query") {
                Some(ParameterValue::Query(q)) => Ok(BulkSpec::Delete { query: q.clone() }),
                _ => Err("the bulk delete job has no query".into()),
            },
            OperationType::BulkImport => {
                let (Value::Text(entity), Value::Text(format), Value::Integer(rows)) =
                    (value("EntityName")?, value("Format")?, value("Rows")?)
                else {
                    return Err("the import job's parameters are damaged".into());
                };
                Ok(BulkSpec::Import { entity, format: format.parse()?, rows: rows.max(0) as u64 })
            }
            other => Err(format!("{other:?} is not a bulk operation")),
        }
    }
}

/// What a bulk job action does: `action` on every job `query` selects that was
/// queued before the action's own job, oldest first, [`JOB_ACTION_BATCH`] per
/// transaction. Jobs that do not allow the action (as one at a time would refuse
/// it) are skipped and counted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSelection {
    pub query: crate::jobs::JobQuery,
    pub action: crate::store::JobAction,
}

/// Jobs one transaction of a bulk job action reads.
pub const JOB_ACTION_BATCH: usize = 500;
const SELECTION: &str = "Selection";

impl JobSelection {
    pub fn job(&self, name: Option<String>, by: Uuid) -> Result<SystemJob, String> {
        let context = ExecutionContext {
            input_parameters: Parameters::from([(SELECTION.to_owned(), json_value(self)?)]),
            initiating_user_id: by,
            user_id: by,
            ..ExecutionContext::default()
        };
        Ok(SystemJob {
            name: name.unwrap_or_else(|| format!("Bulk {} of selected system jobs", self.action.name())),
            operation_type: OperationType::JobAction,
            step_id: None,
            regarding: None,
            ..SystemJob::plugin_execution("", Uuid::nil(), None, context)
        })
    }

    pub fn from_job(job: &SystemJob) -> Result<JobSelection, String> {
        json_parameter(job, SELECTION)
    }
}

/// A job's specification as a JSON text parameter of its context.
pub(crate) fn json_value(spec: &impl Serialize) -> Result<ParameterValue, String> {
    Ok(text(&serde_json::to_string(spec).map_err(|e| e.to_string())?))
}

/// The specification a job keeps as JSON in its context's parameter `name`.
pub(crate) fn json_parameter<T: serde::de::DeserializeOwned>(job: &SystemJob, name: &str) -> Result<T, String> {
    match job.context.input_parameters.get(name) {
        Some(ParameterValue::Value(Value::Text(json))) => {
            serde_json::from_str(json).map_err(|e| format!("the job's {name} is damaged: {e}"))
        }
        _ => Err(format!("the {} job has no {name}", job.operation_type.label())),
    }
}

fn text(s: &str) -> ParameterValue {
    ParameterValue::Value(Value::Text(s.to_owned()))
}

/// One row or record that failed: which, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// The import row (1-based), or the record's id for a delete.
    pub row: Option<u64>,
    pub id: Option<Uuid>,
    pub code: String,
    pub message: String,
}

/// How far a bulk job has come; kept in its output between runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    /// The next import row (0-based), or the last record id a delete has passed.
    pub next_row: u64,
    pub after: Option<Uuid>,
    pub processed: u64,
    pub succeeded: u64,
    pub failed: u64,
    /// The first [`MAX_FAILURES_KEPT`] failures.
    pub failures: Vec<Failure>,
    /// Records passed over on purpose (bulk mail: no address, opted out), counted in
    /// `processed`, and the first [`MAX_FAILURES_KEPT`] of them with the reason.
    pub skipped: u64,
    pub skips: Vec<Failure>,
    /// The job has finished its work (a recurring one starts over at its next run).
    pub done: bool,
}

impl Progress {
    /// The progress a run continues from: none when the last run finished.
    pub fn from_output(output: &Parameters) -> Progress {
        let int = |name: &str| match output.get(name) {
            Some(ParameterValue::Value(Value::Integer(i))) => (*i).max(0) as u64,
            _ => 0,
        };
        if matches!(output.get("Done"), Some(ParameterValue::Value(Value::Boolean(true)))) {
            return Progress::default();
        }
        let rows = |name: &str| match output.get(name) {
            Some(ParameterValue::Entities(rows)) => rows.iter().map(Failure::from_entity).collect(),
            _ => Vec::new(),
        };
        Progress {
            next_row: int("NextRow"),
            after: match output.get("After") {
                Some(ParameterValue::Value(Value::Guid(id))) => Some(*id),
                _ => None,
            },
            processed: int("Processed"),
            succeeded: int("Succeeded"),
            failed: int("Failed"),
            failures: rows("Failures"),
            skipped: int("Skipped"),
            skips: rows("Skips"),
            done: false,
        }
    }

    pub fn to_output(&self) -> Parameters {
        let int = |n: u64| ParameterValue::Value(Value::Integer(n as i64));
        let mut out = Parameters::from([
            ("Processed".to_owned(), int(self.processed)),
            ("Succeeded".to_owned(), int(self.succeeded)),
            ("Failed".to_owned(), int(self.failed)),
            ("Done".to_owned(), ParameterValue::Value(Value::Boolean(self.done))),
            ("Failures".to_owned(), ParameterValue::Entities(self.failures.iter().map(Failure::to_entity).collect())),
        ]);
        if self.skipped > 0 {
            out.insert("Skipped".into(), int(self.skipped));
            out.insert("Skips".into(), ParameterValue::Entities(self.skips.iter().map(Failure::to_entity).collect()));
        }
        if self.next_row > 0 {
            out.insert("NextRow".into(), int(self.next_row));
        }
        if let Some(id) = self.after {
            out.insert("After".into(), ParameterValue::Value(Value::Guid(id)));
        }
        out
    }

    pub fn record(&mut self, failure: Option<Failure>) {
        self.processed += 1;
        match failure {
            None => self.succeeded += 1,
            Some(f) => {
                self.failed += 1;
                if self.failures.len() < MAX_FAILURES_KEPT {
                    self.failures.push(f);
                }
            }
        }
    }

    /// A record passed over on purpose, and why.
    pub fn skip(&mut self, why: Failure) {
        self.processed += 1;
        self.skipped += 1;
        if self.skips.len() < MAX_FAILURES_KEPT {
            self.skips.push(why);
        }
    }

    /// One line for the job's message.
    pub fn summary(&self) -> String {
        let state = if self.done { "done" } else { "in progress" };
        let skipped = if self.skipped > 0 { format!(", {} skipped", self.skipped) } else { String::new() };
        format!("{state}: {} processed, {} succeeded, {} failed{skipped}", self.processed, self.succeeded, self.failed)
    }
}

impl Failure {
    const ENTITY: &'static str = "bulkoperationfailure";

    fn to_entity(&self) -> Entity {
        let mut e = Entity::new(Self::ENTITY.to_owned());
        if let Some(row) = self.row {
            e.attributes.insert("row".into(), Value::Integer(row as i64));
        }
        if let Some(id) = self.id {
            e.attributes.insert("recordid".into(), Value::Guid(id));
        }
        e.attributes.insert("errorcode".into(), Value::Text(self.code.clone()));
        e.attributes.insert("message".into(), Value::Text(self.message.clone()));
        e
    }

    fn from_entity(e: &Entity) -> Failure {
        let text = |name: &str| match e.attributes.get(name) {
            Some(Value::Text(t)) => t.clone(),
            _ => String::new(),
        };
        Failure {
            row: match e.attributes.get("row") {
                Some(Value::Integer(i)) => Some((*i).max(0) as u64),
                _ => None,
            },
            id: match e.attributes.get("recordid") {
                Some(Value::Guid(id)) => Some(*id),
                _ => None,
            },
            code: text("errorcode"),
            message: text("message"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> EntityDefinition {
        EntityDefinition {
            name: "account".into(),
            attributes: [
                ("name".to_owned(), AttributeType::Text),
                ("creditlimit".to_owned(), AttributeType::Money),
                ("employees".to_owned(), AttributeType::Integer),
                ("active".to_owned(), AttributeType::Boolean),
            ]
            .into(),
        }
    }

    #[test]
    fn csv_rows_are_read_as_their_attributes_types_and_bad_cells_fail_only_their_row() {
        let rows = parse_import(
            &def(),
            ImportFormat::Csv,
            b"name,creditlimit,employees,active\nContoso,\"1,5\",12,yes\nFabrikam,,x,\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        let bad = typed_row(&def(), rows[0].clone()).unwrap_err();
        assert!(bad.contains("creditlimit"), "{bad}");
        let ok = typed_row(&def(), rows[1].clone());
        assert!(ok.unwrap_err().contains("column 'employees': 'x' is not a whole number"));
        let good =
            parse_import(&def(), ImportFormat::Csv, b"name,creditlimit,employees,active\nA,12.50,3,true\n").unwrap();
        let row = typed_row(&def(), good[0].clone()).unwrap();
        assert_eq!(row.attributes["creditlimit"], Value::Money("12.50".into()));
        assert_eq!(row.attributes["employees"], Value::Integer(3));
        assert_eq!(row.attributes["active"], Value::Boolean(true));
    }

    #[test]
    fn a_bad_file_is_refused_whole() {
        for (format, bytes, why) in [
            (ImportFormat::Csv, &b"name,colour\nA,red\n"[..], "column 'colour'"),
            (ImportFormat::Csv, b"name\n", "no rows"),
            (ImportFormat::Csv, b"\xff\xfe", "UTF-8"),
            (ImportFormat::Jsonl, b"{\"name\": \"A\"}\n[1]\n", "line 2"),
        ] {
            let e = parse_import(&def(), format, bytes).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn progress_survives_the_output_round_trip_and_a_finished_run_starts_over() {
        let mut p = Progress { next_row: 200, after: Some(Uuid::now_v7()), ..Progress::default() };
        p.record(None);
        p.record(Some(Failure { row: Some(7), id: None, code: "plugin_error".into(), message: "no".into() }));
        p.skip(Failure { row: None, id: Some(Uuid::now_v7()), code: "no_address".into(), message: "none".into() });
        assert_eq!(Progress::from_output(&p.to_output()), p);
        assert!(p.summary().ends_with("1 failed, 1 skipped"), "{}", p.summary());
        p.done = true;
        assert_eq!(Progress::from_output(&p.to_output()), Progress::default());
    }
}
