//! Helpers on the generated data types: building and reading records and queries.

use crate::{
    Attribute, Condition, ConditionOperator, Entity, EntityReference, Filter, LogicalOperator, Order, Query, Value,
};

impl Entity {
    /// A new record of `logical_name`, without id or attributes.
    pub fn new(logical_name: &str) -> Self {
        Entity { logical_name: logical_name.to_owned(), id: None, attributes: Vec::new() }
    }

    pub fn with_id(mut self, id: &str) -> Self {
        self.id = Some(id.to_owned());
        self
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.attributes.iter().find(|a| a.name == name).map(|a| &a.value)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// The attribute as text, if it is text.
    pub fn text(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The attribute as an integer, if it is one.
    pub fn integer(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// Sets (or adds) an attribute.
    pub fn set(&mut self, name: &str, value: impl Into<Value>) {
        let value = value.into();
        match self.attributes.iter_mut().find(|a| a.name == name) {
            Some(a) => a.value = value,
            None => self.attributes.push(Attribute { name: name.to_owned(), value }),
        }
    }

    /// A reference to this record, if it has an id.
    pub fn reference(&self) -> Option<EntityReference> {
        Some(EntityReference { logical_name: self.logical_name.clone(), id: self.id.clone()? })
    }
}

impl EntityReference {
    pub fn new(logical_name: &str, id: &str) -> Self {
        EntityReference { logical_name: logical_name.to_owned(), id: id.to_owned() }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Integer(i)
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Boolean(b)
    }
}

impl From<EntityReference> for Value {
    fn from(r: EntityReference) -> Self {
        Value::Reference(r)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl Query {
    /// All records of `entity_name`, all columns, no conditions.
    pub fn new(entity_name: &str) -> Self {
        Query {
            entity_name: entity_name.to_owned(),
            columns: Vec::new(),
            criteria: Filter { operator: LogicalOperator::And, conditions: Vec::new(), groups: Vec::new() },
            orders: Vec::new(),
            top: None,
            page_size: None,
            paging_cookie: None,
        }
    }

    pub fn columns(mut self, columns: &[&str]) -> Self {
        self.columns = columns.iter().map(|c| (*c).to_owned()).collect();
        self
    }

    /// Adds a condition to the top-level criteria.
    pub fn filter(mut self, attribute: &str, operator: ConditionOperator, values: Vec<Value>) -> Self {
        self.criteria.conditions.push(Condition { attribute: attribute.to_owned(), operator, values });
        self
    }

    pub fn order_by(mut self, attribute: &str, descending: bool) -> Self {
        self.orders.push(Order { attribute: attribute.to_owned(), descending });
        self
    }

    pub fn top(mut self, n: u32) -> Self {
        self.top = Some(n);
        self
    }
}
