//! `plughost bulk delete|import`, `plughost mail bulk`, `plughost campaigns
//! distribute`: bulk operations, run as system jobs.

use std::process::ExitCode;

use plughost::jobs::SystemJob;
use plughost::model::{Filter, Query};
use plughost::pipeline::BulkDelete;
use plughost::server::ImportQuery;

use super::entities::condition;
use super::{CliError, Global, read_file, read_json};

#[derive(clap::Subcommand)]
pub(crate) enum Bulk {
    /// Delete the records a query selects, as a system job (optionally recurring):
    /// --where ATTR:OP[:VALUE] as in `entities query`, or a whole query from --file.
    /// Each record is deleted through the pipeline; failures are listed on the job.
    Delete {
        entity: Option<String>,
        #[arg(long = "where", value_name = "ATTR:OP[:VALUE]")]
        conditions: Vec<String>,
        /// A JSON query file (entity_name, criteria).
        #[arg(long)]
        file: Option<std::path::PathBuf>,
        /// Run again on this RRULE, e.g. 'FREQ=DAILY;BYHOUR=2'.
        #[arg(long, conflicts_with = "wait")]
        recurrence: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Follow the job until it completes, with a progress bar (as `jobs watch`).
        #[arg(long)]
        wait: bool,
    },
    /// Create records from a CSV file (header row of attribute names) or JSON lines,
    /// as a system job: each row goes through the pipeline; failures are listed on the job.
    Import {
        file: std::path::PathBuf,
        #[arg(long)]
        entity: String,
        /// csv or jsonl (default: from the file's extension, else csv).
        #[arg(long)]
        format: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Follow the job until it completes, with a progress bar (as `jobs watch`).
        #[arg(long)]
        wait: bool,
    },
}

impl Bulk {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let backend = g.backend()?;
        let (job, wait) = match self {
            Bulk::Delete { entity, conditions, file, recurrence, name, wait } => {
                let query = query_of(entity, &conditions, file)?;
                let spec = BulkDelete {
                    query,
                    name,
                    postpone_until: None,
                    recurrence_pattern: recurrence,
                    recurrence_start: None,
                };
                (backend.bulk_delete(spec)?, wait)
            }
            Bulk::Import { file, entity, format, name, wait } => {
                let bytes = read_file(&file, "import file")?;
                let format = format.or_else(|| {
                    let ext = file.extension()?.to_str()?.to_ascii_lowercase();
                    matches!(ext.as_str(), "jsonl" | "ndjson").then(|| "jsonl".to_owned())
                });
                (backend.bulk_import(&ImportQuery { entity, format, name }, &bytes)?, wait)
            }
        };
        match wait {
            true => super::jobs::watch(g, backend.as_ref(), &job.id.to_string(), 250),
            false => print_queued(g, &job),
        }
    }
}

#[derive(clap::Subcommand)]
pub(crate) enum Mail {
    /// Queue a bulk mail (SendBulkMail): one Pending Send email per record a query
    /// selects (--where as in `entities query`, or --file), rendered from a template's
    /// subject and body ({{attribute}} placeholders). Records without an address, or
    /// with donotemail set, are skipped and listed on the job.
    Bulk {
        entity: Option<String>,
        /// The template: a `template` record's id or name.
        #[arg(long)]
        template: String,
        #[arg(long = "where", value_name = "ATTR:OP[:VALUE]")]
        conditions: Vec<String>,
        /// A JSON query file (entity_name, criteria).
        #[arg(long = "file")]
        file: Option<std::path::PathBuf>,
        /// The attribute holding each record's address (default emailaddress1).
        #[arg(long)]
        address_attribute: Option<String>,
        /// The sender (default: [mail] from).
        #[arg(long)]
        sender: Option<String>,
        #[arg(long)]
        name: Option<String>,
        /// Follow the job until it completes, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(clap::Subcommand)]
pub(crate) enum Campaigns {
    /// Queue the distribution of a campaign activity (DistributeCampaignActivity): one
    /// activity per member of its lists (once per member), skipping members who opted
    /// out or lack the channel's address; one bulkoperationlog row per member.
    Distribute {
        /// The campaign activity's id.
        activity: uuid::Uuid,
        #[arg(long)]
        name: Option<String>,
        /// Follow the job until it completes, with a progress bar.
        #[arg(long)]
        wait: bool,
    },
}

impl Mail {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let backend = g.backend()?;
        let Mail::Bulk { entity, template, conditions, file, address_attribute, sender, name, wait } = self;
        let query = query_of(entity, &conditions, file)?;
        let spec = plughost::mail::BulkMail { template, query, address_attribute, sender, name };
        let job = backend.bulk_mail(spec)?;
        match wait {
            true => super::jobs::watch(g, backend.as_ref(), &job.id.to_string(), 250),
            false => print_queued(g, &job),
        }
    }
}

impl Campaigns {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let backend = g.backend()?;
        let Campaigns::Distribute { activity, name, wait } = self;
        let job = backend.distribute(activity, name)?;
        match wait {
            true => super::jobs::watch(g, backend.as_ref(), &job.id.to_string(), 250),
            false => print_queued(g, &job),
        }
    }
}

/// A query from a file, or from an entity and `--where` conditions.
fn query_of(
    entity: Option<String>,
    conditions: &[String],
    file: Option<std::path::PathBuf>,
) -> Result<Query, CliError> {
    match (file, entity) {
        (Some(path), _) => read_json::<Query>(&path, "query file"),
        (None, Some(entity)) => Ok(Query {
            entity_name: entity,
            criteria: Filter {
                conditions: conditions.iter().map(|c| condition(c)).collect::<Result<_, _>>()?,
                ..Default::default()
            },
            ..Query::default()
        }),
        (None, None) => Err(CliError::new("invalid", "give the entity, or a query with --file")),
    }
}

fn print_queued(g: &Global, job: &SystemJob) -> Result<ExitCode, CliError> {
    g.print(job, || {
        format!(
            "queued job {} ({}), {}: follow it with `plughost jobs show {}`",
            job.id,
            job.name,
            job.status.name(),
            job.id
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
