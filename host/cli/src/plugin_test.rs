//! `posup plugin test`: a vendor's check before publishing. It runs the whole
//! update through `posup apply` against fresh copies of a fixture installation,
//! kills posup (`SIGKILL`) after each step and runs it again, makes each step
//! fail once it succeeded, and checks that every update that did not commit
//! left the installation byte for byte as it was — or as the package's
//! documented no-rollback mode says.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use clap::Args;
use posup_agent::DeviceConfig;
use sha2::{Digest, Sha256};

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The plugin: a `.wasm` component file or a bundled plugin's name.
    plugin: String,
    /// A package the plugin must install.
    #[arg(long)]
    package: PathBuf,
    /// A package whose update must fail and roll back (it does not start, say).
    #[arg(long)]
    broken: Option<PathBuf>,
    /// The fixture: a folder with `product/` (the installation) and, if the
    /// product keeps logs, `logs/`. Every case works on a copy.
    #[arg(long)]
    fixture: PathBuf,
    /// The device configuration; `${PRODUCT}`, `${LOGS}` and `${STATE}` in it
    /// name each case's copy. Its services must be processes (`command`).
    #[arg(long)]
    device_config: Option<PathBuf>,
    /// A server variable for the plugin, as `posup apply --var`; repeatable.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// A path inside the installation the product itself changes while it runs
    /// (a pid file, a cache), left out of the comparisons; repeatable.
    #[arg(long)]
    ignore: Vec<String>,
    /// Keep each case's folder (printed) instead of removing it.
    #[arg(long)]
    keep: bool,
}

/// One node of an installation tree: what "byte for byte" compares.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, sha256: [u8; 32] },
    Link { target: PathBuf },
}

type Tree = BTreeMap<String, Node>;

/// The installation under `root`, without the ignored paths.
fn snapshot(root: &Path, ignore: &[String]) -> anyhow::Result<Tree> {
    fn visit(root: &Path, rel: &str, ignore: &[String], out: &mut Tree) -> anyhow::Result<()> {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if ignore
                .iter()
                .any(|i| rel == *i || rel.starts_with(&format!("{i}/")))
            {
                continue;
            }
            let path = root.join(&rel);
            let meta = std::fs::symlink_metadata(&path)?;
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path)?;
                out.insert(rel, Node::Link { target });
            } else if meta.is_dir() {
                out.insert(rel.clone(), Node::Dir { mode });
                visit(root, &rel, ignore, out)?;
            } else {
                let bytes = std::fs::read(&path).with_context(|| format!("{}", path.display()))?;
                let sha256 = Sha256::digest(&bytes).into();
                out.insert(rel, Node::File { mode, sha256 });
            }
        }
        Ok(())
    }
    let mut out = Tree::new();
    visit(root, "", ignore, &mut out)?;
    Ok(out)
}

/// The first differences between two trees, in words.
fn differences(want: &Tree, got: &Tree) -> Vec<String> {
    let mut out = Vec::new();
    for (path, node) in want {
        match got.get(path) {
            None => out.push(format!("{path} is missing")),
            Some(n) if n != node => out.push(format!("{path} differs")),
            Some(_) => {}
        }
    }
    for path in got.keys().filter(|p| !want.contains_key(*p)) {
        out.push(format!("{path} was added"));
    }
    out
}

/// Copies a fixture tree (files, folders, links; modes kept).
fn copy_tree(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("{}", from.display()))? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&src)?;
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if meta.is_dir() {
            copy_tree(&src, &dst)?;
            std::fs::set_permissions(&dst, meta.permissions())?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// What a case expects of the installation at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Not committed, ending with this exit code of `posup apply` (3 declined,
    /// 1 failed): the installation as it was.
    Old(i32),
    /// Either, each with its own exit code (a kill may land before or after
    /// the point of no return).
    NewOrOld,
}

/// Whether a case passed: a committed update (exit 0) left the installation
/// of the clean update, any other end left it as it was — unless a failed
/// update's package declares no rollback, which leaves it as the update made it.
fn verdict(expect: Expect, code: i32, is_new: bool, is_old: bool, no_rollback: bool) -> bool {
    match (expect, code) {
        (Expect::NewOrOld, 0) => is_new,
        (Expect::NewOrOld, 1) => is_old || no_rollback,
        (Expect::Old(want), got) if want == got => is_old || (got == 1 && no_rollback),
        _ => false,
    }
}

/// How a case disturbs the update.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Disturb {
    Declined,
    /// Kill posup after this many step lines, then run it again.
    KillAfter(usize),
    /// The host fails this step once it answered ok.
    FailAfter(String),
    Broken,
}

struct Case {
    name: String,
    disturb: Disturb,
    expect: Expect,
}

struct Outcome {
    name: String,
    exit: String,
    tree: String,
    pass: bool,
    detail: Vec<String>,
}

/// One copy of the fixture, with its own state and configuration.
struct Work {
    dir: PathBuf,
    product: PathBuf,
    logs: PathBuf,
    state: PathBuf,
    config: Option<PathBuf>,
    services: Option<DeviceConfig>,
}

impl Work {
    fn new(root: &Path, n: usize, args: &TestArgs, config: Option<&str>) -> anyhow::Result<Work> {
        let dir = root.join(format!("case-{n:02}"));
        let product = dir.join("product");
        let logs = dir.join("logs");
        let state = dir.join("state");
        copy_tree(&args.fixture.join("product"), &product)?;
        if args.fixture.join("logs").is_dir() {
            copy_tree(&args.fixture.join("logs"), &logs)?;
        } else {
            std::fs::create_dir_all(&logs)?;
        }
        std::fs::create_dir_all(&state)?;
        let (config, services) = match config {
            Some(text) => {
                let text = text
                    .replace("${PRODUCT}", &product.display().to_string())
                    .replace("${LOGS}", &logs.display().to_string())
                    .replace("${STATE}", &state.display().to_string());
                let path = dir.join("device.toml");
                std::fs::write(&path, &text)?;
                (Some(path.clone()), Some(DeviceConfig::load(&path)?))
            }
            None => (None, None),
        };
        Ok(Work {
            dir,
            product,
            logs,
            state,
            config,
            services,
        })
    }

    fn apply(&self, args: &TestArgs, package: &Path, extra: &[&str]) -> Command {
        let exe = std::env::current_exe().unwrap_or_else(|_| "posup".into());
        let mut cmd = Command::new(exe);
        cmd.args(["apply", "--json", "--plugin", &args.plugin])
            .arg("--package")
            .arg(package)
            .arg("--root")
            .arg(&self.product)
            .arg("--logs")
            .arg(&self.logs)
            .arg("--state-dir")
            .arg(&self.state)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(config) = &self.config {
            cmd.arg("--device-config").arg(config);
        }
        for var in &args.vars {
            cmd.arg("--var").arg(var);
        }
        cmd
    }

    /// Stops every service the case started, so no process outlives it.
    async fn stop_services(&self) {
        let Some(config) = &self.services else { return };
        let Some(manager) = config.service_manager(&self.state.join("run")) else {
            return;
        };
        for name in config.services.keys() {
            if let Err(e) = manager.stop(name).await {
                eprintln!("posup plugin test: stopping {name}: {e}");
            }
        }
    }
}

/// Runs `posup apply` to its end: exit code, step lines, last stderr line.
fn run(mut cmd: Command) -> anyhow::Result<(i32, Vec<String>, String)> {
    let out = cmd.output().context("running posup apply")?;
    let steps = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(step_of)
        .collect();
    Ok((
        out.status.code().unwrap_or(-1),
        steps,
        last_line(&out.stderr),
    ))
}

fn last_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// `{"step":"apply",…}` → `apply`.
fn step_of(line: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some(v["step"].as_str()?.to_owned())
}

/// Runs `posup apply` and kills it (SIGKILL) once `lines` step lines came out.
fn run_and_kill(mut cmd: Command, lines: usize) -> anyhow::Result<bool> {
    let mut child = cmd
        .stderr(Stdio::null())
        .spawn()
        .context("running posup apply")?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut seen = 0;
    for line in BufReader::new(stdout).lines() {
        if step_of(&line?).is_some() {
            seen += 1;
            if seen == lines {
                child.kill()?;
                child.wait()?;
                return Ok(true);
            }
        }
    }
    child.wait()?;
    Ok(false)
}

pub async fn run_test(args: TestArgs) -> anyhow::Result<u8> {
    for (what, path) in [("package", &args.package), ("fixture", &args.fixture)] {
        if !path.exists() {
            bail!("{what} {}: no such file or folder", path.display());
        }
    }
    if !args.fixture.join("product").is_dir() {
        bail!(
            "fixture {}: it needs a product/ folder holding the installation (and logs/ if the product keeps logs)",
            args.fixture.display()
        );
    }
    let config = match &args.device_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("device configuration {}", path.display()))?;
            Some(text)
        }
        None => None,
    };
    let root = tempfile::Builder::new()
        .prefix("posup-plugin-test-")
        .tempdir()
        .context("making a work folder")?;
    let result = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(cases(&args, config.as_deref(), root.path()))
    });
    if args.keep {
        let kept = root.keep();
        eprintln!("the cases' folders are kept in {}", kept.display());
    }
    result
}

async fn cases(args: &TestArgs, config: Option<&str>, root: &Path) -> anyhow::Result<u8> {
    let package = args
        .package
        .canonicalize()
        .with_context(|| format!("package {}", args.package.display()))?;
    let info = crate::plugins::inspect(&args.plugin, &package).await?;
    let no_rollback = !info.rollback;
    let mut n = 0;
    let mut next_work = || {
        n += 1;
        Work::new(root, n, args, config)
    };

    // The clean update: it must commit, and its end is what "new" means.
    let first = next_work()?;
    if let Some(services) = &first.services
        && let Some((name, _)) = services.services.iter().find(|(_, s)| s.systemd.is_some())
    {
        bail!(
            "services.{name} runs through systemd; posup plugin test starts and stops every service itself: give it a `command` in a test configuration"
        );
    }
    let old = snapshot(&first.product, &args.ignore)?;
    let (code, steps, last) = run(first.apply(args, &package, &[]))?;
    first.stop_services().await;
    if code != 0 {
        bail!(
            "the update itself did not commit (exit {code}): {last}\n\
             Run it alone to see every step: posup apply --verbose --plugin {} --package {} --root <a copy of {}/product>",
            args.plugin,
            args.package.display(),
            args.fixture.display()
        );
    }
    let new = snapshot(&first.product, &args.ignore)?;
    let mut outcomes = vec![Outcome {
        name: "update".into(),
        exit: "0".into(),
        tree: if new == old {
            "unchanged".into()
        } else {
            format!("new ({})", info.version)
        },
        pass: new != old,
        detail: if new == old {
            vec!["the update committed but changed nothing in the installation".into()]
        } else {
            vec![]
        },
    }];
    cleanup(args, &first);

    let mut plan = vec![Case {
        name: "declined by the person at the terminal".into(),
        disturb: Disturb::Declined,
        expect: Expect::Old(3),
    }];
    // A kill after every step line but the last, which ends the run anyway.
    for (i, step) in steps.iter().enumerate().take(steps.len().saturating_sub(1)) {
        plan.push(Case {
            name: format!("posup killed after {step}, run again"),
            disturb: Disturb::KillAfter(i + 1),
            expect: Expect::NewOrOld,
        });
    }
    for step in ["precheck", "stage", "apply", "verify"] {
        if steps.iter().any(|s| s == step) {
            plan.push(Case {
                name: format!("{step} fails after doing its work"),
                disturb: Disturb::FailAfter(step.into()),
                expect: Expect::Old(1),
            });
        }
    }
    if args.broken.is_some() {
        plan.push(Case {
            name: "broken package".into(),
            disturb: Disturb::Broken,
            expect: Expect::Old(1),
        });
    }

    for case in plan {
        let work = next_work()?;
        let outcome = run_case(args, &package, &work, &case, &old, &new, no_rollback).await;
        work.stop_services().await;
        let outcome = outcome.unwrap_or_else(|e| Outcome {
            name: case.name.clone(),
            exit: "-".into(),
            tree: "-".into(),
            pass: false,
            detail: vec![format!("{e:#}")],
        });
        outcomes.push(outcome);
        cleanup(args, &work);
    }

    println!(
        "posup plugin test: plugin {} with {} ({})",
        args.plugin,
        package
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        info.version
    );
    println!(
        "{:<44} {:>4}  {:<24} result",
        "case", "exit", "installation"
    );
    for o in &outcomes {
        println!(
            "{:<44} {:>4}  {:<24} {}",
            o.name,
            o.exit,
            o.tree,
            if o.pass { "pass" } else { "FAIL" }
        );
        for d in &o.detail {
            println!("    {d}");
        }
    }
    let failed = outcomes.iter().filter(|o| !o.pass).count();
    println!(
        "{} cases: {} passed, {failed} failed",
        outcomes.len(),
        outcomes.len() - failed
    );
    Ok(if failed == 0 { 0 } else { 1 })
}

fn cleanup(args: &TestArgs, work: &Work) {
    if !args.keep {
        let _ = std::fs::remove_dir_all(&work.dir);
    }
}

async fn run_case(
    args: &TestArgs,
    package: &Path,
    work: &Work,
    case: &Case,
    old: &Tree,
    new: &Tree,
    no_rollback: bool,
) -> anyhow::Result<Outcome> {
    let (code, last) = match &case.disturb {
        Disturb::Declined => {
            let (code, _, last) = run(work.apply(args, package, &["--answer", "no"]))?;
            (code, last)
        }
        Disturb::FailAfter(step) => {
            let (code, _, last) = run(work.apply(args, package, &["--fail-after", step]))?;
            (code, last)
        }
        Disturb::Broken => {
            let broken = args.broken.as_deref().expect("planned only with --broken");
            let (code, _, last) = run(work.apply(args, broken, &[]))?;
            (code, last)
        }
        Disturb::KillAfter(lines) => {
            if !run_and_kill(work.apply(args, package, &[]), *lines)? {
                bail!("posup apply ended before its step {lines}; the update is not repeatable");
            }
            let (code, _, last) = run(work.apply(args, package, &[]))?;
            (code, last)
        }
    };
    let now = snapshot(&work.product, &args.ignore)?;
    let is_new = now == *new;
    let is_old = now == *old;
    let tree = match (is_new, is_old) {
        (true, _) => "new".to_owned(),
        (_, true) => "as before".to_owned(),
        _ => "neither old nor new".to_owned(),
    };
    let mut detail = Vec::new();
    let pass = verdict(case.expect, code, is_new, is_old, no_rollback);
    if !pass {
        detail.push(format!("posup apply said: {last}"));
        let want = if code == 0 { new } else { old };
        detail.extend(differences(want, &now).into_iter().take(8));
    } else if no_rollback && code == 1 && !is_old {
        detail.push(
            "the package declares no rollback: the installation was left as the update made it"
                .into(),
        );
    }
    // A kill that ended in a rollback must not block the update for good.
    if pass && matches!(case.disturb, Disturb::KillAfter(..)) && code == 1 {
        work.stop_services().await;
        let (again, _, last) = run(work.apply(args, package, &[]))?;
        if again != 0 || snapshot(&work.product, &args.ignore)? != *new {
            detail.push(format!(
                "after the rollback, the next run did not install the update (exit {again}): {last}"
            ));
            return Ok(Outcome {
                name: case.name.clone(),
                exit: code.to_string(),
                tree,
                pass: false,
                detail,
            });
        }
    }
    Ok(Outcome {
        name: case.name.clone(),
        exit: code.to_string(),
        tree,
        pass,
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_passes_only_with_its_exit_code_and_installation() {
        // A kill: committed and new, or rolled back and as before.
        assert!(verdict(Expect::NewOrOld, 0, true, false, false));
        assert!(!verdict(Expect::NewOrOld, 0, false, true, false));
        assert!(verdict(Expect::NewOrOld, 1, false, true, false));
        assert!(!verdict(Expect::NewOrOld, 1, false, false, false));
        assert!(!verdict(Expect::NewOrOld, 4, false, true, false));
        // Declined is exit 3 with nothing changed; a failure is exit 1.
        assert!(verdict(Expect::Old(3), 3, false, true, false));
        assert!(!verdict(Expect::Old(3), 1, false, true, false));
        assert!(!verdict(Expect::Old(1), 1, false, false, false));
        assert!(!verdict(Expect::Old(1), 0, true, false, false));
        // A package that declares no rollback may leave its changes.
        assert!(verdict(Expect::Old(1), 1, false, false, true));
        assert!(!verdict(Expect::Old(3), 3, false, false, true));
    }

    #[test]
    fn trees_differ_by_content_mode_and_presence() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("bin")).unwrap();
        std::fs::write(root.join("bin/run"), "v1").unwrap();
        std::fs::write(root.join("pid"), "1").unwrap();
        let ignore = vec!["pid".to_owned()];
        let before = snapshot(root, &ignore).unwrap();
        assert!(!before.contains_key("pid"), "ignored paths are left out");

        std::fs::write(root.join("bin/run"), "v2").unwrap();
        std::fs::write(root.join("pid"), "2").unwrap();
        std::fs::write(root.join("new"), "").unwrap();
        let after = snapshot(root, &ignore).unwrap();
        assert_eq!(
            differences(&before, &after),
            ["bin/run differs", "new was added"]
        );
        std::fs::write(root.join("bin/run"), "v1").unwrap();
        std::fs::remove_file(root.join("new")).unwrap();
        assert!(differences(&before, &snapshot(root, &ignore).unwrap()).is_empty());
        std::fs::set_permissions(root.join("bin/run"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        assert_eq!(
            differences(&before, &snapshot(root, &ignore).unwrap()),
            ["bin/run differs"]
        );
    }
}
