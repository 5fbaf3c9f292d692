//! Email as data, bulk mail and campaign activity distribution (Dataverse's
//! `SendBulkMail`, `DistributeCampaignActivity` and outgoing email), delivered over
//! SMTP by [`smtp`].
//!
//! Every piece is an ordinary record of a built-in entity ([`builtin_entities`]), so
//! it goes through the pipeline and plug-ins can run on it. Three system jobs do the
//! work: bulk mail (operation type 2) renders one `email` per selected record,
//! distribution (6) creates one activity per member of the targeted lists, and the
//! outgoing-mail job (50) sends `Pending Send` emails and marks them `Sent`.

pub mod smtp;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::jobs::{OperationType, SystemJob};
use crate::metadata::{AttributeType, EntityDefinition};
use crate::model::{Entity, ExecutionContext, Parameters, Query, Value};

pub const TEMPLATE: &str = "template";
pub const EMAIL: &str = "email";
pub const LIST: &str = "list";
pub const LIST_MEMBER: &str = "listmember";
pub const CAMPAIGN: &str = "campaign";
pub const CAMPAIGN_ACTIVITY: &str = "campaignactivity";
pub const CAMPAIGN_ACTIVITY_ITEM: &str = "campaignactivityitem";
pub const PHONE_CALL: &str = "phonecall";
pub const LETTER: &str = "letter";
pub const TASK: &str = "task";
pub const LOG: &str = "bulkoperationlog";

/// An email's `statuscode` (Dataverse's numbers).
pub const DRAFT: i32 = 1;
pub const SENT: i32 = 3;
pub const PENDING_SEND: i32 = 6;
pub const FAILED: i32 = 8;

/// The attribute a bulk mail reads a record's address from unless told otherwise.
pub const DEFAULT_ADDRESS_ATTRIBUTE: &str = "emailaddress1";
/// Most lists one campaign activity targets.
pub const MAX_LISTS: usize = 100;
/// Longest rendered subject, in characters (longer is cut).
pub const MAX_SUBJECT_CHARS: usize = 998;

/// The built-in entities, merged into the store's definitions by schema 9 (users may
/// add attributes to them, never change these).
pub fn builtin_entities() -> Vec<EntityDefinition> {
    use AttributeType::*;
    let def = |name: &str, attrs: &[(&'static str, AttributeType)]| EntityDefinition {
        name: name.to_owned(),
        attributes: attrs.iter().map(|(n, t)| ((*n).to_owned(), *t)).collect(),
    };
    let activity = [
        ("subject", Text),
        ("description", Text),
        ("regardingobjectid", Reference),
        ("campaignactivityid", Reference),
        ("statuscode", Option),
    ];
    let with = |extra: &[(&'static str, AttributeType)]| activity.iter().chain(extra).copied().collect::<Vec<_>>();
    vec![
        def(TEMPLATE, &[("name", Text), ("entity", Text), ("subject", Text), ("body", Text)]),
        def(
            EMAIL,
            &[
                ("sender", Text),
                ("to", Text),
                ("subject", Text),
                ("body", Text),
                ("regardingobjectid", Reference),
                ("statuscode", Option),
                ("error", Text),
                ("senton", Datetime),
                ("messageid", Text),
                ("attempts", Integer),
                ("nextattempt", Datetime),
                ("templateid", Reference),
                ("campaignactivityid", Reference),
                ("bulkoperationid", Guid),
            ],
        ),
        def(LIST, &[("name", Text), ("membertype", Text), ("dynamic", Boolean), ("query", Text)]),
        def(LIST_MEMBER, &[("listid", Reference), ("entityid", Reference)]),
        def(CAMPAIGN, &[("name", Text), ("description", Text)]),
        def(
            CAMPAIGN_ACTIVITY,
            &[
                ("campaignid", Reference),
                ("subject", Text),
                ("body", Text),
                ("channel", Text),
                ("templateid", Reference),
                ("sender", Text),
                ("distributedon", Datetime),
            ],
        ),
        def(CAMPAIGN_ACTIVITY_ITEM, &[("campaignactivityid", Reference), ("listid", Reference)]),
        def(PHONE_CALL, &with(&[("phonenumber", Text)])),
        def(LETTER, &with(&[("address", Text)])),
        def(TASK, &activity),
        def(
            LOG,
            &[
                ("bulkoperationid", Guid),
                ("campaignactivityid", Reference),
                ("regardingobjectid", Reference),
                ("outcome", Text),
                ("activityid", Reference),
                ("error", Text),
            ],
        ),
    ]
}

/// A campaign activity's channel: what distribution creates per member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Email,
    PhoneCall,
    Letter,
    Task,
}

impl Channel {
    pub fn parse(s: &str) -> Result<Channel, String> {
        match s.to_ascii_lowercase().replace([' ', '_', '-'], "").as_str() {
            "email" => Ok(Channel::Email),
            "phonecall" | "phone" => Ok(Channel::PhoneCall),
            "letter" => Ok(Channel::Letter),
            "task" => Ok(Channel::Task),
            _ => Err(format!("unknown channel '{s}': use email, phonecall, letter or task")),
        }
    }

    /// The entity of the activities it creates.
    pub fn entity(self) -> &'static str {
        match self {
            Channel::Email => EMAIL,
            Channel::PhoneCall => PHONE_CALL,
            Channel::Letter => LETTER,
            Channel::Task => TASK,
        }
    }

    /// The member's attribute holding the channel's address, if it needs one.
    pub fn address_attribute(self) -> Option<&'static str> {
        match self {
            Channel::Email => Some("emailaddress1"),
            Channel::PhoneCall => Some("telephone1"),
            Channel::Letter => Some("address1_composite"),
            Channel::Task => None,
        }
    }

    /// The member's opt-out flag for the channel.
    pub fn opt_out_attribute(self) -> Option<&'static str> {
        match self {
            Channel::Email => Some("donotemail"),
            Channel::PhoneCall => Some("donotphone"),
            Channel::Letter => Some("donotpostalmail"),
            Channel::Task => None,
        }
    }
}

/// A subject and body with `{{attribute}}` placeholders, for records of `entity`.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    pub entity: Option<String>,
    pub subject: String,
    pub body: String,
}

impl Template {
    /// A `template` record's template.
    pub fn from_record(record: &Entity) -> Result<Template, String> {
        let text = |name: &str| match record.attributes.get(name) {
            Some(Value::Text(t)) => Some(t.clone()),
            _ => None,
        };
        Ok(Template {
            entity: text("entity"),
            subject: text("subject").ok_or("the template has no subject")?,
            body: text("body").unwrap_or_default(),
        })
    }

    /// Checks that every placeholder names an attribute of `def` and that the
    /// template is for `def`'s entity.
    pub fn check(&self, def: &EntityDefinition) -> Result<(), String> {
        if let Some(entity) = self.entity.as_deref().filter(|e| !e.is_empty())
            && entity != def.name
        {
            return Err(format!("the template is for {entity} records, not {}", def.name));
        }
        for text in [&self.subject, &self.body] {
            for name in placeholders(text)? {
                if def.attribute_type(name).is_none() && name != "id" {
                    return Err(format!(
                        "the template's placeholder {{{{{name}}}}}: {} has no attribute '{name}'",
                        def.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// The subject and body for `record` (a missing value renders empty).
    pub fn render(&self, record: &Entity) -> Result<(String, String), String> {
        let subject: String = render(&self.subject, record)?.replace(['\r', '\n'], " ");
        let subject = subject.chars().take(MAX_SUBJECT_CHARS).collect();
        Ok((subject, render(&self.body, record)?))
    }
}

/// The attribute names of `text`'s placeholders, in order.
pub fn placeholders(text: &str) -> Result<Vec<&str>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end =
            after.find("}}").ok_or_else(|| format!("a placeholder is not closed: '{{{{{}'", first_chars(after)))?;
        let name = after[..end].trim();
        crate::model::check_name(name).map_err(|m| format!("placeholder {{{{{name}}}}}: {m}"))?;
        out.push(name);
        rest = &after[end + 2..];
    }
    Ok(out)
}

fn first_chars(s: &str) -> String {
    s.chars().take(20).collect()
}

/// `text` with each `{{attribute}}` replaced by the record's value.
pub fn render(text: &str, record: &Entity) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("a placeholder is not closed")?;
        let name = after[..end].trim();
        if name == "id" {
            out.push_str(&record.id.map(|id| id.to_string()).unwrap_or_default());
        } else {
            out.push_str(&shown(record.attributes.get(name)));
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A value as a reader sees it in a message.
pub fn shown(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => String::new(),
        Some(Value::Text(t)) => t.clone(),
        Some(Value::OptionSet(o)) => o.to_string(),
        Some(Value::Reference(r)) => r.id.to_string(),
        Some(other) => other.to_string(),
    }
}

/// A record's text attribute, trimmed; `None` when unset or blank.
pub fn text_of<'a>(record: &'a Entity, attribute: &str) -> Option<&'a str> {
    match record.attributes.get(attribute) {
        Some(Value::Text(t)) if !t.trim().is_empty() => Some(t.trim()),
        _ => None,
    }
}

/// Whether a record's boolean attribute is set.
pub fn flag(record: &Entity, attribute: &str) -> bool {
    matches!(record.attributes.get(attribute), Some(Value::Boolean(true)))
}

/// The addresses of a recipients field (separated by `,` or `;`), each checked.
pub fn addresses(field: &str) -> Result<Vec<lettre::Address>, String> {
    let list: Vec<_> = field.split([',', ';']).map(str::trim).filter(|s| !s.is_empty()).collect();
    if list.is_empty() {
        return Err("no recipient".into());
    }
    list.into_iter().map(|a| a.parse().map_err(|e| format!("'{a}' is not an email address: {e}"))).collect()
}

/// A record id derived from others: the same inputs give the same id, so a second
/// attempt to create it finds the first (distribution's log rows: one per member).
pub fn derived_id(parts: &[&[u8]]) -> Uuid {
    let mut h = blake3::Hasher::new();
    h.update(b"plughost-mail-v1");
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&h.finalize().as_bytes()[..16]);
    Uuid::new_v8(bytes)
}

/// What a bulk mail job does (`SendBulkMail`): one email per record `query` selects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkMail {
    /// The template: a `template` record's id or name.
    pub template: String,
    /// The recipients: the records this query selects (its entity and criteria).
    pub query: Query,
    /// The attribute holding each record's address (default `emailaddress1`).
    #[serde(default)]
    pub address_attribute: Option<String>,
    /// The sender (default: `[mail] from`).
    #[serde(default)]
    pub sender: Option<String>,
    /// The job's name.
    #[serde(default)]
    pub name: Option<String>,
}

const SPEC: &str = "Spec";

/// A mail job's spec, resolved: what its runs read back from its context.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MailSpec {
    Bulk { template: Uuid, query: Box<Query>, address_attribute: String, sender: Option<String> },
    Distribute { activity: Uuid },
}

impl MailSpec {
    pub fn job(&self, name: String, by: Uuid) -> Result<SystemJob, String> {
        let (operation, entity) = match self {
            MailSpec::Bulk { query, .. } => (OperationType::BulkEmail, query.entity_name.clone()),
            MailSpec::Distribute { .. } => (OperationType::ActivityPropagation, CAMPAIGN_ACTIVITY.to_owned()),
        };
        let context = ExecutionContext {
            primary_entity_name: entity,
            input_parameters: Parameters::from([(SPEC.to_owned(), crate::bulk::json_value(self)?)]),
            initiating_user_id: by,
            user_id: by,
            ..ExecutionContext::default()
        };
        let regarding = match self {
            MailSpec::Distribute { activity } => {
                Some(crate::model::EntityReference { logical_name: CAMPAIGN_ACTIVITY.into(), id: *activity })
            }
            MailSpec::Bulk { .. } => None,
        };
        Ok(SystemJob {
            name,
            operation_type: operation,
            step_id: None,
            regarding,
            ..SystemJob::plugin_execution("", Uuid::nil(), None, context)
        })
    }

    pub fn from_job(job: &SystemJob) -> Result<MailSpec, String> {
        crate::bulk::json_parameter(job, SPEC)
    }
}

/// What a distribution found for one member, as its log row says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    OptedOut,
    NoAddress,
    Failed,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::OptedOut => "opted_out",
            Outcome::NoAddress => "no_address",
            Outcome::Failed => "failed",
        }
    }
}

/// Attributes of a record as a map, for building records tersely.
pub fn record(entity: &str, attrs: impl IntoIterator<Item = (&'static str, Value)>) -> Entity {
    let attributes: BTreeMap<String, Value> =
        attrs.into_iter().filter(|(_, v)| *v != Value::Null).map(|(k, v)| (k.to_owned(), v)).collect();
    Entity { logical_name: entity.to_owned(), id: None, attributes }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact() -> Entity {
        Entity::new("contact")
            .with("fullname", Value::Text("Ada Lovelace".into()))
            .with("credit", Value::Money("12.50".into()))
    }

    fn def() -> EntityDefinition {
        EntityDefinition {
            name: "contact".into(),
            attributes: [("fullname".to_owned(), AttributeType::Text), ("credit".to_owned(), AttributeType::Money)]
                .into(),
        }
    }

    #[test]
    fn placeholders_render_values_and_missing_ones_render_empty() {
        let t = Template {
            entity: Some("contact".into()),
            subject: "Hello {{ fullname }}\r\nBcc: x@y".into(),
            body: "Dear {{fullname}}, your credit is {{credit}}{{nothing}}.".into(),
        };
        let (subject, body) = t.render(&contact()).unwrap();
        assert_eq!(subject, "Hello Ada Lovelace  Bcc: x@y", "no header can be injected");
        assert_eq!(body, "Dear Ada Lovelace, your credit is 12.50.");
        assert!(t.check(&def()).unwrap_err().contains("no attribute 'nothing'"));
        let other = Template { entity: Some("account".into()), ..t.clone() };
        assert!(other.check(&def()).unwrap_err().contains("for account records"));
        let open = Template { subject: "Hi {{fullname".into(), body: String::new(), entity: None };
        assert!(open.check(&def()).unwrap_err().contains("not closed"));
    }

    #[test]
    fn recipients_are_checked_and_derived_ids_are_stable() {
        assert_eq!(addresses("a@example.com; b@example.com").unwrap().len(), 2);
        assert!(addresses("not an address").unwrap_err().contains("not an email address"));
        assert!(addresses(" , ").unwrap_err().contains("no recipient"));
        let a = Uuid::now_v7();
        assert_eq!(derived_id(&[a.as_bytes(), b"x"]), derived_id(&[a.as_bytes(), b"x"]));
        assert_ne!(derived_id(&[a.as_bytes(), b"x"]), derived_id(&[a.as_bytes(), b"y"]));
        assert_eq!(Channel::parse("Phone Call").unwrap(), Channel::PhoneCall);
        assert!(Channel::parse("fax").is_err());
    }

    #[test]
    fn a_spec_survives_its_job() {
        let spec = MailSpec::Distribute { activity: Uuid::now_v7() };
        let job = spec.job("x".into(), Uuid::nil()).unwrap();
        assert_eq!(job.operation_type, OperationType::ActivityPropagation);
        assert_eq!(MailSpec::from_job(&job).unwrap(), spec);
    }
}
