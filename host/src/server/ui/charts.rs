//! The overview's charts as inline SVG: succeeded and failed runs per minute, and
//! run duration p50 / p95 per minute, over the last hour, from the store's
//! per-minute run statistics (60 rows, whatever the throughput).

use std::fmt::Write as _;

use crate::jobs::MinuteStats;

/// Minutes the charts cover.
pub(super) const MINUTES: usize = 60;

/// Per-minute figures of the last hour, oldest minute first.
#[derive(Debug, Default)]
pub(super) struct Minutes {
    pub(super) succeeded: Vec<u64>,
    pub(super) failed: Vec<u64>,
    pub(super) p50_us: Vec<u64>,
    pub(super) p95_us: Vec<u64>,
    pub(super) failed_total: u64,
}

/// Lays the store's per-minute rows (minute start in UTC ms) on the last hour.
pub(super) fn minutes(rows: &[(i64, MinuteStats)], now: i64) -> Minutes {
    let this_minute = now.div_euclid(60_000);
    let mut m = Minutes {
        succeeded: vec![0; MINUTES],
        failed: vec![0; MINUTES],
        p50_us: vec![0; MINUTES],
        p95_us: vec![0; MINUTES],
        failed_total: 0,
    };
    for (start, stats) in rows {
        let age = this_minute - start.div_euclid(60_000);
        if !(0..MINUTES as i64).contains(&age) {
            continue;
        }
        let i = MINUTES - 1 - age as usize;
        m.succeeded[i] = stats.succeeded;
        m.failed[i] = stats.failed;
        m.failed_total += stats.failed;
        m.p50_us[i] = stats.quantile_us(0.5);
        m.p95_us[i] = stats.quantile_us(0.95);
    }
    m
}

const W: f64 = 600.0;
const H: f64 = 160.0;
const PAD: f64 = 24.0;

fn frame(title: &str, max_label: &str, body: &str, legend: &[(&str, &str)]) -> String {
    let mut legend_html = String::new();
    for (class, name) in legend {
        let _ = write!(legend_html, "<span class=\"key {class}\">{name}</span>");
    }
    format!(
        "<figure class=\"chart\"><figcaption>{title} {legend_html}</figcaption>\
<svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"{title}\" preserveAspectRatio=\"none\">\
<line class=\"axis\" x1=\"{PAD}\" y1=\"{base}\" x2=\"{W}\" y2=\"{base}\"/>\
<text class=\"label\" x=\"2\" y=\"12\">{max_label}</text><text class=\"label\" x=\"{PAD}\" y=\"{H}\">−60 min</text>\
<text class=\"label\" x=\"{end}\" y=\"{H}\">now</text>{body}</svg></figure>",
        base = H - PAD,
        end = W - 28.0,
    )
}

/// Stacked bars: succeeded and failed runs per minute.
pub(super) fn throughput(m: &Minutes) -> String {
    let max = m.succeeded.iter().zip(&m.failed).map(|(s, f)| s + f).max().unwrap_or(0).max(1);
    let step = (W - PAD) / MINUTES as f64;
    let scale = (H - 2.0 * PAD) / max as f64;
    let mut body = String::new();
    for i in 0..MINUTES {
        let x = PAD + i as f64 * step;
        let (s, f) = (m.succeeded[i] as f64 * scale, m.failed[i] as f64 * scale);
        let base = H - PAD;
        if s > 0.0 {
            let _ = write!(
                body,
                "<rect class=\"ok\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{s:.1}\"><title>{} succeeded</title></rect>",
                base - s,
                step - 1.0,
                m.succeeded[i]
            );
        }
        if f > 0.0 {
            let _ = write!(
                body,
                "<rect class=\"bad\" x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{f:.1}\"><title>{} failed</title></rect>",
                base - s - f,
                step - 1.0,
                m.failed[i]
            );
        }
    }
    frame("Runs per minute", &format!("{max}/min"), &body, &[("ok", "succeeded"), ("bad", "failed")])
}

/// Lines: p50 and p95 run duration per minute (minutes without runs are gaps).
pub(super) fn durations(m: &Minutes) -> String {
    let max = m.p95_us.iter().copied().max().unwrap_or(0).max(1);
    let step = (W - PAD) / MINUTES as f64;
    let scale = (H - 2.0 * PAD) / max as f64;
    let line = |values: &[u64], class: &str| {
        let mut out = String::new();
        let mut points = String::new();
        let flush = |points: &mut String, out: &mut String| {
            if !points.is_empty() {
                let _ = write!(out, "<polyline class=\"{class}\" points=\"{}\"/>", points.trim_end());
                points.clear();
            }
        };
        for (i, v) in values.iter().enumerate() {
            if *v == 0 {
                flush(&mut points, &mut out);
                continue;
            }
            let x = PAD + (i as f64 + 0.5) * step;
            let y = H - PAD - *v as f64 * scale;
            let _ = write!(points, "{x:.1},{y:.1} ");
        }
        flush(&mut points, &mut out);
        out
    };
    let body = line(&m.p50_us, "p50") + &line(&m.p95_us, "p95");
    frame("Run duration", &super::html::ms(max), &body, &[("p50", "p50"), ("p95", "p95")])
}
