//! The mail jobs the pipeline makes and runs (see [`crate::mail`]): bulk mail and
//! campaign activity distribution work in batches like bulk import (a batch's
//! records and the progress past it commit together, in the run's completion); the
//! outgoing-mail job sends Pending Send emails and records each outcome on its
//! email in its own transaction, committed before the next message goes.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use uuid::Uuid;

use crate::bulk::{Failure as RowFailure, Progress};
use crate::clock::now_ms;
use crate::jobs::SystemJob;
use crate::mail::{self, Channel, MailSpec, Outcome, Template, smtp::Delivery, smtp::Mailer};
use crate::model::{
    Condition, ConditionOperator, Entity, EntityCollection, EntityReference, ParameterValue, Parameters, Query, Value,
};
use crate::store::JobResult;

use super::jobs::{JobRun, check_query};
use super::{Pipeline, PipelineError, Request, Response, Result, Scope, Who};

/// Records one run of bulk mail or distribution works through.
pub const MAIL_BATCH: usize = 200;
/// Emails one run of the outgoing-mail job reads; it sends them unless its time is up.
pub const OUTGOING_BATCH: usize = 100;
/// How long one outgoing-mail run sends before it hands over (and runs again at once).
pub const OUTGOING_RUN_MS: u64 = 10_000;

fn reference(entity: &str, id: Uuid) -> Value {
    Value::Reference(EntityReference { logical_name: entity.to_owned(), id })
}

fn equal(attribute: &str, value: Value) -> Condition {
    Condition { attribute: attribute.into(), operator: ConditionOperator::Equal, values: vec![value] }
}

fn int(n: u64) -> ParameterValue {
    ParameterValue::Value(Value::Integer(n as i64))
}

impl Pipeline {
    /// A scope reading as `by` now (the checks made before a mail job is queued).
    fn reading_as(self: &Arc<Self>, by: Uuid) -> Result<Arc<Scope>> {
        let snapshot = self.source.view(None)?;
        let stop = Arc::new(AtomicBool::new(false));
        Ok(Scope::new(self.clone(), snapshot, Uuid::now_v7(), Who::user(by), self.defaults.write_bytes, stop))
    }

    /// A bulk mail job: the template resolved (id or name, read as `by`) and checked
    /// against the query's entity, the query checked.
    pub fn new_bulk_mail(self: &Arc<Self>, spec: mail::BulkMail, by: Uuid) -> Result<SystemJob> {
        let scope = self.reading_as(by)?;
        let q = &spec.query;
        let def = scope.definition(&q.entity_name)?;
        check_query(q, &def)?;
        let (template_id, template) = find_template(&scope, &spec.template)?;
        template.check(&def).map_err(PipelineError::Invalid)?;
        let address_attribute = spec.address_attribute.unwrap_or_else(|| mail::DEFAULT_ADDRESS_ATTRIBUTE.to_owned());
        if def.attribute_type(&address_attribute) != Some(crate::metadata::AttributeType::Text) {
            return Err(PipelineError::Invalid(format!(
                "{} has no text attribute '{address_attribute}' to read addresses from (--address-attribute)",
                def.name
            )));
        }
        if let Some(sender) = &spec.sender {
            sender
                .parse::<lettre::message::Mailbox>()
                .map_err(|e| PipelineError::Invalid(format!("the sender '{sender}' is not an address: {e}")))?;
        }
        let name = spec.name.unwrap_or_else(|| format!("Bulk e-mail to {} records", q.entity_name));
        let spec = MailSpec::Bulk {
            template: template_id,
            query: Box::new(Query {
                columns: Vec::new(),
                orders: Vec::new(),
                top: None,
                page_size: None,
                paging_cookie: None,
                ..spec.query
            }),
            address_attribute,
            sender: spec.sender,
        };
        spec.job(name, by).map_err(PipelineError::Invalid)
    }

    /// A distribution job for campaign activity `activity`, checked first (read as
    /// `by`): the activity exists, its channel is known, it targets lists, and an
    /// email activity's template fits each list's members.
    pub fn new_distribution(self: &Arc<Self>, activity: Uuid, name: Option<String>, by: Uuid) -> Result<SystemJob> {
        let scope = self.reading_as(by)?;
        let (record, _, template, lists) = campaign_activity(&scope, activity)?;
        if lists.is_empty() {
            return Err(PipelineError::Invalid(format!(
                "campaign activity {activity} targets no list: add {} records linking it to lists",
                mail::CAMPAIGN_ACTIVITY_ITEM
            )));
        }
        for list in &lists {
            let list = retrieve(&scope, mail::LIST, *list)?;
            let def = scope.definition(&list_members_entity(&list)?)?;
            if let Some(t) = &template {
                t.check(&def).map_err(PipelineError::Invalid)?;
            }
            if mail::flag(&list, "dynamic") {
                check_query(&list_query(&list, None)?, &def)?;
            }
        }
        let name = name.unwrap_or_else(|| {
            format!("Distribute campaign activity '{}'", mail::text_of(&record, "subject").unwrap_or("(no subject)"))
        });
        MailSpec::Distribute { activity }.job(name, by).map_err(PipelineError::Invalid)
    }

    /// Runs one batch of a bulk mail or distribution job.
    pub fn run_mail(self: &Arc<Self>, job: &SystemJob, stop: Arc<AtomicBool>) -> JobRun {
        let started = std::time::Instant::now();
        let spec = match MailSpec::from_job(job) {
            Ok(s) => s,
            Err(m) => return JobRun::failed("invalid_job", m),
        };
        let scope = match self.job_scope(job, None, self.defaults.write_bytes, stop) {
            Ok(scope) => scope,
            Err(run) => return *run,
        };
        let mut progress = Progress::from_output(&job.output);
        let batch = match spec {
            MailSpec::Bulk { template, query, address_attribute, sender } => {
                bulk_batch(&scope, job, template, *query, &address_attribute, sender.as_deref(), &mut progress)
            }
            MailSpec::Distribute { activity } => self.distribute_batch(&scope, job, activity, &mut progress),
        };
        let more = match batch {
            Ok(more) => more,
            Err(e) => return JobRun::failed(e.code(), e.to_string()),
        };
        progress.done = !more;
        JobRun {
            result: if more { JobResult::Progress } else { JobResult::Succeeded },
            effects: scope.into_changes(),
            trace: String::new(),
            fuel_used: 0,
            duration_us: started.elapsed().as_micros() as u64,
            delete_on_success: false,
            output: progress.to_output(),
            message: Some(progress.summary()),
        }
    }

    /// One batch of a distribution: the members of the list at `progress.next_row`
    /// after `progress.after`; true while members or lists remain.
    fn distribute_batch(
        &self,
        scope: &Scope,
        job: &SystemJob,
        activity: Uuid,
        progress: &mut Progress,
    ) -> Result<bool> {
        let (record, channel, template, lists) = campaign_activity(scope, activity)?;
        let Some(list_id) = lists.get(progress.next_row as usize).copied() else {
            return Ok(false);
        };
        let list = retrieve(scope, mail::LIST, list_id)?;
        let (members, more_in_list) = if mail::flag(&list, "dynamic") {
            let found = query(scope, &list_query(&list, progress.after)?)?;
            progress.after = found.entities.last().and_then(|e| e.id);
            (found.entities, found.more_records)
        } else {
            let mut q = members_query(list_id);
            q.paging_cookie = progress.after.map(|id| format!("id:{id}"));
            let found = query(scope, &q)?;
            progress.after = found.entities.last().and_then(|e| e.id);
            let mut members = Vec::with_capacity(found.entities.len());
            for link in &found.entities {
                let Some(Value::Reference(member)) = link.attributes.get("entityid") else { continue };
                match retrieve(scope, &member.logical_name, member.id) {
                    Ok(m) => members.push(m),
                    // A member deleted since it was added to the list: nobody to reach.
                    Err(PipelineError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            (members, found.more_records)
        };
        for member in members {
            let id = member.id.expect("stored records have ids");
            let log_id = mail::derived_id(&[activity.as_bytes(), member.logical_name.as_bytes(), id.as_bytes()]);
            if scope.read(mail::LOG, log_id)?.is_some() {
                continue; // On an earlier list too: one activity per member.
            }
            let (outcome, created, error) =
                distribute_one(scope, job, activity, &record, channel, template.as_ref(), &member);
            let (code, error) = match error {
                Some((code, message)) => (code, Some(message)),
                None => (outcome.name().to_owned(), None),
            };
            let member_ref = reference(&member.logical_name, id);
            let mut log = mail::record(
                mail::LOG,
                [
                    ("bulkoperationid", Value::Guid(job.id)),
                    ("campaignactivityid", reference(mail::CAMPAIGN_ACTIVITY, activity)),
                    ("regardingobjectid", member_ref),
                    ("outcome", Value::Text(outcome.name().into())),
                    ("activityid", created.map_or(Value::Null, |c| reference(channel.entity(), c))),
                    ("error", error.clone().map_or(Value::Null, Value::Text)),
                ],
            );
            log.id = Some(log_id);
            scope.attempt(Request::Create { record: log })?;
            let why = |code: &str, message: String| RowFailure { row: None, id: Some(id), code: code.into(), message };
            match outcome {
                Outcome::Created => progress.record(None),
                Outcome::Failed => progress.record(Some(why(&code, error.unwrap_or_default()))),
                Outcome::OptedOut => progress.skip(why(&code, "the member opted out of this channel".into())),
                Outcome::NoAddress => progress.skip(why(&code, error.unwrap_or_default())),
            }
        }
        if !more_in_list {
            progress.next_row += 1;
            progress.after = None;
        }
        let more = (progress.next_row as usize) < lists.len();
        if !more {
            let mut done = Entity::new(mail::CAMPAIGN_ACTIVITY).with("distributedon", Value::DateTime(now_ms()));
            done.id = Some(activity);
            scope.attempt(Request::Update { record: done })?;
        }
        Ok(more)
    }

    /// Runs the outgoing-mail job once: sends Pending Send emails through `mailer`.
    pub fn run_outgoing_mail(self: &Arc<Self>, job: &SystemJob, stop: Arc<AtomicBool>, mailer: &Mailer) -> JobRun {
        let started = std::time::Instant::now();
        let mut totals = Totals::from_output(&job.output);
        // The outbox says where the first email to send is (the snapshot, taken after,
        // has it); one query reads the batch from there, past the sent ones between.
        let first = match self.store().outbox(totals.after, 1) {
            Ok(ids) => ids.first().copied(),
            Err(e) => return JobRun::retry("store_error", e.to_string()),
        };
        let scope = match self.job_scope(job, Some(Who::user(Uuid::nil())), self.defaults.write_bytes, stop.clone()) {
            Ok(scope) => scope,
            Err(run) => return *run,
        };
        let found = match first {
            None => EntityCollection::default(),
            Some(first) => {
                let mut q = Query {
                    entity_name: mail::EMAIL.into(),
                    page_size: Some(OUTGOING_BATCH as u32),
                    paging_cookie: Some(format!("id:{}", Uuid::from_u128(first.as_u128().saturating_sub(1)))),
                    ..Query::default()
                };
                q.criteria.conditions.push(equal("statuscode", Value::OptionSet(mail::PENDING_SEND)));
                match scope.retrieve_multiple(&q, None) {
                    Ok(found) => found,
                    Err(e) => return JobRun::retry(e.code(), e.to_string()),
                }
            }
        };
        let settings = mailer.settings();
        let mut run = Totals::default();
        let mut retry_at: Option<i64> = None;
        let mut cut_short = false;
        let mut unreachable = None;
        for email in &found.entities {
            let id = email.id.expect("stored records have ids");
            let now = now_ms();
            if let Some(Value::DateTime(at)) = email.attributes.get("nextattempt")
                && *at > now
            {
                retry_at = Some(retry_at.map_or(*at, |r| r.min(*at)));
                totals.after = Some(id);
                continue;
            }
            if started.elapsed().as_millis() as u64 >= OUTGOING_RUN_MS || !mailer.wait_turn(&stop) {
                cut_short = true;
                break;
            }
            let text = |a: &str| match email.attributes.get(a) {
                Some(Value::Text(t)) => t.as_str(),
                _ => "",
            };
            let attempts = match email.attributes.get("attempts") {
                Some(Value::Integer(n)) => (*n).max(0) as u32,
                _ => 0,
            } + 1;
            let sender = Some(text("sender")).filter(|s| !s.is_empty());
            let delivery = mailer.send(id, sender, text("to"), text("subject"), text("body"));
            let mut update = Entity::new(mail::EMAIL).with("attempts", Value::Integer(attempts.into()));
            update.id = Some(id);
            match delivery {
                Delivery::Sent => {
                    run.sent += 1;
                    let domain = mailer.sender_domain(sender).unwrap_or_default();
                    update.attributes.extend([
                        ("statuscode".to_owned(), Value::OptionSet(mail::SENT)),
                        ("senton".to_owned(), Value::DateTime(now_ms())),
                        ("messageid".to_owned(), Value::Text(mail::smtp::message_id(id, &domain))),
                        ("nextattempt".to_owned(), Value::Null),
                        ("error".to_owned(), Value::Null),
                    ]);
                }
                Delivery::Unreachable(reason) => {
                    // The server, not this email: try the whole queue again later.
                    unreachable = Some(reason);
                    break;
                }
                Delivery::Transient(reply) if attempts < settings.max_attempts => {
                    run.retrying += 1;
                    let backoff = settings.retry_backoff_ms.saturating_mul(1 << (attempts - 1).min(20));
                    let at = now_ms().saturating_add(i64::try_from(backoff).unwrap_or(i64::MAX));
                    retry_at = Some(retry_at.map_or(at, |r| r.min(at)));
                    update.attributes.extend([
                        ("nextattempt".to_owned(), Value::DateTime(at)),
                        ("error".to_owned(), Value::Text(reply)),
                    ]);
                }
                Delivery::Transient(reply) | Delivery::Permanent(reply) => {
                    run.failed += 1;
                    update.attributes.extend([
                        ("statuscode".to_owned(), Value::OptionSet(mail::FAILED)),
                        ("nextattempt".to_owned(), Value::Null),
                        ("error".to_owned(), Value::Text(reply)),
                    ]);
                }
            }
            // Recorded now, durably, before the next message goes: a crash repeats at
            // most the one message in flight, under the same Message-ID.
            if let Err(e) = self.execute(Request::Update { record: update }, &super::Caller::default()) {
                // Sent, but not recorded: it stays Pending Send and goes again later.
                tracing::warn!(email = %id, "recording an email's delivery failed: {e}");
            }
            totals.after = Some(id);
        }
        totals.add(&run);
        let message = format!(
            "this run: {} sent, {} failed, {} to retry; in all {} sent, {} failed",
            run.sent, run.failed, run.retrying, totals.sent, totals.failed
        );
        let result = if let Some(reason) = unreachable {
            let at = now_ms().saturating_add(i64::try_from(settings.retry_backoff_ms).unwrap_or(i64::MAX));
            tracing::warn!("the SMTP server {} could not be reached: {reason}", mailer.shown_url());
            JobResult::Wait { until: Some(at), watch: None }
        } else if cut_short || found.more_records {
            JobResult::Progress
        } else {
            // The end of the table: the next run starts from its beginning.
            totals.after = None;
            match retry_at {
                Some(at) => JobResult::Wait { until: Some(at), watch: None },
                None => JobResult::Succeeded,
            }
        };
        JobRun {
            result,
            effects: crate::store::ChangeSet::default(),
            trace: String::new(),
            fuel_used: 0,
            duration_us: started.elapsed().as_micros() as u64,
            delete_on_success: false,
            output: totals.to_output(),
            message: Some(message),
        }
    }
}

/// A template by id or name, read through `scope`.
fn find_template(scope: &Scope, key: &str) -> Result<(Uuid, Template)> {
    let found = match Uuid::parse_str(key) {
        Ok(id) => match retrieve(scope, mail::TEMPLATE, id) {
            Ok(t) => Some(t),
            Err(PipelineError::NotFound(_)) => None,
            Err(e) => return Err(e),
        },
        Err(_) => {
            let mut q = Query { entity_name: mail::TEMPLATE.into(), page_size: Some(2), ..Query::default() };
            q.criteria.conditions.push(equal("name", Value::Text(key.to_owned())));
            let mut hit = query(scope, &q)?;
            if hit.entities.len() > 1 {
                return Err(PipelineError::Invalid(format!("several templates are named '{key}': give its id")));
            }
            hit.entities.pop()
        }
    };
    let record = found.ok_or_else(|| PipelineError::NotFound(format!("no template '{key}' (an id or a name)")))?;
    let template = Template::from_record(&record).map_err(PipelineError::Invalid)?;
    Ok((record.id.expect("stored records have ids"), template))
}

/// A campaign activity, its channel, the template its emails are rendered from (its
/// `templateid`, else its own subject and body; none for other channels) and the
/// lists it targets, in the order they were linked.
fn campaign_activity(scope: &Scope, activity: Uuid) -> Result<(Entity, Channel, Option<Template>, Vec<Uuid>)> {
    let record = retrieve(scope, mail::CAMPAIGN_ACTIVITY, activity)?;
    let channel =
        Channel::parse(mail::text_of(&record, "channel").unwrap_or("email")).map_err(PipelineError::Invalid)?;
    let template = match (channel, record.attributes.get("templateid")) {
        (Channel::Email, Some(Value::Reference(r))) => Some(find_template(scope, &r.id.to_string())?.1),
        (Channel::Email, _) => {
            let subject = mail::text_of(&record, "subject").ok_or_else(|| {
                PipelineError::Invalid("an email campaign activity needs a templateid or a subject".into())
            })?;
            let body = match record.attributes.get("body") {
                Some(Value::Text(t)) => t.clone(),
                _ => String::new(),
            };
            Some(Template { entity: None, subject: subject.to_owned(), body })
        }
        _ => None,
    };
    let mut q = Query {
        entity_name: mail::CAMPAIGN_ACTIVITY_ITEM.into(),
        page_size: Some(mail::MAX_LISTS as u32 + 1),
        ..Query::default()
    };
    q.criteria.conditions.push(equal("campaignactivityid", reference(mail::CAMPAIGN_ACTIVITY, activity)));
    let mut lists = Vec::new();
    for item in query(scope, &q)?.entities {
        if let Some(Value::Reference(l)) = item.attributes.get("listid")
            && !lists.contains(&l.id)
        {
            lists.push(l.id);
        }
    }
    if lists.len() > mail::MAX_LISTS {
        return Err(PipelineError::Invalid(format!("a campaign activity targets at most {} lists", mail::MAX_LISTS)));
    }
    Ok((record, channel, template, lists))
}

/// One batch of a bulk mail: an email per record, Pending Send.
fn bulk_batch(
    scope: &Scope,
    job: &SystemJob,
    template_id: Uuid,
    query_spec: Query,
    address_attribute: &str,
    sender: Option<&str>,
    progress: &mut Progress,
) -> Result<bool> {
    let template =
        Template::from_record(&retrieve(scope, mail::TEMPLATE, template_id)?).map_err(PipelineError::Invalid)?;
    let page = Query {
        page_size: Some(MAIL_BATCH as u32),
        paging_cookie: progress.after.map(|id| format!("id:{id}")),
        ..query_spec
    };
    let found = query(scope, &page)?;
    for record in &found.entities {
        let id = record.id.expect("stored records have ids");
        progress.after = Some(id);
        let why = |code: &str, message: String| RowFailure { row: None, id: Some(id), code: code.into(), message };
        let Some(to) = mail::text_of(record, address_attribute) else {
            progress.skip(why("no_address", format!("no {address_attribute}")));
            continue;
        };
        if mail::flag(record, "donotemail") {
            progress.skip(why("opted_out", "donotemail is set".into()));
            continue;
        }
        if let Err(e) = mail::addresses(to) {
            progress.skip(why("invalid_address", e));
            continue;
        }
        let outcome = template.render(record).map_err(PipelineError::Invalid).and_then(|(subject, body)| {
            let email = mail::record(
                mail::EMAIL,
                [
                    ("sender", sender.map_or(Value::Null, |s| Value::Text(s.into()))),
                    ("to", Value::Text(to.into())),
                    ("subject", Value::Text(subject)),
                    ("body", Value::Text(body)),
                    ("regardingobjectid", reference(&record.logical_name, id)),
                    ("statuscode", Value::OptionSet(mail::PENDING_SEND)),
                    ("templateid", reference(mail::TEMPLATE, template_id)),
                    ("bulkoperationid", Value::Guid(job.id)),
                    ("attempts", Value::Integer(0)),
                ],
            );
            scope.attempt(Request::Create { record: email })
        });
        progress.record(outcome.err().map(|e| why(e.code(), e.to_string())));
    }
    Ok(found.more_records)
}

/// Creates the activity for one member, unless it opted out or lacks the channel's
/// address: what happened, the activity made, and the error (code, message).
fn distribute_one(
    scope: &Scope,
    job: &SystemJob,
    activity: Uuid,
    record: &Entity,
    channel: Channel,
    template: Option<&Template>,
    member: &Entity,
) -> (Outcome, Option<Uuid>, Option<(String, String)>) {
    if channel.opt_out_attribute().is_some_and(|a| mail::flag(member, a)) {
        return (Outcome::OptedOut, None, None);
    }
    let address = match channel.address_attribute() {
        Some(a) => match mail::text_of(member, a) {
            Some(v) => Some(v.to_owned()),
            None => return (Outcome::NoAddress, None, Some(("no_address".into(), format!("no {a}")))),
        },
        None => None,
    };
    let id = member.id.expect("stored records have ids");
    let subject = mail::text_of(record, "subject").unwrap_or_default().to_owned();
    let body = match record.attributes.get("body") {
        Some(Value::Text(t)) => t.clone(),
        _ => String::new(),
    };
    let common = [
        ("regardingobjectid", reference(&member.logical_name, id)),
        ("campaignactivityid", reference(mail::CAMPAIGN_ACTIVITY, activity)),
    ];
    let built: std::result::Result<Entity, String> = match channel {
        Channel::Email => {
            let to = address.unwrap_or_default();
            match mail::addresses(&to) {
                Err(e) => return (Outcome::NoAddress, None, Some(("invalid_address".into(), e))),
                Ok(_) => template.expect("an email activity has a template").render(member).map(|(subject, body)| {
                    mail::record(
                        mail::EMAIL,
                        common.iter().cloned().chain([
                            ("sender", mail::text_of(record, "sender").map_or(Value::Null, |s| Value::Text(s.into()))),
                            ("to", Value::Text(to)),
                            ("subject", Value::Text(subject)),
                            ("body", Value::Text(body)),
                            ("statuscode", Value::OptionSet(mail::PENDING_SEND)),
                            ("bulkoperationid", Value::Guid(job.id)),
                            ("attempts", Value::Integer(0)),
                        ]),
                    )
                }),
            }
        }
        other => {
            let mut attrs: Vec<(&'static str, Value)> = common.to_vec();
            attrs.extend([
                ("subject", Value::Text(subject)),
                ("description", Value::Text(body)),
                ("statuscode", Value::OptionSet(1)),
            ]);
            match other {
                Channel::PhoneCall => attrs.push(("phonenumber", Value::Text(address.unwrap_or_default()))),
                Channel::Letter => attrs.push(("address", Value::Text(address.unwrap_or_default()))),
                _ => {}
            }
            Ok(mail::record(other.entity(), attrs))
        }
    };
    match built.map_err(PipelineError::Invalid).and_then(|record| scope.attempt(Request::Create { record })) {
        Ok(Response::Created(made)) => (Outcome::Created, Some(made), None),
        Ok(_) => (Outcome::Created, None, None),
        Err(e) => (Outcome::Failed, None, Some((e.code().to_owned(), e.to_string()))),
    }
}

/// A record by id, read as the job's user (privileges apply).
fn retrieve(scope: &Scope, entity: &str, id: Uuid) -> Result<Entity> {
    let target = EntityReference { logical_name: entity.to_owned(), id };
    match scope.attempt(Request::Retrieve { target, columns: Vec::new() })? {
        Response::Retrieved(e) => Ok(e),
        _ => Err(super::scope::not_found(entity, id)),
    }
}

/// A page of a query, read as the job's user (own records at user level).
fn query(scope: &Scope, q: &Query) -> Result<EntityCollection> {
    let owner = scope.authorize(scope.who, &Request::RetrieveMultiple { query: q.clone() }, None)?;
    scope.retrieve_multiple(q, owner)
}

/// The links of a static list, by id.
fn members_query(list: Uuid) -> Query {
    let mut q = Query { entity_name: mail::LIST_MEMBER.into(), page_size: Some(MAIL_BATCH as u32), ..Query::default() };
    q.criteria.conditions.push(equal("listid", reference(mail::LIST, list)));
    q
}

/// The entity of a list's members.
fn list_members_entity(list: &Entity) -> Result<String> {
    mail::text_of(list, "membertype")
        .map(str::to_owned)
        .ok_or_else(|| PipelineError::Invalid(format!("list {} has no membertype", list.id.unwrap_or_default())))
}

/// A dynamic list's query (its `query` attribute: the data API's JSON query, or
/// just its criteria), paged after `after`.
fn list_query(list: &Entity, after: Option<Uuid>) -> Result<Query> {
    let entity = list_members_entity(list)?;
    let text = mail::text_of(list, "query").unwrap_or("{}");
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        PipelineError::Invalid(format!("list {}: its query is not JSON: {e}", list.id.unwrap_or_default()))
    })?;
    let criteria = match value.get("criteria") {
        Some(c) => c.clone(),
        None => value,
    };
    let criteria = serde_json::from_value(criteria).map_err(|e| {
        PipelineError::Invalid(format!("list {}: its query is not a filter: {e}", list.id.unwrap_or_default()))
    })?;
    Ok(Query {
        entity_name: entity,
        criteria,
        page_size: Some(MAIL_BATCH as u32),
        paging_cookie: after.map(|id| format!("id:{id}")),
        ..Query::default()
    })
}

/// The outgoing-mail job's counts (in all, since it was created) and its place in
/// the email table, kept in its output.
#[derive(Debug, Default)]
struct Totals {
    sent: u64,
    failed: u64,
    retrying: u64,
    after: Option<Uuid>,
}

impl Totals {
    fn from_output(output: &Parameters) -> Totals {
        let int = |name: &str| match output.get(name) {
            Some(ParameterValue::Value(Value::Integer(i))) => (*i).max(0) as u64,
            _ => 0,
        };
        Totals {
            sent: int("Sent"),
            failed: int("Failed"),
            retrying: 0,
            after: match output.get("After") {
                Some(ParameterValue::Value(Value::Guid(id))) => Some(*id),
                _ => None,
            },
        }
    }

    fn add(&mut self, run: &Totals) {
        self.sent += run.sent;
        self.failed += run.failed;
        self.retrying = run.retrying;
    }

    fn to_output(&self) -> Parameters {
        let mut out = Parameters::from([
            ("Sent".to_owned(), int(self.sent)),
            ("Failed".to_owned(), int(self.failed)),
            ("Retrying".to_owned(), int(self.retrying)),
        ]);
        if let Some(id) = self.after {
            out.insert("After".into(), ParameterValue::Value(Value::Guid(id)));
        }
        out
    }
}
