//! The dashboard's pages and actions.

use std::fmt::Write as _;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html as HtmlResponse, IntoResponse, Redirect, Response};
use uuid::Uuid;

use super::html::{self, Html, esc, url};
use super::{Form, Session, UiError, UiResult, back_to, charts};
use crate::admin::{Admin, AdminError, JobFilter};
use crate::clock::now_ms;
use crate::jobs::{JobState, JobStatus, OperationType, SystemJob};
use crate::security::{Capability, Principal};
use crate::server::AppState;
use crate::server::api::{admin, audited, guid_param};
use crate::store::JobAction;

/// Most jobs one page of the list reads when a filter is not covered by the index
/// it reads: past it the page stops short and says so.
pub const SCAN_BUDGET: usize = 10_000;
/// How often the overview's live counts refresh, and its charts (in ticks).
const TICK: std::time::Duration = std::time::Duration::from_secs(2);
const CHART_TICKS: u64 = 15;

fn page(s: &Session, title: &str, current: &str, body: &str) -> Response {
    HtmlResponse(html::layout(title, current, &s.principal, &s.csrf, body)).into_response()
}

fn can_manage(who: &Principal) -> bool {
    who.privileges.has(Capability::ManageJobs)
}

fn require(who: &Principal, c: Capability) -> UiResult<()> {
    who.require(c).map_err(|d| UiError::from(AdminError::Denied(d.0)))
}

/// The query string's fields.
fn pairs(q: &Option<String>) -> Vec<(String, String)> {
    q.as_deref().and_then(|q| serde_urlencoded::from_str(q).ok()).unwrap_or_default()
}

fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

/// What the previous action did, from the redirect's query (fixed texts only).
fn done_notice(pairs: &[(String, String)]) -> String {
    let Some(action) = field(pairs, "done") else { return String::new() };
    let known = ["cancel", "pause", "resume", "postpone", "retry", "delete", "enable", "disable", "queued"];
    if !known.contains(&action) {
        return String::new();
    }
    let n = field(pairs, "n").and_then(|n| n.parse::<u64>().ok());
    let refused = field(pairs, "refused").and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    let text = match (action, n) {
        ("queued", _) => "The action runs as this system job over every matching job.".to_owned(),
        (a, Some(n)) => format!("{a}: done for {n} jobs; {refused} did not allow it."),
        (a, None) => format!("{a}: done."),
    };
    html::notice(if refused > 0 { "warn" } else { "ok" }, &esc(&text))
}

// ---- overview ----

struct Overview {
    counts: Vec<(OperationType, JobStatus, u64)>,
    runnable: u64,
    paused: bool,
    minutes: Option<charts::Minutes>,
}

fn overview_data(a: &Admin, with_charts: bool) -> Result<Overview, AdminError> {
    let counts = a.store().job_type_counts()?;
    let runnable = a.counts()?.runnable;
    let minutes = if with_charts {
        let now = now_ms();
        let rows = a.store().job_minutes(now - charts::MINUTES as i64 * 60_000)?;
        Some(charts::minutes(&rows, now))
    } else {
        None
    };
    Ok(Overview { counts, runnable, paused: a.is_paused(), minutes })
}

fn total(o: &Overview, status: JobStatus) -> u64 {
    o.counts.iter().filter(|(_, s, _)| *s == status).map(|(_, _, n)| n).sum()
}

fn charts_html(m: &charts::Minutes) -> String {
    charts::throughput(m) + &charts::durations(m)
}

/// The live figures the overview's script fills in (`data-k` and `data-cell`).
fn live_json(o: &Overview) -> serde_json::Value {
    let mut cells = serde_json::Map::new();
    for (t, s, n) in &o.counts {
        cells.insert(format!("{}:{}", t.name(), s.name()), (*n).into());
    }
    for t in OperationType::ALL {
        let row: u64 = o.counts.iter().filter(|(ot, _, _)| *ot == t).map(|(_, _, n)| n).sum();
        cells.insert(format!("{}:total", t.name()), row.into());
    }
    serde_json::json!({
        "cells": cells,
        "runnable": o.runnable,
        "waiting": total(o, JobStatus::Waiting),
        "in_progress": total(o, JobStatus::InProgress),
        "paused": o.paused,
    })
}

pub(super) async fn overview(State(state): State<AppState>, Extension(s): Extension<Session>) -> UiResult<Response> {
    let o = admin(&state, |a| overview_data(a, true)).await?;
    let m = o.minutes.as_ref().expect("asked for charts");
    let mut h = Html::default();
    if o.paused {
        h.raw(&html::notice(
            "warn",
            "The asynchronous service is <strong>paused</strong>: no job starts until it is resumed.",
        ));
    }
    let card = |k: &str, n: u64, label: &str| {
        format!("<div class=\"card\"><span class=\"n\" data-k=\"{k}\">{n}</span><span>{}</span></div>", esc(label))
    };
    h.raw("<div class=\"cards\">")
        .raw(&card("runnable", o.runnable, "Runnable now"))
        .raw(&card("in_progress", total(&o, JobStatus::InProgress), "In progress"))
        .raw(&card("waiting", total(&o, JobStatus::Waiting), "Waiting"))
        .raw(&card("failed_hour", m.failed_total, "Runs failed in the last hour"))
        .raw("</div>");
    h.raw("<h2>Jobs by operation type and status</h2>");
    let mut head = vec!["Operation type"];
    head.extend(JobStatus::ALL.iter().map(|s| s.name()));
    head.push("Total");
    let rows = OperationType::ALL.iter().map(|t| {
        let mut row = vec![esc(t.label())];
        let mut sum = 0;
        for s in JobStatus::ALL {
            let n = o.counts.iter().find(|(ot, st, _)| ot == t && *st == s).map_or(0, |(_, _, n)| *n);
            sum += n;
            row.push(format!(
                "<a href=\"/ui/jobs?type={}&amp;status={}\" data-cell=\"{}:{}\">{n}</a>",
                t.name(),
                s.name(),
                t.name(),
                s.name()
            ));
        }
        row.push(format!("<span data-cell=\"{}:total\">{sum}</span>", t.name()));
        row
    });
    h.table("matrix", &head, rows);
    h.raw("<h2>The last hour</h2><div id=\"charts\">").raw(&charts_html(m)).raw("</div>");
    h.raw("<p class=\"hint\"><span id=\"live\" data-live=\"/ui/events\">live</span>: counts refresh every 2 s and the charts every 30 s while this tab is visible.</p>");
    Ok(page(&s, "Overview", "overview", &h.0))
}

/// Server-sent events for the overview: `counts` every tick, `charts` now and then.
pub(super) async fn events(State(state): State<AppState>) -> impl IntoResponse {
    let stream = futures_util::stream::unfold((state, 0u64), |(state, tick)| async move {
        if tick > 0 {
            tokio::time::sleep(TICK).await;
        }
        // The server is shutting down: end the stream (the page reconnects elsewhere).
        if *state.stopping.borrow() {
            return None;
        }
        let with_charts = tick % CHART_TICKS == CHART_TICKS - 1;
        let event = match admin(&state, move |a| overview_data(a, with_charts)).await {
            Ok(o) => {
                let counts = Event::default().event("counts").data(live_json(&o).to_string());
                match o.minutes.as_ref() {
                    Some(m) => vec![counts, Event::default().event("charts").data(charts_html(m))],
                    None => vec![counts],
                }
            }
            Err(e) => vec![Event::default().event("error").data(e.message)],
        };
        Some((futures_util::stream::iter(event.into_iter().map(Ok::<_, std::convert::Infallible>)), (state, tick + 1)))
    });
    Sse::new(futures_util::StreamExt::flatten(stream)).keep_alive(KeepAlive::default())
}

// ---- jobs ----

/// A `datetime-local` value (no zone: UTC) or RFC 3339 or milliseconds, as the filter takes it.
fn time_field(v: Option<&str>) -> Option<String> {
    v.map(|t| if t.len() == 16 && t.as_bytes().get(10) == Some(&b'T') { format!("{t}:00Z") } else { t.to_owned() })
}

/// The list's filter from its query string (empty fields are unset).
fn filter_of(p: &[(String, String)]) -> JobFilter {
    let f = |n: &str| field(p, n).map(str::to_owned);
    JobFilter {
        status: f("status"),
        step: f("step"),
        operation_type: f("type"),
        plugin: f("plugin"),
        entity: f("entity"),
        record: f("record"),
        name: f("name"),
        token: f("token"),
        since: time_field(field(p, "since")),
        until: time_field(field(p, "until")),
        id_prefix: f("id_prefix"),
        after: f("after"),
        order: f("order"),
        limit: field(p, "limit").and_then(|l| l.parse().ok()).or(Some(50)),
    }
}

/// The filter fields of a query string, to carry into links and forms.
const FILTER_FIELDS: [&str; 13] = [
    "status",
    "type",
    "plugin",
    "step",
    "entity",
    "record",
    "name",
    "token",
    "since",
    "until",
    "id_prefix",
    "order",
    "limit",
];

fn filter_query(p: &[(String, String)]) -> String {
    FILTER_FIELDS.iter().filter_map(|n| field(p, n).map(|v| format!("{n}={}", url(v)))).collect::<Vec<_>>().join("&")
}

fn select(name: &str, current: Option<&str>, options: &[(String, String)]) -> String {
    let mut out = format!("<select name=\"{name}\" id=\"f-{name}\"><option value=\"\">any</option>");
    for (value, label) in options {
        let sel = if current == Some(value.as_str()) { " selected" } else { "" };
        let _ = write!(out, "<option value=\"{}\"{sel}>{}</option>", esc(value), esc(label));
    }
    out.push_str("</select>");
    out
}

fn input(name: &str, label: &str, current: Option<&str>, kind: &str) -> String {
    format!(
        "<label>{}<input name=\"{name}\" id=\"f-{name}\" type=\"{kind}\" value=\"{}\"></label>",
        esc(label),
        esc(current.unwrap_or(""))
    )
}

fn regarding(j: &SystemJob) -> String {
    j.regarding
        .as_ref()
        .map(|r| format!("{} <code>{}</code>", esc(&r.logical_name), &r.id.to_string()[..8]))
        .unwrap_or_default()
}

pub(super) async fn jobs(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    RawQuery(q): RawQuery,
) -> UiResult<Response> {
    let p = pairs(&q);
    let filter = filter_of(&p);
    let who = s.principal.clone();
    let f = filter.clone();
    let (page_, index, unindexed) = admin(&state, move |a| {
        let query = a.job_query_of(&who, &f)?;
        let page = a.store().list_jobs_page(&query, Some(SCAN_BUDGET))?;
        Ok((page, query.index().name(), query.unindexed()))
    })
    .await?;
    let mut h = Html::default();
    h.raw(&done_notice(&p));
    // The filter form.
    let statuses: Vec<(String, String)> =
        JobStatus::ALL.iter().map(|s| (s.name().to_owned(), s.name().to_owned())).collect();
    let types: Vec<(String, String)> =
        OperationType::ALL.iter().map(|t| (t.name().to_owned(), t.label().to_owned())).collect();
    let orders = [("oldest".to_owned(), "oldest first".to_owned()), ("newest".to_owned(), "newest first".to_owned())];
    h.raw("<form method=\"get\" action=\"/ui/jobs\" class=\"filters\" id=\"filters\">")
        .raw(&format!("<label>Status{}</label>", select("status", field(&p, "status"), &statuses)))
        .raw(&format!("<label>Operation type{}</label>", select("type", field(&p, "type"), &types)))
        .raw(&input("plugin", "Plug-in", field(&p, "plugin"), "text"))
        .raw(&input("step", "Step id", field(&p, "step"), "text"))
        .raw(&input("entity", "Regarding entity", field(&p, "entity"), "text"))
        .raw(&input("record", "Regarding record id", field(&p, "record"), "text"))
        .raw(&input("name", "Name contains", field(&p, "name"), "text"))
        .raw(&input("since", "Created from (UTC)", field(&p, "since"), "datetime-local"))
        .raw(&input("until", "Created before (UTC)", field(&p, "until"), "datetime-local"))
        .raw(&format!("<label>Order{}</label>", select("order", field(&p, "order"), &orders)))
        .raw("<div class=\"buttons\"><button type=\"submit\">Filter</button> <a href=\"/ui/jobs\">Clear</a></div></form>");
    // What the listing reads, said rather than scanned silently.
    let mut plan = format!("Read through the <strong>{}</strong> index.", esc(index));
    if !unindexed.is_empty() {
        let _ = write!(
            plan,
            " Not covered by an index, checked job by job (at most {SCAN_BUDGET} jobs per page): <strong>{}</strong>.",
            esc(&unindexed.join(", "))
        );
    }
    h.raw(&format!("<p class=\"hint\" id=\"plan\">{plan}</p>"));
    if page_.budget_spent {
        h.raw(&html::notice(
            "warn",
            &format!(
                "Searched {} jobs without filling this page: more may match further on (<strong>Next</strong> goes on searching). Filter by status, step or plug-in, or a created range, to use an index.",
                page_.scanned
            ),
        ));
    }
    let manage = can_manage(&s.principal);
    let here = match &q {
        Some(q) => format!("/ui/jobs?{q}"),
        None => "/ui/jobs".to_owned(),
    };
    if manage {
        let actions: Vec<(String, String)> = ["cancel", "pause", "resume", "postpone", "retry", "delete"]
            .iter()
            .map(|a| (a.to_string(), a.to_string()))
            .collect();
        let mut carried = String::new();
        for n in FILTER_FIELDS {
            if let Some(v) = field(&p, n) {
                carried.push_str(&html::hidden(&format!("f_{n}"), v));
            }
        }
        h.raw("<form method=\"post\" action=\"/ui/jobs/action\" id=\"bulk\" class=\"bulk\">")
            .raw(&html::hidden("csrf", &s.csrf))
            .raw(&html::hidden("back", &here))
            .raw(&carried)
            .raw(&format!("<label>Action{}</label>", select("action", None, &actions).replace("<option value=\"\">any</option>", "")))
            .raw("<label>Postpone until (UTC)<input type=\"datetime-local\" name=\"until\" id=\"bulk-until\"></label>")
            .raw("<div class=\"buttons\"><button type=\"submit\" name=\"scope\" value=\"selected\" id=\"apply-selected\">Apply to selected</button> ")
            .raw("<button type=\"submit\" name=\"scope\" value=\"all\" id=\"apply-all\" class=\"secondary\">Apply to all matching (a system job)</button></div></form>");
    }
    let mut head = vec!["", "Id", "Name", "Type", "Status", "Created", "Regarding", "Message"];
    if !manage {
        head.remove(0);
    }
    let rows = page_.jobs.iter().map(|j| {
        let mut row = Vec::new();
        if manage {
            row.push(format!(
                "<input type=\"checkbox\" name=\"id\" value=\"{}\" form=\"bulk\" aria-label=\"select {}\">",
                j.id, j.id
            ));
        }
        let message = match (&j.error_code, &j.message) {
            (Some(c), Some(m)) => format!("<code>{}</code> {}", esc(c), esc(&truncate(m, 80))),
            (None, Some(m)) => esc(&truncate(m, 80)),
            (Some(c), None) => format!("<code>{}</code>", esc(c)),
            (None, None) => String::new(),
        };
        row.extend([
            html::job_link(j),
            esc(&j.name),
            esc(j.operation_type.label()),
            html::status(j.status),
            html::time(j.created_on),
            regarding(j),
            message,
        ]);
        row
    });
    if manage {
        h.raw("<p class=\"select-all\"><label><input type=\"checkbox\" id=\"select-all\"> select all on this page</label></p>");
    }
    h.table("jobs", &head, rows);
    let base = filter_query(&p);
    let mut nav = String::from("<nav class=\"pager\">");
    if field(&p, "after").is_some() {
        let _ = write!(nav, "<a href=\"/ui/jobs?{}\">First page</a>", esc(&base));
    }
    if let Some(next) = page_.next_after {
        let sep = if base.is_empty() { "" } else { "&" };
        let _ = write!(nav, "<a href=\"/ui/jobs?{}{sep}after={next}\" id=\"next\" rel=\"next\">Next →</a>", esc(&base));
    }
    nav.push_str("</nav>");
    h.raw(&nav);
    Ok(page(&s, "System jobs", "jobs", &h.0))
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n { s.to_owned() } else { s.chars().take(n).collect::<String>() + "…" }
}

/// The action a form names (with its postpone time).
fn action_of(form: &Form, name: &str) -> UiResult<JobAction> {
    let until = match name {
        "postpone" => {
            let text = time_field(form.get("until")).ok_or_else(|| {
                UiError(crate::server::ApiError::bad_request("postpone: give the time to postpone until"))
            })?;
            Some(crate::model::time_from_text(&text).map_err(|m| UiError(crate::server::ApiError::bad_request(m)))?)
        }
        _ => None,
    };
    JobAction::parse(name, until).map_err(|m| UiError(crate::server::ApiError::bad_request(m)))
}

pub(super) async fn jobs_action(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    body: Result<Bytes, BytesRejection>,
) -> UiResult<Response> {
    let form = Form::parse(body)?;
    form.check(&s)?;
    let action = action_of(&form, form.get("action").unwrap_or(""))?;
    let back = back_to(form.get("back"));
    let who = s.principal.clone();
    match form.get("scope") {
        Some("all") => {
            let carried: Vec<(String, String)> = FILTER_FIELDS
                .iter()
                .filter_map(|n| form.get(&format!("f_{n}")).map(|v| (n.to_string(), v.to_owned())))
                .collect();
            let filter = JobFilter { after: None, limit: None, ..filter_of(&carried) };
            let job = audited(&state, &who.clone(), "jobs.bulk_action", action.name(), move |a| {
                a.job_action_matching(&who, &filter, action, None)
            })
            .await?;
            Ok(Redirect::to(&format!("/ui/jobs/{}?done=queued", job.id)).into_response())
        }
        _ => {
            let ids = form.all("id").map(guid_param).collect::<Result<Vec<Uuid>, _>>()?;
            if ids.is_empty() {
                return Err(UiError(crate::server::ApiError::bad_request(
                    "no job is selected: tick some, or apply to all matching",
                )));
            }
            let target = format!("{} selected jobs", ids.len());
            let results = audited(&state, &who.clone(), "jobs.bulk_action", target, move |a| {
                a.job_action_each(&who, &ids, action)
            })
            .await?;
            let ok = results.iter().filter(|(_, r)| r.is_ok()).count();
            let refused = results.len() - ok;
            let sep = if back.contains('?') { "&" } else { "?" };
            let back = strip_done(&back);
            Ok(Redirect::to(&format!("{back}{sep}done={}&n={ok}&refused={refused}", action.name())).into_response())
        }
    }
}

/// A path without an earlier action's notice fields.
fn strip_done(path: &str) -> String {
    let Some((base, q)) = path.split_once('?') else { return path.to_owned() };
    let kept: Vec<&str> =
        q.split('&').filter(|kv| !["done=", "n=", "refused="].iter().any(|p| kv.starts_with(p))).collect();
    if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) }
}

/// The actions a job's status allows (as the queue checks them).
fn allowed(j: &SystemJob) -> Vec<&'static str> {
    use JobStatus::*;
    let mut out = Vec::new();
    if matches!(j.status, WaitingForResources | Waiting | InProgress | Pausing) {
        out.push("cancel");
    }
    if matches!(j.status, WaitingForResources | InProgress)
        || (j.status == Waiting && j.recurrence_pattern.is_some() && j.postpone_until.is_some())
    {
        out.push("pause");
    }
    if j.status == Waiting {
        out.push("resume");
    }
    if matches!(j.status, Failed | Canceled) {
        out.push("retry");
    }
    if j.state() != JobState::Locked {
        out.push("delete");
    }
    out
}

fn params_json(p: &crate::model::Parameters) -> String {
    if p.is_empty() {
        return String::new();
    }
    format!("<pre>{}</pre>", esc(&serde_json::to_string_pretty(p).unwrap_or_default()))
}

pub(super) async fn job(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> UiResult<Response> {
    let id = guid_param(&id)?;
    let who = s.principal.clone();
    let (j, chain, log) = admin(&state, move |a| {
        let j = a.job_of(&who, id)?;
        let chain = match &j.dependency_token {
            Some(token) => {
                let filter = JobFilter { token: Some(token.clone()), limit: Some(20), ..JobFilter::default() };
                a.jobs_of(&who, &filter)?
            }
            None => Vec::new(),
        };
        let log = if j.operation_type == OperationType::Workflow { a.workflow_log(&who, id)? } else { Vec::new() };
        Ok((j, chain, log))
    })
    .await?;
    let p = pairs(&q);
    let mut h = Html::default();
    h.raw(&done_notice(&p));
    if can_manage(&s.principal) {
        h.raw("<div class=\"actions\">");
        for a in allowed(&j) {
            let path = format!("/ui/jobs/{}/{a}", j.id);
            h.raw(&html::button(&path, a, &s.csrf, "", if a == "delete" || a == "cancel" { "danger" } else { "" }));
        }
        if matches!(j.status, JobStatus::WaitingForResources | JobStatus::Waiting) {
            let path = format!("/ui/jobs/{}/postpone", j.id);
            let until = "<input type=\"datetime-local\" name=\"until\" required aria-label=\"postpone until (UTC)\">";
            h.raw(&html::button(&path, "postpone", &s.csrf, until, ""));
        }
        h.raw("</div>");
    }
    let next_run = match (&j.recurrence_pattern, j.recurrence_start) {
        (Some(pattern), Some(start)) => match j.postpone_until {
            Some(at) if j.status == JobStatus::Waiting => html::time(at),
            _ => crate::recurrence::next_after(pattern, start, now_ms())
                .ok()
                .flatten()
                .map(html::time)
                .unwrap_or_else(|| "none (the pattern has ended)".into()),
        },
        _ => String::new(),
    };
    let mut fields = vec![
        ("Id", format!("<code>{}</code>", j.id)),
        ("Name", esc(&j.name)),
        ("Operation type", format!("{} ({})", esc(j.operation_type.label()), j.operation_type.code())),
        (
            "State / status",
            format!("{:?} ({}) / {} ({})", j.state(), j.state().code(), html::status(j.status), j.status.code()),
        ),
        ("Created", html::time(j.created_on)),
        ("Started", html::opt_time(j.started_on)),
        ("Completed", html::opt_time(j.completed_on)),
        ("Postponed until", html::opt_time(j.postpone_until)),
        ("Error code", j.error_code.as_deref().map(|c| format!("<code>{}</code>", esc(c))).unwrap_or_default()),
        ("Message", j.message.as_deref().map(esc).unwrap_or_default()),
        ("Attempts", format!("{} retries, {} expired leases", j.retry_count, j.lease_expirations)),
        ("Worker", j.host_id.as_deref().map(esc).unwrap_or_default()),
        ("Lease expiry", html::opt_time(j.lease_expiry)),
        ("Fuel used", j.fuel_used.to_string()),
        ("Duration", html::ms(j.duration_us)),
        ("Regarding", regarding(&j)),
        ("Step", j.step_id.map(|s| format!("<code>{s}</code>")).unwrap_or_default()),
        ("Assembly", j.assembly.as_ref().map(|a| format!("<code>{}</code>", esc(&a.to_string()))).unwrap_or_default()),
        ("Correlation", format!("<code>{}</code>", j.correlation_id)),
        ("Depth", j.depth.to_string()),
        ("Created by", format!("<code>{}</code>", j.context.initiating_user_id)),
        ("Dependency token", j.dependency_token.as_deref().map(esc).unwrap_or_default()),
    ];
    if let Some(pattern) = &j.recurrence_pattern {
        fields.push(("Recurrence", format!("<code>{}</code>", esc(pattern))));
        fields.push(("Next run", next_run));
        fields.push(("Occurrences run", j.recurrence_runs.to_string()));
    }
    h.fields(&fields);
    if !chain.is_empty() {
        h.raw(
            "<h2>Dependency chain</h2><p class=\"hint\">Jobs with this token run one at a time, in creation order.</p>",
        );
        h.table(
            "jobs",
            &["Id", "Name", "Status", "Created"],
            chain.iter().map(|c| {
                let me = if c.id == j.id { " (this job)" } else { "" };
                vec![html::job_link(c) + me, esc(&c.name), html::status(c.status), html::time(c.created_on)]
            }),
        );
    }
    if !log.is_empty() {
        h.raw("<h2>Workflow log</h2>");
        h.table(
            "log",
            &["#", "Step", "Type", "Status", "Started", "Error"],
            log.iter().map(|e| {
                vec![
                    e.seq.to_string(),
                    esc(&e.step),
                    esc(&e.kind),
                    esc(&format!("{:?}", e.status)),
                    html::time(e.started_on),
                    e.error.as_deref().map(esc).unwrap_or_default(),
                ]
            }),
        );
    }
    h.raw("<h2>Input</h2>").raw(&params_json(&j.context.input_parameters));
    h.raw("<h2>Output</h2>").raw(&params_json(&j.output));
    h.raw("<h2>Trace</h2>").raw(&format!("<pre id=\"trace\">{}</pre>", esc(&j.trace)));
    Ok(page(&s, &format!("System job {}", &j.id.to_string()[..8]), "jobs", &h.0))
}

pub(super) async fn job_action(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    Path((id, name)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> UiResult<Response> {
    let form = Form::parse(body)?;
    form.check(&s)?;
    let id = guid_param(&id)?;
    let action = action_of(&form, &name)?;
    let who = s.principal.clone();
    if !can_manage(&who) {
        return Err(AdminError::Denied(format!(
            "user '{}' has a read-only view of system jobs here: acting on them needs '{}'",
            who.name,
            Capability::ManageJobs.name()
        ))
        .into());
    }
    audited(&state, &who.clone(), action.audit_name(), id.to_string(), move |a| a.manage_job_of(&who, id, action))
        .await?;
    let back = form.get("back").map(|b| back_to(Some(b)));
    Ok(match (action, back) {
        (_, Some(back)) => {
            let sep = if back.contains('?') { "&" } else { "?" };
            Redirect::to(&format!("{}{sep}done={}", strip_done(&back), action.name()))
        }
        (JobAction::Delete, None) => Redirect::to("/ui/jobs?done=delete"),
        (_, None) => Redirect::to(&format!("/ui/jobs/{id}?done={}", action.name())),
    }
    .into_response())
}

// ---- recurring ----

pub(super) async fn recurring(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    RawQuery(q): RawQuery,
) -> UiResult<Response> {
    let who = s.principal.clone();
    let jobs = admin(&state, move |a| {
        let all = a.store().recurring_jobs()?;
        Ok(all.into_iter().filter(|j| crate::accounts::may_see(&who, j).is_ok()).collect::<Vec<_>>())
    })
    .await?;
    let manage = can_manage(&s.principal);
    let mut h = Html::default();
    h.raw(&done_notice(&pairs(&q)));
    h.table(
        "recurring",
        &["Id", "Name", "Pattern", "Status", "Next run", "Runs", "Last completed", ""],
        jobs.iter().map(|j| {
            let next = if j.status == JobStatus::Waiting && j.postpone_until.is_none() {
                "paused".to_owned()
            } else {
                html::opt_time(j.postpone_until)
            };
            let mut actions = String::new();
            if manage {
                let back = html::hidden("back", "/ui/recurring");
                if j.status == JobStatus::Waiting {
                    actions += &html::button(&format!("/ui/jobs/{}/resume", j.id), "run now", &s.csrf, &back, "");
                }
                if allowed(j).contains(&"pause") {
                    actions += &html::button(&format!("/ui/jobs/{}/pause", j.id), "pause", &s.csrf, &back, "");
                }
            }
            vec![
                html::job_link(j),
                esc(&j.name),
                format!("<code>{}</code>", esc(j.recurrence_pattern.as_deref().unwrap_or(""))),
                html::status(j.status),
                next,
                j.recurrence_runs.to_string(),
                html::opt_time(j.completed_on),
                actions,
            ]
        }),
    );
    h.raw("<p class=\"hint\">Run now starts an occurrence at once; the pattern goes on after it. A paused recurring job waits without a next run until it runs again.</p>");
    Ok(page(&s, "Recurring jobs", "recurring", &h.0))
}

// ---- plug-ins and steps ----

/// Recorded runs the plug-ins page lists.
const RECENT_RUNS: usize = 50;

pub(super) async fn plugins(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    RawQuery(q): RawQuery,
) -> UiResult<Response> {
    require(&s.principal, Capability::Registration)?;
    let (assemblies, plugins, steps, stats) =
        admin(&state, |a| Ok((a.assemblies()?, a.plugins()?, a.steps()?, a.store().step_stats()?))).await?;
    let (profiles, runs) = admin(&state, |a| Ok((a.profiles()?, a.runs(None, None, RECENT_RUNS)?))).await?;
    let mut h = Html::default();
    h.raw(&done_notice(&pairs(&q)));
    h.raw("<h2>Assemblies</h2>");
    h.table(
        "assemblies",
        &["Hash (blake3)", "Size", "World version", "Registered"],
        assemblies.iter().map(|a| {
            let hash = a.hash.to_string();
            vec![
                format!("<code title=\"{hash}\">{}</code>", &hash[..16.min(hash.len())]),
                format!("{} KiB", a.size.div_ceil(1024)),
                esc(&a.wit_version),
                html::time(a.registered_at),
            ]
        }),
    );
    h.raw("<h2>Plug-ins</h2>");
    h.table(
        "plugins",
        &["Name", "Assembly", "Description", "Updated"],
        plugins.iter().map(|p| {
            let hash = p.assembly.to_string();
            vec![
                format!("<a href=\"/ui/jobs?plugin={}\">{}</a>", url(&p.name), esc(&p.name)),
                format!("<code>{}</code>", &hash[..16.min(hash.len())]),
                esc(p.description.as_deref().unwrap_or("")),
                html::time(p.updated_at),
            ]
        }),
    );
    h.raw("<h2>Steps</h2><p class=\"hint\">Counts are of asynchronous runs (system jobs), kept by the store since schema 8.</p>");
    h.table(
        "steps",
        &[
            "Step",
            "Plug-in",
            "Message",
            "Entity",
            "Stage",
            "Mode",
            "Rank",
            "Filters",
            "Limits",
            "Enabled",
            "Succeeded",
            "Failed",
            "Retried",
            "Avg fuel",
            "Avg time",
            "",
        ],
        steps.iter().map(|st| {
            let stat = stats.iter().find(|(id, _)| *id == st.id).map(|(_, s)| *s).unwrap_or_default();
            let runs = stat.succeeded + stat.failed + stat.retried;
            let avg = |v: u64| v.checked_div(runs).unwrap_or(0);
            let toggle = if st.enabled { "disable" } else { "enable" };
            vec![
                format!("<a href=\"/ui/jobs?step={}\">{}</a>", st.id, esc(&st.name)),
                esc(&st.plugin),
                esc(&st.message),
                esc(st.entity.as_deref().unwrap_or("*")),
                esc(&format!("{:?}", st.stage)),
                esc(&format!("{:?}", st.mode)),
                st.rank.to_string(),
                esc(&st.filtering_attributes.join(", ")),
                format!("<code>{}</code>", esc(&serde_json::to_string(&st.limits).unwrap_or_default())),
                if st.enabled { "yes".into() } else { "<strong>no</strong>".into() },
                stat.succeeded.to_string(),
                stat.failed.to_string(),
                stat.retried.to_string(),
                avg(stat.fuel).to_string(),
                html::ms(avg(stat.run_us)),
                html::button(&format!("/ui/steps/{}/{toggle}", st.id), toggle, &s.csrf, "", ""),
            ]
        }),
    );
    h.raw(&format!(
        "<h2>Recorded runs</h2><p class=\"hint\">Steps set to record their runs (<code>plughost steps profile STEP</code>) \
         and the newest {RECENT_RUNS} runs. Export one with <code>plughost runs export ID &gt; run.json</code> and replay it \
         against a new build with <code>plughost replay run.json --with new.wasm</code>.</p>"
    ));
    h.table(
        "profiles",
        &["Step", "Runs left to record"],
        profiles.iter().map(|p| vec![esc(&p.name), p.runs_left.to_string()]),
    );
    h.table(
        "runs",
        &["Run", "Recorded", "Step", "Event", "Assembly", "Outcome", "Calls", "Time"],
        runs.iter().map(|r| {
            let hash = r.assembly.to_string();
            vec![
                format!("<code>{}</code>", r.id),
                html::time(r.recorded_at),
                esc(&r.step),
                esc(&format!("{} {}", r.message, r.entity)),
                format!("<code>{}</code>", &hash[..16.min(hash.len())]),
                esc(&r.outcome),
                r.calls.to_string(),
                html::ms(r.duration_us),
            ]
        }),
    );
    Ok(page(&s, "Plug-ins and steps", "plugins", &h.0))
}

pub(super) async fn step_action(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    Path((id, action)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> UiResult<Response> {
    let form = Form::parse(body)?;
    form.check(&s)?;
    require(&s.principal, Capability::Registration)?;
    let (enable, name) = match action.as_str() {
        "enable" => (true, "steps.enable"),
        "disable" => (false, "steps.disable"),
        other => return Err(UiError(crate::server::ApiError::not_found(format!("no step action '{other}'")))),
    };
    let key = id.clone();
    audited(&state, &s.principal, name, id, move |a| a.set_step_enabled(&key, enable)).await?;
    Ok(Redirect::to(&format!("/ui/plugins?done={action}")).into_response())
}

// ---- workers and service ----

pub(super) async fn workers(State(state): State<AppState>, Extension(s): Extension<Session>) -> UiResult<Response> {
    use std::sync::atomic::Ordering::Relaxed;
    require(&s.principal, Capability::Service)?;
    let mut h = Html::default();
    h.raw("<h2>In this process</h2>");
    // The service's state reads the store: on a blocking thread, as every store read.
    let threads = admin(&state, |a| a.service(None)).await?.workers;
    match state.admin.workers() {
        Some(w) => {
            let st = &w.stats;
            h.fields(&[
                ("Host", esc(&crate::worker::hostname())),
                ("Worker threads", threads.to_string()),
                ("Jobs leased", st.leased.load(Relaxed).to_string()),
                ("Succeeded", st.succeeded.load(Relaxed).to_string()),
                ("Failed", st.failed.load(Relaxed).to_string()),
                ("Retried", st.retried.load(Relaxed).to_string()),
                ("Canceled while running", st.canceled.load(Relaxed).to_string()),
                ("Fuel used", st.fuel_used.load(Relaxed).to_string()),
                ("Time running", html::ms(st.run_us.load(Relaxed))),
            ]);
        }
        None => {
            h.raw("<p>This process runs no worker pool (<code>workers = 0</code>).</p>");
        }
    }
    h.raw("<h2>Remote workers</h2>");
    let remote = state.admin.remote_workers();
    h.table(
        "workers",
        &[
            "Name",
            "Host",
            "Pid",
            "Version",
            "Threads",
            "Started",
            "Last heartbeat",
            "Leased",
            "Succeeded",
            "Failed",
            "Runs/min",
            "State",
        ],
        remote.iter().map(|w| {
            // Runs it completed per minute since it started (its throughput).
            let up_ms = (w.last_heartbeat - w.started).max(1) as f64;
            let per_minute = (w.done + w.failures) as f64 * 60_000.0 / up_ms;
            vec![
                esc(&w.name),
                esc(&w.host),
                w.pid.to_string(),
                esc(&w.version),
                w.workers.to_string(),
                html::time(w.started),
                html::time(w.last_heartbeat),
                w.leased.to_string(),
                w.done.to_string(),
                w.failures.to_string(),
                format!("{per_minute:.0}"),
                if w.lost { "<span class=\"status s31\">lost</span>".into() } else { "alive".into() },
            ]
        }),
    );
    Ok(page(&s, "Workers", "workers", &h.0))
}

pub(super) async fn service(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    RawQuery(q): RawQuery,
) -> UiResult<Response> {
    require(&s.principal, Capability::Service)?;
    let st = admin(&state, |a| a.service(None)).await?;
    let mut h = Html::default();
    h.raw(&done_notice(&pairs(&q)));
    let state_text = if st.paused {
        "<strong id=\"service-state\">paused</strong>"
    } else {
        "<strong id=\"service-state\">running</strong>"
    };
    h.fields(&[
        ("Asynchronous service", state_text.to_owned()),
        ("Worker threads here", st.workers.to_string()),
        ("Remote workers", st.remote_workers.to_string()),
        (
            "Housekeeper",
            st.housekeeper
                .as_ref()
                .map(|k| format!("{} (until {})", esc(&k.instance), html::time(k.until)))
                .unwrap_or_default(),
        ),
        ("Runnable now", st.counts.runnable.to_string()),
    ]);
    let (action, label) = if st.paused { ("resume", "Resume the service") } else { ("pause", "Pause the service") };
    h.raw(&html::button(&format!("/ui/service/{action}"), label, &s.csrf, "", if st.paused { "" } else { "danger" }));
    h.raw("<p class=\"hint\">Paused, no job starts (running ones finish); the pause is stored and outlives a restart.</p>");
    Ok(page(&s, "Service", "service", &h.0))
}

pub(super) async fn service_action(
    State(state): State<AppState>,
    Extension(s): Extension<Session>,
    Path(action): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> UiResult<Response> {
    let form = Form::parse(body)?;
    form.check(&s)?;
    require(&s.principal, Capability::Service)?;
    let parsed: crate::admin::ServiceAction =
        action.parse().map_err(|m: String| UiError(crate::server::ApiError::not_found(m)))?;
    let name = if parsed == crate::admin::ServiceAction::Pause { "service.pause" } else { "service.resume" };
    audited(&state, &s.principal, name, "asynchronous service", move |a| a.service(Some(parsed))).await?;
    Ok(Redirect::to("/ui/service").into_response())
}
