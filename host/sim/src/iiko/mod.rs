//! iiko BackOffice (iikoOffice) and iikoFront with the kiosk vendor's plugins
//! (PRODUCTS.md §2), simulated.
//!
//! The field procedure these simulations let a plugin follow:
//! - the BackOffice plugin keeps the client's kiosk menu in its configuration
//!   file, which an update can lose; after the update BackOffice is started and
//!   logs in to the store's RMS, which then holds the new plugin's kiosk settings;
//! - the iikoFront plugin is updated only after that: started against an RMS that
//!   still holds the old settings it fails with a version error;
//! - after an update iikoFront is started and its log must show the plugin
//!   started, with no failure and no errors.
//!
//! Both products are Windows programs; their trees keep the Windows layout below
//! the product folder (`Office\Plugins\…`, `Front.Net\Plugins\…`, the cashier's
//! `Desktop`), written with `/`. Plugins follow iikoFront API's folder rules: one
//! folder per plugin under `Plugins`, holding `Manifest.xml` (`FileName`,
//! `TypeName`, `ApiVersion`, `LicenseModuleId`, and here `Version`) and the
//! assembly it names. The exact layout and log lines are in the plugin READMEs
//! (plugins/iiko-backoffice, plugins/iiko-front).
//!
//! Control files (`<product>.sim-control`) stand in for the world around the
//! products: `rms = ok | refused | unreachable` decides how BackOffice's login
//! to RMS goes; `rms-kiosk-settings = <version>` tells iikoFront which version of
//! the kiosk settings RMS holds (when unset, the version its plugin needs).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::process::{
    SimProcess, check_name, compare_versions, control_path, read_control, run_until_flag,
    run_until_signal, set_control, stand_in_binary, stand_in_version, with_path, write_file,
    xml_value,
};
use crate::product_log::ProductLog;

mod backoffice;
mod front;

pub use backoffice::{
    BackOfficeArgs, MenuSummary, init_backoffice, menu_summary, run_backoffice,
    run_backoffice_until,
};
pub use front::{FrontArgs, init_front, run_front, run_front_until};

/// iikoOffice's log, in the log folder (`%AppData%\iiko\Rms\Logs`).
pub const BACKOFFICE_LOG: &str = "backoffice.log";
/// iikoFront's log, in the log folder (`%AppData%\iiko\CashServer\Logs`).
pub const FRONT_LOG: &str = "cash-server.log";
/// The iikoOffice program, in the BackOffice product folder.
pub const OFFICE_EXE: &str = "Office/BackOffice.exe";
/// iikoOffice's plugin folder.
pub const OFFICE_PLUGINS: &str = "Office/Plugins";
/// The kiosk vendor's BackOffice plugin (its folder name and assembly name).
pub const BACKOFFICE_PLUGIN: &str = "Kiosk.BackOffice";
/// The client's kiosk menu: the BackOffice plugin's configuration file.
pub const MENU_FILE: &str = "Office/Plugins/Kiosk.BackOffice/Config/KioskMenu.xml";
/// iikoOffice's connection to RMS (`%AppData%\iiko\Rms\config`).
pub const RMS_CONFIG: &str = "Rms/backclient.config.xml";
/// The iikoFront program, in the Front product folder.
pub const FRONT_EXE: &str = "Front.Net/iikoFront.Net.exe";
/// iikoFront's plugin folder.
pub const FRONT_PLUGINS: &str = "Front.Net/Plugins";
/// The kiosk vendor's iikoFront plugin.
pub const FRONT_PLUGIN: &str = "Kiosk.Front";
/// iikoFront's own settings (`%AppData%\iiko\CashServer\config.xml`).
pub const FRONT_CONFIG: &str = "CashServer/config.xml";
/// The cashier's desktop (`C:\Users\<cashier>\Desktop`).
pub const DESKTOP: &str = "Desktop";
/// The iiko release the simulated programs are.
pub const IIKO_VERSION: &str = "8.9.6021.0";
/// How often the running programs look at their control files.
pub const POLL: Duration = Duration::from_millis(100);
/// How long the programs take to start before they load plugins and log in.
pub const START_DELAY: Duration = Duration::from_millis(300);
/// How often BackOffice retries an unreachable RMS.
const RMS_RETRY: Duration = Duration::from_secs(1);

const OFFICE_PROGRAM: &str = "iikoOffice";
const FRONT_PROGRAM: &str = "iikoFront";
const BACKOFFICE_TYPE: &str = "Kiosk.BackOffice.KioskBackOfficePlugin";
const FRONT_TYPE: &str = "Kiosk.Front.KioskFrontPlugin";

/// How BackOffice's login to RMS goes, set through its control file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RmsLogin {
    /// RMS accepts the login.
    Ok,
    /// RMS refuses the user name or password.
    Refused,
    /// RMS does not answer; BackOffice keeps retrying.
    Unreachable,
}

impl RmsLogin {
    pub fn as_str(self) -> &'static str {
        match self {
            RmsLogin::Ok => "ok",
            RmsLogin::Refused => "refused",
            RmsLogin::Unreachable => "unreachable",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [RmsLogin::Ok, RmsLogin::Refused, RmsLogin::Unreachable]
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// Decides how the BackOffice installed at `product` logs in to RMS from now on.
pub fn set_rms_login(product: &Path, login: RmsLogin) -> io::Result<()> {
    set_control(&control_path(product), "rms", login.as_str())
}

/// Tells the iikoFront installed at `product` which version of the kiosk
/// settings the site's RMS holds (the BackOffice plugin that last published them).
pub fn set_rms_kiosk_settings(product: &Path, version: &str) -> io::Result<()> {
    check_name("kiosk settings version", version)?;
    set_control(&control_path(product), "rms-kiosk-settings", version)
}

/// A vendor plugin's files, as iikoOffice and iikoFront load them.
#[derive(Debug, Clone)]
struct PluginSpec {
    name: &'static str,
    type_name: &'static str,
    license: &'static str,
    version: String,
    needs_backoffice: Option<String>,
}

impl PluginSpec {
    fn backoffice(version: &str) -> Self {
        Self {
            name: BACKOFFICE_PLUGIN,
            type_name: BACKOFFICE_TYPE,
            license: "21016318",
            version: version.to_owned(),
            needs_backoffice: None,
        }
    }

    fn front(version: &str, needs_backoffice: &str) -> Self {
        Self {
            name: FRONT_PLUGIN,
            type_name: FRONT_TYPE,
            license: "21016319",
            version: version.to_owned(),
            needs_backoffice: Some(needs_backoffice.to_owned()),
        }
    }

    /// Paths below the plugin folder's parent, and contents. The client's menu is
    /// not among them: it is written once, by the installation.
    fn files(&self) -> Vec<(String, Vec<u8>)> {
        let Self { name, version, .. } = self;
        let needs = self
            .needs_backoffice
            .as_ref()
            .map(|v| format!("  <RequiredBackOfficeVersion>{v}</RequiredBackOfficeVersion>\n"))
            .unwrap_or_default();
        let manifest = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Manifest>\n  <FileName>{name}.dll</FileName>\n  \
             <TypeName>{}</TypeName>\n  <ApiVersion>V8</ApiVersion>\n  <LicenseModuleId>{}</LicenseModuleId>\n  \
             <Version>{version}</Version>\n{needs}</Manifest>\n",
            self.type_name, self.license
        );
        let mut assembly = format!(
            "MZ SIM-ASSEMBLY {name} {version}\ntype {}\n",
            self.type_name
        )
        .into_bytes();
        assembly.extend(stand_in_binary(name, version, 12 * 1024));
        let settings = if self.name == BACKOFFICE_PLUGIN {
            "    <add key=\"MenuFile\" value=\"Config\\KioskMenu.xml\" />\n    \
             <add key=\"ResetMenuOnStart\" value=\"false\" />\n"
        } else {
            "    <add key=\"KioskSettingsSource\" value=\"RMS\" />\n    \
             <add key=\"OrderTimeoutSeconds\" value=\"120\" />\n"
        };
        let config = format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<configuration>\n  <appSettings>\n{settings}  </appSettings>\n</configuration>\n"
        );
        vec![
            (format!("{name}/Manifest.xml"), manifest.into_bytes()),
            (format!("{name}/{name}.dll"), assembly),
            (format!("{name}/{name}.dll.config"), config.into_bytes()),
        ]
    }
}

/// A plugin as iikoOffice or iikoFront found it in its folder.
#[derive(Debug, Clone)]
struct LoadedPlugin {
    name: String,
    version: String,
    dir: PathBuf,
    needs_backoffice: Option<String>,
    settings: Vec<(String, String)>,
}

impl LoadedPlugin {
    fn setting(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Loads the plugin in `dir` the way iikoFront API's plugin host does; an error
/// is the host's failure message.
fn load_plugin(dir: &Path) -> Result<LoadedPlugin, String> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manifest = fs::read_to_string(dir.join("Manifest.xml"))
        .map_err(|e| format!("cannot read Manifest.xml: {e}"))?;
    let field = |tag: &str| {
        xml_value(&manifest, tag)
            .map(str::to_owned)
            .ok_or_else(|| format!("Manifest.xml has no <{tag}>"))
    };
    let file_name = field("FileName")?;
    let type_name = field("TypeName")?;
    let api = field("ApiVersion")?;
    let version = field("Version")?;
    if !api.starts_with('V') {
        return Err(format!("Manifest.xml: unknown ApiVersion {api}"));
    }
    let assembly_name = file_name.trim_end_matches(".dll");
    let assembly = fs::read(dir.join(&file_name)).map_err(|_| {
        format!("Could not load file or assembly '{assembly_name}' or one of its dependencies")
    })?;
    let text = String::from_utf8_lossy(&assembly);
    let declares = text
        .lines()
        .take(8)
        .any(|l| l.strip_prefix("type ").map(str::trim) == Some(type_name.as_str()));
    if !declares {
        return Err(format!(
            "Could not load type '{type_name}' from assembly '{assembly_name}, Version={version}'"
        ));
    }
    let settings = fs::read_to_string(dir.join(format!("{file_name}.config")))
        .map(|c| app_settings(&c))
        .unwrap_or_default();
    Ok(LoadedPlugin {
        name,
        version,
        dir: dir.to_path_buf(),
        needs_backoffice: xml_value(&manifest, "RequiredBackOfficeVersion").map(str::to_owned),
        settings,
    })
}

/// The `<add key="…" value="…" />` pairs of a .NET configuration file.
fn app_settings(config: &str) -> Vec<(String, String)> {
    let attr = |element: &str, name: &str| {
        let start = element.find(&format!("{name}=\""))? + name.len() + 2;
        let len = element[start..].find('"')?;
        Some(element[start..start + len].to_owned())
    };
    config
        .split("<add ")
        .skip(1)
        .filter_map(|e| {
            let element = &e[..e.find("/>").unwrap_or(e.len())];
            Some((attr(element, "key")?, attr(element, "value")?))
        })
        .collect()
}

/// Plugin folders below `plugins`, sorted by name.
fn plugin_dirs(plugins: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(plugins)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Running, wait_for};

    /// The product installed at `product`, run by `run` on a thread.
    fn run(
        run: fn(&Path, &Path, &AtomicBool) -> io::Result<()>,
        product: &Path,
        logs: &Path,
    ) -> Running {
        let (product, logs) = (product.to_path_buf(), logs.to_path_buf());
        Running::spawn(move |stop| run(&product, &logs, stop))
    }

    fn messages(log: &str) -> Vec<&str> {
        log.lines().map(|l| &l[24..]).collect()
    }

    #[test]
    fn an_installed_backoffice_looks_like_one() {
        let tmp = tempfile::tempdir().unwrap();
        let product = tmp.path().join("office");
        init_backoffice(&product, &tmp.path().join("logs"), "3.1.0").unwrap();
        let manifest = fs::read_to_string(
            product
                .join(OFFICE_PLUGINS)
                .join("Kiosk.BackOffice/Manifest.xml"),
        )
        .unwrap();
        assert_eq!(xml_value(&manifest, "Version"), Some("3.1.0"));
        assert_eq!(
            xml_value(&manifest, "FileName"),
            Some("Kiosk.BackOffice.dll")
        );
        let menu = fs::read_to_string(product.join(MENU_FILE)).unwrap();
        assert_eq!(
            menu_summary(&menu),
            MenuSummary {
                items: 8,
                groups: 3,
                kiosks: 2
            }
        );
        // A reinstallation keeps the client's menu.
        fs::write(
            product.join(MENU_FILE),
            "<KioskMenu><Kiosk id=\"X\" /></KioskMenu>",
        )
        .unwrap();
        init_backoffice(&product, &tmp.path().join("logs"), "3.2.0").unwrap();
        assert_eq!(
            menu_summary(&fs::read_to_string(product.join(MENU_FILE)).unwrap()).kiosks,
            1
        );
    }

    #[test]
    fn backoffice_starts_loads_the_menu_and_logs_in() {
        let tmp = tempfile::tempdir().unwrap();
        let (product, logs) = (tmp.path().join("office"), tmp.path().join("logs"));
        init_backoffice(&product, &logs, "3.1.0").unwrap();
        let bo = run(run_backoffice_until, &product, &logs);
        let log = wait_for(&logs.join(BACKOFFICE_LOG), |t| {
            t.contains("published to RMS")
        });
        let m = messages(&log);
        assert_eq!(m[0], "INFO  [BackOffice] Starting iikoOffice 8.9.6021.0");
        assert!(m.contains(&"INFO  [Kiosk.BackOffice] Kiosk menu loaded from Config\\KioskMenu.xml: 8 items in 3 groups, 2 kiosks configured"), "{log}");
        assert!(m.contains(&"INFO  [PluginHost] Plugin Kiosk.BackOffice 3.1.0 started"));
        assert!(m.contains(&"INFO  [RmsConnection] Logged in to RMS https://na-lesnoy.iiko.it:443/resto as kiosk-admin (server version 8.9.6021.0)"));
        assert!(
            m.contains(&"INFO  [Kiosk.BackOffice] Kiosk settings version 3.1.0 published to RMS")
        );
        assert!(!log.contains("ERROR"));
        bo.stop().unwrap();
        let log = fs::read_to_string(logs.join(BACKOFFICE_LOG)).unwrap();
        assert_eq!(
            messages(&log).last().unwrap(),
            &"INFO  [BackOffice] iikoOffice stopped"
        );
    }

    #[test]
    fn rms_login_follows_the_control_file() {
        let tmp = tempfile::tempdir().unwrap();
        let (product, logs) = (tmp.path().join("office"), tmp.path().join("logs"));
        init_backoffice(&product, &logs, "3.1.0").unwrap();
        set_rms_login(&product, RmsLogin::Unreachable).unwrap();
        let bo = run(run_backoffice_until, &product, &logs);
        wait_for(&logs.join(BACKOFFICE_LOG), |t| {
            t.contains("connection timed out")
        });
        set_rms_login(&product, RmsLogin::Refused).unwrap();
        wait_for(&logs.join(BACKOFFICE_LOG), |t| {
            t.contains("wrong user name or password")
        });
        set_rms_login(&product, RmsLogin::Ok).unwrap();
        let log = wait_for(&logs.join(BACKOFFICE_LOG), |t| {
            t.contains("Logged in to RMS")
        });
        assert_eq!(
            log.matches("refused").count(),
            1,
            "a refusal is logged once: {log}"
        );
        bo.stop().unwrap();
    }

    #[test]
    fn a_plugin_that_resets_the_menu_loses_it() {
        let tmp = tempfile::tempdir().unwrap();
        let (product, logs) = (tmp.path().join("office"), tmp.path().join("logs"));
        init_backoffice(&product, &logs, "3.1.0").unwrap();
        let config = product
            .join(OFFICE_PLUGINS)
            .join("Kiosk.BackOffice/Kiosk.BackOffice.dll.config");
        let text = fs::read_to_string(&config).unwrap().replace(
            "\"ResetMenuOnStart\" value=\"false\"",
            "\"ResetMenuOnStart\" value=\"true\"",
        );
        fs::write(&config, text).unwrap();
        let bo = run(run_backoffice_until, &product, &logs);
        let log = wait_for(&logs.join(BACKOFFICE_LOG), |t| {
            t.contains("Logged in to RMS")
        });
        assert!(
            log.contains("0 items in 0 groups, 0 kiosks configured"),
            "{log}"
        );
        assert_eq!(
            menu_summary(&fs::read_to_string(product.join(MENU_FILE)).unwrap()),
            MenuSummary::default()
        );
        bo.stop().unwrap();
    }

    #[test]
    fn a_wrong_type_name_fails_the_plugin() {
        let tmp = tempfile::tempdir().unwrap();
        let (product, logs) = (tmp.path().join("front"), tmp.path().join("logs"));
        init_front(&product, &logs, "2.4.0", "3.2.0").unwrap();
        let manifest = product.join(FRONT_PLUGINS).join("Kiosk.Front/Manifest.xml");
        let text = fs::read_to_string(&manifest)
            .unwrap()
            .replace(FRONT_TYPE, "Kiosk.Front.Plugin");
        fs::write(&manifest, text).unwrap();
        let front = run(run_front_until, &product, &logs);
        let log = wait_for(&logs.join(FRONT_LOG), |t| t.contains("iikoFront is ready"));
        assert!(log.contains("ERROR [PluginHost] Plugin Kiosk.Front failed to start: Could not load type 'Kiosk.Front.Plugin' from assembly 'Kiosk.Front, Version=2.4.0'"), "{log}");
        assert!(log.contains("iikoFront is ready: 0 of 1 plugins running"));
        front.stop().unwrap();
    }

    #[test]
    fn front_plugin_fails_with_a_version_error_against_old_rms_settings() {
        let tmp = tempfile::tempdir().unwrap();
        let (product, logs) = (tmp.path().join("front"), tmp.path().join("logs"));
        init_front(&product, &logs, "2.4.0", "3.2.0").unwrap();
        assert!(product.join("Desktop/iikoFront.lnk").is_file());
        set_rms_kiosk_settings(&product, "3.1.0").unwrap();
        let front = run(run_front_until, &product, &logs);
        let log = wait_for(&logs.join(FRONT_LOG), |t| t.contains("iikoFront is ready"));
        assert!(
            log.contains(
                "ERROR [Kiosk.Front] Version error: the kiosk settings in RMS have version 3.1.0"
            ),
            "{log}"
        );
        assert!(
            log.contains("ERROR [PluginHost] Plugin Kiosk.Front crashed on start with exit code 1")
        );
        front.stop().unwrap();

        // Once RMS holds the new settings the plugin starts.
        set_rms_kiosk_settings(&product, "3.2.0").unwrap();
        let front = run(run_front_until, &product, &logs);
        let log = wait_for(&logs.join(FRONT_LOG), |t| {
            t.matches("iikoFront is ready").count() == 2
        });
        assert!(
            log.contains("INFO  [PluginHost] Plugin Kiosk.Front 2.4.0 started"),
            "{log}"
        );
        assert!(log.contains("iikoFront is ready: 1 of 1 plugins running"));
        front.stop().unwrap();
    }

    #[test]
    fn app_settings_are_read() {
        let s = app_settings(
            "<appSettings><add key=\"A\" value=\"1\" />\n<add value=\"2\" key=\"B\"/></appSettings>",
        );
        assert_eq!(s, vec![("A".into(), "1".into()), ("B".into(), "2".into())]);
    }
}
