//! What a running rollout does next, from its counts and thresholds alone.
//!
//! The store counts (it knows the devices); this module decides. A rollout runs
//! its waves in order: each wave must reach its success threshold before the
//! next starts, and the error threshold, over the whole rollout, stops
//! everything at once (the emergency stop).

/// The error threshold of a rollout: stop when this many devices failed, or
/// when this share of the devices that ended failed. Either, both or none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorThreshold {
    pub max_failed: Option<i64>,
    pub max_failed_percent: Option<i64>,
}

/// The wave that is running now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wave<'a> {
    /// 0 for the first wave.
    pub position: i64,
    /// The group the wave updates, for the operator's message.
    pub group: &'a str,
    /// The share of its devices that must succeed, in percent.
    pub success_percent: i64,
    /// Whether the next wave starts by itself once this one met its threshold;
    /// otherwise the rollout waits for an operator.
    pub auto_advance: bool,
    /// Whether no wave comes after it.
    pub last: bool,
}

/// What the store counted for a running rollout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Devices of the whole rollout that failed since it was last resumed: a
    /// resume forgives the failures that paused it.
    pub failed: i64,
    /// Devices of the whole rollout that ended (succeeded or failed) since it
    /// was last resumed.
    pub ended: i64,
    /// Devices of the whole rollout still pending, running or waiting, in any
    /// wave, late joiners included.
    pub unfinished: i64,
    /// Devices of the current wave.
    pub wave_total: i64,
    /// Devices of the current wave that succeeded.
    pub wave_success: i64,
    /// Devices of the current wave still pending, running or waiting.
    pub wave_active: i64,
}

/// The next step of a running rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing changes yet.
    Stay,
    /// Every wave met its threshold and no device is left: the rollout is done.
    Finish,
    /// The current wave met its threshold: the next one starts now.
    Advance { to: i64 },
    /// The current wave met its threshold: an operator starts the next one.
    Wait,
    /// Stop and hold the rollout's tasks, for the reason given (shown to
    /// operators and sent as a notification).
    Pause { reason: String },
}

/// The error threshold first (it stops the rollout in any wave), then the
/// current wave's success threshold.
pub fn judge(threshold: ErrorThreshold, wave: Wave<'_>, counts: Counts) -> Decision {
    if let Some(max) = threshold.max_failed
        && counts.failed >= max
    {
        return Decision::Pause {
            reason: format!(
                "emergency stop: {} device(s) failed, the error threshold is {max}",
                counts.failed
            ),
        };
    }
    if let Some(pct) = threshold.max_failed_percent
        && counts.ended > 0
        && counts.failed * 100 >= pct * counts.ended
    {
        return Decision::Pause {
            reason: format!(
                "emergency stop: {} of {} devices that ended failed ({} %), the error threshold is {pct} %",
                counts.failed,
                counts.ended,
                counts.failed * 100 / counts.ended
            ),
        };
    }
    let met = counts.wave_success * 100 >= wave.success_percent * counts.wave_total;
    match (met, wave.last) {
        // Late joiners of any wave keep the rollout open until they end.
        (true, true) if counts.unfinished == 0 => Decision::Finish,
        (true, true) => Decision::Stay,
        (true, false) if wave.auto_advance => Decision::Advance {
            to: wave.position + 1,
        },
        (true, false) => Decision::Wait,
        (false, _) if counts.wave_active == 0 => Decision::Pause {
            reason: format!(
                "wave {} ({}) ended with {} of {} devices updated, below its {} % success threshold: \
                 look at the failed devices, then resume or delete the rollout",
                wave.position + 1,
                wave.group,
                counts.wave_success,
                counts.wave_total,
                wave.success_percent
            ),
        },
        (false, _) => Decision::Stay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Wave<'static> = Wave {
        position: 0,
        group: "pilot",
        success_percent: 100,
        auto_advance: true,
        last: false,
    };

    fn counts(wave_total: i64, wave_success: i64, wave_active: i64) -> Counts {
        Counts {
            failed: 0,
            ended: wave_success,
            unfinished: wave_active,
            wave_total,
            wave_success,
            wave_active,
        }
    }

    #[test]
    fn the_error_threshold_by_count_stops_the_rollout_in_any_wave() {
        let t = ErrorThreshold {
            max_failed: Some(2),
            max_failed_percent: None,
        };
        let mut c = counts(10, 3, 5);
        c.failed = 1;
        c.ended = 4;
        assert_eq!(judge(t, FIRST, c), Decision::Stay);
        c.failed = 2;
        let Decision::Pause { reason } = judge(t, FIRST, c) else {
            panic!("two failures meet a threshold of two");
        };
        assert!(
            reason.starts_with("emergency stop: 2 device(s) failed"),
            "{reason}"
        );
        // Even a wave that met its own threshold stops.
        let done = Counts {
            failed: 2,
            ended: 10,
            ..counts(10, 10, 0)
        };
        assert!(matches!(judge(t, FIRST, done), Decision::Pause { .. }));
    }

    #[test]
    fn the_error_threshold_by_percent_counts_devices_that_ended() {
        let t = ErrorThreshold {
            max_failed: None,
            max_failed_percent: Some(20),
        };
        // Nothing ended yet: no share to judge.
        let none = Counts {
            failed: 0,
            ended: 0,
            ..counts(10, 0, 10)
        };
        assert_eq!(judge(t, FIRST, none), Decision::Stay);
        // 1 of 10 ended devices failed: 10 %.
        let below = Counts {
            failed: 1,
            ended: 10,
            ..counts(20, 9, 10)
        };
        assert_eq!(judge(t, FIRST, below), Decision::Stay);
        // 2 of 10: exactly the threshold.
        let at = Counts {
            failed: 2,
            ended: 10,
            ..counts(20, 8, 10)
        };
        let Decision::Pause { reason } = judge(t, FIRST, at) else {
            panic!("20 % meets a 20 % threshold");
        };
        assert!(
            reason.contains("2 of 10 devices that ended failed (20 %)"),
            "{reason}"
        );
    }

    /// The counts the store gives start at the last resume, so the failures
    /// that paused a rollout do not pause it again at once.
    #[test]
    fn after_a_resume_only_new_failures_count() {
        let t = ErrorThreshold {
            max_failed: Some(1),
            max_failed_percent: Some(50),
        };
        let resumed = Counts {
            failed: 0,
            ended: 0,
            ..counts(10, 0, 8)
        };
        assert_eq!(judge(t, FIRST, resumed), Decision::Stay);
    }

    #[test]
    fn a_wave_that_met_its_threshold_advances_or_waits() {
        let half = Wave {
            success_percent: 50,
            ..FIRST
        };
        // 5 of 10 succeeded: 50 % is met even while others still run.
        assert_eq!(
            judge(ErrorThreshold::default(), half, counts(10, 5, 5)),
            Decision::Advance { to: 1 }
        );
        let manual = Wave {
            auto_advance: false,
            ..half
        };
        assert_eq!(
            judge(ErrorThreshold::default(), manual, counts(10, 5, 5)),
            Decision::Wait
        );
        assert_eq!(
            judge(ErrorThreshold::default(), half, counts(10, 4, 6)),
            Decision::Stay
        );
    }

    #[test]
    fn a_wave_that_ended_below_its_threshold_pauses() {
        let c = Counts {
            failed: 2,
            ended: 10,
            ..counts(10, 8, 0)
        };
        let Decision::Pause { reason } = judge(ErrorThreshold::default(), FIRST, c) else {
            panic!("8 of 10 is below 100 %");
        };
        assert!(
            reason.starts_with("wave 1 (pilot) ended with 8 of 10 devices updated, below its 100 % success threshold"),
            "{reason}"
        );
    }

    #[test]
    fn the_last_wave_finishes_only_when_late_joiners_ended_too() {
        let last = Wave {
            position: 2,
            last: true,
            ..FIRST
        };
        assert_eq!(
            judge(ErrorThreshold::default(), last, counts(4, 4, 0)),
            Decision::Finish
        );
        // A device joined an earlier wave's group and is still pending.
        let joiner = Counts {
            unfinished: 1,
            ..counts(4, 4, 0)
        };
        assert_eq!(
            judge(ErrorThreshold::default(), last, joiner),
            Decision::Stay
        );
    }

    #[test]
    fn an_empty_wave_counts_as_met() {
        assert_eq!(
            judge(ErrorThreshold::default(), FIRST, counts(0, 0, 0)),
            Decision::Advance { to: 1 }
        );
    }
}
