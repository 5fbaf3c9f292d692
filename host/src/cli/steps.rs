//! `plughost steps add|list|show|remove|enable|disable|profile`

use std::process::ExitCode;

use plughost::model::{Mode, Stage};
use plughost::registry::{ImageKind, ImageSpec, StepRecord, StepSpec};
use plughost::runtime::LimitOverrides;

use super::{CliError, Global, table};

#[derive(clap::Subcommand)]
pub(crate) enum Steps {
    /// Bind a registered plug-in to an event.
    Add(Box<Add>),
    /// List steps.
    List {
        /// Only the steps of this plug-in.
        #[arg(long)]
        plugin: Option<String>,
    },
    /// Show one step (by id, unique id prefix or name).
    Show { step: String },
    /// Remove a step.
    Remove { step: String },
    /// Enable a step.
    Enable { step: String },
    /// Disable a step; it stays registered but does not fire.
    Disable { step: String },
    /// Record the step's next runs (context, every data call with its answer, outcome)
    /// for `plughost replay`; see them with `plughost runs list`.
    Profile {
        step: String,
        /// How many runs to record (at most 100).
        #[arg(long, default_value_t = 10, conflicts_with = "off")]
        runs: u32,
        /// Stop recording.
        #[arg(long)]
        off: bool,
    },
}

#[derive(clap::Args)]
pub(crate) struct Add {
    #[arg(long)]
    plugin: String,
    /// Create, Update, Delete, Retrieve, RetrieveMultiple or a custom message.
    #[arg(long)]
    message: String,
    /// The primary entity; omit to fire for every entity.
    #[arg(long)]
    entity: Option<String>,
    /// pre-validation (10), pre-operation (20), main-operation (30) or post-operation (40).
    #[arg(long)]
    stage: Stage,
    /// sync or async (async needs post-operation).
    #[arg(long, default_value = "sync")]
    mode: Mode,
    /// Order within the stage; lower runs first.
    #[arg(long, default_value_t = 1)]
    rank: i32,
    /// The step's configuration string, passed to the plug-in.
    #[arg(long)]
    config: Option<String>,
    /// Update steps: fire only when one of these attributes changes (comma-separated).
    #[arg(long, value_delimiter = ',')]
    filter: Vec<String>,
    /// A pre-image: ALIAS or ALIAS:attr1,attr2 (all attributes when none are listed).
    #[arg(long = "pre-image", value_name = "ALIAS[:ATTRS]")]
    pre_images: Vec<String>,
    /// A post-image: ALIAS or ALIAS:attr1,attr2.
    #[arg(long = "post-image", value_name = "ALIAS[:ATTRS]")]
    post_images: Vec<String>,
    /// A limit override, NAME=VALUE: fuel, memory, timeout, trace, host_calls, input, output
    /// (e.g. --limit fuel=1000000 --limit memory=32MiB --limit timeout=5s).
    #[arg(long = "limit", value_name = "NAME=VALUE")]
    limits: Vec<String>,
    /// Reuse one instance for up to N invocations (0: a fresh instance every time).
    #[arg(long, default_value_t = 0)]
    reuse: u32,
    /// Asynchronous steps: delete the system job once it succeeds.
    #[arg(long)]
    delete_on_success: bool,
    /// Asynchronous steps: run this step's jobs for one record one at a time, in order.
    #[arg(long)]
    ordered: bool,
    /// Run the step as this user (Dataverse's impersonating user); default: the caller.
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// Record the step's next N runs for `plughost replay` (at most 100).
    #[arg(long, value_name = "N", default_value_t = 0)]
    record_runs: u32,
    /// Register the step disabled.
    #[arg(long)]
    disabled: bool,
    /// A name for the step (default: derived from plug-in, message, entity and stage).
    #[arg(long)]
    name: Option<String>,
}

fn image(kind: ImageKind, spec: &str) -> ImageSpec {
    let (alias, attrs) = spec.split_once(':').unwrap_or((spec, ""));
    ImageSpec {
        kind,
        alias: alias.to_owned(),
        attributes: attrs.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect(),
    }
}

impl Add {
    fn spec(self) -> Result<StepSpec, CliError> {
        let mut limits = LimitOverrides::default();
        for l in &self.limits {
            limits.set(l).map_err(|m| CliError::new("invalid", m))?;
        }
        let images = self
            .pre_images
            .iter()
            .map(|s| image(ImageKind::Pre, s))
            .chain(self.post_images.iter().map(|s| image(ImageKind::Post, s)))
            .collect();
        Ok(StepSpec {
            name: self.name,
            plugin: self.plugin,
            message: self.message,
            entity: self.entity,
            stage: self.stage,
            mode: self.mode,
            rank: self.rank,
            filtering_attributes: self.filter,
            configuration: self.config,
            images,
            limits,
            disabled: self.disabled,
            delete_job_on_success: self.delete_on_success,
            instance_reuse: self.reuse,
            ordered_per_record: self.ordered,
            run_as: self.run_as,
            record_runs: self.record_runs,
        })
    }
}

fn describe(s: &StepRecord) -> String {
    let mut out = format!(
        "step      {}\nname      {}\nplug-in   {}\nevent     {} of {}, stage {} ({}), {}, rank {}\nenabled   {}\n",
        s.id,
        s.name,
        s.plugin,
        s.message,
        s.entity.as_deref().unwrap_or("any entity"),
        s.stage.code(),
        s.stage.name(),
        if s.mode == Mode::Synchronous { "sync" } else { "async" },
        s.rank,
        s.enabled
    );
    if !s.filtering_attributes.is_empty() {
        out.push_str(&format!("filter    {}\n", s.filtering_attributes.join(", ")));
    }
    for i in &s.images {
        let attrs = if i.attributes.is_empty() { "all attributes".to_owned() } else { i.attributes.join(", ") };
        out.push_str(&format!("image     {:?} '{}': {attrs}\n", i.kind, i.alias));
    }
    if let Some(c) = &s.configuration {
        out.push_str(&format!("config    {c}\n"));
    }
    if s.limits != LimitOverrides::default() {
        out.push_str(&format!("limits    {}\n", serde_json::to_string(&s.limits).unwrap_or_default()));
    }
    if s.instance_reuse > 0 {
        out.push_str(&format!("reuse     up to {} invocations per instance\n", s.instance_reuse));
    }
    out
}

impl Steps {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        let backend = g.backend()?;
        match self {
            Steps::Add(add) => {
                let record = backend.add_step(add.spec()?)?;
                g.print(&record, || format!("added step {} {}", record.id, record.name))?;
            }
            Steps::List { plugin } => {
                let steps: Vec<_> =
                    backend.steps()?.into_iter().filter(|s| plugin.as_ref().is_none_or(|p| &s.plugin == p)).collect();
                g.print(&steps, || {
                    if steps.is_empty() {
                        return "no steps registered: add one with `plughost steps add`".into();
                    }
                    let mut rows = vec![
                        ["ID", "PLUG-IN", "MESSAGE", "ENTITY", "STAGE", "MODE", "RANK", "ENABLED"]
                            .map(String::from)
                            .to_vec(),
                    ];
                    for s in &steps {
                        rows.push(vec![
                            s.id.to_string()[..8].to_owned(),
                            s.plugin.clone(),
                            s.message.clone(),
                            s.entity.clone().unwrap_or_else(|| "*".into()),
                            format!("{} {}", s.stage.code(), s.stage.name()),
                            if s.mode == Mode::Synchronous { "sync".into() } else { "async".into() },
                            s.rank.to_string(),
                            if s.enabled { "yes".into() } else { "no".into() },
                        ]);
                    }
                    table(rows)
                })?;
            }
            Steps::Show { step } => {
                let s = backend.step(&step)?;
                g.print(&s, || describe(&s))?;
            }
            Steps::Remove { step } => {
                let removed = backend.remove_step(&step)?;
                g.print(&removed, || format!("removed step {} {}", removed.id, removed.name))?;
            }
            Steps::Enable { step } => {
                let s = backend.set_step_enabled(&step, true)?;
                g.print(&s, || format!("enabled step {} {}", s.id, s.name))?;
            }
            Steps::Disable { step } => {
                let s = backend.set_step_enabled(&step, false)?;
                g.print(&s, || format!("disabled step {} {}", s.id, s.name))?;
            }
            Steps::Profile { step, runs, off } => {
                let p = backend.profile_step(&step, if off { 0 } else { runs })?;
                g.print(&p, || match p.runs_left {
                    0 => format!("step {} {} records no runs", p.step, p.name),
                    n => format!("step {} {} records its next {n} runs: see `plughost runs list`", p.step, p.name),
                })?;
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}
