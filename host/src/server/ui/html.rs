//! HTML building: escaping, the page layout, and small pieces every page uses.
//!
//! **Invariant:** every text that did not come from this module goes through
//! [`esc`] before it reaches a page.

use std::fmt::Write as _;

use crate::jobs::{JobStatus, SystemJob};
use crate::security::{Capability, Principal};

/// Escapes text for HTML content and attribute values.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query-string value.
pub(super) fn url(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// A page under construction.
#[derive(Default)]
pub(super) struct Html(pub(super) String);

impl Html {
    pub(super) fn raw(&mut self, s: &str) -> &mut Self {
        self.0.push_str(s);
        self
    }

    /// A table from a header and rows of ready HTML cells.
    pub(super) fn table(
        &mut self,
        class: &str,
        head: &[&str],
        rows: impl IntoIterator<Item = Vec<String>>,
    ) -> &mut Self {
        let _ = write!(self.0, "<div class=\"scroll\"><table class=\"{class}\"><thead><tr>");
        for h in head {
            let _ = write!(self.0, "<th>{}</th>", esc(h));
        }
        self.0.push_str("</tr></thead><tbody>");
        let mut any = false;
        for row in rows {
            any = true;
            self.0.push_str("<tr>");
            for cell in row {
                let _ = write!(self.0, "<td>{cell}</td>");
            }
            self.0.push_str("</tr>");
        }
        if !any {
            let _ = write!(self.0, "<tr><td colspan=\"{}\" class=\"empty\">none</td></tr>", head.len().max(1));
        }
        self.0.push_str("</tbody></table></div>");
        self
    }

    /// A definition list of label / ready-HTML value pairs.
    pub(super) fn fields(&mut self, rows: &[(&str, String)]) -> &mut Self {
        self.0.push_str("<dl class=\"fields\">");
        for (k, v) in rows {
            let _ = write!(self.0, "<dt>{}</dt><dd>{v}</dd>", esc(k));
        }
        self.0.push_str("</dl>");
        self
    }
}

/// The pages of the navigation, and who sees them.
const NAV: [(&str, &str, Option<Capability>); 6] = [
    ("overview", "Overview", None),
    ("jobs", "Jobs", None),
    ("recurring", "Recurring", None),
    ("plugins", "Plug-ins and steps", Some(Capability::Registration)),
    ("workers", "Workers", Some(Capability::Service)),
    ("service", "Service", Some(Capability::Service)),
];

/// A whole page: head, navigation (the pages `who` may see), `body`.
pub(super) fn layout(title: &str, current: &str, who: &Principal, csrf: &str, body: &str) -> String {
    let mut nav = String::new();
    for (name, label, need) in NAV {
        if need.is_some_and(|c| !who.privileges.has(c)) {
            continue;
        }
        let here = if name == current { " aria-current=\"page\"" } else { "" };
        let _ = write!(nav, "<a href=\"/ui/{name}\"{here}>{}</a>", esc(label));
    }
    let mode = if who.privileges.has(Capability::ManageJobs) { "" } else { "<span class=\"badge\">read-only</span>" };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} · plughost</title><link rel=\"stylesheet\" href=\"/ui/assets/style.css\">\
<script src=\"/ui/assets/app.js\" defer></script></head>\
<body data-csrf=\"{csrf}\"><header><a class=\"brand\" href=\"/ui/overview\">plughost</a><nav>{nav}</nav>\
<form method=\"post\" action=\"/ui/logout\" class=\"logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
<span class=\"who\">{user}</span>{mode}<button type=\"submit\">Log out</button></form></header>\
<main><h1>{title}</h1>{body}</main></body></html>",
        title = esc(title),
        csrf = esc(csrf),
        user = esc(&who.name),
    )
}

/// UTC milliseconds as `YYYY-MM-DD HH:MM:SS` (UTC).
pub(super) fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
}

pub(super) fn opt_time(ms: Option<i64>) -> String {
    ms.map(time).unwrap_or_default()
}

/// A status as a coloured badge.
pub(super) fn status(s: JobStatus) -> String {
    format!("<span class=\"status s{}\">{}</span>", s.code(), esc(s.name()))
}

/// A job's id as a link to its page (the first 8 digits shown).
pub(super) fn job_link(job: &SystemJob) -> String {
    let id = job.id.to_string();
    format!("<a href=\"/ui/jobs/{id}\" title=\"{id}\"><code>{}</code></a>", &id[..8])
}

/// A hidden form field.
pub(super) fn hidden(name: &str, value: &str) -> String {
    format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(name), esc(value))
}

/// A one-button form posting `action` to `path`.
pub(super) fn button(path: &str, label: &str, csrf: &str, extra: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">{}{extra}<button type=\"submit\" class=\"{class}\">{}</button></form>",
        esc(path),
        hidden("csrf", csrf),
        esc(label)
    )
}

/// Microseconds as milliseconds with one decimal.
pub(super) fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// A notice box.
pub(super) fn notice(kind: &str, html: &str) -> String {
    format!("<p class=\"notice {kind}\" role=\"status\">{html}</p>")
}
