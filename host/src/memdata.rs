//! An in-memory data set that implements the organization service, for running
//! a plug-in locally (`plughost test`, the SDK test harness): it records every
//! write the plug-in makes so a test can assert on them.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;
use uuid::Uuid;

use crate::model::{Entity, EntityCollection, EntityReference, Parameters, Query};
use crate::query;
use crate::runtime::{CallContext, OrganizationService, ServiceError};

/// One write a plug-in made.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "operation", rename_all = "snake_case")]
pub enum Write {
    Create { record: Entity },
    Update { record: Entity },
    Delete { target: EntityReference },
}

#[derive(Default)]
struct Inner {
    records: BTreeMap<(String, Uuid), Entity>,
    writes: Vec<Write>,
}

/// Records by (entity, id), plus the log of writes.
#[derive(Default)]
pub struct MemoryData(Mutex<Inner>);

impl MemoryData {
    /// A data set holding `seed`; every seed record needs an id.
    pub fn new(seed: Vec<Entity>) -> Result<MemoryData, String> {
        let mut records = BTreeMap::new();
        for (i, e) in seed.into_iter().enumerate() {
            e.validate().map_err(|m| format!("seed record {i}: {m}"))?;
            let id = e.id.ok_or_else(|| format!("seed record {i} ({}) has no id", e.logical_name))?;
            if records.insert((e.logical_name.clone(), id), e).is_some() {
                return Err(format!("seed record {i} repeats id {id}"));
            }
        }
        Ok(MemoryData(Mutex::new(Inner { records, writes: Vec::new() })))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writes made so far, in order.
    pub fn writes(&self) -> Vec<Write> {
        self.inner().writes.clone()
    }

    /// Holds `record` (which has an id) without logging a write: a record the data
    /// set knows of, as a seed record.
    pub fn remember(&self, record: Entity) {
        if let Some(id) = record.id {
            self.inner().records.insert((record.logical_name.clone(), id), record);
        }
    }

    /// Every record now held.
    pub fn records(&self) -> Vec<Entity> {
        self.inner().records.values().cloned().collect()
    }
}

fn not_found(r: &EntityReference) -> ServiceError {
    ServiceError::NotFound(format!("{} with id {} does not exist", r.logical_name, r.id))
}

impl OrganizationService for MemoryData {
    fn create(&self, _: &CallContext, mut record: Entity) -> Result<Uuid, ServiceError> {
        record.validate().map_err(ServiceError::Invalid)?;
        let id = *record.id.get_or_insert_with(Uuid::new_v4);
        let mut inner = self.inner();
        let key = (record.logical_name.clone(), id);
        if inner.records.contains_key(&key) {
            return Err(ServiceError::AlreadyExists(format!("{} with id {id} already exists", record.logical_name)));
        }
        inner.records.insert(key, record.clone());
        inner.writes.push(Write::Create { record });
        Ok(id)
    }

    fn retrieve(&self, _: &CallContext, target: EntityReference, columns: Vec<String>) -> Result<Entity, ServiceError> {
        let inner = self.inner();
        let record = inner.records.get(&(target.logical_name.clone(), target.id)).ok_or_else(|| not_found(&target))?;
        Ok(query::project(record.clone(), &columns))
    }

    fn update(&self, _: &CallContext, record: Entity) -> Result<(), ServiceError> {
        record.validate().map_err(ServiceError::Invalid)?;
        let target =
            record.reference().ok_or_else(|| ServiceError::Invalid("an update needs the record's id".into()))?;
        let mut inner = self.inner();
        let stored =
            inner.records.get_mut(&(target.logical_name.clone(), target.id)).ok_or_else(|| not_found(&target))?;
        stored.attributes.extend(record.attributes.clone());
        inner.writes.push(Write::Update { record });
        Ok(())
    }

    fn delete(&self, _: &CallContext, target: EntityReference) -> Result<(), ServiceError> {
        let mut inner = self.inner();
        inner.records.remove(&(target.logical_name.clone(), target.id)).ok_or_else(|| not_found(&target))?;
        inner.writes.push(Write::Delete { target });
        Ok(())
    }

    fn retrieve_multiple(&self, _: &CallContext, q: Query) -> Result<EntityCollection, ServiceError> {
        query::validate(&q).map_err(ServiceError::Invalid)?;
        let start = query::PageStart::of(&q).map_err(ServiceError::Invalid)?;
        let inner = self.inner();
        // Records are kept in id order: a query without an order pages by id.
        let mut found: Vec<Entity> = inner
            .records
            .values()
            .filter(|e| e.logical_name == q.entity_name && query::matches(e, &q.criteria))
            .filter(|e| start.after().is_none_or(|a| e.id.is_some_and(|id| id > a)))
            .cloned()
            .collect();
        query::sort(&mut found, &q.orders);
        Ok(query::cut_page(&q, found, start))
    }

    fn execute(&self, _: &CallContext, message: String, _: Parameters) -> Result<Parameters, ServiceError> {
        Err(ServiceError::NotFound(format!(
            "custom message '{message}' is not available in a local test: only data operations are"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Value;

    fn caller() -> CallContext {
        CallContext {
            depth: 1,
            correlation_id: Uuid::nil(),
            initiating_user_id: Uuid::nil(),
            user_id: Uuid::nil(),
            step_id: None,
        }
    }

    #[test]
    fn crud_and_paging() {
        let data = MemoryData::default();
        for i in 0..5 {
            data.create(&caller(), Entity::new("account").with("n", Value::Integer(i))).unwrap();
        }
        let mut q = Query {
            entity_name: "account".into(),
            columns: vec!["n".into()],
            criteria: Default::default(),
            orders: vec![crate::model::Order { attribute: "n".into(), descending: true }],
            top: None,
            page_size: Some(2),
            paging_cookie: None,
        };
        let mut seen = Vec::new();
        loop {
            let page = data.retrieve_multiple(&caller(), q.clone()).unwrap();
            seen.extend(page.entities.iter().map(|e| e.attributes["n"].clone()));
            if !page.more_records {
                break;
            }
            q.paging_cookie = page.paging_cookie;
        }
        assert_eq!(seen, (0..5).rev().map(Value::Integer).collect::<Vec<_>>());
        assert_eq!(data.writes().len(), 5);
        let missing = EntityReference { logical_name: "account".into(), id: Uuid::new_v4() };
        assert!(matches!(data.delete(&caller(), missing), Err(ServiceError::NotFound(_))));
    }
}
