//! Step reports, written in groups ([`crate::group`]).

use std::sync::Arc;

use posup_proto::agent::{Feedback, FeedbackAck};
use posup_store::{At, MAX_REPORTS_AT_ONCE};

use crate::error::{Error, Result};
use crate::group::Batch;
use crate::state::AppState;

/// The reports of one request of a device, in order.
pub struct Reports {
    device_id: i64,
    reports: Vec<Feedback>,
}

impl Reports {
    /// `reports` of device `device_id`: at most
    /// `posup_proto::agent::MAX_FEEDBACK_BATCH`.
    pub fn new(device_id: i64, reports: Vec<Feedback>) -> Result<Reports> {
        if reports.len() > posup_proto::agent::MAX_FEEDBACK_BATCH {
            return Err(Error::Invalid(format!(
                "a feedback batch of {} reports is too large: send at most {} at a time",
                reports.len(),
                posup_proto::agent::MAX_FEEDBACK_BATCH
            )));
        }
        Ok(Reports { device_id, reports })
    }
}

impl Batch for Reports {
    /// One outcome per report.
    type Answer = Vec<posup_store::Result<FeedbackAck>>;
    const MAX: usize = MAX_REPORTS_AT_ONCE;

    fn weight(&self) -> usize {
        self.reports.len()
    }

    async fn write(
        state: &AppState,
        group: &[Reports],
        at: &At,
    ) -> std::result::Result<Vec<Self::Answer>, Arc<String>> {
        let all: Vec<(i64, &Feedback)> = group
            .iter()
            .flat_map(|p| p.reports.iter().map(move |f| (p.device_id, f)))
            .collect();
        // A device whose last part ended is idle for its next poll, unless
        // something changed since the write began.
        let epoch = state.caches().epoch();
        let recorded = state
            .store()
            .record_reports(&all, at)
            .await
            .map_err(|e| Arc::new(e.to_string()))?;
        for device in recorded.idle {
            state.caches().put_idle(device, epoch);
        }
        let mut results = recorded.results.into_iter();
        Ok(group
            .iter()
            .map(|p| results.by_ref().take(p.reports.len()).collect())
            .collect())
    }
}
