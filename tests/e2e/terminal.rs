//! A fixture terminal for the iiko, IceCash and Openbravo tests: a product tree,
//! its log folder, posup's state directory and a device configuration whose
//! services run simulated products through `posup sim-product`, plus the sample
//! packages of `packages/` built into real archives.
//!
//! Services that `posup apply` (or a test) started outlive the command, as on a
//! terminal; dropping the [`Terminal`] stops every one still recorded in its
//! pidfiles, so a failing test leaves no process behind.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use posup_agent::DeviceConfig;
use posup_runtime::caps::services::{ProcessSpec, Processes};
use posup_runtime::types::Inventory;
use posup_runtime::{Grants, HostEnv, Runtime, RuntimeConfig};

use crate::support::{posup, posup_path, read};

/// One simulated service: the name the plugin uses and the `sim-product`
/// subcommand that runs it.
#[derive(Debug, Clone, Copy)]
pub struct Service {
    pub name: &'static str,
    pub product: &'static str,
}

pub struct Terminal {
    dir: tempfile::TempDir,
    pub product: PathBuf,
    pub logs: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    services: Vec<Service>,
}

impl Terminal {
    /// A terminal whose product lives at `<root>/<product_path>`; `scripts` is
    /// what the device configuration allows for package scripts.
    pub fn new(product_path: &str, services: &[Service], scripts: bool) -> Terminal {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let product = root.join(product_path);
        let logs = root.join("logs");
        let state = root.join("posup-state");
        for d in [&product, &logs, &state] {
            std::fs::create_dir_all(d).unwrap();
        }
        let config = root.join("device.toml");
        let mut text = format!(
            "[dirs]\nlogs = \"{}\"\n\n[allow]\nservices = [{}]\nscripts = {scripts}\nprompt = true\n",
            logs.display(),
            services
                .iter()
                .map(|s| format!("\"{}\"", s.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for s in services {
            text.push_str(&format!(
                "\n[services.{name}]\ncommand = [\"{posup}\", \"sim-product\", \"{product_cmd}\", \"--product\", \"{product}\", \"--logs\", \"{logs}\"]\nlog = \"{logs}/{name}.out\"\n",
                name = s.name,
                posup = posup_path(),
                product_cmd = s.product,
                product = product.display(),
                logs = logs.display(),
            ));
        }
        std::fs::write(&config, text).unwrap();
        Terminal {
            dir,
            product,
            logs,
            state,
            config,
            services: services.to_vec(),
        }
    }

    /// The process backend `posup apply` builds from the configuration; the
    /// pidfiles under the state directory are shared with it.
    pub fn services(&self) -> Processes {
        let mut p = Processes::new(self.state.join("run"));
        for s in &self.services {
            p = p.with_service(
                s.name,
                ProcessSpec::new(posup_path()).args([
                    "sim-product".to_string(),
                    s.product.into(),
                    "--product".into(),
                    self.product.display().to_string(),
                    "--logs".into(),
                    self.logs.display().to_string(),
                ]),
            );
        }
        p
    }

    /// Builds the sample package `packages/<product>/<version>` into an archive.
    pub fn package(&self, product: &str, version: &str) -> PathBuf {
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../packages")
            .join(product)
            .join(version);
        posup_sim::package::build(&source, &self.dir.path().join("packages")).unwrap()
    }

    /// Grants the plugin one more service, a command the device configuration
    /// runs in `cwd` (a product's own installer, UKM 5's `up.sh`), its output
    /// going to `<logs>/<name>.out`.
    pub fn grant_command(&self, name: &str, command: &[&str], cwd: &Path) {
        let text = read(&self.config);
        let text = text.replacen("services = [", &format!("services = [\"{name}\", "), 1);
        let command: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
        let text = format!(
            "{text}\n[services.{name}]\ncommand = [{}]\ncwd = {:?}\nlog = \"{}/{name}.out\"\n",
            command.join(", "),
            cwd.display().to_string(),
            self.logs.display(),
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Describes a product database in the device configuration and allows it
    /// (`[databases.<name>]`, `[allow] databases`).
    pub fn grant_database(&self, name: &str, url: &str) {
        let text = read(&self.config);
        let text = text.replacen(
            "[allow]\n",
            &format!("[allow]\ndatabases = [\"{name}\"]\n"),
            1,
        );
        let text = format!("{text}\n[databases.{name}]\nurl = \"{url}\"\n");
        std::fs::write(&self.config, text).unwrap();
    }

    /// Runs `posup apply --json` with the server variables `vars`.
    pub fn apply(&self, plugin: &str, package: &Path, vars: &[(&str, &str)]) -> Output {
        self.apply_with(plugin, package, vars, &[])
    }

    /// Runs `posup apply --json` with the server variables `vars` and the
    /// further arguments `extra` (`--forced`, `--answer no`).
    pub fn apply_with(
        &self,
        plugin: &str,
        package: &Path,
        vars: &[(&str, &str)],
        extra: &[&str],
    ) -> Output {
        let mut cmd = posup();
        cmd.args(["apply", "--plugin", plugin, "--json"])
            .arg("--package")
            .arg(package)
            .arg("--root")
            .arg(&self.product)
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--device-config")
            .arg(&self.config)
            // The messages shown to the person at the terminal are logged at info.
            .env("POSUP_LOG", "posup_runtime::caps::prompt=info");
        for (name, value) in vars {
            cmd.arg("--var").arg(format!("{name}={value}"));
        }
        cmd.args(extra);
        cmd.output().unwrap()
    }

    /// The plugin's inventory of this terminal, through the runtime and the same
    /// grants `posup apply` gives it.
    pub async fn inventory(&self, plugin: &str) -> Inventory {
        self.inventory_with(plugin, &[]).await
    }

    /// The plugin's inventory with the server variables `vars`.
    pub async fn inventory_with(&self, plugin: &str, vars: &[(&str, &str)]) -> Inventory {
        let rt = Runtime::new(RuntimeConfig {
            cache_dir: Some(self.state.join("cache")),
            ..RuntimeConfig::default()
        })
        .unwrap();
        let component = posup_bundled::get(plugin).expect("a bundled plugin");
        let plugin = rt.load(plugin, component).unwrap();
        let info = plugin.info().await.unwrap();
        let databases = plugin.databases().await.unwrap();
        let mut config = DeviceConfig::load(&self.config).unwrap();
        config.dirs.insert("product".into(), self.product.clone());
        for name in ["staging", "backup"] {
            let dir = self.state.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            config.dirs.insert(name.into(), dir);
        }
        let env = HostEnv {
            grants: Grants::intersect(&info.capabilities, &databases, &config.allowance()),
            services: config.service_manager(&self.state.join("run")),
            kv_dir: Some(self.state.join("kv")),
            vars: Arc::new(
                vars.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..HostEnv::default()
        };
        plugin.inventory(&env).await.unwrap().unwrap()
    }

    pub fn log(&self, name: &str) -> String {
        read(&self.logs.join(name))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.state.join("run")) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "pid") {
                continue;
            }
            let Some(pid) = read(&path)
                .lines()
                .next()
                .and_then(|l| l.trim().parse::<i32>().ok())
            else {
                continue;
            };
            // Only a process that is still one of this terminal's products.
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let product = self.product.display().to_string();
            if String::from_utf8_lossy(&cmdline).contains(&product) {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", "--", &format!("-{pid}")])
                    .status();
            }
        }
    }
}

/// The steps `posup apply --json` printed: (step, result, message).
pub fn steps(out: &Output) -> Vec<(String, String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            (s("step"), s("result"), s("message"))
        })
        .collect()
}

/// The value of an inventory detail.
pub fn detail<'a>(inv: &'a Inventory, name: &str) -> Option<&'a str> {
    inv.details
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}
