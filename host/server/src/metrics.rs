//! `/metrics` in the Prometheus text format (version 0.0.4), for the Grafana
//! dashboards fleets already run: devices online and offline by type, tasks and
//! rollouts by state, ended updates by type, kind, outcome and step, the poll
//! latency histogram of this server process, and the notifications waiting.
//!
//! A scrape authenticates like any operator API call (a token with a reading
//! role), since device counts and types describe the fleet.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use posup_store::FleetCounts;

use crate::auth::{Operator, roles};
use crate::error::Result;
use crate::state::AppState;

/// Upper bounds of the poll latency buckets, in seconds: Prometheus' defaults
/// from 1 ms.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A latency histogram updated without locks from every poll.
#[derive(Debug, Default)]
pub struct Latency {
    /// Observations at or under each bound (not cumulative; summed on render).
    buckets: [AtomicU64; BUCKETS.len()],
    /// Observations above the last bound.
    over: AtomicU64,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Latency {
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        match BUCKETS.iter().position(|b| secs <= *b) {
            Some(i) => self.buckets[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.over.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// A label value as the text format wants it: backslash, quote and newline
/// escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition: pure, from counts and the histogram.
pub fn render(counts: &FleetCounts, polls: &Latency) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "posup_devices",
        "gauge",
        "Devices by device type and connection.",
    );
    for (device_type, online, n) in &counts.devices {
        let state = if *online { "online" } else { "offline" };
        let _ = writeln!(
            out,
            "posup_devices{{device_type=\"{}\",state=\"{state}\"}} {n}",
            label(device_type)
        );
    }
    family(&mut out, "posup_tasks", "gauge", "Tasks by state.");
    for (state, n) in &counts.tasks {
        let _ = writeln!(out, "posup_tasks{{state=\"{}\"}} {n}", label(state));
    }
    family(&mut out, "posup_rollouts", "gauge", "Rollouts by state.");
    for (state, n) in &counts.rollouts {
        let _ = writeln!(out, "posup_rollouts{{state=\"{}\"}} {n}", label(state));
    }
    family(
        &mut out,
        "posup_updates_ended",
        "gauge",
        "Devices' parts of tasks that ended, by device type, task kind, outcome and the step they ended on.",
    );
    for (device_type, kind, outcome, step, n) in &counts.outcomes {
        let _ = writeln!(
            out,
            "posup_updates_ended{{device_type=\"{}\",kind=\"{}\",outcome=\"{}\",step=\"{}\"}} {n}",
            label(device_type),
            label(kind),
            label(outcome),
            label(step)
        );
    }
    family(
        &mut out,
        "posup_notifications_pending",
        "gauge",
        "Messages to stores not yet delivered.",
    );
    let _ = writeln!(
        out,
        "posup_notifications_pending {}",
        counts.notifications_pending
    );
    polls.render(
        &mut out,
        "posup_poll_duration_seconds",
        "Time this server process took to answer agents' polls.",
    );
    out
}

pub async fn metrics(State(state): State<AppState>, op: Operator) -> Result<Response> {
    op.require(roles::READ, "read metrics")?;
    let counts = state.store().fleet_counts(&state.at()).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        render(&counts, state.poll_latency()),
    )
        .into_response())
}

/// Times every poll into the state's histogram.
pub async fn time_polls(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state.poll_latency().observe(started.elapsed());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_is_prometheus_text() {
        let counts = FleetCounts {
            devices: vec![("ukm5".into(), true, 3), ("ukm5".into(), false, 1)],
            tasks: vec![("Running".into(), 2)],
            rollouts: vec![("Paused".into(), 1)],
            outcomes: vec![(
                "ukm5".into(),
                "update".into(),
                "failed".into(),
                "verify".into(),
                4,
            )],
            notifications_pending: 5,
        };
        let polls = Latency::default();
        polls.observe(Duration::from_micros(800));
        polls.observe(Duration::from_millis(30));
        polls.observe(Duration::from_secs(9));
        let text = render(&counts, &polls);
        for line in [
            "# TYPE posup_devices gauge",
            "posup_devices{device_type=\"ukm5\",state=\"online\"} 3",
            "posup_devices{device_type=\"ukm5\",state=\"offline\"} 1",
            "posup_tasks{state=\"Running\"} 2",
            "posup_rollouts{state=\"Paused\"} 1",
            "posup_updates_ended{device_type=\"ukm5\",kind=\"update\",outcome=\"failed\",step=\"verify\"} 4",
            "posup_notifications_pending 5",
            "# TYPE posup_poll_duration_seconds histogram",
            "posup_poll_duration_seconds_bucket{le=\"0.001\"} 1",
            "posup_poll_duration_seconds_bucket{le=\"0.025\"} 1",
            "posup_poll_duration_seconds_bucket{le=\"0.05\"} 2",
            "posup_poll_duration_seconds_bucket{le=\"5\"} 2",
            "posup_poll_duration_seconds_bucket{le=\"+Inf\"} 3",
            "posup_poll_duration_seconds_count 3",
            "posup_poll_duration_seconds_sum 9.0308",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "no line {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
