//! Rollout policy for the posup update server.
//!
//! Pure building blocks the server consults when it plans and announces a
//! rollout:
//!
//! - [`window`]: maintenance windows. A store agrees on when its registers may be
//!   updated ("every night from 22:00 for 8 hours, Moscow time"); the server asks
//!   [`Window::is_open`] on every agent poll and [`Window::next_open`] when it tells
//!   an operator when a task will start.
//! - [`text`]: the plain-text announcement sent to store staff before an update and
//!   the report sent after it. Staff read them in messengers that show Markdown
//!   verbatim, so everything, including changelogs written in Markdown, is turned
//!   into plain lines.
//! - [`version`]: how product versions compare (downgrades, version gates).
//! - [`rollout`]: what a running rollout does next, from its counts and its
//!   error and success thresholds.
//!
//! **Invariant:** nothing here reads the clock, the network or the disk. Every
//! function takes the instant it reasons about, so callers (and tests) decide what
//! "now" is and results are reproducible.

pub mod rollout;
pub mod text;
pub mod version;
pub mod window;

pub use text::{
    Announcement, DeviceOutcome, Impact, Node, Release, Report, SiteInfo, announcement, is_plain,
    report, strip_markdown,
};
pub use window::Window;

/// Why a window or a message could not be built. The messages are meant for API
/// clients: each names the rejected value and says what would be accepted.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A window schedule that is not a valid 5-field cron line nor `always`.
    #[error("invalid schedule {schedule:?}: {problem}")]
    Schedule {
        /// The schedule as the client sent it.
        schedule: String,
        /// Which field is wrong and what it allows.
        problem: String,
    },
    /// A window duration outside 1..=10080 minutes.
    #[error("invalid window duration {minutes} min: use 1 to 10080 minutes (up to 7 days)")]
    Duration { minutes: u32 },
    /// A time zone name the IANA database does not know.
    #[error("unknown time zone {name:?}: use an IANA name such as Europe/Moscow")]
    TimeZone { name: String },
    /// An impact name other than the three known ones.
    #[error("unknown impact {value:?}: use register-and-software, register or software")]
    Impact { value: String },
}
