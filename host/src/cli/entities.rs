//! `plughost entities define|definitions|create|get|update|delete|query`

use std::collections::BTreeMap;
use std::process::ExitCode;

use plughost::metadata::{AttributeType, EntityDefinition};
use plughost::model::{
    Condition, ConditionOperator, Entity, EntityReference, Filter, Order, Query, Value, parse_guid, value_from_json,
};
use plughost::pipeline::{Request, Response};

use super::{CliError, Global, read_json, table};

#[derive(clap::Subcommand)]
pub(crate) enum Entities {
    /// Define an entity, or add attributes to one: --attr NAME:TYPE (text, integer, float,
    /// decimal, money, boolean, datetime, guid, option, reference).
    Define {
        name: String,
        #[arg(long = "attr", value_name = "NAME:TYPE", required = true)]
        attrs: Vec<String>,
    },
    /// List entity definitions.
    Definitions,
    /// Create a record: --set NAME=VALUE (VALUE is JSON when it parses, else text).
    Create {
        entity: String,
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// The new record's id (default: a new GUID).
        #[arg(long)]
        id: Option<String>,
    },
    /// Read a record.
    Get {
        entity: String,
        id: String,
        /// Columns to return, comma-separated (default: all).
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
    },
    /// Change attributes of a record.
    Update {
        entity: String,
        id: String,
        #[arg(long = "set", value_name = "NAME=VALUE", required = true)]
        set: Vec<String>,
    },
    /// Delete a record.
    Delete { entity: String, id: String },
    /// Query records: --where ATTR:OP[:VALUE] (OP: eq ne gt ge lt le like notlike null notnull in),
    /// --order ATTR[:desc], --top N; or a whole query from --file.
    Query {
        entity: Option<String>,
        #[arg(long = "where", value_name = "ATTR:OP[:VALUE]")]
        conditions: Vec<String>,
        #[arg(long = "order", value_name = "ATTR[:desc]")]
        orders: Vec<String>,
        #[arg(long)]
        top: Option<u32>,
        #[arg(long, value_delimiter = ',')]
        columns: Vec<String>,
        /// A JSON query file (entity_name, columns, criteria, orders, top, page_size, paging_cookie).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
}

/// "name=Contoso" -> ("name", text); "n=5" -> integer; `limit={"money":"5"}` -> money.
fn parse_value(text: &str) -> Result<Value, CliError> {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(json) => value_from_json(json).map_err(|m| CliError::new("invalid", m)),
        Err(_) => Ok(Value::Text(text.to_owned())),
    }
}

fn parse_sets(sets: &[String]) -> Result<BTreeMap<String, Value>, CliError> {
    sets.iter()
        .map(|s| {
            let (k, v) = s.split_once('=').ok_or_else(|| {
                CliError::new("invalid", format!("'{s}' is not NAME=VALUE (e.g. --set name=Contoso)"))
            })?;
            Ok((k.trim().to_owned(), parse_value(v)?))
        })
        .collect()
}

fn guid(s: &str) -> Result<uuid::Uuid, CliError> {
    parse_guid(s).map_err(|m| CliError::new("invalid", m))
}

pub(super) fn condition(spec: &str) -> Result<Condition, CliError> {
    let bad = |why: &str| {
        CliError::new("invalid", format!("condition '{spec}' {why}: use ATTR:OP[:VALUE], e.g. name:like:Con%"))
    };
    let mut parts = spec.splitn(3, ':');
    let attribute = parts.next().filter(|a| !a.is_empty()).ok_or_else(|| bad("has no attribute"))?.to_owned();
    let op = parts.next().ok_or_else(|| bad("has no operator"))?;
    let value = parts.next();
    let operator = match op {
        "eq" => ConditionOperator::Equal,
        "ne" => ConditionOperator::NotEqual,
        "gt" => ConditionOperator::Greater,
        "ge" => ConditionOperator::GreaterEqual,
        "lt" => ConditionOperator::Less,
        "le" => ConditionOperator::LessEqual,
        "like" => ConditionOperator::Like,
        "notlike" => ConditionOperator::NotLike,
        "in" => ConditionOperator::In,
        "null" => ConditionOperator::Null,
        "notnull" => ConditionOperator::NotNull,
        other => return Err(bad(&format!("has unknown operator '{other}'"))),
    };
    let values = match (operator, value) {
        (ConditionOperator::Null | ConditionOperator::NotNull, _) => Vec::new(),
        (_, None) => return Err(bad("needs a value")),
        (ConditionOperator::In, Some(v)) => v.split(',').map(parse_value).collect::<Result<_, _>>()?,
        // A like pattern is always text.
        (ConditionOperator::Like | ConditionOperator::NotLike, Some(v)) => vec![Value::Text(v.to_owned())],
        (_, Some(v)) => vec![parse_value(v)?],
    };
    Ok(Condition { attribute, operator, values })
}

fn print_entity(g: &Global, e: &Entity) -> Result<(), CliError> {
    g.print(e, || {
        let mut out = format!("{} {}\n", e.logical_name, e.id.map(|i| i.to_string()).unwrap_or_default());
        for (k, v) in &e.attributes {
            out.push_str(&format!("  {k} = {v}\n"));
        }
        out
    })
}

impl Entities {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let backend = g.backend()?;
        match self {
            Entities::Define { name, attrs } => {
                let attributes = attrs
                    .iter()
                    .map(|a| {
                        let (n, t) = a.split_once(':').ok_or_else(|| {
                            CliError::new("invalid", format!("'{a}' is not NAME:TYPE (e.g. --attr name:text)"))
                        })?;
                        Ok((
                            n.trim().to_owned(),
                            t.trim().parse::<AttributeType>().map_err(|m| CliError::new("invalid", m))?,
                        ))
                    })
                    .collect::<Result<_, CliError>>()?;
                let def = backend.define_entity(EntityDefinition { name, attributes })?;
                g.print(&def, || {
                    let attrs: Vec<String> = def.attributes.iter().map(|(n, t)| format!("{n}:{}", t.name())).collect();
                    format!("entity {} has attributes {}", def.name, attrs.join(", "))
                })?;
            }
            Entities::Definitions => {
                let defs = backend.definitions()?;
                g.print(&defs, || {
                    if defs.is_empty() {
                        return "no entities defined: add one with `plughost entities define`".into();
                    }
                    let mut rows = vec![vec!["ENTITY".to_owned(), "ATTRIBUTES".to_owned()]];
                    for d in &defs {
                        let attrs: Vec<String> =
                            d.attributes.iter().map(|(n, t)| format!("{n}:{}", t.name())).collect();
                        rows.push(vec![d.name.clone(), attrs.join(" ")]);
                    }
                    table(rows)
                })?;
            }
            Entities::Create { entity, set, id } => {
                let mut record = Entity::new(entity);
                record.attributes = parse_sets(&set)?;
                record.id = id.as_deref().map(guid).transpose()?;
                let Response::Created(id) = backend.execute(Request::Create { record })? else {
                    return Err(CliError::new("internal", "unexpected response"));
                };
                g.print(&serde_json::json!({ "id": id }), || format!("created {id}"))?;
            }
            Entities::Get { entity, id, columns } => {
                let target = EntityReference { logical_name: entity, id: guid(&id)? };
                let Response::Retrieved(e) = backend.execute(Request::Retrieve { target, columns })? else {
                    return Err(CliError::new("internal", "unexpected response"));
                };
                print_entity(g, &e)?;
            }
            Entities::Update { entity, id, set } => {
                let mut record = Entity::new(entity);
                record.id = Some(guid(&id)?);
                record.attributes = parse_sets(&set)?;
                backend.execute(Request::Update { record })?;
                g.print(&serde_json::json!({ "id": id }), || format!("updated {id}"))?;
            }
            Entities::Delete { entity, id } => {
                let target = EntityReference { logical_name: entity, id: guid(&id)? };
                backend.execute(Request::Delete { target })?;
                g.print(&serde_json::json!({ "id": id }), || format!("deleted {id}"))?;
            }
            Entities::Query { entity, conditions, orders, top, columns, file } => {
                let query = match (file, entity) {
                    (Some(path), _) => read_json::<Query>(&path, "query file")?,
                    (None, Some(entity)) => Query {
                        entity_name: entity,
                        columns,
                        criteria: Filter {
                            conditions: conditions.iter().map(|c| condition(c)).collect::<Result<_, _>>()?,
                            ..Default::default()
                        },
                        orders: orders
                            .iter()
                            .map(|o| {
                                let (attribute, dir) = o.split_once(':').unwrap_or((o, "asc"));
                                Order { attribute: attribute.to_owned(), descending: dir.eq_ignore_ascii_case("desc") }
                            })
                            .collect(),
                        top,
                        page_size: None,
                        paging_cookie: None,
                    },
                    (None, None) => return Err(CliError::new("invalid", "name the entity to query, or give --file")),
                };
                let Response::Collection(c) = backend.execute(Request::RetrieveMultiple { query })? else {
                    return Err(CliError::new("internal", "unexpected response"));
                };
                g.print(&c, || {
                    if c.entities.is_empty() {
                        return "no records".into();
                    }
                    let mut cols: Vec<String> = c.entities.iter().flat_map(|e| e.attributes.keys().cloned()).collect();
                    cols.sort();
                    cols.dedup();
                    cols.retain(|c| c != "createdon" && c != "modifiedon");
                    let mut rows =
                        vec![std::iter::once("ID".to_owned()).chain(cols.iter().map(|c| c.to_uppercase())).collect()];
                    for e in &c.entities {
                        let mut row = vec![e.id.map(|i| i.to_string()).unwrap_or_default()];
                        row.extend(cols.iter().map(|k| e.attributes.get(k).map(|v| v.to_string()).unwrap_or_default()));
                        rows.push(row);
                    }
                    let mut out = table(rows);
                    if c.more_records {
                        out.push_str("(more records: narrow the query or use --file with a paging cookie)\n");
                    }
                    out
                })?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
