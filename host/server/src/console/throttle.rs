//! Failed console logins per client address.
//!
//! The account lock stops guessing one account's password; this stops one
//! address from guessing across many account names (each costing the server an
//! argon2 hash). After [`MAX_FAILURES`] failed logins within [`WINDOW_MS`], the
//! address's logins are refused before any password is checked, until the
//! window has passed. IPv6 addresses count by their /64, which one machine
//! usually owns whole. Only failures are counted, in memory: a restart forgets
//! them, which costs an attacker a restart of the server they cannot cause.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Failed logins from one address within [`WINDOW_MS`] before it is refused.
pub const MAX_FAILURES: u32 = 20;
/// The window failures are counted in: a quarter of an hour.
pub const WINDOW_MS: i64 = 15 * 60 * 1000;
/// Addresses remembered at most; when full, the oldest windows are forgotten
/// first, so a flood of addresses cannot grow the server's memory.
pub const MAX_TRACKED: usize = 10_000;

/// One address's failures in its current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    started: i64,
    failures: u32,
}

#[derive(Debug, Default)]
pub struct LoginThrottle {
    windows: Mutex<HashMap<IpAddr, Window>>,
}

/// The address as counted: IPv4 as it is, IPv6 by its /64 prefix.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
    }
}

impl LoginThrottle {
    /// `Err(until)` when `ip` may not try to log in now, with the Unix ms at
    /// which it may again.
    pub fn check(&self, ip: IpAddr, now: i64) -> Result<(), i64> {
        let windows = self.windows.lock().expect("throttle lock");
        match windows.get(&key(ip)) {
            Some(w) if now < w.started + WINDOW_MS && w.failures >= MAX_FAILURES => {
                Err(w.started + WINDOW_MS)
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr, now: i64) {
        let mut windows = self.windows.lock().expect("throttle lock");
        let k = key(ip);
        if !windows.contains_key(&k) && windows.len() >= MAX_TRACKED {
            windows.retain(|_, w| now < w.started + WINDOW_MS);
            if windows.len() >= MAX_TRACKED {
                // Still full of live windows: forget the oldest tenth.
                let mut starts: Vec<i64> = windows.values().map(|w| w.started).collect();
                starts.sort_unstable();
                let cut = starts[MAX_TRACKED / 10];
                windows.retain(|_, w| w.started > cut);
            }
        }
        let w = windows.entry(k).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now >= w.started + WINDOW_MS {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.windows.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let t = LoginThrottle::default();
        let a = ip("203.0.113.7");
        for i in 0..MAX_FAILURES {
            assert_eq!(t.check(a, 1_000 + i as i64), Ok(()), "failure {i}");
            t.failed(a, 1_000 + i as i64);
        }
        assert_eq!(t.check(a, 2_000), Err(1_000 + WINDOW_MS));
        assert_eq!(t.check(ip("203.0.113.8"), 2_000), Ok(()));
        assert_eq!(t.check(a, 1_000 + WINDOW_MS), Ok(()));
        // A new window starts from nothing.
        t.failed(a, 1_000 + WINDOW_MS);
        assert_eq!(t.check(a, 1_001 + WINDOW_MS), Ok(()));
    }

    #[test]
    fn ipv6_counts_by_its_64_prefix() {
        let t = LoginThrottle::default();
        for i in 0..MAX_FAILURES {
            t.failed(ip(&format!("2001:db8:1:2::{:x}", i + 1)), 0);
        }
        assert!(t.check(ip("2001:db8:1:2:ffff::1"), 1).is_err());
        assert!(t.check(ip("2001:db8:1:3::1"), 1).is_ok());
        // An IPv4 address mapped into IPv6 is the IPv4 address.
        for _ in 0..MAX_FAILURES {
            t.failed(ip("::ffff:192.0.2.1"), 0);
        }
        assert!(t.check(ip("192.0.2.1"), 1).is_err());
    }

    #[test]
    fn a_flood_of_addresses_stays_within_its_bound() {
        let t = LoginThrottle::default();
        for i in 0..(MAX_TRACKED as u32 + 5_000) {
            t.failed(IpAddr::V4(i.into()), i64::from(i));
        }
        assert!(t.tracked() <= MAX_TRACKED, "{}", t.tracked());
        // The newest addresses are the ones kept.
        let newest = IpAddr::V4((MAX_TRACKED as u32 + 4_999).into());
        for _ in 1..MAX_FAILURES {
            t.failed(newest, 20_000);
        }
        assert!(t.check(newest, 20_001).is_err());
    }
}
