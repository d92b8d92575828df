//! A small builder for statements whose shape depends on the request (filters,
//! sort columns), numbering `$n` placeholders as values are bound.

use std::fmt::Write;

/// A value bound to a built statement.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    I64(i64),
    Text(String),
    OptText(Option<String>),
    OptI64(Option<i64>),
    Bool(bool),
}

impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::I64(v)
    }
}

impl From<String> for Arg {
    fn from(v: String) -> Self {
        Arg::Text(v)
    }
}

impl From<&str> for Arg {
    fn from(v: &str) -> Self {
        Arg::Text(v.to_owned())
    }
}

impl From<Option<String>> for Arg {
    fn from(v: Option<String>) -> Self {
        Arg::OptText(v)
    }
}

impl From<Option<i64>> for Arg {
    fn from(v: Option<i64>) -> Self {
        Arg::OptI64(v)
    }
}

impl From<bool> for Arg {
    fn from(v: bool) -> Self {
        Arg::Bool(v)
    }
}

/// SQL text and its arguments.
#[derive(Debug, Default, Clone)]
pub(crate) struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
}

impl Sql {
    pub fn new(text: &str) -> Sql {
        Sql {
            text: text.to_owned(),
            args: Vec::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> &mut Sql {
        self.text.push_str(text);
        self
    }

    /// Appends a placeholder for `value`.
    pub fn bind(&mut self, value: impl Into<Arg>) -> &mut Sql {
        self.args.push(value.into());
        write!(self.text, "${}", self.args.len()).expect("writing to a String");
        self
    }

    /// Appends placeholders for `values`, separated by commas (for `IN (…)`).
    pub fn bind_list<T: Clone + Into<Arg>>(&mut self, values: &[T]) -> &mut Sql {
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.push(", ");
            }
            self.bind(v.clone());
        }
        self
    }

    /// Appends ` LIMIT … OFFSET …` selecting page `page` (from 1) of `per_page`
    /// rows.
    pub fn page(&mut self, page: u32, per_page: u32) -> &mut Sql {
        self.push(" LIMIT ")
            .bind(i64::from(per_page))
            .push(" OFFSET ")
            .bind(i64::from(page.max(1) - 1) * i64::from(per_page))
    }

    /// Appends `AND (<fragment>)` where the fragment's own placeholders are
    /// renumbered after ours.
    pub fn and(&mut self, cond: &Cond) -> &mut Sql {
        self.push(" AND (");
        self.append(cond);
        self.push(")")
    }

    /// Appends a condition, renumbering its placeholders.
    pub fn append(&mut self, cond: &Cond) -> &mut Sql {
        let offset = self.args.len();
        let text = rewrite_placeholders(&cond.text, |n| {
            Some(format!(
                "${}",
                n.expect("placeholders of conditions are numbered") + offset
            ))
        })
        .expect("every placeholder is rewritten");
        self.text.push_str(&text);
        self.args.extend(cond.args.iter().cloned());
        self
    }
}

/// `text` with each `$n` placeholder replaced by what `each` makes of its number
/// (`None` when no number follows the `$`); `None` when `each` refuses one.
fn rewrite_placeholders(
    text: &str,
    mut each: impl FnMut(Option<usize>) -> Option<String>,
) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let digits = rest[pos + 1..]
            .bytes()
            .take_while(u8::is_ascii_digit)
            .count();
        out.push_str(&each(rest[pos + 1..pos + 1 + digits].parse().ok())?);
        rest = &rest[pos + 1 + digits..];
    }
    out.push_str(rest);
    Some(out)
}

/// A built statement's text as a pool's driver binds it fastest.
pub(crate) trait SqlText {
    fn text<'a>(&self, sql: &'a Sql) -> std::borrow::Cow<'a, str>;
}

impl SqlText for sqlx::PgPool {
    fn text<'a>(&self, sql: &'a Sql) -> std::borrow::Cow<'a, str> {
        std::borrow::Cow::Borrowed(&sql.text)
    }
}

/// SQLite's driver looks each numbered placeholder up by name in a list, so
/// binding a statement of n of them costs n²: the group commit's statements
/// have hundreds. Anonymous `?` placeholders bind in order instead.
impl SqlText for sqlx::SqlitePool {
    fn text<'a>(&self, sql: &'a Sql) -> std::borrow::Cow<'a, str> {
        match sql.anonymous() {
            Some(text) => std::borrow::Cow::Owned(text),
            None => std::borrow::Cow::Borrowed(&sql.text),
        }
    }
}

impl Sql {
    /// The text with each `$n` replaced by `?`, when the placeholders appear
    /// numbered 1, 2, 3 … in order, as binding builds them; `None` otherwise.
    fn anonymous(&self) -> Option<String> {
        let mut next = 0;
        let text = rewrite_placeholders(&self.text, |n| {
            next += 1;
            (n == Some(next)).then(|| "?".to_owned())
        })?;
        (next == self.args.len()).then_some(text)
    }
}

/// A condition built on its own (numbered from `$1`), to be appended to statements.
pub(crate) type Cond = Sql;

/// A `LIKE` pattern matching `needle` anywhere, ignoring ASCII case; used with
/// `lower(column) LIKE $n ESCAPE '\'`.
pub(crate) fn contains_pattern(needle: &str) -> String {
    let mut p = String::with_capacity(needle.len() + 2);
    p.push('%');
    for c in needle.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_are_renumbered_after_the_statement() {
        let mut cond = Cond::new("d.site = ");
        cond.bind("A").push(" OR d.number = ").bind(3);
        let mut sql = Sql::new("SELECT 1 FROM devices d WHERE d.id > ");
        sql.bind(7).and(&cond).push(" LIMIT ").bind(10);
        assert_eq!(
            sql.text,
            "SELECT 1 FROM devices d WHERE d.id > $1 AND (d.site = $2 OR d.number = $3) LIMIT $4"
        );
        assert_eq!(sql.args.len(), 4);
        let mut list = Sql::new("SELECT 1 WHERE 2 IN (");
        list.bind_list(&[5, 6, 7]).push(")");
        assert_eq!(list.text, "SELECT 1 WHERE 2 IN ($1, $2, $3)");
    }

    #[test]
    fn placeholders_in_binding_order_become_anonymous() {
        let mut cond = Cond::new("d.site = ");
        cond.bind("A");
        let mut sql = Sql::new("SELECT 1 FROM devices d WHERE d.id > ");
        sql.bind(7).and(&cond).push(" LIMIT ").bind(10);
        assert_eq!(
            sql.anonymous().as_deref(),
            Some("SELECT 1 FROM devices d WHERE d.id > ? AND (d.site = ?) LIMIT ?")
        );
        let by_hand = Sql {
            text: "SELECT $2, $1".into(),
            args: vec![Arg::I64(1), Arg::I64(2)],
        };
        assert_eq!(by_hand.anonymous(), None, "out of order: kept numbered");
        let reused = Sql {
            text: "SELECT $1, $1".into(),
            args: vec![Arg::I64(1)],
        };
        assert_eq!(reused.anonymous(), None, "used twice: kept numbered");
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("50%_A\\"), "%50\\%\\_a\\\\%");
    }
}
