//! The one place that generates host bindings for the plug-in world, and the
//! conversions between the generated types and the host's model.
//!
//! Conversions from guest values validate them (GUIDs, decimals, names): a guest
//! cannot hand the host a value the model would refuse.

use uuid::Uuid;

use crate::model;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: trappable },
});

pub(crate) use self::plughost::plugin::types as wit;

/// The WIT package version this host implements; registration checks it.
pub const WIT_PACKAGE: &str = "plughost:plugin";
pub const WIT_VERSION: (u64, u64, u64) = (0, 1, 0);

fn guid(s: &str) -> Result<Uuid, String> {
    model::parse_guid(s)
}

pub(crate) fn value_to_wit(v: &model::Value) -> wit::Value {
    use model::Value as M;
    match v {
        M::Null => wit::Value::Null,
        M::Text(s) => wit::Value::Text(s.clone()),
        M::Integer(i) => wit::Value::Integer(*i),
        M::Float(f) => wit::Value::Float(*f),
        M::Decimal(d) => wit::Value::Decimal(d.clone()),
        M::Money(d) => wit::Value::Money(d.clone()),
        M::Boolean(b) => wit::Value::Boolean(*b),
        M::DateTime(t) => wit::Value::DateTime(*t),
        M::Guid(g) => wit::Value::Guid(g.to_string()),
        M::OptionSet(o) => wit::Value::OptionSet(*o),
        M::Reference(r) => wit::Value::Reference(reference_to_wit(r)),
    }
}

pub(crate) fn value_from_wit(v: wit::Value) -> Result<model::Value, String> {
    use model::Value as M;
    let value = match v {
        wit::Value::Null => M::Null,
        wit::Value::Text(s) => M::Text(s),
        wit::Value::Integer(i) => M::Integer(i),
        wit::Value::Float(f) => M::Float(f),
        wit::Value::Decimal(d) => M::Decimal(d),
        wit::Value::Money(d) => M::Money(d),
        wit::Value::Boolean(b) => M::Boolean(b),
        wit::Value::DateTime(t) => M::DateTime(t),
        wit::Value::Guid(g) => M::Guid(guid(&g)?),
        wit::Value::OptionSet(o) => M::OptionSet(o),
        wit::Value::Reference(r) => M::Reference(reference_from_wit(r)?),
    };
    value.validate()?;
    Ok(value)
}

pub(crate) fn reference_to_wit(r: &model::EntityReference) -> wit::EntityReference {
    wit::EntityReference { logical_name: r.logical_name.clone(), id: r.id.to_string() }
}

pub(crate) fn reference_from_wit(r: wit::EntityReference) -> Result<model::EntityReference, String> {
    model::check_name(&r.logical_name)?;
    Ok(model::EntityReference { id: guid(&r.id)?, logical_name: r.logical_name })
}

pub(crate) fn entity_to_wit(e: &model::Entity) -> wit::Entity {
    wit::Entity {
        logical_name: e.logical_name.clone(),
        id: e.id.map(|id| id.to_string()),
        attributes: e
            .attributes
            .iter()
            .map(|(name, value)| wit::Attribute { name: name.clone(), value: value_to_wit(value) })
            .collect(),
    }
}

pub(crate) fn entity_from_wit(e: wit::Entity) -> Result<model::Entity, String> {
    model::check_name(&e.logical_name)?;
    let mut out = model::Entity::new(e.logical_name);
    out.id = e.id.as_deref().map(guid).transpose()?;
    for a in e.attributes {
        model::check_name(&a.name).map_err(|m| format!("attribute {m}"))?;
        let value = value_from_wit(a.value).map_err(|m| format!("attribute '{}': {m}", a.name))?;
        if out.attributes.insert(a.name.clone(), value).is_some() {
            return Err(format!("attribute '{}' is given twice", a.name));
        }
    }
    Ok(out)
}

fn operator_to_wit(o: model::ConditionOperator) -> wit::ConditionOperator {
    use model::ConditionOperator as M;
    match o {
        M::Equal => wit::ConditionOperator::Equal,
        M::NotEqual => wit::ConditionOperator::NotEqual,
        M::Greater => wit::ConditionOperator::Greater,
        M::GreaterEqual => wit::ConditionOperator::GreaterEqual,
        M::Less => wit::ConditionOperator::Less,
        M::LessEqual => wit::ConditionOperator::LessEqual,
        M::Like => wit::ConditionOperator::Like,
        M::NotLike => wit::ConditionOperator::NotLike,
        M::In => wit::ConditionOperator::In,
        M::NotIn => wit::ConditionOperator::NotIn,
        M::Null => wit::ConditionOperator::Null,
        M::NotNull => wit::ConditionOperator::NotNull,
    }
}

fn operator_from_wit(o: wit::ConditionOperator) -> model::ConditionOperator {
    use model::ConditionOperator as M;
    match o {
        wit::ConditionOperator::Equal => M::Equal,
        wit::ConditionOperator::NotEqual => M::NotEqual,
        wit::ConditionOperator::Greater => M::Greater,
        wit::ConditionOperator::GreaterEqual => M::GreaterEqual,
        wit::ConditionOperator::Less => M::Less,
        wit::ConditionOperator::LessEqual => M::LessEqual,
        wit::ConditionOperator::Like => M::Like,
        wit::ConditionOperator::NotLike => M::NotLike,
        wit::ConditionOperator::In => M::In,
        wit::ConditionOperator::NotIn => M::NotIn,
        wit::ConditionOperator::Null => M::Null,
        wit::ConditionOperator::NotNull => M::NotNull,
    }
}

fn logical_to_wit(o: model::LogicalOperator) -> wit::LogicalOperator {
    match o {
        model::LogicalOperator::And => wit::LogicalOperator::And,
        model::LogicalOperator::Or => wit::LogicalOperator::Or,
    }
}

fn logical_from_wit(o: wit::LogicalOperator) -> model::LogicalOperator {
    match o {
        wit::LogicalOperator::And => model::LogicalOperator::And,
        wit::LogicalOperator::Or => model::LogicalOperator::Or,
    }
}

fn condition_to_wit(c: &model::Condition) -> wit::Condition {
    wit::Condition {
        attribute: c.attribute.clone(),
        operator: operator_to_wit(c.operator),
        values: c.values.iter().map(value_to_wit).collect(),
    }
}

fn condition_from_wit(c: wit::Condition) -> Result<model::Condition, String> {
    Ok(model::Condition {
        attribute: c.attribute,
        operator: operator_from_wit(c.operator),
        values: c.values.into_iter().map(value_from_wit).collect::<Result<_, _>>()?,
    })
}

pub(crate) fn query_to_wit(q: &model::Query) -> wit::Query {
    wit::Query {
        entity_name: q.entity_name.clone(),
        columns: q.columns.clone(),
        criteria: wit::Filter {
            operator: logical_to_wit(q.criteria.operator),
            conditions: q.criteria.conditions.iter().map(condition_to_wit).collect(),
            groups: q
                .criteria
                .groups
                .iter()
                .map(|g| wit::ConditionGroup {
                    operator: logical_to_wit(g.operator),
                    conditions: g.conditions.iter().map(condition_to_wit).collect(),
                })
                .collect(),
        },
        orders: q
            .orders
            .iter()
            .map(|o| wit::Order { attribute: o.attribute.clone(), descending: o.descending })
            .collect(),
        top: q.top,
        page_size: q.page_size,
        paging_cookie: q.paging_cookie.clone(),
    }
}

pub(crate) fn query_from_wit(q: wit::Query) -> Result<model::Query, String> {
    model::check_name(&q.entity_name)?;
    Ok(model::Query {
        entity_name: q.entity_name,
        columns: q.columns,
        criteria: model::Filter {
            operator: logical_from_wit(q.criteria.operator),
            conditions: q.criteria.conditions.into_iter().map(condition_from_wit).collect::<Result<_, _>>()?,
            groups: q
                .criteria
                .groups
                .into_iter()
                .map(|g| {
                    Ok(model::ConditionGroup {
                        operator: logical_from_wit(g.operator),
                        conditions: g.conditions.into_iter().map(condition_from_wit).collect::<Result<_, String>>()?,
                    })
                })
                .collect::<Result<_, String>>()?,
        },
        orders: q
            .orders
            .into_iter()
            .map(|o| model::Order { attribute: o.attribute, descending: o.descending })
            .collect(),
        top: q.top,
        page_size: q.page_size,
        paging_cookie: q.paging_cookie,
    })
}

pub(crate) fn parameter_to_wit(name: &str, p: &model::ParameterValue) -> wit::Parameter {
    use model::ParameterValue as M;
    let value = match p {
        M::Value(v) => wit::ParameterValue::Value(value_to_wit(v)),
        M::Entity(e) => wit::ParameterValue::Entity(entity_to_wit(e)),
        M::Entities(es) => wit::ParameterValue::Entities(es.iter().map(entity_to_wit).collect()),
        M::Reference(r) => wit::ParameterValue::Reference(reference_to_wit(r)),
        M::Query(q) => wit::ParameterValue::Query(query_to_wit(q)),
    };
    wit::Parameter { name: name.to_owned(), value }
}

pub(crate) fn parameters_to_wit(params: &model::Parameters) -> Vec<wit::Parameter> {
    params.iter().map(|(name, p)| parameter_to_wit(name, p)).collect()
}

pub(crate) fn parameters_from_wit(params: Vec<wit::Parameter>) -> Result<model::Parameters, String> {
    use model::ParameterValue as M;
    let mut out = model::Parameters::new();
    for p in params {
        if p.name.is_empty() {
            return Err("a parameter has an empty name".into());
        }
        let value = match p.value {
            wit::ParameterValue::Value(v) => M::Value(value_from_wit(v)?),
            wit::ParameterValue::Entity(e) => M::Entity(entity_from_wit(e)?),
            wit::ParameterValue::Entities(es) => {
                M::Entities(es.into_iter().map(entity_from_wit).collect::<Result<_, _>>()?)
            }
            wit::ParameterValue::Reference(r) => M::Reference(reference_from_wit(r)?),
            wit::ParameterValue::Query(q) => M::Query(query_from_wit(q)?),
        };
        if out.insert(p.name.clone(), value).is_some() {
            return Err(format!("parameter '{}' is given twice", p.name));
        }
    }
    Ok(out)
}

fn shared_from_wit(
    vars: Vec<(String, wit::Value)>,
) -> Result<std::collections::BTreeMap<String, model::Value>, String> {
    let mut out = std::collections::BTreeMap::new();
    for (name, v) in vars {
        let value = value_from_wit(v).map_err(|m| format!("shared variable '{name}': {m}"))?;
        if out.insert(name.clone(), value).is_some() {
            return Err(format!("shared variable '{name}' is given twice"));
        }
    }
    Ok(out)
}

pub(crate) fn context_to_wit(c: &model::ExecutionContext) -> wit::ExecutionContext {
    let images = |m: &std::collections::BTreeMap<String, model::Entity>| {
        m.iter().map(|(k, e)| (k.clone(), entity_to_wit(e))).collect()
    };
    wit::ExecutionContext {
        message_name: c.message_name.clone(),
        primary_entity_name: c.primary_entity_name.clone(),
        primary_entity_id: c.primary_entity_id.map(|id| id.to_string()),
        stage: match c.stage {
            model::Stage::PreValidation => wit::Stage::PreValidation,
            model::Stage::PreOperation => wit::Stage::PreOperation,
            model::Stage::MainOperation => wit::Stage::MainOperation,
            model::Stage::PostOperation => wit::Stage::PostOperation,
        },
        mode: match c.mode {
            model::Mode::Synchronous => wit::Mode::Synchronous,
            model::Mode::Asynchronous => wit::Mode::Asynchronous,
        },
        depth: c.depth,
        correlation_id: c.correlation_id.to_string(),
        operation_id: c.operation_id.map(|id| id.to_string()),
        step_id: c.step_id.map(|id| id.to_string()),
        initiating_user_id: c.initiating_user_id.to_string(),
        user_id: c.user_id.to_string(),
        operation_created_on: c.operation_created_on,
        input_parameters: parameters_to_wit(&c.input_parameters),
        output_parameters: parameters_to_wit(&c.output_parameters),
        pre_entity_images: images(&c.pre_entity_images),
        post_entity_images: images(&c.post_entity_images),
        shared_variables: c.shared_variables.iter().map(|(k, v)| (k.clone(), value_to_wit(v))).collect(),
        configuration: c.configuration.clone(),
    }
}

pub(crate) fn result_from_wit(r: wit::ExecutionResult) -> Result<model::ExecutionResult, String> {
    Ok(model::ExecutionResult {
        input_parameters: parameters_from_wit(r.input_parameters).map_err(|m| format!("input parameters: {m}"))?,
        output_parameters: parameters_from_wit(r.output_parameters).map_err(|m| format!("output parameters: {m}"))?,
        shared_variables: shared_from_wit(r.shared_variables)?,
    })
}

pub(crate) fn collection_to_wit(c: &model::EntityCollection) -> wit::EntityCollection {
    wit::EntityCollection {
        entities: c.entities.iter().map(entity_to_wit).collect(),
        more_records: c.more_records,
        paging_cookie: c.paging_cookie.clone(),
    }
}
