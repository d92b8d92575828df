//! iikoFront with the kiosk Front plugin, simulated: its installed tree, its
//! start against the kiosk settings RMS holds, and its plugin host.

use super::*;

/// Lays out an iikoFront at `product` with the kiosk Front plugin
/// `plugin_version`, which needs the kiosk settings of BackOffice plugin
/// `needs_backoffice` or newer, and the cashier's desktop; its log goes to `logs`.
pub fn init_front(
    product: &Path,
    logs: &Path,
    plugin_version: &str,
    needs_backoffice: &str,
) -> io::Result<()> {
    check_name("plugin version", plugin_version)?;
    check_name("BackOffice plugin version", needs_backoffice)?;
    write_file(
        &product.join(FRONT_EXE),
        &stand_in_binary(FRONT_PROGRAM, IIKO_VERSION, 32 * 1024),
        0o755,
    )?;
    let plugin = PluginSpec::front(plugin_version, needs_backoffice);
    for (path, bytes) in plugin.files() {
        write_file(&product.join(FRONT_PLUGINS).join(path), &bytes, 0o644)?;
    }
    let config = product.join(FRONT_CONFIG);
    if !config.exists() {
        write_file(&config, FRONT_SETTINGS.as_bytes(), 0o644)?;
    }
    let desktop = product.join(DESKTOP);
    write_file(
        &desktop.join("iikoFront.lnk"),
        b"[InternetShortcut]\nURL=file:///C:/Program%20Files/iiko/iikoRMS/Front.Net/iikoFront.Net.exe\n",
        0o644,
    )?;
    write_file(
        &desktop.join("Store mode.url"),
        b"[InternetShortcut]\nURL=https://store.example.local:8443/\n",
        0o644,
    )?;
    fs::create_dir_all(logs).map_err(|e| with_path(logs, e))
}

/// `sim-product iiko-front`: runs iikoFront in the foreground.
#[derive(Debug, Clone, clap::Args)]
pub struct FrontArgs {
    /// The Front installation: `Front.Net/`, `CashServer/config.xml`, `Desktop/`.
    #[arg(long)]
    pub product: PathBuf,
    /// The folder of `cash-server.log`.
    #[arg(long)]
    pub logs: PathBuf,
}

impl FrontArgs {
    pub fn run(&self) -> io::Result<()> {
        run_until_signal(Front::new(&self.product, &self.logs), POLL)
    }
}

/// Runs the iikoFront installed at `product` until SIGTERM or SIGINT.
pub fn run_front(product: &Path, logs: &Path) -> io::Result<()> {
    run_until_signal(Front::new(product, logs), POLL)
}

/// Runs the iikoFront installed at `product` until `stop` is set.
pub fn run_front_until(product: &Path, logs: &Path, stop: &AtomicBool) -> io::Result<()> {
    run_until_flag(Front::new(product, logs), POLL, stop)
}

/// A running simulated iikoFront.
#[derive(Debug)]
struct Front {
    product: PathBuf,
    log: ProductLog,
    control: PathBuf,
    /// When the plugins are loaded; `None` once that happened.
    plugins_due: Option<Instant>,
}

impl Front {
    fn new(product: &Path, logs: &Path) -> Self {
        Self {
            product: product.to_path_buf(),
            log: ProductLog::new(logs.join(FRONT_LOG)),
            control: control_path(product),
            plugins_due: None,
        }
    }

    /// Starts one plugin; `true` when it runs.
    fn start_plugin(&self, dir: &Path) -> io::Result<bool> {
        let shown = dir.file_name().unwrap_or_default().to_string_lossy();
        self.log.info(
            "PluginHost",
            &format!("Loading plugin {shown} from Plugins\\{shown} (API V8)"),
        )?;
        let plugin = match load_plugin(dir) {
            Ok(p) => p,
            Err(why) => {
                self.log.error(
                    "PluginHost",
                    &format!("Plugin {shown} failed to start: {why}"),
                )?;
                return Ok(false);
            }
        };
        if let Some(needs) = &plugin.needs_backoffice {
            let in_rms = read_control(&self.control)
                .get("rms-kiosk-settings")
                .cloned()
                .unwrap_or_else(|| needs.clone());
            if compare_versions(&in_rms, needs).is_lt() {
                self.log.error(
                    &plugin.name,
                    &format!(
                        "Version error: the kiosk settings in RMS have version {in_rms}, {} {} needs {needs} or newer; \
                         update the BackOffice plugin, start BackOffice and log in to RMS first",
                        plugin.name, plugin.version
                    ),
                )?;
                self.log.error(
                    "PluginHost",
                    &format!("Plugin {} crashed on start with exit code 1", plugin.name),
                )?;
                return Ok(false);
            }
            self.log.info(
                &plugin.name,
                &format!("Kiosk settings version {in_rms} read from RMS"),
            )?;
        }
        self.log.info(
            "PluginHost",
            &format!("Plugin {} {} started", plugin.name, plugin.version),
        )?;
        Ok(true)
    }
}

impl SimProcess for Front {
    fn start(&mut self) -> io::Result<()> {
        let exe = self.product.join(FRONT_EXE);
        let version = stand_in_version(&exe, FRONT_PROGRAM);
        self.log.info(
            "CashServer",
            &format!(
                "Starting iikoFront {}",
                version.as_deref().unwrap_or("(unknown version)")
            ),
        )?;
        if let Err(e) = version {
            self.log
                .error("CashServer", &format!("Installation is damaged: {e}"))?;
            return Err(e);
        }
        let config = fs::read_to_string(self.product.join(FRONT_CONFIG)).unwrap_or_default();
        self.log.info(
            "CashServer",
            &format!(
                "Terminal {}, RMS server {}",
                xml_value(&config, "TerminalId").unwrap_or("(none)"),
                xml_value(&config, "ServerUrl").unwrap_or("(none)")
            ),
        )?;
        self.plugins_due = Some(Instant::now() + START_DELAY);
        Ok(())
    }

    fn poll(&mut self) -> io::Result<()> {
        if self.plugins_due.is_some_and(|t| Instant::now() >= t) {
            self.plugins_due = None;
            let dirs = plugin_dirs(&self.product.join(FRONT_PLUGINS));
            let mut running = 0;
            for dir in &dirs {
                if self.start_plugin(dir)? {
                    running += 1;
                }
            }
            self.log.info(
                "CashServer",
                &format!(
                    "iikoFront is ready: {running} of {} plugins running",
                    dirs.len()
                ),
            )?;
        }
        Ok(())
    }

    fn stop(&mut self, why: &str) -> io::Result<()> {
        self.log
            .info("CashServer", &format!("Stopping iikoFront ({why})"))?;
        self.log.info("CashServer", "iikoFront stopped")
    }
}

/// iikoFront's own settings.
const FRONT_SETTINGS: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<config>
  <TerminalId>FRONT-01</TerminalId>
  <ServerUrl>https://na-lesnoy.iiko.it:443/resto</ServerUrl>
  <Language>ru-RU</Language>
  <CashRegister>atol-usb</CashRegister>
</config>
"#;
