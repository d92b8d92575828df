//! `database` (since 0.1.1): reading the product's own database, such as
//! IceCash's settings table `tb_sets` and its transactions' upload flags in
//! MySQL.
//!
//! The plugin never writes SQL. It names a database the device configuration
//! describes (`[databases.<name>] url = "mysql://…"`) and the operator allows,
//! a table it asked for in its `databases` export, the columns and at most one
//! equality filter; the host checks each name as a plain identifier, quotes it,
//! binds the filter's value and writes a `SELECT` itself. So a plugin reads
//! what it asked for and cannot change anything, whatever strings it sends.
//! Every answer is bounded in rows, bytes and time.

use std::str::FromStr;
use std::time::Duration;

use futures::TryStreamExt;
use posup_world::latest::database;
use posup_world::latest::types::Error as WitError;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection, Row};
use wasmtime::component::{HasSelf, Linker};

use super::{CapError, CapResult, Work, counted};
use crate::grants::DatabaseGrant;

/// Rows one `select` returns at most, whatever the plugin asks.
pub const MAX_ROWS: u32 = 1_000;
/// Bytes of values one `select` returns at most.
pub const MAX_BYTES: usize = 1 << 20;
/// Columns one `select` names at most.
pub const MAX_COLUMNS: usize = 32;
/// Connecting and reading together take at most this long: the product's
/// database is on the terminal or next to it, and a plugin's `inventory` has
/// its own deadline to keep.
pub const QUERY_TIME: Duration = Duration::from_secs(10);
/// Characters of one value at most; longer values are cut to this in SQL, so
/// no single row can be large.
pub const MAX_VALUE_CHARS: usize = 16_384;
/// Longest table or column name MySQL allows.
const MAX_IDENTIFIER: usize = 64;

/// Per-step state of `database`: the databases granted to this plugin.
pub struct DatabaseState {
    grants: Vec<DatabaseGrant>,
    work: Work,
}

impl DatabaseState {
    pub fn new(grants: Vec<DatabaseGrant>, work: Work) -> Self {
        Self { grants, work }
    }

    async fn select(
        &self,
        name: &str,
        table: &str,
        columns: &[String],
        filter: Option<&(String, String)>,
        limit: u32,
    ) -> CapResult<Vec<Vec<Option<String>>>> {
        let grant = self.grants.iter().find(|g| g.name == name).ok_or_else(|| {
            CapError::denied(format!(
                "database {name:?} is not granted to this plugin: the device configuration describes it under [databases.{name}] and lists it in [allow] databases, and the operator allows it for the device type"
            ))
        })?;
        if !grant.tables.iter().any(|t| t == table) {
            return Err(CapError::denied(format!(
                "table {table:?} of database {name}: the plugin did not ask for it in its `databases`"
            )));
        }
        let query = Query::new(table, columns, filter.map(|(c, _)| c.as_str()), limit)?;
        let options = MySqlConnectOptions::from_str(&grant.url)
            .map_err(|_| {
                CapError::invalid(format!(
                    "database {name}: its url in the device configuration is not a mysql:// address"
                ))
            })?
            // One short-lived connection per call: nothing to cache, no log noise
            // for each statement.
            .statement_cache_capacity(0)
            .disable_statement_logging();
        self.work.check(&format!("reading database {name}"))?;
        let value = filter.map(|(_, v)| v.clone());
        let read = async {
            let mut conn = MySqlConnection::connect_with(&options)
                .await
                .map_err(|e| from_sqlx(name, table, &e))?;
            let rows = read_rows(&mut conn, &query, value, name, table).await;
            let _ = conn.close().await;
            rows
        };
        match tokio::time::timeout(QUERY_TIME, counted(&self.work, read)).await {
            Ok(rows) => rows,
            Err(_) => Err(CapError::timeout(format!(
                "database {name}: no answer within {} s",
                QUERY_TIME.as_secs()
            ))),
        }
    }
}

async fn read_rows(
    conn: &mut MySqlConnection,
    query: &Query,
    value: Option<String>,
    name: &str,
    table: &str,
) -> CapResult<Vec<Vec<Option<String>>>> {
    let mut q = sqlx::query(&query.sql);
    if let Some(v) = value {
        q = q.bind(v);
    }
    let mut stream = q.fetch(&mut *conn);
    let mut rows = Vec::new();
    let mut bytes = 0usize;
    while let Some(row) = stream
        .try_next()
        .await
        .map_err(|e| from_sqlx(name, table, &e))?
    {
        let mut values = Vec::with_capacity(query.columns);
        for i in 0..query.columns {
            let v: Option<String> = row.try_get(i).map_err(|e| {
                CapError::invalid(format!(
                    "table {table} of database {name}: a value is not text: {e}"
                ))
            })?;
            bytes += v.as_ref().map_or(0, String::len);
            values.push(v);
        }
        if bytes > MAX_BYTES {
            return Err(CapError::limit(format!(
                "table {table} of database {name}: the answer passed {} KiB; ask for fewer rows or columns",
                MAX_BYTES >> 10
            )));
        }
        rows.push(values);
    }
    Ok(rows)
}

/// The `SELECT` the host writes for one call.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    sql: String,
    columns: usize,
}

impl Query {
    /// Every value is cast to text in SQL, so numbers, dates and text all reach
    /// the plugin the way the database prints them, cut to [`MAX_VALUE_CHARS`].
    fn new(table: &str, columns: &[String], filter: Option<&str>, limit: u32) -> CapResult<Self> {
        if columns.is_empty() || columns.len() > MAX_COLUMNS {
            return Err(CapError::invalid(format!(
                "table {table}: name between 1 and {MAX_COLUMNS} columns"
            )));
        }
        let mut sql = String::from("SELECT ");
        for (i, c) in columns.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "CAST({} AS CHAR({MAX_VALUE_CHARS}))",
                identifier(c)?
            ));
        }
        sql.push_str(&format!(" FROM {}", identifier(table)?));
        if let Some(c) = filter {
            sql.push_str(&format!(" WHERE {} = ?", identifier(c)?));
        }
        sql.push_str(&format!(" LIMIT {}", limit.min(MAX_ROWS)));
        Ok(Self {
            sql,
            columns: columns.len(),
        })
    }
}

/// `name` quoted for MySQL, when it is a plain identifier: ASCII letters, digits
/// and `_`, at most 64 characters, not only digits. Anything else is refused
/// rather than escaped, so no name can carry SQL.
fn identifier(name: &str) -> CapResult<String> {
    let plain = !name.is_empty()
        && name.len() <= MAX_IDENTIFIER
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.bytes().all(|b| b.is_ascii_digit());
    if !plain {
        return Err(CapError::invalid(format!(
            "{name:?} is not a plain table or column name (letters, digits and _, at most {MAX_IDENTIFIER})"
        )));
    }
    Ok(format!("`{name}`"))
}

/// A database error in words for operators; never the url, which may hold a
/// password.
fn from_sqlx(name: &str, table: &str, e: &sqlx::Error) -> CapError {
    match e {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // ER_NO_SUCH_TABLE, ER_BAD_FIELD_ERROR, ER_BAD_DB_ERROR
            Some("42S02") | Some("1146") => {
                CapError::not_found(format!("database {name} has no table {table}"))
            }
            Some("42S22") | Some("1054") => CapError::not_found(format!(
                "table {table} of database {name}: {}",
                db.message()
            )),
            Some("42000") if db.message().contains("Unknown database") => {
                CapError::not_found(format!(
                    "database {name}: the server has no such database ({})",
                    db.message()
                ))
            }
            // Not `denied`: that means "not granted", and a plugin goes on
            // without the database's facts; a wrong password must be seen.
            Some("28000") | Some("1045") => CapError::io(format!(
                "database {name} refused posup's sign-in: check the user and password in [databases.{name}] url"
            )),
            _ => CapError::io(format!("database {name}: {}", db.message())),
        },
        sqlx::Error::Io(io) => CapError::io(format!("database {name}: cannot connect: {io}")),
        sqlx::Error::Tls(t) => CapError::io(format!("database {name}: TLS: {t}")),
        other => CapError::io(format!("database {name}: {other}")),
    }
}

impl database::Host for DatabaseState {
    async fn select(
        &mut self,
        name: String,
        table: String,
        columns: Vec<String>,
        filter: Option<(String, String)>,
        limit: u32,
    ) -> Result<Vec<Vec<Option<String>>>, WitError> {
        DatabaseState::select(self, &name, &table, &columns, filter.as_ref(), limit)
            .await
            .map_err(WitError::from)
    }
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut DatabaseState,
) -> wasmtime::Result<()> {
    database::add_to_linker::<T, HasSelf<DatabaseState>>(linker, get)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols(c: &[&str]) -> Vec<String> {
        c.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_host_writes_the_select_from_checked_names() {
        let q = Query::new("tb_sets", &cols(&["name", "value"]), Some("group"), 50).unwrap();
        assert_eq!(
            q.sql,
            "SELECT CAST(`name` AS CHAR(16384)), CAST(`value` AS CHAR(16384)) FROM `tb_sets` WHERE `group` = ? LIMIT 50"
        );
        assert_eq!(q.columns, 2);
        let capped = Query::new("tb_trsc_hd", &cols(&["id"]), None, u32::MAX).unwrap();
        assert!(capped.sql.ends_with(&format!("LIMIT {MAX_ROWS}")));
    }

    #[test]
    fn names_that_could_carry_sql_are_refused() {
        for bad in [
            "",
            "tb_sets`; DROP TABLE tb_sets; --",
            "name value",
            "a.b",
            "тб",
            "123",
            &"x".repeat(65),
        ] {
            let e = Query::new("tb_sets", &cols(&[bad]), None, 1).unwrap_err();
            assert_eq!(
                e.kind,
                posup_world::latest::types::ErrorKind::Invalid,
                "{bad:?}"
            );
            assert!(Query::new(bad, &cols(&["id"]), None, 1).is_err(), "{bad:?}");
            assert!(
                Query::new("t", &cols(&["id"]), Some(bad), 1).is_err(),
                "{bad:?}"
            );
        }
        assert!(Query::new("t", &[], None, 1).is_err());
        assert!(Query::new("t", &vec!["c".to_owned(); MAX_COLUMNS + 1], None, 1).is_err());
    }

    fn state(tables: &[&str]) -> DatabaseState {
        DatabaseState::new(
            vec![DatabaseGrant {
                name: "icecash".into(),
                // Nothing listens here: the checks must refuse before connecting.
                url: "mysql://root@127.0.0.1:1/none".into(),
                tables: cols(tables),
            }],
            Work::default(),
        )
    }

    #[tokio::test]
    async fn only_granted_databases_and_requested_tables_are_read() {
        let s = state(&["tb_sets"]);
        let e = s
            .select("other", "tb_sets", &cols(&["name"]), None, 1)
            .await
            .unwrap_err();
        assert_eq!(e.kind, posup_world::latest::types::ErrorKind::Denied);
        let e = s
            .select("icecash", "tb_users", &cols(&["password"]), None, 1)
            .await
            .unwrap_err();
        assert_eq!(e.kind, posup_world::latest::types::ErrorKind::Denied);
        assert!(e.message.contains("tb_users"), "{e}");
        let e = s
            .select("icecash", "tb_sets", &cols(&["name"]), None, 1)
            .await
            .unwrap_err();
        assert_eq!(e.kind, posup_world::latest::types::ErrorKind::Io, "{e}");
        assert!(!e.message.contains("mysql://"), "{e}");
    }

    /// A scratch database on the machine's MariaDB (127.0.0.1:3306, root, no
    /// password, as on the project's machines and in CI), dropped at the end.
    async fn scratch(statements: &[&str]) -> (String, String) {
        use sqlx::Executor;
        let server = "mysql://root@127.0.0.1:3306";
        let mut conn = MySqlConnection::connect(server).await.unwrap_or_else(|e| {
            panic!("MariaDB at 127.0.0.1:3306 (root, no password) is needed: start it: {e}")
        });
        let name = format!(
            "posup_caps_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        conn.execute(format!("CREATE DATABASE `{name}`").as_str())
            .await
            .unwrap();
        let url = format!("{server}/{name}");
        let mut db = MySqlConnection::connect(&url).await.unwrap();
        for s in statements {
            db.execute(*s).await.unwrap();
        }
        (url, name)
    }

    async fn drop_scratch(name: &str) {
        use sqlx::Executor;
        let mut conn = MySqlConnection::connect("mysql://root@127.0.0.1:3306")
            .await
            .unwrap();
        conn.execute(format!("DROP DATABASE `{name}`").as_str())
            .await
            .unwrap();
    }

    fn granted(url: &str, tables: &[&str]) -> DatabaseState {
        DatabaseState::new(
            vec![DatabaseGrant {
                name: "product".into(),
                url: url.to_owned(),
                tables: cols(tables),
            }],
            Work::default(),
        )
    }

    /// Values come back as text, cut to their bound; the filter's value is
    /// bound, never spliced into the query; an answer past its byte bound is
    /// refused, naming the table.
    #[tokio::test]
    async fn answers_are_text_bound_and_filtered_by_value() {
        let long = "x".repeat(MAX_VALUE_CHARS + 100);
        let insert_long = format!("INSERT INTO sets (name, value) VALUES ('long', '{long}')");
        let (url, name) = scratch(&[
            "CREATE TABLE sets (id INT AUTO_INCREMENT PRIMARY KEY, name CHAR(64), value TEXT, n INT)",
            "INSERT INTO sets (name, value, n) VALUES ('idplace', '3', 7), ('nkassa', NULL, 8)",
            &insert_long,
            "CREATE TABLE big (v MEDIUMTEXT)",
        ])
        .await;
        let s = granted(&url, &["sets", "big", "gone"]);

        let rows = s
            .select(
                "product",
                "sets",
                &cols(&["value", "n"]),
                Some(&("name".into(), "idplace".into())),
                10,
            )
            .await
            .unwrap();
        assert_eq!(rows, vec![vec![Some("3".to_owned()), Some("7".to_owned())]]);
        let rows = s
            .select(
                "product",
                "sets",
                &cols(&["value"]),
                Some(&("name".into(), "nkassa".into())),
                10,
            )
            .await
            .unwrap();
        assert_eq!(rows, vec![vec![None]]);
        let rows = s
            .select(
                "product",
                "sets",
                &cols(&["value"]),
                Some(&("name".into(), "long".into())),
                10,
            )
            .await
            .unwrap();
        assert_eq!(rows[0][0].as_deref().map(str::len), Some(MAX_VALUE_CHARS));
        let injected = s
            .select(
                "product",
                "sets",
                &cols(&["value"]),
                Some(&("name".into(), "x' OR '1'='1".into())),
                10,
            )
            .await
            .unwrap();
        assert!(injected.is_empty(), "{injected:?}");
        let e = s
            .select("product", "missing", &cols(&["v"]), None, 10)
            .await
            .unwrap_err();
        assert_eq!(e.kind, posup_world::latest::types::ErrorKind::Denied, "{e}");
        let e = s
            .select("product", "gone", &cols(&["v"]), None, 10)
            .await
            .unwrap_err();
        assert_eq!(
            e.kind,
            posup_world::latest::types::ErrorKind::NotFound,
            "{e}"
        );
        assert!(e.message.contains("has no table gone"), "{e}");

        // 80 values of 16 KiB pass the 1 MiB bound.
        let mut conn = MySqlConnection::connect(&url).await.unwrap();
        for _ in 0..80 {
            sqlx::query("INSERT INTO big (v) VALUES (?)")
                .bind("y".repeat(MAX_VALUE_CHARS))
                .execute(&mut conn)
                .await
                .unwrap();
        }
        let e = s
            .select("product", "big", &cols(&["v"]), None, MAX_ROWS)
            .await
            .unwrap_err();
        assert_eq!(e.kind, posup_world::latest::types::ErrorKind::Limit, "{e}");
        assert!(e.message.contains("table big"), "{e}");
        drop_scratch(&name).await;
    }

    /// A database that refuses posup's sign-in is a fault of the configuration,
    /// not a missing grant: plugins treat `denied` as "no database here" and go
    /// on without its facts, which a wrong password must not make them do.
    #[tokio::test]
    async fn a_refused_sign_in_is_not_a_missing_grant() {
        let s = granted(
            "mysql://root:not-the-password@127.0.0.1:3306/test",
            &["sets"],
        );
        let e = s
            .select("product", "sets", &cols(&["value"]), None, 1)
            .await
            .unwrap_err();
        assert_eq!(e.kind, posup_world::latest::types::ErrorKind::Io, "{e}");
        assert!(e.message.contains("refused posup's sign-in"), "{e}");
        assert!(!e.message.contains("not-the-password"), "{e}");
    }
}
