//! Queries over the snapshot plus the request's own writes.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use uuid::Uuid;

use crate::model::{EntityCollection, Query};
use crate::query;
use crate::store::StoredRecord;

use super::jobs::check_query;
use super::{PipelineError, Result, Scope};

impl Scope {
    /// Runs a query over the snapshot plus this request's own writes.
    /// `owner`: only records that user owns (a user-level read privilege).
    pub(super) fn retrieve_multiple(&self, q: &Query, owner: Option<Uuid>) -> Result<EntityCollection> {
        check_query(q, &self.definition(&q.entity_name)?)?;
        let page = q.page_size.unwrap_or(query::MAX_PAGE_SIZE) as usize;
        let limit = q.top.map_or(usize::MAX, |t| t as usize);
        let overlay: BTreeMap<Uuid, Option<StoredRecord>> = self
            .overlay()
            .records
            .iter()
            .filter(|((e, _), _)| e == &q.entity_name)
            .map(|((_, id), slot)| (*id, slot.state.clone()))
            .collect();
        let by_id = q.orders.is_empty();
        let start = query::PageStart::of(q).map_err(PipelineError::Invalid)?;
        let after = start.after();
        let mut found = Vec::new();
        let keep = |id: Uuid, rec: &StoredRecord| {
            if owner.is_some()
                && crate::security::user_of(rec.attributes.get(crate::metadata::OWNER_ATTRIBUTE)) != owner
            {
                return None;
            }
            let e = rec.to_entity(&q.entity_name, id);
            query::matches(&e, &q.criteria).then_some(e)
        };
        // Records from the snapshot (unless this request changed them), then the request's own new ones.
        let want = if by_id { page.saturating_add(1).min(limit) } else { usize::MAX };
        self.snapshot.scan(&q.entity_name, after, &mut |id, rec| {
            found.extend(match overlay.get(&id) {
                Some(Some(mine)) => keep(id, mine),
                Some(None) => None,
                None => keep(id, &rec),
            });
            if found.len() >= want { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })?;
        for (id, state) in &overlay {
            if let Some(rec) = state
                && self.snapshot.record(&q.entity_name, *id)?.is_none()
                && after.is_none_or(|a| *id > a)
            {
                found.extend(keep(*id, rec));
            }
        }
        if by_id {
            found.sort_by_key(|e| e.id);
        } else {
            query::sort(&mut found, &q.orders);
        }
        Ok(query::cut_page(q, found, start))
    }
}
