//! The registry's stored rows: what the `assemblies`, `plugins`, `steps` and
//! `entity_definitions` tables hold, apart from the record types the API, the CLI
//! and the pipeline use.
//!
//! **Invariant:** a row's layout is the schema (bincode lays fields out by position,
//! with no names and no optional fields); it changes only with `SCHEMA_VERSION` and a
//! migration. The record types in `records` are free to gain fields, serde attributes
//! (`skip_serializing_if`, renames) or a different JSON shape: only the conversions
//! here follow them. `rows_keep_their_layout` pins the bytes.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{self, CodecError};
use crate::metadata::{AttributeType, EntityDefinition};
use crate::model::{AssemblyHash, Mode, Stage};
use crate::records::{AssemblyRecord, ImageKind, ImageSpec, PluginRecord, StepRecord};
use crate::runtime::LimitOverrides;

/// A record type kept in a registry table as its row type.
pub(crate) trait Stored: Sized {
    type Row: Serialize + DeserializeOwned + for<'a> From<&'a Self> + Into<Self>;
}

pub(crate) fn encode<T: Stored>(value: &T) -> Result<Vec<u8>, CodecError> {
    codec::encode(&T::Row::from(value))
}

pub(crate) fn decode<T: Stored>(bytes: &[u8]) -> Result<T, CodecError> {
    codec::decode::<T::Row>(bytes).map(Into::into)
}

#[derive(Serialize, Deserialize)]
pub(crate) struct AssemblyRow {
    hash: AssemblyHash,
    size: u64,
    wit_version: String,
    imports: Vec<String>,
    registered_at: i64,
}

impl Stored for AssemblyRecord {
    type Row = AssemblyRow;
}

impl From<&AssemblyRecord> for AssemblyRow {
    fn from(a: &AssemblyRecord) -> Self {
        AssemblyRow {
            hash: a.hash,
            size: a.size,
            wit_version: a.wit_version.clone(),
            imports: a.imports.clone(),
            registered_at: a.registered_at,
        }
    }
}

impl From<AssemblyRow> for AssemblyRecord {
    fn from(r: AssemblyRow) -> Self {
        AssemblyRecord {
            hash: r.hash,
            size: r.size,
            wit_version: r.wit_version,
            imports: r.imports,
            registered_at: r.registered_at,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct PluginRow {
    name: String,
    assembly: AssemblyHash,
    description: Option<String>,
    created_at: i64,
    updated_at: i64,
}

impl Stored for PluginRecord {
    type Row = PluginRow;
}

impl From<&PluginRecord> for PluginRow {
    fn from(p: &PluginRecord) -> Self {
        PluginRow {
            name: p.name.clone(),
            assembly: p.assembly,
            description: p.description.clone(),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

impl From<PluginRow> for PluginRecord {
    fn from(r: PluginRow) -> Self {
        PluginRecord {
            name: r.name,
            assembly: r.assembly,
            description: r.description,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// An image as stored: kind 0 = pre, 1 = post.
#[derive(Serialize, Deserialize)]
pub(super) struct ImageRow {
    kind: u32,
    alias: String,
    attributes: Vec<String>,
}

impl From<&ImageSpec> for ImageRow {
    fn from(i: &ImageSpec) -> Self {
        let kind = match i.kind {
            ImageKind::Pre => 0,
            ImageKind::Post => 1,
        };
        ImageRow { kind, alias: i.alias.clone(), attributes: i.attributes.clone() }
    }
}

impl From<ImageRow> for ImageSpec {
    fn from(r: ImageRow) -> Self {
        let kind = if r.kind == 0 { ImageKind::Pre } else { ImageKind::Post };
        ImageSpec { kind, alias: r.alias, attributes: r.attributes }
    }
}

/// A stage as stored: 0 pre-validation, 1 pre-operation, 2 main operation, 3 post-operation.
pub(super) fn stage_code(stage: Stage) -> u32 {
    match stage {
        Stage::PreValidation => 0,
        Stage::PreOperation => 1,
        Stage::MainOperation => 2,
        Stage::PostOperation => 3,
    }
}

pub(super) fn stage_of(code: u32) -> Stage {
    match code {
        0 => Stage::PreValidation,
        1 => Stage::PreOperation,
        2 => Stage::MainOperation,
        _ => Stage::PostOperation,
    }
}

/// A mode as stored: 0 synchronous, 1 asynchronous.
pub(super) fn mode_code(mode: Mode) -> u32 {
    match mode {
        Mode::Synchronous => 0,
        Mode::Asynchronous => 1,
    }
}

pub(super) fn mode_of(code: u32) -> Mode {
    if code == 0 { Mode::Synchronous } else { Mode::Asynchronous }
}

/// A step's limit overrides as stored, in this order.
#[derive(Serialize, Deserialize)]
pub(crate) struct LimitsRow {
    fuel: Option<u64>,
    memory_bytes: Option<u64>,
    timeout_ms: Option<u64>,
    trace_bytes: Option<u64>,
    host_calls: Option<u64>,
    input_bytes: Option<u64>,
    output_bytes: Option<u64>,
    write_bytes: Option<u64>,
}

impl From<&LimitOverrides> for LimitsRow {
    fn from(l: &LimitOverrides) -> Self {
        LimitsRow {
            fuel: l.fuel,
            memory_bytes: l.memory_bytes,
            timeout_ms: l.timeout_ms,
            trace_bytes: l.trace_bytes,
            host_calls: l.host_calls,
            input_bytes: l.input_bytes,
            output_bytes: l.output_bytes,
            write_bytes: l.write_bytes,
        }
    }
}

impl From<LimitsRow> for LimitOverrides {
    fn from(r: LimitsRow) -> Self {
        LimitOverrides {
            fuel: r.fuel,
            memory_bytes: r.memory_bytes,
            timeout_ms: r.timeout_ms,
            trace_bytes: r.trace_bytes,
            host_calls: r.host_calls,
            input_bytes: r.input_bytes,
            output_bytes: r.output_bytes,
            write_bytes: r.write_bytes,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub(crate) struct StepRow {
    id: Uuid,
    name: String,
    plugin: String,
    message: String,
    entity: Option<String>,
    stage: u32,
    mode: u32,
    rank: i32,
    filtering_attributes: Vec<String>,
    configuration: Option<String>,
    images: Vec<ImageRow>,
    limits: LimitsRow,
    enabled: bool,
    delete_job_on_success: bool,
    instance_reuse: u32,
    ordered_per_record: bool,
    created_at: i64,
    /// Schema 6: the user the step runs as (`None`: the caller).
    run_as: Option<Uuid>,
}

impl Stored for StepRecord {
    type Row = StepRow;
}

impl From<&StepRecord> for StepRow {
    fn from(s: &StepRecord) -> Self {
        StepRow {
            id: s.id,
            name: s.name.clone(),
            plugin: s.plugin.clone(),
            message: s.message.clone(),
            entity: s.entity.clone(),
            stage: stage_code(s.stage),
            mode: mode_code(s.mode),
            rank: s.rank,
            filtering_attributes: s.filtering_attributes.clone(),
            configuration: s.configuration.clone(),
            images: s.images.iter().map(ImageRow::from).collect(),
            limits: LimitsRow::from(&s.limits),
            enabled: s.enabled,
            delete_job_on_success: s.delete_job_on_success,
            instance_reuse: s.instance_reuse,
            ordered_per_record: s.ordered_per_record,
            created_at: s.created_at,
            run_as: s.run_as,
        }
    }
}

impl From<StepRow> for StepRecord {
    fn from(r: StepRow) -> Self {
        StepRecord {
            id: r.id,
            name: r.name,
            plugin: r.plugin,
            message: r.message,
            entity: r.entity,
            stage: stage_of(r.stage),
            mode: mode_of(r.mode),
            rank: r.rank,
            filtering_attributes: r.filtering_attributes,
            configuration: r.configuration,
            images: r.images.into_iter().map(ImageSpec::from).collect(),
            limits: r.limits.into(),
            enabled: r.enabled,
            delete_job_on_success: r.delete_job_on_success,
            instance_reuse: r.instance_reuse,
            ordered_per_record: r.ordered_per_record,
            created_at: r.created_at,
            run_as: r.run_as,
        }
    }
}

/// An entity definition as stored: attributes in name order, each with its type's
/// position in `AttributeType::ALL`.
#[derive(Serialize, Deserialize)]
pub(crate) struct DefinitionRow {
    name: String,
    attributes: Vec<(String, u32)>,
}

impl Stored for EntityDefinition {
    type Row = DefinitionRow;
}

impl From<&EntityDefinition> for DefinitionRow {
    fn from(d: &EntityDefinition) -> Self {
        let code =
            |t: AttributeType| AttributeType::ALL.iter().position(|a| *a == t).expect("every type is listed") as u32;
        DefinitionRow {
            name: d.name.clone(),
            attributes: d.attributes.iter().map(|(n, t)| (n.clone(), code(*t))).collect(),
        }
    }
}

impl From<DefinitionRow> for EntityDefinition {
    fn from(r: DefinitionRow) -> Self {
        let ty = |c: u32| AttributeType::ALL.get(c as usize).copied().unwrap_or(AttributeType::Text);
        EntityDefinition { name: r.name, attributes: r.attributes.into_iter().map(|(n, c)| (n, ty(c))).collect() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step() -> StepRecord {
        StepRecord {
            id: Uuid::from_u128(0x0102),
            name: "s".into(),
            plugin: "p".into(),
            message: "Create".into(),
            entity: Some("account".into()),
            stage: Stage::PostOperation,
            mode: Mode::Asynchronous,
            rank: -1,
            filtering_attributes: vec!["name".into()],
            configuration: None,
            images: vec![ImageSpec { kind: ImageKind::Post, alias: "i".into(), attributes: vec![] }],
            limits: LimitOverrides { fuel: Some(5), write_bytes: Some(7), ..Default::default() },
            enabled: true,
            delete_job_on_success: false,
            instance_reuse: 3,
            ordered_per_record: true,
            created_at: 9,
            run_as: None,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The bytes of schema 4's rows. If this fails, a record type's change reached the
    /// disk: change the conversion above instead, or bump the schema with a migration.
    #[test]
    fn rows_keep_their_layout() {
        let step = step();
        let bytes = encode(&step).unwrap();
        assert_eq!(
            hex(&bytes),
            "011000000000000000000000000000000102017301700643726561746501076163636f756e740301\
             0101046e616d65000101016900010500000000000001070100030112\
             00"
        );
        assert_eq!(decode::<StepRecord>(&bytes).unwrap(), step);

        let hash = AssemblyHash([7; 32]);
        let plugin = PluginRecord {
            name: "p".into(),
            assembly: hash,
            description: Some("d".into()),
            created_at: 1,
            updated_at: 2,
        };
        let bytes = encode(&plugin).unwrap();
        assert_eq!(hex(&bytes), format!("010170{}0101640204", "07".repeat(32)));
        assert_eq!(decode::<PluginRecord>(&bytes).unwrap(), plugin);

        let assembly = AssemblyRecord {
            hash,
            size: 300,
            wit_version: "0.1.0".into(),
            imports: vec!["a".into()],
            registered_at: -1,
        };
        let bytes = encode(&assembly).unwrap();
        assert_eq!(hex(&bytes), format!("01{}fb2c0105302e312e30010161 01", "07".repeat(32)).replace(' ', ""));
        assert_eq!(decode::<AssemblyRecord>(&bytes).unwrap(), assembly);

        let def = EntityDefinition {
            name: "a".into(),
            attributes: [("n".to_string(), AttributeType::Money), ("x".to_string(), AttributeType::Reference)].into(),
        };
        let bytes = encode(&def).unwrap();
        assert_eq!(hex(&bytes), "010161 02 016e04 017809".replace(' ', ""));
        assert_eq!(decode::<EntityDefinition>(&bytes).unwrap(), def);
    }
}
