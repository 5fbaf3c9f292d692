//! The host's data model: records, typed values, queries and the execution context.
//!
//! These are plughost's own types, independent of wasmtime and of the WIT bindings
//! (converted at the sandbox boundary) and of redb (encoded by `codec`). Their JSON
//! form is what users write in context and seed files and what the API speaks.
//!
//! Value JSON: `null`, `true`, `42` (integer), `1.5` (float), `"text"`, and tagged
//! objects for the rest: `{"decimal": "1.50"}`, `{"money": "12.50"}`,
//! `{"datetime": "2026-01-01T00:00:00Z"}` (or milliseconds), `{"guid": "…"}`,
//! `{"option": 3}`, `{"reference": {"logical_name": "account", "id": "…"}}`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Longest entity or attribute logical name.
pub const MAX_NAME_LEN: usize = 128;

/// The blake3 hash of an assembly's bytes: its identity.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssemblyHash(pub [u8; 32]);

impl AssemblyHash {
    pub fn of(bytes: &[u8]) -> Self {
        AssemblyHash(*blake3::hash(bytes).as_bytes())
    }

    /// The first 12 hex digits, for listings.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_owned()
    }
}

impl fmt::Display for AssemblyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for AssemblyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AssemblyHash({self})")
    }
}

impl std::str::FromStr for AssemblyHash {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("'{s}' is not an assembly hash (64 hex digits)");
        if s.len() != 64 || !s.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(AssemblyHash(out))
    }
}

impl Serialize for AssemblyHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() { s.collect_str(self) } else { self.0.serialize(s) }
    }
}

impl<'de> Deserialize<'de> for AssemblyHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(d).map(AssemblyHash)
        }
    }
}

/// A pointer to one record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EntityReference {
    pub logical_name: String,
    pub id: Uuid,
}

/// An attribute value, typed as Dataverse types them.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Text(String),
    Integer(i64),
    Float(f64),
    /// Canonical decimal text, checked by [`check_decimal`].
    Decimal(String),
    /// Canonical decimal text, checked by [`check_decimal`].
    Money(String),
    Boolean(bool),
    /// UTC milliseconds since the Unix epoch.
    DateTime(i64),
    Guid(Uuid),
    OptionSet(i32),
    Reference(EntityReference),
}

impl Value {
    /// The type's name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Text(_) => "text",
            Value::Integer(_) => "integer",
            Value::Float(_) => "float",
            Value::Decimal(_) => "decimal",
            Value::Money(_) => "money",
            Value::Boolean(_) => "boolean",
            Value::DateTime(_) => "datetime",
            Value::Guid(_) => "guid",
            Value::OptionSet(_) => "option",
            Value::Reference(_) => "reference",
        }
    }

    /// Checks the invariants the type system cannot: canonical decimals, finite floats.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Value::Decimal(d) | Value::Money(d) => check_decimal(d),
            Value::Float(f) if !f.is_finite() => Err(format!("float {f} is not a finite number")),
            Value::Reference(r) => check_name(&r.logical_name),
            _ => Ok(()),
        }
    }

    /// Approximate size in bytes, for payload limits.
    pub fn approx_size(&self) -> usize {
        match self {
            Value::Text(s) | Value::Decimal(s) | Value::Money(s) => 8 + s.len(),
            Value::Reference(r) => 24 + r.logical_name.len(),
            _ => 16,
        }
    }
}

/// A decimal is an optional '-', one or more digits, and optionally '.' and one or
/// more digits: "12", "-0.5", "12.50". At most 38 digits, as in Dataverse.
pub fn check_decimal(text: &str) -> Result<(), String> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let ok = all_digits(int) && frac.is_none_or(all_digits) && int.len() + frac.map_or(0, str::len) <= 38;
    if ok {
        Ok(())
    } else {
        Err(format!("'{text}' is not a decimal (expected digits with an optional '-' and '.', e.g. \"12.50\")"))
    }
}

/// Logical names are lower-case ASCII letters, digits and '_', starting with a letter.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut bytes = name.bytes();
    let ok = name.len() <= MAX_NAME_LEN
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "'{name}' is not a logical name (use lower-case letters, digits and '_', starting with a letter, at most {MAX_NAME_LEN} characters)"
        ))
    }
}

/// A record: its entity, its id once created, and its attributes by name.
#[derive(Clone, Debug, PartialEq, Default, Serialize, Deserialize)]
pub struct Entity {
    pub logical_name: String,
    #[serde(default)]
    pub id: Option<Uuid>,
    #[serde(default)]
    pub attributes: BTreeMap<String, Value>,
}

impl Entity {
    pub fn new(logical_name: impl Into<String>) -> Self {
        Entity { logical_name: logical_name.into(), id: None, attributes: BTreeMap::new() }
    }

    pub fn with(mut self, name: &str, value: Value) -> Self {
        self.attributes.insert(name.to_owned(), value);
        self
    }

    pub fn reference(&self) -> Option<EntityReference> {
        Some(EntityReference { logical_name: self.logical_name.clone(), id: self.id? })
    }

    pub fn validate(&self) -> Result<(), String> {
        check_name(&self.logical_name)?;
        for (name, value) in &self.attributes {
            check_name(name).map_err(|e| format!("attribute {e}"))?;
            value.validate().map_err(|e| format!("attribute '{name}': {e}"))?;
        }
        Ok(())
    }

    pub fn approx_size(&self) -> usize {
        32 + self.logical_name.len() + self.attributes.iter().map(|(k, v)| k.len() + v.approx_size()).sum::<usize>()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionOperator {
    Equal,
    NotEqual,
    Greater,
    GreaterEqual,
    Less,
    LessEqual,
    Like,
    NotLike,
    In,
    NotIn,
    Null,
    NotNull,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    pub attribute: String,
    pub operator: ConditionOperator,
    #[serde(default)]
    pub values: Vec<Value>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogicalOperator {
    #[default]
    And,
    Or,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConditionGroup {
    #[serde(default)]
    pub operator: LogicalOperator,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Filter {
    #[serde(default)]
    pub operator: LogicalOperator,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub groups: Vec<ConditionGroup>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub attribute: String,
    #[serde(default)]
    pub descending: bool,
}

/// Dataverse's QueryExpression, reduced to one entity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Query {
    pub entity_name: String,
    /// Empty means all columns.
    #[serde(default)]
    pub columns: Vec<String>,
    #[serde(default)]
    pub criteria: Filter,
    #[serde(default)]
    pub orders: Vec<Order>,
    #[serde(default)]
    pub top: Option<u32>,
    #[serde(default)]
    pub page_size: Option<u32>,
    #[serde(default)]
    pub paging_cookie: Option<String>,
}

impl Query {
    pub fn approx_size(&self) -> usize {
        let cond = |c: &Condition| 16 + c.attribute.len() + c.values.iter().map(Value::approx_size).sum::<usize>();
        64 + self.entity_name.len()
            + self.columns.iter().map(String::len).sum::<usize>()
            + self.criteria.conditions.iter().map(cond).sum::<usize>()
            + self.criteria.groups.iter().flat_map(|g| &g.conditions).map(cond).sum::<usize>()
            + self.paging_cookie.as_ref().map_or(0, String::len)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EntityCollection {
    pub entities: Vec<Entity>,
    pub more_records: bool,
    pub paging_cookie: Option<String>,
}

/// A parameter: more than a plain value ("Target" is a record, etc.).
#[derive(Clone, Debug, PartialEq)]
pub enum ParameterValue {
    Value(Value),
    Entity(Entity),
    Entities(Vec<Entity>),
    Reference(EntityReference),
    Query(Query),
}

impl ParameterValue {
    pub fn validate(&self) -> Result<(), String> {
        match self {
            ParameterValue::Value(v) => v.validate(),
            ParameterValue::Entity(e) => e.validate(),
            ParameterValue::Entities(es) => es.iter().try_for_each(Entity::validate),
            ParameterValue::Reference(r) => check_name(&r.logical_name),
            ParameterValue::Query(q) => check_name(&q.entity_name),
        }
    }

    pub fn approx_size(&self) -> usize {
        match self {
            ParameterValue::Value(v) => v.approx_size(),
            ParameterValue::Entity(e) => e.approx_size(),
            ParameterValue::Entities(es) => es.iter().map(Entity::approx_size).sum(),
            ParameterValue::Reference(r) => 24 + r.logical_name.len(),
            ParameterValue::Query(q) => q.approx_size(),
        }
    }
}

/// Parameters by name.
pub type Parameters = BTreeMap<String, ParameterValue>;

/// Pipeline stage (Dataverse numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    PreValidation,
    #[default]
    PreOperation,
    MainOperation,
    PostOperation,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::PreValidation, Stage::PreOperation, Stage::MainOperation, Stage::PostOperation];

    /// Dataverse's number for the stage.
    pub fn code(self) -> u32 {
        match self {
            Stage::PreValidation => 10,
            Stage::PreOperation => 20,
            Stage::MainOperation => 30,
            Stage::PostOperation => 40,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Stage::PreValidation => "pre-validation",
            Stage::PreOperation => "pre-operation",
            Stage::MainOperation => "main-operation",
            Stage::PostOperation => "post-operation",
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = String;

    /// Accepts the name ("pre-operation", "PreOperation") or the number (20).
    fn from_str(s: &str) -> Result<Self, String> {
        let key: String = s.chars().filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_ascii_lowercase();
        Stage::ALL
            .into_iter()
            .find(|st| key == st.code().to_string() || key == st.name().replace('-', ""))
            .ok_or_else(|| format!("unknown stage '{s}': use pre-validation (10), pre-operation (20), main-operation (30) or post-operation (40)"))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    #[default]
    Synchronous,
    Asynchronous,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "sync" | "synchronous" => Ok(Mode::Synchronous),
            "async" | "asynchronous" => Ok(Mode::Asynchronous),
            _ => Err(format!("unknown mode '{s}': use sync or async")),
        }
    }
}

/// What a plug-in is told about the event it runs for (Dataverse IPluginExecutionContext).
/// Every field has a default, so a hand-written context file needs only what matters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExecutionContext {
    pub message_name: String,
    pub primary_entity_name: String,
    pub primary_entity_id: Option<Uuid>,
    pub stage: Stage,
    pub mode: Mode,
    pub depth: u32,
    pub correlation_id: Uuid,
    pub operation_id: Option<Uuid>,
    pub step_id: Option<Uuid>,
    pub initiating_user_id: Uuid,
    pub user_id: Uuid,
    /// UTC milliseconds since the Unix epoch.
    pub operation_created_on: i64,
    pub input_parameters: Parameters,
    pub output_parameters: Parameters,
    pub pre_entity_images: BTreeMap<String, Entity>,
    pub post_entity_images: BTreeMap<String, Entity>,
    pub shared_variables: BTreeMap<String, Value>,
    pub configuration: Option<String>,
}

impl Default for ExecutionContext {
    /// A Create at depth 1, now, in a new correlation: what a hand-written context file starts from.
    fn default() -> Self {
        ExecutionContext {
            message_name: "Create".into(),
            depth: 1,
            correlation_id: Uuid::new_v4(),
            operation_created_on: crate::clock::now_ms(),
            ..ExecutionContext::empty()
        }
    }
}

impl ExecutionContext {
    /// A context with nothing in it (no ids, no time): a placeholder, cheap to make.
    pub fn empty() -> Self {
        ExecutionContext {
            message_name: String::new(),
            primary_entity_name: String::new(),
            primary_entity_id: None,
            stage: Stage::PreOperation,
            mode: Mode::Synchronous,
            depth: 0,
            correlation_id: Uuid::nil(),
            operation_id: None,
            step_id: None,
            initiating_user_id: Uuid::nil(),
            user_id: Uuid::nil(),
            operation_created_on: 0,
            input_parameters: Parameters::new(),
            output_parameters: Parameters::new(),
            pre_entity_images: BTreeMap::new(),
            post_entity_images: BTreeMap::new(),
            shared_variables: BTreeMap::new(),
            configuration: None,
        }
    }

    /// Fills the primary entity from the "Target" parameter when the file left it out.
    pub fn fill_primary_entity(&mut self) {
        match self.input_parameters.get("Target") {
            Some(ParameterValue::Entity(e)) => {
                if self.primary_entity_name.is_empty() {
                    self.primary_entity_name = e.logical_name.clone();
                }
                self.primary_entity_id = self.primary_entity_id.or(e.id);
            }
            Some(ParameterValue::Reference(r)) => {
                if self.primary_entity_name.is_empty() {
                    self.primary_entity_name = r.logical_name.clone();
                }
                self.primary_entity_id = self.primary_entity_id.or(Some(r.id));
            }
            _ => {}
        }
    }

    pub fn approx_size(&self) -> usize {
        let params = |p: &Parameters| p.iter().map(|(k, v)| k.len() + v.approx_size()).sum::<usize>();
        let images = |m: &BTreeMap<String, Entity>| m.iter().map(|(k, e)| k.len() + e.approx_size()).sum::<usize>();
        256 + self.message_name.len()
            + self.primary_entity_name.len()
            + params(&self.input_parameters)
            + params(&self.output_parameters)
            + images(&self.pre_entity_images)
            + images(&self.post_entity_images)
            + self.shared_variables.iter().map(|(k, v)| k.len() + v.approx_size()).sum::<usize>()
            + self.configuration.as_ref().map_or(0, String::len)
    }
}

/// What a successful execution hands back: only what the plug-in set or changed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutionResult {
    pub input_parameters: Parameters,
    pub output_parameters: Parameters,
    pub shared_variables: BTreeMap<String, Value>,
}

impl ExecutionResult {
    pub fn approx_size(&self) -> usize {
        let params = |p: &Parameters| p.iter().map(|(k, v)| k.len() + v.approx_size()).sum::<usize>();
        params(&self.input_parameters)
            + params(&self.output_parameters)
            + self.shared_variables.iter().map(|(k, v)| k.len() + v.approx_size()).sum::<usize>()
    }
}

// ---- serde: readable JSON for users, a plain derived form for the binary codec ----

/// The binary form of [`Value`]: what bincode stores.
#[derive(Serialize, Deserialize)]
enum ValueRepr {
    Null,
    Text(String),
    Integer(i64),
    Float(f64),
    Decimal(String),
    Money(String),
    Boolean(bool),
    DateTime(i64),
    Guid(Uuid),
    OptionSet(i32),
    Reference(EntityReference),
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            let repr = match self.clone() {
                Value::Null => ValueRepr::Null,
                Value::Text(v) => ValueRepr::Text(v),
                Value::Integer(v) => ValueRepr::Integer(v),
                Value::Float(v) => ValueRepr::Float(v),
                Value::Decimal(v) => ValueRepr::Decimal(v),
                Value::Money(v) => ValueRepr::Money(v),
                Value::Boolean(v) => ValueRepr::Boolean(v),
                Value::DateTime(v) => ValueRepr::DateTime(v),
                Value::Guid(v) => ValueRepr::Guid(v),
                Value::OptionSet(v) => ValueRepr::OptionSet(v),
                Value::Reference(v) => ValueRepr::Reference(v),
            };
            return repr.serialize(s);
        }
        match self {
            Value::Null => s.serialize_unit(),
            Value::Text(v) => s.serialize_str(v),
            Value::Integer(v) => s.serialize_i64(*v),
            Value::Float(v) => s.serialize_f64(*v),
            Value::Boolean(v) => s.serialize_bool(*v),
            Value::Decimal(v) => tagged(s, "decimal", v),
            Value::Money(v) => tagged(s, "money", v),
            Value::DateTime(ms) => match chrono::DateTime::from_timestamp_millis(*ms) {
                Some(t) => tagged(s, "datetime", &t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                None => tagged(s, "datetime", ms),
            },
            Value::Guid(v) => tagged(s, "guid", v),
            Value::OptionSet(v) => tagged(s, "option", v),
            Value::Reference(v) => tagged(s, "reference", v),
        }
    }
}

/// A one-key map: the readable form of a typed value.
fn tagged<S: Serializer, T: Serialize + ?Sized>(s: S, tag: &str, value: &T) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(1))?;
    m.serialize_entry(tag, value)?;
    m.end()
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            return Ok(match ValueRepr::deserialize(d)? {
                ValueRepr::Null => Value::Null,
                ValueRepr::Text(v) => Value::Text(v),
                ValueRepr::Integer(v) => Value::Integer(v),
                ValueRepr::Float(v) => Value::Float(v),
                ValueRepr::Decimal(v) => Value::Decimal(v),
                ValueRepr::Money(v) => Value::Money(v),
                ValueRepr::Boolean(v) => Value::Boolean(v),
                ValueRepr::DateTime(v) => Value::DateTime(v),
                ValueRepr::Guid(v) => Value::Guid(v),
                ValueRepr::OptionSet(v) => Value::OptionSet(v),
                ValueRepr::Reference(v) => Value::Reference(v),
            });
        }
        let json = serde_json::Value::deserialize(d)?;
        value_from_json(json).map_err(serde::de::Error::custom)
    }
}

/// Parses the readable JSON form of a value.
pub fn value_from_json(json: serde_json::Value) -> Result<Value, String> {
    use serde_json::Value as J;
    let value = match json {
        J::Null => Value::Null,
        J::Bool(b) => Value::Boolean(b),
        J::String(s) => Value::Text(s),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Float(n.as_f64().ok_or_else(|| format!("number {n} is out of range"))?),
        },
        J::Array(_) => return Err("a value cannot be a list; use a parameter of entities instead".into()),
        J::Object(map) => {
            let mut it = map.into_iter();
            let (Some((tag, inner)), None) = (it.next(), it.next()) else {
                return Err("a typed value is an object with exactly one key, e.g. {\"money\": \"12.50\"}".into());
            };
            let text = |v: J| match v {
                J::String(s) => Ok(s),
                J::Number(n) => Ok(n.to_string()),
                other => Err(format!("'{tag}' takes a string, got {other}")),
            };
            match tag.as_str() {
                "text" => Value::Text(text(inner)?),
                "integer" => Value::Integer(inner.as_i64().ok_or("'integer' takes a whole number")?),
                "float" => Value::Float(inner.as_f64().ok_or("'float' takes a number")?),
                "decimal" => Value::Decimal(text(inner)?),
                "money" => Value::Money(text(inner)?),
                "boolean" => Value::Boolean(inner.as_bool().ok_or("'boolean' takes true or false")?),
                "datetime" => Value::DateTime(time_from_json(&inner).map_err(|m| format!("'datetime': {m}"))?),
                "guid" => Value::Guid(parse_guid(&text(inner)?)?),
                "option" => Value::OptionSet(
                    inner.as_i64().and_then(|i| i32::try_from(i).ok()).ok_or("'option' takes a 32-bit whole number")?,
                ),
                "reference" => {
                    Value::Reference(serde_json::from_value(inner).map_err(|e| format!("'reference': {e}"))?)
                }
                other => {
                    return Err(format!(
                        "unknown value type '{other}': use text, integer, float, decimal, money, boolean, datetime, guid, option or reference"
                    ));
                }
            }
        }
    };
    value.validate()?;
    Ok(value)
}

pub fn parse_guid(s: &str) -> Result<Uuid, String> {
    Uuid::parse_str(s).map_err(|_| format!("'{s}' is not a GUID (expected e.g. 1b4e28ba-2fa1-11d2-883f-0016d3cca427)"))
}

/// The binary form of [`ParameterValue`].
#[derive(Serialize, Deserialize)]
enum ParameterRepr {
    Value(Value),
    Entity(Entity),
    Entities(Vec<Entity>),
    Reference(EntityReference),
    Query(Query),
}

impl Serialize for ParameterValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if !s.is_human_readable() {
            let repr = match self.clone() {
                ParameterValue::Value(v) => ParameterRepr::Value(v),
                ParameterValue::Entity(v) => ParameterRepr::Entity(v),
                ParameterValue::Entities(v) => ParameterRepr::Entities(v),
                ParameterValue::Reference(v) => ParameterRepr::Reference(v),
                ParameterValue::Query(v) => ParameterRepr::Query(v),
            };
            return repr.serialize(s);
        }
        match self {
            // Plain values stand for themselves; the rest are tagged.
            ParameterValue::Value(v) => v.serialize(s),
            ParameterValue::Entity(e) => tagged(s, "entity", e),
            ParameterValue::Entities(es) => tagged(s, "entities", es),
            ParameterValue::Reference(r) => tagged(s, "reference", r),
            ParameterValue::Query(q) => tagged(s, "query", q),
        }
    }
}

impl<'de> Deserialize<'de> for ParameterValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        if !d.is_human_readable() {
            return Ok(match ParameterRepr::deserialize(d)? {
                ParameterRepr::Value(v) => ParameterValue::Value(v),
                ParameterRepr::Entity(v) => ParameterValue::Entity(v),
                ParameterRepr::Entities(v) => ParameterValue::Entities(v),
                ParameterRepr::Reference(v) => ParameterValue::Reference(v),
                ParameterRepr::Query(v) => ParameterValue::Query(v),
            });
        }
        let json = serde_json::Value::deserialize(d)?;
        if let serde_json::Value::Object(map) = &json
            && map.len() == 1
        {
            let (tag, inner) = map.iter().next().expect("one entry");
            let inner = inner.clone();
            let parsed = match tag.as_str() {
                "entity" => Some(serde_json::from_value(inner).map(ParameterValue::Entity)),
                "entities" => Some(serde_json::from_value(inner).map(ParameterValue::Entities)),
                "reference" => Some(serde_json::from_value(inner).map(ParameterValue::Reference)),
                "query" => Some(serde_json::from_value(inner).map(ParameterValue::Query)),
                "value" => Some(serde_json::from_value(inner).map(ParameterValue::Value)),
                _ => None,
            };
            if let Some(parsed) = parsed {
                return parsed.map_err(|e| D::Error::custom(format!("parameter '{tag}': {e}")));
            }
        }
        value_from_json(json).map(ParameterValue::Value).map_err(D::Error::custom)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Text(s) => write!(f, "{s:?}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Decimal(d) | Value::Money(d) => f.write_str(d),
            Value::Boolean(b) => write!(f, "{b}"),
            Value::DateTime(ms) => match chrono::DateTime::from_timestamp_millis(*ms) {
                Some(t) => f.write_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
                None => write!(f, "{ms}ms"),
            },
            Value::Guid(g) => write!(f, "{g}"),
            Value::OptionSet(o) => write!(f, "option {o}"),
            Value::Reference(r) => write!(f, "{}({})", r.logical_name, r.id),
        }
    }
}

/// A time given as an RFC 3339 string or as UTC milliseconds, in JSON.
pub fn time_from_json(v: &serde_json::Value) -> Result<i64, String> {
    match v {
        serde_json::Value::Number(n) => n.as_i64().ok_or_else(|| format!("{n} milliseconds is not a whole number")),
        serde_json::Value::String(s) => time_from_text(s),
        other => Err(format!("a time is an RFC 3339 string or UTC milliseconds, got {other}")),
    }
}

/// A time given as RFC 3339 text (`2026-01-31T09:30:00Z`) or UTC milliseconds.
pub fn time_from_text(s: &str) -> Result<i64, String> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("{s:?} is not an RFC 3339 time ({e}) or UTC milliseconds, e.g. \"2026-01-31T09:30:00Z\""))
}

/// Deserializes an optional time field given as an RFC 3339 string or UTC
/// milliseconds (`#[serde(deserialize_with = ...)]`; it serializes as milliseconds).
pub fn flexible_time<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::Deserialize;
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => time_from_json(&v).map(Some).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_json_round_trips_every_type() {
        let id = Uuid::new_v4();
        let values = vec![
            Value::Null,
            Value::Text("hi".into()),
            Value::Integer(-7),
            Value::Float(1.5),
            Value::Decimal("12.50".into()),
            Value::Money("-3".into()),
            Value::Boolean(true),
            Value::DateTime(1_700_000_000_123),
            Value::Guid(id),
            Value::OptionSet(3),
            Value::Reference(EntityReference { logical_name: "account".into(), id }),
        ];
        for v in values {
            let json = serde_json::to_string(&v).unwrap();
            let back: Value = serde_json::from_str(&json).unwrap();
            assert_eq!(back, v, "{json}");
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_reason() {
        let err = |s: &str| serde_json::from_str::<Value>(s).unwrap_err().to_string();
        assert!(err(r#"{"money": "12,50"}"#).contains("not a decimal"));
        assert!(err(r#"{"guid": "nope"}"#).contains("not a GUID"));
        assert!(err(r#"{"colour": 1}"#).contains("unknown value type 'colour'"));
        assert!(err(r#"{"datetime": "yesterday"}"#).contains("RFC 3339"));
    }

    #[test]
    fn parameters_parse_tagged_and_plain() {
        let p: ParameterValue =
            serde_json::from_str(r#"{"entity": {"logical_name": "account", "attributes": {"name": "A"}}}"#).unwrap();
        assert!(matches!(p, ParameterValue::Entity(ref e) if e.attributes["name"] == Value::Text("A".into())));
        let p: ParameterValue = serde_json::from_str("5").unwrap();
        assert_eq!(p, ParameterValue::Value(Value::Integer(5)));
    }

    #[test]
    fn names_and_decimals_are_checked() {
        assert!(check_name("account_2").is_ok());
        assert!(check_name("Account").is_err());
        assert!(check_name("").is_err());
        assert!(check_decimal("-0.50").is_ok());
        assert!(check_decimal("1.").is_err());
        assert!(check_decimal("1e5").is_err());
    }

    #[test]
    fn stages_parse_by_name_or_number() {
        assert_eq!("20".parse::<Stage>().unwrap(), Stage::PreOperation);
        assert_eq!("PostOperation".parse::<Stage>().unwrap(), Stage::PostOperation);
        assert_eq!("pre-validation".parse::<Stage>().unwrap(), Stage::PreValidation);
        assert!("50".parse::<Stage>().is_err());
    }
}
