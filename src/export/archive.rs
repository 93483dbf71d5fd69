//! The archive format: JSON lines, one object a line, in one stream both ways.
//!
//! ```text
//! {"header":{"format":"kataven-account-export","format_version":1,"schema_version":…,…}}
//! {"section":"members","row":{…}}
//! …                                   (sections in the order of `Section::ALL`, each once)
//! {"manifest":{"schema_version":…,"sections":[{"section":"members","rows":2,"sha256":"…"},…],
//!              "rows":…,"sha256":"…"}}
//! ```
//!
//! A section's `sha256` is that of its lines (each with its `\n`); the manifest's own `sha256`
//! is that of every byte before the manifest line (the header included). The manifest comes
//! last because its counts and checksums are known only once everything is written; a reader
//! acts on rows as they come and trusts them only once [`ArchiveReader::next`] has answered
//! `None` (the manifest verified, nothing after it).
//!
//! [`ArchiveWriter`] makes an archive, [`Verifier`] checks one line by line (no I/O, so that it
//! is tested on any input), [`ArchiveReader`] reads one from an async reader with bounded lines.

use std::borrow::Cow;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// What the header's `format` says.
pub const FORMAT: &str = "kataven-account-export";
/// The version of the line format (not of the tenant schema). A reader refuses other versions.
pub const FORMAT_VERSION: u32 = 1;
/// The longest line either side accepts (`\n` included): an export refuses to write a longer
/// row, an import refuses to read one, before holding more than this in memory.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// The parts of an archive, in the order they are written. The catalog's parts first (small),
/// then the tenant's tables, parents before the rows that refer to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum Section {
    /// The catalog's member rows: subject, role, created_at.
    Members,
    /// The catalog's limit overrides (at most one row).
    Limits,
    /// API key metadata (never the hash): informational, not recreated by an import.
    ApiKeys,
    /// Widget key metadata (never the hash): informational, not recreated by an import.
    WidgetKeys,
    Tools,
    Playbooks,
    Faqs,
    Agents,
    AgentTools,
    AgentPlaybooks,
    AgentFaqs,
    WidgetSettings,
}

impl Section {
    pub const ALL: [Section; 12] = [
        Self::Members,
        Self::Limits,
        Self::ApiKeys,
        Self::WidgetKeys,
        Self::Tools,
        Self::Playbooks,
        Self::Faqs,
        Self::Agents,
        Self::AgentTools,
        Self::AgentPlaybooks,
        Self::AgentFaqs,
        Self::WidgetSettings,
    ];

    pub fn name(self) -> &'static str {
        self.into()
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The first line: what the archive is and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: String,
    pub format_version: u32,
    /// The newest tenant migration applied to the exported database.
    pub schema_version: i64,
    pub exported_at: DateTime<Utc>,
    /// The version of the `kataven-hub` that wrote it.
    pub hub_version: String,
    pub account: AccountInfo,
}

/// The exported account as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountInfo {
    pub slug: String,
    pub display_name: String,
    pub oidc_org_id: Option<String>,
    /// `active` or `suspended` (informational: an import creates an active account).
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// The last line: counts and checksums of what came before.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema_version: i64,
    /// Every section, in order, with its row count and the sha256 of its lines.
    pub sections: Vec<SectionSum>,
    /// All rows.
    pub rows: u64,
    /// sha256 (hex) of every byte before the manifest line.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectionSum {
    pub section: String,
    pub rows: u64,
    pub sha256: String,
}

/// Why an archive is refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("line {line}: {reason}")]
    Malformed { line: u64, reason: String },
    #[error("line {line} is longer than {MAX_LINE_BYTES} bytes")]
    LineTooLong { line: u64 },
    #[error("the archive ends before its manifest (truncated or cut off)")]
    Truncated,
    #[error("the archive does not match its manifest ({0}): it is corrupt or was altered")]
    Mismatch(String),
    #[error("a row of `{section}` cannot be written: {reason}")]
    BadRow {
        section: &'static str,
        reason: &'static str,
    },
    #[error("section `{0}` out of order")]
    OutOfOrder(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One section's running count and checksum.
struct Running {
    section: Section,
    rows: u64,
    sha: Sha256,
}

impl Running {
    fn new(section: Section) -> Self {
        Self {
            section,
            rows: 0,
            sha: Sha256::new(),
        }
    }

    fn sum(self) -> SectionSum {
        SectionSum {
            section: self.section.name().to_owned(),
            rows: self.rows,
            sha256: hex::encode(self.sha.finalize()),
        }
    }
}

fn empty_sum(section: Section) -> SectionSum {
    Running::new(section).sum()
}

/// Writes an archive into a buffer that the caller drains ([`ArchiveWriter::take`]) as it
/// fills: the writer holds at most one chunk and one row.
pub struct ArchiveWriter {
    out: Vec<u8>,
    total: Sha256,
    schema_version: i64,
    current: Option<Running>,
    done: Vec<SectionSum>,
    rows: u64,
}

/// Bytes collected before [`ArchiveWriter::take`] hands them out.
pub const CHUNK_BYTES: usize = 64 << 10;

impl ArchiveWriter {
    /// Starts an archive with its header line.
    pub fn new(header: &Header) -> Self {
        let mut writer = Self {
            out: Vec::with_capacity(CHUNK_BYTES * 2),
            total: Sha256::new(),
            schema_version: header.schema_version,
            current: None,
            done: Vec::new(),
            rows: 0,
        };
        let line = serde_json::to_vec(&serde_json::json!({ "header": header }))
            .expect("a header serializes");
        writer.out.extend_from_slice(&line);
        writer.out.push(b'\n');
        writer.total.update(&writer.out);
        writer
    }

    /// Appends a row of `section`: a JSON object on one line (as PostgreSQL's `row_to_json`
    /// writes it). Sections come in the order of [`Section::ALL`].
    pub fn row(&mut self, section: Section, row: &str) -> Result<(), ArchiveError> {
        let bad = |reason| ArchiveError::BadRow {
            section: section.name(),
            reason,
        };
        if !row.starts_with('{') || !row.ends_with('}') {
            return Err(bad("not a JSON object"));
        }
        if row.contains('\n') {
            return Err(bad("it spans lines"));
        }
        match &self.current {
            Some(c) if c.section == section => {}
            Some(c) if c.section > section => return Err(ArchiveError::OutOfOrder(section.name())),
            _ => {
                if self.done.iter().any(|d| d.section == section.name()) {
                    return Err(ArchiveError::OutOfOrder(section.name()));
                }
                if let Some(previous) = self.current.replace(Running::new(section)) {
                    self.done.push(previous.sum());
                }
            }
        }
        let head = format!("{{\"section\":\"{}\",\"row\":", section.name());
        if head.len() + row.len() + 2 > MAX_LINE_BYTES {
            return Err(bad("it is longer than the longest line an import reads"));
        }
        let start = self.out.len();
        self.out.extend_from_slice(head.as_bytes());
        self.out.extend_from_slice(row.as_bytes());
        self.out.extend_from_slice(b"}\n");
        let line = &self.out[start..];
        self.total.update(line);
        let current = self.current.as_mut().expect("a section is open");
        current.sha.update(line);
        current.rows += 1;
        self.rows += 1;
        Ok(())
    }

    /// The bytes written so far once there are at least [`CHUNK_BYTES`] of them.
    pub fn take(&mut self) -> Option<Vec<u8>> {
        (self.out.len() >= CHUNK_BYTES)
            .then(|| std::mem::replace(&mut self.out, Vec::with_capacity(CHUNK_BYTES * 2)))
    }

    /// Ends the archive with its manifest; returns the last bytes and the manifest.
    pub fn finish(mut self) -> (Vec<u8>, Manifest) {
        if let Some(current) = self.current.take() {
            self.done.push(current.sum());
        }
        let sections = Section::ALL
            .into_iter()
            .map(|s| {
                self.done
                    .iter()
                    .find(|d| d.section == s.name())
                    .cloned()
                    .unwrap_or_else(|| empty_sum(s))
            })
            .collect();
        let manifest = Manifest {
            schema_version: self.schema_version,
            sections,
            rows: self.rows,
            sha256: hex::encode(self.total.clone().finalize()),
        };
        let line = serde_json::to_vec(&serde_json::json!({ "manifest": manifest }))
            .expect("a manifest serializes");
        self.out.extend_from_slice(&line);
        self.out.push(b'\n');
        (self.out, manifest)
    }
}

/// A line after the header, as the verifier parses it: a row or the manifest.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    #[serde(borrow, default)]
    section: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    row: Option<&'a RawValue>,
    #[serde(default)]
    manifest: Option<Manifest>,
}

/// The first line, read twice: for its format alone (so that another format or version is
/// named as such), then whole.
#[derive(Deserialize)]
struct HeaderLine<H> {
    header: H,
}

#[derive(Deserialize)]
struct FormatOnly {
    format: String,
    format_version: u32,
}

/// What a verified line holds.
#[derive(Debug, PartialEq)]
pub enum Item<'a> {
    Header(Header),
    /// A row of a section: a JSON object, as written.
    Row(Section, &'a str),
    /// The manifest, verified against everything before it.
    End,
}

/// Checks an archive line by line: the header first, rows in section order, the manifest last
/// and matching every count and checksum, nothing after it.
pub struct Verifier {
    lines: u64,
    total: Sha256,
    header: Option<Header>,
    current: Option<Running>,
    done: Vec<SectionSum>,
    rows: u64,
    ended: bool,
}

impl Default for Verifier {
    fn default() -> Self {
        Self::new()
    }
}

impl Verifier {
    pub fn new() -> Self {
        Self {
            lines: 0,
            total: Sha256::new(),
            header: None,
            current: None,
            done: Vec::new(),
            rows: 0,
            ended: false,
        }
    }

    /// The header, once its line has been read.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Whether the manifest has been read and matched.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Checks the next line (`bytes` with its final `\n`).
    pub fn line<'a>(&mut self, bytes: &'a [u8]) -> Result<Item<'a>, ArchiveError> {
        self.lines += 1;
        let line = self.lines;
        let malformed = |reason: String| ArchiveError::Malformed { line, reason };
        if self.ended {
            return Err(malformed("data after the manifest".into()));
        }
        let Some(text) = bytes.strip_suffix(b"\n") else {
            return Err(ArchiveError::Truncated);
        };
        if self.header.is_none() {
            let probe: HeaderLine<FormatOnly> = serde_json::from_slice(text)
                .map_err(|e| malformed(format!("not the header of an account export: {e}")))?;
            if probe.header.format != FORMAT {
                return Err(malformed(format!(
                    "format `{}` is not `{FORMAT}`",
                    probe.header.format
                )));
            }
            if probe.header.format_version != FORMAT_VERSION {
                return Err(malformed(format!(
                    "format version {} (this binary reads version {FORMAT_VERSION})",
                    probe.header.format_version
                )));
            }
            let header: HeaderLine<Header> =
                serde_json::from_slice(text).map_err(|e| malformed(format!("header: {e}")))?;
            self.total.update(bytes);
            self.header = Some(header.header.clone());
            return Ok(Item::Header(header.header));
        }
        let parsed: Line<'a> =
            serde_json::from_slice(text).map_err(|e| malformed(e.to_string()))?;
        match parsed {
            Line {
                section: Some(name),
                row: Some(row),
                manifest: None,
            } => {
                let section = Section::parse(&name)
                    .ok_or_else(|| malformed(format!("unknown section `{name}`")))?;
                if !row.get().starts_with('{') {
                    return Err(malformed("a row is a JSON object".into()));
                }
                self.enter(section, line)?;
                self.total.update(bytes);
                let current = self.current.as_mut().expect("entered");
                current.sha.update(bytes);
                current.rows += 1;
                self.rows += 1;
                Ok(Item::Row(section, row.get()))
            }
            Line {
                section: None,
                row: None,
                manifest: Some(manifest),
            } => {
                self.check(&manifest)?;
                self.ended = true;
                Ok(Item::End)
            }
            _ => Err(malformed(
                "expected `section` and `row`, or `manifest`".into(),
            )),
        }
    }

    /// Moves to `section` (the same, or a later one not seen yet).
    fn enter(&mut self, section: Section, line: u64) -> Result<(), ArchiveError> {
        match &self.current {
            Some(c) if c.section == section => return Ok(()),
            Some(c) if c.section > section => {
                return Err(ArchiveError::Malformed {
                    line,
                    reason: format!("section `{}` after `{}`", section.name(), c.section.name()),
                });
            }
            _ => {}
        }
        if let Some(previous) = self.current.replace(Running::new(section)) {
            self.done.push(previous.sum());
        }
        Ok(())
    }

    fn check(&mut self, manifest: &Manifest) -> Result<(), ArchiveError> {
        let mismatch = |what: String| Err(ArchiveError::Mismatch(what));
        let header = self.header.as_ref().expect("the header came first");
        if manifest.schema_version != header.schema_version {
            return mismatch("schema version".into());
        }
        if let Some(current) = self.current.take() {
            self.done.push(current.sum());
        }
        let mut listed: HashMap<&str, &SectionSum> = HashMap::new();
        for sum in &manifest.sections {
            if Section::parse(&sum.section).is_none() {
                return mismatch(format!("unknown section `{}`", sum.section));
            }
            if listed.insert(&sum.section, sum).is_some() {
                return mismatch(format!("section `{}` listed twice", sum.section));
            }
        }
        for section in Section::ALL {
            let seen = self
                .done
                .iter()
                .find(|d| d.section == section.name())
                .cloned()
                .unwrap_or_else(|| empty_sum(section));
            let expected = listed
                .get(section.name())
                .map_or_else(|| empty_sum(section), |s| (*s).clone());
            if seen.rows != expected.rows {
                return mismatch(format!(
                    "section `{}`: {} rows, the manifest says {}",
                    section.name(),
                    seen.rows,
                    expected.rows
                ));
            }
            if seen.sha256 != expected.sha256 {
                return mismatch(format!("section `{}`: checksum", section.name()));
            }
        }
        if manifest.rows != self.rows {
            return mismatch(format!(
                "{} rows, the manifest says {}",
                self.rows, manifest.rows
            ));
        }
        if hex::encode(self.total.clone().finalize()) != manifest.sha256 {
            return mismatch("checksum of the whole archive".into());
        }
        Ok(())
    }
}

/// Reads an archive from `input`, one bounded line at a time, through a [`Verifier`].
pub struct ArchiveReader<R> {
    input: R,
    buf: Vec<u8>,
    verifier: Verifier,
    max_line: usize,
}

impl<R: AsyncBufRead + Unpin> ArchiveReader<R> {
    pub fn new(input: R) -> Self {
        Self {
            input,
            buf: Vec::new(),
            verifier: Verifier::new(),
            max_line: MAX_LINE_BYTES,
        }
    }

    /// A reader that refuses lines longer than `max` bytes (tests).
    #[cfg(test)]
    fn with_max_line(input: R, max: usize) -> Self {
        Self {
            max_line: max,
            ..Self::new(input)
        }
    }

    /// Reads the header (the first line).
    pub async fn header(&mut self) -> Result<Header, ArchiveError> {
        if !self.read_line().await? {
            return Err(ArchiveError::Truncated);
        }
        match self.verifier.line(&self.buf)? {
            Item::Header(header) => Ok(header),
            _ => unreachable!("the first line is the header or refused"),
        }
    }

    /// The next row, or `None` once the manifest has been verified and nothing follows it.
    /// Call [`Self::header`] first.
    pub async fn next(&mut self) -> Result<Option<(Section, &str)>, ArchiveError> {
        loop {
            if !self.read_line().await? {
                return if self.verifier.ended() {
                    Ok(None)
                } else {
                    Err(ArchiveError::Truncated)
                };
            }
            let row = match self.verifier.line(&self.buf)? {
                // Where the row is in the buffer (the verifier's answer borrows it).
                Item::Row(section, row) => {
                    let start = row.as_ptr() as usize - self.buf.as_ptr() as usize;
                    (section, start..start + row.len())
                }
                Item::End => continue,
                Item::Header(_) => unreachable!("only the first line is a header"),
            };
            let text = std::str::from_utf8(&self.buf[row.1]).expect("the verifier read it as JSON");
            return Ok(Some((row.0, text)));
        }
    }

    /// Reads one line into the buffer, at most [`MAX_LINE_BYTES`]; `false` at the end.
    async fn read_line(&mut self) -> Result<bool, ArchiveError> {
        self.buf.clear();
        let limit = self.max_line as u64 + 1;
        let n = (&mut self.input)
            .take(limit)
            .read_until(b'\n', &mut self.buf)
            .await?;
        if n > self.max_line {
            return Err(ArchiveError::LineTooLong {
                line: self.verifier.lines + 1,
            });
        }
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn header() -> Header {
        Header {
            format: FORMAT.to_owned(),
            format_version: FORMAT_VERSION,
            schema_version: 20261201000004,
            exported_at: "2026-12-01T10:00:00Z".parse().unwrap(),
            hub_version: "0.1.0".to_owned(),
            account: AccountInfo {
                slug: "acme".to_owned(),
                display_name: "Acme \"Corp\" ✓".to_owned(),
                oidc_org_id: None,
                status: "active".to_owned(),
                created_at: "2026-11-01T10:00:00Z".parse().unwrap(),
            },
        }
    }

    /// A row as PostgreSQL's `row_to_json` would write it.
    fn row(id: u32, text: &str) -> String {
        serde_json::json!({ "id": id, "name": text, "volume": 0.8, "tags": ["a", "b"] }).to_string()
    }

    fn sample_rows() -> Vec<(Section, String)> {
        vec![
            (Section::Members, row(1, "alice")),
            (Section::Members, row(2, "bob")),
            (Section::ApiKeys, row(3, "ci key")),
            (
                Section::Tools,
                row(4, "line\nbreak \\ \"quoted\" \u{2028} ü"),
            ),
            (Section::Tools, row(5, "")),
            (Section::Agents, row(6, "agent")),
            (Section::WidgetSettings, row(7, "{}")),
        ]
    }

    fn archive(rows: &[(Section, String)]) -> Vec<u8> {
        let mut writer = ArchiveWriter::new(&header());
        let mut out = Vec::new();
        for (section, row) in rows {
            writer.row(*section, row).unwrap();
            if let Some(chunk) = writer.take() {
                out.extend(chunk);
            }
        }
        let (last, _) = writer.finish();
        out.extend(last);
        out
    }

    /// The rows of `bytes` if the verifier accepts the whole archive.
    fn verify(bytes: &[u8]) -> Result<Vec<(Section, String)>, ArchiveError> {
        let mut verifier = Verifier::new();
        let mut rows = Vec::new();
        for line in bytes.split_inclusive(|b| *b == b'\n') {
            if let Item::Row(section, row) = verifier.line(line)? {
                rows.push((section, row.to_owned()));
            }
        }
        if !verifier.ended() {
            return Err(ArchiveError::Truncated);
        }
        Ok(rows)
    }

    async fn read(bytes: &[u8], max_line: usize) -> Result<Vec<(Section, String)>, ArchiveError> {
        let mut reader = ArchiveReader::with_max_line(bytes, max_line);
        assert_eq!(reader.header().await?, header());
        let mut rows = Vec::new();
        while let Some((section, row)) = reader.next().await? {
            rows.push((section, row.to_owned()));
        }
        Ok(rows)
    }

    #[test]
    fn an_archive_reads_back_as_written() {
        let rows = sample_rows();
        let bytes = archive(&rows);
        assert_eq!(verify(&bytes).unwrap(), rows);
        let text = std::str::from_utf8(&bytes).unwrap();
        assert_eq!(text.lines().count(), rows.len() + 2);
        assert!(text.starts_with("{\"header\":{"));
        let manifest: serde_json::Value =
            serde_json::from_str(text.lines().last().unwrap()).unwrap();
        let manifest = &manifest["manifest"];
        assert_eq!(manifest["rows"], 7);
        assert_eq!(manifest["schema_version"], 20261201000004i64);
        let sections = manifest["sections"].as_array().unwrap();
        assert_eq!(sections.len(), Section::ALL.len());
        assert_eq!(sections[0]["section"], "members");
        assert_eq!(sections[0]["rows"], 2);
        // An empty section is listed with the checksum of nothing.
        assert_eq!(sections[1]["section"], "limits");
        assert_eq!(sections[1]["rows"], 0);
        assert_eq!(
            sections[1]["sha256"],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[tokio::test]
    async fn the_reader_gives_the_rows_and_ends_after_the_manifest() {
        let rows = sample_rows();
        let bytes = archive(&rows);
        assert_eq!(read(&bytes, MAX_LINE_BYTES).await.unwrap(), rows);
        // An archive without rows is an archive too.
        assert_eq!(read(&archive(&[]), MAX_LINE_BYTES).await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn the_reader_refuses_a_line_over_its_bound_before_reading_it_all() {
        let long = row(1, &"x".repeat(10_000));
        let bytes = archive(&[(Section::Tools, long)]);
        let err = read(&bytes, 4096).await.unwrap_err();
        assert!(
            matches!(err, ArchiveError::LineTooLong { line: 2 }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_cut_archive_is_truncated() {
        let bytes = archive(&sample_rows());
        let manifest_starts = bytes[..bytes.len() - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .unwrap()
            + 1;
        for cut in [0, 10, manifest_starts, bytes.len() - 1] {
            let err = verify(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, ArchiveError::Truncated),
                "cut at {cut}: {err}"
            );
        }
        let err = read(&bytes[..manifest_starts], MAX_LINE_BYTES)
            .await
            .unwrap_err();
        assert!(matches!(err, ArchiveError::Truncated), "{err}");
    }

    #[test]
    fn the_writer_keeps_sections_in_order_and_rows_on_one_line() {
        let mut writer = ArchiveWriter::new(&header());
        writer.row(Section::Tools, "{}").unwrap();
        assert!(matches!(
            writer.row(Section::Members, "{}"),
            Err(ArchiveError::OutOfOrder("members"))
        ));
        for bad in ["[]", "{\"a\":\n1}", "", "{"] {
            assert!(
                matches!(
                    writer.row(Section::Agents, bad),
                    Err(ArchiveError::BadRow { .. })
                ),
                "{bad:?}"
            );
        }
    }

    /// Replaces the line of `bytes` that starts with `prefix` by `line` (no newline).
    fn with_line(bytes: &[u8], index: usize, line: &str) -> Vec<u8> {
        let text = std::str::from_utf8(bytes).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines[index] = line;
        (lines.join("\n") + "\n").into_bytes()
    }

    #[test]
    fn malformed_archives_are_refused() {
        let bytes = archive(&sample_rows());
        let text = std::str::from_utf8(&bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let last = lines.len() - 1;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("not JSON", b"hello\n".to_vec()),
            (
                "another format",
                with_line(
                    &bytes,
                    0,
                    r#"{"header":{"format":"tar","format_version":1}}"#,
                ),
            ),
            (
                "a newer format version",
                with_line(
                    &bytes,
                    0,
                    &lines[0].replace("\"format_version\":1", "\"format_version\":2"),
                ),
            ),
            (
                "an unknown section",
                with_line(&bytes, 1, r#"{"section":"secrets","row":{}}"#),
            ),
            (
                "a row that is no object",
                with_line(&bytes, 1, r#"{"section":"members","row":[1]}"#),
            ),
            ("a line with neither", with_line(&bytes, 1, r#"{"row":{}}"#)),
            (
                "an unknown field",
                with_line(&bytes, 1, r#"{"section":"members","row":{},"x":1}"#),
            ),
            ("a second header", with_line(&bytes, 1, lines[0])),
            (
                "sections out of order",
                with_line(&bytes, 4, &lines[4].replace("\"tools\"", "\"members\"")),
            ),
            ("data after the manifest", [&bytes[..], b"{}\n"].concat()),
            (
                "a manifest twice",
                [&bytes[..], lines[last].as_bytes(), b"\n"].concat(),
            ),
            ("a missing row", {
                let mut l = lines.clone();
                l.remove(2);
                (l.join("\n") + "\n").into_bytes()
            }),
            ("a duplicated row", {
                let mut l = lines.clone();
                l.insert(2, lines[2]);
                (l.join("\n") + "\n").into_bytes()
            }),
            (
                "a manifest with another schema version",
                with_line(
                    &bytes,
                    last,
                    &lines[last].replace("20261201000004", "20261201000003"),
                ),
            ),
        ];
        for (case, bytes) in cases {
            assert!(verify(&bytes).is_err(), "{case} was accepted");
        }
    }

    fn any_rows() -> impl Strategy<Value = Vec<(Section, String)>> {
        proptest::collection::vec((0..Section::ALL.len(), any::<u32>(), "\\PC{0,20}"), 0..12)
            .prop_map(|mut rows| {
                rows.sort_by_key(|(s, ..)| *s);
                rows.into_iter()
                    .map(|(s, id, text)| (Section::ALL[s], row(id, &text)))
                    .collect()
            })
    }

    proptest! {
        #![proptest_config(crate::proptest_config::config(2048))]

        /// Whatever the rows, an archive reads back as written.
        #[test]
        fn any_archive_round_trips(rows in any_rows()) {
            prop_assert_eq!(verify(&archive(&rows)).unwrap(), rows);
        }

        /// Any one byte changed, anywhere (header, a row, the manifest, a newline), and the
        /// archive is refused.
        #[test]
        fn any_changed_byte_is_refused(rows in any_rows(), at in any::<prop::sample::Index>(), to in any::<u8>()) {
            let mut bytes = archive(&rows);
            let i = at.index(bytes.len());
            prop_assume!(bytes[i] != to);
            bytes[i] = to;
            prop_assert!(verify(&bytes).is_err());
        }

        /// Any prefix of an archive is refused.
        #[test]
        fn any_cut_is_refused(rows in any_rows(), at in any::<prop::sample::Index>()) {
            let bytes = archive(&rows);
            let cut = at.index(bytes.len());
            prop_assert!(verify(&bytes[..cut]).is_err());
        }

        /// Any bytes at all: refused, never a panic.
        #[test]
        fn any_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            prop_assert!(verify(&bytes).is_err());
        }

        /// Lines of JSON that look like an archive's but were not written by one: refused.
        #[test]
        fn any_lines_of_json_are_refused(lines in proptest::collection::vec(prop_oneof![
            Just(r#"{"header":{"format":"kataven-account-export","format_version":1}}"#.to_owned()),
            "\\PC{0,30}".prop_map(|t| format!(r#"{{"section":"tools","row":{{"name":{}}}}}"#, serde_json::json!(t))),
            Just(r#"{"manifest":{"schema_version":1,"sections":[],"rows":0,"sha256":""}}"#.to_owned()),
            "\\PC{0,40}",
        ], 0..6)) {
            let bytes = lines.into_iter().map(|l| l + "\n").collect::<String>();
            prop_assert!(verify(bytes.as_bytes()).is_err());
        }
    }
}
