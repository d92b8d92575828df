//! Markdown made plain for messengers that show it verbatim: a small,
//! line-based reading of the constructs changelogs use, and the check that
//! nothing Markdown-like is left.

/// Turns Markdown (typically a package changelog) into plain lines.
///
/// Headings lose their `#`s; `**x**`, `__x__`, `*x*` and `_x_` lose their markers
/// where they are emphasis (`snake_case_names` stay as they are); inline code loses
/// its backticks; code fence lines are dropped and their content kept; `[t](u)`
/// becomes `t (u)` and `![a](u)` becomes `a (u)`; list items `- x`, `* x`, `+ x`
/// become `• x` with their indentation; `> x` becomes `x`; horizontal rules are
/// dropped; table rows become their cells separated by commas; `\*` becomes `*`.
/// Trailing whitespace is trimmed, runs of blank lines become one, and there are
/// no blank lines at either end (nor a final newline).
///
/// Whatever the input, the result satisfies [`is_plain`]: leftovers that are not
/// Markdown but would look like it (an unmatched backtick, a `**` in code, a line
/// that starts with `#123`) are defused too, e.g. a backtick becomes `'` and a
/// doubled `*` or `_` a single one.
pub fn strip_markdown(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let kinds = classify(&lines);
    let mut out: Vec<String> = Vec::new();
    for (line, kind) in lines.iter().zip(&kinds) {
        let converted = match kind {
            LineKind::Fence | LineKind::TableDelimiter => continue,
            LineKind::Code => defuse(line),
            LineKind::TableRow => defuse(&table_row(line)),
            LineKind::Text => defuse(&text_line(line)),
        };
        let converted = converted.trim_end();
        if converted.is_empty() && out.last().is_none_or(|last| last.is_empty()) {
            continue;
        }
        out.push(converted.to_owned());
    }
    while out.last().is_some_and(|last| last.is_empty()) {
        out.pop();
    }
    out.join("\n")
}

/// Whether `s` reads as plain text in a messenger: no line starts with `#`, `> `,
/// `- `, `* `, `+ ` or `|` (leading whitespace ignored, as Markdown does), none is
/// a table delimiter row like `---|---`, and none contains a backtick, `**`, `__`
/// or `](`.
pub fn is_plain(s: &str) -> bool {
    s.lines().all(|line| {
        let line = line.trim_start();
        let markdown_start = ["#", "> ", "- ", "* ", "+ ", "|"]
            .iter()
            .any(|prefix| line.starts_with(prefix))
            || line == ">";
        let markdown_inside = ["`", "**", "__", "]("]
            .iter()
            .any(|needle| line.contains(needle));
        !(markdown_start || markdown_inside || is_table_delimiter(line))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    Text,
    /// An opening or closing code fence: dropped.
    Fence,
    /// Inside a fenced code block: kept as written, only defused.
    Code,
    /// A row of a table with a delimiter row under its header.
    TableRow,
    /// The `---|---` row under a table header: dropped.
    TableDelimiter,
}

/// Finds code fences and tables, which depend on neighbouring lines.
fn classify(lines: &[&str]) -> Vec<LineKind> {
    let mut kinds = Vec::with_capacity(lines.len());
    let mut open_fence: Option<(char, usize)> = None;
    for line in lines {
        let fence = fence_marker(line);
        let kind = match (open_fence, fence) {
            (None, Some(marker)) => {
                open_fence = Some(marker);
                LineKind::Fence
            }
            (Some((ch, len)), Some((close_ch, close_len)))
                if close_ch == ch && close_len >= len && fence_is_bare(line) =>
            {
                open_fence = None;
                LineKind::Fence
            }
            (Some(_), _) => LineKind::Code,
            (None, None) => LineKind::Text,
        };
        kinds.push(kind);
    }
    // A table is a header row containing `|`, a delimiter row, and the following
    // non-blank rows containing `|`.
    let mut index = 1;
    while index < lines.len() {
        let is_table = kinds[index] == LineKind::Text
            && kinds[index - 1] == LineKind::Text
            && is_table_delimiter(lines[index].trim())
            && lines[index - 1].contains('|');
        if !is_table {
            index += 1;
            continue;
        }
        kinds[index - 1] = LineKind::TableRow;
        kinds[index] = LineKind::TableDelimiter;
        index += 1;
        while index < lines.len()
            && kinds[index] == LineKind::Text
            && lines[index].contains('|')
            && !lines[index].trim().is_empty()
        {
            kinds[index] = LineKind::TableRow;
            index += 1;
        }
    }
    kinds
}

/// A code fence: at most three spaces, then three or more backticks or tildes.
fn fence_marker(line: &str) -> Option<(char, usize)> {
    let trimmed = line.trim_start_matches(' ');
    if line.len() - trimmed.len() > 3 {
        return None;
    }
    let ch = trimmed.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = trimmed.chars().take_while(|c| *c == ch).count();
    (len >= 3).then_some((ch, len))
}

/// A closing fence has nothing after its marker.
fn fence_is_bare(line: &str) -> bool {
    let trimmed = line.trim();
    trimmed.chars().all(|c| c == '`') || trimmed.chars().all(|c| c == '~')
}

/// `---|:---:`, the row under a table header.
fn is_table_delimiter(line: &str) -> bool {
    line.contains('|')
        && line.contains('-')
        && line
            .chars()
            .all(|c| matches!(c, '|' | '-' | ':' | ' ' | '\t'))
}

/// A table row as its cells separated by commas.
fn table_row(line: &str) -> String {
    let row = line.trim();
    let row = row.strip_prefix('|').unwrap_or(row);
    let row = row.strip_suffix('|').unwrap_or(row);
    // `\|` is a pipe inside a cell.
    let mut cells = vec![String::new()];
    let mut chars = row.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cells.last_mut().into_iter().for_each(|cell| cell.push('|'));
                chars.next();
            }
            '|' => cells.push(String::new()),
            _ => cells.last_mut().into_iter().for_each(|cell| cell.push(c)),
        }
    }
    cells
        .iter()
        .map(|cell| inline(cell.trim()))
        .filter(|cell| !cell.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One line outside code and tables: block markers first, then inline markup.
fn text_line(line: &str) -> String {
    let line = line.trim_end();
    if is_thematic_break(line) {
        return String::new();
    }
    let rest = line.trim_start();
    let indent = &line[..line.len() - rest.len()];
    // Quotes, possibly nested: `> > x`.
    let mut rest = rest;
    let mut quoted = false;
    while let Some(inner) = rest.strip_prefix('>') {
        rest = inner.strip_prefix(' ').unwrap_or(inner);
        quoted = true;
    }
    if quoted && is_thematic_break(rest) {
        return String::new();
    }
    if let Some(heading) = heading_text(rest) {
        return inline(heading);
    }
    for marker in ["- ", "* ", "+ ", "-\t", "*\t", "+\t"] {
        if let Some(item) = rest.strip_prefix(marker) {
            return format!("{indent}• {}", inline(item.trim_start()));
        }
    }
    format!("{indent}{}", inline(rest))
}

/// `---`, `***`, `___` (spaces allowed between), and `===` under a setext heading.
fn is_thematic_break(line: &str) -> bool {
    let compact: Vec<char> = line.chars().filter(|c| !c.is_whitespace()).collect();
    compact.len() >= 3
        && matches!(compact[0], '-' | '*' | '_' | '=')
        && compact.iter().all(|c| *c == compact[0])
}

/// The text of an ATX heading (`## Title ##`), if the line is one.
fn heading_text(line: &str) -> Option<&str> {
    let level = line.chars().take_while(|c| *c == '#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let text = &line[level..];
    if !(text.is_empty() || text.starts_with([' ', '\t'])) {
        return None;
    }
    let text = text.trim();
    // An optional closing run of `#`s, separated by a space.
    let without_closing = text.trim_end_matches('#');
    if without_closing.is_empty() {
        return Some("");
    }
    if without_closing.ends_with([' ', '\t']) {
        return Some(without_closing.trim_end());
    }
    Some(text)
}

/// An inline element, before emphasis delimiters are matched.
enum Piece {
    Text(String),
    /// A run of `*` or `_` that may open or close emphasis; `count` is how many of
    /// its characters are still literal.
    Delimiter {
        ch: char,
        count: usize,
        can_open: bool,
        can_close: bool,
    },
}

/// Inline markup: escapes, code spans, links and images, autolinks, emphasis.
fn inline(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut pieces: Vec<Piece> = Vec::new();
    let mut literal = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\\' => match chars.get(i + 1) {
                Some(next) if next.is_ascii_punctuation() => {
                    literal.push(*next);
                    i += 2;
                }
                // A backslash at the end of a line is a hard line break.
                None => i += 1,
                Some(_) => {
                    literal.push('\\');
                    i += 1;
                }
            },
            '`' => {
                let run = run_length(&chars, i, '`');
                match find_backtick_run(&chars, i + run, run) {
                    Some(close) => {
                        let code: String = chars[i + run..close].iter().collect();
                        // One space on both sides lets code start or end with a backtick.
                        let code = match code.strip_prefix(' ').and_then(|c| c.strip_suffix(' ')) {
                            Some(inner) if !inner.trim().is_empty() => inner.to_owned(),
                            _ => code,
                        };
                        literal.push_str(&code);
                        i = close + run;
                    }
                    None => {
                        literal.push('\'');
                        i += run;
                    }
                }
            }
            '!' if chars.get(i + 1) == Some(&'[') => match link(&chars, i + 1) {
                Some((label, url, end)) => {
                    literal.push_str(&link_text(&label, &url));
                    i = end;
                }
                None => {
                    literal.push('!');
                    i += 1;
                }
            },
            '[' => match link(&chars, i) {
                Some((label, url, end)) => {
                    literal.push_str(&link_text(&label, &url));
                    i = end;
                }
                None => {
                    literal.push('[');
                    i += 1;
                }
            },
            '<' => match autolink(&chars, i) {
                Some((url, end)) => {
                    literal.push_str(&url);
                    i = end;
                }
                None => {
                    literal.push('<');
                    i += 1;
                }
            },
            '*' | '_' => {
                let run = run_length(&chars, i, c);
                let before = if i == 0 { ' ' } else { chars[i - 1] };
                let after = chars.get(i + run).copied().unwrap_or(' ');
                // CommonMark's flanking rules: `_` inside a word is never emphasis.
                let left = !after.is_whitespace()
                    && (!is_punctuation(after) || before.is_whitespace() || is_punctuation(before));
                let right = !before.is_whitespace()
                    && (!is_punctuation(before) || after.is_whitespace() || is_punctuation(after));
                let (can_open, can_close) = if c == '*' {
                    (left, right)
                } else {
                    (
                        left && (!right || is_punctuation(before)),
                        right && (!left || is_punctuation(after)),
                    )
                };
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(Piece::Delimiter {
                    ch: c,
                    count: run,
                    can_open,
                    can_close,
                });
                i += run;
            }
            _ => {
                literal.push(c);
                i += 1;
            }
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    match_emphasis(&mut pieces);
    let mut out = String::new();
    for piece in &pieces {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Delimiter { ch, count, .. } => out.extend(std::iter::repeat_n(*ch, *count)),
        }
    }
    out
}

/// Pairs emphasis delimiters, nearest opener first, and uses up the matched
/// characters; whatever is left stays literal.
fn match_emphasis(pieces: &mut [Piece]) {
    for closer in 0..pieces.len() {
        while let Piece::Delimiter {
            ch,
            count: closer_count @ 1..,
            can_close: true,
            ..
        } = pieces[closer]
        {
            let opener = (0..closer).rev().find_map(|j| match pieces[j] {
                Piece::Delimiter {
                    ch: c,
                    count: count @ 1..,
                    can_open: true,
                    ..
                } if c == ch => Some((j, count)),
                _ => None,
            });
            let Some((opener, opener_count)) = opener else {
                break;
            };
            let used = if opener_count >= 2 && closer_count >= 2 {
                2
            } else {
                1
            };
            for index in [opener, closer] {
                if let Piece::Delimiter { count, .. } = &mut pieces[index] {
                    *count -= used;
                }
            }
            // Delimiters between a matched pair can no longer pair across it.
            for piece in &mut pieces[opener + 1..closer] {
                if let Piece::Delimiter {
                    can_open,
                    can_close,
                    ..
                } = piece
                {
                    *can_open = false;
                    *can_close = false;
                }
            }
        }
    }
}

fn is_punctuation(c: char) -> bool {
    !c.is_alphanumeric() && !c.is_whitespace()
}

fn run_length(chars: &[char], start: usize, ch: char) -> usize {
    chars[start..].iter().take_while(|c| **c == ch).count()
}

/// The start of the next run of exactly `len` backticks at or after `from`.
fn find_backtick_run(chars: &[char], from: usize, len: usize) -> Option<usize> {
    let mut i = from;
    while i < chars.len() {
        if chars[i] == '`' {
            let run = run_length(chars, i, '`');
            if run == len {
                return Some(i);
            }
            i += run;
        } else {
            i += 1;
        }
    }
    None
}

/// `[label](url "title")` starting at `open` (the `[`): the label, the url and the
/// index after the `)`.
fn link(chars: &[char], open: usize) -> Option<(String, String, usize)> {
    let mut depth = 0;
    let mut i = open;
    let close = loop {
        match chars.get(i)? {
            '\\' => i += 1,
            '[' => depth += 1,
            ']' => {
                depth -= 1;
                if depth == 0 {
                    break i;
                }
            }
            _ => {}
        }
        i += 1;
    };
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let mut depth = 0;
    let mut j = close + 1;
    let end = loop {
        match chars.get(j)? {
            '\\' => j += 1,
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    break j;
                }
            }
            _ => {}
        }
        j += 1;
    };
    let label: String = chars[open + 1..close].iter().collect();
    let target: String = chars[close + 2..end].iter().collect();
    // Drop an optional title after the destination, and `<...>` around it.
    let url = target.split_whitespace().next().unwrap_or("");
    let url = url
        .strip_prefix('<')
        .and_then(|u| u.strip_suffix('>'))
        .unwrap_or(url);
    Some((label, url.to_owned(), end + 1))
}

fn link_text(label: &str, url: &str) -> String {
    let label = inline(label);
    if label.is_empty() || label == url {
        url.to_owned()
    } else if url.is_empty() {
        label
    } else {
        format!("{label} ({url})")
    }
}

/// `<https://...>` or `<mailto:...>`: the address and the index after the `>`.
fn autolink(chars: &[char], open: usize) -> Option<(String, usize)> {
    let len = chars[open + 1..].iter().position(|c| *c == '>')?;
    let url: String = chars[open + 1..open + 1 + len].iter().collect();
    let scheme = ["http://", "https://", "mailto:"]
        .iter()
        .any(|scheme| url.starts_with(scheme));
    (scheme && !url.contains(char::is_whitespace)).then_some((url, open + len + 2))
}

/// The last word on anything [`is_plain`] would reject, applied to every output
/// line: markup that survived conversion (an unmatched backtick, `**` inside code,
/// a line starting with `#123`) is neutralised rather than passed on.
fn defuse(line: &str) -> String {
    let mut line = line.replace('`', "'").replace("](", "] (");
    while line.contains("**") {
        line = line.replace("**", "*");
    }
    while line.contains("__") {
        line = line.replace("__", "_");
    }
    let rest = line.trim_start();
    let indent = &line[..line.len() - rest.len()];
    let mut rest = rest.to_owned();
    // Every step shortens `rest` or removes a `|`, so this ends.
    loop {
        if rest.starts_with('#') {
            rest = rest.trim_start_matches('#').trim_start().to_owned();
        } else if rest.starts_with("> ") || rest == ">" {
            rest = rest[1..].trim_start().to_owned();
        } else if is_table_delimiter(&rest) {
            rest = String::new();
        } else if rest.starts_with('|') {
            // Only separators: joining cells with ", " cannot form new markup.
            rest = rest
                .split('|')
                .map(str::trim)
                .filter(|cell| !cell.is_empty())
                .collect::<Vec<_>>()
                .join(", ");
        } else if let Some(item) = ["- ", "* ", "+ "]
            .iter()
            .find_map(|marker| rest.strip_prefix(marker))
        {
            return format!("{indent}• {}", item.trim_start());
        } else {
            return format!("{indent}{rest}");
        }
    }
}
