//! The iiko self-service kiosk (PRODUCTS.md §2), simulated.
//!
//! What the field procedure needs from a kiosk, and what this simulation gives:
//! before an update, its log tells whether a customer is at it (`menu browsing`,
//! `payment`); after the update, it is started and its log must show `IDLE` (cash
//! shift open) or `maintenance`, without errors.
//!
//! The installed tree (`init_kiosk`), the update packages (`kiosk_package`) and
//! the log lines are described in the crate's README; the kiosk plugin relies on
//! them exactly.
//!
//! The running kiosk ([`run_kiosk`]) starts in `STARTING`, loads its menu after
//! [`START_DELAY`] and goes to `IDLE`, or to `maintenance` when the site's
//! configuration says so, or stays in `STARTING` with an `ERROR` line when the
//! package's `app/kiosk.json` sets `fail_on_start`. A control file (see
//! [`control_path`]) plays the customer: it holds `idle`, `menu browsing` or
//! `payment`, and the kiosk follows it within [`POLL`] while it serves customers.

use crate::process::{SimProcess, run_until_flag, run_until_signal, with_path, write_atomically};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::product_log::ProductLog;

/// The kiosk's log, in the log folder.
pub const LOG_FILE: &str = "kiosk.log";
/// The installed version, in the product folder: one line, e.g. `7.4.2`.
pub const VERSION_FILE: &str = "version";
/// The site's settings, in the product folder; kept across updates.
pub const CONFIG_FILE: &str = "config/kiosk.config.xml";
/// Settings shipped with the program, in the product folder.
pub const SETTINGS_FILE: &str = "app/kiosk.json";
/// How often the running kiosk looks at its control file.
pub const POLL: Duration = Duration::from_millis(100);
/// How long the kiosk stays in `STARTING` while it loads its menu.
pub const START_DELAY: Duration = Duration::from_millis(300);

const MENU_ITEMS: u32 = 48;
const MENU_CATEGORIES: u32 = 6;

/// The states of the kiosk, spelled as its log spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KioskState {
    Stopped,
    Starting,
    /// Waiting for a customer, cash shift open.
    Idle,
    /// Switched off for customers by the site's configuration.
    Maintenance,
    /// A customer is choosing from the menu.
    MenuBrowsing,
    /// A customer is paying.
    Payment,
}

impl KioskState {
    pub fn as_str(self) -> &'static str {
        match self {
            KioskState::Stopped => "STOPPED",
            KioskState::Starting => "STARTING",
            KioskState::Idle => "IDLE",
            KioskState::Maintenance => "maintenance",
            KioskState::MenuBrowsing => "menu browsing",
            KioskState::Payment => "payment",
        }
    }

    /// Parses a state as the log or a control file writes it (case does not matter).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        [
            KioskState::Stopped,
            KioskState::Starting,
            KioskState::Idle,
            KioskState::Maintenance,
            KioskState::MenuBrowsing,
            KioskState::Payment,
        ]
        .into_iter()
        .find(|k| k.as_str().eq_ignore_ascii_case(s))
    }

    /// The states the control file can ask for: those of a kiosk serving customers.
    fn serves_customers(self) -> bool {
        matches!(
            self,
            KioskState::Idle | KioskState::MenuBrowsing | KioskState::Payment
        )
    }
}

impl std::fmt::Display for KioskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The control file of the kiosk installed at `product`: `<product>.sim-control`,
/// beside the product folder rather than in it, so it stays put while an update
/// replaces the folder's contents, and each of several kiosks has its own.
pub fn control_path(product: &Path) -> PathBuf {
    let mut name = product.as_os_str().to_owned();
    name.push(".sim-control");
    PathBuf::from(name)
}

/// Puts a (simulated) customer at the kiosk: `MenuBrowsing` or `Payment`, or
/// `Idle` when the customer has gone.
pub fn set_customer(product: &Path, state: KioskState) -> io::Result<()> {
    if !state.serves_customers() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "kiosk control: {state} is not a customer state (idle, menu browsing, payment)"
            ),
        ));
    }
    write_atomically(&control_path(product), format!("{state}\n").as_bytes())
}

/// Switches maintenance mode in the site configuration; the kiosk reads it when
/// it starts.
pub fn set_maintenance(product: &Path, on: bool) -> io::Result<()> {
    let file = product.join(CONFIG_FILE);
    let text = fs::read_to_string(&file).map_err(|e| with_path(&file, e))?;
    let current = xml_value(&text, "MaintenanceMode").ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: no <MaintenanceMode> element", file.display()),
        )
    })?;
    let text = text.replacen(
        &format!("<MaintenanceMode>{current}</MaintenanceMode>"),
        &format!("<MaintenanceMode>{on}</MaintenanceMode>"),
        1,
    );
    write_atomically(&file, text.as_bytes())
}

/// The state named by the last `State changed:` line of a kiosk log's text.
pub fn last_state(log: &str) -> Option<&str> {
    log.lines()
        .rev()
        .find_map(|l| {
            l.split_once("State changed: ")
                .and_then(|(_, s)| s.split_once(" -> "))
        })
        .map(|(_, to)| to.trim_end())
}

/// Lays out an installed kiosk of `version` at `product`, its logs going to
/// `logs`. A configuration already there is kept, as an update keeps it.
pub fn init_kiosk(product: &Path, logs: &Path, version: &str) -> io::Result<()> {
    check_version(version)?;
    for (path, bytes, mode) in app_files(version, false) {
        let file = product.join(&path);
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir).map_err(|e| with_path(dir, e))?;
        }
        fs::write(&file, &bytes).map_err(|e| with_path(&file, e))?;
        set_mode(&file, mode)?;
    }
    let version_file = product.join(VERSION_FILE);
    fs::write(&version_file, format!("{version}\n")).map_err(|e| with_path(&version_file, e))?;
    let config = product.join(CONFIG_FILE);
    if !config.exists() {
        fs::create_dir_all(config.parent().expect("the config file is in a folder"))
            .map_err(|e| with_path(&config, e))?;
        fs::write(&config, DEFAULT_CONFIG).map_err(|e| with_path(&config, e))?;
    }
    fs::create_dir_all(logs).map_err(|e| with_path(logs, e))?;
    Ok(())
}

/// Writes the update package `kiosk_<version>.tgz` into `out_dir` and returns its
/// path: `version`, `CHANGELOG.txt` and the program under `app/`, no `config/`.
/// A `broken` package's `app/kiosk.json` sets `fail_on_start`: the kiosk logs an
/// error on start and never reaches `IDLE`.
pub fn kiosk_package(out_dir: &Path, version: &str, broken: bool) -> io::Result<PathBuf> {
    check_version(version)?;
    fs::create_dir_all(out_dir).map_err(|e| with_path(out_dir, e))?;
    let path = out_dir.join(format!("kiosk_{version}.tgz"));
    let file = fs::File::create(&path).map_err(|e| with_path(&path, e))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut entries: Vec<(String, Vec<u8>, u32)> = vec![
        (
            VERSION_FILE.to_owned(),
            format!("{version}\n").into_bytes(),
            0o644,
        ),
        (
            "CHANGELOG.txt".to_owned(),
            changelog(version).into_bytes(),
            0o644,
        ),
    ];
    entries.extend(app_files(version, broken));
    append_entries(&mut tar, &entries).map_err(|e| with_path(&path, e))?;
    let gz = tar.into_inner().map_err(|e| with_path(&path, e))?;
    let mut file = gz.finish().map_err(|e| with_path(&path, e))?;
    file.flush().map_err(|e| with_path(&path, e))?;
    Ok(path)
}

/// Appends files to a package, each folder getting its own entry before its first
/// file, as `tar czf` writes them.
fn append_entries<W: Write>(
    tar: &mut tar::Builder<W>,
    entries: &[(String, Vec<u8>, u32)],
) -> io::Result<()> {
    let mut dirs_done: Vec<String> = Vec::new();
    for (name, bytes, mode) in entries {
        let mut prefix = String::new();
        let mut parts: Vec<&str> = name.split('/').collect();
        parts.pop();
        for part in parts {
            prefix.push_str(part);
            prefix.push('/');
            if !dirs_done.contains(&prefix) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_mtime(PACKAGE_MTIME);
                h.set_size(0);
                tar.append_data(&mut h, &prefix, io::empty())?;
                dirs_done.push(prefix.clone());
            }
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(*mode);
        h.set_mtime(PACKAGE_MTIME);
        h.set_size(bytes.len() as u64);
        tar.append_data(&mut h, name, bytes.as_slice())?;
    }
    Ok(())
}

/// Runs the kiosk installed at `product`, logging to `<logs>/kiosk.log`, until
/// SIGTERM or SIGINT; then logs `Kiosk stopped` and returns.
pub fn run_kiosk(product: &Path, logs: &Path) -> io::Result<()> {
    Kiosk::new(product, logs).run()
}

/// `sim-product kiosk`: runs the simulated kiosk in the foreground.
#[derive(Debug, Clone, clap::Args)]
pub struct KioskArgs {
    /// The kiosk's installation: `version`, `app/`, `config/kiosk.config.xml`.
    #[arg(long)]
    pub product: PathBuf,
    /// The folder of `kiosk.log`.
    #[arg(long)]
    pub logs: PathBuf,
    /// The control file a test writes the customer's state to; by default
    /// `<product>.sim-control`.
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// How long the kiosk takes to save its order journal when told to stop, in
    /// milliseconds: a slow shutdown keeps whoever stops it waiting that long.
    #[arg(long, default_value_t = 0)]
    pub shutdown_ms: u64,
    /// How long loading the menu takes after start, in milliseconds: the kiosk is
    /// `STARTING` that long before it serves.
    #[arg(long, default_value_t = START_DELAY.as_millis() as u64)]
    pub start_ms: u64,
}

impl KioskArgs {
    pub fn run(&self) -> io::Result<()> {
        let mut kiosk = Kiosk::new(&self.product, &self.logs)
            .with_shutdown(Duration::from_millis(self.shutdown_ms))
            .with_start(Duration::from_millis(self.start_ms));
        if let Some(control) = &self.control {
            kiosk = kiosk.with_control(control);
        }
        kiosk.run()
    }
}

/// A running simulated kiosk.
#[derive(Debug)]
pub struct Kiosk {
    product: PathBuf,
    log: ProductLog,
    control: PathBuf,
    state: KioskState,
    /// When the menu is loaded and `STARTING` ends; `None` once that happened or
    /// when the start already failed.
    ready_at: Option<Instant>,
    /// Orders begun since start; the current one is this number.
    orders: u32,
    /// The last unreadable control-file content reported, so it is told once.
    bad_control: Option<String>,
    /// Time spent saving the order journal between the stop request and exit.
    shutdown: Duration,
    /// Time spent loading the menu before serving.
    start: Duration,
}

impl Kiosk {
    pub fn new(product: &Path, logs: &Path) -> Self {
        Self {
            product: product.to_path_buf(),
            log: ProductLog::new(logs.join(LOG_FILE)),
            control: control_path(product),
            state: KioskState::Stopped,
            ready_at: None,
            orders: 0,
            bad_control: None,
            shutdown: Duration::ZERO,
            start: START_DELAY,
        }
    }

    /// Takes `start` to load its menu, as a kiosk with a large menu does.
    pub fn with_start(mut self, start: Duration) -> Self {
        self.start = start;
        self
    }

    /// Takes `shutdown` to stop, as a kiosk saving a long order journal does.
    pub fn with_shutdown(mut self, shutdown: Duration) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Reads the customer's state from `control` instead of the default path.
    pub fn with_control(mut self, control: impl Into<PathBuf>) -> Self {
        self.control = control.into();
        self
    }

    pub fn state(&self) -> KioskState {
        self.state
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(self) -> io::Result<()> {
        run_until_signal(self, POLL)
    }

    /// Runs until `stop` is set: for tests that run it on a thread.
    pub fn run_until(self, stop: &AtomicBool) -> io::Result<()> {
        run_until_flag(self, POLL, stop)
    }

    /// Loads the menu and opens for customers, or fails as the package says.
    fn finish_start(&mut self) -> io::Result<()> {
        let settings_file = self.product.join(SETTINGS_FILE);
        let fail_on_start = match fs::read(&settings_file) {
            Ok(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(v) => v
                    .get("fail_on_start")
                    .and_then(|f| f.as_bool())
                    .unwrap_or(false),
                Err(e) => {
                    return self.log.error(
                        "KioskApp",
                        &format!("Failed to load settings {SETTINGS_FILE}: {e}"),
                    );
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => {
                return self.log.error(
                    "KioskApp",
                    &format!("Failed to load settings {SETTINGS_FILE}: {e}"),
                );
            }
        };
        if fail_on_start {
            return self.log.error(
                "KioskApp",
                &format!(
                    "Failed to load menu: the menu cache does not match this program \
                     (fail_on_start is set in {SETTINGS_FILE})"
                ),
            );
        }
        self.log.info(
            "MenuLoader",
            &format!("Menu loaded: {MENU_ITEMS} items in {MENU_CATEGORIES} categories"),
        )?;
        let config = fs::read_to_string(self.product.join(CONFIG_FILE)).unwrap_or_default();
        let maintenance =
            xml_value(&config, "MaintenanceMode").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if maintenance {
            self.log.warn(
                "KioskApp",
                "Maintenance mode is on in kiosk.config.xml: orders are not accepted",
            )?;
            self.change(KioskState::Maintenance)
        } else {
            self.log.info("CashShift", "Cash shift is open")?;
            self.change(KioskState::Idle)
        }
    }

    /// Follows the customer into `wanted`.
    fn serve(&mut self, wanted: KioskState) -> io::Result<()> {
        let from = self.state;
        if from == KioskState::Idle {
            self.orders += 1;
            self.log
                .info("Order", &format!("Order #{} started", self.orders))?;
        }
        self.change(wanted)?;
        match (from, wanted) {
            (_, KioskState::Payment) => self.log.info(
                "Payment",
                &format!("Waiting for card payment of order #{}", self.orders),
            ),
            (KioskState::Payment, KioskState::Idle) => self
                .log
                .info("Order", &format!("Order #{} paid", self.orders)),
            (KioskState::MenuBrowsing, KioskState::Idle) => self
                .log
                .info("Order", &format!("Order #{} cancelled", self.orders)),
            _ => Ok(()),
        }
    }

    fn change(&mut self, to: KioskState) -> io::Result<()> {
        let from = std::mem::replace(&mut self.state, to);
        self.log
            .info("StateMachine", &format!("State changed: {from} -> {to}"))
    }

    /// The customer's state from the control file: `Idle` when there is none.
    fn read_control(&mut self) -> Option<KioskState> {
        let text = match fs::read_to_string(&self.control) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(KioskState::Idle),
            Err(_) => return None,
        };
        let wanted = control_value(&text);
        match wanted
            .and_then(KioskState::parse)
            .filter(|s| s.serves_customers())
        {
            Some(s) => Some(s),
            None if wanted.is_none() => Some(KioskState::Idle),
            None => {
                if self.bad_control.as_deref() != Some(text.as_str()) {
                    // Not in the kiosk's log: the control file is the simulation's,
                    // not the product's.
                    eprintln!(
                        "kiosk simulation: control file {}: {:?} is not idle, menu browsing or payment",
                        self.control.display(),
                        text.trim()
                    );
                    self.bad_control = Some(text);
                }
                None
            }
        }
    }
}

impl SimProcess for Kiosk {
    fn start(&mut self) -> io::Result<()> {
        // A kiosk that keeps no version file runs the version its program
        // was built as.
        let version_file = self.product.join(VERSION_FILE);
        let version = fs::read_to_string(&version_file)
            .map(|v| v.trim().to_owned())
            .or_else(|e| program_version(&self.product).ok_or(e));
        self.log.info(
            "KioskApp",
            &format!(
                "Starting self-service kiosk {}",
                version.as_deref().unwrap_or("(unknown version)")
            ),
        )?;
        self.change(KioskState::Starting)?;
        if let Err(e) = version {
            return self.log.error(
                "KioskApp",
                &format!(
                    "Installation is damaged: cannot read {}: {e}",
                    version_file.display()
                ),
            );
        }
        let config_file = self.product.join(CONFIG_FILE);
        match fs::read_to_string(&config_file) {
            Ok(config) => {
                let terminal = xml_value(&config, "TerminalId").unwrap_or("(none)");
                let rms = xml_value(&config, "RmsServer").unwrap_or("(none)");
                self.log
                    .info("Config", &format!("Terminal {terminal}, RMS server {rms}"))?;
                self.ready_at = Some(Instant::now() + self.start);
                Ok(())
            }
            Err(e) => self.log.error(
                "Config",
                &format!(
                    "Cannot read the configuration {}: {e}",
                    config_file.display()
                ),
            ),
        }
    }

    fn poll(&mut self) -> io::Result<()> {
        if self.ready_at.is_some_and(|t| Instant::now() >= t) {
            self.ready_at = None;
            self.finish_start()?;
        }
        if self.state.serves_customers()
            && let Some(wanted) = self.read_control()
            && wanted != self.state
        {
            self.serve(wanted)?;
        }
        Ok(())
    }

    fn stop(&mut self, why: &str) -> io::Result<()> {
        self.log
            .info("KioskApp", &format!("Stopping kiosk ({why})"))?;
        if !self.shutdown.is_zero() {
            self.log.info("Order", "Saving order journal")?;
            std::thread::sleep(self.shutdown);
        }
        self.change(KioskState::Stopped)?;
        self.log.info("KioskApp", "Kiosk stopped")
    }
}

/// The state a control file asks for: a line holding just the state, or a
/// `state = <state>` line in the `name = value` form the other simulated products'
/// control files use; `#` starts a comment. `None` when it names none.
fn control_value(text: &str) -> Option<&str> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .find_map(|l| match l.split_once('=') {
            Some((name, value)) if name.trim() == "state" => Some(value.trim()),
            Some(_) => None,
            None => Some(l),
        })
}

/// The site configuration a new installation gets.
const DEFAULT_CONFIG: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<KioskConfig>
  <!-- Site settings of this kiosk. Kept across program updates. -->
  <TerminalId>KIOSK-01</TerminalId>
  <DeviceGroup>Hall</DeviceGroup>
  <RmsServer>https://rms.example.local:8080/resto</RmsServer>
  <Language>ru-RU</Language>
  <MaintenanceMode>false</MaintenanceMode>
  <PaymentTerminal>pinpad-ttyS0</PaymentTerminal>
  <FiscalPrinter>atol-usb</FiscalPrinter>
  <IdleTimeoutSeconds>90</IdleTimeoutSeconds>
</KioskConfig>
"#;

/// Modification time of every package entry, so a package's bytes depend only on
/// its version (2026-01-01 00:00:00 UTC).
const PACKAGE_MTIME: u64 = 1_767_225_600;

/// The program files, as paths under the product folder, contents and modes.
fn app_files(version: &str, broken: bool) -> Vec<(String, Vec<u8>, u32)> {
    let settings = serde_json::json!({
        "fail_on_start": broken,
        "ui_theme": "default",
        "idle_timeout_secs": 90,
        "menu_cache": "resources/menu.cache",
    });
    let settings = serde_json::to_string_pretty(&settings).expect("a JSON value serialises") + "\n";
    let layout = serde_json::json!({
        "version": version,
        "screens": ["welcome", "menu", "cart", "payment", "receipt"],
    });
    let layout = serde_json::to_string_pretty(&layout).expect("a JSON value serialises") + "\n";
    vec![
        (
            "app/Kiosk.bin".into(),
            binary("iiko Kiosk", version, 24 * 1024),
            0o755,
        ),
        ("app/kiosk.json".into(), settings.into_bytes(), 0o644),
        (
            "app/lib/libkiosk-core.so".into(),
            binary("kiosk-core", version, 16 * 1024),
            0o644,
        ),
        (
            "app/lib/libpayment-gateway.so".into(),
            binary("payment-gateway", version, 8 * 1024),
            0o644,
        ),
        (
            "app/resources/layout.json".into(),
            layout.into_bytes(),
            0o644,
        ),
        (
            "app/resources/strings.en.json".into(),
            b"{\n  \"welcome\": \"Touch to order\",\n  \"pay\": \"Pay by card\"\n}\n".to_vec(),
            0o644,
        ),
        (
            "app/resources/strings.ru.json".into(),
            "{\n  \"welcome\": \"Коснитесь, чтобы заказать\",\n  \"pay\": \"Оплатить картой\"\n}\n"
                .as_bytes()
                .to_vec(),
            0o644,
        ),
        (
            "app/resources/menu.cache".into(),
            binary("menu-cache", version, 4 * 1024),
            0o644,
        ),
    ]
}

/// Bytes that stand for a compiled file: a header naming it and the version, then
/// filler that differs between versions, so an update really changes the file.
/// The version `app/Kiosk.bin` was built as, from its first line.
fn program_version(product: &Path) -> Option<String> {
    let bytes = fs::read(product.join("app/Kiosk.bin")).ok()?;
    let first = bytes.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?;
    Some(
        line.strip_prefix("\u{7f}SIM iiko Kiosk ")?
            .trim()
            .to_owned(),
    )
}

fn binary(what: &str, version: &str, len: usize) -> Vec<u8> {
    let mut out = format!("\u{7f}SIM {what} {version}\n").into_bytes();
    let mut x: u32 = version.bytes().fold(2_166_136_261, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16_777_619)
    });
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    out
}

fn changelog(version: &str) -> String {
    format!(
        "iiko Kiosk {version}\n\
         \n\
         Changes\n\
         - The menu opens faster after the kiosk is started.\n\
         - Fixed: the payment screen stayed open when the PIN pad timed out.\n\
         - Fixed: combo items lost their modifiers in the cart.\n\
         - Receipts show the order number in large print.\n\
         \n\
         Update notes\n\
         Stop the kiosk before updating. The site settings in config/kiosk.config.xml\n\
         are kept.\n"
    )
}

/// The text of the first `<tag>...</tag>` in a small XML file.
fn xml_value<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{tag}>"))?;
    Some(xml[start..start + len].trim())
}

/// Versions become file names: no folders, nothing hidden.
fn check_version(version: &str) -> io::Result<()> {
    let ok = !version.is_empty()
        && !version.starts_with('.')
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c));
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("kiosk version {version:?}: use letters, digits, `.`, `_`, `-` and `+`"),
        ))
    }
}

fn set_mode(file: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(file, fs::Permissions::from_mode(mode)).map_err(|e| with_path(file, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Running, wait_for};
    use std::io::Read;

    fn wait_for_log(logs: &Path, f: impl FnMut(&str) -> bool) -> String {
        wait_for(&logs.join(LOG_FILE), f)
    }

    /// The kiosk installed at `product`, running on a thread.
    fn run(product: &Path, logs: &Path) -> Running {
        let kiosk = Kiosk::new(product, logs);
        Running::spawn(move |stop| kiosk.run_until(stop))
    }

    fn fixture(version: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let product = tmp.path().join("kiosk");
        let logs = tmp.path().join("logs");
        init_kiosk(&product, &logs, version).unwrap();
        (tmp, product, logs)
    }

    fn messages(log: &str) -> Vec<&str> {
        log.lines().map(|l| &l[24..]).collect()
    }

    #[test]
    fn an_installed_kiosk_looks_like_one() {
        let (_tmp, product, logs) = fixture("7.4.2");
        assert_eq!(
            fs::read_to_string(product.join("version")).unwrap(),
            "7.4.2\n"
        );
        let config = fs::read_to_string(product.join(CONFIG_FILE)).unwrap();
        assert_eq!(xml_value(&config, "TerminalId"), Some("KIOSK-01"));
        assert!(product.join("app/Kiosk.bin").is_file());
        assert!(product.join("app/lib/libkiosk-core.so").is_file());
        assert!(logs.is_dir());
        // Reinstalling another version keeps the site's settings.
        set_maintenance(&product, true).unwrap();
        init_kiosk(&product, &logs, "7.5.0").unwrap();
        assert_eq!(
            fs::read_to_string(product.join("version")).unwrap(),
            "7.5.0\n"
        );
        let config = fs::read_to_string(product.join(CONFIG_FILE)).unwrap();
        assert_eq!(xml_value(&config, "MaintenanceMode"), Some("true"));
        assert!(init_kiosk(&product, &logs, "../x").is_err());
    }

    fn package_entries(path: &Path) -> Vec<(String, Vec<u8>)> {
        let file = fs::File::open(path).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let name = e.path().unwrap().to_string_lossy().into_owned();
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).unwrap();
                (name, bytes)
            })
            .collect()
    }

    #[test]
    fn packages_hold_the_program_and_no_configuration() {
        let tmp = tempfile::tempdir().unwrap();
        let path = kiosk_package(tmp.path(), "7.5.0", false).unwrap();
        assert_eq!(path, tmp.path().join("kiosk_7.5.0.tgz"));
        let entries = package_entries(&path);
        let get = |n: &str| {
            entries
                .iter()
                .find(|(name, _)| name == n)
                .map(|(_, b)| b.clone())
        };
        assert_eq!(get("version").unwrap(), b"7.5.0\n");
        let changelog = String::from_utf8(get("CHANGELOG.txt").unwrap()).unwrap();
        assert!(changelog.starts_with("iiko Kiosk 7.5.0\n"));
        assert!(
            !changelog.contains("**") && !changelog.contains('#'),
            "plain text, not Markdown"
        );
        assert!(get("app/Kiosk.bin").is_some());
        assert!(get("app/").is_some(), "folders have entries");
        let settings: serde_json::Value =
            serde_json::from_slice(&get("app/kiosk.json").unwrap()).unwrap();
        assert_eq!(settings["fail_on_start"], false);
        assert!(entries.iter().all(|(n, _)| !n.starts_with("config")));
        // The same version gives the same bytes; a broken one fails on start.
        assert_eq!(
            fs::read(&path).unwrap(),
            fs::read(kiosk_package(&tmp.path().join("again"), "7.5.0", false).unwrap()).unwrap()
        );
        let broken = kiosk_package(&tmp.path().join("broken"), "7.5.0", true).unwrap();
        let entries = package_entries(&broken);
        let settings = entries.iter().find(|(n, _)| n == "app/kiosk.json").unwrap();
        let settings: serde_json::Value = serde_json::from_slice(&settings.1).unwrap();
        assert_eq!(settings["fail_on_start"], true);
        // A newer version changes the program's files.
        let newer = package_entries(&kiosk_package(tmp.path(), "7.6.0", false).unwrap());
        let bin = |e: &[(String, Vec<u8>)]| {
            e.iter()
                .find(|(n, _)| n == "app/Kiosk.bin")
                .unwrap()
                .1
                .clone()
        };
        assert_ne!(bin(&newer), bin(&package_entries(&path)));
    }

    #[test]
    fn starts_into_idle_and_stops() {
        let (_tmp, product, logs) = fixture("7.4.2");
        let kiosk = run(&product, &logs);
        let log = wait_for_log(&logs, |t| t.contains("State changed: STARTING -> IDLE"));
        let m = messages(&log);
        assert_eq!(m[0], "INFO  [KioskApp] Starting self-service kiosk 7.4.2");
        assert_eq!(
            m[1],
            "INFO  [StateMachine] State changed: STOPPED -> STARTING"
        );
        assert!(m.contains(&"INFO  [CashShift] Cash shift is open"));
        assert!(!log.contains("ERROR"));
        kiosk.stop().unwrap();
        let log = fs::read_to_string(logs.join(LOG_FILE)).unwrap();
        assert_eq!(
            messages(&log).last().unwrap(),
            &"INFO  [KioskApp] Kiosk stopped"
        );
        assert_eq!(last_state(&log), Some("STOPPED"));
    }

    #[test]
    fn maintenance_mode_from_the_configuration() {
        let (_tmp, product, logs) = fixture("7.4.2");
        set_maintenance(&product, true).unwrap();
        let kiosk = run(&product, &logs);
        let log = wait_for_log(&logs, |t| {
            t.contains("State changed: STARTING -> maintenance")
        });
        assert!(!log.contains("-> IDLE"));
        kiosk.stop().unwrap();
    }

    #[test]
    fn a_broken_package_fails_on_start() {
        let (tmp, product, logs) = fixture("7.4.2");
        // Install the broken package the way an update would: unpack over the program.
        let package = kiosk_package(tmp.path(), "7.5.0", true).unwrap();
        let file = fs::File::open(&package).unwrap();
        tar::Archive::new(flate2::read::GzDecoder::new(file))
            .unpack(&product)
            .unwrap();
        let kiosk = run(&product, &logs);
        let log = wait_for_log(&logs, |t| {
            t.contains("ERROR [KioskApp] Failed to load menu:")
        });
        assert!(log.contains("Starting self-service kiosk 7.5.0"));
        kiosk.stop().unwrap();
        let log = fs::read_to_string(logs.join(LOG_FILE)).unwrap();
        assert!(!log.contains("-> IDLE"), "{log}");
        assert!(log.contains("State changed: STARTING -> STOPPED"), "{log}");
    }

    #[test]
    fn a_customer_moves_the_kiosk_through_its_states() {
        let (_tmp, product, logs) = fixture("7.4.2");
        // A customer is already waiting when the kiosk comes up.
        set_customer(&product, KioskState::MenuBrowsing).unwrap();
        let kiosk = run(&product, &logs);
        wait_for_log(&logs, |t| {
            t.contains("State changed: IDLE -> menu browsing")
        });
        set_customer(&product, KioskState::Payment).unwrap();
        wait_for_log(&logs, |t| {
            t.contains("State changed: menu browsing -> payment")
        });
        set_customer(&product, KioskState::Idle).unwrap();
        let log = wait_for_log(&logs, |t| t.contains("State changed: payment -> IDLE"));
        assert!(log.contains("INFO  [Order] Order #1 paid"));
        assert_eq!(last_state(&log), Some("IDLE"));
        assert!(set_customer(&product, KioskState::Maintenance).is_err());
        kiosk.stop().unwrap();
    }

    #[test]
    fn states_parse_as_logged() {
        for s in [
            "IDLE",
            "menu browsing",
            "payment",
            "maintenance",
            "STARTING",
            "STOPPED",
        ] {
            assert_eq!(KioskState::parse(s).unwrap().as_str(), s);
        }
        assert_eq!(
            KioskState::parse(" Menu Browsing\n"),
            Some(KioskState::MenuBrowsing)
        );
        assert_eq!(KioskState::parse("lunch"), None);
        assert_eq!(control_value("payment\n"), Some("payment"));
        assert_eq!(
            control_value("# customer\nmode = x\nstate = menu browsing\n"),
            Some("menu browsing")
        );
        assert_eq!(control_value("\n# nobody\n"), None);
        assert_eq!(
            control_path(Path::new("/srv/kiosk")),
            Path::new("/srv/kiosk.sim-control")
        );
    }
}
