//! `plughost bench mail`: emails rendered per second by a bulk mail job against the
//! same number of records created by a bulk import, and emails delivered per second
//! by the outgoing-mail job against bare SMTP sends of the same messages (lettre, no
//! store), both to an SMTP sink on 127.0.0.1 in this process, in the same run.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::super::{CliError, Global, table};

#[derive(clap::Args)]
pub(crate) struct MailBench {
    /// Records, emails and messages per measurement.
    #[arg(long, default_value_t = 2000)]
    emails: usize,
    /// Where the benchmark's store lives (default: a temporary directory in the current one).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct Rate {
    measurement: &'static str,
    baseline: &'static str,
    per_second: f64,
    baseline_per_second: f64,
    ratio: f64,
}

/// A minimal SMTP server that takes every message and counts it: the sink the
/// benchmark delivers to, so the figures are plughost's and lettre's, not a sink's.
fn sink() -> std::io::Result<(u16, Arc<AtomicU64>)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let count = Arc::new(AtomicU64::new(0));
    let taken = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let taken = taken.clone();
            std::thread::spawn(move || {
                let mut out = stream.try_clone().expect("a TCP stream clones");
                let mut lines = BufReader::new(stream);
                let _ = out.write_all(b"220 bench ESMTP\r\n");
                let mut line = String::new();
                let mut in_data = false;
                while lines.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let reply: &[u8] = if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            taken.fetch_add(1, Ordering::Relaxed);
                            b"250 OK\r\n"
                        } else {
                            b""
                        }
                    } else {
                        match line.get(..4).map(str::to_ascii_uppercase).as_deref() {
                            Some("EHLO") => b"250-bench\r\n250 8BITMIME\r\n",
                            Some("DATA") => {
                                in_data = true;
                                b"354 go on\r\n"
                            }
                            Some("QUIT") => {
                                let _ = out.write_all(b"221 bye\r\n");
                                break;
                            }
                            _ => b"250 OK\r\n",
                        }
                    };
                    if !reply.is_empty() && out.write_all(reply).is_err() {
                        break;
                    }
                    line.clear();
                }
            });
        }
    });
    Ok((port, count))
}

impl MailBench {
    pub(crate) fn run(self, g: &Global) -> Result<ExitCode, CliError> {
        use plughost::mail::smtp::{Delivery, MailSettings, Mailer};
        use plughost::metadata::{AttributeType, EntityDefinition};
        use plughost::model::{Entity, Value};
        use plughost::worker::{WorkerConfig, WorkerPool};
        let fail = |e: &dyn std::fmt::Display| CliError::new("bench", e.to_string());
        let n = self.emails.max(1);
        let tmp = tempfile::tempdir_in(self.dir.clone().unwrap_or_else(|| ".".into())).map_err(|e| fail(&e))?;
        let mut config = plughost::config::Config { store: g.load_config()?.store, ..Default::default() };
        config.workers.workers = 0;
        let pipeline = plughost::server::open_host(&config, tmp.path()).map_err(|e| fail(&e))?;
        let store = pipeline.store().clone();
        let queue = plughost::store::JobQueue::new(store.clone(), pipeline.committer().clone());
        let admin = plughost::admin::Admin::new(pipeline.clone(), queue.clone()).map_err(|e| fail(&e))?;
        let system = plughost::pipeline::Caller::default().user_id;
        let contact = EntityDefinition {
            name: "contact".into(),
            attributes: [
                ("fullname".to_owned(), AttributeType::Text),
                ("emailaddress1".to_owned(), AttributeType::Text),
            ]
            .into(),
        };
        admin.define_entity(&contact).map_err(|e| fail(&e))?;
        let (port, delivered) = sink().map_err(|e| fail(&e))?;
        let settings = MailSettings {
            smtp: Some(format!("smtp://127.0.0.1:{port}")),
            from: Some("Bench <bench@plughost.example>".into()),
            ..MailSettings::default()
        };
        let mailer = Arc::new(Mailer::new(&settings).map_err(|e| fail(&e))?);
        let workers = std::thread::available_parallelism().map_or(2, |c| c.get());
        let run_job = |job: plughost::jobs::SystemJob, mailer: Option<Arc<Mailer>>| -> Result<f64, CliError> {
            let started = Instant::now();
            let pool = WorkerPool::start(
                pipeline.clone(),
                Arc::new(queue.clone()),
                WorkerConfig { workers, poll_ms: 5, mailer, ..WorkerConfig::default() },
                false,
            );
            let result = loop {
                let j = store.job(job.id).map_err(|e| fail(&e))?.ok_or_else(|| fail(&"the job vanished"))?;
                match j.status.name() {
                    "Succeeded" => break Ok(started.elapsed().as_secs_f64()),
                    "Failed" | "Canceled" => break Err(fail(&format!("{}: {:?}", j.name, j.message))),
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            };
            pool.shutdown(Duration::from_secs(5));
            result
        };

        // Baseline: the same number of records created by a bulk import, through the pipeline.
        let rows: String = (0..n)
            .map(|i| format!("{{\"fullname\": \"Person {i}\", \"emailaddress1\": \"person{i}@example.com\"}}\n"))
            .collect();
        let import =
            admin.bulk_import("contact", Some("jsonl"), rows.as_bytes(), None, system).map_err(|e| fail(&e))?;
        let import_s = run_job(import, None)?;
        let template = Entity::new("template")
            .with("name", Value::Text("bench".into()))
            .with("subject", Value::Text("Hello {{fullname}}".into()))
            .with("body", Value::Text("Dear {{fullname}},\nthis is message {{id}}.\n".into()));
        admin
            .execute(plughost::pipeline::Request::Create { record: template }, &Default::default())
            .map_err(|e| fail(&e))?;
        let spec = plughost::mail::BulkMail {
            template: "bench".into(),
            query: plughost::model::Query { entity_name: "contact".into(), ..Default::default() },
            address_attribute: None,
            sender: None,
            name: None,
        };
        let render_s = run_job(admin.bulk_mail(spec, system).map_err(|e| fail(&e))?, None)?;

        // Baseline: bare SMTP sends of as many messages over the same connection pool.
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        for i in 0..n {
            let id = uuid::Uuid::now_v7();
            let body = format!("Dear Person {i},\nthis is message {id}.\n");
            match mailer.send(id, None, &format!("person{i}@example.com"), &format!("Hello Person {i}"), &body) {
                Delivery::Sent => {}
                other => return Err(fail(&format!("the sink refused a message: {other:?}"))),
            }
            let _ = mailer.wait_turn(&stop);
        }
        let smtp_s = started.elapsed().as_secs_f64();

        // The outgoing-mail job delivers the Pending Send emails, each recorded durably.
        let before = delivered.load(Ordering::Relaxed);
        let started = Instant::now();
        let job =
            queue.ensure_outgoing_mail(Some("FREQ=HOURLY")).map_err(|e| fail(&e))?.ok_or_else(|| fail(&"no job"))?;
        let pool = WorkerPool::start(
            pipeline.clone(),
            Arc::new(queue.clone()),
            WorkerConfig { workers, poll_ms: 5, mailer: Some(mailer.clone()), ..WorkerConfig::default() },
            false,
        );
        while delivered.load(Ordering::Relaxed) - before < n as u64 {
            if started.elapsed() > Duration::from_secs(600) {
                return Err(fail(&"delivery took over 10 minutes"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // Delivered and recorded: wait for the job to finish its pass.
        while store.job(job.id).map_err(|e| fail(&e))?.is_some_and(|j| j.status.name() != "Waiting") {
            std::thread::sleep(Duration::from_millis(2));
        }
        let deliver_s = started.elapsed().as_secs_f64();
        pool.shutdown(Duration::from_secs(5));

        let rate = |s: f64| n as f64 / s;
        let rates = vec![
            Rate {
                measurement: "emails rendered (bulk mail job)",
                baseline: "records created (bulk import job)",
                per_second: rate(render_s),
                baseline_per_second: rate(import_s),
                ratio: import_s / render_s,
            },
            Rate {
                measurement: "emails delivered and marked Sent (outgoing-mail job)",
                baseline: "bare SMTP sends (lettre, no store)",
                per_second: rate(deliver_s),
                baseline_per_second: rate(smtp_s),
                ratio: smtp_s / deliver_s,
            },
        ];
        let json = serde_json::json!({
            "command": "plughost bench mail",
            "store": store.engine_name(),
            "emails": n,
            "workers": workers,
            "rates": rates,
        });
        g.print(&json, || {
            let mut rows =
                vec![["MEASUREMENT", "PER SECOND", "BASELINE", "PER SECOND", "RATIO"].map(String::from).to_vec()];
            for r in &rates {
                rows.push(vec![
                    r.measurement.to_owned(),
                    format!("{:.0}", r.per_second),
                    r.baseline.to_owned(),
                    format!("{:.0}", r.baseline_per_second),
                    format!("{:.2}", r.ratio),
                ]);
            }
            format!("{} store, {n} emails, {workers} workers\n{}", store.engine_name(), table(rows))
        })?;
        Ok(ExitCode::SUCCESS)
    }
}
