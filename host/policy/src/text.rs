//! Plain-text messages for store staff: the announcement sent before an update and
//! the report sent after it.
//!
//! Staff read these in messengers that show Markdown characters verbatim, so the
//! output is plain text: no `#` headings, `*`/`_` emphasis, backticks, `[text](url)`
//! links, `>` quotes, `|` tables or `-`/`*`/`+` list markers. Package changelogs are
//! often written in Markdown, and operators type conditions and device names
//! freely, so every piece of text that goes into a message passes through
//! [`strip_markdown`]. [`is_plain`] is the check the tests hold the output to.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::PolicyError;

mod markdown;

pub use markdown::{is_plain, strip_markdown};

/// What an update changes on a node, which decides what staff must not do while
/// it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Impact {
    /// Both the fiscal register firmware and the POS software.
    RegisterAndSoftware,
    /// Only the fiscal register.
    Register,
    /// Only the POS software.
    Software,
}

impl Impact {
    /// The wire name: `register-and-software`, `register` or `software`.
    pub fn as_str(self) -> &'static str {
        match self {
            Impact::RegisterAndSoftware => "register-and-software",
            Impact::Register => "register",
            Impact::Software => "software",
        }
    }

    /// The group heading staff see in an English announcement.
    pub fn label(self) -> &'static str {
        self.label_in(Lang::En)
    }
}

impl FromStr for Impact {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Impact, PolicyError> {
        match s {
            "register-and-software" => Ok(Impact::RegisterAndSoftware),
            "register" => Ok(Impact::Register),
            "software" => Ok(Impact::Software),
            _ => Err(PolicyError::Impact {
                value: s.to_owned(),
            }),
        }
    }
}

impl fmt::Display for Impact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The language a store reads its messages in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Lang {
    #[default]
    En,
    Ru,
}

impl Lang {
    pub fn parse(tag: &str) -> Option<Lang> {
        match tag {
            "en" => Some(Lang::En),
            "ru" => Some(Lang::Ru),
            _ => None,
        }
    }

    fn words(self) -> &'static Words {
        match self {
            Lang::En => &EN,
            Lang::Ru => &RU,
        }
    }
}

/// Every fixed piece of text in a store's messages, per language. Russian follows
/// the field procedure: "Дата обновления", "Номер релиза", the list of changes.
struct Words {
    planned: &'static str,
    site: &'static str,
    start: &'static str,
    kind: &'static str,
    release: &'static str,
    affected: &'static str,
    impacts: [&'static str; 3],
    please: &'static str,
    power: &'static str,
    router: &'static str,
    overnight: &'static str,
    reboot_at: &'static str,
    agree_reboot: &'static str,
    report: &'static str,
    date: &'static str,
    changes_in: &'static str,
    devices: &'static str,
    updated: &'static str,
    failed: &'static str,
    kinds: [&'static str; 3],
}

const EN: Words = Words {
    planned: "Planned update",
    site: "Site",
    start: "Start",
    kind: "Type",
    release: "Release",
    affected: "Affected nodes",
    impacts: ["Register and software", "Only register", "Only software"],
    please: "Please",
    power: "do not power off the registers",
    router: "do not unplug the router",
    overnight: "do not switch the registers off overnight",
    reboot_at: "the registers reboot at the agreed time",
    agree_reboot: "agree the register reboot time with us: the site is open 24/7",
    report: "Update report",
    date: "Date",
    changes_in: "Changes in",
    devices: "Devices",
    updated: "updated",
    failed: "failed",
    kinds: ["Download", "Update", "Forced update"],
};

const RU: Words = Words {
    planned: "Плановое обновление",
    site: "Магазин",
    start: "Начало",
    kind: "Тип",
    release: "Релиз",
    affected: "Затрагиваемые узлы",
    impacts: ["Касса и ПО", "Только касса", "Только ПО"],
    please: "Просьба",
    power: "не выключать кассы",
    router: "не отключать роутер",
    overnight: "не выключать кассы на ночь",
    reboot_at: "кассы перезагрузятся в согласованное время",
    agree_reboot: "согласуйте с нами время перезагрузки касс: магазин работает круглосуточно",
    report: "Отчёт об обновлении",
    date: "Дата обновления",
    changes_in: "Изменения в",
    devices: "Устройства",
    updated: "обновлено",
    failed: "ошибка",
    kinds: ["Загрузка", "Обновление", "Принудительное обновление"],
};

/// The name of a task kind (`download`, `update`, `forced-update`) in a store's
/// language; other text is returned as it is.
pub fn kind_label(kind: &str, lang: Lang) -> &str {
    let kinds = lang.words().kinds;
    match kind {
        "download" => kinds[0],
        "update" => kinds[1],
        "forced-update" => kinds[2],
        other => other,
    }
}

impl Impact {
    fn label_in(self, lang: Lang) -> &'static str {
        let labels = lang.words().impacts;
        match self {
            Impact::RegisterAndSoftware => labels[0],
            Impact::Register => labels[1],
            Impact::Software => labels[2],
        }
    }
}

/// One package being rolled out.
#[derive(Debug, Clone, Copy)]
pub struct Release<'a> {
    pub device_type: &'a str,
    pub version: &'a str,
    pub file_name: &'a str,
    /// The package's changelog, possibly Markdown; may be empty.
    pub changelog: &'a str,
}

/// A device an announced update will touch.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub name: &'a str,
    pub device_type: &'a str,
    pub impact: Impact,
}

/// How the update went on one device.
#[derive(Debug, Clone, Copy)]
pub struct DeviceOutcome<'a> {
    pub name: &'a str,
    pub device_type: &'a str,
    pub ok: bool,
    /// Why it failed; ignored when `ok`.
    pub detail: &'a str,
}

/// The store a message is about.
#[derive(Debug, Clone, Copy)]
pub struct SiteInfo<'a> {
    pub name: &'a str,
    /// Left out of the message when empty.
    pub address: &'a str,
    /// Times in messages are shown in this zone.
    pub time_zone: chrono_tz::Tz,
    /// The site works 24/7, so registers cannot simply be rebooted at closing.
    pub always_open: bool,
    /// The reboot time agreed with a 24/7 site, as staff wrote it (e.g. `04:00`).
    pub reboot_time: Option<&'a str>,
    /// The language its staff read.
    pub language: Lang,
}

/// What [`announcement`] is built from.
#[derive(Debug, Clone)]
pub struct Announcement<'a> {
    /// The rollout or task name.
    pub title: &'a str,
    /// "Update", "Forced update" or "Download".
    pub kind: &'a str,
    pub start: DateTime<Utc>,
    pub site: SiteInfo<'a>,
    pub releases: Vec<Release<'a>>,
    pub nodes: Vec<Node<'a>>,
    /// The operator's extra requests, one per line, possibly Markdown; may be empty.
    pub conditions: &'a str,
}

/// What [`report`] is built from.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    pub title: &'a str,
    pub finished: DateTime<Utc>,
    pub site: SiteInfo<'a>,
    pub releases: Vec<Release<'a>>,
    pub devices: Vec<DeviceOutcome<'a>>,
}

/// The message sent to a store before an update:
///
/// ```text
/// Planned update: Winter release
/// Site: Store 12, 5 Lenina St
/// Start: 2026-11-24 02:00 (Europe/Moscow)
/// Type: Update
/// Release: ukm5 5.2.0 (ukm5-5.2.0.tar.gz)
/// Affected nodes:
///   Register and software: Register 1 (ukm5)
/// Please:
///   • do not power off the registers;
///   • do not unplug the router;
///   • do not switch the registers off overnight.
/// ```
///
/// Times are in the site's zone; an empty address, and sections with nothing to
/// list, are left out. The text ends with a single newline and satisfies
/// [`is_plain`] whatever Markdown the inputs contain.
pub fn announcement(a: &Announcement) -> String {
    let w = a.site.language.words();
    let mut out = String::new();
    push_line(&mut out, &format!("{}: {}", w.planned, plain(a.title)));
    push_site(&mut out, &a.site);
    let start = a.start.with_timezone(&a.site.time_zone);
    push_line(
        &mut out,
        &format!(
            "{}: {} ({})",
            w.start,
            start.format("%Y-%m-%d %H:%M"),
            a.site.time_zone.name()
        ),
    );
    push_line(&mut out, &format!("{}: {}", w.kind, plain(a.kind)));
    push_releases(&mut out, &a.releases, a.site.language);

    let groups: Vec<(Impact, String)> = [
        Impact::RegisterAndSoftware,
        Impact::Register,
        Impact::Software,
    ]
    .into_iter()
    .filter_map(|impact| {
        let names: Vec<String> = a
            .nodes
            .iter()
            .filter(|node| node.impact == impact)
            .map(|node| named(node.name, node.device_type))
            .collect();
        (!names.is_empty()).then(|| (impact, names.join(", ")))
    })
    .collect();
    if !groups.is_empty() {
        push_line(&mut out, &format!("{}:", w.affected));
        for (impact, names) in groups {
            push_line(
                &mut out,
                &format!("  {}: {names}", impact.label_in(a.site.language)),
            );
        }
    }

    let mut requests: Vec<String> = vec![w.power.into(), w.router.into()];
    // Software updates run and finish overnight; a download only stores files.
    let touches_software = a
        .nodes
        .iter()
        .any(|node| matches!(node.impact, Impact::Software | Impact::RegisterAndSoftware));
    let download = [EN.kinds[0], RU.kinds[0]]
        .iter()
        .any(|d| a.kind.trim().eq_ignore_ascii_case(d));
    if touches_software && !download {
        requests.push(w.overnight.into());
    }
    if a.site.always_open {
        match a.site.reboot_time.map(plain).filter(|t| !t.is_empty()) {
            Some(time) => requests.push(format!("{} {time}", w.reboot_at)),
            None => requests.push(w.agree_reboot.into()),
        }
    }
    for line in strip_markdown(a.conditions).lines() {
        // The bullet and the closing punctuation are added below.
        let line = line.trim();
        let line = line.strip_prefix("• ").unwrap_or(line);
        let line = line.trim_end_matches(['.', ';', ',']).trim_end();
        if !line.is_empty() {
            requests.push(line.to_owned());
        }
    }
    push_line(&mut out, &format!("{}:", w.please));
    let last = requests.len() - 1;
    for (index, request) in requests.iter().enumerate() {
        let end = if index == last { '.' } else { ';' };
        push_line(&mut out, &format!("  • {request}{end}"));
    }
    out
}

/// The message sent to a store after an update:
///
/// ```text
/// Update report: Winter release
/// Site: Store 12, 5 Lenina St
/// Date: 2026-11-24
/// Release: kiosk 2.1.0 (kiosk-2.1.0.zip)
/// Changes in kiosk 2.1.0:
///   • New payment screen
/// Devices:
///   Kiosk 1 (kiosk): updated
///   Kiosk 2 (kiosk): failed: no free space
/// ```
///
/// The date is the finishing day in the site's zone. Changelogs are converted with
/// [`strip_markdown`]; releases without one get no "Changes" section. The text ends
/// with a single newline and satisfies [`is_plain`].
pub fn report(r: &Report) -> String {
    let w = r.site.language.words();
    let mut out = String::new();
    push_line(&mut out, &format!("{}: {}", w.report, plain(r.title)));
    push_site(&mut out, &r.site);
    let finished = r.finished.with_timezone(&r.site.time_zone);
    push_line(
        &mut out,
        &format!("{}: {}", w.date, finished.format("%Y-%m-%d")),
    );
    push_releases(&mut out, &r.releases, r.site.language);
    for release in &r.releases {
        let changes = strip_markdown(release.changelog);
        if changes.is_empty() {
            continue;
        }
        push_line(
            &mut out,
            &format!(
                "{} {}:",
                w.changes_in,
                joined(&[plain(release.device_type), plain(release.version)])
            ),
        );
        for line in changes.lines() {
            if line.is_empty() {
                push_line(&mut out, "");
            } else {
                push_line(&mut out, &format!("  {line}"));
            }
        }
    }
    if !r.devices.is_empty() {
        push_line(&mut out, &format!("{}:", w.devices));
        for device in &r.devices {
            let outcome = match (device.ok, plain(device.detail)) {
                (true, _) => w.updated.to_owned(),
                (false, detail) if detail.is_empty() => w.failed.to_owned(),
                (false, detail) => format!("{}: {detail}", w.failed),
            };
            push_line(
                &mut out,
                &format!("  {}: {outcome}", named(device.name, device.device_type)),
            );
        }
    }
    out
}

fn push_line(out: &mut String, line: &str) {
    out.push_str(line);
    out.push('\n');
}

fn push_site(out: &mut String, site: &SiteInfo) {
    let label = site.language.words().site;
    let name = plain(site.name);
    let address = plain(site.address);
    if address.is_empty() {
        push_line(out, &format!("{label}: {name}"));
    } else {
        push_line(out, &format!("{label}: {name}, {address}"));
    }
}

fn push_releases(out: &mut String, releases: &[Release], lang: Lang) {
    let label = lang.words().release;
    for release in releases {
        let what = joined(&[plain(release.device_type), plain(release.version)]);
        let file = plain(release.file_name);
        if file.is_empty() {
            push_line(out, &format!("{label}: {what}"));
        } else {
            push_line(out, &format!("{label}: {what} ({file})"));
        }
    }
}

/// `name (type)`, or just the name when the type is empty.
fn named(name: &str, device_type: &str) -> String {
    let name = plain(name);
    let device_type = plain(device_type);
    if device_type.is_empty() {
        name
    } else {
        format!("{name} ({device_type})")
    }
}

fn joined(parts: &[String]) -> String {
    parts
        .iter()
        .filter(|part| !part.is_empty())
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A short value (a name, a version) made plain and kept on one line, so that a
/// newline typed into a name cannot start a line of its own.
fn plain(s: &str) -> String {
    strip_markdown(s)
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap_or_else(|e| panic!("bad test instant {text}: {e}"))
            .with_timezone(&Utc)
    }

    fn moscow_store() -> SiteInfo<'static> {
        SiteInfo {
            name: "Store 12",
            address: "5 Lenina St, Moscow",
            time_zone: chrono_tz::Europe::Moscow,
            always_open: true,
            reboot_time: Some("04:00"),
            language: Lang::En,
        }
    }

    const UKM5: Release<'static> = Release {
        device_type: "ukm5",
        version: "5.2.0",
        file_name: "ukm5-5.2.0.tar.gz",
        changelog: "",
    };

    fn node(name: &'static str, device_type: &'static str, impact: Impact) -> Node<'static> {
        Node {
            name,
            device_type,
            impact,
        }
    }

    const CHANGELOG: &str = r#"# Changelog

## 5.2.0 — 2026-11-01 ##

### Added
- **New payment screen** with _faster_ card flow
- Support for `fiscal_drive_v2` printers ([#123](https://tracker.example/123))
* Option `receipt_header_text`, see the [manual](https://docs.example/manual "Manual")
  + nested __bold__ and *italic* item   


### Fixed
1. Crash when the shift is closed twice
2. Escaped \*stars\* and 2 * 3 stay
3. See <https://status.example/incidents>

> Note: restart the register after installing.
> > nested quote

---

```sh
# update by hand
ukm5-update --now
```

| Setting | Default |
|---------|:-------:|
| `timeout_ms` | 500 |
| a \| b | c |

![Payment screen](https://img.example/s.png)

***
"#;

    #[test]
    fn strips_a_realistic_changelog() {
        let plain = strip_markdown(CHANGELOG);
        assert_eq!(
            plain,
            "Changelog

5.2.0 — 2026-11-01

Added
• New payment screen with faster card flow
• Support for fiscal_drive_v2 printers (#123 (https://tracker.example/123))
• Option receipt_header_text, see the manual (https://docs.example/manual)
  • nested bold and italic item

Fixed
1. Crash when the shift is closed twice
2. Escaped *stars* and 2 * 3 stay
3. See https://status.example/incidents

Note: restart the register after installing.
nested quote

update by hand
ukm5-update --now

Setting, Default
timeout_ms, 500
a | b, c

Payment screen (https://img.example/s.png)"
        );
        assert!(is_plain(&plain));
        assert!(!is_plain(CHANGELOG));
    }

    #[test]
    fn strips_each_construct() {
        let cases = [
            ("# Title", "Title"),
            ("###### Deep ###", "Deep"),
            ("#hashtag stays a word", "hashtag stays a word"),
            ("**bold** and __bold__", "bold and bold"),
            ("*it* and _it_", "it and it"),
            ("***both***", "both"),
            (
                "keep snake_case_names and __init_ok intact",
                "keep snake_case_names and _init_ok intact",
            ),
            ("a_b_c x_y", "a_b_c x_y"),
            // A backtick inside code is still defused.
            ("use `a_b` or ``x`y``", "use a_b or x'y"),
            ("an ` unmatched backtick", "an ' unmatched backtick"),
            ("[docs](https://d.example)", "docs (https://d.example)"),
            (
                "![logo](https://l.example/x.png)",
                "logo (https://l.example/x.png)",
            ),
            (
                "[https://u.example](https://u.example)",
                "https://u.example",
            ),
            (
                "[**bold** link](https://b.example)",
                "bold link (https://b.example)",
            ),
            ("[not a link] (x)", "[not a link] (x)"),
            ("- dash", "• dash"),
            ("* star", "• star"),
            ("+ plus", "• plus"),
            ("    - deep", "    • deep"),
            ("> quoted", "quoted"),
            (">tight", "tight"),
            ("> - quoted item", "• quoted item"),
            ("---", ""),
            ("* * *", ""),
            ("___", ""),
            (
                "\\*not emphasis\\* \\_x\\_ \\# \\\\",
                "*not emphasis* _x_ # \\",
            ),
            ("trailing   ", "trailing"),
            ("5 * 3 = 15", "5 * 3 = 15"),
            ("-5 degrees", "-5 degrees"),
            ("", ""),
            ("\n\n\n", ""),
            ("a\n\n\n\nb\n\n", "a\n\nb"),
            ("```\ncode **kept** `x`\n```", "code *kept* 'x'"),
            ("~~~rust\nlet x = 1;\n~~~", "let x = 1;"),
            // A shorter fence inside a longer one is content.
            ("````\n```\ninner\n````", "'''\ninner"),
            ("Title\n=====\ntext", "Title\n\ntext"),
            ("| only | pipes |", "only, pipes"),
            ("a | b\n--|--\nc | d", "a, b\nc, d"),
        ];
        for (markdown, expected) in cases {
            assert_eq!(strip_markdown(markdown), expected, "from {markdown:?}");
        }
    }

    #[test]
    fn is_plain_rejects_each_construct() {
        let markdown = [
            "# Heading",
            "  ## Indented heading",
            "#123 at the start",
            "> quote",
            "- item",
            "* item",
            "+ item",
            "text with `code`",
            "**bold**",
            "__bold__",
            "a [link](https://x.example)",
            "| a | b |",
            "---|---",
            "fine\n- but this line is not",
        ];
        for sample in markdown {
            assert!(!is_plain(sample), "{sample:?} passed as plain");
        }
        let plain = [
            "Fixed #123",
            "snake_case_name",
            "2 * 3 and a | b",
            "-5 degrees",
            "• bullet",
            "1. numbered",
            "see (https://x.example)",
            "",
        ];
        for sample in plain {
            assert!(is_plain(sample), "{sample:?} failed as plain");
        }
    }

    #[test]
    fn strip_markdown_always_yields_plain_text() {
        let nasty = [
            "**unclosed bold",
            "__init__.py and a__b",
            "2**10 and x__y",
            "```\n# comment\n- dash\n| a | b |\n> q\n**x** `y` [a](b)\n```",
            "```\nunclosed fence\n# comment",
            "\\`escaped\\` \\*\\*x\\*\\*",
            "[a](b\n](",
            "# # double heading",
            "> # quoted heading",
            "> > > - deep",
            "| # a | `b` |\n|-|-|\n| **c** | [d](e) |",
            "|",
            ">",
            "- ",
            "#",
            "- - -x",
            "*** not a rule",
            "* * x",
            "_ _ x",
            "+ + x",
            "| |\n|-|\n| |",
        ];
        for sample in nasty {
            let out = strip_markdown(sample);
            assert!(is_plain(&out), "{sample:?} became {out:?}");
        }
    }

    #[test]
    fn impact_names() {
        for impact in [
            Impact::RegisterAndSoftware,
            Impact::Register,
            Impact::Software,
        ] {
            assert_eq!(impact.as_str().parse::<Impact>().ok(), Some(impact));
        }
        assert_eq!(Impact::RegisterAndSoftware.label(), "Register and software");
        assert_eq!(Impact::Register.label(), "Only register");
        assert_eq!(Impact::Software.label(), "Only software");
        assert_eq!(Impact::Software.to_string(), "software");
        let error = "Register".parse::<Impact>().err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(r#"unknown impact "Register": use register-and-software, register or software"#)
        );
    }

    #[test]
    fn a_russian_store_reads_russian_messages() {
        let site = SiteInfo {
            language: Lang::Ru,
            ..moscow_store()
        };
        let text = announcement(&Announcement {
            title: "Зимний релиз",
            kind: kind_label("forced-update", Lang::Ru),
            start: utc("2026-11-23T23:00:00Z"),
            site,
            releases: vec![UKM5],
            nodes: vec![
                node("Касса 1", "ukm5", Impact::RegisterAndSoftware),
                node("Касса 2", "ukm5", Impact::Software),
            ],
            conditions: "Закрыть смену до 23:00",
        });
        assert_eq!(
            text,
            "Плановое обновление: Зимний релиз
Магазин: Store 12, 5 Lenina St, Moscow
Начало: 2026-11-24 02:00 (Europe/Moscow)
Тип: Принудительное обновление
Релиз: ukm5 5.2.0 (ukm5-5.2.0.tar.gz)
Затрагиваемые узлы:
  Касса и ПО: Касса 1 (ukm5)
  Только ПО: Касса 2 (ukm5)
Просьба:
  • не выключать кассы;
  • не отключать роутер;
  • не выключать кассы на ночь;
  • кассы перезагрузятся в согласованное время 04:00;
  • Закрыть смену до 23:00.
"
        );
        assert!(is_plain(&text));

        // The report keeps the field procedure's order: date, release, changes.
        let text = report(&Report {
            title: "Зимний релиз",
            finished: utc("2026-11-24T01:30:00Z"),
            site,
            releases: vec![Release {
                changelog: "- Новый экран оплаты\n- Исправлен сбой при закрытии смены",
                ..UKM5
            }],
            devices: vec![
                DeviceOutcome {
                    name: "Касса 1",
                    device_type: "ukm5",
                    ok: true,
                    detail: "",
                },
                DeviceOutcome {
                    name: "Касса 2",
                    device_type: "ukm5",
                    ok: false,
                    detail: "нет места на диске",
                },
            ],
        });
        assert_eq!(
            text,
            "Отчёт об обновлении: Зимний релиз
Магазин: Store 12, 5 Lenina St, Moscow
Дата обновления: 2026-11-24
Релиз: ukm5 5.2.0 (ukm5-5.2.0.tar.gz)
Изменения в ukm5 5.2.0:
  • Новый экран оплаты
  • Исправлен сбой при закрытии смены
Устройства:
  Касса 1 (ukm5): обновлено
  Касса 2 (ukm5): ошибка: нет места на диске
"
        );
        assert!(is_plain(&text));
        assert_eq!(kind_label("download", Lang::En), "Download");
        assert_eq!(Lang::parse("ru"), Some(Lang::Ru));
        assert_eq!(Lang::parse("de"), None);
    }

    #[test]
    fn full_announcement() {
        let text = announcement(&Announcement {
            title: "Winter release",
            kind: "Update",
            start: utc("2026-11-23T23:00:00Z"),
            site: moscow_store(),
            releases: vec![
                UKM5,
                Release {
                    device_type: "iiko-backoffice",
                    version: "8.1",
                    file_name: "iiko-8.1.zip",
                    changelog: "- ignored here",
                },
            ],
            nodes: vec![
                node("Register 1", "ukm5", Impact::RegisterAndSoftware),
                node("BackOffice", "iiko-backoffice", Impact::Software),
                node("Register 2", "ukm5", Impact::RegisterAndSoftware),
                node("Fiscal 3", "ukm5", Impact::Register),
            ],
            conditions: "- Keep **one** register on for night sales.\n\n\
                         Call `+7 900 000-00-00` if the screen stays black\n",
        });
        assert_eq!(
            text,
            "Planned update: Winter release
Site: Store 12, 5 Lenina St, Moscow
Start: 2026-11-24 02:00 (Europe/Moscow)
Type: Update
Release: ukm5 5.2.0 (ukm5-5.2.0.tar.gz)
Release: iiko-backoffice 8.1 (iiko-8.1.zip)
Affected nodes:
  Register and software: Register 1 (ukm5), Register 2 (ukm5)
  Only register: Fiscal 3 (ukm5)
  Only software: BackOffice (iiko-backoffice)
Please:
  • do not power off the registers;
  • do not unplug the router;
  • do not switch the registers off overnight;
  • the registers reboot at the agreed time 04:00;
  • Keep one register on for night sales;
  • Call +7 900 000-00-00 if the screen stays black.
"
        );
        assert!(is_plain(&text));
    }

    #[test]
    fn minimal_announcement_leaves_out_empty_parts() {
        let site = SiteInfo {
            name: "Kiosk corner",
            address: "",
            time_zone: chrono_tz::Europe::Berlin,
            always_open: false,
            reboot_time: None,
            language: Lang::En,
        };
        // A download touching only a register: no overnight request.
        let text = announcement(&Announcement {
            title: "Firmware prefetch",
            kind: "Download",
            start: utc("2026-03-29T01:30:00Z"),
            site,
            releases: vec![UKM5],
            nodes: vec![node("Register 1", "ukm5", Impact::Register)],
            conditions: "",
        });
        assert_eq!(
            text,
            "Planned update: Firmware prefetch
Site: Kiosk corner
Start: 2026-03-29 03:30 (Europe/Berlin)
Type: Download
Release: ukm5 5.2.0 (ukm5-5.2.0.tar.gz)
Affected nodes:
  Only register: Register 1 (ukm5)
Please:
  • do not power off the registers;
  • do not unplug the router.
"
        );

        // Nothing to list; a download of software still needs no overnight request.
        let text = announcement(&Announcement {
            title: "Prefetch",
            kind: "Download",
            start: utc("2026-03-28T12:00:00Z"),
            site,
            releases: vec![],
            nodes: vec![node("BackOffice", "iiko", Impact::Software)],
            conditions: "\n  \n",
        });
        assert_eq!(
            text,
            "Planned update: Prefetch
Site: Kiosk corner
Start: 2026-03-28 13:00 (Europe/Berlin)
Type: Download
Affected nodes:
  Only software: BackOffice (iiko)
Please:
  • do not power off the registers;
  • do not unplug the router.
"
        );
    }

    #[test]
    fn announcement_for_a_24_7_site_without_a_reboot_time() {
        let site = SiteInfo {
            reboot_time: None,
            ..moscow_store()
        };
        let text = announcement(&Announcement {
            title: "Forced fix",
            kind: "Forced update",
            start: utc("2026-11-24T09:15:00Z"),
            site,
            releases: vec![UKM5],
            nodes: vec![node("Register 1", "ukm5", Impact::Software)],
            conditions: "",
        });
        assert_eq!(
            text,
            "Planned update: Forced fix
Site: Store 12, 5 Lenina St, Moscow
Start: 2026-11-24 12:15 (Europe/Moscow)
Type: Forced update
Release: ukm5 5.2.0 (ukm5-5.2.0.tar.gz)
Affected nodes:
  Only software: Register 1 (ukm5)
Please:
  • do not power off the registers;
  • do not unplug the router;
  • do not switch the registers off overnight;
  • agree the register reboot time with us: the site is open 24/7.
"
        );
    }

    #[test]
    fn report_text() {
        let text = report(&Report {
            title: "Kiosk spring release",
            // 00:30 in Moscow: the date is the site's, not UTC's.
            finished: utc("2026-11-23T21:30:00Z"),
            site: moscow_store(),
            releases: vec![
                Release {
                    device_type: "kiosk",
                    version: "2.1.0",
                    file_name: "kiosk-2.1.0.zip",
                    changelog: "## What's new\n\n- **New payment screen**\n- Faster `receipt` printing\n",
                },
                UKM5,
            ],
            devices: vec![
                DeviceOutcome {
                    name: "Kiosk 1",
                    device_type: "kiosk",
                    ok: true,
                    detail: "ignored when ok",
                },
                DeviceOutcome {
                    name: "Kiosk 2",
                    device_type: "kiosk",
                    ok: false,
                    detail: "no free space on /dev/sda1 (need 2 GB)",
                },
                DeviceOutcome {
                    name: "Kiosk 3",
                    device_type: "kiosk",
                    ok: false,
                    detail: "",
                },
            ],
        });
        assert_eq!(
            text,
            "Update report: Kiosk spring release
Site: Store 12, 5 Lenina St, Moscow
Date: 2026-11-24
Release: kiosk 2.1.0 (kiosk-2.1.0.zip)
Release: ukm5 5.2.0 (ukm5-5.2.0.tar.gz)
Changes in kiosk 2.1.0:
  What's new

  • New payment screen
  • Faster receipt printing
Devices:
  Kiosk 1 (kiosk): updated
  Kiosk 2 (kiosk): failed: no free space on /dev/sda1 (need 2 GB)
  Kiosk 3 (kiosk): failed
"
        );
        assert!(is_plain(&text));

        let empty = report(&Report {
            title: "Nothing yet",
            finished: utc("2026-11-24T12:00:00Z"),
            site: moscow_store(),
            releases: vec![],
            devices: vec![],
        });
        assert_eq!(
            empty,
            "Update report: Nothing yet\nSite: Store 12, 5 Lenina St, Moscow\nDate: 2026-11-24\n"
        );
    }

    #[test]
    fn markdown_in_names_and_conditions_stays_out_of_messages() {
        let site = SiteInfo {
            name: "# Store_12 *main*",
            address: "[map](https://maps.example)",
            time_zone: chrono_tz::Europe::Moscow,
            always_open: true,
            reboot_time: Some("`04:00`"),
            language: Lang::En,
        };
        let release = Release {
            device_type: "ukm__5",
            version: "**5.2**",
            file_name: "`ukm5.tar.gz`",
            changelog: CHANGELOG,
        };
        let text = announcement(&Announcement {
            title: "**Urgent**\n# fix",
            kind: "_Update_",
            start: utc("2026-11-23T23:00:00Z"),
            site,
            releases: vec![release],
            nodes: vec![node("- Kiosk `1`", "> kiosk", Impact::RegisterAndSoftware)],
            conditions: "## Rules\n| a | b |\n|---|---|\n| c | d |\n```\n# x\n```\n> quoted",
        });
        assert_eq!(
            text,
            "Planned update: Urgent fix
Site: Store_12 main, map (https://maps.example)
Start: 2026-11-24 02:00 (Europe/Moscow)
Type: Update
Release: ukm_5 5.2 (ukm5.tar.gz)
Affected nodes:
  Register and software: • Kiosk 1 (kiosk)
Please:
  • do not power off the registers;
  • do not unplug the router;
  • do not switch the registers off overnight;
  • the registers reboot at the agreed time 04:00;
  • Rules;
  • a, b;
  • c, d;
  • x;
  • quoted.
"
        );
        assert!(is_plain(&text));

        let text = report(&Report {
            title: "> **Urgent**",
            finished: utc("2026-11-23T23:00:00Z"),
            site,
            releases: vec![release],
            devices: vec![DeviceOutcome {
                name: "| Kiosk |",
                device_type: "kiosk",
                ok: false,
                detail: "`disk full`\n- see [log](https://log.example)",
            }],
        });
        assert!(is_plain(&text), "{text}");
        assert!(
            text.contains("\n  Kiosk (kiosk): failed: disk full • see log (https://log.example)\n"),
            "{text}"
        );
    }
}
