//! The OSCAR update package's own files, parsed without touching the host: `Rules`
//! (which kind of update an archive is) and the `.chg` files (changes to
//! configuration files). Pure functions, so they are unit-tested, property-tested
//! and fuzzed on the host target.

/// What `Rules` says.
#[derive(Debug, PartialEq, Eq)]
pub struct Rules {
    pub complete: bool,
    pub small: bool,
}

/// Parses `Rules`: one `name = value` a line, names `completeupdate` and
/// `smallupdate` in any case, values 0 or 1. Anything else is an error naming
/// the line.
pub fn parse_rules(text: &str) -> Result<Rules, String> {
    let mut complete: Option<(bool, usize)> = None;
    let mut small: Option<(bool, usize)> = None;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_end_matches('\r').trim();
        if line.is_empty() {
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("Rules line {n}: `{line}` is not `name = value`"));
        };
        let name = name.trim();
        let value = value.trim();
        let slot = match name.to_ascii_lowercase().as_str() {
            "completeupdate" => &mut complete,
            "smallupdate" => &mut small,
            _ => {
                return Err(format!(
                    "Rules line {n}: unknown value `{name}`; Rules knows completeupdate and smallupdate"
                ));
            }
        };
        let set = match value {
            "0" => false,
            "1" => true,
            _ => {
                return Err(format!(
                    "Rules line {n}: {name} = {value}: the value must be 0 or 1"
                ));
            }
        };
        if let Some((_, first)) = slot {
            return Err(format!(
                "Rules line {n}: {name} is set again (first on line {first})"
            ));
        }
        *slot = Some((set, n));
    }
    let complete = complete.is_some_and(|(v, _)| v);
    let small = small.is_some_and(|(v, _)| v);
    if complete && small {
        return Err("Rules: completeupdate = 1 and smallupdate = 1 contradict each other; a small update is never complete".into());
    }
    Ok(Rules { complete, small })
}

/// One line of a `.chg` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `S:NAME=VALUE`: add the variable or replace its value.
    Set(String, String),
    /// `R:NAME=...`: remove the variable, whatever its value.
    Remove(String),
}

pub fn parse_changes(file: &str, text: &str) -> Result<Vec<Change>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("S:") {
            let Some((name, value)) = rest.split_once('=') else {
                return Err(format!(
                    "{file} line {n}: `{line}` sets no value; write S:NAME=VALUE"
                ));
            };
            let name = name.trim();
            if !is_variable(name) {
                return Err(format!("{file} line {n}: `{line}` names no variable"));
            }
            out.push(Change::Set(name.to_owned(), value.trim_end().to_owned()));
        } else if let Some(rest) = line.strip_prefix("R:") {
            let name = rest.split_once('=').map_or(rest, |(n, _)| n).trim();
            if !is_variable(name) {
                return Err(format!("{file} line {n}: `{line}` names no variable"));
            }
            out.push(Change::Remove(name.to_owned()));
        } else {
            return Err(format!(
                "{file} line {n}: `{line}` starts with neither S: (set) nor R: (remove)"
            ));
        }
    }
    Ok(out)
}

pub fn describe(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| match c {
            Change::Set(n, v) => format!("set {n}={v}"),
            Change::Remove(n) => format!("removed {n}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `name` can be a variable of a configuration file: not empty, and not
/// starting like a comment or a section, which [`variable_of`] would not read back.
fn is_variable(name: &str) -> bool {
    !name.is_empty() && !name.starts_with(['#', ';', '['])
}

/// The variable a configuration line sets, if it sets one.
pub fn variable_of(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.is_empty() || t.starts_with('#') || t.starts_with(';') || t.starts_with('[') {
        return None;
    }
    t.split_once('=').map(|(n, _)| n.trim())
}

/// Applies `changes` to a configuration text, keeping its comments, order and
/// line endings. Only the last change of each variable counts, taken in the order
/// the variables first appear: applying the same changes again (a step re-run
/// after a power cut) gives the same text.
pub fn change_config(text: &str, changes: &[Change], ignore_case: bool) -> String {
    let crlf = text.contains("\r\n");
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .collect();
    let same = |a: &str, b: &str| {
        if ignore_case {
            a.eq_ignore_ascii_case(b)
        } else {
            a == b
        }
    };
    let key = |c: &Change| {
        let name = match c {
            Change::Set(n, _) | Change::Remove(n) => n,
        };
        if ignore_case {
            name.to_ascii_lowercase()
        } else {
            name.clone()
        }
    };
    let mut last: Vec<(String, &Change)> = Vec::new();
    for change in changes {
        let k = key(change);
        match last.iter_mut().find(|(seen, _)| *seen == k) {
            Some(slot) => slot.1 = change,
            None => last.push((k, change)),
        }
    }
    for (_, change) in last {
        match change {
            Change::Set(name, value) => {
                let new = format!("{name}={value}");
                let mut placed = false;
                lines.retain_mut(|l| {
                    if variable_of(l).is_some_and(|v| same(v, name)) {
                        if placed {
                            return false;
                        }
                        *l = new.clone();
                        placed = true;
                    }
                    true
                });
                if !placed {
                    lines.push(new);
                }
            }
            Change::Remove(name) => {
                lines.retain(|l| !variable_of(l).is_some_and(|v| same(v, name)))
            }
        }
    }
    let eol = if crlf { "\r\n" } else { "\n" };
    let mut out = lines.join(eol);
    if !out.is_empty() {
        out.push_str(eol);
    }
    out
}

/// The three ways an OSCAR update is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Complete,
    Partial,
    Small,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Complete => "complete",
            Kind::Partial => "partial",
            Kind::Small => "small",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Complete, Kind::Partial, Kind::Small]
            .into_iter()
            .find(|k| k.as_str() == s)
    }

    pub fn rules(self) -> &'static str {
        match self {
            Kind::Complete => "completeupdate = 1",
            Kind::Partial => "completeupdate = 0",
            Kind::Small => "smallupdate = 1",
        }
    }
}

/// The kind of update a `Rules` text describes. `Rules` allows no other
/// combination, so two archives have identical `Rules` exactly when their
/// kinds agree.
pub fn kind_of(rules: &str) -> Result<Kind, String> {
    let rules = parse_rules(rules)?;
    Ok(if rules.complete {
        Kind::Complete
    } else if rules.small {
        Kind::Small
    } else {
        Kind::Partial
    })
}

/// `oscupd10.tgz` → (`oscupd10`, `tgz`). The name ends in `.tgz` (Linux) or
/// `.zip` (Windows); `nnn` is a free description.
pub fn archive_name(name: &str) -> Result<(String, String), String> {
    let lower = name.to_ascii_lowercase();
    let parsed = lower.strip_prefix("oscupd").and_then(|rest| {
        let (desc, ext) = rest.rsplit_once('.')?;
        let ok = !desc.is_empty()
            && desc
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        (ok && (ext == "tgz" || ext == "zip")).then(|| (format!("oscupd{desc}"), ext.to_owned()))
    });
    parsed.ok_or_else(|| {
        format!("{name}: OSCAR update archives are named oscupd<nnn>.tgz (Linux) or oscupd<nnn>.zip (Windows), e.g. oscupd10.tgz")
    })
}

pub fn extension_of(name: &str) -> String {
    archive_name(name)
        .map(|(_, e)| e)
        .unwrap_or_else(|_| "tgz".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_read_strictly() {
        assert_eq!(
            parse_rules("completeupdate = 1\n"),
            Ok(Rules {
                complete: true,
                small: false
            })
        );
        assert_eq!(
            parse_rules("completeupdate = 0\r\nSmallupdate = 1\r\n"),
            Ok(Rules {
                complete: false,
                small: true
            })
        );
        assert_eq!(
            parse_rules("CompleteUpdate=0\n\nSmallUpdate=0\n"),
            Ok(Rules {
                complete: false,
                small: false
            })
        );
        assert_eq!(
            parse_rules(""),
            Ok(Rules {
                complete: false,
                small: false
            })
        );
        let err = parse_rules("completeupdate = 1\nfastupdate = 1\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("fastupdate"),
            "{err}"
        );
        let err = parse_rules("completeupdate = yes\n").unwrap_err();
        assert!(err.contains("line 1") && err.contains("0 or 1"), "{err}");
        let err = parse_rules("completeupdate\n").unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        let err = parse_rules("smallupdate = 1\nSMALLUPDATE = 0\n").unwrap_err();
        assert!(err.contains("line 2") && err.contains("line 1"), "{err}");
        assert!(parse_rules("completeupdate = 1\nsmallupdate = 1\n").is_err());
        assert!(parse_rules("# comment\ncompleteupdate = 1\n").is_err());
    }

    #[test]
    fn change_files_set_and_remove_variables() {
        let changes = parse_changes(
            "oscar.ini.chg",
            "R:MICROS Retail OSCAR POS_OMLPATH=..\\logs,30\r\nS:MICROS Retail OSCAR POS_VERSION=\"Oscar3_ASU_Test_3\"\r\n",
        )
        .unwrap();
        assert_eq!(
            changes,
            vec![
                Change::Remove("MICROS Retail OSCAR POS_OMLPATH".into()),
                Change::Set(
                    "MICROS Retail OSCAR POS_VERSION".into(),
                    "\"Oscar3_ASU_Test_3\"".into()
                ),
            ]
        );
        let ini = "; clients\r\nMICROS Retail OSCAR POS_OMLPATH=..\\logs,30\r\nmicros retail oscar pos_version=\"old\"\r\nX=1\r\n";
        assert_eq!(
            change_config(ini, &changes, true),
            "; clients\r\nMICROS Retail OSCAR POS_VERSION=\"Oscar3_ASU_Test_3\"\r\nX=1\r\n"
        );
        let def = parse_changes("oscar.def.chg", "R:SALESDEBUG =Y\nS:OSINTERDEBUG=Y\n").unwrap();
        assert_eq!(
            change_config("# linux\nSALESDEBUG=Y\nLANG=C\n", &def, false),
            "# linux\nLANG=C\nOSINTERDEBUG=Y\n"
        );
        // Linux names are case-sensitive.
        assert_eq!(
            change_config("salesdebug=Y\n", &def, false),
            "salesdebug=Y\nOSINTERDEBUG=Y\n"
        );
        let err = parse_changes("oscar.def.chg", "S:A=1\nX:B=2\n").unwrap_err();
        assert!(err.contains("oscar.def.chg line 2"), "{err}");
        assert!(parse_changes("oscar.def.chg", "S:NOVALUE\n").is_err());
        assert!(parse_changes("oscar.def.chg", "R:=x\n").is_err());
    }

    #[test]
    fn archive_names() {
        assert_eq!(
            archive_name("oscupd10.tgz"),
            Ok(("oscupd10".into(), "tgz".into()))
        );
        assert_eq!(
            archive_name("OSCUPD4.ZIP"),
            Ok(("oscupd4".into(), "zip".into()))
        );
        assert_eq!(
            archive_name("oscupd_spring-2.zip"),
            Ok(("oscupd_spring-2".into(), "zip".into()))
        );
        for bad in [
            "oscupd.tgz",
            "oscupd10.tar.gz",
            "upd10.zip",
            "oscupd10.rar",
            "oscupd1 0.zip",
        ] {
            assert!(
                archive_name(bad).unwrap_err().contains("oscupd<nnn>.tgz"),
                "{bad}"
            );
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text is either read or refused with a message naming a line; a
        /// text that is read never says both complete and small.
        #[test]
        fn rules_never_panic(text in "\\PC*") {
            match parse_rules(&text) {
                Ok(r) => prop_assert!(!(r.complete && r.small)),
                Err(e) => prop_assert!(e.starts_with("Rules")),
            }
        }

        /// What Rules can say is read back as written, in any case and spacing.
        #[test]
        fn rules_round_trip(complete: bool, small: bool, upper: bool, pad in " {0,3}") {
            prop_assume!(!(complete && small));
            let name = |n: &str| if upper { n.to_uppercase() } else { n.to_owned() };
            let text = format!(
                "{}{pad}={pad}{}\r\n{}={}\n",
                name("completeupdate"), u8::from(complete), name("smallupdate"), u8::from(small)
            );
            prop_assert_eq!(parse_rules(&text), Ok(Rules { complete, small }));
        }

        /// Applying the same changes twice gives the text of applying them once
        /// (found by the `oscar_changes` fuzz target: a variable removed and set
        /// again moved behind the others on every run).
        #[test]
        fn applying_twice_changes_nothing_more(
            chg in prop::collection::vec(("[SR]:", "[aAbB]{1,2}", "[xy]{0,2}"), 0..10)
                .prop_map(|ls| ls.into_iter().map(|(p, n, v)| format!("{p}{n}={v}\n")).collect::<String>()),
            config in prop::collection::vec("[aAbB#]{0,2}=[xy]?", 0..6).prop_map(|ls| ls.join("\n")),
            ignore_case: bool,
        ) {
            let changes = parse_changes("x.chg", &chg).unwrap();
            let once = change_config(&config, &changes, ignore_case);
            prop_assert_eq!(change_config(&once, &changes, ignore_case), once);
        }

        /// Any .chg text is read or refused; applying what was read to any
        /// configuration never panics, and after it each variable the changes
        /// touched holds its last value, or is gone when last removed.
        #[test]
        fn changes_apply_to_any_configuration(
            chg in prop::collection::vec(("[SRX]:", "[ aA_#;\\[]{0,4}", "[^\\n\\r]{0,4}"), 0..8)
                .prop_map(|ls| ls.into_iter().map(|(p, n, v)| format!("{p}{n}={v}\n")).collect::<String>()),
            config in prop::collection::vec("[ aA_#;\\[=x]{0,6}", 0..8).prop_map(|ls| ls.join("\r\n")),
            ignore_case: bool,
        ) {
            if let Ok(changes) = parse_changes("x.chg", &chg) {
                let out = change_config(&config, &changes, ignore_case);
                let _ = describe(&changes);
                let key = |n: &str| if ignore_case { n.to_ascii_lowercase() } else { n.to_owned() };
                let mut last = std::collections::BTreeMap::new();
                for c in &changes {
                    match c {
                        Change::Set(n, v) => last.insert(key(n), Some(format!("{n}={v}"))),
                        Change::Remove(n) => last.insert(key(n), None),
                    };
                }
                for (name, line) in last {
                    let holding: Vec<&str> = out
                        .lines()
                        .filter(|l| variable_of(l).is_some_and(|v| key(v) == name))
                        .collect();
                    match line {
                        Some(line) => prop_assert_eq!(holding, vec![line.as_str()]),
                        None => prop_assert!(holding.is_empty()),
                    }
                }
            }
        }
    }
}
