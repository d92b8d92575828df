//! The IceCash register (PRODUCTS.md §3), simulated: the `dIceCash` service (the
//! register's web interface, port 10110) and the `DTPrint` printer service (port
//! 10111), each a process of its own, as systemd runs them on a register.
//!
//! The product folder is the register's `/home/kassir`: the program in
//! `dIceCash` (its version is the `VERSION` constant in `dIceCash.py`, as the
//! real program takes it) and the previous program in `dIceCash_` after a
//! program upgrade. The register's settings, the MySQL table `tb_sets`, are
//! simulated as `name = value` lines in the register's
//! `/var/lib/mysql/IceCash/tb_sets.txt` (two folders above the product folder):
//! the server variables the register applied (`version`, `update`, `sets`), its
//! place and register numbers, and the printer DTPrint drives. The plugin reads
//! none of it; it is there so the services print what a real register prints.
//!
//! Started, `dIceCash` checks its Python modules are all there: a program folder
//! that lacks one fails the way Python does, with a traceback in its log and exit
//! code 1; otherwise it prints the program's own start line,
//! `Start dIceCash Server v 2.0.060 [10110]`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::process::{
    SimProcess, check_name, parse_settings, run_until_flag, run_until_signal, with_path,
    write_atomically, write_file,
};
use crate::product_log::ProductLog;

/// The program folder, in the product folder.
pub const PROGRAM_DIR: &str = "dIceCash";
/// Where a program upgrade moves the previous program.
pub const PREVIOUS_DIR: &str = "dIceCash_";
/// The file whose `VERSION` constant is the program's version.
pub const MAIN_FILE: &str = "dIceCash/dIceCash.py";
/// DTPrint's program, inside the program folder.
pub const DTPRINT_FILE: &str = "dIceCash/DTPrint/DTPrint.py";
/// The register's settings (the MySQL table `tb_sets`), from the product folder
/// (`/home/kassir`) to the register's `/var/lib/mysql`.
pub const SETS_FILE: &str = "../../var/lib/mysql/IceCash/tb_sets.txt";
/// Where the product folder is on a register, for the paths Python prints.
const HOME: &str = "/home/kassir";
/// dIceCash's log, in the log folder.
pub const DICECASH_LOG: &str = "dIceCash.log";
/// DTPrint's log, in the log folder.
pub const DTPRINT_LOG: &str = "DTPrint.log";
/// How often the running services poll.
pub const POLL: Duration = Duration::from_millis(100);

/// The modules `dIceCash.py` imports; the program does not start without them.
pub const MODULES: [&str; 6] = [
    "dbIceCash.py",
    "chIceCash.py",
    "zIceCash.py",
    "clientIceServ.py",
    "clientDrv.py",
    "my.py",
];

/// Lays out an IceCash register at `product` running program `version`, its logs
/// going to `logs`. Settings already there are kept, as an upgrade keeps them.
pub fn init_icecash(product: &Path, logs: &Path, version: &str) -> io::Result<()> {
    check_name("IceCash version", version)?;
    for (path, text, mode) in program_files(version) {
        write_file(&product.join(PROGRAM_DIR).join(path), text.as_bytes(), mode)?;
    }
    let sets = product.join(SETS_FILE);
    if !sets.exists() {
        write_file(&sets, default_sets(version).as_bytes(), 0o640)?;
    }
    fs::create_dir_all(logs).map_err(|e| with_path(logs, e))
}

/// The rows of the register's `tb_sets`.
pub fn read_sets(product: &Path) -> io::Result<BTreeMap<String, String>> {
    let file = product.join(SETS_FILE);
    let text = fs::read_to_string(&file).map_err(|e| with_path(&file, e))?;
    Ok(parse_settings(&text, '='))
}

/// Sets one row of `tb_sets`, keeping the file's order and comments.
pub fn set_sets_value(product: &Path, name: &str, value: &str) -> io::Result<()> {
    let file = product.join(SETS_FILE);
    let text = fs::read_to_string(&file).map_err(|e| with_path(&file, e))?;
    let mut found = false;
    let mut out: String = text
        .lines()
        .map(|l| match l.split_once('=') {
            Some((k, _)) if k.trim() == name && !l.trim_start().starts_with('#') => {
                found = true;
                format!("{name} = {value}\n")
            }
            _ => format!("{l}\n"),
        })
        .collect();
    if !found {
        out.push_str(&format!("{name} = {value}\n"));
    }
    write_atomically(&file, out.as_bytes())
}

/// Connects another printer: DTPrint's printer `name` of type `devtype`
/// (`KKM_FPRINT`, `KKM_SHTRIHM`, `ESCPOS`).
pub fn set_printer(product: &Path, devtype: &str, name: &str) -> io::Result<()> {
    set_sets_value(product, "d_devtype", devtype)?;
    set_sets_value(product, "d_name", name)
}

/// The version in a `dIceCash.py`: its `VERSION = '…'` line.
pub fn program_version(main_py: &str) -> Option<String> {
    main_py.lines().find_map(|l| {
        let (name, value) = l.split_once('=')?;
        (name.trim() == "VERSION").then(|| value.trim().trim_matches(['\'', '"']).to_owned())
    })
}

/// `sim-product dicecash`: runs the dIceCash service in the foreground.
#[derive(Debug, Clone, clap::Args)]
pub struct DIceCashArgs {
    /// The register's `/home/kassir`, which holds `dIceCash`.
    #[arg(long)]
    pub product: PathBuf,
    /// The folder of `dIceCash.log`.
    #[arg(long)]
    pub logs: PathBuf,
}

impl DIceCashArgs {
    pub fn run(&self) -> io::Result<()> {
        run_until_signal(DIceCash::new(&self.product, &self.logs), POLL)
    }
}

/// `sim-product dtprint`: runs the DTPrint service in the foreground.
#[derive(Debug, Clone, clap::Args)]
pub struct DtPrintArgs {
    /// The register's file system, as for dIceCash.
    #[arg(long)]
    pub product: PathBuf,
    /// The folder of `DTPrint.log`.
    #[arg(long)]
    pub logs: PathBuf,
}

impl DtPrintArgs {
    pub fn run(&self) -> io::Result<()> {
        run_until_signal(DtPrint::new(&self.product, &self.logs), POLL)
    }
}

/// Runs dIceCash until `stop` is set (tests).
pub fn run_dicecash_until(product: &Path, logs: &Path, stop: &AtomicBool) -> io::Result<()> {
    run_until_flag(DIceCash::new(product, logs), POLL, stop)
}

/// Runs DTPrint until `stop` is set (tests).
pub fn run_dtprint_until(product: &Path, logs: &Path, stop: &AtomicBool) -> io::Result<()> {
    run_until_flag(DtPrint::new(product, logs), POLL, stop)
}

/// The running dIceCash service.
#[derive(Debug)]
struct DIceCash {
    product: PathBuf,
    log: ProductLog,
}

impl DIceCash {
    fn new(product: &Path, logs: &Path) -> Self {
        Self {
            product: product.to_path_buf(),
            log: ProductLog::new(logs.join(DICECASH_LOG)),
        }
    }

    /// Writes what Python prints when a program cannot start, and the error the
    /// process exits with.
    fn crash(&self, lines: &[String], error: &str) -> io::Error {
        let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        text.push_str(error);
        text.push('\n');
        if let Err(e) = append_raw(self.log.path(), &text) {
            return e;
        }
        io::Error::other(error.to_owned())
    }
}

impl SimProcess for DIceCash {
    fn start(&mut self) -> io::Result<()> {
        let main = self.product.join(MAIN_FILE);
        let shown = format!("{HOME}/{MAIN_FILE}");
        let source = match fs::read_to_string(&main) {
            Ok(s) => s,
            Err(e) => {
                return Err(self.crash(
                    &[],
                    &format!("python: can't open file '{shown}': [Errno 2] {e}"),
                ));
            }
        };
        for (i, module) in MODULES.iter().enumerate() {
            if !self.product.join(PROGRAM_DIR).join(module).is_file() {
                let name = module.trim_end_matches(".py");
                return Err(self.crash(
                    &[
                        "Traceback (most recent call last):".into(),
                        format!("  File \"{shown}\", line {}, in <module>", 28 + i),
                        format!("    import {name}"),
                    ],
                    &format!("ImportError: No module named {name}"),
                ));
            }
        }
        let Some(version) = program_version(&source) else {
            return Err(self.crash(
                &[],
                &format!("NameError: name 'VERSION' is not defined in {shown}"),
            ));
        };
        let sets = read_sets(&self.product).unwrap_or_default();
        self.log.info(
            "dIceCash",
            &format!(
                "Start dIceCash Server v {version} [{}]",
                sets.get("server_port").map_or("10110", String::as_str)
            ),
        )
    }

    fn poll(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn stop(&mut self, why: &str) -> io::Result<()> {
        self.log
            .info("dIceCash", &format!("Stopping dIceCash ({why})"))?;
        self.log.info("dIceCash", "dIceCash stopped")
    }
}

/// The running DTPrint service.
#[derive(Debug)]
struct DtPrint {
    product: PathBuf,
    log: ProductLog,
}

impl DtPrint {
    fn new(product: &Path, logs: &Path) -> Self {
        Self {
            product: product.to_path_buf(),
            log: ProductLog::new(logs.join(DTPRINT_LOG)),
        }
    }
}

impl SimProcess for DtPrint {
    fn start(&mut self) -> io::Result<()> {
        let main = self.product.join(DTPRINT_FILE);
        if !main.is_file() {
            let error = format!(
                "python: can't open file '{HOME}/{DTPRINT_FILE}': [Errno 2] No such file or directory\n"
            );
            append_raw(self.log.path(), &error)?;
            return Err(io::Error::other(error.trim_end().to_owned()));
        }
        let sets = read_sets(&self.product).unwrap_or_default();
        let get = |k: &str| sets.get(k).map(String::as_str).unwrap_or("?");
        self.log.info(
            "DTPrint",
            &format!("DTPrint started on *:{}", get("dtprint_port")),
        )?;
        self.log.info(
            "DTPrint",
            &format!(
                "Printer {} ({}) on {}: ready",
                get("d_name"),
                get("d_devtype"),
                get("d_port")
            ),
        )
    }

    fn poll(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn stop(&mut self, why: &str) -> io::Result<()> {
        self.log
            .info("DTPrint", &format!("Stopping DTPrint ({why})"))?;
        self.log.info("DTPrint", "DTPrint stopped")
    }
}

/// Appends text as it is (a Python traceback is not in the log's line layout).
fn append_raw(log: &Path, text: &str) -> io::Result<()> {
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir).map_err(|e| with_path(dir, e))?;
    }
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| with_path(log, e))?;
    file.write_all(text.as_bytes())
        .map_err(|e| with_path(log, e))
}

/// The settings of a new register.
fn default_sets(version: &str) -> String {
    format!(
        "# tb_sets of the IceCash database: one row per line, `name = value`.\n\
         # client\n\
         site = site\n\
         # magazine\n\
         idplace = 12\n\
         nkassa = 1\n\
         placename = Магазин на Лесной\n\
         orgname = ООО Лесная\n\
         inn = 7701234567\n\
         kpp = 770101001\n\
         pricenum = 2026-11-20 06:00:01\n\
         begin_time = 6:00\n\
         # server\n\
         server_port = 10110\n\
         backoffice_ip = 10.8.0.1\n\
         backoffice_port = 10100\n\
         dtprint_ip = localhost\n\
         dtprint_port = 10111\n\
         dtprint_passwd = dtpadm\n\
         regid = 1001\n\
         version = {version}\n\
         update = 000\n\
         temperature = -3\n\
         sets = 4512\n\
         # device\n\
         d_name = fprint\n\
         d_devtype = KKM_FPRINT\n\
         d_port = /dev/ttyS0\n\
         d_ofd = 1\n"
    )
}

/// The program's files below `dIceCash/`: (path, text, mode).
fn program_files(version: &str) -> Vec<(String, String, u32)> {
    let module = |name: &str, what: &str| {
        (
            format!("{name}.py"),
            format!(
                "#!/usr/bin/python\n# -*- coding: utf-8\n\"\"\" IceCash 2.0: {what}. \"\"\"\n\nVERSION = '{version}'\n"
            ),
            0o644,
        )
    };
    vec![
        (
            "dIceCash.py".into(),
            format!(
                "#!/usr/bin/python\n# -*- coding: utf-8\n\n\"\"\"\n    Web Kassa IceCash 2.0\n    License GPL\n\"\"\"\n\n\
                 import dbIceCash\nimport chIceCash\nimport zIceCash\nimport clientIceServ\nimport clientDrv\nimport my\n\n\
                 MYSQL_HOST  = 'localhost'\nVERSION     = '{version}'\n"
            ),
            0o755,
        ),
        module("dbIceCash", "MySQL tables and settings"),
        module("chIceCash", "receipts"),
        module("zIceCash", "Z reports"),
        module("clientIceServ", "exchange with IceServ"),
        module("clientDrv", "client of DTPrint"),
        module("my", "date and time helpers"),
        (
            "dUpload.py".into(),
            "#!/usr/bin/python\n# -*- coding: utf-8\n\"\"\" Exchange with IceServ, run from crontab. \"\"\"\n".into(),
            0o755,
        ),
        (
            "upgrade.sh".into(),
            "#!/bin/sh\n# Run after a program upgrade.\nexit 0\n".into(),
            0o755,
        ),
        (
            "crontab".into(),
            "SHELL=/bin/sh\nICEDIR=/home/kassir/dIceCash\n*/1 * * * * kassir cd $ICEDIR && python dUpload.py dw_checks\n\
             */14 * * * * kassir cd $ICEDIR && python dUpload.py dw_sets\n\
             15 * * * * root cd $ICEDIR && python dUpload.py dw_upgrade_prog\n\
             16 * * * * root cd $ICEDIR && python dUpload.py dw_upgrade_base\n"
                .into(),
            0o644,
        ),
        (
            "DTPrint/DTPrint.py".into(),
            format!("#!/usr/bin/python\n# -*- coding: utf-8\n\"\"\" DTPrint: thermal and fiscal printers over HTTP/XML. \"\"\"\n\nVERSION = '{version}'\n"),
            0o755,
        ),
        (
            "DTPrint/DTPrint.service".into(),
            "[Unit]\nDescription=DTPrint\nAfter=mysql.service\n\n[Service]\nWorkingDirectory=/home/kassir/dIceCash/DTPrint\n\
             ExecStart=/usr/bin/python DTPrint.py\n\n[Install]\nWantedBy=multi-user.target\n"
                .into(),
            0o644,
        ),
        (
            "install/install.sh".into(),
            "#!/bin/sh\n# First installation: databases and systemd services.\nexit 0\n".into(),
            0o755,
        ),
        (
            "site/head.html".into(),
            "<html><head><title>IceCash</title><link rel=\"stylesheet\" href=\"/css/%css%\"></head>\n<body>%body%</body></html>\n".into(),
            0o644,
        ),
        (
            "site/css/blue.css".into(),
            "body { background: #dde8f5; font-family: sans-serif; }\n".into(),
            0o644,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Running, wait_for};

    #[test]
    fn an_installed_register_looks_like_one() {
        let tmp = tempfile::tempdir().unwrap();
        let product = tmp.path().join("register/home/kassir");
        init_icecash(&product, &tmp.path().join("logs"), "2.0.059").unwrap();
        assert!(
            tmp.path()
                .join("register/var/lib/mysql/IceCash/tb_sets.txt")
                .is_file()
        );
        let main = fs::read_to_string(product.join(MAIN_FILE)).unwrap();
        assert_eq!(program_version(&main).as_deref(), Some("2.0.059"));
        assert!(main.contains("VERSION     = '2.0.059'"));
        let sets = read_sets(&product).unwrap();
        assert_eq!(sets["d_devtype"], "KKM_FPRINT");
        assert_eq!(sets["update"], "000");
        assert_eq!(sets["server_port"], "10110");
        set_printer(&product, "KKM_SHTRIHM", "shtrihm").unwrap();
        set_sets_value(&product, "new_row", "x").unwrap();
        let text = fs::read_to_string(product.join(SETS_FILE)).unwrap();
        assert!(text.starts_with("# tb_sets"));
        let sets = read_sets(&product).unwrap();
        assert_eq!(sets["d_devtype"], "KKM_SHTRIHM");
        assert_eq!(sets["d_name"], "shtrihm");
        assert_eq!(sets["new_row"], "x");
    }

    #[test]
    fn both_services_start_and_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let (product, logs) = (
            tmp.path().join("register/home/kassir"),
            tmp.path().join("logs"),
        );
        init_icecash(&product, &logs, "2.0.059").unwrap();
        let (p1, l1) = (product.clone(), logs.clone());
        let a = Running::spawn(move |stop| run_dicecash_until(&p1, &l1, stop));
        let (p2, l2) = (product.clone(), logs.clone());
        let b = Running::spawn(move |stop| run_dtprint_until(&p2, &l2, stop));
        let log = wait_for(&logs.join(DICECASH_LOG), |t| t.contains("Start"));
        assert!(
            log.contains("INFO  [dIceCash] Start dIceCash Server v 2.0.059 [10110]"),
            "{log}"
        );
        let log = wait_for(&logs.join(DTPRINT_LOG), |t| t.contains("ready"));
        assert!(
            log.contains("Printer fprint (KKM_FPRINT) on /dev/ttyS0: ready"),
            "{log}"
        );
        a.stop().unwrap();
        b.stop().unwrap();
        let log = fs::read_to_string(logs.join(DICECASH_LOG)).unwrap();
        assert!(
            log.trim_end()
                .ends_with("INFO  [dIceCash] dIceCash stopped"),
            "{log}"
        );
    }

    #[test]
    fn a_missing_module_fails_like_python() {
        let tmp = tempfile::tempdir().unwrap();
        let (product, logs) = (
            tmp.path().join("register/home/kassir"),
            tmp.path().join("logs"),
        );
        init_icecash(&product, &logs, "2.0.059").unwrap();
        fs::remove_file(product.join(PROGRAM_DIR).join("dbIceCash.py")).unwrap();
        let stop = AtomicBool::new(false);
        let err = run_dicecash_until(&product, &logs, &stop).unwrap_err();
        assert_eq!(err.to_string(), "ImportError: No module named dbIceCash");
        let log = fs::read_to_string(logs.join(DICECASH_LOG)).unwrap();
        assert!(
            log.starts_with("Traceback (most recent call last):\n"),
            "{log}"
        );
        assert!(log.contains("    import dbIceCash\nImportError: No module named dbIceCash\n"));
    }
}
