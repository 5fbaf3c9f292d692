//! Entity metadata: which entities exist and the type of each attribute
//! (Dataverse tables and columns). Every write is checked against it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{Entity, Value, check_name};

/// Attributes the host maintains on every record; plug-ins and callers cannot set them.
pub const SYSTEM_ATTRIBUTES: [&str; 4] = ["createdon", "modifiedon", "createdby", "modifiedby"];
/// The owner of every record: set by the host to the creator unless a caller with the
/// privilege names another user (a reference to `systemuser`).
pub const OWNER_ATTRIBUTE: &str = "ownerid";
/// Most attributes one entity may define.
pub const MAX_ATTRIBUTES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttributeType {
    Text,
    Integer,
    Float,
    Decimal,
    Money,
    Boolean,
    Datetime,
    Guid,
    Option,
    Reference,
}

impl AttributeType {
    pub const ALL: [AttributeType; 10] = [
        AttributeType::Text,
        AttributeType::Integer,
        AttributeType::Float,
        AttributeType::Decimal,
        AttributeType::Money,
        AttributeType::Boolean,
        AttributeType::Datetime,
        AttributeType::Guid,
        AttributeType::Option,
        AttributeType::Reference,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AttributeType::Text => "text",
            AttributeType::Integer => "integer",
            AttributeType::Float => "float",
            AttributeType::Decimal => "decimal",
            AttributeType::Money => "money",
            AttributeType::Boolean => "boolean",
            AttributeType::Datetime => "datetime",
            AttributeType::Guid => "guid",
            AttributeType::Option => "option",
            AttributeType::Reference => "reference",
        }
    }

    /// Converts `value` to this type where that loses nothing (an integer into a
    /// money attribute); refuses anything else.
    pub fn coerce(self, value: Value) -> Result<Value, String> {
        use AttributeType as T;
        Ok(match (self, value) {
            (_, Value::Null) => Value::Null,
            (T::Text, v @ Value::Text(_))
            | (T::Integer, v @ Value::Integer(_))
            | (T::Float, v @ Value::Float(_))
            | (T::Decimal, v @ Value::Decimal(_))
            | (T::Money, v @ Value::Money(_))
            | (T::Boolean, v @ Value::Boolean(_))
            | (T::Datetime, v @ Value::DateTime(_))
            | (T::Guid, v @ Value::Guid(_))
            | (T::Option, v @ Value::OptionSet(_))
            | (T::Reference, v @ Value::Reference(_)) => v,
            (T::Float, Value::Integer(i)) => Value::Float(i as f64),
            (T::Decimal, Value::Integer(i)) => Value::Decimal(i.to_string()),
            (T::Money, Value::Integer(i)) => Value::Money(i.to_string()),
            (T::Money, Value::Decimal(d)) => Value::Money(d),
            (T::Decimal, Value::Money(d)) => Value::Decimal(d),
            (T::Option, Value::Integer(i)) => {
                Value::OptionSet(i32::try_from(i).map_err(|_| format!("{i} is not a valid option value"))?)
            }
            (t, v) => return Err(format!("expects {}, got {} {v}", t.name(), v.type_name())),
        })
    }
}

impl std::str::FromStr for AttributeType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        AttributeType::ALL.into_iter().find(|t| t.name() == s.to_ascii_lowercase()).ok_or_else(|| {
            let names: Vec<_> = AttributeType::ALL.iter().map(|t| t.name()).collect();
            format!("unknown attribute type '{s}': use {}", names.join(", "))
        })
    }
}

/// An entity (Dataverse table) and its typed attributes (columns).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EntityDefinition {
    pub name: String,
    pub attributes: BTreeMap<String, AttributeType>,
}

impl EntityDefinition {
    /// Checks names and limits.
    pub fn validate(&self) -> Result<(), String> {
        check_name(&self.name)?;
        if self.attributes.len() > MAX_ATTRIBUTES {
            return Err(format!("an entity may have at most {MAX_ATTRIBUTES} attributes"));
        }
        for name in self.attributes.keys() {
            check_name(name).map_err(|m| format!("attribute {m}"))?;
            if SYSTEM_ATTRIBUTES.contains(&name.as_str()) || name == OWNER_ATTRIBUTE {
                return Err(format!("'{name}' is a system attribute the host maintains; choose another name"));
            }
        }
        Ok(())
    }

    /// Adds `other`'s attributes; an attribute may not change type.
    pub fn merge(&mut self, other: &EntityDefinition) -> Result<(), String> {
        for (name, ty) in &other.attributes {
            match self.attributes.get(name) {
                Some(existing) if existing != ty => {
                    return Err(format!(
                        "attribute '{name}' of {} is {}; it cannot become {}",
                        self.name,
                        existing.name(),
                        ty.name()
                    ));
                }
                _ => {
                    self.attributes.insert(name.clone(), *ty);
                }
            }
        }
        Ok(())
    }

    /// Checks a record being written: every attribute is defined and of its type
    /// (lossless conversions applied); system attributes are refused.
    pub fn check_record(&self, record: &mut Entity) -> Result<(), String> {
        let attributes = std::mem::take(&mut record.attributes);
        for (name, value) in attributes {
            if SYSTEM_ATTRIBUTES.contains(&name.as_str()) {
                return Err(format!("'{name}' is maintained by the host and cannot be written"));
            }
            if name == OWNER_ATTRIBUTE {
                let owner = match value {
                    Value::Guid(id) => id,
                    Value::Reference(r) if r.logical_name == crate::security::USER_ENTITY => r.id,
                    _ => {
                        return Err(format!(
                            "'{OWNER_ATTRIBUTE}' must be a reference to a {} (or its guid)",
                            crate::security::USER_ENTITY
                        ));
                    }
                };
                record.attributes.insert(name, crate::security::user_ref(owner));
                continue;
            }
            let ty = self.attributes.get(&name).ok_or_else(|| {
                format!(
                    "{} has no attribute '{name}': define it first (plughost entities define {} --attr {name}:TYPE)",
                    self.name, self.name
                )
            })?;
            let value = ty.coerce(value).map_err(|m| format!("attribute '{name}' of {} {m}", self.name))?;
            record.attributes.insert(name, value);
        }
        Ok(())
    }

    /// The type of `attribute`, including the system ones.
    pub fn attribute_type(&self, attribute: &str) -> Option<AttributeType> {
        if attribute == "createdon" || attribute == "modifiedon" {
            Some(AttributeType::Datetime)
        } else if SYSTEM_ATTRIBUTES.contains(&attribute) || attribute == OWNER_ATTRIBUTE {
            Some(AttributeType::Reference)
        } else {
            self.attributes.get(attribute).copied()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> EntityDefinition {
        EntityDefinition {
            name: "account".into(),
            attributes: [("name".into(), AttributeType::Text), ("credit".into(), AttributeType::Money)].into(),
        }
    }

    #[test]
    fn records_are_checked_and_coerced() {
        let mut e = Entity::new("account").with("name", Value::Text("A".into())).with("credit", Value::Integer(5));
        account().check_record(&mut e).unwrap();
        assert_eq!(e.attributes["credit"], Value::Money("5".into()));
        let mut bad = Entity::new("account").with("name", Value::Integer(1));
        assert!(account().check_record(&mut bad).unwrap_err().contains("expects text, got integer"));
        let mut unknown = Entity::new("account").with("colour", Value::Text("red".into()));
        assert!(account().check_record(&mut unknown).unwrap_err().contains("no attribute 'colour'"));
        let mut system = Entity::new("account").with("createdon", Value::DateTime(0));
        assert!(account().check_record(&mut system).is_err());
    }

    #[test]
    fn attributes_cannot_change_type() {
        let mut a = account();
        let b =
            EntityDefinition { name: "account".into(), attributes: [("name".into(), AttributeType::Integer)].into() };
        assert!(a.merge(&b).unwrap_err().contains("cannot become integer"));
        let c =
            EntityDefinition { name: "account".into(), attributes: [("size".into(), AttributeType::Integer)].into() };
        a.merge(&c).unwrap();
        assert_eq!(a.attributes.len(), 3);
    }
}
