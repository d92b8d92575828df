//! Maintenance windows: when a site allows its devices to be updated.
//!
//! A window is a cron-like schedule of openings, a duration and an IANA time zone:
//! `0 22 * * *` for 480 minutes in Europe/Moscow opens every night at 22:00 Moscow
//! time and stays open until 06:00. The word `always` is a window that is open all
//! the time, for sites that agreed to updates at any hour.
//!
//! Openings are local wall-clock minutes. On a spring-forward day a local minute
//! that does not exist opens nothing; on a fall-back day a minute that happens twice
//! opens once, at its earlier instant. The duration is real elapsed time, so a
//! window that spans a transition ends an hour earlier or later by the wall clock.
//!
//! [`Window::is_open`] runs on every agent poll, so it never scans time minute by
//! minute: it walks back from the asked instant over the days the duration can
//! reach and, on matching days only, over the schedule's own hours and minutes.

use std::fmt;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, TimeDelta, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

use crate::PolicyError;

/// The longest window: a week, which already covers any weekly schedule.
const MAX_DURATION_MINUTES: u32 = 7 * 24 * 60;

/// How far a DST transition can move a wall clock. Real zones shift by one hour,
/// a few historical ones by two; the margin only bounds the candidates looked at.
const CLOCK_SHIFT_MARGIN: TimeDelta = TimeDelta::hours(3);

/// How far ahead [`Window::next_open`] looks: a year covers every schedule that can
/// open at all (February 29 aside, which is what the extra day is for).
const NEXT_OPEN_HORIZON: TimeDelta = TimeDelta::days(366);

/// A maintenance window: a schedule of openings, how long each opening lasts, and
/// the time zone the schedule is read in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    kind: Kind,
    time_zone: Tz,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// Open at every instant; no openings, no duration.
    Always,
    Scheduled {
        schedule: Schedule,
        duration_minutes: u32,
    },
}

/// A parsed 5-field cron line. Each field is a bit set of the values it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Schedule {
    /// The fields as written, joined by single spaces, for [`fmt::Display`].
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    /// Bits 0..=6, Sunday = 0; a 7 in the schedule is folded into bit 0.
    weekdays: u64,
    /// Whether day-of-month and day-of-week were restricted, i.e. did not start
    /// with `*`. Cron matches a day on either of them only when both are.
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// The rules of one cron field.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    /// Three-letter names for `min`, `min + 1`, ... (months, weekdays).
    names: &'static [&'static str],
    /// What the error message says is allowed.
    allowed: &'static str,
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    allowed: "0-59",
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    allowed: "0-23",
};
const DAY: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    allowed: "1-31",
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
    allowed: "1-12 or jan-dec",
};
const WEEKDAY: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    allowed: "0-7 (0 and 7 are Sunday) or mon-sun",
};

impl Window {
    /// Builds a window from a schedule, a duration and an IANA time zone name.
    ///
    /// The schedule is either the word `always` (open all the time; the duration is
    /// then ignored) or five crontab fields, `minute hour day-of-month month
    /// day-of-week`, each a `*`, a number, a range `a-b`, a list `a,b` or a step
    /// `*/n` or `a-b/n`. Months accept `jan`..`dec`, weekdays `mon`..`sun` (any
    /// case), and weekday 0 and 7 both mean Sunday; as a range end `sun` means 7,
    /// so `sat-sun` is the weekend. As in cron, when both day-of-month and
    /// day-of-week are restricted (do not start with `*`), a day matches when either
    /// of them does. The duration must be 1 to 10080 minutes (7 days).
    pub fn new(
        schedule: &str,
        duration_minutes: u32,
        time_zone: &str,
    ) -> Result<Window, PolicyError> {
        let time_zone: Tz = time_zone.parse().map_err(|_| PolicyError::TimeZone {
            name: time_zone.to_owned(),
        })?;
        if schedule.trim().eq_ignore_ascii_case("always") {
            return Ok(Window {
                kind: Kind::Always,
                time_zone,
            });
        }
        let schedule = Schedule::parse(schedule).map_err(|problem| PolicyError::Schedule {
            schedule: schedule.to_owned(),
            problem,
        })?;
        if !(1..=MAX_DURATION_MINUTES).contains(&duration_minutes) {
            return Err(PolicyError::Duration {
                minutes: duration_minutes,
            });
        }
        Ok(Window {
            kind: Kind::Scheduled {
                schedule,
                duration_minutes,
            },
            time_zone,
        })
    }

    /// Whether the window is open at `at`: some opening `s` has
    /// `s <= at < s + duration`. An `always` window is always open.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        match &self.kind {
            Kind::Always => true,
            Kind::Scheduled { .. } => self.covering_opening(at).is_some(),
        }
    }

    /// When the window is open at `at`, the instant it closes: the end of the
    /// latest-ending opening that covers `at`. Openings that overlap or touch are
    /// not chained; ask again at the returned instant to see whether another one
    /// continues the window.
    ///
    /// `None` when the window is closed at `at`, and for an `always` window, which
    /// never closes.
    pub fn open_until(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match &self.kind {
            Kind::Always => None,
            Kind::Scheduled {
                duration_minutes, ..
            } => self
                .covering_opening(at)
                .map(|start| start + minutes(*duration_minutes)),
        }
    }

    /// The first opening that starts strictly after `at`, looking at most 366 days
    /// ahead. `None` when there is none in that span (a schedule such as February
    /// 30 never opens) and for an `always` window, which has no openings because it
    /// is never closed.
    pub fn next_open(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let Kind::Scheduled { schedule, .. } = &self.kind else {
            return None;
        };
        let limit = at + NEXT_OPEN_HORIZON;
        // Local wall-clock minutes map to instants in the same order (a repeated
        // minute counts at its earlier instant), so every opening after `at` is at
        // or after the local minute of `at`.
        let from = truncate_to_minute(self.local(at));
        let last_day = self.local(limit).date();
        let mut day = from.date();
        while day <= last_day {
            if schedule.matches_day(day) {
                for hour in bits_ascending(schedule.hours) {
                    for minute in bits_ascending(schedule.minutes) {
                        let Some(local) = day.and_hms_opt(hour, minute, 0) else {
                            continue;
                        };
                        if local < from {
                            continue;
                        }
                        let Some(start) = self.instant(local) else {
                            continue;
                        };
                        if start <= at {
                            continue;
                        }
                        return (start <= limit).then_some(start);
                    }
                }
            }
            day = day.succ_opt()?;
        }
        None
    }

    /// The start of the latest opening with `start <= at < start + duration`.
    ///
    /// Candidates are visited from the latest local minute backwards. Local minutes
    /// map to instants in the same order, so the first candidate at or before `at`
    /// is the latest-starting, hence latest-ending, opening that could cover it: if
    /// it has already ended, every earlier one has too.
    fn covering_opening(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let Kind::Scheduled {
            schedule,
            duration_minutes,
        } = &self.kind
        else {
            return None;
        };
        let duration = minutes(*duration_minutes);
        // After a fall-back transition the local clock reads earlier than the local
        // minute of an opening that already started, hence the margin above.
        let newest = self.local(at) + CLOCK_SHIFT_MARGIN;
        let oldest = self.local(at - duration) - CLOCK_SHIFT_MARGIN;
        let mut day = newest.date();
        while day >= oldest.date() {
            if schedule.matches_day(day) {
                for hour in bits_descending(schedule.hours) {
                    for minute in bits_descending(schedule.minutes) {
                        let Some(local) = day.and_hms_opt(hour, minute, 0) else {
                            continue;
                        };
                        if local > newest {
                            continue;
                        }
                        if local < oldest {
                            return None;
                        }
                        let Some(start) = self.instant(local) else {
                            continue;
                        };
                        if start > at {
                            continue;
                        }
                        return (at < start + duration).then_some(start);
                    }
                }
            }
            day = day.pred_opt()?;
        }
        None
    }

    fn local(&self, at: DateTime<Utc>) -> NaiveDateTime {
        at.with_timezone(&self.time_zone).naive_local()
    }

    /// The instant a local wall-clock minute opens at: none for a minute skipped by
    /// a spring-forward transition, the earlier one for a minute that a fall-back
    /// transition repeats.
    fn instant(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.time_zone.from_local_datetime(&local) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
            LocalResult::None => None,
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Always => f.write_str("always"),
            Kind::Scheduled {
                schedule,
                duration_minutes,
            } => write!(
                f,
                "{} for {duration_minutes} min ({})",
                schedule.text,
                self.time_zone.name()
            ),
        }
    }
}

impl Schedule {
    /// Parses five cron fields; the error is the problem, without the schedule.
    fn parse(text: &str) -> Result<Schedule, String> {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(format!(
                "expected 5 fields (minute hour day-of-month month day-of-week) or the word always, found {}",
                fields.len()
            ));
        };
        let weekdays = WEEKDAY.parse(weekday)?;
        Ok(Schedule {
            text: fields.join(" "),
            minutes: MINUTE.parse(minute)?,
            hours: HOUR.parse(hour)?,
            days: DAY.parse(day)?,
            months: MONTH.parse(month)?,
            // Sunday is both 0 and 7; keep one bit for it.
            weekdays: (weekdays | weekdays >> 7) & 0x7f,
            days_restricted: !day.starts_with('*'),
            weekdays_restricted: !weekday.starts_with('*'),
        })
    }

    fn matches_day(&self, day: NaiveDate) -> bool {
        if !has(self.months, day.month()) {
            return false;
        }
        let by_date = has(self.days, day.day());
        let by_weekday = has(self.weekdays, day.weekday().num_days_from_sunday());
        if self.days_restricted && self.weekdays_restricted {
            by_date || by_weekday
        } else {
            by_date && by_weekday
        }
    }
}

impl Field {
    /// Parses one field into a bit set of the values it matches.
    fn parse(&self, text: &str) -> Result<u64, String> {
        let mut set = 0u64;
        for item in text.split(',') {
            if item.is_empty() {
                return Err(format!(
                    "{} field {text:?} has an empty list item; separate values with single commas, e.g. 1,15",
                    self.name
                ));
            }
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => (range, Some(step)),
                None => (item, None),
            };
            let (first, last) = if range == "*" {
                (self.min, self.max)
            } else if let Some((first, last)) = range.split_once('-') {
                let first = self.value(first, text, false)?;
                let last = self.value(last, text, true)?;
                if first > last {
                    return Err(format!(
                        "{} field {text:?}: range {range} is reversed; write the smaller value first (ranges do not wrap around)",
                        self.name
                    ));
                }
                (first, last)
            } else {
                let value = self.value(range, text, false)?;
                if step.is_some() {
                    return Err(format!(
                        "{} field {text:?}: {item} steps from a single value; write */n or a-b/n",
                        self.name
                    ));
                }
                (value, value)
            };
            let step = match step {
                None => 1,
                Some(step) => self.step(step, text)?,
            };
            for value in (first..=last).step_by(step as usize) {
                set |= 1 << value;
            }
        }
        Ok(set)
    }

    /// One value: a number in range or, where the field has them, a name.
    /// `range_end` lets `sun` close a weekday range as 7 (`fri-sun`).
    fn value(&self, token: &str, text: &str, range_end: bool) -> Result<u32, String> {
        let name = self.name;
        let allowed = self.allowed;
        if token.is_empty() {
            return Err(format!(
                "{name} field {text:?}: a range needs a value on both sides of '-'; allowed values are {allowed}"
            ));
        }
        if token.bytes().all(|b| b.is_ascii_digit()) {
            // A number too long for u32 is out of range just like 60 is.
            let value = token.parse::<u32>().unwrap_or(u32::MAX);
            if !(self.min..=self.max).contains(&value) {
                return Err(format!(
                    "{name} field {text:?}: {token} is out of range; allowed values are {allowed}"
                ));
            }
            return Ok(value);
        }
        if let Some(index) = self
            .names
            .iter()
            .position(|candidate| candidate.eq_ignore_ascii_case(token))
        {
            let value = self.min + index as u32;
            return Ok(if range_end && value == 0 { 7 } else { value });
        }
        let what = if self.names.is_empty() {
            "is not a number"
        } else {
            "is neither a number nor a name"
        };
        Err(format!(
            "{name} field {text:?}: {token:?} {what}; allowed values are {allowed}"
        ))
    }

    fn step(&self, token: &str, text: &str) -> Result<u32, String> {
        let span = self.max - self.min + 1;
        match token.parse::<u32>() {
            Ok(step) if (1..=span).contains(&step) && token.bytes().all(|b| b.is_ascii_digit()) => {
                Ok(step)
            }
            _ => Err(format!(
                "{} field {text:?}: step {token:?} is not allowed; use a whole number from 1 to {span}",
                self.name
            )),
        }
    }
}

fn has(set: u64, value: u32) -> bool {
    set >> value & 1 == 1
}

fn bits_ascending(set: u64) -> impl Iterator<Item = u32> {
    (0..64).filter(move |&bit| has(set, bit))
}

fn bits_descending(set: u64) -> impl Iterator<Item = u32> {
    (0..64).rev().filter(move |&bit| has(set, bit))
}

fn minutes(count: u32) -> TimeDelta {
    TimeDelta::minutes(i64::from(count))
}

fn truncate_to_minute(local: NaiveDateTime) -> NaiveDateTime {
    local
        - TimeDelta::seconds(i64::from(local.second()))
        - TimeDelta::nanoseconds(i64::from(local.nanosecond()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("bad test instant {text}: {e}"))
            .with_timezone(&Utc)
    }

    fn window(schedule: &str, duration: u32, zone: &str) -> Window {
        Window::new(schedule, duration, zone).unwrap_or_else(|e| panic!("{e}"))
    }

    fn schedule(text: &str) -> Schedule {
        let Kind::Scheduled { schedule, .. } = window(text, 60, "UTC").kind else {
            panic!("{text} parsed as always");
        };
        schedule
    }

    fn set(values: &[u32]) -> u64 {
        values.iter().fold(0, |set, v| set | 1 << v)
    }

    fn error(schedule: &str) -> String {
        match Window::new(schedule, 60, "UTC") {
            Ok(w) => panic!("{schedule} was accepted as {w}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_every_syntax_element() {
        let s = schedule("*/15 1-5/2 1,15,31 jan-Mar SAT-sun");
        assert_eq!(s.minutes, set(&[0, 15, 30, 45]));
        assert_eq!(s.hours, set(&[1, 3, 5]));
        assert_eq!(s.days, set(&[1, 15, 31]));
        assert_eq!(s.months, set(&[1, 2, 3]));
        assert_eq!(s.weekdays, set(&[0, 6]));
        assert!(s.days_restricted && s.weekdays_restricted);

        let s = schedule("* * * * *");
        assert_eq!(s.minutes, (1 << 60) - 1);
        assert_eq!(s.hours, (1 << 24) - 1);
        assert_eq!(s.days, ((1 << 32) - 1) & !1);
        assert_eq!(s.months, ((1 << 13) - 1) & !1);
        assert_eq!(s.weekdays, 0x7f);
        assert!(!s.days_restricted && !s.weekdays_restricted);

        // 0 and 7 are both Sunday; names are case-insensitive; lists mix forms.
        assert_eq!(schedule("0 0 * * 7").weekdays, set(&[0]));
        assert_eq!(schedule("0 0 * * 0").weekdays, set(&[0]));
        assert_eq!(schedule("0 0 * * MON-fri").weekdays, set(&[1, 2, 3, 4, 5]));
        assert_eq!(schedule("0 0 * * 5-7").weekdays, set(&[0, 5, 6]));
        assert_eq!(schedule("0 0 * * sun,wed").weekdays, set(&[0, 3]));
        assert_eq!(schedule("0 0 * DEC,jun,7 *").months, set(&[6, 7, 12]));
        assert_eq!(
            schedule("5,10-12,50-59/5 * * * *").minutes,
            set(&[5, 10, 11, 12, 50, 55])
        );
        assert_eq!(schedule("0 */6 * * *").hours, set(&[0, 6, 12, 18]));
        assert_eq!(schedule("0 0 */10 * *").days, set(&[1, 11, 21, 31]));
        // A starred step still counts as unrestricted for the day-of-month rule.
        assert!(!schedule("0 0 */2 * mon").days_restricted);
        // Extra whitespace is fine and normalised for display.
        assert_eq!(
            window("  0  22 * *\t* ", 480, "Europe/Moscow").to_string(),
            "0 22 * * * for 480 min (Europe/Moscow)"
        );
    }

    #[test]
    fn explains_each_kind_of_schedule_error() {
        assert_eq!(
            error("0 22 * *"),
            r#"invalid schedule "0 22 * *": expected 5 fields (minute hour day-of-month month day-of-week) or the word always, found 4"#
        );
        assert_eq!(
            error(""),
            r#"invalid schedule "": expected 5 fields (minute hour day-of-month month day-of-week) or the word always, found 0"#
        );
        assert_eq!(
            error("0 0 * * * *"),
            r#"invalid schedule "0 0 * * * *": expected 5 fields (minute hour day-of-month month day-of-week) or the word always, found 6"#
        );
        assert_eq!(
            error("60 * * * *"),
            r#"invalid schedule "60 * * * *": minute field "60": 60 is out of range; allowed values are 0-59"#
        );
        assert_eq!(
            error("0 24 * * *"),
            r#"invalid schedule "0 24 * * *": hour field "24": 24 is out of range; allowed values are 0-23"#
        );
        assert_eq!(
            error("0 0 0 * *"),
            r#"invalid schedule "0 0 0 * *": day-of-month field "0": 0 is out of range; allowed values are 1-31"#
        );
        assert_eq!(
            error("0 0 * 13 *"),
            r#"invalid schedule "0 0 * 13 *": month field "13": 13 is out of range; allowed values are 1-12 or jan-dec"#
        );
        assert_eq!(
            error("0 0 * * 8"),
            r#"invalid schedule "0 0 * * 8": day-of-week field "8": 8 is out of range; allowed values are 0-7 (0 and 7 are Sunday) or mon-sun"#
        );
        assert_eq!(
            error("0 99999999999 * * *"),
            r#"invalid schedule "0 99999999999 * * *": hour field "99999999999": 99999999999 is out of range; allowed values are 0-23"#
        );
        assert_eq!(
            error("0 0 * * monday"),
            r#"invalid schedule "0 0 * * monday": day-of-week field "monday": "monday" is neither a number nor a name; allowed values are 0-7 (0 and 7 are Sunday) or mon-sun"#
        );
        assert_eq!(
            error("0 0 * january *"),
            r#"invalid schedule "0 0 * january *": month field "january": "january" is neither a number nor a name; allowed values are 1-12 or jan-dec"#
        );
        assert_eq!(
            error("x 0 * * *"),
            r#"invalid schedule "x 0 * * *": minute field "x": "x" is not a number; allowed values are 0-59"#
        );
        // Names only where the field has them.
        assert_eq!(
            error("0 0 mon * *"),
            r#"invalid schedule "0 0 mon * *": day-of-month field "mon": "mon" is not a number; allowed values are 1-31"#
        );
        assert_eq!(
            error("0,,30 * * * *"),
            r#"invalid schedule "0,,30 * * * *": minute field "0,,30" has an empty list item; separate values with single commas, e.g. 1,15"#
        );
        assert_eq!(
            error("0, * * * *"),
            r#"invalid schedule "0, * * * *": minute field "0," has an empty list item; separate values with single commas, e.g. 1,15"#
        );
        assert_eq!(
            error("*/0 * * * *"),
            r#"invalid schedule "*/0 * * * *": minute field "*/0": step "0" is not allowed; use a whole number from 1 to 60"#
        );
        assert_eq!(
            error("0 1-5/ * * *"),
            r#"invalid schedule "0 1-5/ * * *": hour field "1-5/": step "" is not allowed; use a whole number from 1 to 24"#
        );
        assert_eq!(
            error("0 */25 * * *"),
            r#"invalid schedule "0 */25 * * *": hour field "*/25": step "25" is not allowed; use a whole number from 1 to 24"#
        );
        assert_eq!(
            error("0 22-2 * * *"),
            r#"invalid schedule "0 22-2 * * *": hour field "22-2": range 22-2 is reversed; write the smaller value first (ranges do not wrap around)"#
        );
        assert_eq!(
            error("0 0 * * fri-mon"),
            r#"invalid schedule "0 0 * * fri-mon": day-of-week field "fri-mon": range fri-mon is reversed; write the smaller value first (ranges do not wrap around)"#
        );
        assert_eq!(
            error("5/10 * * * *"),
            r#"invalid schedule "5/10 * * * *": minute field "5/10": 5/10 steps from a single value; write */n or a-b/n"#
        );
        assert_eq!(
            error("-5 * * * *"),
            r#"invalid schedule "-5 * * * *": minute field "-5": a range needs a value on both sides of '-'; allowed values are 0-59"#
        );
    }

    #[test]
    fn rejects_bad_durations_and_time_zones() {
        let message = |r: Result<Window, PolicyError>| match r {
            Ok(w) => panic!("accepted {w}"),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            message(Window::new("0 22 * * *", 0, "UTC")),
            "invalid window duration 0 min: use 1 to 10080 minutes (up to 7 days)"
        );
        assert_eq!(
            message(Window::new("0 22 * * *", 10081, "UTC")),
            "invalid window duration 10081 min: use 1 to 10080 minutes (up to 7 days)"
        );
        assert_eq!(
            message(Window::new("0 22 * * *", 480, "Europe/Moskow")),
            r#"unknown time zone "Europe/Moskow": use an IANA name such as Europe/Moscow"#
        );
        assert_eq!(
            message(Window::new("always", 0, "")),
            r#"unknown time zone "": use an IANA name such as Europe/Moscow"#
        );
        assert!(Window::new("0 0 * * 0", 10080, "UTC").is_ok());
        assert!(Window::new("0 0 * * 0", 1, "UTC").is_ok());
    }

    #[test]
    fn open_exactly_from_start_to_before_end() {
        let w = window("0 22 * * *", 60, "UTC");
        assert!(!w.is_open(utc("2026-11-23T21:59:59Z")));
        assert!(w.is_open(utc("2026-11-23T22:00:00Z")));
        assert!(w.is_open(utc("2026-11-23T22:00:01Z")));
        assert!(w.is_open(utc("2026-11-23T22:59:59.999Z")));
        assert!(!w.is_open(utc("2026-11-23T23:00:00Z")));
        assert!(!w.is_open(utc("2026-11-23T23:00:01Z")));

        assert_eq!(w.open_until(utc("2026-11-23T21:59:59Z")), None);
        assert_eq!(
            w.open_until(utc("2026-11-23T22:00:00Z")),
            Some(utc("2026-11-23T23:00:00Z"))
        );
        assert_eq!(
            w.open_until(utc("2026-11-23T22:59:59Z")),
            Some(utc("2026-11-23T23:00:00Z"))
        );
        assert_eq!(w.open_until(utc("2026-11-23T23:00:00Z")), None);

        assert_eq!(
            w.next_open(utc("2026-11-23T21:59:59Z")),
            Some(utc("2026-11-23T22:00:00Z"))
        );
        // Strictly after: at the start itself the next one is tomorrow's.
        assert_eq!(
            w.next_open(utc("2026-11-23T22:00:00Z")),
            Some(utc("2026-11-24T22:00:00Z"))
        );
        assert_eq!(
            w.next_open(utc("2026-11-23T21:59:00.5Z")),
            Some(utc("2026-11-23T22:00:00Z"))
        );
    }

    #[test]
    fn overnight_window_in_moscow() {
        // 22:00 Moscow is 19:00 UTC; 480 minutes later is 06:00 Moscow, 03:00 UTC.
        let w = window("0 22 * * *", 480, "Europe/Moscow");
        assert_eq!(w.to_string(), "0 22 * * * for 480 min (Europe/Moscow)");
        assert!(!w.is_open(utc("2026-11-23T18:59:59Z")));
        assert!(w.is_open(utc("2026-11-23T19:00:00Z")));
        assert!(w.is_open(utc("2026-11-23T21:00:00Z")));
        // 03:00 Moscow the next day, past midnight.
        assert!(w.is_open(utc("2026-11-24T00:00:00Z")));
        assert!(w.is_open(utc("2026-11-24T02:59:59Z")));
        assert!(!w.is_open(utc("2026-11-24T03:00:00Z")));
        assert!(!w.is_open(utc("2026-11-24T12:00:00Z")));
        assert_eq!(
            w.open_until(utc("2026-11-24T00:00:00Z")),
            Some(utc("2026-11-24T03:00:00Z"))
        );
        assert_eq!(
            w.next_open(utc("2026-11-24T00:00:00Z")),
            Some(utc("2026-11-24T19:00:00Z"))
        );
    }

    #[test]
    fn time_zone_shifts_openings() {
        let moscow = window("0 2 * * *", 60, "Europe/Moscow");
        let utc_window = window("0 2 * * *", 60, "UTC");
        // 02:00 Moscow (UTC+3) is 23:00 UTC the day before.
        assert!(moscow.is_open(utc("2026-11-23T23:00:00Z")));
        assert!(!utc_window.is_open(utc("2026-11-23T23:00:00Z")));
        assert!(!moscow.is_open(utc("2026-11-24T02:00:00Z")));
        assert!(utc_window.is_open(utc("2026-11-24T02:00:00Z")));
        assert_eq!(
            moscow.next_open(utc("2026-11-24T00:00:00Z")),
            Some(utc("2026-11-24T23:00:00Z"))
        );
        assert_eq!(
            utc_window.next_open(utc("2026-11-24T00:00:00Z")),
            Some(utc("2026-11-24T02:00:00Z"))
        );
    }

    #[test]
    fn weekday_restriction() {
        // Weekdays 09:00-19:00 UTC; 2026-11-23 is a Monday.
        let w = window("0 9 * * mon-fri", 600, "UTC");
        assert!(w.is_open(utc("2026-11-27T18:59:00Z")), "Friday");
        assert!(!w.is_open(utc("2026-11-28T10:00:00Z")), "Saturday");
        assert!(!w.is_open(utc("2026-11-29T10:00:00Z")), "Sunday");
        assert!(w.is_open(utc("2026-11-30T09:00:00Z")), "Monday");
        assert_eq!(
            w.next_open(utc("2026-11-27T12:00:00Z")),
            Some(utc("2026-11-30T09:00:00Z"))
        );
    }

    #[test]
    fn restricted_day_of_month_and_weekday_match_either() {
        // The 13th of each month or any Friday.
        let either = window("0 12 13 * fri", 60, "UTC");
        assert!(
            either.is_open(utc("2026-11-20T12:30:00Z")),
            "a Friday the 20th"
        );
        assert!(
            either.is_open(utc("2026-12-13T12:30:00Z")),
            "a Sunday the 13th"
        );
        assert!(
            !either.is_open(utc("2026-11-24T12:30:00Z")),
            "a Tuesday the 24th"
        );
        assert_eq!(
            either.next_open(utc("2026-11-21T00:00:00Z")),
            Some(utc("2026-11-27T12:00:00Z"))
        );

        // A starred day-of-month is unrestricted: both must match (odd days that are Fridays).
        let both = window("0 12 */2 * fri", 60, "UTC");
        assert!(both.is_open(utc("2026-11-13T12:30:00Z")), "Friday the 13th");
        assert!(
            !both.is_open(utc("2026-11-20T12:30:00Z")),
            "Friday the 20th"
        );
        assert!(
            !both.is_open(utc("2026-11-15T12:30:00Z")),
            "Sunday the 15th"
        );
    }

    #[test]
    fn next_open_across_month_and_year_ends() {
        let last = window("0 3 31 * *", 60, "UTC");
        // November has no 31st.
        assert_eq!(
            last.next_open(utc("2026-11-15T00:00:00Z")),
            Some(utc("2026-12-31T03:00:00Z"))
        );
        assert_eq!(
            last.next_open(utc("2026-01-31T04:00:00Z")),
            Some(utc("2026-03-31T03:00:00Z"))
        );
        let new_year = window("0 0 1 jan *", 60, "UTC");
        assert_eq!(
            new_year.next_open(utc("2026-12-31T23:59:59Z")),
            Some(utc("2027-01-01T00:00:00Z"))
        );
        // A local month end in a non-UTC zone is the previous UTC day.
        let moscow = window("30 0 1 * *", 60, "Europe/Moscow");
        assert_eq!(
            moscow.next_open(utc("2026-11-15T00:00:00Z")),
            Some(utc("2026-11-30T21:30:00Z"))
        );
        assert!(moscow.is_open(utc("2026-11-30T22:00:00Z")));

        // February 29 is 365 days after 2027-03-01: within the horizon; from a year
        // earlier it is not.
        let leap = window("0 0 29 feb *", 60, "UTC");
        assert_eq!(
            leap.next_open(utc("2027-03-01T00:00:00Z")),
            Some(utc("2028-02-29T00:00:00Z"))
        );
        assert_eq!(leap.next_open(utc("2026-03-01T00:00:00Z")), None);

        let never = window("0 0 30 feb *", 60, "UTC");
        assert_eq!(never.next_open(utc("2026-01-01T00:00:00Z")), None);
        assert!(!never.is_open(utc("2026-02-28T00:30:00Z")));
        assert_eq!(never.to_string(), "0 0 30 feb * for 60 min (UTC)");
    }

    #[test]
    fn overlapping_openings_report_the_latest_end() {
        let w = window("*/30 * * * *", 45, "UTC");
        // 10:40 is inside both 10:00-10:45 and 10:30-11:15.
        assert_eq!(
            w.open_until(utc("2026-11-23T10:40:00Z")),
            Some(utc("2026-11-23T11:15:00Z"))
        );
        assert_eq!(
            w.open_until(utc("2026-11-23T10:20:00Z")),
            Some(utc("2026-11-23T10:45:00Z"))
        );

        // A week-long opening every Monday covers every instant.
        let week = window("0 0 * * mon", 10080, "UTC");
        assert!(week.is_open(utc("2026-11-29T23:59:59Z")));
        assert!(week.is_open(utc("2026-11-30T00:00:00Z")));
        assert_eq!(
            week.open_until(utc("2026-11-29T23:59:59Z")),
            Some(utc("2026-11-30T00:00:00Z"))
        );
        assert_eq!(
            week.open_until(utc("2026-11-30T00:00:00Z")),
            Some(utc("2026-12-07T00:00:00Z"))
        );
    }

    #[test]
    fn spring_forward_skips_the_missing_minute() {
        // Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC), so
        // 02:30 does not exist that day.
        let w = window("30 2 * * *", 60, "Europe/Berlin");
        assert!(
            w.is_open(utc("2026-03-28T01:30:00Z")),
            "02:30 CET the day before"
        );
        assert!(!w.is_open(utc("2026-03-29T00:30:00Z")));
        assert!(!w.is_open(utc("2026-03-29T01:15:00Z")));
        assert_eq!(
            w.next_open(utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-30T00:30:00Z"))
        );
        assert!(
            w.is_open(utc("2026-03-30T00:30:00Z")),
            "02:30 CEST the day after"
        );

        // 03:00 exists and is 01:00 UTC, the moment of the jump.
        let three = window("0 3 * * *", 30, "Europe/Berlin");
        assert_eq!(
            three.next_open(utc("2026-03-28T12:00:00Z")),
            Some(utc("2026-03-29T01:00:00Z"))
        );
        assert!(!three.is_open(utc("2026-03-29T00:59:59Z")));
        assert!(three.is_open(utc("2026-03-29T01:00:00Z")));

        // Durations are real time: 01:00 CET + 120 min ends at 04:00 CEST.
        let across = window("0 1 * * *", 120, "Europe/Berlin");
        assert!(across.is_open(utc("2026-03-29T01:59:59Z")));
        assert!(!across.is_open(utc("2026-03-29T02:00:00Z")));
        assert_eq!(
            across.open_until(utc("2026-03-29T00:00:00Z")),
            Some(utc("2026-03-29T02:00:00Z"))
        );
    }

    #[test]
    fn fall_back_opens_once_at_the_earlier_instant() {
        // Europe/Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET (01:00 UTC),
        // so 02:30 happens at 00:30 UTC and again at 01:30 UTC.
        let w = window("30 2 * * *", 30, "Europe/Berlin");
        assert!(!w.is_open(utc("2026-10-25T00:29:59Z")));
        assert!(w.is_open(utc("2026-10-25T00:30:00Z")));
        assert_eq!(
            w.open_until(utc("2026-10-25T00:45:00Z")),
            Some(utc("2026-10-25T01:00:00Z"))
        );
        assert!(!w.is_open(utc("2026-10-25T01:00:00Z")));
        assert!(
            !w.is_open(utc("2026-10-25T01:30:00Z")),
            "the repeated 02:30 opens nothing"
        );
        assert!(!w.is_open(utc("2026-10-25T01:45:00Z")));
        assert_eq!(
            w.next_open(utc("2026-10-25T00:00:00Z")),
            Some(utc("2026-10-25T00:30:00Z"))
        );
        assert_eq!(
            w.next_open(utc("2026-10-25T00:30:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );
        assert_eq!(
            w.next_open(utc("2026-10-25T01:10:00Z")),
            Some(utc("2026-10-26T01:30:00Z"))
        );

        // Midnight CEST + 240 real minutes ends at 03:00 CET, not 04:00.
        let across = window("0 0 * * *", 240, "Europe/Berlin");
        assert!(across.is_open(utc("2026-10-24T22:00:00Z")));
        assert!(across.is_open(utc("2026-10-25T01:59:59Z")), "02:59 CET");
        assert!(!across.is_open(utc("2026-10-25T02:00:00Z")));
        assert_eq!(
            across.open_until(utc("2026-10-25T01:30:00Z")),
            Some(utc("2026-10-25T02:00:00Z"))
        );

        // Every minute during the repeated hour belongs to the first pass; while the
        // clock repeats 02:xx CET, the covering opening is the last one of the
        // first pass (02:59 CEST = 00:59 UTC), already ended for a short window.
        let each = window("* 2 * * *", 5, "Europe/Berlin");
        assert_eq!(
            each.open_until(utc("2026-10-25T00:59:30Z")),
            Some(utc("2026-10-25T01:04:00Z"))
        );
        assert!(each.is_open(utc("2026-10-25T01:03:59Z")));
        assert!(!each.is_open(utc("2026-10-25T01:04:00Z")));
        assert!(!each.is_open(utc("2026-10-25T01:30:00Z")));
        assert_eq!(
            each.next_open(utc("2026-10-25T00:59:00Z")),
            Some(utc("2026-10-26T01:00:00Z"))
        );
    }

    #[test]
    fn always_is_open_without_openings() {
        let w = window("Always", 0, "Europe/Moscow");
        assert_eq!(w.to_string(), "always");
        assert!(w.is_open(utc("2026-11-23T12:00:00Z")));
        assert_eq!(w.open_until(utc("2026-11-23T12:00:00Z")), None);
        assert_eq!(w.next_open(utc("2026-11-23T12:00:00Z")), None);
    }

    /// The reference the walk must agree with: every local minute from well before
    /// `at` to well after it, mapped to an instant by the same DST rules, checked
    /// one by one.
    fn brute_force_covering(w: &Window, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let Kind::Scheduled {
            schedule,
            duration_minutes,
        } = &w.kind
        else {
            return None;
        };
        let duration = minutes(*duration_minutes);
        let mut local = truncate_to_minute(w.local(at - duration)) - TimeDelta::hours(4);
        let end = w.local(at) + TimeDelta::hours(4);
        let mut best = None;
        while local <= end {
            let matches = schedule.matches_day(local.date())
                && has(schedule.hours, local.hour())
                && has(schedule.minutes, local.minute());
            if let Some(start) = w.instant(local).filter(|_| matches)
                && start <= at
                && at < start + duration
            {
                best = best.max(Some(start));
            }
            local += TimeDelta::minutes(1);
        }
        best
    }

    fn brute_force_next(w: &Window, at: DateTime<Utc>, days: i64) -> Option<DateTime<Utc>> {
        let Kind::Scheduled { schedule, .. } = &w.kind else {
            return None;
        };
        let mut local = truncate_to_minute(w.local(at)) - TimeDelta::days(1);
        let end = w.local(at) + TimeDelta::days(days);
        while local <= end {
            let matches = schedule.matches_day(local.date())
                && has(schedule.hours, local.hour())
                && has(schedule.minutes, local.minute());
            if let Some(start) = w.instant(local).filter(|_| matches)
                && start > at
            {
                return Some(start);
            }
            local += TimeDelta::minutes(1);
        }
        None
    }

    #[test]
    fn walk_agrees_with_a_minute_by_minute_scan() {
        let windows = [
            window("0 22 * * *", 480, "Europe/Moscow"),
            window("30 2 * * *", 30, "Europe/Berlin"),
            window("* 2 * * *", 5, "Europe/Berlin"),
            window("*/20 1-3 * * sun", 90, "Europe/Berlin"),
            window("0 0 * * mon", 1500, "Europe/Berlin"),
            window("15 */5 1,15 * fri", 600, "America/New_York"),
            window(
                "45 23 L * *".replace('L', "31").as_str(),
                1440,
                "Australia/Lord_Howe",
            ),
        ];
        // Instants around both 2026 Berlin transitions and New York's, every 41
        // minutes and 13 seconds so that they fall on and off minute boundaries.
        let ranges = [
            ("2026-03-27T00:00:00Z", "2026-03-31T00:00:00Z"),
            ("2026-10-23T00:00:00Z", "2026-10-27T00:00:00Z"),
            ("2026-03-07T00:00:00Z", "2026-03-09T12:00:00Z"),
            ("2026-10-03T00:00:00Z", "2026-10-05T00:00:00Z"),
        ];
        for w in &windows {
            for (from, to) in ranges {
                let mut at = utc(from);
                while at < utc(to) {
                    assert_eq!(
                        w.covering_opening(at),
                        brute_force_covering(w, at),
                        "{w} at {at}"
                    );
                    assert_eq!(
                        w.next_open(at),
                        brute_force_next(w, at, 40),
                        "{w} after {at}"
                    );
                    at += TimeDelta::seconds(41 * 60 + 13);
                }
            }
        }
    }

    mod properties {
        use super::*;
        use chrono::TimeZone;
        use proptest::prelude::*;

        fn field() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("*".to_string()),
                (0u32..70).prop_map(|n| n.to_string()),
                (0u32..40, 0u32..40).prop_map(|(a, b)| format!("{a}-{b}")),
                (1u32..30).prop_map(|n| format!("*/{n}")),
                (0u32..30, 0u32..30).prop_map(|(a, b)| format!("{a},{b}")),
                prop_oneof!["mon", "sun", "jan", "dec", "sat-sun", "x", "", "-", "/"]
                    .prop_map(String::from),
            ]
        }

        proptest! {
            /// Any schedule text is either read or refused with a reason.
            #[test]
            fn any_schedule_gets_an_answer(text in "\\PC{0,40}", minutes in 0u32..20_000) {
                let _ = Window::new(&text, minutes, "Europe/Berlin");
            }

            /// For schedules made of cron fields: the next opening after an instant
            /// lies after it, and the window is open then.
            #[test]
            fn the_next_opening_is_open(
                fields in prop::collection::vec(field(), 5),
                minutes in 1u32..600,
                at in 0i64..(4 * 365 * 24 * 60),
                tz in prop_oneof!["Europe/Berlin", "UTC", "America/New_York", "Asia/Kolkata"],
            ) {
                let Ok(w) = Window::new(&fields.join(" "), minutes, &tz) else {
                    return Ok(());
                };
                let at = Utc.timestamp_opt(1_767_225_600 + at * 60, 0).unwrap();
                if let Some(open) = w.next_open(at) {
                    prop_assert!(open > at);
                    prop_assert!(w.is_open(open), "closed at its own opening {open}");
                }
                if let Some(until) = w.open_until(at) {
                    prop_assert!(w.is_open(at) && until > at);
                }
            }
        }
    }
}
