//! iikoOffice (BackOffice) with the kiosk BackOffice plugin, simulated: its
//! installed tree, its start, its login to RMS and its plugin host.

use super::*;

/// What a kiosk menu holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MenuSummary {
    pub items: usize,
    pub groups: usize,
    pub kiosks: usize,
}

/// Counts the items, groups and kiosks of a `KioskMenu.xml`.
pub fn menu_summary(xml: &str) -> MenuSummary {
    MenuSummary {
        items: xml.matches("<Item ").count(),
        groups: xml.matches("<Group ").count(),
        kiosks: xml.matches("<Kiosk ").count(),
    }
}

/// Lays out an iikoOffice at `product` with the kiosk BackOffice plugin
/// `plugin_version`, its log going to `logs`. The client's menu and the RMS
/// connection already there are kept, as an update keeps them.
pub fn init_backoffice(product: &Path, logs: &Path, plugin_version: &str) -> io::Result<()> {
    check_name("plugin version", plugin_version)?;
    write_file(
        &product.join(OFFICE_EXE),
        &stand_in_binary(OFFICE_PROGRAM, IIKO_VERSION, 32 * 1024),
        0o755,
    )?;
    let plugin = PluginSpec::backoffice(plugin_version);
    for (path, bytes) in plugin.files() {
        write_file(&product.join(OFFICE_PLUGINS).join(path), &bytes, 0o644)?;
    }
    let menu = product.join(MENU_FILE);
    if !menu.exists() {
        write_file(&menu, CLIENT_MENU.as_bytes(), 0o644)?;
    }
    let rms = product.join(RMS_CONFIG);
    if !rms.exists() {
        write_file(&rms, BACKCLIENT_CONFIG.as_bytes(), 0o644)?;
    }
    fs::create_dir_all(logs).map_err(|e| with_path(logs, e))
}

/// `sim-product iiko-backoffice`: runs iikoOffice in the foreground.
#[derive(Debug, Clone, clap::Args)]
pub struct BackOfficeArgs {
    /// The BackOffice installation: `Office/`, `Rms/backclient.config.xml`.
    #[arg(long)]
    pub product: PathBuf,
    /// The folder of `backoffice.log`.
    #[arg(long)]
    pub logs: PathBuf,
}

impl BackOfficeArgs {
    pub fn run(&self) -> io::Result<()> {
        run_until_signal(BackOffice::new(&self.product, &self.logs), POLL)
    }
}

/// Runs the iikoOffice installed at `product` until SIGTERM or SIGINT.
pub fn run_backoffice(product: &Path, logs: &Path) -> io::Result<()> {
    run_until_signal(BackOffice::new(product, logs), POLL)
}

/// Runs the iikoOffice installed at `product` until `stop` is set.
pub fn run_backoffice_until(product: &Path, logs: &Path, stop: &AtomicBool) -> io::Result<()> {
    run_until_flag(BackOffice::new(product, logs), POLL, stop)
}

/// Where iikoOffice's login to RMS stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Login {
    /// Starting up; the login is due at the instant.
    Due(Instant),
    /// RMS did not answer; retrying at the instant.
    Retry(Instant),
    /// RMS refused the login; waits for the control file to change.
    Refused,
    LoggedIn,
}

/// A running simulated iikoOffice.
#[derive(Debug)]
struct BackOffice {
    product: PathBuf,
    log: ProductLog,
    control: PathBuf,
    plugins: Vec<LoadedPlugin>,
    login: Login,
    server: String,
    user: String,
}

impl BackOffice {
    fn new(product: &Path, logs: &Path) -> Self {
        Self {
            product: product.to_path_buf(),
            log: ProductLog::new(logs.join(BACKOFFICE_LOG)),
            control: control_path(product),
            plugins: Vec::new(),
            login: Login::Due(Instant::now()),
            server: String::new(),
            user: String::new(),
        }
    }

    /// Loads one plugin; the kiosk plugin also reads (or first resets) its menu.
    fn load(&mut self, dir: &Path) -> io::Result<()> {
        let shown = dir.file_name().unwrap_or_default().to_string_lossy();
        self.log.info(
            "PluginHost",
            &format!("Loading plugin {shown} from Plugins\\{shown}"),
        )?;
        let plugin = match load_plugin(dir) {
            Ok(p) => p,
            Err(why) => {
                return self.log.error(
                    "PluginHost",
                    &format!("Plugin {shown} failed to start: {why}"),
                );
            }
        };
        if let Some(menu_file) = plugin.setting("MenuFile") {
            let menu = plugin.dir.join(menu_file.replace('\\', "/"));
            if plugin
                .setting("ResetMenuOnStart")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
            {
                write_file(&menu, DEFAULT_MENU.as_bytes(), 0o644)?;
                self.log.warn(
                    &plugin.name,
                    &format!("Kiosk menu {menu_file} reset to the default (ResetMenuOnStart)"),
                )?;
            }
            match fs::read_to_string(&menu) {
                Ok(xml) => {
                    let m = menu_summary(&xml);
                    self.log.info(
                        &plugin.name,
                        &format!(
                            "Kiosk menu loaded from {menu_file}: {} items in {} groups, {} kiosks configured",
                            m.items, m.groups, m.kiosks
                        ),
                    )?;
                }
                Err(e) => {
                    return self.log.error(
                        &plugin.name,
                        &format!("Kiosk menu {menu_file} cannot be read: {e}"),
                    );
                }
            }
        }
        self.log.info(
            "PluginHost",
            &format!("Plugin {} {} started", plugin.name, plugin.version),
        )?;
        self.plugins.push(plugin);
        Ok(())
    }

    fn try_login(&mut self) -> io::Result<()> {
        let wanted = read_control(&self.control)
            .get("rms")
            .and_then(|s| RmsLogin::parse(s))
            .unwrap_or(RmsLogin::Ok);
        let server = self.server.clone();
        match wanted {
            RmsLogin::Ok => {
                self.log.info(
                    "RmsConnection",
                    &format!("Connecting to RMS server {server}"),
                )?;
                self.log.info(
                    "RmsConnection",
                    &format!(
                        "Logged in to RMS {server} as {} (server version {IIKO_VERSION})",
                        self.user
                    ),
                )?;
                for p in &self.plugins {
                    if p.setting("MenuFile").is_some() {
                        self.log.info(
                            &p.name,
                            &format!("Kiosk settings version {} published to RMS", p.version),
                        )?;
                    }
                }
                self.login = Login::LoggedIn;
            }
            RmsLogin::Refused => {
                if self.login != Login::Refused {
                    self.log.error(
                        "RmsConnection",
                        &format!(
                            "Login to RMS {server} as {} refused: wrong user name or password",
                            self.user
                        ),
                    )?;
                }
                self.login = Login::Refused;
            }
            RmsLogin::Unreachable => {
                self.log.warn(
                    "RmsConnection",
                    &format!(
                        "Cannot connect to RMS server {server}: connection timed out; retrying in {} s",
                        RMS_RETRY.as_secs()
                    ),
                )?;
                self.login = Login::Retry(Instant::now() + RMS_RETRY);
            }
        }
        Ok(())
    }
}

impl SimProcess for BackOffice {
    fn start(&mut self) -> io::Result<()> {
        let exe = self.product.join(OFFICE_EXE);
        let version = stand_in_version(&exe, OFFICE_PROGRAM);
        self.log.info(
            "BackOffice",
            &format!(
                "Starting iikoOffice {}",
                version.as_deref().unwrap_or("(unknown version)")
            ),
        )?;
        if let Err(e) = version {
            self.log
                .error("BackOffice", &format!("Installation is damaged: {e}"))?;
            return Err(e);
        }
        let config_file = self.product.join(RMS_CONFIG);
        let config = fs::read_to_string(&config_file).unwrap_or_default();
        self.server = xml_value(&config, "ServerUrl")
            .unwrap_or_default()
            .to_owned();
        self.user = xml_value(&config, "Login").unwrap_or_default().to_owned();
        if self.server.is_empty() {
            self.log.error(
                "RmsConnection",
                &format!("No RMS server is set in {RMS_CONFIG}"),
            )?;
        }
        for dir in plugin_dirs(&self.product.join(OFFICE_PLUGINS)) {
            self.load(&dir)?;
        }
        self.login = Login::Due(Instant::now() + START_DELAY);
        Ok(())
    }

    fn poll(&mut self) -> io::Result<()> {
        if self.server.is_empty() {
            return Ok(());
        }
        match self.login {
            Login::Due(at) | Login::Retry(at) if Instant::now() >= at => self.try_login(),
            Login::Refused => {
                let changed = read_control(&self.control)
                    .get("rms")
                    .and_then(|s| RmsLogin::parse(s))
                    .is_some_and(|r| r != RmsLogin::Refused);
                if changed { self.try_login() } else { Ok(()) }
            }
            _ => Ok(()),
        }
    }

    fn stop(&mut self, why: &str) -> io::Result<()> {
        self.log
            .info("BackOffice", &format!("Stopping iikoOffice ({why})"))?;
        self.log.info("BackOffice", "iikoOffice stopped")
    }
}

/// iikoOffice's connection to the store's RMS.
const BACKCLIENT_CONFIG: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<BackClientConfig>
  <!-- The store's RMS server and the account iikoOffice logs in with. -->
  <ServerUrl>https://na-lesnoy.iiko.it:443/resto</ServerUrl>
  <Login>kiosk-admin</Login>
  <Language>ru</Language>
</BackClientConfig>
"#;

/// What a plugin with `ResetMenuOnStart` puts in place of the client's menu.
const DEFAULT_MENU: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<KioskMenu organization="" updated="">
  <Kiosks />
  <Groups />
</KioskMenu>
"#;

/// The client's kiosk menu of a new installation: what an update must not lose.
const CLIENT_MENU: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<KioskMenu organization="Pizzeria Na Lesnoy" updated="2026-10-01T09:12:00">
  <Kiosks>
    <Kiosk id="KIOSK-01" name="Hall, left" terminalGroup="Hall" priceCategory="Kiosk" />
    <Kiosk id="KIOSK-02" name="Hall, right" terminalGroup="Hall" priceCategory="Kiosk" />
  </Kiosks>
  <Groups>
    <Group name="Pizza" order="1">
      <Item sku="P-001" name="Margherita 30 cm" price="450.00" />
      <Item sku="P-002" name="Pepperoni 30 cm" price="520.00" />
      <Item sku="P-003" name="Four cheeses 30 cm" price="560.00" />
    </Group>
    <Group name="Combo" order="2">
      <Item sku="C-010" name="Lunch combo" price="390.00" />
      <Item sku="C-011" name="Family combo" price="1290.00" />
    </Group>
    <Group name="Drinks" order="3">
      <Item sku="D-100" name="Morse 0.4" price="120.00" />
      <Item sku="D-101" name="Cola 0.5" price="110.00" />
      <Item sku="D-102" name="Americano" price="140.00" />
    </Group>
  </Groups>
</KioskMenu>
"#;
