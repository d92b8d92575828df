//! An Openbravo store server (PRODUCTS.md §5), simulated.
//!
//! The product folder is the store server's Openbravo installation: the core
//! module's `src-db/database/sourcedata/AD_MODULE.xml` and one folder per module
//! under `modules/<javapackage>/`, each with its `AD_MODULE.xml` (name, version,
//! java package) and `AD_MODULE_DEPENDENCY.xml`. Batches of store data not yet
//! sent to central (orders, cash ups) are the files of `sync/pending/`, one per
//! batch.
//!
//! Started, the store server loads every module and checks its dependencies: a
//! module that needs a newer module than the one installed stops the start with
//! an error and exit code 1. It then recomputes its version information (see
//! [`computed_version`]), reports the data pending to sync, and sends one
//! batch per poll to central while central is reachable. The control file
//! (`<product>.sim-control`, `central = online | offline`) stands for the
//! network to central. Layout and log lines: plugins/openbravo/README.md.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::process::{
    SimProcess, compare_versions, control_path, read_control, run_until_flag, run_until_signal,
    set_control, stand_in_binary, with_path, write_file, xml_value,
};
use crate::product_log::ProductLog;

/// The store server's log, in the log folder.
pub const LOG_FILE: &str = "openbravo.log";
/// The core module's description, in the product folder.
pub const CORE_MODULE_FILE: &str = "src-db/database/sourcedata/AD_MODULE.xml";
/// The folder of the other modules.
pub const MODULES_DIR: &str = "modules";
/// A module's description, below its folder.
pub const MODULE_FILE: &str = "src-db/database/sourcedata/AD_MODULE.xml";
/// A module's dependencies, below its folder.
pub const DEPENDENCY_FILE: &str = "src-db/database/sourcedata/AD_MODULE_DEPENDENCY.xml";
/// Batches pending to sync, one file each.
pub const PENDING_DIR: &str = "sync/pending";
/// The server's settings.
pub const PROPERTIES_FILE: &str = "config/Openbravo.properties";
/// How often the running server polls (and sends one batch).
pub const POLL: Duration = Duration::from_millis(100);

/// One installed module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub id: String,
    pub name: String,
    pub javapackage: String,
    pub version: String,
    /// (module id, lowest version) of each module this one needs.
    pub needs: Vec<(String, String)>,
}

/// A module of a new store server, as its `AD_MODULE.xml` describes it.
struct Baseline {
    id: &'static str,
    name: &'static str,
    javapackage: &'static str,
    version: &'static str,
    /// (module id, lowest version) of each module it needs.
    needs: &'static [(&'static str, &'static str)],
}

/// The modules of a new store server; the core's id is `0`, as in Openbravo.
const BASELINE: &[Baseline] = &[
    Baseline {
        id: "0",
        name: "Core",
        javapackage: "org.openbravo",
        version: "3.0.33000",
        needs: &[],
    },
    Baseline {
        id: "FF808181326CC34901326D53DBCF0018",
        name: "Mobile Core Infrastructure",
        javapackage: "org.openbravo.mobile.core",
        version: "1.8.3900",
        needs: &[("0", "3.0.32000")],
    },
    Baseline {
        id: "FF8080812D842086012D844F3CC0003E",
        name: "Web POS",
        javapackage: "org.openbravo.retail.posterminal",
        version: "1.8.3900",
        needs: &[("FF808181326CC34901326D53DBCF0018", "1.8.3900")],
    },
    Baseline {
        id: "8A64B71A2B0B2946012B0BC4A1E70027",
        name: "Discounts and Promotions",
        javapackage: "org.openbravo.retail.discounts",
        version: "1.8.3900",
        needs: &[("FF8080812D842086012D844F3CC0003E", "1.8.3900")],
    },
    Baseline {
        id: "A918E3331C404B889D69AA9BFAFB23AC",
        name: "Store Server",
        javapackage: "org.openbravo.retail.storeserver",
        version: "1.2.3900",
        needs: &[("FF8080812D842086012D844F3CC0003E", "1.8.3900")],
    },
];

/// Lays out a store server at `product` with the baseline modules, its log
/// going to `logs`. Pending batches and settings already there are kept.
pub fn init_openbravo(product: &Path, logs: &Path) -> io::Result<()> {
    for &Baseline {
        id,
        name,
        javapackage,
        version,
        needs,
    } in BASELINE
    {
        let module = Module {
            id: id.into(),
            name: name.into(),
            javapackage: javapackage.into(),
            version: version.into(),
            needs: needs
                .iter()
                .map(|(i, v)| ((*i).into(), (*v).into()))
                .collect(),
        };
        let dir = if id == "0" {
            product.to_path_buf()
        } else {
            product.join(MODULES_DIR).join(javapackage)
        };
        write_file(
            &dir.join(MODULE_FILE),
            module_xml(&module).as_bytes(),
            0o644,
        )?;
        write_file(
            &dir.join(DEPENDENCY_FILE),
            dependency_xml(&module).as_bytes(),
            0o644,
        )?;
        let jar = if id == "0" {
            "lib/openbravo-core.jar".to_owned()
        } else {
            format!("lib/{javapackage}.jar")
        };
        write_file(
            &dir.join(jar),
            &stand_in_binary(javapackage, version, 8 * 1024),
            0o644,
        )?;
    }
    let properties = product.join(PROPERTIES_FILE);
    if !properties.exists() {
        write_file(&properties, PROPERTIES.as_bytes(), 0o640)?;
    }
    fs::create_dir_all(product.join(PENDING_DIR)).map_err(|e| with_path(product, e))?;
    fs::create_dir_all(logs).map_err(|e| with_path(logs, e))
}

/// The `AD_MODULE.xml` of a module, in Openbravo's sourcedata layout.
pub fn module_xml(m: &Module) -> String {
    let row =
        |tag: &str, value: &str| format!("<!--{}-->  <{tag}><![CDATA[{value}]]></{tag}>\n", m.id);
    let mut xml = format!(
        "<?xml version='1.0' encoding='UTF-8'?>\n<data>\n<!--{}--><AD_MODULE>\n",
        m.id
    );
    for (tag, value) in [
        ("AD_MODULE_ID", m.id.as_str()),
        ("NAME", m.name.as_str()),
        ("VERSION", m.version.as_str()),
        ("JAVAPACKAGE", m.javapackage.as_str()),
        ("TYPE", "M"),
        ("ISINDEVELOPMENT", "N"),
    ] {
        xml.push_str(&row(tag, value));
    }
    xml.push_str(&format!("<!--{}--></AD_MODULE>\n\n</data>\n", m.id));
    xml
}

/// The `AD_MODULE_DEPENDENCY.xml` of a module.
pub fn dependency_xml(m: &Module) -> String {
    let mut xml = String::from("<?xml version='1.0' encoding='UTF-8'?>\n<data>\n");
    for (i, (needed, from)) in m.needs.iter().enumerate() {
        let id = format!("{}{:02}", &m.id[..m.id.len().min(30)], i);
        xml.push_str(&format!("<!--{id}--><AD_MODULE_DEPENDENCY>\n"));
        for (tag, value) in [
            ("AD_MODULE_DEPENDENCY_ID", id.as_str()),
            ("AD_MODULE_ID", m.id.as_str()),
            ("AD_DEPENDENT_MODULE_ID", needed.as_str()),
            ("STARTVERSION", from.as_str()),
            ("ISINCLUDED", "N"),
        ] {
            xml.push_str(&format!(
                "<!--{id}-->  <{tag}><![CDATA[{value}]]></{tag}>\n"
            ));
        }
        xml.push_str(&format!("<!--{id}--></AD_MODULE_DEPENDENCY>\n"));
    }
    xml.push_str("</data>\n");
    xml
}

/// Reads a module folder (the product folder itself for the core).
pub fn read_module(dir: &Path) -> io::Result<Module> {
    let file = dir.join(MODULE_FILE);
    let xml = fs::read_to_string(&file).map_err(|e| with_path(&file, e))?;
    let field = |tag: &str| {
        xml_value(&xml, tag).map(str::to_owned).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: no <{tag}>", file.display()),
            )
        })
    };
    let deps = fs::read_to_string(dir.join(DEPENDENCY_FILE)).unwrap_or_default();
    let needs = deps
        .split("<AD_MODULE_DEPENDENCY>")
        .skip(1)
        .filter_map(|d| {
            Some((
                xml_value(d, "AD_DEPENDENT_MODULE_ID")?.to_owned(),
                xml_value(d, "STARTVERSION")?.to_owned(),
            ))
        })
        .collect();
    Ok(Module {
        id: field("AD_MODULE_ID")?,
        name: field("NAME")?,
        javapackage: field("JAVAPACKAGE")?,
        version: field("VERSION")?,
        needs,
    })
}

/// Every installed module, the core first, then by java package.
pub fn installed_modules(product: &Path) -> io::Result<Vec<Module>> {
    let mut modules = vec![read_module(product)?];
    let dir = product.join(MODULES_DIR);
    let mut dirs: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| with_path(&dir, e))?
        .flatten()
        .filter(|e| e.path().join(MODULE_FILE).is_file())
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for d in dirs {
        modules.push(read_module(&d)?);
    }
    Ok(modules)
}

/// The store server's version, computed from the versions of all its modules:
/// each version `major.minor.patch` counts as `major·10¹² + minor·10⁶ + patch`,
/// and the server's version is the sum over its modules. Any module's version
/// growing makes the sum grow, so a higher number is a newer server. A version
/// with more than three parts, a part that is not a number, or a part of a
/// million or more cannot be weighed this way and is an error.
pub fn computed_version<'a>(versions: impl IntoIterator<Item = &'a str>) -> Result<u64, String> {
    let mut total: u64 = 0;
    for v in versions {
        let parts: Vec<&str> = v.split('.').collect();
        if parts.len() > 3 {
            return Err(format!("module version {v:?}: expected major.minor.patch"));
        }
        let mut value: u64 = 0;
        for i in 0..3 {
            let part = match parts.get(i) {
                Some(p) => p
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n < 1_000_000)
                    .ok_or_else(|| {
                        format!("module version {v:?}: {p:?} is not a number below 1000000")
                    })?,
                None => 0,
            };
            value = value * 1_000_000 + part;
        }
        total = total
            .checked_add(value)
            .ok_or_else(|| "the store server's computed version overflows".to_owned())?;
    }
    Ok(total)
}

/// Adds `count` batches of store data pending to sync; returns their file names.
pub fn add_pending_batches(product: &Path, count: usize) -> io::Result<Vec<String>> {
    let dir = product.join(PENDING_DIR);
    fs::create_dir_all(&dir).map_err(|e| with_path(&dir, e))?;
    let first = pending_batches(product)?
        .iter()
        .filter_map(|n| {
            n.strip_prefix("batch-")?
                .strip_suffix(".json")?
                .parse::<u64>()
                .ok()
        })
        .max()
        .map_or(1, |n| n + 1);
    (first..first + count as u64)
        .map(|n| {
            let name = format!("batch-{n:06}.json");
            let body = format!(
                "{{\"id\": \"{n:06}\", \"type\": \"OBPOS_Order\", \"records\": 100, \"store\": \"STORE-0042\"}}\n"
            );
            write_file(&dir.join(&name), body.as_bytes(), 0o640).map(|()| name)
        })
        .collect()
}

/// The pending batches' file names, sorted.
pub fn pending_batches(product: &Path) -> io::Result<Vec<String>> {
    let dir = product.join(PENDING_DIR);
    let mut names: Vec<String> = match fs::read_dir(&dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(with_path(&dir, e)),
    };
    names.sort();
    Ok(names)
}

/// Makes central reachable or not for the store server at `product`.
pub fn set_central(product: &Path, online: bool) -> io::Result<()> {
    set_control(
        &control_path(product),
        "central",
        if online { "online" } else { "offline" },
    )
}

/// `sim-product openbravo`: runs the store server in the foreground.
#[derive(Debug, Clone, clap::Args)]
pub struct OpenbravoArgs {
    /// The store server's installation: `modules/`, `sync/pending/`, `config/`.
    #[arg(long)]
    pub product: PathBuf,
    /// The folder of `openbravo.log`.
    #[arg(long)]
    pub logs: PathBuf,
}

impl OpenbravoArgs {
    pub fn run(&self) -> io::Result<()> {
        run_until_signal(StoreServer::new(&self.product, &self.logs), POLL)
    }
}

/// Runs the store server until `stop` is set (tests).
pub fn run_openbravo_until(product: &Path, logs: &Path, stop: &AtomicBool) -> io::Result<()> {
    run_until_flag(StoreServer::new(product, logs), POLL, stop)
}

/// The running store server.
#[derive(Debug)]
struct StoreServer {
    product: PathBuf,
    log: ProductLog,
    control: PathBuf,
    central: String,
    /// The status last logged: `online` or `offline`.
    status: &'static str,
}

impl StoreServer {
    fn new(product: &Path, logs: &Path) -> Self {
        Self {
            product: product.to_path_buf(),
            log: ProductLog::new(logs.join(LOG_FILE)),
            control: control_path(product),
            central: String::new(),
            status: "transitioning",
        }
    }

    fn fail(&self, why: String) -> io::Error {
        let _ = self.log.error(
            "StoreServer",
            &format!("Store server failed to start: {why}"),
        );
        io::Error::other(why)
    }
}

impl SimProcess for StoreServer {
    fn start(&mut self) -> io::Result<()> {
        let properties = fs::read_to_string(self.product.join(PROPERTIES_FILE)).unwrap_or_default();
        let props = crate::process::parse_settings(&properties, '=');
        let store = props
            .get("store.server.identifier")
            .cloned()
            .unwrap_or_default();
        self.central = props.get("central.server.url").cloned().unwrap_or_default();
        self.log.info(
            "StoreServer",
            &format!(
                "Starting Openbravo store server {store} (central {})",
                self.central
            ),
        )?;
        self.log
            .info("StoreServer", "Server status: transitioning")?;
        let modules = installed_modules(&self.product).map_err(|e| self.fail(e.to_string()))?;
        let mut broken = false;
        for m in &modules {
            self.log.info(
                "ModuleLoader",
                &format!("Module {} {} loaded", m.javapackage, m.version),
            )?;
            for (needed, from) in &m.needs {
                let found = modules.iter().find(|o| &o.id == needed);
                let ok = found.is_some_and(|o| compare_versions(&o.version, from).is_ge());
                if !ok {
                    broken = true;
                    let (what, have) = match found {
                        Some(o) => (o.javapackage.as_str(), o.version.as_str()),
                        None => (needed.as_str(), "none"),
                    };
                    self.log.error(
                        "ModuleLoader",
                        &format!(
                            "Module {} {} needs {what} {from} or newer, installed: {have}",
                            m.javapackage, m.version
                        ),
                    )?;
                }
            }
        }
        if broken {
            return Err(self.fail("unsatisfied module dependencies".into()));
        }
        let version = computed_version(modules.iter().map(|m| m.version.as_str()))
            .map_err(|e| self.fail(e))?;
        self.log.info(
            "VersionInfo",
            &format!(
                "Version information recomputed: version {version} from {} modules",
                modules.len()
            ),
        )?;
        let pending = pending_batches(&self.product)?.len();
        self.log.info(
            "SyncService",
            &format!("Data pending to sync: {pending} batches"),
        )?;
        self.poll()
    }

    fn poll(&mut self) -> io::Result<()> {
        let online = read_control(&self.control)
            .get("central")
            .is_none_or(|c| c != "offline");
        let status = if online { "online" } else { "offline" };
        if status != self.status {
            self.status = status;
            if online {
                self.log.info("StoreServer", "Server status: online")?;
            } else {
                self.log.warn(
                    "StoreServer",
                    &format!("Central server {} not reachable", self.central),
                )?;
                self.log.info("StoreServer", "Server status: offline")?;
            }
        }
        if online && let Some(batch) = pending_batches(&self.product)?.first() {
            let file = self.product.join(PENDING_DIR).join(batch);
            fs::remove_file(&file).map_err(|e| with_path(&file, e))?;
            let left = pending_batches(&self.product)?.len();
            self.log.info(
                "SyncService",
                &format!(
                    "Batch {batch} synchronized to central; data pending to sync: {left} batches"
                ),
            )?;
        }
        Ok(())
    }

    fn stop(&mut self, why: &str) -> io::Result<()> {
        self.log
            .info("StoreServer", &format!("Stopping store server ({why})"))?;
        self.log.info("StoreServer", "Store server stopped")
    }
}

const PROPERTIES: &str = "\
# Openbravo store server settings.
context.name=openbravo
bbdd.rdbms=POSTGRE
bbdd.url=jdbc:postgresql://localhost:5432
bbdd.sid=openbravo
store.server.identifier=STORE-0042
central.server.url=https://central.example.local/openbravo
";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::wait_for;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    #[test]
    fn the_computed_version_grows_with_any_module() {
        let base = computed_version(["3.0.33000", "1.8.3900", "1.2.3900"]).unwrap();
        assert_eq!(
            base,
            3_000_000_033_000 + 1_000_008_003_900 + 1_000_002_003_900
        );
        for bumped in [
            ["3.0.33001", "1.8.3900", "1.2.3900"],
            ["3.0.33000", "1.9.0", "1.2.3900"],
            ["3.0.33000", "1.8.999999", "1.2.3900"],
            ["3.0.33000", "1.8.3900", "2.0.0"],
        ] {
            assert!(computed_version(bumped).unwrap() > base, "{bumped:?}");
        }
        // A patch rolling over into the minor still grows.
        assert!(computed_version(["1.9.0"]).unwrap() > computed_version(["1.8.999999"]).unwrap());
        assert_eq!(computed_version(["2"]).unwrap(), 2_000_000_000_000);
        assert!(computed_version(["1.2.3.4"]).is_err());
        assert!(computed_version(["1.x.3"]).is_err());
        assert!(computed_version(["1.0.1000000"]).is_err());
    }

    #[test]
    fn an_installed_store_server_looks_like_one() {
        let tmp = tempfile::tempdir().unwrap();
        let product = tmp.path().join("openbravo");
        init_openbravo(&product, &tmp.path().join("logs")).unwrap();
        let modules = installed_modules(&product).unwrap();
        let names: Vec<_> = modules.iter().map(|m| m.javapackage.as_str()).collect();
        assert_eq!(
            names,
            [
                "org.openbravo",
                "org.openbravo.mobile.core",
                "org.openbravo.retail.discounts",
                "org.openbravo.retail.posterminal",
                "org.openbravo.retail.storeserver"
            ]
        );
        let pos = &modules[3];
        assert_eq!(pos.version, "1.8.3900");
        assert_eq!(
            pos.needs,
            vec![(
                "FF808181326CC34901326D53DBCF0018".to_owned(),
                "1.8.3900".to_owned()
            )]
        );
        assert_eq!(
            read_module(&product.join("modules/org.openbravo.retail.posterminal")).unwrap(),
            *pos
        );
        assert_eq!(
            add_pending_batches(&product, 2).unwrap(),
            ["batch-000001.json", "batch-000002.json"]
        );
        assert_eq!(
            add_pending_batches(&product, 1).unwrap(),
            ["batch-000003.json"]
        );
        assert_eq!(pending_batches(&product).unwrap().len(), 3);
    }

    #[test]
    fn starts_recomputes_its_version_and_syncs_while_central_is_online() {
        let tmp = tempfile::tempdir().unwrap();
        let (product, logs) = (tmp.path().join("openbravo"), tmp.path().join("logs"));
        init_openbravo(&product, &logs).unwrap();
        add_pending_batches(&product, 2).unwrap();
        set_central(&product, false).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (p, l, s) = (product.clone(), logs.clone(), stop.clone());
        let server = std::thread::spawn(move || run_openbravo_until(&p, &l, &s));
        let log = wait_for(&logs.join(LOG_FILE), |t| {
            t.contains("Server status: offline")
        });
        let expected = computed_version(
            installed_modules(&product)
                .unwrap()
                .iter()
                .map(|m| m.version.as_str()),
        )
        .unwrap();
        assert!(log.contains(&format!("INFO  [VersionInfo] Version information recomputed: version {expected} from 5 modules")), "{log}");
        assert!(log.contains("INFO  [SyncService] Data pending to sync: 2 batches"));
        assert_eq!(pending_batches(&product).unwrap().len(), 2);
        set_central(&product, true).unwrap();
        wait_for(&logs.join(LOG_FILE), |t| {
            t.contains("data pending to sync: 0 batches")
        });
        assert!(pending_batches(&product).unwrap().is_empty());
        stop.store(true, Ordering::SeqCst);
        server.join().unwrap().unwrap();
    }

    #[test]
    fn an_unsatisfied_dependency_stops_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        let (product, logs) = (tmp.path().join("openbravo"), tmp.path().join("logs"));
        init_openbravo(&product, &logs).unwrap();
        let dir = product.join("modules/org.openbravo.retail.posterminal");
        let mut pos = read_module(&dir).unwrap();
        pos.version = "1.8.4100".into();
        pos.needs = vec![("FF808181326CC34901326D53DBCF0018".into(), "1.8.4100".into())];
        fs::write(dir.join(MODULE_FILE), module_xml(&pos)).unwrap();
        fs::write(dir.join(DEPENDENCY_FILE), dependency_xml(&pos)).unwrap();
        let err = run_openbravo_until(&product, &logs, &AtomicBool::new(false)).unwrap_err();
        assert_eq!(err.to_string(), "unsatisfied module dependencies");
        let log = fs::read_to_string(logs.join(LOG_FILE)).unwrap();
        assert!(log.contains("ERROR [ModuleLoader] Module org.openbravo.retail.posterminal 1.8.4100 needs org.openbravo.mobile.core 1.8.4100 or newer, installed: 1.8.3900"), "{log}");
        assert!(log.contains(
            "ERROR [StoreServer] Store server failed to start: unsatisfied module dependencies"
        ));
        assert!(!log.contains("Version information recomputed"));
    }
}
