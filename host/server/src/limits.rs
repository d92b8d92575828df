//! The process's open-files limit. Every connected terminal holds a descriptor
//! (and a download a second, its blob); the soft limit a service starts with is
//! often 1 024, which a store chain's fleet passes, while the hard limit is
//! usually far higher. The server takes what the hard limit allows at start,
//! as busy network servers do, and says when even that is low.

/// Below this many open files the server warns: a fleet of this size would
/// refuse connections (`accept`: too many open files) and fail downloads.
const LOW: u64 = 65_536;

/// The soft limit to set under hard limit `hard` (`None`: unlimited): the hard
/// limit itself; and a warning for the log when it is low.
fn decide(hard: Option<u64>) -> (Option<u64>, Option<String>) {
    let warning = match hard {
        Some(n) if n < LOW => Some(format!(
            "this process may open at most {n} files, and each connected terminal holds one: \
             beyond that, terminals are refused; raise the hard limit (systemd: LimitNOFILE=, \
             elsewhere ulimit -Hn) to at least {LOW}"
        )),
        _ => None,
    };
    (hard, warning)
}

/// Raises the soft open-files limit to the hard one; what to warn about, if
/// anything.
pub fn raise_open_files_limit() -> Option<String> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    let (soft, warning) = decide(now.maximum);
    if soft != now.current {
        let mut raised = now;
        raised.current = soft;
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            return Some(format!(
                "the open-files limit stays {}: raising it failed ({e})",
                shown(now.current)
            ));
        }
    }
    warning
}

fn shown(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".into(), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_rises_to_the_hard_one_and_a_low_one_is_named() {
        assert_eq!(decide(Some(524_288)), (Some(524_288), None));
        assert_eq!(decide(None), (None, None));
        let (soft, warning) = decide(Some(4096));
        assert_eq!(soft, Some(4096));
        let w = warning.expect("4 096 open files is low");
        assert!(
            w.contains("4096") && w.contains("LimitNOFILE"),
            "names the limit and how to raise it: {w}"
        );
    }

    #[test]
    fn the_process_takes_its_hard_limit() {
        use rustix::process::{Resource, getrlimit};
        raise_open_files_limit();
        let now = getrlimit(Resource::Nofile);
        assert_eq!(now.current, now.maximum);
    }
}
